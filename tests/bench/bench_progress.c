/*
 * Benchmark of the progress unit's hot path. Prints `name value unit` lines:
 *
 *   progress_add_ns         ns per pmap_progress_add(bar, 1), unknown total, to /dev/null
 *   progress_add_total_ns   the same with a known total
 *   progress_add_null_ns    ns per pmap_progress_add(NULL, 1): the bare call
 *   progress_file_bytes     bytes a whole run writes to a regular file
 *   progress_printf_ns      ns per pmap_progress_printf(bar, file, "%d\n", i), bar to /dev/null
 *   fprintf_ns              ns per fprintf(file, "%d\n", i): the reference for the line above
 *
 * Usage: bench_progress [calls]   (default 100000000)
 */
#define _POSIX_C_SOURCE 200809L

#include "pmap_progress.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ns per call of n additions to bar (which may be NULL); frees the bar. */
static double run(pmap_progress *bar, uint64_t n)
{
    double t0, t1;
    uint64_t i;

    t0 = now_s();
    for (i = 0; i < n; i++)
        pmap_progress_add(bar, 1);
    t1 = now_s();
    pmap_progress_free(bar);
    return (t1 - t0) * 1e9 / (double)n;
}

/* ns per printed line of n lines to out, through bar (NULL: plain fprintf). */
static double run_printf(pmap_progress *bar, FILE *out, uint64_t n)
{
    double t0, t1;
    uint64_t i;
    int rc = 0;

    t0 = now_s();
    for (i = 0; i < n && rc >= 0; i++) {
        if (bar != NULL)
            rc = pmap_progress_printf(bar, out, "%d\n", (int)(i & 0xffff));
        else
            rc = fprintf(out, "%d\n", (int)(i & 0xffff));
    }
    t1 = now_s();
    if (rc < 0 || fflush(out) != 0) {
        perror("printf");
        exit(1);
    }
    pmap_progress_free(bar);
    return (t1 - t0) * 1e9 / (double)n;
}

static pmap_progress *bar_or_die(FILE *out, uint64_t total)
{
    pmap_progress *bar = pmap_progress_new(out, "bench", total);

    if (bar == NULL) {
        perror("pmap_progress_new");
        exit(1);
    }
    return bar;
}

int main(int argc, char **argv)
{
    uint64_t n = 100000000;
    FILE *null, *file;
    long bytes;

    if (argc > 1) {
        n = strtoull(argv[1], NULL, 10);
        if (n == 0) {
            fprintf(stderr, "usage: %s [calls]\n", argv[0]);
            return 2;
        }
    }
    null = fopen("/dev/null", "w");
    file = tmpfile();
    if (null == NULL || file == NULL) {
        perror("fopen");
        return 1;
    }

    run(bar_or_die(null, 0), n / 10 + 1); /* warm up */
    printf("progress_add_ns %.2f ns\n", run(bar_or_die(null, 0), n));
    printf("progress_add_total_ns %.2f ns\n", run(bar_or_die(null, n), n));
    printf("progress_add_null_ns %.2f ns\n", run(NULL, n));

    run(bar_or_die(file, n), n);
    bytes = ftell(file);
    printf("progress_file_bytes %ld bytes\n", bytes);

    /* Lines are costlier than adds: a tenth as many. */
    rewind(file);
    printf("progress_printf_ns %.2f ns\n", run_printf(bar_or_die(null, 0), file, n / 10 + 1));
    rewind(file);
    printf("fprintf_ns %.2f ns\n", run_printf(NULL, file, n / 10 + 1));

    if (fclose(file) != 0 || fclose(null) != 0) {
        perror("fclose");
        return 1;
    }
    return 0;
}
