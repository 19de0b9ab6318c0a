/*
 * pmap_mpi beside the local pool, in one run (rounds alternate local, MPI,
 * local, MPI). Run under mpirun: rank 0 is the root and measures, the
 * other ranks serve. The local pool runs on the root with as many workers
 * as all serving ranks together.
 *
 *   mpirun -np 3 bench_mpi [tiny_records [ms_tasks]]
 *   env BENCH_WORKERS: workers per serving rank (default 1)
 *       BENCH_REPEAT: rounds per figure, the median is printed (default 3)
 *       BENCH_RSS_RECORDS: records of the root's memory check (default
 *       2000000; 0: skipped)
 *
 * Figures:
 *   mpi_tiny_local, mpi_tiny_mpi   records/s  tiny records, ordered, default options
 *   mpi_tiny_ratio                 %          MPI / local
 *   mpi_1ms_local, mpi_1ms_mpi     s          wall time of ms_tasks tasks of ~1 ms CPU
 *   mpi_1ms_ratio                  x          MPI / local
 *   mpi_1ms_root_cpu               %          the root's own CPU time (user + sys) over
 *                                             the MPI map's wall time, while it waits
 *   mpi_rss_root_first, _all       KiB        the root's peak RSS after the first tenth
 *                                             of BENCH_RSS_RECORDS tiny records and after all
 */
#include "bench_util.h"

#include <pmap_mpi.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

struct gen {
    uint64_t next, n;
    uint64_t iters; /* 0: tiny records; else spin tasks of this many steps */
};

static int gen(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    uint64_t v[2];

    if (g->next == g->n)
        return 0;
    v[0] = g->next;
    v[1] = g->iters;
    g->next++;
    return pmap_buf_set(param, v, g->iters ? sizeof v : sizeof v[0]) == PMAP_OK ? 1 : -1;
}

static int task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v[2] = {0, 0}, r;

    (void)ctx;
    if (len != sizeof v[0] && len != sizeof v)
        return 1;
    memcpy(v, param, len);
    r = len == sizeof v ? bu_spin(v[1], v[0]) : v[0] * 3u + 1u;
    return pmap_buf_set(out, &r, sizeof r);
}

static double cpu_self(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

/* Wall seconds of one ordered map, or -1 if a result was wrong. When
 * rss_at is not 0, *rss_first gets the peak RSS after that many records. */
static double run(pmap_pool *pool, uint64_t n, uint64_t iters, uint64_t rss_at, long *rss_first)
{
    struct gen g = {0, n, iters};
    pmap_iter *it = pmap_imap(pool, gen, &g);
    pmap_item item;
    uint64_t got = 0;
    double t0 = bu_now();
    int rc, bad = 0;

    if (it == NULL)
        return -1;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t r;

        if (item.status != PMAP_OK || item.len != sizeof r || item.index != got) {
            bad = 1;
        } else if (iters == 0) {
            memcpy(&r, item.data, sizeof r);
            bad |= r != item.index * 3u + 1u;
        }
        if (++got == rss_at && rss_first != NULL)
            *rss_first = bu_peak_rss_kib();
    }
    pmap_iter_free(it);
    if (rc != PMAP_DONE || bad || got != n)
        return -1;
    return bu_now() - t0;
}

int main(int argc, char **argv)
{
    uint64_t tiny = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
    uint64_t ms_tasks = argc > 2 ? strtoull(argv[2], NULL, 10) : 2000;
    int per_rank = (int)bu_env_long("BENCH_WORKERS", 1);
    int repeat = (int)bu_env_long("BENCH_REPEAT", 3);
    uint64_t rss_n = (uint64_t)bu_env_long("BENCH_RSS_RECORDS", 2000000);
    pmap_options opt;
    pmap_pool *mpi, *local;
    int nranks, me, i, failed = 0;
    double *tl, *tm, *wl, *wm, *cm;
    uint64_t iters;

    if (MPI_Init(&argc, &argv) != MPI_SUCCESS)
        return 1;
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    pmap_options_init(&opt);
    opt.workers = per_rank;
    mpi = pmap_mpi_pool_create(MPI_COMM_WORLD, 0, task, NULL, &opt);
    if (me != 0) {
        MPI_Finalize();
        return mpi != NULL;
    }
    if (mpi == NULL || nranks < 2) {
        fprintf(stderr, "bench_mpi: run it under mpirun with 2 or more ranks\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    opt.workers = per_rank * (nranks - 1);
    local = pmap_pool_create(task, NULL, &opt);
    iters = bu_spin_calibrate(0.001);
    tl = calloc((size_t)repeat, sizeof *tl);
    tm = calloc((size_t)repeat, sizeof *tm);
    wl = calloc((size_t)repeat, sizeof *wl);
    wm = calloc((size_t)repeat, sizeof *wm);
    cm = calloc((size_t)repeat, sizeof *cm);
    if (local == NULL || tl == NULL || tm == NULL || wl == NULL || wm == NULL || cm == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    bu_figure("mpi_workers_total", opt.workers, "workers");
    for (i = 0; i < repeat; i++) {
        double a = run(local, tiny, 0, 0, NULL), b = run(mpi, tiny, 0, 0, NULL);

        failed |= a < 0 || b < 0;
        tl[i] = (double)tiny / a;
        tm[i] = (double)tiny / b;
    }
    bu_figure("mpi_tiny_local", bu_median(tl, (size_t)repeat), "records/s");
    bu_figure("mpi_tiny_mpi", bu_median(tm, (size_t)repeat), "records/s");
    for (i = 0; i < repeat; i++)
        tm[i] = 100.0 * tm[i] / tl[i];
    bu_figure("mpi_tiny_ratio", bu_median(tm, (size_t)repeat), "%");
    for (i = 0; i < repeat; i++) {
        double c0, b;

        wl[i] = run(local, ms_tasks, iters, 0, NULL);
        c0 = cpu_self();
        b = run(mpi, ms_tasks, iters, 0, NULL);
        cm[i] = 100.0 * (cpu_self() - c0) / b;
        wm[i] = b;
        failed |= wl[i] < 0 || b < 0;
    }
    bu_figure("mpi_1ms_local", bu_median(wl, (size_t)repeat), "s");
    bu_figure("mpi_1ms_mpi", bu_median(wm, (size_t)repeat), "s");
    for (i = 0; i < repeat; i++)
        wm[i] /= wl[i];
    bu_figure("mpi_1ms_ratio", bu_median(wm, (size_t)repeat), "x");
    bu_figure("mpi_1ms_root_cpu", bu_median(cm, (size_t)repeat), "%");
    if (rss_n > 0) {
        long first = -1;

        pmap_pool_destroy(local);
        local = NULL;
        bu_reset_peak();
        failed |= run(mpi, rss_n, 0, rss_n / 10, &first) < 0;
        bu_figure("mpi_rss_root_first", (double)first, "KiB");
        bu_figure("mpi_rss_root_all", (double)bu_peak_rss_kib(), "KiB");
    }
    pmap_pool_destroy(local);
    pmap_pool_destroy(mpi);
    free(tl);
    free(tm);
    free(wl);
    free(wm);
    free(cm);
    if (failed)
        fprintf(stderr, "bench_mpi: a map failed or returned a wrong result\n");
    MPI_Finalize();
    return failed;
}
