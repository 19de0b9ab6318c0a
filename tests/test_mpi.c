/*
 * pmap_mpi (DESIGN §11) under mpirun: rank 0 is the root and runs the
 * cmocka tests; every other rank serves. Before each pool the root tells
 * the others, on the program's own communicator (which the library must
 * never mix with its own traffic), which options to create it with; a
 * serving rank then calls pmap_mpi_pool_create, checks that it came back
 * with NULL and the expected errno, and that it has the descriptors and
 * children it had before. Serving ranks count what went wrong and report
 * the count at the end. Workers never assert. Run without mpirun, the
 * suite runs on a one-rank communicator (the root's local workers).
 */
#define _POSIX_C_SOURCE 200809L

#include "pmap_mpi.h"
#include "testutil.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define ROOT 0

/* What a record asks its task to do. */
enum op {
    OP_COST,   /* a result that depends on arg, after `arg % 97` rounds of work */
    OP_FAIL,   /* return arg: PMAP_ETASK with code arg */
    OP_ABORT,  /* abort(): PMAP_ECRASH, SIGABRT */
    OP_SEGV,   /* SIGSEGV */
    OP_EXIT,   /* exit(arg) */
    OP_SLEEP,  /* sleep arg ms, then a result like OP_COST's */
    OP_BIG,    /* arg bytes of a pattern keyed by the parameter's own size */
    OP_WHO,    /* pmap_worker_id() and the pid, after arg ms */
};

struct rec {
    uint32_t op;
    uint32_t arg;
    uint64_t index;
};

/* What the root tells the other ranks before a pool (and at the end). */
struct spec {
    int end;
    int workers[8]; /* per rank; 0: 2 */
    unsigned timeout_ms;
    unsigned window;
    int init_fails; /* worker_init fails on every serving rank */
    int expect_errno;
};

static int nranks, me;

/* PMAP_TEST_QUICK=1 (valgrind): smaller maps. */
static uint64_t quick(uint64_t n)
{
    const char *q = getenv("PMAP_TEST_QUICK");

    return q != NULL && q[0] == '1' ? n / 10 : n;
}

static uint64_t cost(uint64_t x, uint32_t rounds)
{
    uint32_t i;

    for (i = 0; i < rounds; i++)
        x = x * 6364136223846793005u + 1442695040888963407u;
    return x ^ (x >> 29);
}

static void nap_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct rec r;
    uint64_t v;

    (void)ctx;
    if (len < sizeof r)
        return -100;
    memcpy(&r, param, sizeof r);
    switch ((enum op)r.op) {
    case OP_COST:
        v = cost(r.index, r.arg % 97u);
        return pmap_buf_set(out, &v, sizeof v);
    case OP_FAIL:
        (void)pmap_buf_set(out, "failed", 6);
        return (int)r.arg;
    case OP_ABORT:
        abort();
    case OP_SEGV:
        raise(SIGSEGV);
        return -1;
    case OP_EXIT:
        exit((int)r.arg);
    case OP_SLEEP:
        nap_ms(r.arg);
        v = cost(r.index, 3);
        return pmap_buf_set(out, &v, sizeof v);
    case OP_BIG: {
        size_t n = r.arg, i;
        unsigned char *p = pmap_buf_reserve(out, n);

        if (p == NULL)
            return -2;
        for (i = 0; i < n; i++)
            p[i] = (unsigned char)((i * 31u + len) & 0xff);
        return 0;
    }
    case OP_WHO: {
        int32_t who[2];

        nap_ms(r.arg);
        who[0] = pmap_worker_id();
        who[1] = (int32_t)getpid();
        return pmap_buf_set(out, who, sizeof who);
    }
    }
    return -3;
}

static int init_fail(void *ctx)
{
    (void)ctx;
    return 1;
}

static void spec_options(const struct spec *s, int rank, pmap_options *opt)
{
    pmap_options_init(opt);
    opt->workers = s->workers[rank] ? s->workers[rank] : 2;
    opt->task_timeout_ms = s->timeout_ms;
    opt->window = s->window;
    if (s->init_fails)
        opt->worker_init = init_fail;
}

/* ---- serving ranks ---- */

