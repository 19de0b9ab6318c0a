#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double bu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bu_figure(const char *name, double value, const char *unit)
{
    printf("%s %.6g %s\n", name, value, unit);
    fflush(stdout);
}

static long status_field(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t n = strlen(field);
    long v = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, field, n) == 0) {
            v = strtol(line + n, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

long bu_rss_kib(void)
{
    return status_field("VmRSS:");
}

long bu_peak_rss_kib(void)
{
    return status_field("VmHWM:");
}

int bu_reset_peak(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    int rc;

    if (fd < 0)
        return -1;
    rc = write(fd, "5", 1) == 1 ? 0 : -1;
    close(fd);
    return rc;
}

long bu_env_long(const char *name, long def)
{
    const char *s = getenv(name);
    char *end;
    long v;

    if (s == NULL || *s == '\0')
        return def;
    v = strtol(s, &end, 10);
    return *end == '\0' ? v : def;
}

uint64_t bu_spin(uint64_t iters, uint64_t seed)
{
    /* xorshift steps: a serial dependency chain the optimiser cannot fold. */
    uint64_t x = seed | 1u;
    uint64_t i;

    for (i = 0; i < iters; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

uint64_t bu_spin_calibrate(double seconds)
{
    uint64_t iters = 1u << 16;
    volatile uint64_t sink = 0;
    double best = 1e9;
    int round;

    /* Grow until one run takes a few milliseconds, then take the best of a
     * few runs (the least disturbed one). */
    for (;;) {
        double t0 = bu_now();

        sink += bu_spin(iters, 1);
        if (bu_now() - t0 > 0.005)
            break;
        iters *= 2;
    }
    for (round = 0; round < 5; round++) {
        double t0 = bu_now(), dt;

        sink += bu_spin(iters, (uint64_t)round + 2u);
        dt = bu_now() - t0;
        if (dt < best)
            best = dt;
    }
    (void)sink;
    return (uint64_t)((double)iters * seconds / best) + 1u;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

double bu_median(double *v, size_t n)
{
    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
