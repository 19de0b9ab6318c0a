/*
 * What travels when a record fails: a generator or a task that ignores a
 * failed pmap_buf_set / pmap_buf_reserve (the record must not pass as a
 * valid one), and the message a failing task leaves in `out`.
 */
#define _POSIX_C_SOURCE 200809L

#include "pmap.h"
#include "testutil.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAX_REC 4096u
#define BIG_MAX ((size_t)1 << 20)

static unsigned char junk[MAX_REC + 1];

static int echo(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    return pmap_buf_set(out, param, len);
}

/* Records 0..n-1 (one uint64_t each), then at record n a set (or a
 * reserve) over the limit whose failure the generator ignores. */
struct bad_gen {
    uint64_t next, n;
    int use_reserve;
    int calls;
};

static int bad_gen(void *ctx, pmap_buf *param)
{
    struct bad_gen *g = ctx;

    g->calls++;
    if (g->next == g->n) {
        g->next++;
        /* A valid record first, then the failed call: the failure wins. */
        (void)pmap_buf_set(param, "x", 1);
        if (g->use_reserve)
            (void)pmap_buf_reserve(param, MAX_REC + 1);
        else
            (void)pmap_buf_set(param, junk, MAX_REC + 1);
        return 1;
    }
    if (g->next > g->n)
        return 0; /* never reached: the map ended at record n */
    return pmap_buf_set(param, &g->next, sizeof g->next) == PMAP_OK ? (g->next++, 1) : -1;
}

/* Generator side: the map ends with PMAP_ETOOBIG after the n records
 * before it, and the generator is not called again. */
static void test_generator_ignores_failure(void **state)
{
    int ordered, use_reserve;
    unsigned chunk;

    (void)state;
    for (ordered = 0; ordered < 2; ordered++)
        for (use_reserve = 0; use_reserve < 2; use_reserve++)
            for (chunk = 0; chunk < 2; chunk++) {
                struct tu_snap snap;
                struct bad_gen g = {0, 200, use_reserve, 0};
                pmap_options opt;
                pmap_pool *pool;
                pmap_iter *it;
                pmap_item item;
                unsigned char seen[200] = {0};
                uint64_t n = 0, v;
                int rc;

                tu_snap_take(&snap);
                pmap_options_init(&opt);
                opt.workers = 2;
                opt.chunk = chunk;
                opt.max_record_bytes = MAX_REC;
                pool = pmap_pool_create(echo, NULL, &opt);
                assert_non_null(pool);
                it =
                    ordered ? pmap_imap(pool, bad_gen, &g) : pmap_imap_unordered(pool, bad_gen, &g);
                assert_non_null(it);
                while ((rc = pmap_next(it, &item)) == PMAP_OK) {
                    assert_int_equal(item.status, PMAP_OK);
                    assert_int_equal(item.len, sizeof v);
                    memcpy(&v, item.data, sizeof v);
                    assert_int_equal(v, item.index);
                    assert_true(v < 200);
                    if (ordered)
                        assert_int_equal(item.index, n);
                    assert_false(seen[v]);
                    seen[v] = 1;
                    n++;
                }
                assert_int_equal(rc, PMAP_ETOOBIG);
                assert_int_equal(n, 200);
                assert_int_equal(g.calls, 201);
                assert_int_equal(pmap_next(it, &item), PMAP_ETOOBIG);
                assert_int_equal(pmap_iter_free(it), PMAP_ETOOBIG);
                assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
                tu_snap_check(&snap);
            }
}

/*
 * Task side, by v % 5: 0 echo; 1 a set over the limit ignored, returning
 * 0; 2 returning the failed set's status (-8); 3 a failed reserve, then a
 * successful set (the mark is cleared: a valid result); 4 a successful
 * set, then a failed one (the failure wins).
 */
static int bad_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v;

    (void)ctx;
    if (len != sizeof v)
        return 99;
    memcpy(&v, param, sizeof v);
    switch (v % 5) {
    case 1:
        (void)pmap_buf_set(out, junk, MAX_REC + 1);
        return 0;
    case 2:
        return pmap_buf_set(out, junk, MAX_REC + 1);
    case 3:
        (void)pmap_buf_reserve(out, MAX_REC + 1);
        return pmap_buf_set(out, param, len);
    case 4:
        (void)pmap_buf_set(out, param, len);
        (void)pmap_buf_reserve(out, (size_t)-1);
        return 0;
    default:
        return pmap_buf_set(out, param, len);
    }
}

