/*
 * The pool and the iterator through the public API: order, completeness,
 * laziness and the window, record sizes, per-item failures, fatal errors,
 * misuse, and no descriptor or child left behind by any test.
 *
 * Workers never assert: a task reports through its return value and its
 * result bytes, and the test asserts in the caller. The only time bound
 * asserted is the one the contract makes: pmap_iter_free() returns
 * promptly while tasks are long.
 *
 * PMAP_TEST_QUICK=1 shrinks the big tests (for valgrind): 24 MiB records
 * become 4 MiB, the 5-million-record run becomes 300 000, the 100k runs
 * 20k. PMAP_TEST_FILTER=pattern runs only the tests whose names match.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include "pmap.h"
/* api.h: the pool object (the automatic window's size); buf.h: the
 * layout of pmap_buf (to see that a failed set leaves it empty). */
#include "api.h"
#include "buf.h"
#include "iter.h"
#include "testutil.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static int quick;
/*
 * Set when memcheck runs this process. Forked workers run under it too,
 * and a worker that calls exit() then gets memcheck's leak check, whose
 * findings (the watchdog thread's TLS, "possibly lost") turn the exit
 * status into --error-exitcode. Only the exit status of exit() in a task
 * is affected; everything else is checked as usual.
 */
static int under_valgrind;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Burn wall-clock time, the way a CPU-bound task does. */
static void spin_ns(uint64_t ns)
{
    uint64_t end = now_ns() + ns;

    while (now_ns() < end)
        ;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t get_u64(const void *p, size_t len)
{
    uint64_t v = UINT64_MAX;

    if (len >= sizeof v)
        memcpy(&v, p, sizeof v);
    return v;
}

/* Fill / check len bytes derived from seed (8 bytes per mix64 call). */
static void fill_pattern(unsigned char *p, size_t len, uint64_t seed)
{
    size_t k = 0;

    for (; k + 8 <= len; k += 8) {
        uint64_t v = mix64(seed + k);

        memcpy(p + k, &v, 8);
    }
    if (k < len) {
        uint64_t v = mix64(seed + k);

        memcpy(p + k, &v, len - k);
    }
}

static int check_pattern(const unsigned char *p, size_t len, uint64_t seed)
{
    size_t k = 0;

    for (; k + 8 <= len; k += 8) {
        uint64_t v = mix64(seed + k), w;

        /* A word compare, not memcmp: tens of MiB are checked per test. */
        memcpy(&w, p + k, 8);
        if (w != v)
            return 0;
    }
    if (k < len) {
        uint64_t v = mix64(seed + k);

        if (memcmp(p + k, &v, len - k) != 0)
            return 0;
    }
    return 1;
}

static double elapsed_s(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

static pmap_pool *make_pool(pmap_task_fn fn, void *ctx, int workers, unsigned chunk,
                            unsigned window)
{
    pmap_options opt;
    pmap_pool *pool;

    pmap_options_init(&opt);
    opt.workers = workers;
    opt.chunk = chunk;
    opt.window = window;
    pool = pmap_pool_create(fn, ctx, &opt);
    assert_non_null(pool);
    return pool;
}

/* ------------------------------------------------------------------------ */
/* A generator of commands and the task that runs them                     */
/* ------------------------------------------------------------------------ */

enum op {
    OP_ECHO,     /* result: mix64(index) */
    OP_SLEEP,    /* sleep arg ms, then as OP_ECHO */
    OP_FAIL,     /* write a result, then return arg (non-zero) */
    OP_ABORT,    /* abort() */
    OP_SEGV,     /* raise(SIGSEGV) */
    OP_EXIT,     /* exit(arg) */
    OP_WID,      /* result: pmap_worker_id() as an int */
    OP_TOOBIG,   /* report what pmap_buf_set/reserve say above the limit */
    OP_MAXOUT,   /* result: exactly arg bytes of pattern */
    OP_UNTOUCHED /* leave out untouched */
};

struct cmd {
    uint64_t index;
    uint32_t op;
    int32_t arg;
};

struct special {
    uint64_t index;
    enum op op;
    int arg;
};

/*
 * Generates n commands (OP_ECHO unless listed in `sp`), records how far it
 * runs ahead of the consumer, and can fail after `fail_at` records.
 */
struct cmd_gen {
    uint64_t next, n;
    const struct special *sp;
    size_t nsp;
    enum op dflt;
    int dflt_arg;
    uint64_t fail_at;   /* UINT64_MAX: never */
    uint64_t slow_from; /* records from here on are OP_SLEEP slow_ms; UINT64_MAX: none */
    int slow_ms;
    uint64_t calls;
    uint64_t consumed; /* items the consumer has received */
    uint64_t max_lead; /* most records generated and not yet received */
};

static void cmd_gen_init(struct cmd_gen *g, uint64_t n, const struct special *sp, size_t nsp)
{
    memset(g, 0, sizeof *g);
    g->n = n;
    g->sp = sp;
    g->nsp = nsp;
    g->dflt = OP_ECHO;
    g->fail_at = UINT64_MAX;
    g->slow_from = UINT64_MAX;
}

static int cmd_gen(void *ctx, pmap_buf *param)
{
    struct cmd_gen *g = ctx;
    struct cmd c;
    size_t i;

    g->calls++;
    if (g->next == g->fail_at)
        return -1;
    if (g->next >= g->n)
        return 0;
    c.index = g->next++;
    c.op = c.index >= g->slow_from ? OP_SLEEP : g->dflt;
    c.arg = c.index >= g->slow_from ? g->slow_ms : g->dflt_arg;
    for (i = 0; i < g->nsp; i++) {
        if (g->sp[i].index == c.index) {
            c.op = g->sp[i].op;
            c.arg = g->sp[i].arg;
        }
    }
    if (g->next - g->consumed > g->max_lead)
        g->max_lead = g->next - g->consumed;
    return pmap_buf_set(param, &c, sizeof c) == PMAP_OK ? 1 : -1;
}

#define TOOBIG_MAX 1024u

/* Where a worker starting an OP_SLEEP of a second or more publishes its
 * pid, by worker id:
 * memory shared with the caller, mapped before the pool is created (so
 * every worker inherits it). NULL: nowhere. */
static atomic_int *sleeping_pids;
#define SLEEPING_SLOTS 2

static int cmd_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct cmd c;
    uint64_t v;
    int wid, rc;

    (void)ctx;
    if (len != sizeof c)
        return 9999;
    memcpy(&c, param, sizeof c);
    switch (c.op) {
    case OP_SLEEP:
        wid = pmap_worker_id();
        if (sleeping_pids != NULL && c.arg >= 1000 && wid >= 0 && wid < SLEEPING_SLOTS)
            atomic_store(&sleeping_pids[wid], (int)getpid());
        sleep_ms((unsigned)c.arg);
        /* fall through */
    case OP_ECHO:
        v = mix64(c.index);
        return pmap_buf_set(out, &v, sizeof v) == PMAP_OK ? 0 : 9998;
    case OP_FAIL:
        v = mix64(c.index);
        (void)pmap_buf_set(out, &v, sizeof v); /* the error's message */
        return c.arg;
    case OP_ABORT:
        abort();
    case OP_SEGV:
        raise(SIGSEGV);
        return 9997; /* not reached unless SIGSEGV is ignored */
    case OP_EXIT:
        exit(c.arg);
    case OP_WID:
        wid = pmap_worker_id();
        return pmap_buf_set(out, &wid, sizeof wid) == PMAP_OK ? 0 : 9998;
    case OP_TOOBIG: {
        static unsigned char big[TOOBIG_MAX + 1];
        int res[4];

        res[0] = pmap_buf_set(out, big, TOOBIG_MAX + 1);
        res[1] = (int)out->len; /* left empty on failure */
        errno = 0;
        res[2] = pmap_buf_reserve(out, TOOBIG_MAX + 1) == NULL;
        res[3] = errno;
        rc = pmap_buf_set(out, res, sizeof res);
        return rc == PMAP_OK ? 0 : 9998;
    }
    case OP_MAXOUT: {
        unsigned char *p = pmap_buf_reserve(out, (size_t)c.arg);

        if (p == NULL)
            return 9996;
        fill_pattern(p, (size_t)c.arg, c.index);
        return 0;
    }
    case OP_UNTOUCHED:
        return 0;
    default:
        return 9995;
    }
}

/* The item is the plain OP_ECHO result of its index. */
static void assert_echo(const pmap_item *item)
{
    assert_int_equal(item->status, PMAP_OK);
    assert_int_equal(item->code, 0);
    assert_int_equal(item->len, sizeof(uint64_t));
    assert_non_null(item->data);
    assert_int_equal(get_u64(item->data, item->len), mix64(item->index));
}

/* Run an ordered map of n echo commands on `pool` and check every item. */
static void run_echo_map(pmap_pool *pool, uint64_t n, int ordered)
{
    struct cmd_gen g;
    pmap_iter *it;
    pmap_item item;
    unsigned char *seen = calloc((size_t)n + 1, 1);
    uint64_t got = 0;
    int rc;

    assert_non_null(seen);
    cmd_gen_init(&g, n, NULL, 0);
    it = ordered ? pmap_imap(pool, cmd_gen, &g) : pmap_imap_unordered(pool, cmd_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (ordered)
            assert_int_equal(item.index, got);
        assert_true(item.index < n);
        assert_false(seen[item.index]);
        seen[item.index] = 1;
        assert_echo(&item);
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, n);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    free(seen);
}

/* ------------------------------------------------------------------------ */
/* Order and completeness                                                   */
/* ------------------------------------------------------------------------ */

/* Cost varies by index: mostly a few microseconds, every 16th 50 us, every
 * 5000th 5 ms, so results finish far out of order. */
static uint64_t uneven_cost_ns(uint64_t i)
{
    if (i % 5000 == 4999)
        return 5000000;
    if (i % 16 == 0)
        return 50000;
    return (mix64(i) & 7) * 1000;
}

static int uneven_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i = get_u64(param, len), v;

    (void)ctx;
    if (len != sizeof i)
        return 1;
    spin_ns(uneven_cost_ns(i));
    v = mix64(i);
    return pmap_buf_set(out, &v, sizeof v) == PMAP_OK ? 0 : 2;
}

