#define _POSIX_C_SOURCE 200809L

#include "pmap.h"
#include "testutil.h"

#include <dirent.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

int tu_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

int tu_child_count(void)
{
    /* /proc/<pid>/task/<tid>/children lists the children of each thread;
     * the process's children are the union over its threads. */
    char path[320]; /* "/proc/self/task/" + a d_name of up to 255 bytes */
    DIR *d;
    struct dirent *e;
    int n = 0;

    d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        FILE *f;
        long pid;

        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/children", e->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        while (fscanf(f, "%ld", &pid) == 1)
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

static long status_field(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, kl) == 0) {
            v = strtol(line + kl, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

long tu_peak_rss_kib(void)
{
    return status_field("VmHWM:");
}

long tu_rss_kib(void)
{
    return status_field("VmRSS:");
}

void tu_snap_take(struct tu_snap *s)
{
    s->fds = tu_fd_count();
    s->children = tu_child_count();
}

void tu_snap_check(const struct tu_snap *s)
{
    assert_int_equal(tu_fd_count(), s->fds);
    assert_int_equal(tu_child_count(), s->children);
}

int tu_range_gen(void *ctx, struct pmap_buf *param)
{
    struct tu_range *r = ctx;
    uint64_t v;

    if (r->next >= r->n)
        return 0;
    v = r->next++;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}
