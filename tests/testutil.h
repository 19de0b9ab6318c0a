/*
 * Helpers shared by the test suites: the process's descriptor count and
 * children, checked before and after each test so that every test also
 * proves it leaked nothing.
 */
#ifndef PMAP_TESTUTIL_H
#define PMAP_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Open descriptors of this process. */
int tu_fd_count(void);
/* Children of this process that still exist (zombies included). */
int tu_child_count(void);
/* Peak resident set size of this process in KiB. */
long tu_peak_rss_kib(void);
/* Current resident set size in KiB. */
long tu_rss_kib(void);

/* Snapshot taken at the start of a test and compared at its end. */
struct tu_snap {
    int fds;
    int children;
};
void tu_snap_take(struct tu_snap *s);
/* cmocka-asserts that fds and children are back to the snapshot. */
void tu_snap_check(const struct tu_snap *s);

/* A generator over the integers [0, n): each record is one uint64_t. */
struct tu_range {
    uint64_t next;
    uint64_t n;
};
int tu_range_gen(void *ctx, struct pmap_buf *param);

#endif
