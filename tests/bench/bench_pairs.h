/*
 * The tiny record of the throughput benchmarks: two 32-bit integers in,
 * their 32-bit sum out, the smallest useful task, so that what is timed is
 * the library's own cost per record. In a header of static functions, so
 * that the utility library need not link libpmap.
 */
#ifndef PMAP_BENCH_PAIRS_H
#define PMAP_BENCH_PAIRS_H

#include <pmap.h>

#include <stdint.h>
#include <string.h>

/* The generator's state: records next .. n-1 remain. */
struct bu_pairs {
    uint64_t next, n;
};

/* Record i is (i & 0xffff, i >> 16): every sum is known to the checker. */
static inline int bu_gen_pairs(void *ctx, pmap_buf *param)
{
    struct bu_pairs *g = ctx;
    int32_t *v;

    if (g->next == g->n)
        return 0;
    v = pmap_buf_reserve(param, 2 * sizeof *v);
    if (v == NULL)
        return -1;
    v[0] = (int32_t)(g->next & 0xffff);
    v[1] = (int32_t)(g->next >> 16);
    g->next++;
    return 1;
}

static inline int bu_task_add(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    int32_t v[2], sum;

    (void)ctx;
    if (len != sizeof v)
        return 1;
    memcpy(v, param, sizeof v);
    sum = v[0] + v[1];
    return pmap_buf_set(out, &sum, sizeof sum);
}

#endif
