/*
 * Internals of the progress unit, exposed to its tests: the pure formatting
 * functions (fixed inputs, exact outputs) and a constructor with an injected
 * clock. Linked from the static library only; hidden in the shared one.
 *
 * Every pmap__progress_format_* and pmap__progress_render function writes at
 * most size - 1 bytes plus a terminating NUL (nothing when size is 0), never
 * cuts a UTF-8 sequence in half, and returns the number of bytes written
 * without the NUL.
 */
#ifndef PMAP_PROGRESS_INTERNAL_H
#define PMAP_PROGRESS_INTERNAL_H

#include "pmap_progress.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Widest terminal honoured, in columns; a wider one is treated as this. */
#define PMAP__PROGRESS_MAX_COLUMNS 1024u

/* Everything one rendered line depends on. */
struct pmap__progress_view {
    const char *desc;    /* NULL or "": no "desc: " prefix */
    const char *unit;    /* NULL or "": "it" */
    const char *postfix; /* NULL or "": none; else ", postfix" before the closing ']' */
    uint64_t count;
    uint64_t total; /* 0: unknown */
    double elapsed; /* seconds */
    double rate;    /* units per second; <= 0 or NaN: unknown */
    unsigned width; /* 0: no limit, 10-cell bar; else the line's maximum columns */
    int utf8;       /* non-zero: Unicode blocks, else '#' */
    int unit_scale; /* non-zero: SI prefixes on count, total and rate */
};

/* A clock returning monotonic nanoseconds; ctx is passed through. */
typedef uint64_t (*pmap__progress_clock_fn)(void *ctx);

/* `seconds` as MM:SS, or H:MM:SS from one hour on; negative or NaN: "?". */
size_t pmap__progress_format_time(char *buf, size_t size, double seconds);

/*
 * `value` tqdm-style with an SI prefix and three significant digits:
 * 0 -> "0.00", 42 -> "42.0", 999 -> "999", 1234567 -> "1.23M".
 */
size_t pmap__progress_format_si(char *buf, size_t size, double value);

/*
 * A rate: "35.20it/s"; below 1/s inverted, "2.00s/it"; unknown (<= 0, NaN,
 * or an inverse beyond 1e12 s) "?it/s". unit NULL or "" means "it".
 */
size_t pmap__progress_format_rate(char *buf, size_t size, double rate, const char *unit,
                                  int unit_scale);

/*
 * The inside of the bar, exactly `width` cells for count/total (held at 1
 * when count > total): full cells, then one partial cell in eighths rounded
 * down (utf8), then spaces. A bar is full only when count >= total.
 */
size_t pmap__progress_format_bar(char *buf, size_t size, uint64_t count, uint64_t total,
                                 unsigned width, int utf8);

/* One status line, without '\r' or '\n'; see pmap_progress.h for the layout. */
size_t pmap__progress_render(char *buf, size_t size, const struct pmap__progress_view *v);

/* Display columns of s[0 .. len): bytes that do not continue a UTF-8 sequence. */
size_t pmap__progress_columns(const char *s, size_t len);

/* Whether the locale (codeset, else LC_ALL / LC_CTYPE / LANG) is UTF-8. */
int pmap__progress_locale_utf8(void);

/*
 * pmap_progress_new() with `now` as the clock instead of CLOCK_MONOTONIC.
 * EINVAL also when now is NULL.
 */
pmap_progress *pmap__progress_new_with_clock(FILE *out, const char *desc, uint64_t total,
                                             pmap__progress_clock_fn now, void *ctx);

/* Override the locale-derived choice between Unicode blocks and '#'. */
void pmap__progress_set_utf8(pmap_progress *bar, int utf8);

/* 1 when a write error has disabled the bar, else 0 (also for NULL). */
int pmap__progress_failed(const pmap_progress *bar);

/* 1 when the bar draws in terminal mode, else 0 (also for NULL). */
int pmap__progress_is_tty(const pmap_progress *bar);

/* Calls between two clock readings, as currently adapted (0 for NULL). */
uint32_t pmap__progress_stride(const pmap_progress *bar);

#endif /* PMAP_PROGRESS_INTERNAL_H */
