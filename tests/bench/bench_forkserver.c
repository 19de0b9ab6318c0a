/*
 * The fork server (PMAP_START_FORKSERVER) beside fork mode, in one run,
 * alternating fork, server, fork, server ... so that a noisy machine
 * hits both alike. Each figure is printed for both modes and as the
 * ratio server / fork:
 *
 *   create_destroy_w2_us       pmap_pool_create + destroy, 2 workers (median)
 *   crash_to_result_us         from a crash's item to the next item, which
 *                              needs a replacement worker (median, 1 worker)
 *   caller_cpu_per_replace_us  with a big touched heap in the caller (made
 *                              before create): the caller thread's own CPU
 *                              time per replacement (getrusage)
 *   tiny_records_per_s         tiny records, 2 workers, ordered (best of rounds)
 *
 *   bench_forkserver [rounds]  (default 15)
 *   env BENCH_HEAP_MIB: the big heap (default 1024; 0 skips the figure)
 *       BENCH_TINY: records per tiny run (default 2000000)
 */
#ifdef __linux__
#define _GNU_SOURCE /* RUSAGE_THREAD */
#endif
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <pmap.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef RUSAGE_THREAD
#define RUSAGE_THREAD RUSAGE_SELF
#endif

static const int mode_value[2] = {PMAP_START_FORK, PMAP_START_FORKSERVER};

/* A record of 1 byte crashes its worker; anything else is echoed. */
static int task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    if (len == 1)
        abort();
    return pmap_buf_set(out, param, len);
}

struct gen {
    uint64_t next, n;
    uint64_t crash_every; /* 0: never; else records k * crash_every crash */
};

static int gen(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    uint64_t v;

    if (g->next == g->n)
        return 0;
    v = g->next++;
    if (g->crash_every && v % g->crash_every == 0)
        return pmap_buf_set(param, "x", 1) == PMAP_OK ? 1 : -1;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

static pmap_pool *pool_new(int mode, int workers, unsigned chunk)
{
    pmap_options opt;
    pmap_pool *pool;

    pmap_options_init(&opt);
    opt.workers = workers;
    opt.chunk = chunk;
    opt.start_method = mode_value[mode];
    pool = pmap_pool_create(task, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        exit(1);
    }
    return pool;
}

static double create_destroy_us(int mode)
{
    double t0 = bu_now();

    pmap_pool_destroy(pool_new(mode, 2, 0));
    return (bu_now() - t0) * 1e6;
}

/* The map of `g` on `pool`: the median time from each crash's item to
 * the item after it (NULL: not measured); exits on any surprise. */
static double run_map(pmap_pool *pool, struct gen *g, double *gaps, size_t *ngaps)
{
    pmap_iter *it = pmap_imap(pool, gen, g);
    pmap_item item;
    double crashed_at = -1, t0 = bu_now();
    int rc;

    if (it == NULL) {
        perror("pmap_imap");
        exit(1);
    }
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        double now = bu_now();

        if (crashed_at >= 0 && gaps != NULL)
            gaps[(*ngaps)++] = (now - crashed_at) * 1e6;
        crashed_at = -1;
        if (item.status == PMAP_ECRASH && item.code == SIGABRT) {
            crashed_at = now;
        } else if (item.status != PMAP_OK || item.len != sizeof(uint64_t)) {
            fprintf(stderr, "bench_forkserver: item %llu: %s\n", (unsigned long long)item.index,
                    pmap_strerror(item.status));
            exit(1);
        }
    }
    if (rc != PMAP_DONE || pmap_iter_free(it) != PMAP_OK) {
        fprintf(stderr, "bench_forkserver: %s\n", pmap_strerror(rc));
        exit(1);
    }
    return bu_now() - t0;
}

static double thread_cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

