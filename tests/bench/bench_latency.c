/*
 * Latency: one small record through an idle pool (workers asleep in
 * read()): pmap_imap, pmap_next until PMAP_DONE, pmap_iter_free, timed
 * together. The caller sleeps between rounds so each one starts idle.
 *
 *   bench_latency [rounds]      (default 300)
 *   env BENCH_WORKERS (default: pmap_cpu_count())
 *
 * Figures: latency_idle_us (median), latency_idle_p90_us, in microseconds.
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <pmap.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int gen_one(void *ctx, pmap_buf *param)
{
    int *left = ctx;
    uint64_t v = 42;

    if (*left == 0)
        return 0;
    (*left)--;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

static int task_echo(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    return pmap_buf_set(out, param, len);
}

/* Seconds for one record, or -1 on a wrong result. */
static double one_round(pmap_pool *pool)
{
    int left = 1, rc;
    pmap_iter *it;
    pmap_item item;
    uint64_t v = 0;
    double t0 = bu_now(), t;

    it = pmap_imap(pool, gen_one, &left);
    if (it == NULL)
        return -1.0;
    rc = pmap_next(it, &item);
    if (rc == PMAP_OK && item.status == PMAP_OK && item.len == sizeof v)
        memcpy(&v, item.data, sizeof v);
    if (rc == PMAP_OK)
        rc = pmap_next(it, &item);
    pmap_iter_free(it);
    t = bu_now() - t0;
    return rc == PMAP_DONE && v == 42 ? t : -1.0;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 300, i;
    struct timespec gap = {0, 2000000}; /* 2 ms: the workers fall asleep */
    pmap_options opt;
    pmap_pool *pool;
    double *v;

    if (rounds < 1)
        rounds = 1;
    v = calloc((size_t)rounds, sizeof *v);
    pmap_options_init(&opt);
    opt.workers = (int)bu_env_long("BENCH_WORKERS", 0);
    pool = pmap_pool_create(task_echo, NULL, &opt);
    if (pool == NULL || v == NULL) {
        perror("bench_latency");
        return 1;
    }
    for (i = 0; i < 20; i++) /* warm-up: code and buffers */
        (void)one_round(pool);
    for (i = 0; i < rounds; i++) {
        nanosleep(&gap, NULL);
        v[i] = one_round(pool);
        if (v[i] < 0) {
            fprintf(stderr, "bench_latency: wrong result\n");
            return 1;
        }
    }
    pmap_pool_destroy(pool);
    bu_figure("latency_idle_us", 1e6 * bu_median(v, (size_t)rounds), "us");
    bu_figure("latency_idle_p90_us", 1e6 * v[(size_t)rounds * 9 / 10], "us");
    free(v);
    return 0;
}
