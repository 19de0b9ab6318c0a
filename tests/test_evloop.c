/*
 * Event-loop integration (DESIGN §10): pmap_try_next, pmap_iter_fd and
 * pmap_iter_timeout through the public API, on the process backend.
 *
 * A loop over poll() (or epoll) must deliver exactly what the blocking
 * loop does, never block, use no CPU while tasks run, and see time limits
 * enforced when it honours pmap_iter_timeout. Long tasks here wait for the
 * test (a byte on a pipe) rather than for a clock, so that "try_next did
 * not wait" is shown by a task that would never end on its own.
 *
 * Workers never assert: tasks report through their return value and
 * result bytes. PMAP_TEST_QUICK=1 shrinks the 100 000-record maps to
 * 10 000 (for valgrind).
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE

#include "pmap.h"
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static int quick;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t hash_bytes(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    size_t i;

    for (i = 0; i < len; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static double cpu_self_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

/* ------------------------------------------------------------------------ */
/* The task and the generator                                               */
/* ------------------------------------------------------------------------ */

/* Parameter records: an opcode and a value. */
enum op { OP_MIXED, OP_WAIT, OP_SLEEP, OP_COUNT_ANON, OP_ECHO };

struct param {
    uint32_t op;
    uint32_t arg;
    uint64_t i;
};

/* Descriptors the tasks use, inherited by the workers (made before the
 * pool): a task of OP_WAIT writes a byte to started[1], then waits for a
 * byte on release[0]. */
struct task_ctx {
    int started[2];
    int release[2];
    uint64_t crash_every, crash_at; /* OP_MIXED: which records crash */
};

/* What OP_MIXED does with record i: crash (SIGKILL or _exit(42)), fail
 * with code 7, or return i % 13 bytes derived from i. */
enum fate { FATE_OK, FATE_ERR, FATE_KILL, FATE_EXIT };

static enum fate fate_of(const struct task_ctx *c, uint64_t i)
{
    if (c->crash_every && i % c->crash_every == c->crash_at)
        return (i / c->crash_every) % 2 ? FATE_KILL : FATE_EXIT;
    if (i % 997 == 3)
        return FATE_ERR;
    return FATE_OK;
}

static void result_bytes(uint64_t i, unsigned char *out, size_t *len)
{
    uint64_t a = mix64(i), b = mix64(a);

    *len = (size_t)(i % 13);
    memcpy(out, &a, 8);
    memcpy(out + 8, &b, 8);
}

/* Descriptors of an epoll set or an eventfd in this process. */
static int count_anon_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        char path[300], target[128];
        ssize_t len;

        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        len = readlink(path, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        if (strstr(target, "eventpoll") != NULL || strstr(target, "eventfd") != NULL)
            n++;
    }
    closedir(d);
    return n;
}

static int task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const struct task_ctx *c = ctx;
    struct param p;
    unsigned char buf[16];
    size_t n;
    char byte = 's';
    int cnt;

    if (len < sizeof p)
        return 99;
    memcpy(&p, param, sizeof p);
    if (p.op == OP_ECHO)
        return pmap_buf_set(out, param, len);
    if (len != sizeof p)
        return 99;
    switch (p.op) {
    case OP_MIXED:
        switch (fate_of(c, p.i)) {
        case FATE_KILL:
            raise(SIGKILL);
            break;
        case FATE_EXIT:
            _exit(42);
        case FATE_ERR:
            (void)pmap_buf_set(out, "bad", 3);
            return 7;
        case FATE_OK:
            break;
        }
        break;
    case OP_WAIT:
        while (write(c->started[1], &byte, 1) < 0 && errno == EINTR)
            ;
        while (read(c->release[0], &byte, 1) < 0 && errno == EINTR)
            ;
        break;
    case OP_SLEEP: {
        struct timespec ts = {(time_t)(p.arg / 1000u), (long)(p.arg % 1000u) * 1000000L};

        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        break;
    }
    case OP_COUNT_ANON:
        cnt = count_anon_fds();
        return pmap_buf_set(out, &cnt, sizeof cnt);
    default:
        return 98;
    }
    result_bytes(p.i, buf, &n);
    return pmap_buf_set(out, buf, n);
}

