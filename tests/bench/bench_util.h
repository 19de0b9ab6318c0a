/*
 * Helpers shared by the benchmark programs: a monotonic clock, output in
 * the one-figure-per-line format compare.sh reads ("name value unit"), and
 * the process's resident memory.
 */
#ifndef PMAP_BENCH_UTIL_H
#define PMAP_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in seconds. */
double bu_now(void);
/* Print one figure: "name value unit", flushed at once. */
void bu_figure(const char *name, double value, const char *unit);
/* Resident set size now and at its peak (VmRSS, VmHWM), in KiB; -1 if
 * unknown. */
long bu_rss_kib(void);
long bu_peak_rss_kib(void);
/* Reset the peak RSS counter to the current RSS (Linux >= 4.0). 0 or -1. */
int bu_reset_peak(void);
/* Integer from the environment, or `def` when unset or malformed. */
long bu_env_long(const char *name, long def);
/* Seconds of busy computation: a loop of `iters` steps whose result the
 * compiler cannot drop. Deterministic, no system calls, no memory. */
uint64_t bu_spin(uint64_t iters, uint64_t seed);
/* Steps of bu_spin() that take about `seconds` on this CPU (measured). */
uint64_t bu_spin_calibrate(double seconds);
/* The median of n doubles (sorts them in place). */
double bu_median(double *v, size_t n);

#endif
