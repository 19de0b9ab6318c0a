/*
 * What a sleeping caller with a big heap is charged for being woken, with
 * no library involved: the floor under bench_forkserver's
 * caller_cpu_per_replace_us. A helper process wakes the caller through a
 * pipe, N times; the caller's own thread CPU time per wakeup is printed
 * for five set-ups:
 *
 *   wakeup_small_us          no big heap anywhere
 *   wakeup_big_us            the caller has the big heap; the helper sleeps
 *                            0.5 ms between wakeups
 *   wakeup_big_shared_us     as big, but the helper is forked after the
 *                            heap was touched (it shares the caller's
 *                            pages, as a fork server does)
 *   wakeup_big_fork_us       as big_shared, and the helper forks and reaps
 *                            a child before each wakeup (what a fork
 *                            server does per replacement)
 *   wakeup_big_other_fork_us the caller has the big heap, the helper a big
 *                            heap of its own (nothing shared), and the
 *                            helper forks and reaps a child before each
 *                            wakeup
 *   wakeup_small_other_fork_us as big_other_fork, but the caller is small
 *
 * On a machine whose page tables are cheap to copy and to rebuild, all of
 * them are tens of microseconds. Where a virtual machine's shadow page
 * tables must be rebuilt after another process forks or tears down a big
 * address space, the rows with a fork show the big caller paying for the
 * rebuild when it next runs, whether or not it shares any page.
 *
 *   bench_wakeup [wakeups]   (default 200)
 *   env BENCH_HEAP_MIB: the big heap (default 1024)
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SMALL, BIG, BIG_SHARED, BIG_FORK, BIG_OTHER_FORK, SMALL_OTHER_FORK, NSETUPS };

static const char *const setup_name[NSETUPS] = {
    "wakeup_small_us",    "wakeup_big_us",           "wakeup_big_shared_us",
    "wakeup_big_fork_us", "wakeup_big_other_fork_us", "wakeup_small_other_fork_us",
};

static double thread_cpu_s(void)
{
    struct timespec t;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static unsigned char *touched_heap(size_t bytes)
{
    unsigned char *h = malloc(bytes);
    size_t k;

    if (h == NULL) {
        perror("bench_wakeup: heap");
        exit(1);
    }
    for (k = 0; k < bytes; k += 4096)
        h[k] = (unsigned char)(k >> 12);
    return h;
}

static int full_read(int fd, char *c)
{
    ssize_t n;

    do {
        n = read(fd, c, 1);
    } while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

static int full_write(int fd, char c)
{
    ssize_t n;

    do {
        n = write(fd, &c, 1);
    } while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

/* The helper: for each byte from `in`, (fork and reap a child, or sleep
 * 0.5 ms), then answer on `out`; exits at EOF. */
static _Noreturn void helper(int in, int out, int forks)
{
    char c;

    while (full_read(in, &c) == 0) {
        if (forks) {
            pid_t g = fork();
            int st;

            if (g == 0)
                _exit(0);
            if (g > 0)
                while (waitpid(g, &st, 0) < 0 && errno == EINTR)
                    ;
        } else {
            struct timespec ts = {0, 500000};

            nanosleep(&ts, NULL);
        }
        if (full_write(out, 'x') != 0)
            break;
    }
    _exit(0);
}

static double run(int setup, size_t bytes, int n)
{
    int ask[2], answer[2], i, st;
    int caller_big = setup != SMALL && setup != SMALL_OTHER_FORK;
    int shared = setup == BIG_SHARED || setup == BIG_FORK;
    int forks = setup == BIG_FORK || setup == BIG_OTHER_FORK || setup == SMALL_OTHER_FORK;
    int helper_own = setup == BIG_OTHER_FORK || setup == SMALL_OTHER_FORK;
    unsigned char *heap = NULL;
    double c0, c1;
    pid_t pid = -1;
    char c;

    if (pipe(ask) != 0 || pipe(answer) != 0) {
        perror("bench_wakeup: pipe");
        exit(1);
    }
    if (!shared) {
        pid = fork();
        if (pid == 0) {
            close(ask[1]);
            close(answer[0]);
            if (helper_own)
                heap = touched_heap(bytes);
            helper(ask[0], answer[1], forks);
        }
    }
    if (caller_big)
        heap = touched_heap(bytes);
    if (shared) {
        pid = fork();
        if (pid == 0) {
            close(ask[1]);
            close(answer[0]);
            helper(ask[0], answer[1], forks);
        }
    }
    if (pid < 0) {
        perror("bench_wakeup: fork");
        exit(1);
    }
    close(ask[0]);
    close(answer[1]);
    c0 = thread_cpu_s();
    for (i = 0; i < n; i++) {
        if (full_write(ask[1], 'y') != 0 || full_read(answer[0], &c) != 0) {
            fprintf(stderr, "bench_wakeup: the helper is gone\n");
            exit(1);
        }
    }
    c1 = thread_cpu_s();
    close(ask[1]);
    close(answer[0]);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    free(heap);
    return (c1 - c0) / n * 1e6;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    size_t bytes = (size_t)bu_env_long("BENCH_HEAP_MIB", 1024) << 20;
    int s;

    if (n < 1)
        n = 1;
    if (bytes == 0)
        bytes = 4096;
    for (s = 0; s < NSETUPS; s++)
        bu_figure(setup_name[s], run(s, bytes, n), "us");
    return 0;
}