static int serve_all(void)
{
    int bad = 0;

    for (;;) {
        struct spec s;
        struct tu_snap before;
        pmap_options opt;
        pmap_pool *pool;

        if (MPI_Bcast(&s, (int)sizeof s, MPI_BYTE, ROOT, MPI_COMM_WORLD) != MPI_SUCCESS)
            return bad + 1;
        if (s.end)
            break;
        spec_options(&s, me, &opt);
        tu_snap_take(&before);
        errno = 12345;
        pool = pmap_mpi_pool_create(MPI_COMM_WORLD, ROOT, task, NULL, &opt);
        if (pool != NULL || errno != s.expect_errno) {
            fprintf(stderr, "rank %d: pool %p errno %d, expected %d\n", me, (void *)pool, errno,
                    s.expect_errno);
            bad++;
        }
        if (tu_fd_count() != before.fds || tu_child_count() != before.children) {
            fprintf(stderr, "rank %d: fds %d -> %d, children %d -> %d\n", me, before.fds,
                    tu_fd_count(), before.children, tu_child_count());
            bad++;
        }
    }
    return bad;
}

/* ---- the root ---- */

static struct tu_snap root_snap;

/* What a test has open, so that a failed assertion still lets the
 * serving ranks go (they serve until the root destroys its pool). */
static pmap_iter *open_iters[4];
static pmap_pool *open_pools[4];

static void *track(void **set, void *p)
{
    int i;

    for (i = 0; i < 4 && p != NULL; i++)
        if (set[i] == NULL) {
            set[i] = p;
            break;
        }
    return p;
}

static void untrack(void **set, void *p)
{
    int i;

    for (i = 0; i < 4; i++)
        if (set[i] == p)
            set[i] = NULL;
}

static pmap_iter *imap(pmap_pool *pool, pmap_gen_fn g, void *ctx, int ordered)
{
    pmap_iter *it = ordered ? pmap_imap(pool, g, ctx) : pmap_imap_unordered(pool, g, ctx);

    return track((void **)open_iters, it);
}

static int iter_free(pmap_iter *it)
{
    untrack((void **)open_iters, it);
    return pmap_iter_free(it);
}

static int pool_destroy(pmap_pool *pool)
{
    untrack((void **)open_pools, pool);
    return pmap_pool_destroy(pool);
}

static int teardown(void **state)
{
    int i;

    (void)state;
    for (i = 0; i < 4; i++) {
        if (open_iters[i] != NULL)
            (void)pmap_iter_free(open_iters[i]);
        open_iters[i] = NULL;
    }
    for (i = 0; i < 4; i++) {
        if (open_pools[i] != NULL)
            (void)pmap_pool_destroy(open_pools[i]);
        open_pools[i] = NULL;
    }
    return 0;
}

static pmap_pool *make_pool(struct spec *s)
{
    pmap_options opt;
    pmap_pool *pool;

    s->end = 0;
    assert_int_equal(MPI_Bcast(s, (int)sizeof *s, MPI_BYTE, ROOT, MPI_COMM_WORLD), MPI_SUCCESS);
    spec_options(s, ROOT, &opt);
    tu_snap_take(&root_snap);
    pool = pmap_mpi_pool_create(MPI_COMM_WORLD, ROOT, task, NULL, &opt);
    return track((void **)open_pools, pool);
}

static pmap_pool *make_default(void)
{
    struct spec s;
    pmap_pool *pool;

    memset(&s, 0, sizeof s);
    pool = make_pool(&s);
    assert_non_null(pool);
    return pool;
}

static void end_pool(pmap_pool *pool)
{
    assert_int_equal(pool_destroy(pool), PMAP_OK);
    tu_snap_check(&root_snap);
}

/* A generator of struct rec from a list of (op, arg), or n OP_COST
 * records of uneven cost. */
struct gen {
    const struct rec *list;
    uint64_t n, next;
    uint64_t fail_at; /* return -1 there (UINT64_MAX: never) */
    uint64_t consumed; /* the consumer's count, to check the lead */
    uint64_t max_lead;
};

static int gen(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    struct rec r;

    if (g->next == g->fail_at)
        return -1;
    if (g->next >= g->n)
        return 0;
    if (g->list != NULL) {
        r = g->list[g->next];
    } else {
        r.op = OP_COST;
        r.arg = (uint32_t)((g->next * 2654435761u) >> 7);
    }
    r.index = g->next;
    if (g->next + 1 - g->consumed > g->max_lead)
        g->max_lead = g->next + 1 - g->consumed;
    g->next++;
    return pmap_buf_set(param, &r, sizeof r) == PMAP_OK ? 1 : -1;
}

static void gen_init(struct gen *g, const struct rec *list, uint64_t n)
{
    memset(g, 0, sizeof *g);
    g->list = list;
    g->n = n;
    g->fail_at = UINT64_MAX;
}

/* Ordered results of 100 k records of uneven cost are those of a local
 * pool on the same input, item for item. */
