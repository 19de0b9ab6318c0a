/*
 * The public pool object: options that grow without breaking binaries
 * (DESIGN §7), the choice of backend, and the rule
 * that a pool inherited by a child of the host is inert.
 */
#define _POSIX_C_SOURCE 200809L

#include "api.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/*
 * Size of pmap_options in version 1.0 of the header: what a program built
 * against it passes to the unsuffixed entry points. Newer headers call the
 * sized ones through macros (pmap.h), so the library learns the caller's
 * size and never reads or writes past it.
 */
#define OPTIONS_V1_SIZE (offsetof(pmap_options, max_worker_rss) + sizeof(size_t))

/* The caller's options in this library's layout: zero (the default) for
 * every field the caller's header did not have. A newer header's struct
 * is accepted when the fields this library does not know are all zero,
 * i.e. left at their defaults; anything else asks for a feature this
 * library lacks. */
static int options_import(pmap_options *dst, const pmap_options *src, size_t size)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t i;

    memset(dst, 0, sizeof *dst);
    if (src == NULL)
        return 0;
    if (size < OPTIONS_V1_SIZE)
        return PMAP_EINVAL;
    for (i = sizeof *dst; i < size; i++)
        if (p[i] != 0)
            return PMAP_EINVAL;
    memcpy(dst, src, size < sizeof *dst ? size : sizeof *dst);
    return 0;
}

static int start_method_valid(int m)
{
    return m == PMAP_START_FORK || m == PMAP_START_FORKSERVER;
}

void pmap_options_init_sized(pmap_options *opt, size_t size)
{
    if (opt != NULL && size >= OPTIONS_V1_SIZE)
        memset(opt, 0, size);
}

/* The 1.0 entry point (programs built against the 1.0 header). */
#undef pmap_options_init
void pmap_options_init(pmap_options *opt)
{
    pmap_options_init_sized(opt, OPTIONS_V1_SIZE);
}

pmap_pool *pmap__pool_new_at(const struct pmap__backend_ops *ops, pmap_task_fn fn, void *ctx,
                             const pmap_options *opt, size_t opt_size, void *arg, int id_base)
{
    struct pmap__backend_cfg cfg;
    struct pmap_pool *p;
    int rc, saved;

    if (fn == NULL || ops == NULL) {
        errno = EINVAL;
        return NULL;
    }
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (options_import(&p->opt, opt, opt_size) != 0 || p->opt.workers < 0 ||
        p->opt.workers > PMAP_WORKERS_MAX || !start_method_valid(p->opt.start_method)) {
        free(p);
        errno = EINVAL;
        return NULL;
    }
    p->ops = ops;
    p->max_record = p->opt.max_record_bytes ? p->opt.max_record_bytes : PMAP__DEFAULT_MAX_RECORD;
    pmap__owner_init(&p->owner);
    cfg.fn = fn;
    cfg.ctx = ctx;
    cfg.opt = &p->opt;
    cfg.nworkers = p->opt.workers ? p->opt.workers : pmap_cpu_count();
    cfg.max_record = p->max_record;
    cfg.id_base = id_base;
    cfg.arg = arg;
    rc = ops->create(&cfg, &p->be);
    if (rc != 0) {
        saved = errno;
        free(p);
        errno = saved;
        return NULL;
    }
    p->nworkers = ops->nworkers(p->be);
    return p;
}

pmap_pool *pmap__pool_new(const struct pmap__backend_ops *ops, pmap_task_fn fn, void *ctx,
                          const pmap_options *opt, size_t opt_size, void *arg)
{
    return pmap__pool_new_at(ops, fn, ctx, opt, opt_size, arg, 0);
}

pmap_pool *pmap_pool_create_sized(pmap_task_fn fn, void *ctx, const pmap_options *opt,
                                   size_t opt_size)
{
    return pmap__pool_new(&pmap__process_ops, fn, ctx, opt, opt_size, NULL);
}

/* The 1.0 entry point. */
#undef pmap_pool_create
pmap_pool *pmap_pool_create(pmap_task_fn fn, void *ctx, const pmap_options *opt)
{
    return pmap_pool_create_sized(fn, ctx, opt, OPTIONS_V1_SIZE);
}

int pmap_pool_destroy(pmap_pool *pool)
{
    if (pool == NULL)
        return PMAP_OK;
    if (!pmap__is_owner(&pool->owner)) {
        /* Inherited by a child of the host: the workers belong to the
         * parent. Release this process's copies only. */
        pool->ops->release(pool->be);
        free(pool);
        return PMAP_OK;
    }
    if (pool->iter != NULL)
        return PMAP_EBUSY;
    pool->ops->destroy(pool->be);
    free(pool);
    return PMAP_OK;
}

int pmap__pool_usable(const pmap_pool *pool)
{
    if (pool == NULL || !pmap__is_owner(&pool->owner))
        return PMAP_EINVAL;
    return 0;
}
