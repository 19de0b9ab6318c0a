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
 * Each serving rank runs opt->workers local worker processes (0: its
 * pmap_cpu_count()), forked from it as pmap_pool_create() forks them, so
 * a crashing task costs one worker and one item, never a rank; timeouts,
 * retries, recycling and worker_init act on those workers. With several
 * ranks the root runs no worker of its own: the pool's workers are those
 * of all serving ranks, and pmap_worker_id() numbers them 0 .. total-1,
 * rank after rank. A rank with more workers gets more of the work.
 * Batches, not single records, cross the network. Each rank passes its own
 * ctx; a task sees the memory of the rank that forked its worker. The
 * automatic window (opt->window 0) of such a pool is 65536 records
 * whatever the number of workers (its byte bounds hold as in pmap.h):
 * a batch's round trip crosses ranks, so more of them stay in flight.
 *
 * With a communicator of one rank the root runs opt->workers local
 * workers itself, exactly as pmap_pool_create().
 *
 * The serving ranks stay inside this call until the root destroys its
 * pool, so a communicator carries one such pool at a time: create the
 * next one after pmap_pool_destroy() (every rank then calls this again).
 * A map with a task of its own (pmap_imap_task) is refused with EINVAL on
 * such a pool: no function pointer is ever sent to another rank.
 *
 * Every rank returns only once all of them have agreed: if any rank cannot
 * start its workers, every rank returns NULL with the same errno (e.g.
 * ECHILD when worker_init fails). The library communicates on a duplicate
 * of comm (MPI_Comm_dup), so the program's own messages never mix with
 * its traffic. The duplicate keeps comm's error handler: under MPI's
 * default, MPI_ERRORS_ARE_FATAL, an MPI call that fails (that duplication
 * included) aborts the job; under MPI_ERRORS_RETURN the call or the map
 * fails (errno EIO), but MPI promises nothing about communication after
 * an error, so the other ranks may then wait for ever (e.g. in a
 * collective that one rank left). MPI offers no descriptor to wait on:
 * on such a pool pmap_iter_fd() still works, but pmap_iter_timeout() asks
 * to be called again after a few milliseconds while a map runs.
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
