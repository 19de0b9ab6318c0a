/*
 * Regressions found by a new user (issue 14), each through the public API
 * where it showed:
 *
 *  - every small window, in both orders, with batches of one and adaptive
 *    batches, against a serial run of the same task (window 1 in input
 *    order once handed out item 0 twice and then hung);
 *  - calls from inside the generator on its own iterator (pmap_next,
 *    pmap_iter_free, pmap_imap*, pmap_pool_destroy): PMAP_EBUSY / EBUSY and
 *    no harm done, while another pool's iterator stays usable there;
 *  - a record that shared a batch with crashes runs to the end at most
 *    twice, whatever its later batch-mates do (it ran up to four times);
 *  - n records on n idle workers run at the same time, one per worker
 *    (dispatch once filled one worker's queue before the next got any);
 *  - pmap_buf_reserve keeps the bytes it promises across the boundary of
 *    the inline storage (growing a buffer of 16 bytes or less lost them).
 *
 * Workers never assert: tasks report through status and result bytes.
 * PMAP_TEST_FILTER=pattern runs only the tests whose names match.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include "pmap.h"
/* buf.h: pmap__buf_init, to test pmap_buf_reserve on a buffer of its own
 * as well as inside a map. */
#include "buf.h"
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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

/* Byte k of the pattern of `seed`: every byte depends on both, so a byte
 * lost, moved or left over from an earlier record shows. */
static unsigned char pat(uint64_t seed, size_t k)
{
    return (unsigned char)(mix64(seed * 0x100000001ull + k) >> 29);
}

static void pat_fill(unsigned char *p, size_t from, size_t to, uint64_t seed)
{
    size_t k;

    for (k = from; k < to; k++)
        p[k] = pat(seed, k);
}

/* Index of the first byte of p[0 .. len) off the pattern, or len. */
static size_t pat_check(const unsigned char *p, size_t len, uint64_t seed)
{
    size_t k;

    for (k = 0; k < len; k++)
        if (p[k] != pat(seed, k))
            return k;
    return len;
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

static uint64_t get_u64(const void *p, size_t len)
{
    uint64_t v = UINT64_MAX;

    if (len == sizeof v)
        memcpy(&v, p, sizeof v);
    return v;
}

/* A generator of the integers [0, n) that records how far it runs ahead
 * of the consumer (which counts what it received in `consumed`). */
struct lead_gen {
    uint64_t next, n;
    uint64_t consumed;
    uint64_t max_lead;
};

static int lead_gen(void *ctx, pmap_buf *param)
{
    struct lead_gen *g = ctx;
    uint64_t v;

    if (g->next >= g->n)
        return 0;
    v = g->next++;
    if (g->next - g->consumed > g->max_lead)
        g->max_lead = g->next - g->consumed;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

/* The result of record i: mix64(i) as 8 bytes. */
static int echo_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v = mix64(get_u64(param, len));

    (void)ctx;
    if (len != sizeof v)
        return 9999;
    return pmap_buf_set(out, &v, sizeof v) == PMAP_OK ? 0 : 9998;
}

/* ------------------------------------------------------------------------ */
/* Small windows against a serial reference                                 */
/* ------------------------------------------------------------------------ */

#define MIX_RECORDS 120u
#define MIX_CRASH 41u /* the record whose worker dies (SIGKILL) */

/* Results of 0 to 20 bytes (both sides of the inline buffer size), every
 * 23rd record a task error with a code of its own, and one crash. */
static int mixed_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i = get_u64(param, len);
    size_t n = (size_t)(i % 21u);
    unsigned char *p;

    (void)ctx;
    if (len != sizeof i)
        return 9999;
    if (i == MIX_CRASH && ctx == NULL)
        raise(SIGKILL);
    if (i % 23u == 7u) {
        (void)pmap_buf_set(out, "a message", 9);
        return 100 + (int)(i % 5u);
    }
    p = pmap_buf_reserve(out, n);
    if (p == NULL)
        return 9998;
    pat_fill(p, 0, n, i);
    return 0;
}

struct ref_item {
    int status, code;
    size_t len;
    unsigned char data[32];
};

/* What mixed_task gives for every record, run here one by one. The crash
 * is left out of the serial run (a non-NULL ctx) and written in. */