static void test_order_uneven(void **state)
{
    struct tu_snap snap;
    struct tu_range r = {0, quick ? 20000 : 100000};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t expect = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(uneven_task, NULL, 3, 0, 0);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, expect);
        assert_echo(&item);
        expect++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(expect, r.n);
    /* After the end, the same answer again. */
    assert_int_equal(pmap_next(it, &item), PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

static void test_unordered_complete(void **state)
{
    struct tu_snap snap;
    struct tu_range r = {0, quick ? 20000 : 100000};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    unsigned char *seen;
    uint64_t got = 0, out_of_order = 0, last = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    seen = calloc((size_t)r.n, 1);
    assert_non_null(seen);
    pool = make_pool(uneven_task, NULL, 3, 0, 0);
    it = pmap_imap_unordered(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_true(item.index < r.n);
        assert_int_equal(seen[item.index], 0); /* exactly once */
        seen[item.index] = 1;
        assert_echo(&item);
        if (got > 0 && item.index < last)
            out_of_order++;
        last = item.index;
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, r.n);
    print_message("unordered: %llu of %llu items came before a lower index\n",
                  (unsigned long long)out_of_order, (unsigned long long)got);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    free(seen);
    tu_snap_check(&snap);
}

/* Record 0 sleeps; the unordered map hands out other items before it. */
static void test_unordered_slow_first(void **state)
{
    static const struct special sp[] = {{0, OP_SLEEP, 1500}};
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t pos = 0, pos_of_0 = UINT64_MAX;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 1, 0);
    cmd_gen_init(&g, 50, sp, 1);
    it = pmap_imap_unordered(pool, cmd_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_echo(&item);
        if (item.index == 0)
            pos_of_0 = pos;
        pos++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(pos, 50);
    assert_true(pos_of_0 != UINT64_MAX);
    /* Some other item came first: item 0 did not hold the map up. */
    assert_true(pos_of_0 > 0);
    print_message("item 0 came out in position %llu of 50\n", (unsigned long long)pos_of_0);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* 2 ms tasks on 2 workers: each does a fair share. */
static int wid_2ms_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    int wid = pmap_worker_id();

    (void)ctx;
    (void)param;
    (void)len;
    spin_ns(2000000);
    return pmap_buf_set(out, &wid, sizeof wid) == PMAP_OK ? 0 : 1;
}

static void test_fair_two_workers(void **state)
{
    struct tu_snap snap;
    struct tu_range r = {0, 400};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t per[2] = {0, 0};
    int rc, wid;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(wid_2ms_task, NULL, 2, 0, 0);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.status != PMAP_OK)
            fail_msg("item %llu: status %d code %d", (unsigned long long)item.index, item.status,
                     item.code);
        assert_int_equal(item.len, sizeof wid);
        memcpy(&wid, item.data, sizeof wid);
        if (wid != 0 && wid != 1)
            fail_msg("item %llu: worker id %d", (unsigned long long)item.index, wid);
        per[wid]++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(per[0] + per[1], r.n);
    print_message("worker 0: %llu, worker 1: %llu\n", (unsigned long long)per[0],
                  (unsigned long long)per[1]);
    /* An even split is 200/200; 30% leaves room for a slow scheduler. */
    assert_true(per[0] * 10 >= r.n * 3);
    assert_true(per[1] * 10 >= r.n * 3);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Empty things                                                             */
/* ------------------------------------------------------------------------ */

static void test_empty_input(void **state)
{
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int ordered;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 0, 0);
    for (ordered = 0; ordered < 2; ordered++) {
        cmd_gen_init(&g, 0, NULL, 0);
        it = ordered ? pmap_imap(pool, cmd_gen, &g) : pmap_imap_unordered(pool, cmd_gen, &g);
        assert_non_null(it);
        assert_int_equal(g.calls, 0); /* nothing runs before pmap_next */
        assert_int_equal(pmap_next(it, &item), PMAP_DONE);
        assert_int_equal(pmap_next(it, &item), PMAP_DONE);
        /* A generator that said "end" is not asked again. */
        assert_int_equal(g.calls, 1);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A task that leaves `out` untouched, or sets it empty in two ways. */
static int empty_result_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i = get_u64(param, len);

    (void)ctx;
    switch (i % 3) {
    case 0:
        return 0;
    case 1:
        return pmap_buf_set(out, NULL, 0) == PMAP_OK ? 0 : 1;
    default:
        return pmap_buf_reserve(out, 0) != NULL ? 0 : 1;
    }
}

static void test_empty_results(void **state)
{
    struct tu_snap snap;
    struct tu_range r = {0, 3000};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t expect = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(empty_result_task, NULL, 2, 0, 0);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, expect++);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.code, 0);
        assert_int_equal(item.len, 0);
        assert_null(item.data);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(expect, r.n);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* Zero-length parameters: untouched, set empty, reserved empty. */
static int zero_param_gen(void *ctx, pmap_buf *param)
{
    uint64_t *next = ctx;
    uint64_t i = (*next)++;

    if (i >= 3000)
        return 0;
    if (i % 3 == 1)
        assert_int_equal(pmap_buf_set(param, NULL, 0), PMAP_OK);
    else if (i % 3 == 2)
        assert_non_null(pmap_buf_reserve(param, 0));
    return 1;
}

/* Reports the length it got and whether param was non-NULL. */
static int shape_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t res[2] = {len, param != NULL};

    (void)ctx;
    return pmap_buf_set(out, res, sizeof res) == PMAP_OK ? 0 : 1;
}

