/*
 * The calls a map offers beside the consumer loop (since 1.1): caller-side
 * values per record, the generator's own error, the per-worker teardown
 * hook. Through the public API, with real workers; every test leaves the
 * process with the descriptors and children it had.
 *
 * Workers never assert: tasks and hooks report through results and a
 * pipe, and the test asserts in the caller.
 */
#define _POSIX_C_SOURCE 200809L

#include "pmap.h"
#include "testutil.h"

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
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* Set when memcheck runs this process (its preload is in the environment). */
static int under_valgrind;

/* ------------------------------------------------------------------------ */
/* Caller-side values                                                       */
/* ------------------------------------------------------------------------ */

#define N_USER 3000u

/* What the consumer needs per record and the worker never sees. */
struct name {
    uint64_t index;
    char text[16];
};

struct user_gen {
    uint64_t next, n;
    struct name *names;
    int set_rc; /* the first failed pmap_param_set_user, else 0 */
};

/* Record i carries i and the value &names[i], except every 7th, which
 * has none. Every 5th is set twice, the second call counting (NULL for
 * those that have none). The slots of a small window are reused many
 * times, so a value left over from an earlier record would show. */
static int user_gen(void *ctx, pmap_buf *param)
{
    struct user_gen *g = ctx;
    uint64_t i = g->next;
    int rc = PMAP_OK;

    if (i == g->n)
        return 0;
    g->next++;
    if (i % 5 == 0)
        rc = pmap_param_set_user(param, &g->names[(i + 1) % g->n]);
    if (rc == PMAP_OK && i % 7 != 0)
        rc = pmap_param_set_user(param, &g->names[i]);
    else if (rc == PMAP_OK && i % 5 == 0)
        rc = pmap_param_set_user(param, NULL);
    if (rc != PMAP_OK && g->set_rc == 0)
        g->set_rc = rc;
    return pmap_buf_set(param, &i, sizeof i) == PMAP_OK ? 1 : -1;
}

/* Echo the index; record 13 fails with a message, record 77 crashes. */
static int user_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i;

    (void)ctx;
    if (len != sizeof i)
        return 99;
    memcpy(&i, param, sizeof i);
    if (i == 77)
        abort();
    if (i == 13) {
        (void)pmap_buf_set(out, "no", 2);
        return 5;
    }
    return pmap_buf_set(out, &i, sizeof i);
}

static void run_user_values(int ordered, unsigned window)
{
    struct tu_snap snap;
    struct user_gen g;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item, old;
    unsigned char *seen = calloc(N_USER, 1);
    uint64_t got = 0, i;
    int rc, have_old = 0;

    assert_non_null(seen);
    tu_snap_take(&snap);
    memset(&g, 0, sizeof g);
    g.n = N_USER;
    g.names = calloc(N_USER, sizeof *g.names);
    assert_non_null(g.names);
    for (i = 0; i < N_USER; i++) {
        g.names[i].index = i;
        snprintf(g.names[i].text, sizeof g.names[i].text, "r%llu", (unsigned long long)i);
    }
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.window = window;
    pool = pmap_pool_create(user_task, NULL, &opt);
    assert_non_null(pool);
    it = ordered ? pmap_imap(pool, user_gen, &g) : pmap_imap_unordered(pool, user_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        struct name *nm = pmap_item_user(it, &item);

        assert_true(item.index < N_USER);
        assert_int_equal(seen[item.index], 0);
        seen[item.index] = 1;
        if (ordered)
            assert_int_equal(item.index, got);
        got++;
        /* Failed items carry their value as well as successful ones. */
        if (item.index == 77)
            assert_int_equal(item.status, PMAP_ECRASH);
        else if (item.index == 13)
            assert_int_equal(item.status, PMAP_ETASK);
        else
            assert_int_equal(item.status, PMAP_OK);
        if (item.index % 7 == 0) {
            assert_null(nm);
        } else {
            assert_ptr_equal(nm, &g.names[item.index]);
            assert_int_equal(nm->index, item.index);
        }
        /* Only the latest item is a key: an older copy gives nothing. */
        if (have_old && old.index != item.index)
            assert_null(pmap_item_user(it, &old));
        old = item;
        have_old = 1;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, N_USER);
    assert_int_equal(g.set_rc, 0);
    assert_null(pmap_item_user(it, &item)); /* nothing held after the end */
    assert_null(pmap_item_user(NULL, &item));
    assert_null(pmap_item_user(it, NULL));
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    free(g.names);
    free(seen);
    tu_snap_check(&snap);
}

