/*
 * The public pool object (api.c): backend-neutral. It holds the caller's
 * options, the open-iterator slot and the backend
 * (ops + state) that runs the tasks. Choosing a backend is the one
 * argument of pmap__pool_new.
 */
#ifndef PMAP_API_H
#define PMAP_API_H

#include "backend.h"
#include "internal.h"
#include "io.h"

#include <stddef.h>

struct pmap_iter;

struct pmap_pool {
    const struct pmap__backend_ops *ops;
    void *be;
    pmap_options opt; /* the caller's options, in this library's layout */
    size_t max_record;
    int nworkers;     /* the backend's places */
    struct pmap__owner owner;
    struct pmap_iter *iter; /* the open iterator, NULL if none */
};

/*
 * A pool on `ops`: copies the caller's options (`opt_size` bytes of them,
 * DESIGN §7; opt NULL: defaults) and creates the backend with `arg`.
 * NULL + errno on failure. The window is resolved per map by the iterator.
 */
pmap_pool *pmap__pool_new(const struct pmap__backend_ops *ops, pmap_task_fn fn, void *ctx,
                          const pmap_options *opt, size_t opt_size, void *arg);

/* pmap__pool_new whose place 0 has pmap_worker_id() id_base (the places
 * of a serving MPI rank continue the numbering of the ranks before it). */
pmap_pool *pmap__pool_new_at(const struct pmap__backend_ops *ops, pmap_task_fn fn, void *ctx,
                             const pmap_options *opt, size_t opt_size, void *arg, int id_base);

/* 0 when the pool can run a map in this process; PMAP_EINVAL when it is
 * NULL or was inherited by a child of the host. */
int pmap__pool_usable(const pmap_pool *pool);

#endif /* PMAP_API_H */