static void test_zero_length_params(void **state)
{
    struct tu_snap snap;
    uint64_t next = 0, expect = 0;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(shape_task, NULL, 2, 0, 0);
    it = pmap_imap(pool, zero_param_gen, &next);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t res[2];

        assert_int_equal(item.index, expect++);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof res);
        memcpy(res, item.data, sizeof res);
        assert_int_equal(res[0], 0);
        assert_int_equal(res[1], 1);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(expect, 3000);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Record sizes                                                             */
/* ------------------------------------------------------------------------ */

#define SZ_MAX ((size_t)256 * 1024)

/* Record k's parameter size; the result is SZ_MAX minus it, so small
 * parameters come back as large results and the other way round. */
struct size_gen {
    size_t sizes[400];
    size_t n, next;
};

static void size_gen_init(struct size_gen *g)
{
    size_t s;
    unsigned k;
    uint64_t r = 12345;

    g->n = 0;
    g->next = 0;
    for (s = 0; s <= 40; s++)
        g->sizes[g->n++] = s;
    for (k = 6; k <= 18; k++) {
        g->sizes[g->n++] = ((size_t)1 << k) - 1;
        if (((size_t)1 << k) <= SZ_MAX)
            g->sizes[g->n++] = (size_t)1 << k;
        if (((size_t)1 << k) + 1 <= SZ_MAX)
            g->sizes[g->n++] = ((size_t)1 << k) + 1;
    }
    g->sizes[g->n++] = SZ_MAX;
    g->sizes[g->n++] = SZ_MAX - 1;
    /* Some random sizes, then the whole list again in reverse, so buffers
     * are reused both growing and shrinking. */
    while (g->n < 200) {
        r = mix64(r);
        g->sizes[g->n++] = (size_t)(r % (SZ_MAX + 1));
    }
    for (k = 0; k < 200; k++)
        g->sizes[g->n++] = g->sizes[199 - k];
}

static int size_gen(void *ctx, pmap_buf *param)
{
    struct size_gen *g = ctx;
    size_t s;
    unsigned char *p;

    if (g->next >= g->n)
        return 0;
    s = g->sizes[g->next++];
    p = pmap_buf_reserve(param, s);
    assert_non_null(p);
    fill_pattern(p, s, s * 7 + 1);
    return 1;
}

static int size_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    unsigned char *p;
    size_t rlen;

    (void)ctx;
    if (len > SZ_MAX)
        return 1;
    if (!check_pattern(param, len, len * 7 + 1))
        return 2;
    rlen = SZ_MAX - len;
    p = pmap_buf_reserve(out, rlen);
    if (p == NULL)
        return 3;
    fill_pattern(p, rlen, len * 11 + 5);
    return 0;
}

/* Uniform frames: a worker sends a batch of successes of one length as
 * bare payloads and switches the batch to record headers when a result
 * differs (another length, or a task error); the caller sends parameters
 * of one length bare. Runs of 1..n equal results broken at every kind of
 * place, in batches of 256, must all come back intact. */
static int run_gen(void *ctx, pmap_buf *param)
{
    uint64_t *next = ctx;

    if (*next == 20000)
        return 0;
    return pmap_buf_set(param, next, sizeof *next) == PMAP_OK ? (int)(++*next, 1) : -1;
}

static size_t run_len(uint64_t i)
{
    return i % 97 == 50 ? 9 : i % 89 == 0 ? 0 : i % 1000 < 3 ? 100 : 4;
}

static int run_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i;
    unsigned char *p;

    (void)ctx;
    if (len != sizeof i)
        return 1;
    memcpy(&i, param, sizeof i);
    if (i % 101 == 60)
        return (int)(i % 1000) + 2;
    p = pmap_buf_reserve(out, run_len(i));
    if (p == NULL)
        return 1;
    fill_pattern(p, run_len(i), i);
    return 0;
}

static void test_uniform_runs(void **state)
{
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t next = 0, expect = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(run_task, NULL, 2, 256, 0);
    it = pmap_imap(pool, run_gen, &next);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, expect);
        if (expect % 101 == 60) {
            assert_int_equal(item.status, PMAP_ETASK);
            assert_int_equal(item.code, (int)(expect % 1000) + 2);
            assert_int_equal(item.len, 0);
        } else {
            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.len, run_len(expect));
            if (item.len && !check_pattern(item.data, item.len, expect))
                fail_msg("result %llu is corrupt", (unsigned long long)expect);
        }
        expect++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(expect, 20000);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

static void test_record_sizes(void **state)
{
    struct tu_snap snap;
    struct size_gen *g = calloc(1, sizeof *g);
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t expect = 0;
    int rc, ordered;

    (void)state;
    assert_non_null(g);
    tu_snap_take(&snap);
    pool = make_pool(size_task, NULL, 2, 0, 0);
    for (ordered = 1; ordered >= 0; ordered--) {
        unsigned char *seen = calloc(400, 1);

        assert_non_null(seen);
        size_gen_init(g);
        expect = 0;
        it = ordered ? pmap_imap(pool, size_gen, g) : pmap_imap_unordered(pool, size_gen, g);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            size_t s;

            if (ordered)
                assert_int_equal(item.index, expect);
            assert_true(item.index < g->n);
            assert_false(seen[item.index]);
            seen[item.index] = 1;
            s = g->sizes[item.index];
            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.code, 0);
            assert_int_equal(item.len, SZ_MAX - s);
            if (item.len == 0)
                assert_null(item.data);
            else if (!check_pattern(item.data, item.len, s * 11 + 5))
                fail_msg("result of record %llu (param %zu bytes) is corrupt",
                         (unsigned long long)item.index, s);
            expect++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(expect, g->n);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        free(seen);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    free(g);
    tu_snap_check(&snap);
}

/* 24 MiB records both ways (far past any pipe, chunk or buffer size): the
 * parameter carries its index in its first 8 bytes and a pattern after;
 * the result is a pattern of its own. */
struct big_gen {
    uint64_t next, n;
    size_t size;
};

static size_t big_len(size_t size, uint64_t i)
{
    return size + (size_t)i * 3; /* not all the same, not all aligned */
}

static int big_gen(void *ctx, pmap_buf *param)
{
    struct big_gen *g = ctx;
    uint64_t i;
    size_t len;
    unsigned char *p;

    if (g->next >= g->n)
        return 0;
    i = g->next++;
    len = big_len(g->size, i);
    p = pmap_buf_reserve(param, len);
    assert_non_null(p);
    memcpy(p, &i, 8);
    fill_pattern(p + 8, len - 8, i * 1000003u);
    return 1;
}

static int big_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const unsigned char *p = param;
    uint64_t i;
    size_t rlen;
    unsigned char *q;

    (void)ctx;
    if (len < 8)
        return 1;
    memcpy(&i, p, 8);
    if (!check_pattern(p + 8, len - 8, i * 1000003u))
        return 2;
    rlen = len + 5;
    q = pmap_buf_reserve(out, rlen);
    if (q == NULL)
        return 3;
    fill_pattern(q, rlen, ~i);
    return 0;
}

static void test_big_records(void **state)
{
    struct tu_snap snap;
    struct big_gen g = {0, quick ? 3 : 5, quick ? ((size_t)4 << 20) : ((size_t)24 << 20)};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t expect = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(big_task, NULL, 2, 0, 0);
    it = pmap_imap(pool, big_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, expect);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.code, 0);
        assert_int_equal(item.len, big_len(g.size, expect) + 5);
        assert_true(check_pattern(item.data, item.len, ~expect));
        expect++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(expect, g.n);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* Tiny records among large ones (16 KiB to 2 MiB) whose parameters come
 * back as results of other sizes, so that the caller's blocks for large
 * records move between parameters and results of different records. Each
 * record's bytes depend on its index: a block handed to two records at
 * once, or a stale block read as a record, shows as a wrong item. */
static const size_t mixed_big[] = {(size_t)16 << 10, ((size_t)16 << 10) + 5, (size_t)100 << 10,
                                   ((size_t)1 << 20) + 3, (size_t)2 << 20, ((size_t)40 << 10) + 1,
                                   (size_t)300 << 10};