static void test_user_values_ordered(void **state)
{
    (void)state;
    run_user_values(1, 8);
    run_user_values(1, 0);
}

static void test_user_values_unordered(void **state)
{
    (void)state;
    run_user_values(0, 8);
    run_user_values(0, 0);
}

#ifdef __linux__
/* Items of pmap_try_next are keys as well as those of pmap_next. */
static void test_user_values_try_next(void **state)
{
    struct tu_snap snap;
    struct user_gen g;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0, i;
    int rc, fd;

    (void)state;
    tu_snap_take(&snap);
    memset(&g, 0, sizeof g);
    g.n = 500;
    g.next = 100; /* past the records that fail */
    g.names = calloc(g.n, sizeof *g.names);
    assert_non_null(g.names);
    for (i = 0; i < g.n; i++)
        g.names[i].index = i;
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.window = 16;
    pool = pmap_pool_create(user_task, NULL, &opt);
    assert_non_null(pool);
    it = pmap_imap_unordered(pool, user_gen, &g);
    assert_non_null(it);
    fd = pmap_iter_fd(it);
    assert_true(fd >= 0);
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, pmap_iter_timeout(it));

        assert_true(n >= 0 || errno == EINTR);
        while ((rc = pmap_try_next(it, &item)) == PMAP_OK) {
            struct name *nm = pmap_item_user(it, &item);
            uint64_t v;

            assert_int_equal(item.status, PMAP_OK);
            memcpy(&v, item.data, sizeof v);
            if (v % 7 == 0) {
                assert_null(nm);
            } else {
                assert_non_null(nm);
                assert_int_equal(nm->index, v);
            }
            got++;
        }
        if (rc != PMAP_EAGAIN)
            break;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 400);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    free(g.names);
    tu_snap_check(&snap);
}
#endif

/* The task tries the call on its own buffers: refused, nothing written. */
static int misuse_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    int rc[2];

    (void)ctx;
    (void)len;
    rc[0] = pmap_param_set_user(out, (void *)out);
    rc[1] = pmap_param_set_user((pmap_buf *)(uintptr_t)param, (void *)out);
    return pmap_buf_set(out, rc, sizeof rc);
}

/* A generator that draws its records from another map, whose generator
 * sets values of its own: each map keeps its own. */
struct outer_gen {
    pmap_iter *inner;
    uint64_t n;
    int bad;
};