struct gen {
    uint64_t next, n;
    uint64_t fail_at; /* return -1 here (UINT64_MAX: never) */
    uint32_t op, arg;
    const uint32_t *ops; /* per-record op, or NULL: `op` for all */
    /* Re-entrancy probe: the generator calls pmap_try_next on `self`. */
    pmap_iter *self;
    int reentry_rc;
    /* Window probe. */
    const uint64_t *consumed;
    uint64_t window;
    int window_broken;
};

static int gen(void *ctx, pmap_buf *buf)
{
    struct gen *g = ctx;
    struct param p;

    if (g->self != NULL) {
        pmap_item item;

        g->reentry_rc = pmap_try_next(g->self, &item);
    }
    if (g->consumed != NULL && g->next - *g->consumed >= g->window)
        g->window_broken = 1;
    if (g->next == g->fail_at)
        return -1;
    if (g->next == g->n)
        return 0;
    memset(&p, 0, sizeof p);
    p.op = g->ops ? g->ops[g->next] : g->op;
    p.arg = g->arg;
    p.i = g->next++;
    if (p.op == OP_ECHO) {
        /* p, then `arg` bytes derived from the index. */
        unsigned char *b = pmap_buf_reserve(buf, sizeof p + p.arg);
        size_t k;

        if (b == NULL)
            return -1;
        memcpy(b, &p, sizeof p);
        for (k = 0; k < p.arg; k += 8) {
            uint64_t v = mix64(p.i * 1000003u + k);

            memcpy(b + sizeof p + k, &v, p.arg - k < 8 ? p.arg - k : 8);
        }
        return 1;
    }
    return pmap_buf_set(buf, &p, sizeof p) == PMAP_OK ? 1 : -1;
}

static void gen_init(struct gen *g, uint64_t n, uint32_t op, uint32_t arg)
{
    memset(g, 0, sizeof *g);
    g->n = n;
    g->fail_at = UINT64_MAX;
    g->op = op;
    g->arg = arg;
}

static void ctx_init(struct task_ctx *c)
{
    memset(c, 0, sizeof *c);
    assert_int_equal(pipe(c->started), 0);
    assert_int_equal(pipe(c->release), 0);
}

static void ctx_close(struct task_ctx *c)
{
    close(c->started[0]);
    close(c->started[1]);
    close(c->release[0]);
    close(c->release[1]);
}

static pmap_pool *pool_new(struct task_ctx *c, int workers, unsigned chunk, unsigned window,
                           unsigned timeout_ms)
{
    pmap_options opt;
    pmap_pool *pool;

    pmap_options_init(&opt);
    opt.workers = workers;
    opt.chunk = chunk;
    opt.window = window;
    opt.task_timeout_ms = timeout_ms;
    pool = pmap_pool_create(task, c, &opt);
    assert_non_null(pool);
    return pool;
}

/* ------------------------------------------------------------------------ */
/* Drivers: the blocking loop and the event loops                           */
/* ------------------------------------------------------------------------ */

struct rec {
    uint64_t index;
    int status, code;
    size_t len;
    uint64_t hash;
};

struct got {
    struct rec *v;
    size_t n, cap;
    int rc;
    unsigned wakeups; /* event loops: returns from poll/epoll_wait */
};

static void got_add(struct got *g, const pmap_item *item)
{
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 1024;
        g->v = realloc(g->v, g->cap * sizeof *g->v);
        assert_non_null(g->v);
    }
    g->v[g->n].index = item->index;
    g->v[g->n].status = item->status;
    g->v[g->n].code = item->code;
    g->v[g->n].len = item->len;
    g->v[g->n].hash = hash_bytes(item->data, item->len);
    assert_true(item->len == 0 || item->data != NULL);
    g->n++;
}