static size_t mixed_len(uint64_t i, int result)
{
    /* A third of parameters and a different third of results are large. */
    if (i % 3 != (result ? 1u : 0u))
        return 8;
    return mixed_big[(i / 3 + (result ? 2u : 0u)) % (sizeof mixed_big / sizeof mixed_big[0])];
}

static int mixed_gen(void *ctx, pmap_buf *param)
{
    struct big_gen *g = ctx;
    uint64_t i;
    size_t len;
    unsigned char *p;

    if (g->next >= g->n)
        return 0;
    i = g->next++;
    len = mixed_len(i, 0);
    p = pmap_buf_reserve(param, len);
    if (p == NULL)
        return -1;
    memcpy(p, &i, 8);
    fill_pattern(p + 8, len - 8, i * 13u + 7u);
    return 1;
}

static int mixed_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const unsigned char *p = param;
    uint64_t i;
    size_t rlen;
    unsigned char *q;

    (void)ctx;
    if (len < 8)
        return 1;
    memcpy(&i, p, 8);
    if (len != mixed_len(i, 0) || !check_pattern(p + 8, len - 8, i * 13u + 7u))
        return 2;
    rlen = mixed_len(i, 1);
    q = pmap_buf_reserve(out, rlen);
    if (q == NULL)
        return 3;
    fill_pattern(q, rlen, i * 17u + 3u);
    return 0;
}

static void test_mixed_sizes(void **state)
{
    struct tu_snap snap;
    const uint64_t n = quick ? 150 : 250;
    unsigned char *seen = malloc(n);
    pmap_pool *pool;
    int run;

    (void)state;
    assert_non_null(seen);
    tu_snap_take(&snap);
    /* The automatic window, then one so small that every slot keeps its
     * blocks (they fit its keep bound), in both orders. */
    for (run = 0; run < 4; run++) {
        struct big_gen g = {0, n, 0};
        pmap_iter *it;
        pmap_item item;
        uint64_t got = 0;
        int rc, ordered = run % 2 == 0;

        pool = make_pool(mixed_task, NULL, 2, 0, run < 2 ? 0 : 6);
        memset(seen, 0, n);
        it = ordered ? pmap_imap(pool, mixed_gen, &g) : pmap_imap_unordered(pool, mixed_gen, &g);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            if (ordered)
                assert_int_equal(item.index, got);
            assert_true(item.index < n);
            assert_false(seen[item.index]);
            seen[item.index] = 1;
            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.len, mixed_len(item.index, 1));
            if (!check_pattern(item.data, item.len, item.index * 17u + 3u))
                fail_msg("run %d: result %llu is corrupt", run, (unsigned long long)item.index);
            got++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(got, n);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    free(seen);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Laziness: the window and the parent's memory                            */
/* ------------------------------------------------------------------------ */

/* A tiny task: the result is the parameter plus one. */
static int tiny_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v = get_u64(param, len) + 1;

    (void)ctx;
    return pmap_buf_set(out, &v, sizeof v) == PMAP_OK ? 0 : 1;
}

struct lead_gen {
    uint64_t next, n;
    uint64_t consumed;
    uint64_t max_lead;
};

static int lead_gen(void *ctx, pmap_buf *param)
{
    struct lead_gen *g = ctx;
    uint64_t i;

    if (g->next >= g->n)
        return 0;
    i = g->next++;
    if (g->next - g->consumed > g->max_lead)
        g->max_lead = g->next - g->consumed;
    return pmap_buf_set(param, &i, sizeof i) == PMAP_OK ? 1 : -1;
}

