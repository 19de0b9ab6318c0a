/*
 * The event-loop path beside the blocking one, in one run: tiny records
 * (two 32-bit integers in, their sum out, as bench_tiny), default options,
 * consumed by the pmap_next() loop and by a poll() loop over
 * pmap_iter_fd() with pmap_iter_timeout() and pmap_try_next(). The two
 * alternate, round after round, so that the drift of a shared machine
 * falls on both; each round gives one poll/blocking ratio, and the median
 * ratio is printed with the median rates. Every result is checked.
 *
 *   bench_evloop [records]            (default 2 000 000)
 *   env BENCH_WORKERS: workers (default: pmap_cpu_count())
 *       BENCH_REPEAT: rounds (default 5)
 *       BENCH_ONLY: run only the figures whose name contains this
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_pairs.h"
#include "bench_util.h"

#include <pmap.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tally {
    uint64_t got, bad;
};

static void check(struct tally *t, const pmap_item *item, int ordered)
{
    int32_t sum;

    if (item->status != PMAP_OK || item->len != sizeof sum || (ordered && item->index != t->got)) {
        t->bad++;
    } else {
        memcpy(&sum, item->data, sizeof sum);
        if (sum != (int32_t)((item->index & 0xffff) + (item->index >> 16)))
            t->bad++;
    }
    t->got++;
}

/* Records per second through one pool, or -1 on a wrong result. */
static double run(pmap_pool *pool, int ordered, int evloop, uint64_t n)
{
    struct bu_pairs g = {0, n};
    struct tally t = {0, 0};
    pmap_iter *it;
    pmap_item item;
    double t0, t1;
    int rc;

    t0 = bu_now();
    it = ordered ? pmap_imap(pool, bu_gen_pairs, &g) : pmap_imap_unordered(pool, bu_gen_pairs, &g);
    if (it == NULL) {
        perror("pmap_imap");
        exit(1);
    }
    if (!evloop) {
        while ((rc = pmap_next(it, &item)) == PMAP_OK)
            check(&t, &item, ordered);
    } else {
        struct pollfd p;

        p.fd = pmap_iter_fd(it);
        p.events = POLLIN;
        if (p.fd < 0) {
            perror("pmap_iter_fd");
            exit(1);
        }
        for (;;) {
            if (poll(&p, 1, pmap_iter_timeout(it)) < 0 && errno != EINTR) {
                perror("poll");
                exit(1);
            }
            while ((rc = pmap_try_next(it, &item)) == PMAP_OK)
                check(&t, &item, ordered);
            if (rc != PMAP_EAGAIN)
                break;
        }
    }
    t1 = bu_now();
    pmap_iter_free(it);
    if (rc != PMAP_DONE || t.got != n || t.bad != 0) {
        fprintf(stderr, "bench_evloop: %s, %llu of %llu records, %llu wrong\n", pmap_strerror(rc),
                (unsigned long long)t.got, (unsigned long long)n, (unsigned long long)t.bad);
        return -1.0;
    }
    return (double)n / (t1 - t0);
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000u;
    long rounds = bu_env_long("BENCH_REPEAT", 5);
    const char *only = getenv("BENCH_ONLY");
    static const struct {
        const char *name;
        int ordered;
    } cases[] = {{"evloop_tiny_ordered", 1}, {"evloop_tiny_unordered", 0}};
    pmap_options opt;
    pmap_pool *pool;
    size_t c;
    int fail = 0;

    if (rounds < 1)
        rounds = 1;
    pmap_options_init(&opt);
    opt.workers = (int)bu_env_long("BENCH_WORKERS", 0);
    pool = pmap_pool_create(bu_task_add, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        return 1;
    }
    for (c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double *blk = calloc((size_t)rounds, sizeof *blk);
        double *evl = calloc((size_t)rounds, sizeof *evl);
        double *ratio = calloc((size_t)rounds, sizeof *ratio);
        char name[96];
        long r;

        if (only != NULL && strstr(cases[c].name, only) == NULL)
            continue;
        if (blk == NULL || evl == NULL || ratio == NULL) {
            fprintf(stderr, "bench_evloop: out of memory\n");
            return 1;
        }
        for (r = 0; r < rounds && !fail; r++) {
            /* A B, then B A: neither always runs first. */
            int first = (int)(r % 2);

            if (first == 0) {
                blk[r] = run(pool, cases[c].ordered, 0, n);
                evl[r] = run(pool, cases[c].ordered, 1, n);
            } else {
                evl[r] = run(pool, cases[c].ordered, 1, n);
                blk[r] = run(pool, cases[c].ordered, 0, n);
            }
            if (blk[r] < 0 || evl[r] < 0)
                fail = 1;
            else
                ratio[r] = evl[r] / blk[r];
        }
        if (!fail) {
            snprintf(name, sizeof name, "%s_blocking", cases[c].name);
            bu_figure(name, bu_median(blk, (size_t)rounds), "records/s");
            snprintf(name, sizeof name, "%s_poll", cases[c].name);
            bu_figure(name, bu_median(evl, (size_t)rounds), "records/s");
            snprintf(name, sizeof name, "%s_poll_ratio", cases[c].name);
            bu_figure(name, bu_median(ratio, (size_t)rounds), "poll/blocking");
        }
        free(blk);
        free(evl);
        free(ratio);
    }
    pmap_pool_destroy(pool);
    return fail;
}
