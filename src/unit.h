/*
 * What the optional units that are separate libraries (pmap_mpi) need of
 * the core beyond its public API: the backend-neutral pool on a backend of
 * their own, the process backend, and the buffer helpers.
 *
 * The core's internal functions are hidden in its shared library, and a
 * unit must not carry a copy of the core either: its workers would then
 * set a pmap_worker_id() other than the one the task calls, and a pool
 * made by the copy would be driven by another copy's iterator. So the core
 * exports this one table, under a pmap_ name that no installed header
 * declares. Its layout changes with the library: units are built from the
 * same tree as the core, and the size field lets a unit refuse a core
 * whose table is shorter than the one it was built against.
 */
#ifndef PMAP_UNIT_H
#define PMAP_UNIT_H

#include "api.h"
#include "backend.h"
#include "buf.h"

#include <stddef.h>

struct pmap__unit {
    size_t size; /* sizeof(struct pmap__unit) of the core */
    /* pmap__pool_new, with pmap_worker_id() of place 0 given. */
    pmap_pool *(*pool_new)(const struct pmap__backend_ops *ops, pmap_task_fn fn, void *ctx,
                           const pmap_options *opt, size_t opt_size, void *arg, int id_base);
    const struct pmap__backend_ops *process_ops;
    void (*buf_init)(struct pmap_buf *b, size_t max);
    void (*buf_trim)(struct pmap_buf *b, size_t keep);
    void (*buf_free)(struct pmap_buf *b);
    int (*stash_reserve)(struct pmap__stash *s, struct pmap_buf *b, size_t cap);
};

/* The table (never NULL). */
PMAP_API const struct pmap__unit *pmap_unit_internals(void);

#endif /* PMAP_UNIT_H */
