/*
 * Large records echoed: each parameter is S bytes (64 KiB, 1, 8, 64 MiB) and the
 * task returns the same S bytes. Beside it, in the same program, the limit:
 * a plain parent -> child -> parent copy through two pipes, the parent
 * writing and reading at once (poll), the child reading each record whole
 * and writing it back, with the default pipe buffer and with a 1 MiB one
 * (what libpmap asks for).
 *
 *   bench_large [total_MiB]     bytes echoed per size (default 512)
 *   env BENCH_WORKERS, BENCH_REPEAT (default 3, best printed),
 *       BENCH_KIB (run only the size of that many KiB, e.g. 8192),
 *       BENCH_ONLY=echo (no pipe copies: for profiling the echo alone)
 *
 * Figures per size S: large_S_echo MB/s (record bytes per second, each
 * record crossing twice, as in the pipe copy), large_S_pipe_default MB/s,
 * large_S_pipe MB/s (1 MiB buffer), large_S_vs_pipe % (echo / the faster
 * pipe copy). MB = 10^6 bytes. Both are timed warm (see run_echo).
 */
#ifdef __linux__
#define _GNU_SOURCE
#endif
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <pmap.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct gen {
    size_t size;
    uint64_t next, n;
};

static int gen_big(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    unsigned char *p;

    if (g->next == g->n)
        return 0;
    p = pmap_buf_reserve(param, g->size);
    if (p == NULL)
        return -1;
    /* Stamp both ends; the bytes between are whatever the buffer held (a
     * generator that fills 64 MiB would measure memset). */
    memcpy(p, &g->next, sizeof g->next);
    memcpy(p + g->size - sizeof g->next, &g->next, sizeof g->next);
    g->next++;
    return 1;
}

static int task_echo(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    return pmap_buf_set(out, param, len);
}

/* Echo n records of `size` bytes through `pool`; records per second is
 * what the caller sees. 1 when every item came back right. */
static int echo_map(pmap_pool *pool, size_t size, uint64_t n)
{
    pmap_iter *it;
    pmap_item item;
    struct gen g = {size, 0, n};
    uint64_t got = 0, bad = 0;
    int rc;

    it = pmap_imap(pool, gen_big, &g);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t a, b;

        if (item.status != PMAP_OK || item.len != size) {
            bad++;
        } else {
            memcpy(&a, item.data, sizeof a);
            memcpy(&b, (const unsigned char *)item.data + size - sizeof b, sizeof b);
            bad += a != item.index || b != item.index;
        }
        got++;
    }
    pmap_iter_free(it);
    if (rc != PMAP_DONE || got != n || bad) {
        fprintf(stderr, "bench_large: echo failed (%s)\n", pmap_strerror(rc));
        return 0;
    }
    return 1;
}

/*
 * The pipe copy below runs with buffers it touched before its clock
 * starts; so does the echo: an untimed first map of a window's worth of
 * records (BENCH_WARM, default 12) lets the pool's buffers, pipes and
 * shared memory reach the state a long map runs in, and the clock times
 * the map after it. BENCH_WARM=0 times a cold pool.
 */
static double run_echo(size_t size, uint64_t n)
{
    pmap_options opt;
    pmap_pool *pool;
    long warm = bu_env_long("BENCH_WARM", 12);
    double t0, t;

    pmap_options_init(&opt);
    opt.workers = (int)bu_env_long("BENCH_WORKERS", 0);
    /* Bounded, as a program with large records bounds them: arenas then. */
    opt.max_record_bytes = size < ((size_t)1 << 20) ? ((size_t)1 << 20) : size;
    pool = pmap_pool_create(task_echo, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        exit(1);
    }
    if (warm > 0 && !echo_map(pool, size, (uint64_t)warm))
        exit(1);
    t0 = bu_now();
    if (!echo_map(pool, size, n))
        exit(1);
    t = bu_now() - t0;
    pmap_pool_destroy(pool);
    return (double)size * (double)n / t / 1e6;
}

static void full_io(int fd, unsigned char *buf, size_t len, int writing)
{
    size_t off = 0;

    while (off < len) {
        ssize_t k = writing ? write(fd, buf + off, len - off) : read(fd, buf + off, len - off);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            _exit(2);
        off += (size_t)k;
    }
}