/* Reset this process's VmHWM (Linux >= 4.0); 0 on success. */
static int reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    int ok;

    if (f == NULL)
        return -1;
    ok = fputs("5", f) >= 0;
    if (fclose(f) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

static void test_five_million(void **state)
{
    struct tu_snap snap;
    struct lead_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t n = quick ? 300000 : 5000000, mark = n / 10;
    long hwm_mark = 0, hwm_end, rss_mark = 0, rss_max = 0;
    int have_hwm, rc;
    uint64_t t0 = now_ns();

    (void)state;
    tu_snap_take(&snap);
    memset(&g, 0, sizeof g);
    g.n = n;
    pool = make_pool(tiny_task, NULL, 2, 0, 0);
    have_hwm = reset_peak_rss() == 0;
    it = pmap_imap(pool, lead_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.index != g.consumed || item.status != PMAP_OK ||
            get_u64(item.data, item.len) != item.index + 1)
            fail_msg("item %llu wrong", (unsigned long long)g.consumed);
        g.consumed++;
        if (g.consumed == mark) {
            hwm_mark = tu_peak_rss_kib();
            rss_mark = tu_rss_kib();
        }
        if (g.consumed > mark && g.consumed % 65536 == 0) {
            long rss = tu_rss_kib();

            if (rss > rss_max)
                rss_max = rss;
        }
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(g.consumed, n);
    hwm_end = tu_peak_rss_kib();
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    print_message("%llu records in %.2f s; max lead %llu; peak RSS %ld KiB at %llu, "
                  "%ld KiB at the end%s; RSS %ld KiB at %llu, at most %ld KiB after\n",
                  (unsigned long long)n, elapsed_s(t0), (unsigned long long)g.max_lead,
                  hwm_mark, (unsigned long long)mark, hwm_end,
                  have_hwm ? "" : " (VmHWM not resettable: includes earlier tests)", rss_mark,
                  (unsigned long long)mark, rss_max);
    /* The generator never ran more than the automatic window ahead of the
     * consumer. */
    assert_true(g.max_lead <= pmap__iter_auto_window(2, 0));
    assert_true(g.max_lead >= 2);
    /* Memory is flat: going from a tenth of the input to all of it costs
     * (almost) nothing. */
    assert_true(rss_max - rss_mark <= 4096);
    if (have_hwm)
        assert_true(hwm_end - hwm_mark <= 4096);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* window = 64 is honoured in both modes, even while record 5 holds up the
 * head of the line for a while. */
static void test_window_64(void **state)
{
    static const struct special sp[] = {{5, OP_SLEEP, 200}, {3000, OP_SLEEP, 100}};
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t n = quick ? 5000 : 20000;
    int rc, ordered;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 0, 64);
    for (ordered = 1; ordered >= 0; ordered--) {
        cmd_gen_init(&g, n, sp, 2);
        it = ordered ? pmap_imap(pool, cmd_gen, &g) : pmap_imap_unordered(pool, cmd_gen, &g);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            if (ordered)
                assert_int_equal(item.index, g.consumed);
            assert_echo(&item);
            g.consumed++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(g.consumed, n);
        print_message("%s: max lead %llu\n", ordered ? "ordered" : "unordered",
                      (unsigned long long)g.max_lead);
        assert_true(g.max_lead <= 64);
        assert_true(g.max_lead >= 2);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Early free                                                               */
/* ------------------------------------------------------------------------ */

static void early_free(int ordered)
{
    const uint64_t fast = 60; /* records before the slow ones */
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t i, t0;
    double took;
    int pids[SLEEPING_SLOTS];
    int w, busy;

    tu_snap_take(&snap);
    sleeping_pids = mmap(NULL, SLEEPING_SLOTS * sizeof *sleeping_pids, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sleeping_pids != MAP_FAILED);
    for (w = 0; w < SLEEPING_SLOTS; w++)
        atomic_init(&sleeping_pids[w], 0);
    pool = make_pool(cmd_task, NULL, SLEEPING_SLOTS, 1, 0);
    /* The first records take 3 ms, every later one 10 s. */
    cmd_gen_init(&g, 1000, NULL, 0);
    g.dflt = OP_SLEEP;
    g.dflt_arg = 3;
    g.slow_from = fast;
    g.slow_ms = 10000;
    it = ordered ? pmap_imap(pool, cmd_gen, &g) : pmap_imap_unordered(pool, cmd_gen, &g);
    assert_non_null(it);
    /* The library moves only inside pmap_next: taking every quick item,
     * each of which it has to wait for, lets it write the slow records to
     * the workers in the meantime. */
    for (i = 0; i < fast; i++) {
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        assert_true(item.index < fast);
        assert_echo(&item);
    }
    /* Wait until the workers are inside their 10 s tasks (a condition; the
     * bound only keeps a broken library from hanging the test). */
    t0 = now_ns();
    for (;;) {
        busy = 0;
        for (w = 0; w < SLEEPING_SLOTS; w++) {
            pids[w] = atomic_load(&sleeping_pids[w]);
            busy += pids[w] != 0;
        }
        if (busy == SLEEPING_SLOTS || elapsed_s(t0) > 3.0)
            break;
        sleep_ms(1);
    }
    /* At least one, as a rule both (the slow records were handed out
     * before the last instant result came back). */
    assert_true(busy >= 1);
    t0 = now_ns();
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    took = elapsed_s(t0);
    print_message("%s: %d worker(s) in a 10 s task; pmap_iter_free took %.3f s\n",
                  ordered ? "ordered" : "unordered", busy, took);
    assert_true(took < 1.0);
    /* The busy workers were stopped, not left to finish: their processes
     * are gone, and reaped. */
    for (w = 0; w < SLEEPING_SLOTS; w++) {
        if (pids[w] == 0)
            continue;
        errno = 0;
        assert_int_equal(kill(pids[w], 0), -1);
        assert_int_equal(errno, ESRCH);
    }
    /* The pool goes on: small maps run to completion. */
    run_echo_map(pool, 200, 1);
    run_echo_map(pool, 200, 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    munmap(sleeping_pids, SLEEPING_SLOTS * sizeof *sleeping_pids);
    sleeping_pids = NULL;
    tu_snap_check(&snap);
}

static void test_early_free_ordered(void **state)
{
    (void)state;
    early_free(1);
}

static void test_early_free_unordered(void **state)
{
    (void)state;
    early_free(0);
}

/* ------------------------------------------------------------------------ */
/* Per-item failures                                                        */
/* ------------------------------------------------------------------------ */

/* Run n commands with `sp` on `pool` and check: listed indices have the
 * given status and code, every other one its echo result. */
struct expect {
    uint64_t index;
    int status;
    int code;
    int is_exit; /* code is an exit status (see under_valgrind) */
};

static void run_and_check(pmap_pool *pool, uint64_t n, const struct special *sp, size_t nsp,
                          const struct expect *ex, size_t nex, int ordered)
{
    struct cmd_gen g;
    pmap_iter *it;
    pmap_item item;
    unsigned char *seen = calloc((size_t)n, 1);
    uint64_t got = 0;
    int rc;
    size_t k;

    assert_non_null(seen);
    cmd_gen_init(&g, n, sp, nsp);
    it = ordered ? pmap_imap(pool, cmd_gen, &g) : pmap_imap_unordered(pool, cmd_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        const struct expect *e = NULL;

        if (ordered)
            assert_int_equal(item.index, got);
        assert_true(item.index < n);
        assert_false(seen[item.index]);
        seen[item.index] = 1;
        got++;
        for (k = 0; k < nex; k++)
            if (ex[k].index == item.index)
                e = &ex[k];
        if (e == NULL) {
            if (item.status != PMAP_OK)
                fail_msg("item %llu: status %d code %d, expected success",
                         (unsigned long long)item.index, item.status, item.code);
            assert_echo(&item);
        } else {
            if (item.status == e->status && e->is_exit && under_valgrind && item.code == 1)
                print_message("item %llu: exit status 1 instead of %d: valgrind's "
                              "--error-exitcode in the worker\n",
                              (unsigned long long)item.index, e->code);
            else if (item.status != e->status || item.code != e->code)
                fail_msg("item %llu: status %d code %d, expected status %d code %d",
                         (unsigned long long)item.index, item.status, item.code, e->status,
                         e->code);
            if (item.status == PMAP_ETASK) {
                /* OP_FAIL's message: what it left in `out`. */
                uint64_t v;

                assert_int_equal(item.len, sizeof v);
                memcpy(&v, item.data, sizeof v);
                assert_int_equal(v, mix64(item.index));
            } else {
                assert_int_equal(item.len, 0);
                assert_null(item.data);
            }
        }
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, n);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    free(seen);
}

static void test_task_errors(void **state)
{
    static const struct special sp[] = {
        {0, OP_FAIL, 1},      {7, OP_FAIL, -1},          {8, OP_FAIL, 42},
        {500, OP_FAIL, 1000}, {501, OP_FAIL, INT32_MIN}, {999, OP_FAIL, INT32_MAX},
    };
    static const struct expect ex[] = {
        {0, PMAP_ETASK, 1, 0},           {7, PMAP_ETASK, -1, 0},
        {8, PMAP_ETASK, 42, 0},          {500, PMAP_ETASK, 1000, 0},
        {501, PMAP_ETASK, INT32_MIN, 0}, {999, PMAP_ETASK, INT32_MAX, 0},
    };
    struct tu_snap snap;
    pmap_pool *pool;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 0, 0);
    run_and_check(pool, 1000, sp, 6, ex, 6, 1);
    run_and_check(pool, 1000, sp, 6, ex, 6, 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* abort() and SIGSEGV inside batches of 32, pinned to the exact record. */
static void test_crash_in_batch(void **state)
{
    static const struct special sp[] = {
        {37, OP_ABORT, 0}, {45, OP_SEGV, 0},   {63, OP_ABORT, 0},  {64, OP_SEGV, 0},
        {200, OP_SEGV, 0}, {300, OP_ABORT, 0}, {301, OP_ABORT, 0},
    };
    static const struct expect ex[] = {
        {37, PMAP_ECRASH, SIGABRT, 0},  {45, PMAP_ECRASH, SIGSEGV, 0},
        {63, PMAP_ECRASH, SIGABRT, 0},  {64, PMAP_ECRASH, SIGSEGV, 0},
        {200, PMAP_ECRASH, SIGSEGV, 0}, {300, PMAP_ECRASH, SIGABRT, 0},
        {301, PMAP_ECRASH, SIGABRT, 0},
    };
    struct tu_snap snap;
    pmap_pool *pool;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 32, 0);
    run_and_check(pool, 32 * 12, sp, 7, ex, 7, 1);
    run_and_check(pool, 32 * 12, sp, 7, ex, 7, 0);
    /* And the pool is whole again. */
    run_echo_map(pool, 1000, 1);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

static void test_exit_in_task(void **state)
{
    static const struct special sp[] = {{10, OP_EXIT, 3}, {11, OP_EXIT, 0}, {50, OP_EXIT, 77}};
    static const struct expect ex[] = {
        {10, PMAP_ECRASH, 3, 1}, {11, PMAP_ECRASH, 0, 1}, {50, PMAP_ECRASH, 77, 1}};
    struct tu_snap snap;
    pmap_pool *pool;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 8, 0);
    run_and_check(pool, 100, sp, 3, ex, 3, 1);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Fatal errors and misuse                                                  */
/* ------------------------------------------------------------------------ */

static void gen_error(pmap_pool *pool, uint64_t k, int ordered)
{
    struct cmd_gen g;
    pmap_iter *it;
    pmap_item item;
    unsigned char *seen = calloc((size_t)k + 1, 1);
    uint64_t got = 0;
    int rc;

    assert_non_null(seen);
    cmd_gen_init(&g, k + 1000, NULL, 0);
    g.fail_at = k;
    it = ordered ? pmap_imap(pool, cmd_gen, &g) : pmap_imap_unordered(pool, cmd_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (ordered)
            assert_int_equal(item.index, got);
        assert_true(item.index < k);
        assert_false(seen[item.index]);
        seen[item.index] = 1;
        assert_echo(&item);
        got++;
    }
    assert_int_equal(got, k);
    assert_int_equal(rc, PMAP_EGEN);
    assert_int_equal(pmap_next(it, &item), PMAP_EGEN);
    assert_int_equal(pmap_next(it, &item), PMAP_EGEN);
    assert_int_equal(g.calls, k + 1); /* not asked again after its error */
    assert_int_equal(pmap_iter_free(it), PMAP_EGEN);
    free(seen);
}

static void test_gen_error(void **state)
{
    struct tu_snap snap;
    pmap_pool *pool;
    int ordered;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 0, 0);
    for (ordered = 1; ordered >= 0; ordered--) {
        gen_error(pool, 0, ordered);
        gen_error(pool, 1, ordered);
        gen_error(pool, 1000, ordered);
        gen_error(pool, 20000, ordered);
        /* The pool stays usable. */
        run_echo_map(pool, 500, ordered);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

static void test_ebusy(void **state)
{
    struct tu_snap snap;
    struct cmd_gen g, g2;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 0, 0);
    cmd_gen_init(&g, 300, NULL, 0);
    cmd_gen_init(&g2, 300, NULL, 0);
    it = pmap_imap(pool, cmd_gen, &g);
    assert_non_null(it);
    /* Before and after the first item. */
    errno = 0;
    assert_null(pmap_imap(pool, cmd_gen, &g2));
    assert_int_equal(errno, EBUSY);
    assert_int_equal(pmap_next(it, &item), PMAP_OK);
    assert_echo(&item);
    got++;
    errno = 0;
    assert_null(pmap_imap_unordered(pool, cmd_gen, &g2));
    assert_int_equal(errno, EBUSY);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_EBUSY);
    assert_int_equal(g2.calls, 0);
    /* Nothing was done: the open map goes on to the end. */
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, got++);
        assert_echo(&item);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 300);
    /* An exhausted iterator still holds the pool until it is freed. */
    assert_int_equal(pmap_pool_destroy(pool), PMAP_EBUSY);
    errno = 0;
    assert_null(pmap_imap(pool, cmd_gen, &g2));
    assert_int_equal(errno, EBUSY);
    assert_int_equal(pmap_next(it, &item), PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    /* Free again: a new iterator is allowed. */
    run_echo_map(pool, 300, 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

static void test_bad_arguments(void **state)
{
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;

    (void)state;
    tu_snap_take(&snap);
    errno = 0;
    assert_null(pmap_pool_create(NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    pmap_options_init(&opt);
    opt.workers = -1;
    errno = 0;
    assert_null(pmap_pool_create(cmd_task, NULL, &opt));
    assert_int_equal(errno, EINVAL);
    opt.workers = PMAP_WORKERS_MAX + 1;
    errno = 0;
    assert_null(pmap_pool_create(cmd_task, NULL, &opt));
    assert_int_equal(errno, EINVAL);
    opt.workers = -1000;
    errno = 0;
    assert_null(pmap_pool_create(cmd_task, NULL, &opt));
    assert_int_equal(errno, EINVAL);
    opt.workers = 1;
    opt.start_method = -1;
    errno = 0;
    assert_null(pmap_pool_create(cmd_task, NULL, &opt));
    assert_int_equal(errno, EINVAL);
    opt.start_method = PMAP_START_FORKSERVER + 1;
    errno = 0;
    assert_null(pmap_pool_create(cmd_task, NULL, &opt));
    assert_int_equal(errno, EINVAL);
    tu_snap_check(&snap); /* nothing forked */

    cmd_gen_init(&g, 10, NULL, 0);
    errno = 0;
    assert_null(pmap_imap(NULL, cmd_gen, &g));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap_imap_unordered(NULL, cmd_gen, &g));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(pmap_next(NULL, &item), PMAP_EINVAL);
    assert_int_equal(pmap_iter_free(NULL), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(NULL), PMAP_OK);

    pool = make_pool(cmd_task, NULL, 1, 0, 0);
    errno = 0;
    assert_null(pmap_imap(pool, NULL, &g));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap_imap_unordered(pool, NULL, &g));
    assert_int_equal(errno, EINVAL);
    /* None of that left an iterator open. */
    it = pmap_imap(pool, cmd_gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_next(it, NULL), PMAP_EINVAL);
    assert_int_equal(g.calls, 0);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Worker ids and worker_init                                               */
/* ------------------------------------------------------------------------ */

static int wid_gen_calls_bad; /* the generator saw a worker id other than -1 */

static int wid_gen(void *ctx, pmap_buf *param)
{
    if (pmap_worker_id() != -1)
        wid_gen_calls_bad++;
    return cmd_gen(ctx, param);
}

static void test_worker_ids(void **state)
{
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t per[3] = {0, 0, 0}, got = 0;
    int rc, wid;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pmap_worker_id(), -1);
    pool = make_pool(cmd_task, NULL, 3, 1, 0);
    assert_int_equal(pmap_worker_id(), -1);
    cmd_gen_init(&g, 600, NULL, 0);
    g.dflt = OP_WID;
    wid_gen_calls_bad = 0;
    it = pmap_imap(pool, wid_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, got++);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof wid);
        memcpy(&wid, item.data, sizeof wid);
        if (wid < 0 || wid >= 3)
            fail_msg("worker id %d out of range", wid);
        per[wid]++;
        assert_int_equal(pmap_worker_id(), -1);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 600);
    assert_int_equal(wid_gen_calls_bad, 0);
    /* Every worker had work (each gets records from the first dispatch). */
    assert_true(per[0] > 0 && per[1] > 0 && per[2] > 0);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    assert_int_equal(pmap_worker_id(), -1);
    tu_snap_check(&snap);
}

/* worker_init sets statics in the worker; the task reports them. */
static int init_calls;
static int init_wid = -100;
static int init_ctx_ok;
static int init_ctx_magic = 0x5eed;

static int counting_init(void *ctx)
{
    init_calls++;
    init_wid = pmap_worker_id();
    init_ctx_ok = ctx == &init_ctx_magic && *(int *)ctx == 0x5eed;
    return 0;
}

static int init_report_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct cmd c;
    int res[4];

    if (len == sizeof c) {
        memcpy(&c, param, sizeof c);
        if (c.op == OP_ABORT)
            abort();
    }
    res[0] = init_calls;
    res[1] = init_wid;
    res[2] = init_ctx_ok && ctx == &init_ctx_magic;
    res[3] = pmap_worker_id();
    return pmap_buf_set(out, res, sizeof res) == PMAP_OK ? 0 : 1;
}

static void test_worker_init(void **state)
{
    static const struct special sp[] = {{100, OP_ABORT, 0}, {300, OP_ABORT, 0}};
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.chunk = 4;
    opt.worker_init = counting_init;
    pool = pmap_pool_create(init_report_task, &init_ctx_magic, &opt);
    assert_non_null(pool);
    /* It ran in the workers, not here. */
    assert_int_equal(init_calls, 0);
    cmd_gen_init(&g, 500, sp, 2);
    it = pmap_imap(pool, cmd_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int res[4];

        assert_int_equal(item.index, got++);
        if (item.index == 100 || item.index == 300) {
            assert_int_equal(item.status, PMAP_ECRASH);
            assert_int_equal(item.code, SIGABRT);
            continue;
        }
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof res);
        memcpy(res, item.data, sizeof res);
        /* Once per worker, replacements included, with the worker's id and
         * the pool's ctx. */
        assert_int_equal(res[0], 1);
        assert_int_equal(res[1], res[3]);
        assert_true(res[3] == 0 || res[3] == 1);
        assert_int_equal(res[2], 1);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 500);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    assert_int_equal(init_calls, 0);
    tu_snap_check(&snap);
}

static int failing_init(void *ctx)
{
    int which = *(int *)ctx;

    return which < 0 || pmap_worker_id() == which ? 7 : 0;
}

static void test_worker_init_fails(void **state)
{
    struct tu_snap snap;
    pmap_options opt;
    int which;

    (void)state;
    tu_snap_take(&snap);
    /* All workers fail; then only worker 2 of 3 (the others started). */
    for (which = -1; which <= 2; which += 3) {
        pmap_options_init(&opt);
        opt.workers = 3;
        opt.worker_init = failing_init;
        errno = 0;
        assert_null(pmap_pool_create(cmd_task, &which, &opt));
        assert_int_equal(errno, ECHILD);
        tu_snap_check(&snap);
    }
}

/* ------------------------------------------------------------------------ */
/* Leaks and reuse                                                          */
/* ------------------------------------------------------------------------ */

static void test_create_destroy_cycles(void **state)
{
    struct tu_snap snap;
    int k, st;

    (void)state;
    tu_snap_take(&snap);
    for (k = 0; k < 20; k++) {
        pmap_pool *pool = make_pool(cmd_task, NULL, 1 + k % 3, 0, 0);

        if (k % 2 == 0)
            run_echo_map(pool, 50, k % 4 == 0);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
        tu_snap_check(&snap);
    }
    /* No child of ours is left, not even a zombie (when there was none to
     * begin with: a failed earlier test may have left its workers). */
    if (snap.children == 0) {
        errno = 0;
        assert_int_equal(waitpid(-1, &st, WNOHANG), -1);
        assert_int_equal(errno, ECHILD);
    }
}

static void test_pool_reuse(void **state)
{
    static const struct special sp[] = {{3, OP_FAIL, 5}, {40, OP_SEGV, 0}};
    static const struct expect ex[] = {{3, PMAP_ETASK, 5, 0}, {40, PMAP_ECRASH, SIGSEGV, 0}};
    struct tu_snap snap;
    struct cmd_gen g;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(cmd_task, NULL, 2, 0, 0);
    run_echo_map(pool, 1000, 1);
    run_echo_map(pool, 1000, 0);
    run_and_check(pool, 200, sp, 2, ex, 2, 1);
    /* An empty map, an abandoned one, then full ones again. */
    run_echo_map(pool, 0, 1);
    cmd_gen_init(&g, 100000, NULL, 0);
    it = pmap_imap(pool, cmd_gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_next(it, &item), PMAP_OK);
    assert_echo(&item);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    run_echo_map(pool, 1000, 1);
    run_and_check(pool, 200, sp, 2, ex, 2, 0);
    run_echo_map(pool, 5000, 1);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Records over max_record_bytes                                            */
/* ------------------------------------------------------------------------ */

struct toobig_gen {
    struct cmd_gen g;
    unsigned char big[TOOBIG_MAX + 1];
    int checked;
};

/* Record 3 is first tried above the limit; record 4 is exactly the limit. */
static int toobig_gen(void *ctx, pmap_buf *param)
{
    struct toobig_gen *t = ctx;
    uint64_t i = t->g.next;
    int rc;

    if (i == 3) {
        assert_int_equal(pmap_buf_set(param, t->big, TOOBIG_MAX + 1), PMAP_ETOOBIG);
        errno = 0;
        assert_null(pmap_buf_reserve(param, TOOBIG_MAX + 1));
        assert_int_equal(errno, E2BIG);
        t->checked++;
    }
    rc = cmd_gen(&t->g, param);
    if (rc == 1 && i == 4) {
        unsigned char *p;
        struct cmd c;

        /* A parameter of exactly the limit, starting with the command. */
        memcpy(&c, param->data, sizeof c);
        p = pmap_buf_reserve(param, TOOBIG_MAX);
        assert_non_null(p);
        memset(p, 0xab, TOOBIG_MAX);
        memcpy(p, &c, sizeof c);
    }
    return rc;
}

static int toobig_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const unsigned char *p = param;
    size_t k;

    if (len == TOOBIG_MAX) {
        for (k = sizeof(struct cmd); k < len; k++)
            if (p[k] != 0xab)
                return 77;
        len = sizeof(struct cmd);
    }
    return cmd_task(ctx, param, len, out);
}

static void test_etoobig(void **state)
{
    static const struct special sp[] = {{1, OP_TOOBIG, 0}, {2, OP_MAXOUT, TOOBIG_MAX}};
    struct tu_snap snap;
    struct toobig_gen *t = calloc(1, sizeof *t);
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0;
    int rc;

    (void)state;
    assert_non_null(t);
    tu_snap_take(&snap);
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_record_bytes = TOOBIG_MAX;
    pool = pmap_pool_create(toobig_task, NULL, &opt);
    assert_non_null(pool);
    cmd_gen_init(&t->g, 10, sp, 2);
    it = pmap_imap(pool, toobig_gen, t);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, got++);
        if (item.index == 1) {
            int res[4];

            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.len, sizeof res);
            memcpy(res, item.data, sizeof res);
            assert_int_equal(res[0], PMAP_ETOOBIG);
            assert_int_equal(res[1], 0);
            assert_int_equal(res[2], 1);
            assert_int_equal(res[3], E2BIG);
        } else if (item.index == 2) {
            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.len, TOOBIG_MAX);
            assert_true(check_pattern(item.data, item.len, 2));
        } else {
            assert_echo(&item);
        }
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, 10);
    assert_int_equal(t->checked, 1);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    free(t);
    tu_snap_check(&snap);
}

