/*
 * How many CPUs this process may use: the affinity mask, lowered by a
 * cgroup CPU quota where one is set (containers commonly have one).
 */
#ifdef __linux__
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#define _POSIX_C_SOURCE 200809L

#include "internal.h"
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef __linux__
#include <sched.h>

/* Read a small text file into buf (NUL-terminated). 0 or -1. */
static int read_small(const char *path, char *buf, size_t cap)
{
    int fd;
    size_t len = 0;

    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    while (len + 1 < cap) {
        long n = pmap__read_once(fd, buf + len, cap - 1 - len);

        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return len ? 0 : -1;
}

/* CPUs allowed by a cgroup v2 "cpu.max" ("quota period" or "max period")
 * along the process's cgroup path, or by cgroup v1's cfs files; 0: none. */
static int cgroup_limit(void)
{
    char line[4096], path[4400], val[128];
    int best = 0;
    char *rel, *nl;

    if (read_small("/proc/self/cgroup", line, sizeof line) == 0) {
        /* cgroup v2 lists a single "0::/path" entry. */
        rel = strstr(line, "0::");
        if (rel != NULL) {
            rel += 3;
            nl = strchr(rel, '\n');
            if (nl != NULL)
                *nl = '\0';
            for (;;) {
                long long quota, period;

                snprintf(path, sizeof path, "/sys/fs/cgroup%s/cpu.max",
                         strcmp(rel, "/") == 0 ? "" : rel);
                if (read_small(path, val, sizeof val) == 0 &&
                    sscanf(val, "%lld %lld", &quota, &period) == 2 && quota > 0 && period > 0) {
                    int n = (int)((quota + period - 1) / period);

                    if (best == 0 || n < best)
                        best = n;
                }
                nl = strrchr(rel, '/');
                if (nl == NULL || nl == rel)
                    break;
                *nl = '\0';
            }
            if (best == 0) {
                /* The root of the namespace, when /proc/self/cgroup says "/". */
                long long quota, period;

                if (read_small("/sys/fs/cgroup/cpu.max", val, sizeof val) == 0 &&
                    sscanf(val, "%lld %lld", &quota, &period) == 2 && quota > 0 && period > 0)
                    best = (int)((quota + period - 1) / period);
            }
        }
    }
    if (best == 0) {
        long long quota = 0, period = 0;

        if (read_small("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", val, sizeof val) == 0)
            quota = atoll(val);
        if (read_small("/sys/fs/cgroup/cpu/cpu.cfs_period_us", val, sizeof val) == 0)
            period = atoll(val);
        if (quota > 0 && period > 0)
            best = (int)((quota + period - 1) / period);
    }
    return best;
}
#endif

int pmap_cpu_count(void)
{
    int n = 0;

#ifdef __linux__
    cpu_set_t set;
    int quota;

    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    quota = cgroup_limit();
    if (n <= 0) {
        long on = sysconf(_SC_NPROCESSORS_ONLN);

        n = on > 0 ? (int)on : 1;
    }
    if (quota > 0 && quota < n)
        n = quota;
#else
    long on = sysconf(_SC_NPROCESSORS_ONLN);

    n = on > 0 ? (int)on : 1;
#endif
    return n >= 1 ? n : 1;
}