static int outer_gen(void *ctx, pmap_buf *param)
{
    struct outer_gen *g = ctx;
    struct name *nm;
    pmap_item item;
    uint64_t v;
    int rc;

    /* Before and after the inner map's generator ran on this thread. */
    if (pmap_param_set_user(param, (void *)(uintptr_t)(g->n * 10 + 1)) != PMAP_OK)
        g->bad++;
    rc = pmap_next(g->inner, &item);
    if (rc == PMAP_DONE)
        return 0;
    if (rc != PMAP_OK || item.status != PMAP_OK || item.len != sizeof v)
        return -1;
    memcpy(&v, item.data, sizeof v);
    nm = pmap_item_user(g->inner, &item);
    if (v % 7 == 0 ? nm != NULL : nm == NULL || nm->index != v)
        g->bad++;
    if (pmap_param_set_user(param, (void *)(uintptr_t)(g->n * 10 + 2)) != PMAP_OK)
        g->bad++;
    g->n++;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

static void test_user_value_misuse(void **state)
{
    struct tu_snap snap;
    struct user_gen ig;
    struct outer_gen og;
    struct tu_range r = {0, 40};
    pmap_options opt;
    pmap_pool *pool, *inner_pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t i, got = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    /* Outside any generator. */
    assert_int_equal(pmap_param_set_user(NULL, NULL), PMAP_EINVAL);
    assert_int_equal(pmap_param_set_user((pmap_buf *)&r, &r), PMAP_EINVAL);

    pmap_options_init(&opt);
    opt.workers = 2;
    pool = pmap_pool_create(misuse_task, NULL, &opt);
    assert_non_null(pool);
    it = pmap_imap_unordered(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int res[2];

        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof res);
        memcpy(res, item.data, sizeof res);
        assert_int_equal(res[0], PMAP_EINVAL);
        assert_int_equal(res[1], PMAP_EINVAL);
        assert_null(pmap_item_user(it, &item)); /* no generator set one */
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 40);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);

    /* Nested maps on two pools. */
    memset(&ig, 0, sizeof ig);
    ig.n = 200;
    ig.names = calloc(ig.n, sizeof *ig.names);
    assert_non_null(ig.names);
    for (i = 0; i < ig.n; i++)
        ig.names[i].index = i;
    inner_pool = pmap_pool_create(user_task, NULL, &opt);
    assert_non_null(inner_pool);
    pool = pmap_pool_create(user_task, NULL, &opt);
    assert_non_null(pool);
    memset(&og, 0, sizeof og);
    /* Records 13 and 77 of the inner map fail: skip them by starting at 78. */
    ig.next = 78;
    og.inner = pmap_imap(inner_pool, user_gen, &ig);
    assert_non_null(og.inner);
    it = pmap_imap(pool, outer_gen, &og);
    assert_non_null(it);
    got = 0;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t v;

        assert_int_equal(item.status, PMAP_OK);
        memcpy(&v, item.data, sizeof v);
        assert_int_equal(v, 78 + item.index);
        assert_ptr_equal(pmap_item_user(it, &item), (void *)(uintptr_t)(item.index * 10 + 2));
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 200 - 78);
    assert_int_equal(og.bad, 0);
    assert_int_equal(ig.set_rc, 0);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_iter_free(og.inner), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(inner_pool), PMAP_OK);
    free(ig.names);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* The generator's own error                                                */
/* ------------------------------------------------------------------------ */

struct failing_gen {
    uint64_t next, fail_at;
    int ret;      /* returned at fail_at */
    int big_buf;  /* instead: a failed buffer at fail_at */
};

static int failing_gen(void *ctx, pmap_buf *param)
{
    struct failing_gen *g = ctx;

    if (g->next == g->fail_at) {
        if (g->big_buf) {
            (void)pmap_buf_reserve(param, (size_t)1 << 20); /* over max_record_bytes */
            return 1;
        }
        return g->ret;
    }
    g->next++;
    return pmap_buf_set(param, &g->next, sizeof g->next) == PMAP_OK ? 1 : -1;
}

static int echo_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    return pmap_buf_set(out, param, len);
}