static void test_ordered_like_local(void **state)
{
    const uint64_t n = quick(100000);
    pmap_options opt;
    pmap_pool *local, *pool;
    pmap_iter *a, *b;
    pmap_item x, y;
    struct gen ga, gb;
    uint64_t count = 0;
    int rca, rcb;

    (void)state;
    pool = make_default();
    pmap_options_init(&opt);
    opt.workers = 2;
    local = track((void **)open_pools, pmap_pool_create(task, NULL, &opt));
    assert_non_null(local);
    gen_init(&ga, NULL, n);
    gen_init(&gb, NULL, n);
    a = imap(local, gen, &ga, 1);
    b = imap(pool, gen, &gb, 1);
    assert_non_null(a);
    assert_non_null(b);
    for (;;) {
        rca = pmap_next(a, &x);
        rcb = pmap_next(b, &y);
        assert_int_equal(rca, rcb);
        if (rca != PMAP_OK)
            break;
        assert_int_equal(x.index, count);
        assert_int_equal(y.index, count);
        assert_int_equal(y.status, x.status);
        assert_int_equal(y.status, PMAP_OK);
        assert_int_equal(y.len, x.len);
        assert_memory_equal(y.data, x.data, x.len);
        count++;
    }
    assert_int_equal(rca, PMAP_DONE);
    assert_int_equal(count, n);
    assert_int_equal(iter_free(a), 0);
    assert_int_equal(iter_free(b), 0);
    assert_int_equal(pool_destroy(local), PMAP_OK);
    end_pool(pool);
}

/* Unordered: every index once, each with its own result. */
static void test_unordered_multiset(void **state)
{
    const uint64_t n = quick(20000);
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    unsigned char *seen = calloc(n, 1);
    uint64_t count = 0;
    int rc;

    (void)state;
    assert_non_null(seen);
    pool = make_default();
    gen_init(&g, NULL, n);
    it = imap(pool, gen, &g, 0);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t v, want;

        assert_true(item.index < n);
        assert_int_equal(seen[item.index], 0);
        seen[item.index] = 1;
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof v);
        memcpy(&v, item.data, sizeof v);
        want = cost(item.index, (uint32_t)((item.index * 2654435761u) >> 7) % 97u);
        assert_int_equal(v, want);
        count++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(count, n);
    assert_int_equal(iter_free(it), 0);
    end_pool(pool);
    free(seen);
}

/* Task errors and crashes land on their exact records, inside batches,
 * with their codes; every other record still arrives, in order. */
static void test_failures_exact(void **state)
{
    enum { N = 60 };
    struct rec list[N];
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    uint64_t count = 0;
    int rc, i;

    (void)state;
    for (i = 0; i < N; i++) {
        list[i].op = OP_COST;
        list[i].arg = (uint32_t)i;
    }
    list[7].op = OP_FAIL;
    list[7].arg = 42;
    list[19].op = OP_ABORT;
    list[31].op = OP_SEGV;
    list[32].op = OP_EXIT;
    list[32].arg = 3;
    list[50].op = OP_FAIL;
    list[50].arg = -7;
    pool = make_default();
    for (int round = 0; round < 2; round++) {
        gen_init(&g, list, N);
        count = 0;
        it = imap(pool, gen, &g, 1);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            assert_int_equal(item.index, count);
            switch (item.index) {
            case 7:
            case 50:
                assert_int_equal(item.status, PMAP_ETASK);
                assert_int_equal(item.code, item.index == 7 ? 42 : -7);
                assert_int_equal(item.len, 6);
                assert_memory_equal(item.data, "failed", 6);
                break;
            case 19:
                assert_int_equal(item.status, PMAP_ECRASH);
                assert_int_equal(item.code, SIGABRT);
                break;
            case 31:
                assert_int_equal(item.status, PMAP_ECRASH);
                assert_int_equal(item.code, SIGSEGV);
                break;
            case 32:
                assert_int_equal(item.status, PMAP_ECRASH);
                assert_int_equal(item.code, 3);
                break;
            default: {
                uint64_t v;

                assert_int_equal(item.status, PMAP_OK);
                memcpy(&v, item.data, sizeof v);
                assert_int_equal(v, cost(item.index, (uint32_t)item.index % 97u));
            }
            }
            count++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(count, N);
        assert_int_equal(iter_free(it), 0);
    }
    end_pool(pool);
}