/* The limit: plain pipes, no framing, no library. */
static double run_pipe(size_t size, uint64_t n, int big_buffer)
{
    int down[2], up[2];
    unsigned char *buf = malloc(size), *in = malloc(size);
    uint64_t sent_bytes = 0, recv_bytes = 0, total = (uint64_t)size * n;
    double t0, t;
    pid_t pid;
    int st;

    if (buf == NULL || in == NULL || pipe(down) != 0 || pipe(up) != 0) {
        perror("bench_large");
        exit(1);
    }
    memset(buf, 1, size);
    memset(in, 2, size);
#ifdef F_SETPIPE_SZ
    if (big_buffer) {
        (void)fcntl(down[1], F_SETPIPE_SZ, 1 << 20);
        (void)fcntl(up[1], F_SETPIPE_SZ, 1 << 20);
    }
#else
    (void)big_buffer;
#endif
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        uint64_t i;

        close(down[1]);
        close(up[0]);
        for (i = 0; i < n; i++) {
            full_io(down[0], in, size, 0);
            full_io(up[1], in, size, 1);
        }
        _exit(0);
    }
    close(down[0]);
    close(up[1]);
    fcntl(down[1], F_SETFL, O_NONBLOCK);
    t0 = bu_now();
    while (recv_bytes < total) {
        struct pollfd pf[2];
        int nf = 0;

        pf[nf].fd = up[0];
        pf[nf++].events = POLLIN;
        if (sent_bytes < total) {
            pf[nf].fd = down[1];
            pf[nf++].events = POLLOUT;
        }
        if (poll(pf, (nfds_t)nf, -1) < 0 && errno != EINTR)
            break;
        if (nf > 1 && (pf[1].revents & POLLOUT)) {
            size_t off = (size_t)(sent_bytes % size);
            ssize_t k = write(down[1], buf + off, size - off);

            if (k > 0)
                sent_bytes += (uint64_t)k;
        }
        if (pf[0].revents & (POLLIN | POLLHUP)) {
            size_t off = (size_t)(recv_bytes % size);
            ssize_t k = read(up[0], in + off, size - off);

            if (k > 0)
                recv_bytes += (uint64_t)k;
            else if (k == 0)
                break;
        }
    }
    t = bu_now() - t0;
    close(down[1]);
    close(up[0]);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    free(buf);
    free(in);
    if (recv_bytes != total) {
        fprintf(stderr, "bench_large: pipe copy failed\n");
        exit(1);
    }
    return (double)total / t / 1e6;
}

/* "64KiB", "8MiB": the size as the figures name it. */
static void size_name(char *dst, size_t cap, size_t kib)
{
    if (kib < 1024)
        snprintf(dst, cap, "%zuKiB", kib);
    else
        snprintf(dst, cap, "%zuMiB", kib >> 10);
}

int main(int argc, char **argv)
{
    static const size_t kib[] = {64, 1024, 8192, 65536};
    uint64_t total = (argc > 1 ? strtoull(argv[1], NULL, 10) : 512u) << 20;
    long repeat = bu_env_long("BENCH_REPEAT", 3), r;
    long only = bu_env_long("BENCH_KIB", 0);
    const char *which = getenv("BENCH_ONLY");
    int echo_only = which != NULL && strcmp(which, "echo") == 0;
    size_t i;

    if (repeat < 1)
        repeat = 1;
    signal(SIGPIPE, SIG_IGN); /* the plain copy's own pipes (libpmap needs nothing) */
    for (i = 0; i < sizeof kib / sizeof kib[0]; i++) {
        size_t size = kib[i] << 10;
        uint64_t n = total / size < 4 ? 4 : total / size;
        double echo = 0, pipe_def = 0, pipe_big = 0, best;
        char sz[32], name[64];

        if (only > 0 && (size_t)only != kib[i])
            continue;
        for (r = 0; r < repeat; r++) {
            double v = run_echo(size, n);

            echo = v > echo ? v : echo;
            if (echo_only)
                continue;
            v = run_pipe(size, n, 0);
            pipe_def = v > pipe_def ? v : pipe_def;
            v = run_pipe(size, n, 1);
            pipe_big = v > pipe_big ? v : pipe_big;
        }
        best = pipe_big > pipe_def ? pipe_big : pipe_def;
        size_name(sz, sizeof sz, kib[i]);
        snprintf(name, sizeof name, "large_%s_echo", sz);
        bu_figure(name, echo, "MB/s");
        if (echo_only)
            continue;
        snprintf(name, sizeof name, "large_%s_pipe_default", sz);
        bu_figure(name, pipe_def, "MB/s");
        snprintf(name, sizeof name, "large_%s_pipe", sz);
        bu_figure(name, pipe_big, "MB/s");
        snprintf(name, sizeof name, "large_%s_vs_pipe", sz);
        bu_figure(name, 100.0 * echo / best, "%");
    }
    return 0;
}