static void test_gen_error_value(void **state)
{
    static const int rets[] = {-1, -42, -ENOENT, -2147483647 - 1};
    struct tu_snap snap;
    struct failing_gen g;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t got;
    size_t k;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pmap_iter_gen_error(NULL), 0);
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_record_bytes = 4096;
    pool = pmap_pool_create(echo_task, NULL, &opt);
    assert_non_null(pool);
    for (k = 0; k < sizeof rets / sizeof rets[0] * 2 + 2; k++) {
        memset(&g, 0, sizeof g);
        g.fail_at = 25;
        g.ret = rets[k % (sizeof rets / sizeof rets[0])];
        g.big_buf = k >= sizeof rets / sizeof rets[0] * 2;
        it = (k / 4) % 2 ? pmap_imap_unordered(pool, failing_gen, &g)
                         : pmap_imap(pool, failing_gen, &g);
        assert_non_null(it);
        assert_int_equal(pmap_iter_gen_error(it), 0);
        got = 0;
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            assert_int_equal(item.status, PMAP_OK);
            got++;
        }
        assert_int_equal(got, 25);
        if (g.big_buf) {
            /* Not the generator's return: the buffer's status, no value. */
            assert_int_equal(rc, PMAP_ETOOBIG);
            assert_int_equal(pmap_iter_gen_error(it), 0);
        } else {
            assert_int_equal(rc, PMAP_EGEN);
            assert_int_equal(pmap_iter_gen_error(it), g.ret);
            /* Still there on later calls. */
            assert_int_equal(pmap_next(it, &item), PMAP_EGEN);
            assert_int_equal(pmap_iter_gen_error(it), g.ret);
        }
        assert_int_equal(pmap_iter_free(it), g.big_buf ? PMAP_ETOOBIG : PMAP_EGEN);
    }
    /* A map that ends normally has none. */
    {
        struct tu_range r = {0, 10};

        it = pmap_imap(pool, tu_range_gen, &r);
        assert_non_null(it);
        while (pmap_next(it, &item) == PMAP_OK)
            ;
        assert_int_equal(pmap_iter_gen_error(it), 0);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* worker_exit                                                              */
/* ------------------------------------------------------------------------ */

/* One event of a worker's life, written to a pipe in one write() (well
 * under PIPE_BUF, so events of different workers never interleave). */
struct event {
    char kind; /* 'I' worker_init, 'X' worker_exit, 'C' about to crash */
    int id;
    pid_t pid;
};

struct hook_ctx {
    int fd; /* the pipe's write end, created before the pool */
    int crash_at[2];
    size_t grow; /* bytes each record adds to its worker's resident memory */
};

/* What the tasks of one worker keep (reachable, not leaked). */
static void *grown[64];
static size_t n_grown;

static void emit(const struct hook_ctx *h, char kind)
{
    struct event e;
    ssize_t n;

    memset(&e, 0, sizeof e);
    e.kind = kind;
    e.id = pmap_worker_id();
    e.pid = getpid();
    do {
        n = write(h->fd, &e, sizeof e);
    } while (n < 0 && errno == EINTR);
}

static int hook_init(void *ctx)
{
    emit(ctx, 'I');
    return 0;
}

static void hook_exit(void *ctx)
{
    emit(ctx, 'X');
}

static int hook_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const struct hook_ctx *h = ctx;
    uint64_t i;

    if (len != sizeof i)
        return 99;
    memcpy(&i, param, sizeof i);
    if (i == (uint64_t)h->crash_at[0] || i == (uint64_t)h->crash_at[1]) {
        emit(h, 'C');
        abort();
    }
    if (h->grow != 0 && n_grown < sizeof grown / sizeof grown[0]) {
        grown[n_grown] = malloc(h->grow);
        if (grown[n_grown] == NULL)
            return 98;
        memset(grown[n_grown++], 1, h->grow);
    }
    return pmap_buf_set(out, &i, sizeof i);
}