/* A record past task_timeout_ms is PMAP_ETIMEOUT; the rest arrive. */
static void test_timeout(void **state)
{
    enum { N = 8 };
    struct rec list[N];
    struct spec s;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    int rc, i, n = 0;

    (void)state;
    for (i = 0; i < N; i++) {
        list[i].op = OP_SLEEP;
        list[i].arg = 1;
    }
    list[3].arg = 60000;
    memset(&s, 0, sizeof s);
    s.timeout_ms = 300;
    pool = make_pool(&s);
    assert_non_null(pool);
    gen_init(&g, list, N);
    it = imap(pool, gen, &g, 1);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, n);
        assert_int_equal(item.status, item.index == 3 ? PMAP_ETIMEOUT : PMAP_OK);
        n++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(n, N);
    assert_int_equal(iter_free(it), 0);
    end_pool(pool);
}

/* A generator error: every record before it, then PMAP_EGEN, again and
 * from pmap_iter_free. Then a map with a task of its own. */
static void test_generator_error(void **state)
{
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    int rc;

    (void)state;
    pool = make_default();
    gen_init(&g, NULL, 1000);
    g.fail_at = 500;
    it = imap(pool, gen, &g, 1);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, g.consumed);
        assert_int_equal(item.status, PMAP_OK);
        g.consumed++;
    }
    assert_int_equal(rc, PMAP_EGEN);
    assert_int_equal(g.consumed, 500);
    assert_int_equal(pmap_next(it, &item), PMAP_EGEN);
    assert_int_equal(iter_free(it), PMAP_EGEN);
    /* No function pointer travels to another rank: a map with a task of
     * its own is refused there (a one-rank pool is a local one). */
    if (nranks > 1) {
        errno = 0;
        assert_null(pmap_imap_task(pool, task, NULL, gen, &g));
        assert_int_equal(errno, EINVAL);
    }
    end_pool(pool);
}

/* With window = 64 the generator never runs more than 64 records ahead of
 * the consumer, however fast the ranks are. */
static void test_window_64(void **state)
{
    struct spec s;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    int rc;

    (void)state;
    memset(&s, 0, sizeof s);
    s.window = 64;
    pool = make_pool(&s);
    assert_non_null(pool);
    gen_init(&g, NULL, 2000);
    it = imap(pool, gen, &g, 1);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, g.consumed);
        g.consumed++;
        assert_true(g.next - g.consumed <= 64);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(g.consumed, 2000);
    assert_true(g.max_lead <= 64);
    /* The window was used, not just a bound never reached. */
    assert_true(g.max_lead >= 32);
    assert_int_equal(iter_free(it), 0);
    end_pool(pool);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Freeing an iterator whose tasks run for a minute returns without
 * waiting for them, and the pool then runs another map. */
static void test_early_free(void **state)
{
    enum { N = 40 };
    struct rec list[N];
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    double t0;
    int rc, i, n = 0;

    (void)state;
    for (i = 0; i < N; i++) {
        list[i].op = OP_SLEEP;
        list[i].arg = i == 0 ? 0 : 60000;
    }
    pool = make_default();
    gen_init(&g, list, N);
    it = imap(pool, gen, &g, 1);
    assert_non_null(it);
    assert_int_equal(pmap_next(it, &item), PMAP_OK);
    assert_int_equal(item.index, 0);
    t0 = now_s();
    assert_int_equal(iter_free(it), 0);
    /* A minute of tasks; stopping workers takes well under that even on
     * a loaded machine. */
    assert_true(now_s() - t0 < 20.0);

    gen_init(&g, NULL, 3000);
    it = imap(pool, gen, &g, 1);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, (uint64_t)n);
        assert_int_equal(item.status, PMAP_OK);
        n++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(n, 3000);
    assert_int_equal(iter_free(it), 0);
    end_pool(pool);
}

/* 8 MiB parameters and 8 MiB results, several in flight at once. */
struct big_gen {
    int next, n;
};

#define BIG ((size_t)8 << 20)

static int gen_big(void *ctx, pmap_buf *param)
{
    struct big_gen *g = ctx;
    struct rec r;
    unsigned char *p;
    size_t len = BIG + (size_t)g->next, i;

    if (g->next >= g->n)
        return 0;
    p = pmap_buf_reserve(param, len);
    if (p == NULL)
        return -1;
    r.op = OP_BIG;
    r.arg = (uint32_t)(BIG - (size_t)g->next);
    r.index = (uint64_t)g->next;
    memcpy(p, &r, sizeof r);
    for (i = sizeof r; i < len; i++)
        p[i] = (unsigned char)i;
    g->next++;
    return 1;
}

static void test_big_records(void **state)
{
    struct big_gen g = {0, 4};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int rc, n = 0;

    (void)state;
    pool = make_default();
    it = imap(pool, gen_big, &g, 1);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        const unsigned char *p = item.data;
        size_t want = BIG - (size_t)item.index, plen = BIG + (size_t)item.index, i;

        assert_int_equal(item.index, (uint64_t)n);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, want);
        for (i = 0; i < want; i += 4093)
            assert_int_equal(p[i], (unsigned char)((i * 31u + plen) & 0xff));
        assert_int_equal(p[want - 1], (unsigned char)(((want - 1) * 31u + plen) & 0xff));
        n++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(n, 4);
    assert_int_equal(iter_free(it), 0);
    end_pool(pool);
}