/* Records of every length reach the task 8-byte aligned, and results
 * come back 8-byte aligned (pmap.h promises both). The task reports a
 * misaligned parameter by its return value. */
static const size_t align_lens[] = {1, 3, 7, 8, 9, 15, 16, 17, 24, 31, 33, 64, 100, 4095, 4097, 70000};
#define N_ALIGN_LENS (sizeof align_lens / sizeof align_lens[0])

static int align_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    unsigned char *p;

    (void)ctx;
    if (((uintptr_t)param & 7u) != 0)
        return 1;
    /* A result one byte longer than the parameter: other lengths again. */
    p = pmap_buf_reserve(out, len + 1);
    if (p == NULL)
        return 2;
    memcpy(p, param, len);
    p[len] = 0x5a;
    return 0;
}

struct align_gen {
    uint64_t i, n;
};

static int align_gen(void *ctx, pmap_buf *param)
{
    struct align_gen *g = ctx;
    size_t len;
    unsigned char *p;

    if (g->i == g->n)
        return 0;
    len = align_lens[g->i % N_ALIGN_LENS];
    p = pmap_buf_reserve(param, len);
    if (p == NULL)
        return -1;
    memset(p, (int)(g->i & 0xff), len);
    g->i++;
    return 1;
}

static void test_alignment(void **state)
{
    struct tu_snap snap;
    pmap_pool *pool;
    int ordered, chunk;

    (void)state;
    tu_snap_take(&snap);
    for (chunk = 0; chunk <= 5; chunk += 5) {
        pool = make_pool(align_task, NULL, 2, (unsigned)chunk, 0);
        for (ordered = 0; ordered <= 1; ordered++) {
            struct align_gen g = {0, 20 * N_ALIGN_LENS};
            pmap_iter *it = ordered ? pmap_imap(pool, align_gen, &g)
                                    : pmap_imap_unordered(pool, align_gen, &g);
            pmap_item item;
            uint64_t got = 0;
            int rc;

            assert_non_null(it);
            while ((rc = pmap_next(it, &item)) == PMAP_OK) {
                size_t len = align_lens[item.index % N_ALIGN_LENS];

                assert_int_equal(item.status, PMAP_OK);
                assert_int_equal(item.len, len + 1);
                assert_int_equal((uintptr_t)item.data & 7u, 0);
                assert_int_equal(((const unsigned char *)item.data)[0], item.index & 0xff);
                assert_int_equal(((const unsigned char *)item.data)[len], 0x5a);
                got++;
            }
            assert_int_equal(rc, PMAP_DONE);
            assert_int_equal(got, g.n);
            assert_int_equal(pmap_iter_free(it), PMAP_OK);
        }
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    tu_snap_check(&snap);
}

/* A task may run a pool of its own inside its worker: the inner pool's
 * workers are the worker's children and are gone when the task returns.
 * The result is the inner map's sum, or a negative step number. */
static int inner_square(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v;

    (void)ctx;
    if (len != sizeof v)
        return 1;
    memcpy(&v, param, sizeof v);
    v *= v;
    return pmap_buf_set(out, &v, sizeof v);
}

static int nested_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    pmap_options opt;
    pmap_pool *inner;
    pmap_iter *it;
    pmap_item item;
    struct tu_range r = {0, 0};
    int64_t sum = 0;
    int rc;

    (void)ctx;
    if (len != sizeof r.n)
        return 1;
    memcpy(&r.n, param, sizeof r.n);
    pmap_options_init(&opt);
    opt.workers = 2;
    inner = pmap_pool_create(inner_square, NULL, &opt);
    if (inner == NULL)
        sum = -2;
    it = inner != NULL ? pmap_imap(inner, tu_range_gen, &r) : NULL;
    if (inner != NULL && it == NULL)
        sum = -3;
    while (it != NULL && (rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t v;

        if (item.status != PMAP_OK || item.len != sizeof v || pmap_worker_id() < 0) {
            sum = -4;
            break;
        }
        memcpy(&v, item.data, sizeof v);
        sum += (int64_t)v;
    }
    if (it != NULL && pmap_iter_free(it) != PMAP_OK)
        sum = -5;
    if (inner != NULL && pmap_pool_destroy(inner) != PMAP_OK)
        sum = -6;
    return pmap_buf_set(out, &sum, sizeof sum);
}

static void test_nested_pool(void **state)
{
    struct tu_snap snap;
    struct tu_range r = {0, 6};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    pool = make_pool(nested_task, NULL, 2, 1, 0);
    it = pmap_imap(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int64_t sum, want = 0;
        uint64_t k;

        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof sum);
        memcpy(&sum, item.data, sizeof sum);
        for (k = 0; k < item.index; k++)
            want += (int64_t)(k * k);
        assert_int_equal(sum, want);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A result must not wait for a slow record of its batch: with a batch of
 * [fast, slow], the fast item reaches the caller while the slow task still
 * runs. The slow task waits (bounded) until the caller says it has the
 * fast item, and reports whether that happened, so nothing here depends
 * on how fast the machine is. */
static _Atomic int *got_fast;

static int fast_slow_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v;
    int seen = 1;

    (void)ctx;
    if (len != sizeof v)
        return 1;
    memcpy(&v, param, sizeof v);
    if (v == 1) {
        uint64_t end = now_ns() + 20ull * 1000000000u;

        while (!atomic_load(got_fast) && now_ns() < end)
            sleep_ms(1);
        seen = atomic_load(got_fast);
    }
    return pmap_buf_set(out, &seen, sizeof seen);
}

static void test_fast_result_not_held_by_slow(void **state)
{
    struct tu_snap snap;
    int ordered;

    (void)state;
    tu_snap_take(&snap);
    got_fast = mmap(NULL, sizeof *got_fast, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                    -1, 0);
    assert_true(got_fast != MAP_FAILED);
    for (ordered = 0; ordered <= 1; ordered++) {
        struct tu_range r = {0, 2};
        pmap_pool *pool = make_pool(fast_slow_task, NULL, 1, 2, 0);
        pmap_iter *it;
        pmap_item item;
        int seen;

        atomic_store(got_fast, 0);
        it = ordered ? pmap_imap(pool, tu_range_gen, &r) : pmap_imap_unordered(pool, tu_range_gen, &r);
        assert_non_null(it);
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        assert_int_equal(item.index, 0);
        atomic_store(got_fast, 1);
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        assert_int_equal(item.index, 1);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof seen);
        memcpy(&seen, item.data, sizeof seen);
        /* The slow task was still running when the caller got item 0. */
        assert_int_equal(seen, 1);
        assert_int_equal(pmap_next(it, &item), PMAP_DONE);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    munmap((void *)got_fast, sizeof *got_fast);
    tu_snap_check(&snap);
}

/* Hundreds of workers: created, all given work, every one holding only
 * its own two pipes (so the registry's closing in runs missed none), and
 * all gone after destroy. */
static int wid_fds_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    /* A worker's descriptors do not change between its tasks: count them
     * on its first task only (each worker starts from the host's -1). */
    static int fifos = -1;
    int v[2], fd, top = *(const int *)ctx;

    (void)param;
    (void)len;
    if (fifos < 0) {
        fifos = 0;
        for (fd = 3; fd < top; fd++) {
            struct stat st;

            if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode))
                fifos++;
        }
    }
    v[0] = pmap_worker_id();
    v[1] = fifos;
    return pmap_buf_set(out, v, sizeof v);
}