static void serial_reference(struct ref_item *ref, uint64_t n)
{
    static int serial;
    struct pmap_buf b;
    uint64_t i;

    for (i = 0; i < n; i++) {
        int rc;

        pmap__buf_init(&b, (size_t)1 << 20);
        rc = mixed_task(&serial, &i, sizeof i, &b);
        ref[i].status = rc == 0 ? PMAP_OK : PMAP_ETASK;
        ref[i].code = rc;
        ref[i].len = b.len; /* a failed task's bytes are its message */
        assert_true(ref[i].len <= sizeof ref[i].data);
        memcpy(ref[i].data, b.data, ref[i].len);
        pmap__buf_free(&b);
        if (i == MIX_CRASH) {
            ref[i].status = PMAP_ECRASH;
            ref[i].code = SIGKILL;
            ref[i].len = 0;
        }
    }
}

static void run_window_case(pmap_pool *pool, const struct ref_item *ref, unsigned window,
                            int ordered, const char *what)
{
    struct lead_gen g = {0, MIX_RECORDS, 0, 0};
    unsigned char seen[MIX_RECORDS];
    pmap_iter *it;
    pmap_item item;
    int rc;

    memset(seen, 0, sizeof seen);
    it = ordered ? pmap_imap(pool, lead_gen, &g) : pmap_imap_unordered(pool, lead_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        const struct ref_item *r;

        if (item.index >= MIX_RECORDS || seen[item.index] || (ordered && item.index != g.consumed))
            fail_msg("%s: item %llu as item number %llu", what, (unsigned long long)item.index,
                     (unsigned long long)g.consumed);
        seen[item.index] = 1;
        g.consumed++;
        r = &ref[item.index];
        if (item.status != r->status || item.code != r->code || item.len != r->len ||
            (item.len != 0 && memcmp(item.data, r->data, item.len) != 0))
            fail_msg("%s: item %llu: status %d code %d len %zu, serially %d %d %zu", what,
                     (unsigned long long)item.index, item.status, item.code, item.len, r->status,
                     r->code, r->len);
    }
    if (rc != PMAP_DONE || g.consumed != MIX_RECORDS)
        fail_msg("%s: pmap_next %d after %llu items", what, rc, (unsigned long long)g.consumed);
    /* Laziness: never more than `window` records generated and not yet
     * handed out. */
    if (g.max_lead > window)
        fail_msg("%s: the generator ran %llu records ahead", what, (unsigned long long)g.max_lead);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
}

static void test_small_windows(void **state)
{
    struct ref_item *ref = calloc(MIX_RECORDS, sizeof *ref);
    struct tu_snap snap;
    unsigned window, chunk;
    int workers, ordered;

    (void)state;
    assert_non_null(ref);
    tu_snap_take(&snap);
    serial_reference(ref, MIX_RECORDS);
    for (workers = 1; workers <= 2; workers++) {
        for (chunk = 0; chunk <= 1; chunk++) {
            for (window = 1; window <= 9; window++) {
                pmap_pool *pool = make_pool(mixed_task, NULL, workers, chunk, window);

                for (ordered = 1; ordered >= 0; ordered--) {
                    char what[96];

                    snprintf(what, sizeof what, "workers %d chunk %u window %u %s", workers, chunk,
                             window, ordered ? "ordered" : "unordered");
                    run_window_case(pool, ref, window, ordered, what);
                }
                assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
            }
        }
    }
    free(ref);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* How often a batch-mate of a crash runs                                   */
/* ------------------------------------------------------------------------ */

#define RERUN_RECORDS 320u
#define RERUN_CHUNK 16u
/* Far above what a short task or a crash can take on a loaded machine or
 * under valgrind (as the fault suite's limit). */
#define RERUN_LIMIT_MS 1000u

/* Completed runs of each record, in memory the workers share. */
static _Atomic unsigned *rerun_runs;
static int rerun_hang; /* index of the record that never ends, or -1 */

/* What record i does: 0 returns mix64(i); SIGKILL or 3 (_exit) end its
 * worker; -1 never returns. Two deaths in most batches of RERUN_CHUNK, at
 * either end and in the middle, so that records run again after one crash
 * share their next batch with another. */
static int rerun_fault(uint64_t i)
{
    if ((int64_t)i == rerun_hang)
        return -1;
    switch (i % RERUN_CHUNK) {
    case 5:
        return SIGKILL;
    case 11:
        return i % 3u == 0 ? 0 : 3;
    case 15:
        return i % 5u == 0 ? SIGKILL : 0;
    default:
        return 0;
    }
}

static int rerun_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t i = get_u64(param, len);
    uint64_t v = mix64(i);
    int f;

    (void)ctx;
    if (i >= RERUN_RECORDS)
        return 9999;
    f = rerun_fault(i);
    if (f == SIGKILL)
        raise(SIGKILL);
    if (f == 3)
        _exit(3);
    if (f == -1)
        for (;;)
            pause();
    if (pmap_buf_set(out, &v, sizeof v) != PMAP_OK)
        return 9998;
    atomic_fetch_add(&rerun_runs[i], 1u);
    return 0;
}