/* Every event the workers wrote; the pool is destroyed, so all are in. */
static size_t read_events(int fd, struct event *ev, size_t cap)
{
    size_t got = 0;

    for (;;) {
        ssize_t n = read(fd, (char *)ev + got, cap * sizeof *ev - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        assert_true(n >= 0);
        if (n == 0)
            break;
        got += (size_t)n;
    }
    assert_int_equal(got % sizeof *ev, 0);
    return got / sizeof *ev;
}

static void test_worker_exit_once(void **state)
{
    enum { N = 40, CAP = 256 };
    struct tu_snap snap;
    struct hook_ctx h;
    struct tu_range r = {0, N};
    struct event ev[CAP];
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int fds[2], rc, crashes = 0, inits = 0, exits = 0, crashed_events = 0;
    size_t n, i, j;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    memset(&h, 0, sizeof h);
    h.fd = fds[1];
    h.crash_at[0] = 7;
    h.crash_at[1] = 22;
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.chunk = 1;
    opt.max_tasks_per_worker = 4; /* recycled workers exit normally */
    opt.worker_init = hook_init;
    opt.worker_exit = hook_exit;
    pool = pmap_pool_create(hook_task, &h, &opt);
    assert_non_null(pool);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.index == 7 || item.index == 22) {
            assert_int_equal(item.status, PMAP_ECRASH);
            crashes++;
        } else {
            assert_int_equal(item.status, PMAP_OK);
        }
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(crashes, 2);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    /* The hook ran in the workers, never here. */
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    n = read_events(fds[0], ev, CAP);
    assert_int_equal(close(fds[0]), 0);
    assert_int_equal(close(fds[1]), 0);

    /* Per worker process: one 'I', then exactly one 'X' unless it crashed. */
    for (i = 0; i < n; i++) {
        int x = 0, c = 0, in = 0;

        assert_true(ev[i].id == 0 || ev[i].id == 1);
        assert_true(ev[i].pid != getpid());
        if (ev[i].kind != 'I')
            continue;
        inits++;
        for (j = 0; j < n; j++) {
            if (ev[j].pid != ev[i].pid)
                continue;
            assert_int_equal(ev[j].id, ev[i].id);
            x += ev[j].kind == 'X';
            c += ev[j].kind == 'C';
            in += ev[j].kind == 'I';
        }
        assert_int_equal(in, 1);
        assert_int_equal(x + c, 1);
        crashed_events += c;
    }
    for (i = 0; i < n; i++)
        exits += ev[i].kind == 'X';
    assert_int_equal(crashed_events, 2);
    assert_int_equal(exits, inits - 2);
    /* 38 records on workers of 4 each: recycling, not only the destroy. */
    assert_true(exits >= 38 / 4);
    assert_int_equal((int)n, inits + exits + 2);
    tu_snap_check(&snap);
}

/* A worker that retires for its memory limit ends normally too. */
static void test_worker_exit_retired(void **state)
{
    enum { N = 12, CAP = 64 };
    struct tu_snap snap;
    struct hook_ctx h;
    struct tu_range r = {0, N};
    struct event ev[CAP];
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int fds[2], rc, inits = 0, exits = 0;
    size_t n, i, j;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    memset(&h, 0, sizeof h);
    h.fd = fds[1];
    h.crash_at[0] = h.crash_at[1] = -1;
    h.grow = (size_t)2 << 20;
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.chunk = 1;
    opt.max_worker_rss = (size_t)5 << 20; /* retires after about 3 records */
    opt.worker_init = hook_init;
    opt.worker_exit = hook_exit;
    pool = pmap_pool_create(hook_task, &h, &opt);
    assert_non_null(pool);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK)
        assert_int_equal(item.status, PMAP_OK);
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    n = read_events(fds[0], ev, CAP);
    assert_int_equal(close(fds[0]), 0);
    assert_int_equal(close(fds[1]), 0);
    for (i = 0; i < n; i++) {
        int x = 0;

        if (ev[i].kind != 'I')
            continue;
        inits++;
        for (j = 0; j < n; j++)
            x += ev[j].pid == ev[i].pid && ev[j].kind == 'X';
        assert_int_equal(x, 1);
    }
    for (i = 0; i < n; i++)
        exits += ev[i].kind == 'X';
    assert_int_equal(exits, inits);
    assert_int_equal((int)n, inits + exits);
    assert_true(inits > 2); /* some retired and were replaced */
    tu_snap_check(&snap);
}

/* Without the hook set nothing changes; with it, a pool that never ran a
 * map still runs it once per worker at destroy, whoever forked them. */