static void test_task_ignores_failure(void **state)
{
    int ordered;
    unsigned chunk;
    const uint64_t total = 2000;

    (void)state;
    for (ordered = 0; ordered < 2; ordered++)
        for (chunk = 0; chunk <= 7; chunk += 7) {
            struct tu_snap snap;
            struct tu_range r = {0, total};
            pmap_options opt;
            pmap_pool *pool;
            pmap_iter *it;
            pmap_item item;
            uint64_t n = 0, v;
            int rc;

            tu_snap_take(&snap);
            pmap_options_init(&opt);
            opt.workers = 2;
            opt.chunk = chunk;
            opt.max_record_bytes = MAX_REC;
            pool = pmap_pool_create(bad_task, NULL, &opt);
            assert_non_null(pool);
            it = ordered ? pmap_imap(pool, tu_range_gen, &r)
                         : pmap_imap_unordered(pool, tu_range_gen, &r);
            assert_non_null(it);
            while ((rc = pmap_next(it, &item)) == PMAP_OK) {
                v = item.index;
                if (ordered)
                    assert_int_equal(item.index, n);
                if (v % 5 == 1 || v % 5 == 2 || v % 5 == 4) {
                    assert_int_equal(item.status, PMAP_ETOOBIG);
                    assert_int_equal(item.code, 0);
                    assert_int_equal(item.len, 0);
                } else {
                    assert_int_equal(item.status, PMAP_OK);
                    assert_int_equal(item.len, sizeof v);
                    memcpy(&v, item.data, sizeof v);
                    assert_int_equal(v, item.index);
                }
                n++;
            }
            assert_int_equal(rc, PMAP_DONE);
            assert_int_equal(n, total);
            assert_int_equal(pmap_iter_free(it), PMAP_OK);
            assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
            tu_snap_check(&snap);
        }
}

/* The message sizes a failing task leaves: none, small, around the
 * worker's large-result threshold, the limit itself. */
static const size_t msg_sizes[] = {0, 1, 37, 4095, 65535, 65536, 65537, BIG_MAX};
#define NSIZES (sizeof msg_sizes / sizeof msg_sizes[0])

static unsigned char msg_byte(uint64_t v, size_t i)
{
    return (unsigned char)(v * 131u + i * 7u + 1u);
}

/* Even records succeed (echo); odd ones fail with code 40 + v % 7 and a
 * message of msg_sizes[v / 2 % NSIZES] bytes. */
static int msg_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v;
    size_t n, i;
    unsigned char *p;

    (void)ctx;
    if (len != sizeof v)
        return 99;
    memcpy(&v, param, sizeof v);
    if (v % 2 == 0)
        return pmap_buf_set(out, param, len);
    n = msg_sizes[v / 2 % NSIZES];
    p = pmap_buf_reserve(out, n);
    if (p == NULL)
        return 98;
    for (i = 0; i < n; i++)
        p[i] = msg_byte(v, i);
    return 40 + (int)(v % 7);
}

static void test_task_error_message(void **state)
{
    int ordered;
    unsigned chunk;
    const uint64_t total = 4 * NSIZES * 3;

    (void)state;
    for (ordered = 0; ordered < 2; ordered++)
        for (chunk = 0; chunk <= 1; chunk++) {
            struct tu_snap snap;
            struct tu_range r = {0, total};
            pmap_options opt;
            pmap_pool *pool;
            pmap_iter *it;
            pmap_item item;
            uint64_t n = 0, v, bad = 0;
            int rc;

            tu_snap_take(&snap);
            pmap_options_init(&opt);
            opt.workers = 2;
            opt.chunk = chunk;
            opt.max_record_bytes = BIG_MAX;
            pool = pmap_pool_create(msg_task, NULL, &opt);
            assert_non_null(pool);
            it = ordered ? pmap_imap(pool, tu_range_gen, &r)
                         : pmap_imap_unordered(pool, tu_range_gen, &r);
            assert_non_null(it);
            while ((rc = pmap_next(it, &item)) == PMAP_OK) {
                v = item.index;
                if (ordered)
                    assert_int_equal(item.index, n);
                if (v % 2 == 0) {
                    assert_int_equal(item.status, PMAP_OK);
                    assert_int_equal(item.len, sizeof v);
                } else {
                    size_t want = msg_sizes[v / 2 % NSIZES], i;
                    const unsigned char *p = item.data;

                    assert_int_equal(item.status, PMAP_ETASK);
                    assert_int_equal(item.code, 40 + (int)(v % 7));
                    assert_int_equal(item.len, want);
                    if (want == 0)
                        assert_null(item.data);
                    for (i = 0; i < want; i++)
                        if (p[i] != msg_byte(v, i))
                            fail_msg("record %llu: message byte %zu", (unsigned long long)v, i);
                    bad++;
                }
                n++;
            }
            assert_int_equal(rc, PMAP_DONE);
            assert_int_equal(n, total);
            assert_int_equal(bad, total / 2);
            assert_int_equal(pmap_iter_free(it), PMAP_OK);
            assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
            tu_snap_check(&snap);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generator_ignores_failure),
        cmocka_unit_test(test_task_ignores_failure),
        cmocka_unit_test(test_task_error_message),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