/* One map; returns how many records ran twice. */
static unsigned rerun_case(int workers, unsigned chunk, int ordered, int hang)
{
    struct lead_gen g = {0, RERUN_RECORDS, 0, 0};
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    unsigned twice = 0, seen = 0;
    uint64_t i;
    int rc;

    for (i = 0; i < RERUN_RECORDS; i++)
        atomic_store(&rerun_runs[i], 0u);
    rerun_hang = hang;
    pmap_options_init(&opt);
    opt.workers = workers;
    opt.chunk = chunk;
    if (hang >= 0)
        opt.task_timeout_ms = RERUN_LIMIT_MS;
    pool = pmap_pool_create(rerun_task, NULL, &opt);
    assert_non_null(pool);
    it = ordered ? pmap_imap(pool, lead_gen, &g) : pmap_imap_unordered(pool, lead_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int f = rerun_fault(item.index);
        uint64_t v = mix64(item.index);

        seen++;
        g.consumed++;
        if (ordered)
            assert_int_equal(item.index, seen - 1u);
        if (f == 0) {
            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.len, sizeof v);
            assert_memory_equal(item.data, &v, sizeof v);
        } else if (f == -1) {
            assert_int_equal(item.status, PMAP_ETIMEOUT);
        } else {
            assert_int_equal(item.status, PMAP_ECRASH);
            assert_int_equal(item.code, f);
        }
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(seen, RERUN_RECORDS);
    assert_int_equal(pmap_iter_free(it), 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    for (i = 0; i < RERUN_RECORDS; i++) {
        unsigned runs = atomic_load(&rerun_runs[i]);

        if (rerun_fault(i) != 0)
            continue;
        if (runs < 1u || runs > 2u)
            fail_msg("workers %d chunk %u %s: record %llu ran %u times", workers, chunk,
                     ordered ? "ordered" : "unordered", (unsigned long long)i, runs);
        if (chunk == 1u && runs != 1u)
            fail_msg("chunk 1: record %llu ran %u times", (unsigned long long)i, runs);
        twice += runs == 2u;
    }
    return twice;
}

/* A record that shared a batch with a crash, finished and lost its result
 * runs once more, and never again however many of its new batch-mates
 * crash (or time out); with batches of one record none runs twice. */
static void test_rerun_bound(void **state)
{
    struct tu_snap snap;
    unsigned twice;

    (void)state;
    rerun_runs = mmap(NULL, RERUN_RECORDS * sizeof *rerun_runs, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(rerun_runs != MAP_FAILED);
    tu_snap_take(&snap);
    /* One worker: every re-run batch meets the next crashes. */
    twice = rerun_case(1, RERUN_CHUNK, 1, -1);
    /* The test means something only if records did run again. */
    assert_true(twice > 0u);
    (void)rerun_case(2, RERUN_CHUNK, 0, -1);
    (void)rerun_case(2, 0, 1, -1);
    (void)rerun_case(1, RERUN_CHUNK, 1, (int)(3u * RERUN_CHUNK + 2u));
    (void)rerun_case(2, 1, 0, -1);
    tu_snap_check(&snap);
    assert_int_equal(munmap((void *)rerun_runs, RERUN_RECORDS * sizeof *rerun_runs), 0);
}

/* ------------------------------------------------------------------------ */
/* Calls from inside the generator                                          */
/* ------------------------------------------------------------------------ */

enum reenter { RE_NEXT, RE_FREE, RE_IMAP, RE_DESTROY };

struct re_gen {
    enum reenter what;
    pmap_iter *it; /* the iterator this generator feeds */
    pmap_pool *pool;
    uint64_t next, n;
    unsigned depth;   /* guards against recursion when the call is not refused */
    unsigned tries;   /* re-entrant calls made */
    unsigned refused; /* ... that were refused as they should be */
    unsigned other_gen_calls;
};

static int never_gen(void *ctx, pmap_buf *param)
{
    struct re_gen *g = ctx;

    (void)param;
    g->other_gen_calls++;
    return 0;
}

static void reenter(struct re_gen *g)
{
    pmap_item item, blank;
    pmap_iter *other;
    int rc;

    g->tries++;
    switch (g->what) {
    case RE_NEXT:
        memset(&item, 0xa5, sizeof item);
        memcpy(&blank, &item, sizeof item);
        rc = pmap_next(g->it, &item);
        if (rc == PMAP_EBUSY && memcmp(&item, &blank, sizeof item) == 0)
            g->refused++;
        break;
    case RE_FREE:
        if (pmap_iter_free(g->it) == PMAP_EBUSY)
            g->refused++;
        break;
    case RE_IMAP:
        errno = 0;
        other = pmap_imap(g->pool, never_gen, g);
        rc = other == NULL && errno == EBUSY;
        errno = 0;
        if (other == NULL)
            other = pmap_imap_unordered(g->pool, never_gen, g);
        if (rc && other == NULL && errno == EBUSY)
            g->refused++;
        if (other != NULL) /* the test fails on tries != refused */
            (void)pmap_iter_free(other);
        break;
    case RE_DESTROY:
        if (pmap_pool_destroy(g->pool) == PMAP_EBUSY)
            g->refused++;
        break;
    }
}

/* Records 0 .. n-1, each after a call that must be refused. */
static int re_gen(void *ctx, pmap_buf *param)
{
    struct re_gen *g = ctx;
    uint64_t v;

    if (g->next >= g->n)
        return 0;
    v = g->next++;
    if (g->depth == 0) {
        g->depth++;
        reenter(g);
        g->depth--;
    }
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

static void run_reenter(enum reenter what, const char *name)
{
    struct tu_snap snap;
    unsigned chunk;
    int ordered;

    tu_snap_take(&snap);
    for (chunk = 0; chunk <= 1; chunk++) {
        pmap_pool *pool = make_pool(echo_task, NULL, 2, chunk, 0);

        for (ordered = 1; ordered >= 0; ordered--) {
            struct re_gen g;
            unsigned char seen[200];
            uint64_t got = 0;
            pmap_item item;
            int rc;

            memset(&g, 0, sizeof g);
            memset(seen, 0, sizeof seen);
            g.what = what;
            g.pool = pool;
            g.n = sizeof seen;
            g.it = ordered ? pmap_imap(pool, re_gen, &g) : pmap_imap_unordered(pool, re_gen, &g);
            assert_non_null(g.it);
            while ((rc = pmap_next(g.it, &item)) == PMAP_OK) {
                if (item.index >= g.n || seen[item.index] || (ordered && item.index != got))
                    fail_msg("%s chunk %u ordered %d: item %llu as number %llu", name, chunk,
                             ordered, (unsigned long long)item.index, (unsigned long long)got);
                seen[item.index] = 1;
                got++;
                assert_int_equal(item.status, PMAP_OK);
                assert_int_equal(item.len, sizeof(uint64_t));
                assert_true(get_u64(item.data, item.len) == mix64(item.index));
            }
            assert_int_equal(rc, PMAP_DONE);
            assert_int_equal(got, g.n);
            /* Every record was generated once, after a refused call. */
            assert_int_equal(g.tries, g.n);
            assert_int_equal(g.refused, g.n);
            assert_int_equal(g.other_gen_calls, 0);
            assert_int_equal(pmap_iter_free(g.it), PMAP_OK);
        }
        /* The refused calls left the pool as it was. */
        {
            struct lead_gen lg = {0, 50, 0, 0};
            pmap_iter *it = pmap_imap(pool, lead_gen, &lg);
            pmap_item item;
            uint64_t got = 0;
            int rc;

            assert_non_null(it);
            while ((rc = pmap_next(it, &item)) == PMAP_OK)
                assert_int_equal(item.index, got++);
            assert_int_equal(rc, PMAP_DONE);
            assert_int_equal(got, lg.n);
            assert_int_equal(pmap_iter_free(it), PMAP_OK);
        }
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    tu_snap_check(&snap);
}

static void test_reenter_next(void **state)
{
    (void)state;
    run_reenter(RE_NEXT, "pmap_next");
}

static void test_reenter_iter_free(void **state)
{
    (void)state;
    run_reenter(RE_FREE, "pmap_iter_free");
}

static void test_reenter_imap(void **state)
{
    (void)state;
    run_reenter(RE_IMAP, "pmap_imap");
}

static void test_reenter_pool_destroy(void **state)
{
    (void)state;
    run_reenter(RE_DESTROY, "pmap_pool_destroy");
}

/* What is refused is a call on the generator's own iterator (and pool):
 * a generator that draws its records from a map on another pool is a
 * pipeline, and works. */
struct pipe_gen {
    pmap_iter *src;
    int src_rc;
    uint64_t forwarded;
};

static int pipe_gen(void *ctx, pmap_buf *param)
{
    struct pipe_gen *g = ctx;
    pmap_item item;
    uint64_t v;

    g->src_rc = pmap_next(g->src, &item);
    if (g->src_rc == PMAP_DONE)
        return 0;
    if (g->src_rc != PMAP_OK || item.status != PMAP_OK || item.len != sizeof v)
        return -1;
    memcpy(&v, item.data, sizeof v);
    g->forwarded++;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

static void test_generator_pipeline(void **state)
{
    struct tu_snap snap;
    struct lead_gen lg = {0, 500, 0, 0};
    struct pipe_gen pg = {NULL, 0, 0};
    pmap_pool *a, *b;
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    a = make_pool(echo_task, NULL, 1, 0, 0);
    b = make_pool(echo_task, NULL, 1, 0, 0);
    pg.src = pmap_imap(a, lead_gen, &lg);
    assert_non_null(pg.src);
    it = pmap_imap(b, pipe_gen, &pg);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, got);
        assert_int_equal(item.status, PMAP_OK);
        assert_true(get_u64(item.data, item.len) == mix64(mix64(got)));
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, lg.n);
    assert_int_equal(pg.src_rc, PMAP_DONE);
    assert_int_equal(pg.forwarded, lg.n);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_iter_free(pg.src), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(b), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(a), PMAP_OK);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Idle workers first                                                       */
/* ------------------------------------------------------------------------ */

/* Long enough for any scheduler to start n workers; only a dispatch that
 * queued two of the records on one worker waits this long. */
#define GATHER_MS 10000u

/* The task of test_one_record_per_worker: counts itself in, then waits
 * (bounded) until all `n` records have started. Result: its worker id and
 * whether it saw all n started, i.e. ran at the same time as the others. */
struct gather {
    atomic_uint started;
    unsigned n;
};

static int gather_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct gather *g = ctx;
    uint64_t deadline = now_ns() + (uint64_t)GATHER_MS * 1000000u;
    int res[2];

    (void)param;
    (void)len;
    atomic_fetch_add(&g->started, 1u);
    while (atomic_load(&g->started) < g->n && now_ns() < deadline)
        sleep_ms(1);
    res[0] = pmap_worker_id();
    res[1] = atomic_load(&g->started) >= g->n;
    return pmap_buf_set(out, res, sizeof res) == PMAP_OK ? 0 : 1;
}

static void test_one_record_per_worker(void **state)
{
    struct tu_snap snap;
    struct gather *sh;
    unsigned n, chunk;

    (void)state;
    tu_snap_take(&snap);
    /* Shared with the workers, which are forked after it is mapped. */
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    for (n = 2; n <= 4; n += 2) {
        for (chunk = 0; chunk <= 1; chunk++) {
            pmap_pool *pool = make_pool(gather_task, sh, (int)n, chunk, 0);
            int ordered;

            for (ordered = 1; ordered >= 0; ordered--) {
                struct lead_gen g = {0, n, 0, 0};
                unsigned used = 0;
                pmap_iter *it;
                pmap_item item;
                int rc, res[2];

                atomic_store(&sh->started, 0u);
                sh->n = n;
                it = ordered ? pmap_imap(pool, lead_gen, &g)
                             : pmap_imap_unordered(pool, lead_gen, &g);
                assert_non_null(it);
                while ((rc = pmap_next(it, &item)) == PMAP_OK) {
                    assert_int_equal(item.status, PMAP_OK);
                    assert_int_equal(item.len, sizeof res);
                    memcpy(res, item.data, sizeof res);
                    if (res[0] < 0 || res[0] >= (int)n || (used & (1u << res[0])) || !res[1])
                        fail_msg("%u workers, chunk %u, ordered %d: item %llu ran on worker %d "
                                 "(busy: %#x), %s",
                                 n, chunk, ordered, (unsigned long long)item.index, res[0], used,
                                 res[1] ? "with the others" : "not with the others");
                    used |= 1u << res[0];
                    g.consumed++;
                }
                assert_int_equal(rc, PMAP_DONE);
                assert_int_equal(g.consumed, n);
                assert_int_equal(pmap_iter_free(it), PMAP_OK);
            }
            assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
        }
    }
    assert_int_equal(munmap(sh, sizeof *sh), 0);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* pmap_buf_reserve keeps its prefix                                        */
/* ------------------------------------------------------------------------ */

/* Lengths a buffer grows (or shrinks) to from every length 0 .. 40, on
 * both sides of the inline storage (PMAP__BUF_SMALL) and of the first
 * heap block (64). */
static const size_t to_len[] = {0, 1, 8, 15, 16, 17, 24, 40, 41, 63, 64, 65, 100, 101, 1000, 4097};
#define NTO (sizeof to_len / sizeof to_len[0])
#define MAX_PREV 40u

static void test_reserve_keeps_prefix(void **state)
{
    size_t prev, t;
    int how;

    (void)state;
    for (how = 0; how < 2; how++) {
        for (prev = 0; prev <= MAX_PREV; prev++) {
            for (t = 0; t < NTO; t++) {
                uint64_t seed = prev * 1000u + t;
                size_t to = to_len[t], keep = prev < to ? prev : to, again = to * 2 + 50, bad;
                unsigned char src[MAX_PREV], *p;
                struct pmap_buf b;

                pmap__buf_init(&b, (size_t)1 << 20);
                /* The first length set by reserve-and-write, or by a copy. */
                if (how == 0) {
                    p = pmap_buf_reserve(&b, prev);
                    assert_non_null(p);
                    pat_fill(p, 0, prev, seed);
                } else {
                    pat_fill(src, 0, prev, seed);
                    assert_int_equal(pmap_buf_set(&b, src, prev), PMAP_OK);
                }
                p = pmap_buf_reserve(&b, to);
                assert_non_null(p);
                assert_int_equal(b.len, to);
                bad = pat_check(p, keep, seed);
                if (bad != keep)
                    fail_msg("%s %zu bytes, reserve %zu: byte %zu lost", how ? "set" : "reserve",
                             prev, to, bad);
                /* Grown once more, from wherever it is now. */
                p = pmap_buf_reserve(&b, again);
                assert_non_null(p);
                assert_int_equal(b.len, again);
                bad = pat_check(p, keep, seed);
                if (bad != keep)
                    fail_msg("%s %zu bytes, reserve %zu then %zu: byte %zu lost",
                             how ? "set" : "reserve", prev, to, again, bad);
                pmap__buf_free(&b);
            }
        }
    }
}

/* A failed reserve still leaves the buffer empty, as documented. */
static void test_reserve_failure_empties(void **state)
{
    size_t prev;

    (void)state;
    for (prev = 0; prev <= MAX_PREV; prev++) {
        struct pmap_buf b;
        unsigned char *p;

        pmap__buf_init(&b, 100);
        p = pmap_buf_reserve(&b, prev);
        assert_non_null(p);
        pat_fill(p, 0, prev, prev);
        errno = 0;
        assert_null(pmap_buf_reserve(&b, 101));
        assert_int_equal(errno, E2BIG);
        assert_int_equal(b.len, 0);
        pmap__buf_free(&b);
    }
}

/* In a map: record i grows from prev(i) to to(i) bytes in the generator.
 * Ordered with the automatic window, every record has a slot (and so a
 * parameter buffer) of its own that starts with the inline storage. */
#define GROW_TO_N 5u
static const size_t grow_to[GROW_TO_N] = {17, 41, 64, 101, 1000};
#define GROW_RECORDS ((MAX_PREV + 1u) * GROW_TO_N)

static void grow_case(uint64_t i, size_t *prev, size_t *to)
{
    *prev = (size_t)(i / GROW_TO_N);
    *to = grow_to[i % GROW_TO_N];
}

static int grow_gen(void *ctx, pmap_buf *param)
{
    uint64_t *next = ctx;
    size_t prev, to;
    unsigned char *p;

    if (*next >= GROW_RECORDS)
        return 0;
    grow_case(*next, &prev, &to);
    p = pmap_buf_reserve(param, prev);
    if (p == NULL)
        return -1;
    pat_fill(p, 0, prev, *next);
    p = pmap_buf_reserve(param, to);
    if (p == NULL)
        return -1;
    pat_fill(p, prev, to, *next);
    (*next)++;
    return 1;
}

static int copy_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    return pmap_buf_set(out, param, len) == PMAP_OK ? 0 : 1;
}

/* The same growth in the task, on its result buffer: the parameter says
 * how (prev, to, seed). With one record per worker, every result buffer
 * starts inline. */
struct grow_param {
    uint32_t prev, to;
    uint64_t seed;
};

static int grow_param_gen(void *ctx, pmap_buf *param)
{
    uint64_t *next = ctx;
    struct grow_param gp;

    if (*next > MAX_PREV)
        return 0;
    gp.prev = (uint32_t)*next;
    gp.to = 101;
    gp.seed = 7777u + *next;
    (*next)++;
    return pmap_buf_set(param, &gp, sizeof gp) == PMAP_OK ? 1 : -1;
}

static int grow_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct grow_param gp;
    unsigned char *p;

    (void)ctx;
    if (len != sizeof gp)
        return 9999;
    memcpy(&gp, param, sizeof gp);
    p = pmap_buf_reserve(out, gp.prev);
    if (p == NULL)
        return 9998;
    pat_fill(p, 0, gp.prev, gp.seed);
    p = pmap_buf_reserve(out, gp.to);
    if (p == NULL)
        return 9997;
    pat_fill(p, gp.prev, gp.to, gp.seed);
    return 0;
}

static void test_reserve_in_map(void **state)
{
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t next = 0, got = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    /* Generator side. */
    pool = make_pool(copy_task, NULL, 2, 0, 0);
    it = pmap_imap(pool, grow_gen, &next);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        size_t prev, to, bad;

        assert_int_equal(item.index, got);
        assert_int_equal(item.status, PMAP_OK);
        grow_case(item.index, &prev, &to);
        assert_int_equal(item.len, to);
        bad = pat_check(item.data, item.len, item.index);
        if (bad != to)
            fail_msg("generator: %zu bytes reserved, then %zu: byte %zu wrong", prev, to, bad);
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, GROW_RECORDS);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    /* Task side, one record per worker. */
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_tasks_per_worker = 1;
    pool = pmap_pool_create(grow_task, NULL, &opt);
    assert_non_null(pool);
    next = got = 0;
    it = pmap_imap(pool, grow_param_gen, &next);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        size_t bad;

        assert_int_equal(item.index, got);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, 101);
        bad = pat_check(item.data, item.len, 7777u + item.index);
        if (bad != item.len)
            fail_msg("task: %llu bytes reserved, then 101: byte %zu wrong",
                     (unsigned long long)item.index, bad);
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, MAX_PREV + 1u);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

int main(void)
{
    struct rlimit nocore = {0, 0};
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_keeps_prefix),
        cmocka_unit_test(test_reserve_failure_empties),
        cmocka_unit_test(test_reserve_in_map),
        cmocka_unit_test(test_small_windows),
        cmocka_unit_test(test_rerun_bound),
        cmocka_unit_test(test_one_record_per_worker),
        cmocka_unit_test(test_reenter_imap),
        cmocka_unit_test(test_reenter_pool_destroy),
        cmocka_unit_test(test_generator_pipeline),
        cmocka_unit_test(test_reenter_next),
        cmocka_unit_test(test_reenter_iter_free),
    };

    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    /* A test kills a worker on purpose: no core files. */
    (void)setrlimit(RLIMIT_CORE, &nocore);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
