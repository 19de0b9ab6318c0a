/*
 * CPU-bound tasks of about 0.1, 1 and 10 ms with 1..N workers: wall time,
 * speedup and parallel efficiency of pmap_imap (default options) against a
 * serial loop of the same task function and against an OpenMP
 * `parallel for schedule(dynamic)` loop (when built with OpenMP), the
 * thread-based reference: no processes, no pipes, no copies.
 *
 *   bench_cpu [max_workers]      (default: pmap_cpu_count())
 *   env BENCH_CPU_MS: serial work per task size in ms (default 500)
 *       BENCH_REPEAT: runs per figure, the best is printed (default 3)
 *
 * Figures per task size T (100us, 1ms, 10ms) and worker count W:
 *   cpu_T_serial                 s      the serial loop
 *   cpu_T_pmap_wW, cpu_T_omp_wW  s      wall time of the parallel loop
 *   ..._speedup                  x      serial / wall
 *   ..._eff                      %      serial / (W * wall)
 *   cpu_T_pmap_vs_omp_wW         x      pmap wall / OpenMP wall (1.0 = as fast)
 */
#include "bench_util.h"

#include <pmap.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct job {
    uint64_t iters;
    uint64_t seed;
};

struct jobs {
    uint64_t iters, next, n;
};

static int task_spin(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct job j;
    uint64_t x;

    (void)ctx;
    if (len != sizeof j)
        return 1;
    memcpy(&j, param, sizeof j);
    x = bu_spin(j.iters, j.seed);
    return pmap_buf_set(out, &x, sizeof x);
}

static int gen_jobs(void *ctx, pmap_buf *param)
{
    struct jobs *g = ctx;
    struct job j;

    if (g->next == g->n)
        return 0;
    j.iters = g->iters;
    j.seed = ++g->next;
    return pmap_buf_set(param, &j, sizeof j) == PMAP_OK ? 1 : -1;
}

static double run_serial(uint64_t iters, uint64_t n, uint64_t *check)
{
    double t0 = bu_now();
    uint64_t acc = 0, i;

    for (i = 0; i < n; i++)
        acc ^= bu_spin(iters, i + 1);
    *check = acc;
    return bu_now() - t0;
}

/* Wall time of the map (pool already running), or -1 on a wrong result. */
static double run_pmap(pmap_pool *pool, uint64_t iters, uint64_t n, uint64_t check)
{
    struct jobs g = {iters, 0, n};
    pmap_iter *it;
    pmap_item item;
    uint64_t acc = 0, got = 0;
    double t0 = bu_now(), t;
    int rc;

    it = pmap_imap(pool, gen_jobs, &g);
    if (it == NULL)
        return -1.0;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t x;

        if (item.status != PMAP_OK || item.len != sizeof x)
            break;
        memcpy(&x, item.data, sizeof x);
        acc ^= x;
        got++;
    }
    t = bu_now() - t0;
    pmap_iter_free(it);
    if (rc != PMAP_DONE || got != n || acc != check) {
        fprintf(stderr, "bench_cpu: map failed (%s, %llu of %llu)\n", pmap_strerror(rc),
                (unsigned long long)got, (unsigned long long)n);
        return -1.0;
    }
    return t;
}

#ifdef _OPENMP
static double run_omp(int threads, uint64_t iters, uint64_t n, uint64_t check)
{
    double t0 = bu_now(), t;
    uint64_t acc = 0;
    long i;

#pragma omp parallel for schedule(dynamic) num_threads(threads) reduction(^ : acc)
    for (i = 0; i < (long)n; i++)
        acc ^= bu_spin(iters, (uint64_t)i + 1);
    t = bu_now() - t0;
    return acc == check ? t : -1.0;
}
#endif

static void figure(const char *size, const char *what, int w, const char *suffix, double v,
                   const char *unit)
{
    char name[96];

    if (w > 0)
        snprintf(name, sizeof name, "cpu_%s_%s_w%d%s", size, what, w, suffix);
    else
        snprintf(name, sizeof name, "cpu_%s_%s%s", size, what, suffix);
    bu_figure(name, v, unit);
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        double seconds;
    } sizes[] = {{"100us", 100e-6}, {"1ms", 1e-3}, {"10ms", 10e-3}};
    int maxw = argc > 1 ? atoi(argv[1]) : pmap_cpu_count();
    double work = (double)bu_env_long("BENCH_CPU_MS", 500) / 1000.0;
    long repeat = bu_env_long("BENCH_REPEAT", 3);
    uint64_t steps_per_s;
    size_t s;
    int w;

    if (maxw < 1)
        maxw = 1;
    if (repeat < 1)
        repeat = 1;
    steps_per_s = bu_spin_calibrate(1.0);
#ifdef _OPENMP
    {
        /* Start OpenMP's threads outside the measurement, as the pool's
         * workers are started outside it. */
        uint64_t warm = 0;
        long i;

#pragma omp parallel for num_threads(maxw) reduction(^ : warm)
        for (i = 0; i < maxw; i++)
            warm ^= bu_spin(1000, (uint64_t)i + 1);
        (void)warm;
    }
#endif
    for (s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        uint64_t iters = (uint64_t)((double)steps_per_s * sizes[s].seconds) + 1u;
        uint64_t n = (uint64_t)(work / sizes[s].seconds + 0.5), check = 0;
        double serial = 1e30, pm[64], om[64];
        long r;

        if (maxw > 64)
            maxw = 64;
        for (w = 1; w <= maxw; w++)
            pm[w - 1] = om[w - 1] = 1e30;
        for (r = 0; r < repeat; r++) {
            double t = run_serial(iters, n, &check);

            if (t < serial)
                serial = t;
            for (w = 1; w <= maxw; w++) {
                pmap_options opt;
                pmap_pool *pool;

                pmap_options_init(&opt);
                opt.workers = w;
                pool = pmap_pool_create(task_spin, NULL, &opt);
                if (pool == NULL) {
                    perror("pmap_pool_create");
                    return 1;
                }
                t = run_pmap(pool, iters, n, check);
                pmap_pool_destroy(pool);
                if (t < 0)
                    return 1;
                if (t < pm[w - 1])
                    pm[w - 1] = t;
#ifdef _OPENMP
                t = run_omp(w, iters, n, check);
                if (t < 0) {
                    fprintf(stderr, "bench_cpu: OpenMP loop gave a wrong result\n");
                    return 1;
                }
                if (t < om[w - 1])
                    om[w - 1] = t;
#endif
            }
        }
        figure(sizes[s].name, "tasks", 0, "", (double)n, "tasks");
        figure(sizes[s].name, "serial", 0, "", serial, "s");
        for (w = 1; w <= maxw; w++) {
            figure(sizes[s].name, "pmap", w, "", pm[w - 1], "s");
            figure(sizes[s].name, "pmap", w, "_speedup", serial / pm[w - 1], "x");
            figure(sizes[s].name, "pmap", w, "_eff", 100.0 * serial / (w * pm[w - 1]), "%");
#ifdef _OPENMP
            figure(sizes[s].name, "omp", w, "", om[w - 1], "s");
            figure(sizes[s].name, "omp", w, "_speedup", serial / om[w - 1], "x");
            figure(sizes[s].name, "omp", w, "_eff", 100.0 * serial / (w * om[w - 1]), "%");
            figure(sizes[s].name, "pmap_vs_omp", w, "", pm[w - 1] / om[w - 1], "x");
#endif
        }
    }
    return 0;
}