static void run_worker_exit_at_destroy(int start_method)
{
    struct tu_snap snap;
    struct hook_ctx h;
    struct event ev[16];
    pmap_options opt;
    pmap_pool *pool;
    int fds[2], ids = 0;
    size_t n, i;

    tu_snap_take(&snap);
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    memset(&h, 0, sizeof h);
    h.fd = fds[1];
    h.crash_at[0] = h.crash_at[1] = -1;
    pmap_options_init(&opt);
    assert_null(opt.worker_exit);
    opt.workers = 3;
    opt.start_method = start_method;
    opt.worker_exit = hook_exit;
    pool = pmap_pool_create(hook_task, &h, &opt);
    assert_non_null(pool);
    assert_int_equal(read_events(fds[0], ev, 16), 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    n = read_events(fds[0], ev, 16);
    assert_int_equal(n, 3);
    for (i = 0; i < n; i++) {
        assert_int_equal(ev[i].kind, 'X');
        ids |= 1 << ev[i].id;
    }
    assert_int_equal(ids, 7);
    assert_int_equal(close(fds[0]), 0);
    assert_int_equal(close(fds[1]), 0);
    tu_snap_check(&snap);
}

static void test_worker_exit_at_destroy(void **state)
{
    (void)state;
    run_worker_exit_at_destroy(PMAP_START_FORK);
    run_worker_exit_at_destroy(PMAP_START_FORKSERVER);
}

/* ------------------------------------------------------------------------ */
/* A task per map                                                           */
/* ------------------------------------------------------------------------ */

/* Contexts that exist before the pool, as the fork snapshot rule asks. */
struct tctx {
    uint64_t mul, add;
    int faults; /* 1, 2: record 5 is killed; 1: record 9 runs past the time limit */
};

static const struct tctx ctx_a = {2, 0, 0}, ctx_b = {3, 1, 1}, ctx_b2 = {3, 1, 2},
                         ctx_c = {5, 7, 0};

static int task_affine(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const struct tctx *t = ctx;
    uint64_t i;

    if (len != sizeof i)
        return 99;
    memcpy(&i, param, sizeof i);
    /* SIGKILL, not abort(): under valgrind abort() runs a leak check in
     * the worker that can outlast the time limit. */
    if (t->faults && i == 5)
        raise(SIGKILL);
    if (t->faults == 1 && i == 9)
        for (;;)
            pause();
    i = i * t->mul + t->add;
    return pmap_buf_set(out, &i, sizeof i);
}

/* Another function; its ctx is a plain value. */
static int task_plus(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i;

    if (len != sizeof i)
        return 99;
    memcpy(&i, param, sizeof i);
    i += (uint64_t)(uintptr_t)ctx;
    return pmap_buf_set(out, &i, sizeof i);
}

#define N_TASK 60u

/* Drain a map of N_TASK records: each result is want(index), except the
 * faults of a faulty context. */
static void check_task_map(pmap_iter *it, int ordered, uint64_t mul, uint64_t add, int faults)
{
    pmap_item item;
    uint64_t got = 0, v;
    int rc;

    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (ordered)
            assert_int_equal(item.index, got);
        got++;
        if (faults && item.index == 5) {
            assert_int_equal(item.status, PMAP_ECRASH);
            assert_int_equal(item.code, SIGKILL);
            continue;
        }
        if (faults == 1 && item.index == 9) {
            assert_int_equal(item.status, PMAP_ETIMEOUT);
            continue;
        }
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof v);
        memcpy(&v, item.data, sizeof v);
        assert_int_equal(v, item.index * mul + add);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, N_TASK);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
}