static void drive_block(pmap_iter *it, struct got *g)
{
    pmap_item item;

    while ((g->rc = pmap_next(it, &item)) == PMAP_OK)
        got_add(g, &item);
}

/* How the event loop waits and consumes. */
enum mode {
    M_POLL,  /* poll(), pmap_try_next until PMAP_EAGAIN */
    M_EPOLL, /* the descriptor inside an epoll set of the test's; at most 37 items per wakeup */
    M_MIXED, /* poll(), and every fifth wakeup one blocking pmap_next first */
};

static void drive_loop(pmap_iter *it, struct got *g, enum mode mode)
{
    int fd = pmap_iter_fd(it), ep = -1;
    pmap_item item;

    assert_true(fd >= 3);
    if (mode == M_EPOLL) {
        struct epoll_event ev;

        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ep = epoll_create1(EPOLL_CLOEXEC);
        assert_true(ep >= 0);
        assert_int_equal(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
    }
    for (;;) {
        int timeout = pmap_iter_timeout(it), n, rc = PMAP_EAGAIN;
        unsigned taken = 0;

        if (mode == M_EPOLL) {
            struct epoll_event ev;

            n = epoll_wait(ep, &ev, 1, timeout);
        } else {
            struct pollfd p = {fd, POLLIN, 0};

            n = poll(&p, 1, timeout);
        }
        assert_true(n >= 0 || errno == EINTR);
        g->wakeups++;
        if (mode == M_MIXED && g->wakeups % 5 == 0) {
            rc = pmap_next(it, &item);
            if (rc == PMAP_OK)
                got_add(g, &item);
        }
        while (rc == PMAP_OK || rc == PMAP_EAGAIN) {
            rc = pmap_try_next(it, &item);
            if (rc != PMAP_OK)
                break;
            got_add(g, &item);
            if (mode == M_EPOLL && ++taken == 37) {
                struct pollfd p = {fd, POLLIN, 0};

                /* Stopped early: the descriptor must still say so. */
                assert_int_equal(poll(&p, 1, 0), 1);
                break;
            }
        }
        if (rc != PMAP_OK && rc != PMAP_EAGAIN) {
            g->rc = rc;
            break;
        }
    }
    /* Finished: it stays readable (pmap_try_next returns the end again). */
    {
        struct pollfd p = {fd, POLLIN, 0};

        assert_int_equal(poll(&p, 1, 0), 1);
        assert_int_equal(pmap_iter_timeout(it), 0);
        assert_int_equal(pmap_try_next(it, &item), g->rc);
    }
    if (ep >= 0)
        close(ep);
}

static int rec_cmp(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;

    return x->index < y->index ? -1 : x->index > y->index;
}

static void got_equal(struct got *a, struct got *b, int sort)
{
    size_t i;

    if (sort) {
        qsort(a->v, a->n, sizeof *a->v, rec_cmp);
        qsort(b->v, b->n, sizeof *b->v, rec_cmp);
    }
    assert_int_equal(a->rc, b->rc);
    assert_int_equal(a->n, b->n);
    for (i = 0; i < a->n; i++) {
        assert_int_equal(a->v[i].index, b->v[i].index);
        assert_int_equal(a->v[i].status, b->v[i].status);
        assert_int_equal(a->v[i].code, b->v[i].code);
        assert_int_equal(a->v[i].len, b->v[i].len);
        assert_int_equal(a->v[i].hash, b->v[i].hash);
    }
}

/* The reference itself against what the task does (sorted by index). */
static void check_reference(const struct task_ctx *c, const struct got *g, uint64_t n, int rc)
{
    size_t i;

    assert_int_equal(g->rc, rc);
    assert_int_equal(g->n, n);
    for (i = 0; i < g->n; i++) {
        const struct rec *r = &g->v[i];
        unsigned char buf[16];
        size_t len;

        assert_int_equal(r->index, i);
        switch (fate_of(c, i)) {
        case FATE_OK:
            result_bytes(i, buf, &len);
            assert_int_equal(r->status, PMAP_OK);
            assert_int_equal(r->len, len);
            assert_int_equal(r->hash, hash_bytes(buf, len));
            break;
        case FATE_ERR:
            assert_int_equal(r->status, PMAP_ETASK);
            assert_int_equal(r->code, 7);
            break;
        case FATE_KILL:
        case FATE_EXIT:
            assert_int_equal(r->status, PMAP_ECRASH);
            break;
        }
    }
}

static void got_free(struct got *g)
{
    free(g->v);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* One map, run blocking and then from each kind of event loop. */
static void same_items(int ordered, uint64_t n, uint64_t fail_at)
{
    static const enum mode modes[] = {M_POLL, M_EPOLL, M_MIXED};
    struct tu_snap snap;
    struct task_ctx c;
    struct got ref = {0};
    struct gen g;
    pmap_pool *pool;
    pmap_iter *it;
    size_t m;
    int want = fail_at == UINT64_MAX ? PMAP_DONE : PMAP_EGEN;

    tu_snap_take(&snap);
    ctx_init(&c);
    c.crash_every = n / 4;
    c.crash_at = n / 8;
    pool = pool_new(&c, 2, 0, 0, 0);

    gen_init(&g, n, OP_MIXED, 0);
    g.fail_at = fail_at;
    it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
    assert_non_null(it);
    drive_block(it, &ref);
    assert_int_equal(pmap_iter_free(it), want == PMAP_DONE ? PMAP_OK : want);
    if (!ordered)
        qsort(ref.v, ref.n, sizeof *ref.v, rec_cmp);
    check_reference(&c, &ref, fail_at == UINT64_MAX ? n : fail_at, want);

    for (m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        struct got got = {0};

        gen_init(&g, n, OP_MIXED, 0);
        g.fail_at = fail_at;
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        drive_loop(it, &got, modes[m]);
        assert_int_equal(pmap_iter_free(it), want == PMAP_DONE ? PMAP_OK : want);
        got_equal(&ref, &got, !ordered);
        got_free(&got);
    }
    got_free(&ref);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

static uint64_t big_n(void)
{
    return quick ? 10000u : 100000u;
}

static void test_same_items_ordered(void **state)
{
    (void)state;
    same_items(1, big_n(), UINT64_MAX);
}

static void test_same_items_unordered(void **state)
{
    (void)state;
    same_items(0, big_n(), UINT64_MAX);
}

static void test_same_items_gen_error(void **state)
{
    (void)state;
    same_items(1, big_n(), big_n() * 3 / 10);
    same_items(0, big_n(), big_n() * 3 / 10);
}

/* Read one byte from fd within a loop that keeps the map going; the map
 * is driven by try_next only. */
static void wait_started(pmap_iter *it, int started_fd, int count)
{
    int fd = pmap_iter_fd(it), got = 0;
    uint64_t end = now_ns() + 30ull * 1000000000u;
    pmap_item item;

    while (got < count) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {started_fd, POLLIN, 0}};
        int timeout = pmap_iter_timeout(it);

        assert_true(now_ns() < end);
        assert_true(poll(p, 2, timeout < 0 || timeout > 1000 ? 1000 : timeout) >= 0 ||
                    errno == EINTR);
        if (p[1].revents & POLLIN) {
            char b;

            assert_int_equal(read(started_fd, &b, 1), 1);
            got++;
        }
        assert_int_equal(pmap_try_next(it, &item), PMAP_EAGAIN);
    }
}

/* While every worker runs a task that ends only when the test says so,
 * pmap_try_next returns at once, again and again, and the descriptor is
 * quiet. */
static void test_try_next_never_waits(void **state)
{
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    struct got got = {0};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t worst = 0;
    int k, fd;
    struct pollfd p;

    (void)state;
    tu_snap_take(&snap);
    ctx_init(&c);
    pool = pool_new(&c, 2, 1, 0, 0);
    gen_init(&g, 4, OP_WAIT, 0);
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    fd = pmap_iter_fd(it);
    wait_started(it, c.started[0], 2);
    /* Both workers are inside a task that never ends on its own. */
    for (k = 0; k < 1000; k++) {
        uint64_t t0 = now_ns(), dt;

        assert_int_equal(pmap_try_next(it, &item), PMAP_EAGAIN);
        dt = now_ns() - t0;
        if (dt > worst)
            worst = dt;
    }
    print_message("      slowest of 1000 pmap_try_next while busy: %.3f ms\n", (double)worst / 1e6);
    /* A call that waited for a task would never have returned; this bound
     * only catches one that waits for a pump's timeout. */
    assert_true(worst < 500ull * 1000000u);
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    assert_int_equal(poll(&p, 1, 0), 0);
    /* Let the four tasks end, then the loop takes every item. */
    assert_int_equal(write(c.release[1], "rrrr", 4), 4);
    drive_loop(it, &got, M_POLL);
    assert_int_equal(got.rc, PMAP_DONE);
    assert_int_equal(got.n, 4);
    for (k = 0; k < 4; k++) {
        assert_int_equal(got.v[k].index, (uint64_t)k);
        assert_int_equal(got.v[k].status, PMAP_OK);
    }
    got_free(&got);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

/* About a second of task time (two workers, four records of 500 ms): the
 * loop waiting on the descriptor burns next to no CPU and wakes up only a
 * handful of times. */
static void test_no_cpu_while_waiting(void **state)
{
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    struct got got = {0};
    pmap_pool *pool;
    pmap_iter *it;
    double cpu, t0;
    uint64_t w0, wall;

    (void)state;
    tu_snap_take(&snap);
    ctx_init(&c);
    pool = pool_new(&c, 2, 1, 0, 0);
    gen_init(&g, 4, OP_SLEEP, 300);
    it = pmap_imap_unordered(pool, gen, &g);
    assert_non_null(it);
    t0 = cpu_self_s();
    w0 = now_ns();
    drive_loop(it, &got, M_POLL);
    cpu = cpu_self_s() - t0;
    wall = now_ns() - w0;
    print_message("      caller CPU %.3f s over %.3f s of waiting, %u wakeups\n", cpu,
                  (double)wall / 1e9, got.wakeups);
    assert_int_equal(got.rc, PMAP_DONE);
    assert_int_equal(got.n, 4);
    /* Sleeping tasks: at least one record's time passed. A loop that spins
     * would take about a CPU-second here and wake up thousands of times. */
    assert_true(wall >= 300ull * 1000000u);
    assert_true(cpu < 0.25);
    assert_true(got.wakeups < 100);
    got_free(&got);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

/* A record over task_timeout_ms is reported by a loop that honours
 * pmap_iter_timeout: nothing on the pipes would tell, since the task never
 * ends on its own. */
static void test_timeout_honoured(void **state)
{
    static const uint32_t ops[] = {OP_MIXED, OP_WAIT, OP_MIXED};
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int fd, rc = PMAP_EAGAIN, seen = 0, unbounded = 0;
    uint64_t t0, elapsed;

    (void)state;
    tu_snap_take(&snap);
    ctx_init(&c);
    pool = pool_new(&c, 1, 1, 0, 300);
    gen_init(&g, 3, OP_MIXED, 0);
    g.ops = ops;
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    fd = pmap_iter_fd(it);
    t0 = now_ns();
    while (rc == PMAP_OK || rc == PMAP_EAGAIN) {
        struct pollfd p = {fd, POLLIN, 0};
        int timeout = pmap_iter_timeout(it);

        if (timeout < 0) {
            unbounded++;
            timeout = 20000; /* what a loop without the timeout would wait: for ever */
        }
        assert_true(poll(&p, 1, timeout) >= 0 || errno == EINTR);
        while ((rc = pmap_try_next(it, &item)) == PMAP_OK) {
            assert_int_equal(item.index, (uint64_t)seen);
            assert_int_equal(item.status, seen == 1 ? PMAP_ETIMEOUT : PMAP_OK);
            seen++;
        }
        assert_true(now_ns() - t0 < 60ull * 1000000000u);
    }
    elapsed = now_ns() - t0;
    print_message("      timed-out map ended after %.3f s (limit 0.3 s)\n", (double)elapsed / 1e9);
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(seen, 3);
    assert_int_equal(unbounded, 0);
    assert_true(elapsed < 15ull * 1000000000u);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

/* The descriptor: one per iterator, >= 3, close-on-exec, never inherited
 * by a worker (a replacement forked after it exists holds no more epoll
 * sets or eventfds than a worker forked before it), closed by
 * pmap_iter_free. */
static void test_descriptor_lifetime(void **state)
{
    static const uint32_t ops[] = {OP_COUNT_ANON, OP_MIXED, OP_COUNT_ANON};
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int fd, rc, flags, anon[3] = {-1, -1, -1}, n = 0;

    (void)state;
    tu_snap_take(&snap);
    ctx_init(&c);
    c.crash_every = 1000; /* record 1 crashes (_exit(42)) */
    c.crash_at = 1;
    pool = pool_new(&c, 1, 1, 0, 0);
    gen_init(&g, 3, OP_MIXED, 0);
    g.ops = ops;
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    fd = pmap_iter_fd(it);
    assert_true(fd >= 3);
    assert_int_equal(pmap_iter_fd(it), fd);
    flags = fcntl(fd, F_GETFD);
    assert_true(flags >= 0 && (flags & FD_CLOEXEC));
    do {
        struct pollfd p = {fd, POLLIN, 0};
        int timeout = pmap_iter_timeout(it);

        assert_true(poll(&p, 1, timeout) >= 0 || errno == EINTR);
        while ((rc = pmap_try_next(it, &item)) == PMAP_OK) {
            assert_int_equal(item.index, (uint64_t)n);
            if (item.index == 1) {
                assert_int_equal(item.status, PMAP_ECRASH);
                assert_int_equal(item.code, 42);
            } else {
                assert_int_equal(item.status, PMAP_OK);
                assert_int_equal(item.len, sizeof anon[0]);
                memcpy(&anon[item.index], item.data, sizeof anon[0]);
            }
            n++;
        }
    } while (rc == PMAP_EAGAIN);
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(n, 3);
    /* Record 0 ran on the worker forked with the pool, record 2 on its
     * replacement, forked after the descriptor was made. */
    assert_true(anon[0] >= 0);
    assert_int_equal(anon[2], anon[0]);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    errno = 0;
    assert_int_equal(fcntl(fd, F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

/* Misuse: NULL arguments; the generator calling pmap_try_next on its own
 * iterator (from pmap_try_next and from pmap_next) gets PMAP_EBUSY and
 * changes nothing; an inherited iterator is inert. */
static void test_misuse(void **state)
{
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    struct got got = {0};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    pid_t pid;
    int st, i;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pmap_try_next(NULL, &item), PMAP_EINVAL);
    errno = 0;
    assert_int_equal(pmap_iter_fd(NULL), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(pmap_iter_timeout(NULL), -1);
    assert_int_equal(errno, EINVAL);
    assert_string_equal(pmap_strerror(PMAP_EAGAIN), "nothing ready yet");

    ctx_init(&c);
    pool = pool_new(&c, 2, 0, 0, 0);
    for (i = 0; i < 2; i++) {
        gen_init(&g, 500, OP_MIXED, 0);
        it = pmap_imap(pool, gen, &g);
        assert_non_null(it);
        assert_int_equal(pmap_try_next(it, NULL), PMAP_EINVAL);
        g.self = it;
        g.reentry_rc = 0;
        if (i == 0)
            drive_loop(it, &got, M_POLL);
        else
            drive_block(it, &got);
        assert_int_equal(g.reentry_rc, PMAP_EBUSY);
        assert_int_equal(got.rc, PMAP_DONE);
        assert_int_equal(got.n, 500);
        got_free(&got);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
    }

    gen_init(&g, 100, OP_MIXED, 0);
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_true(pmap_iter_fd(it) >= 3);
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* No cmocka here: the exit status tells. */
        int bad = 0;

        bad |= pmap_try_next(it, &item) != PMAP_EINVAL;
        errno = 0;
        bad |= (pmap_iter_fd(it) != -1 || errno != EINVAL) << 1;
        errno = 0;
        bad |= (pmap_iter_timeout(it) != -1 || errno != EINVAL) << 2;
        bad |= (pmap_iter_free(it) != PMAP_OK) << 3;
        _exit(bad);
    }
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    drive_loop(it, &got, M_POLL);
    assert_int_equal(got.rc, PMAP_DONE);
    assert_int_equal(got.n, 100);
    got_free(&got);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

/* The window bounds records generated but not handed out by
 * pmap_try_next as it does for pmap_next (the previous item counts as
 * handed out once the next call starts, whatever it returns). */
static void test_window_bound(void **state)
{
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t consumed = 0;
    int ordered, fd, rc;

    (void)state;
    tu_snap_take(&snap);
    ctx_init(&c);
    pool = pool_new(&c, 2, 0, 8, 0);
    for (ordered = 0; ordered < 2; ordered++) {
        gen_init(&g, 3000, OP_MIXED, 0);
        g.consumed = &consumed;
        g.window = 8;
        consumed = 0;
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        fd = pmap_iter_fd(it);
        do {
            struct pollfd p = {fd, POLLIN, 0};

            assert_true(poll(&p, 1, pmap_iter_timeout(it)) >= 0 || errno == EINTR);
            /* One item per wakeup: the descriptor must call back for the rest. */
            rc = pmap_try_next(it, &item);
            if (rc == PMAP_OK)
                consumed++;
        } while (rc == PMAP_OK || rc == PMAP_EAGAIN);
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(consumed, 3000);
        assert_int_equal(g.window_broken, 0);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

/* Records of megabytes both ways: writes to the workers block (the
 * descriptor must wake the loop when a pipe has room again) and results
 * arrive in many reads. */
static void test_large_records(void **state)
{
    struct tu_snap snap;
    struct task_ctx c;
    struct gen g;
    struct got ref = {0}, got = {0};
    pmap_pool *pool;
    pmap_iter *it;
    /* More than a 1 MiB pipe holds, so that writes block; a few records
     * only: the rest is copying, slow under sanitizers. */
    uint32_t size = (1u << 20) + 4096u;
    int ordered;

    (void)state;
    tu_snap_take(&snap);
    ctx_init(&c);
    pool = pool_new(&c, 2, 0, 0, 0);
    for (ordered = 0; ordered < 2; ordered++) {
        gen_init(&g, 8, OP_ECHO, size);
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        drive_block(it, &ref);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        gen_init(&g, 8, OP_ECHO, size);
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        drive_loop(it, &got, M_POLL);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(got.rc, PMAP_DONE);
        assert_int_equal(got.n, 8);
        got_equal(&ref, &got, !ordered);
        assert_int_equal(got.v[3].len, sizeof(struct param) + size);
        got_free(&ref);
        got_free(&got);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    ctx_close(&c);
    tu_snap_check(&snap);
}

int main(void)
{
    const char *q = getenv("PMAP_TEST_QUICK");
    struct rlimit nocore = {0, 0};
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        /* The 100 000-record maps first, while the process is small. */
        cmocka_unit_test(test_same_items_ordered),
        cmocka_unit_test(test_same_items_unordered),
        cmocka_unit_test(test_same_items_gen_error),
        cmocka_unit_test(test_try_next_never_waits),
        cmocka_unit_test(test_no_cpu_while_waiting),
        cmocka_unit_test(test_timeout_honoured),
        cmocka_unit_test(test_descriptor_lifetime),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_window_bound),
        cmocka_unit_test(test_large_records),
    };
    /* clang-format on */

    quick = q != NULL && *q != '\0' && strcmp(q, "0") != 0;
    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    /* Tests crash workers on purpose: no core files. */
    (void)setrlimit(RLIMIT_CORE, &nocore);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
