/*
 * The array calls against the generator loop they replace, on tiny
 * records (two 32-bit integers in, their 32-bit sum out: what is measured
 * is the library's per-record cost, where an extra cost would show most):
 *
 *   imap:    pmap_imap_array()          vs pmap_imap() over a generator
 *                                          that reads the same array
 *   collect: pmap_map_array()           vs pmap_imap_unordered() over that
 *                                          generator, each result copied to
 *                                          results[item.index] by the loop
 *
 * One pool serves every run; the two sides of a pair alternate (A B B A
 * A B ...), so the machine's drift hits both alike. Every result is checked. Prints
 * each side's median rate and the median over rounds of the array side's
 * time relative to the generator's ("+3.0 %" is 3 % slower).
 *
 *   bench_array [records [rounds]]     (default 2000000 records, 15 rounds)
 *   env BENCH_WORKERS: workers (default: pmap_cpu_count())
 */
#include "bench_util.h"

#include <pmap.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pair {
    int32_t a, b;
};

static int task_add(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct pair p;
    int32_t sum;

    (void)ctx;
    if (len != sizeof p)
        return 1;
    memcpy(&p, param, sizeof p);
    sum = p.a + p.b;
    return pmap_buf_set(out, &sum, sizeof sum);
}

/* The generator a program writes without the array calls. */
struct gen {
    const struct pair *xs;
    size_t next, n;
};

static int gen_array(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;

    if (g->next == g->n)
        return 0;
    return pmap_buf_set(param, &g->xs[g->next++], sizeof(struct pair)) == PMAP_OK ? 1 : -1;
}

static const struct pair *xs;
static int32_t *results;
static size_t n_records;

static int check(void)
{
    size_t i;

    for (i = 0; i < n_records; i++)
        if (results[i] != xs[i].a + xs[i].b)
            return -1;
    return 0;
}

/* Drain an ordered map into results[]; seconds, or -1 on a wrong result. */
static double drain_ordered(pmap_iter *it, double t0)
{
    pmap_item item;
    size_t got = 0;
    double t1;
    int rc;

    if (it == NULL)
        return -1.0;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.status != PMAP_OK || item.len != sizeof(int32_t) || item.index != got)
            break;
        memcpy(&results[got++], item.data, sizeof(int32_t));
    }
    if (pmap_iter_free(it) != PMAP_OK)
        rc = -1;
    t1 = bu_now();
    return rc == PMAP_DONE && got == n_records ? t1 - t0 : -1.0;
}

static double run_imap_gen(pmap_pool *pool)
{
    struct gen g = {xs, 0, n_records};
    double t0 = bu_now();

    return drain_ordered(pmap_imap(pool, gen_array, &g), t0);
}

static double run_imap_array(pmap_pool *pool)
{
    double t0 = bu_now();

    return drain_ordered(pmap_imap_array(pool, xs, n_records, sizeof *xs), t0);
}

/* What pmap_map_array() does, written by hand: unordered, each result
 * copied once into its place, statuses kept. */
static int *status;

static double run_collect_gen(pmap_pool *pool)
{
    struct gen g = {xs, 0, n_records};
    pmap_item item;
    pmap_iter *it;
    size_t got = 0;
    double t0 = bu_now(), t1;
    int rc;

    it = pmap_imap_unordered(pool, gen_array, &g);
    if (it == NULL)
        return -1.0;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int st = item.status;

        if (st == PMAP_OK && item.len != sizeof(int32_t))
            st = PMAP_ETOOBIG;
        if (st == PMAP_OK)
            memcpy(&results[item.index], item.data, sizeof(int32_t));
        else
            results[item.index] = 0;
        status[item.index] = st;
        got++;
    }
    /* Freed inside the timing, as pmap_map_array() frees its iterator. */
    if (pmap_iter_free(it) != PMAP_OK)
        rc = -1;
    t1 = bu_now();
    return rc == PMAP_DONE && got == n_records ? t1 - t0 : -1.0;
}