/* Ranks with different numbers of workers (1 and 3): pmap_worker_id()
 * numbers the pool's four workers 0..3, one process each, and every one
 * of them gets work. */
static void test_worker_ids(void **state)
{
    enum { N = 64 };
    struct rec list[N];
    struct spec s;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g;
    int32_t pid_of[8] = {0};
    int rc, i, total = 0, seen = 0;

    (void)state;
    memset(&s, 0, sizeof s);
    for (i = 1; i < nranks && i < 8; i++) {
        s.workers[i] = i % 2 ? 1 : 3;
        total += s.workers[i];
    }
    if (nranks == 1) {
        /* Run alone (e.g. without mpirun): the root's own local workers. */
        s.workers[0] = 3;
        total = 3;
    }
    assert_true(total <= 8);
    for (i = 0; i < N; i++) {
        list[i].op = OP_WHO;
        list[i].arg = 20;
    }
    pool = make_pool(&s);
    assert_non_null(pool);
    gen_init(&g, list, N);
    it = imap(pool, gen, &g, 1);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int32_t who[2];

        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof who);
        memcpy(who, item.data, sizeof who);
        assert_true(who[0] >= 0 && who[0] < total);
        if (pid_of[who[0]] == 0) {
            for (i = 0; i < 8; i++)
                assert_true(pid_of[i] != who[1]);
            pid_of[who[0]] = who[1];
            seen++;
        }
        assert_int_equal(pid_of[who[0]], who[1]);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(seen, total);
    assert_int_equal(iter_free(it), 0);
    assert_int_equal(pmap_worker_id(), -1);
    end_pool(pool);
}

/* A worker_init that fails on the serving ranks: every rank returns NULL
 * with ECHILD, and nothing is left anywhere. */
static void test_init_fails_everywhere(void **state)
{
    struct spec s;

    (void)state;
    memset(&s, 0, sizeof s);
    s.init_fails = 1;
    s.expect_errno = ECHILD;
    errno = 0;
    assert_null(make_pool(&s));
    assert_int_equal(errno, ECHILD);
    tu_snap_check(&root_snap);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_ordered_like_local, teardown),
        cmocka_unit_test_teardown(test_unordered_multiset, teardown),
        cmocka_unit_test_teardown(test_failures_exact, teardown),
        cmocka_unit_test_teardown(test_timeout, teardown),
        cmocka_unit_test_teardown(test_generator_error, teardown),
        cmocka_unit_test_teardown(test_window_64, teardown),
        cmocka_unit_test_teardown(test_early_free, teardown),
        cmocka_unit_test_teardown(test_big_records, teardown),
        cmocka_unit_test_teardown(test_worker_ids, teardown),
        cmocka_unit_test_teardown(test_init_fails_everywhere, teardown),
    };
    int rc, bad = 0, total = 0;

    if (MPI_Init(&argc, &argv) != MPI_SUCCESS)
        return 1;
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    /* Every pair of ranks talks once before the tests: a transport that
     * connects on first use (TCP) then opens no descriptor during them. */
    {
        int *to = calloc((size_t)nranks, sizeof *to), *from = calloc((size_t)nranks, sizeof *from);

        if (to == NULL || from == NULL ||
            MPI_Alltoall(to, 1, MPI_INT, from, 1, MPI_INT, MPI_COMM_WORLD) != MPI_SUCCESS)
            MPI_Abort(MPI_COMM_WORLD, 1);
        free(to);
        free(from);
    }
    if (me != ROOT) {
        bad = serve_all();
        MPI_Reduce(&bad, &total, 1, MPI_INT, MPI_SUM, ROOT, MPI_COMM_WORLD);
        MPI_Finalize();
        return bad != 0;
    } else {
        struct spec end;

        rc = cmocka_run_group_tests(tests, NULL, NULL);
        memset(&end, 0, sizeof end);
        end.end = 1;
        MPI_Bcast(&end, (int)sizeof end, MPI_BYTE, ROOT, MPI_COMM_WORLD);
        MPI_Reduce(&bad, &total, 1, MPI_INT, MPI_SUM, ROOT, MPI_COMM_WORLD);
        if (total != 0)
            fprintf(stderr, "serving ranks: %d failures\n", total);
        MPI_Finalize();
        return rc != 0 || total != 0;
    }
}