static void test_many_workers(void **state)
{
    struct tu_snap snap;
    int n = quick ? 24 : 300, host_fifos = 0, fd, rc, top = 0;
    struct tu_range r = {0, 0};
    unsigned char *seen;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;

    (void)state;
    tu_snap_take(&snap);
    for (fd = 3; fd < 4096; fd++) {
        struct stat st;

        if (fstat(fd, &st) == 0) {
            host_fifos += S_ISFIFO(st.st_mode);
            top = fd;
        }
    }
    /* Every descriptor create opens lies below the host's highest one plus
     * the pool's own: a worker need not look further. */
    top += 4 * n + 64;
    seen = calloc((size_t)n, 1);
    assert_non_null(seen);
    r.n = (uint64_t)n * 4;
    pool = make_pool(wid_fds_task, &top, n, 1, 0);
    it = pmap_imap_unordered(pool, tu_range_gen, &r);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int v[2];

        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof v);
        memcpy(v, item.data, sizeof v);
        assert_true(v[0] >= 0 && v[0] < n);
        seen[v[0]] = 1;
        assert_int_equal(v[1], host_fifos + 2);
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    for (fd = 0; fd < n; fd++)
        assert_int_equal(seen[fd], 1); /* every worker had work */
    free(seen);
    tu_snap_check(&snap);
}