static double run_collect_array(pmap_pool *pool)
{
    double t0 = bu_now(), t1;
    int rc = pmap_map_array(pool, xs, n_records, sizeof *xs, results, sizeof *results, status);

    t1 = bu_now();
    return rc == PMAP_OK ? t1 - t0 : -1.0;
}

typedef double (*run_fn)(pmap_pool *pool);

/* Alternate the two sides `rounds` times; print both medians and the
 * ratio. 0, or 1 when a run failed or gave a wrong result. */
static int pair(pmap_pool *pool, const char *name, run_fn gen_side, run_fn array_side,
                long rounds)
{
    double *tg = calloc((size_t)rounds, sizeof *tg), *ta = calloc((size_t)rounds, sizeof *ta);
    char fig[96];
    long r;
    int fail = 0;

    if (tg == NULL || ta == NULL) {
        fprintf(stderr, "bench_array: out of memory\n");
        exit(1);
    }
    for (r = 0; r < rounds && !fail; r++) {
        int k;

        /* A B, then B A: neither side always runs first (warmer caches). */
        for (k = 0; k < 2; k++) {
            int array_now = (k == 0) == (r % 2 == 1);
            double t;

            memset(results, 0, n_records * sizeof *results);
            t = array_now ? array_side(pool) : gen_side(pool);
            fail |= t < 0 || check() != 0;
            if (array_now)
                ta[r] = t;
            else
                tg[r] = t;
        }
    }
    if (fail) {
        fprintf(stderr, "bench_array: %s: a run failed or gave a wrong result\n", name);
    } else {
        double *ratio = calloc((size_t)rounds, sizeof *ratio), mg, ma;

        if (ratio == NULL) {
            fprintf(stderr, "bench_array: out of memory\n");
            exit(1);
        }
        /* The two runs of a round are adjacent in time: their ratio
         * cancels the machine's slower drift, which the ratio of the
         * medians would not. */
        for (r = 0; r < rounds; r++)
            ratio[r] = ta[r] / tg[r];
        mg = bu_median(tg, (size_t)rounds);
        ma = bu_median(ta, (size_t)rounds);
        snprintf(fig, sizeof fig, "%s_generator", name);
        bu_figure(fig, (double)n_records / mg, "records/s");
        snprintf(fig, sizeof fig, "%s_array", name);
        bu_figure(fig, (double)n_records / ma, "records/s");
        snprintf(fig, sizeof fig, "%s_array_vs_generator", name);
        bu_figure(fig, (bu_median(ratio, (size_t)rounds) - 1.0) * 100.0, "%_time");
        free(ratio);
    }
    free(tg);
    free(ta);
    return fail;
}

int main(int argc, char **argv)
{
    long rounds = argc > 2 ? strtol(argv[2], NULL, 10) : 15;
    struct pair *v;
    pmap_options opt;
    pmap_pool *pool;
    size_t i;
    int fail = 0;

    n_records = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 2000000u;
    if (rounds < 1)
        rounds = 1;
    v = malloc(n_records * sizeof *v);
    results = malloc(n_records * sizeof *results);
    status = malloc(n_records * sizeof *status);
    if (v == NULL || results == NULL || status == NULL) {
        fprintf(stderr, "bench_array: out of memory\n");
        return 1;
    }
    for (i = 0; i < n_records; i++) {
        v[i].a = (int32_t)(i & 0xffff);
        v[i].b = (int32_t)(i >> 16);
    }
    xs = v;
    pmap_options_init(&opt);
    opt.workers = (int)bu_env_long("BENCH_WORKERS", 0);
    pool = pmap_pool_create(task_add, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        return 1;
    }
    /* One unmeasured run first: page faults of results[], adaptive chunk. */
    (void)run_imap_gen(pool);
    fail |= pair(pool, "array_imap", run_imap_gen, run_imap_array, rounds);
    fail |= pair(pool, "array_collect", run_collect_gen, run_collect_array, rounds);
    pmap_pool_destroy(pool);
    free(v);
    free(results);
    free(status);
    return fail;
}
