/*
 * Caller memory: peak resident set growth during a map of 10 million tiny
 * records (default options), with a fast consumer and with a stalled one
 * (it takes the first item, then sleeps while the window fills, then takes
 * the rest). Growth = peak RSS during the map - RSS before it (pool
 * running). Each case runs in a child process of its own, so one case's
 * peak does not hide the other's.
 *
 *   bench_rss [records]      (default 10000000)
 *   env BENCH_STALL_MS: the stall (default 2000)
 *
 * Figures: rss_records (the input's length), rss_growth_fast_MiB,
 * rss_growth_stalled_MiB (MiB = 2^20 bytes).
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <pmap.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct gen {
    uint64_t next, n;
};

static int gen_pairs(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    int32_t v[2];

    if (g->next == g->n)
        return 0;
    v[0] = (int32_t)(g->next & 0xffff);
    v[1] = (int32_t)(g->next >> 16);
    g->next++;
    return pmap_buf_set(param, v, sizeof v) == PMAP_OK ? 1 : -1;
}

static int task_add(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    int32_t v[2], sum;

    (void)ctx;
    if (len != sizeof v)
        return 1;
    memcpy(v, param, sizeof v);
    sum = v[0] + v[1];
    return pmap_buf_set(out, &sum, sizeof sum);
}

static int run_case(const char *name, uint64_t n, long stall_ms)
{
    pmap_pool *pool = pmap_pool_create(task_add, NULL, NULL);
    struct gen g = {0, n};
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0;
    long base;
    int rc;

    if (pool == NULL)
        return 1;
    base = bu_rss_kib();
    (void)bu_reset_peak();
    it = pmap_imap(pool, gen_pairs, &g);
    if (it == NULL)
        return 1;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.status != PMAP_OK || item.index != got)
            return 1;
        if (got++ == 0 && stall_ms > 0) {
            struct timespec ts = {stall_ms / 1000, (stall_ms % 1000) * 1000000L};

            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        }
    }
    pmap_iter_free(it);
    if (rc != PMAP_DONE || got != n)
        return 1;
    bu_figure(name, (double)(bu_peak_rss_kib() - base) / 1024.0, "MiB");
    pmap_pool_destroy(pool);
    return 0;
}

static int in_child(const char *name, uint64_t n, long stall_ms)
{
    pid_t pid;
    int st;

    fflush(NULL);
    pid = fork();
    if (pid == 0)
        _exit(run_case(name, n, stall_ms));
    if (pid < 0)
        return 1;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 10000000u;
    long stall = bu_env_long("BENCH_STALL_MS", 2000);
    int fail = 0;

    bu_figure("rss_records", (double)n, "records");
    fail |= in_child("rss_growth_fast_MiB", n, 0);
    fail |= in_child("rss_growth_stalled_MiB", n, stall);
    if (fail)
        fprintf(stderr, "bench_rss: a map failed\n");
    return fail;
}
