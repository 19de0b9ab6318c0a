/*
 * The MPI unit (DESIGN §11). It uses only the public API of the core
 * library, so that libpmap itself never links MPI.
 */
#include <pmap_mpi.h>

#include <errno.h>
#include <stddef.h>

pmap_pool *pmap_mpi_pool_create_sized(MPI_Comm comm, int root, pmap_task_fn fn, void *ctx,
                                      const pmap_options *opt, size_t size)
{
    int nranks;
    pmap_pool *pool;

    if (MPI_Comm_size(comm, &nranks) != MPI_SUCCESS) {
        errno = EINVAL;
        return NULL;
    }
    /* Every rank checks the same arguments, so all of them agree on the
     * outcome without exchanging a message. */
    if (root < 0 || root >= nranks || fn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    if (nranks > 1) {
        /* Serving ranks are not implemented yet: refuse on every rank
         * rather than leave the others waiting for a root that never
         * sends. */
        errno = ENOSYS;
        return NULL;
    }
    pool = pmap_pool_create_sized(fn, ctx, opt, size);
    return pool;
}

/* The function of the macro's name: the layout of the first header that
 * declared it (1.1). */
#undef pmap_mpi_pool_create
pmap_pool *pmap_mpi_pool_create(MPI_Comm comm, int root, pmap_task_fn fn, void *ctx,
                                const pmap_options *opt)
{
    /* Fields added after 1.1 take their defaults. */
    return pmap_mpi_pool_create_sized(comm, root, fn, ctx, opt,
                                      offsetof(pmap_options, max_worker_rss) +
                                          sizeof opt->max_worker_rss);
}