static void pair(const char *name, double fork_v, double server_v, const char *unit)
{
    char buf[96];

    snprintf(buf, sizeof buf, "%s_fork", name);
    bu_figure(buf, fork_v, unit);
    snprintf(buf, sizeof buf, "%s_server", name);
    bu_figure(buf, server_v, unit);
    snprintf(buf, sizeof buf, "%s_ratio", name);
    bu_figure(buf, fork_v > 0 ? server_v / fork_v : 0, "x");
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 15;
    long heap_mib = bu_env_long("BENCH_HEAP_MIB", 1024);
    uint64_t tiny = (uint64_t)bu_env_long("BENCH_TINY", 2000000);
    double *v[2], best[2] = {0, 0};
    int i, m;

    if (rounds < 1)
        rounds = 1;
    v[0] = calloc((size_t)rounds * 8u, sizeof(double));
    v[1] = calloc((size_t)rounds * 8u, sizeof(double));
    if (v[0] == NULL || v[1] == NULL)
        return 1;

    for (m = 0; m < 2; m++)
        (void)create_destroy_us(m); /* warm-up */
    for (i = 0; i < rounds; i++)
        for (m = 0; m < 2; m++)
            v[m][i] = create_destroy_us(m);
    pair("create_destroy_w2_us", bu_median(v[0], (size_t)rounds), bu_median(v[1], (size_t)rounds),
         "us");

    {
        /* Four crashes a round, each followed by an echo on the replacement. */
        pmap_pool *pool[2] = {pool_new(0, 1, 1), pool_new(1, 1, 1)};
        size_t n[2] = {0, 0};

        for (i = 0; i < rounds; i++) {
            for (m = 0; m < 2; m++) {
                struct gen g = {0, 8, 2};

                run_map(pool[m], &g, v[m], &n[m]);
            }
        }
        pair("crash_to_result_us", bu_median(v[0], n[0]), bu_median(v[1], n[1]), "us");
        pmap_pool_destroy(pool[0]);
        pmap_pool_destroy(pool[1]);
    }

    if (heap_mib > 0) {
        size_t bytes = (size_t)heap_mib << 20, k;
        unsigned char *heap = malloc(bytes);
        pmap_pool *pool[2];
        double cpu[2] = {0, 0};
        enum { CRASHES = 10 };

        if (heap == NULL) {
            perror("bench_forkserver: heap");
            return 1;
        }
        for (k = 0; k < bytes; k += 4096)
            heap[k] = (unsigned char)k;
        pool[0] = pool_new(0, 1, 1);
        pool[1] = pool_new(1, 1, 1);
        for (i = 0; i < 3; i++) {
            for (m = 0; m < 2; m++) {
                struct gen g = {0, 2 * CRASHES, 2};
                double c0 = thread_cpu_s();

                run_map(pool[m], &g, NULL, NULL);
                cpu[m] += thread_cpu_s() - c0;
            }
        }
        pair("caller_cpu_per_replace_us", cpu[0] / (3 * CRASHES) * 1e6,
             cpu[1] / (3 * CRASHES) * 1e6, "us");
        pmap_pool_destroy(pool[0]);
        pmap_pool_destroy(pool[1]);
        /* Keep the heap alive (and touched) until here. */
        if (heap[bytes / 2] == 0xff && heap[1] == 0xff)
            printf("#\n");
        free(heap);
    }

    {
        pmap_pool *pool[2] = {pool_new(0, 2, 0), pool_new(1, 2, 0)};
        int r, tr = rounds < 3 ? rounds : 3;

        for (r = 0; r < tr; r++) {
            for (m = 0; m < 2; m++) {
                struct gen g = {0, tiny, 0};
                double rate = (double)tiny / run_map(pool[m], &g, NULL, NULL);

                if (rate > best[m])
                    best[m] = rate;
            }
        }
        pair("tiny_records_per_s", best[0], best[1], "records/s");
        pmap_pool_destroy(pool[0]);
        pmap_pool_destroy(pool[1]);
    }
    free(v[0]);
    free(v[1]);
    return 0;
}