static void run_task_per_map(int start_method)
{
    struct tu_snap snap;
    struct tu_range r;
    pmap_options opt;
    pmap_pool *pool;
    uint64_t xs[N_TASK], ys[N_TASK];
    int st[N_TASK];
    size_t i;

    tu_snap_take(&snap);
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.start_method = start_method;
    /* Long enough for the caller to see the kill of record 5 as a crash
     * first even when it is slow (valgrind, a loaded machine): a time
     * limit that expires before the caller reaps the worker wins. */
    opt.task_timeout_ms = under_valgrind ? 5000 : 400;
    opt.max_tasks_per_worker = 16; /* replacements mid-map run the map's task too */
    pool = pmap_pool_create(task_affine, (void *)&ctx_a, &opt);
    assert_non_null(pool);

    errno = 0;
    r.next = 0;
    r.n = N_TASK;
    assert_null(pmap_imap_task(pool, NULL, NULL, tu_range_gen, &r));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap_imap_task_unordered(NULL, task_plus, NULL, tu_range_gen, &r));
    assert_int_equal(errno, EINVAL);

    /* The pool's task; then others, switching at every map. */
    r.next = 0;
    check_task_map(pmap_imap(pool, tu_range_gen, &r), 1, 2, 0, 0);
    r.next = 0;
    check_task_map(pmap_imap_task(pool, task_affine, (void *)&ctx_b, tu_range_gen, &r), 1, 3, 1,
                   1);
    r.next = 0; /* the same function with another ctx */
    check_task_map(pmap_imap_task_unordered(pool, task_affine, (void *)&ctx_c, tu_range_gen, &r),
                   0, 5, 7, 0);
    r.next = 0;
    check_task_map(pmap_imap_task_unordered(pool, task_affine, (void *)&ctx_b2, tu_range_gen, &r),
                   0, 3, 1, 2);
    r.next = 0; /* the pool's own task named explicitly */
    check_task_map(pmap_imap_task(pool, task_affine, (void *)&ctx_a, tu_range_gen, &r), 1, 2, 0,
                   0);
    r.next = 0;
    check_task_map(pmap_imap_task(pool, task_plus, (void *)(uintptr_t)11, tu_range_gen, &r), 1, 1,
                   11, 0);
    r.next = 0; /* and back to the default */
    check_task_map(pmap_imap_unordered(pool, tu_range_gen, &r), 0, 2, 0, 0);
    for (i = 0; i < N_TASK; i++)
        xs[i] = i;
    assert_int_equal(pmap_map_array(pool, xs, N_TASK, sizeof xs[0], ys, sizeof ys[0], st), PMAP_OK);
    for (i = 0; i < N_TASK; i++)
        assert_int_equal(ys[i], 2 * i);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A consumer slower than the time limit: a record whose worker died
 * meanwhile is its crash, not a timeout (the deadline is checked before
 * the worker's end is read). */
static void test_crash_seen_late(void **state)
{
    struct tu_snap snap;
    struct tu_range r = {0, 12};
    struct timespec ts = {0, 300 * 1000 * 1000};
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int rc, seen = 0;

    (void)state;
    tu_snap_take(&snap);
    pmap_options_init(&opt);
    opt.workers = 1;
    opt.chunk = 1;
    opt.task_timeout_ms = 100;
    pool = pmap_pool_create(task_affine, (void *)&ctx_b2, &opt);
    assert_non_null(pool);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.index == 5) {
            assert_int_equal(item.status, PMAP_ECRASH);
            assert_int_equal(item.code, SIGKILL);
        } else {
            assert_int_equal(item.status, PMAP_OK);
        }
        /* Away while record 5, already queued to the worker, kills it. */
        if (item.index == 4)
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        seen++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(seen, 12);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

static void test_task_per_map(void **state)
{
    (void)state;
    run_task_per_map(PMAP_START_FORK);
}

/* Workers forked by the fork server share the caller's image as well. */
static void test_task_per_map_forkserver(void **state)
{
    (void)state;
    run_task_per_map(PMAP_START_FORKSERVER);
}

int main(void)
{
    const char *pre = getenv("LD_PRELOAD");
    struct rlimit nocore = {0, 0};
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_values_ordered),
        cmocka_unit_test(test_user_values_unordered),
#ifdef __linux__
        cmocka_unit_test(test_user_values_try_next),
#endif
        cmocka_unit_test(test_user_value_misuse),
        cmocka_unit_test(test_gen_error_value),
        cmocka_unit_test(test_worker_exit_once),
        cmocka_unit_test(test_worker_exit_retired),
        cmocka_unit_test(test_worker_exit_at_destroy),
        cmocka_unit_test(test_task_per_map),
        cmocka_unit_test(test_task_per_map_forkserver),
        cmocka_unit_test(test_crash_seen_late),
    };

    under_valgrind = pre != NULL && strstr(pre, "vgpreload") != NULL;
    /* Tests crash workers on purpose: no core files. */
    (void)setrlimit(RLIMIT_CORE, &nocore);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