int main(void)
{
    const char *q = getenv("PMAP_TEST_QUICK");
    const char *pre = getenv("LD_PRELOAD");
    struct rlimit nocore = {0, 0};
    const struct CMUnitTest tests[] = {
        /* First, while the process is small (VmHWM is also reset). */
        cmocka_unit_test(test_five_million),
        cmocka_unit_test(test_order_uneven),
        cmocka_unit_test(test_unordered_complete),
        cmocka_unit_test(test_unordered_slow_first),
        cmocka_unit_test(test_fair_two_workers),
        cmocka_unit_test(test_empty_input),
        cmocka_unit_test(test_empty_results),
        cmocka_unit_test(test_zero_length_params),
        cmocka_unit_test(test_record_sizes),
        cmocka_unit_test(test_uniform_runs),
        cmocka_unit_test(test_big_records),
        cmocka_unit_test(test_mixed_sizes),
        cmocka_unit_test(test_window_64),
        cmocka_unit_test(test_early_free_ordered),
        cmocka_unit_test(test_early_free_unordered),
        cmocka_unit_test(test_task_errors),
        cmocka_unit_test(test_crash_in_batch),
        cmocka_unit_test(test_exit_in_task),
        cmocka_unit_test(test_gen_error),
        cmocka_unit_test(test_ebusy),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_worker_ids),
        cmocka_unit_test(test_worker_init),
        cmocka_unit_test(test_worker_init_fails),
        cmocka_unit_test(test_create_destroy_cycles),
        cmocka_unit_test(test_pool_reuse),
        cmocka_unit_test(test_etoobig),
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_nested_pool),
        cmocka_unit_test(test_fast_result_not_held_by_slow),
        cmocka_unit_test(test_many_workers),
    };

    quick = q != NULL && *q != '\0' && strcmp(q, "0") != 0;
    under_valgrind = pre != NULL && strstr(pre, "vgpreload") != NULL;
    /* PMAP_TEST_FILTER=test_name (wildcards * and ?) runs only some tests. */
    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    /* Tests crash workers on purpose: no core files. */
    (void)setrlimit(RLIMIT_CORE, &nocore);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
