/*
 * pmap_mpi: the same map across the ranks of an MPI communicator (DESIGN
 * §11). A separate library (pmap_mpi, CMake target pmap::mpi, pkg-config
 * pmap_mpi) so that the core library keeps no dependency on MPI.
 */
#ifndef PMAP_MPI_H
#define PMAP_MPI_H

#include <mpi.h>
#include <pmap.h>

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * pmap_mpi_pool_create (since 1.1): collective over comm. Every rank calls
 * it with the same root, fn and options (the program is SPMD, so no
 * function pointer is ever sent). MPI must already be initialised; the
 * library never calls MPI_Init or MPI_Finalize, and calls MPI only from the
 * thread inside a libpmap call. Tasks must not call MPI.
 *
 * On root: a pool (or NULL + errno) driven by the unchanged pmap_imap,
 * pmap_imap_unordered, pmap_next, pmap_iter_free and pmap_pool_destroy.
 * On every other rank: serves the root's batches until the root destroys
 * its pool, then returns NULL with errno 0 (NULL with errno set if serving
 * failed).
 *
 * With a communicator of one rank the root runs opt->workers local
 * workers itself, exactly as pmap_pool_create().
 *
 * Status of this release: communicators of more than one rank are not
 * served yet; every rank then returns NULL with errno ENOSYS.
 */
PMAP_API pmap_pool *pmap_mpi_pool_create(MPI_Comm comm, int root, pmap_task_fn fn, void *ctx,
                                         const pmap_options *opt);

/* As pmap_pool_create(): a macro that passes the size of the pmap_options
 * this program was compiled with (see "Binary compatibility" in pmap.h). */
PMAP_API pmap_pool *pmap_mpi_pool_create_sized(MPI_Comm comm, int root, pmap_task_fn fn,
                                               void *ctx, const pmap_options *opt, size_t size);
#define pmap_mpi_pool_create(comm, root, fn, ctx, opt)                                             \
    pmap_mpi_pool_create_sized((comm), (root), (fn), (ctx), (opt), sizeof(pmap_options))

#ifdef __cplusplus
}
#endif

#endif /* PMAP_MPI_H */
