/*
 * Pool start-up and shut-down: pmap_pool_create + pmap_pool_destroy with 2
 * and 8 workers (every worker forked and ready, then stopped and reaped),
 * and with 2 workers again after the caller has touched a 1 GiB heap
 * (fork copies page tables: the cost grows with the caller's memory).
 *
 *   bench_create [rounds]      (default 30; 5 with the 1 GiB heap)
 *   env BENCH_HEAP_MIB: the big heap's size (default 1024; 0 skips it)
 *
 * Figures (median, microseconds): create_destroy_w2_us, create_destroy_w8_us,
 * create_destroy_w2_heap1GiB_us; and for many workers (env BENCH_MANY,
 * a comma-separated list of counts, default "1000,4000"; "0" skips them)
 * create_destroy_wN_us with its per-worker cost create_destroy_wN_per_worker_us
 * (one round each: the cost must grow linearly with N). Many workers need
 * 2 descriptors each in the caller: the soft RLIMIT_NOFILE is raised to
 * the hard one for them.
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <pmap.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static int task_nop(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    (void)param;
    (void)len;
    (void)out;
    return 0;
}

static double median_us(int workers, int rounds)
{
    double *v = calloc((size_t)rounds, sizeof *v), m;
    pmap_options opt;
    int i;

    if (v == NULL)
        exit(1);
    pmap_options_init(&opt);
    opt.workers = workers;
    for (i = 0; i < rounds; i++) {
        double t0 = bu_now();
        pmap_pool *pool = pmap_pool_create(task_nop, NULL, &opt);

        if (pool == NULL) {
            perror("pmap_pool_create");
            exit(1);
        }
        pmap_pool_destroy(pool);
        v[i] = (bu_now() - t0) * 1e6;
    }
    m = bu_median(v, (size_t)rounds);
    free(v);
    return m;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 30;
    long heap_mib = bu_env_long("BENCH_HEAP_MIB", 1024);
    char name[64];

    if (rounds < 1)
        rounds = 1;
    (void)median_us(2, 3); /* warm-up */
    bu_figure("create_destroy_w2_us", median_us(2, rounds), "us");
    bu_figure("create_destroy_w8_us", median_us(8, rounds), "us");
    if (heap_mib > 0) {
        size_t bytes = (size_t)heap_mib << 20;
        unsigned char *heap = malloc(bytes);

        if (heap == NULL) {
            perror("bench_create: heap");
            return 1;
        }
        {
            /* Every page written (through a volatile pointer, so that the
             * stores are not dropped as dead before free), so fork has
             * them all to map. */
            volatile unsigned char *v = heap;
            size_t off;

            for (off = 0; off < bytes; off += 4096)
                v[off] = (unsigned char)off;
        }
        snprintf(name, sizeof name, "create_destroy_w2_heap%ldMiB_us", heap_mib);
        bu_figure(name, median_us(2, rounds < 5 ? rounds : 5), "us");
        free(heap);
    }
    {
        const char *many = getenv("BENCH_MANY");
        char list[256], *tok, *save = NULL;
        struct rlimit rl;

        snprintf(list, sizeof list, "%s", many != NULL ? many : "1000,4000");
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
            rl.rlim_cur = rl.rlim_max;
            (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
        for (tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
            int n = atoi(tok);
            double us;

            if (n <= 0)
                continue;
            us = median_us(n, 1);
            snprintf(name, sizeof name, "create_destroy_w%d_us", n);
            bu_figure(name, us, "us");
            snprintf(name, sizeof name, "create_destroy_w%d_per_worker_us", n);
            bu_figure(name, us / n, "us");
        }
    }
    return 0;
}
