/*
 * Links the shared library and includes nothing but the public header: it
 * proves that every public function is exported and usable on its own.
 */
#define _POSIX_C_SOURCE 200809L

#include <pmap.h>

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static int echo(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    unsigned char *p;

    (void)ctx;
    p = pmap_buf_reserve(out, len);
    if (p == NULL)
        return 1;
    memcpy(p, param, len);
    return 0;
}

struct count {
    int next, n;
};

static int gen(void *ctx, pmap_buf *param)
{
    struct count *c = ctx;

    if (c->next == c->n)
        return 0;
    c->next++;
    return pmap_buf_set(param, &c->next, sizeof c->next) == PMAP_OK ? 1 : -1;
}

static void test_every_export(void **state)
{
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct count c = {0, 50};
    int rc, seen = 0, v, fd;

    (void)state;
    assert_string_equal(pmap_version(), PMAP_VERSION_STRING);
    assert_string_equal(pmap_strerror(12345), "unknown status");
    assert_true(pmap_cpu_count() >= 1);
    assert_int_equal(pmap_worker_id(), -1);
    /* Outside a map: refused or empty (test_map_api covers them in use). */
    assert_int_equal(pmap_param_set_user(NULL, NULL), PMAP_EINVAL);
    assert_null(pmap_item_user(NULL, NULL));
    assert_int_equal(pmap_iter_gen_error(NULL), 0);
    pmap_options_init(&opt);
    opt.workers = 2;
    pool = pmap_pool_create(echo, NULL, &opt);
    assert_non_null(pool);

    it = pmap_imap(pool, gen, &c);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof v);
        memcpy(&v, item.data, sizeof v);
        assert_int_equal(v, (int)item.index + 1);
        seen++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(seen, 50);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);

    c.next = 0;
    it = pmap_imap_unordered(pool, gen, &c);
    assert_non_null(it);
    seen = 0;
    /* The event-loop calls (DESIGN §10). */
    fd = pmap_iter_fd(it);
    assert_true(fd >= 0);
    do {
        struct pollfd p = {fd, POLLIN, 0};

        assert_true(poll(&p, 1, pmap_iter_timeout(it)) >= 0 || errno == EINTR);
        while ((rc = pmap_try_next(it, &item)) == PMAP_OK)
            seen++;
    } while (rc == PMAP_EAGAIN);
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(seen, 50);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(NULL), PMAP_OK);
    assert_int_equal(pmap_iter_free(NULL), PMAP_OK);
}

/* pmap_imap_array(): record i is element i of the array, in both order
 * modes; every element comes back exactly once with its own bytes. */
static void test_imap_array(void **state)
{
    enum { N = 300 };
    static uint32_t xs[N];
    unsigned char seen[N];
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint32_t v;
    int rc, ordered, n;

    (void)state;
    for (n = 0; n < N; n++)
        xs[n] = 0x9e3779b9u * (uint32_t)(n + 1);
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_record_bytes = 64;
    pool = pmap_pool_create(echo, NULL, &opt);
    assert_non_null(pool);
    for (ordered = 0; ordered < 2; ordered++) {
        memset(seen, 0, sizeof seen);
        it = ordered ? pmap_imap_array(pool, xs, N, sizeof xs[0])
                     : pmap_imap_array_unordered(pool, xs, N, sizeof xs[0]);
        assert_non_null(it);
        n = 0;
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            assert_int_equal(item.status, PMAP_OK);
            assert_true(item.index < N);
            if (ordered)
                assert_int_equal(item.index, (uint64_t)n);
            assert_int_equal(seen[item.index], 0);
            seen[item.index] = 1;
            assert_int_equal(item.len, sizeof v);
            memcpy(&v, item.data, sizeof v);
            assert_int_equal(v, xs[item.index]);
            n++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(n, N);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
    }

    /* An empty array is an empty map; a NULL one with records is EINVAL;
     * records larger than the pool's limit are refused up front. */
    it = pmap_imap_array(pool, NULL, 0, 8);
    assert_non_null(it);
    assert_int_equal(pmap_next(it, &item), PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    errno = 0;
    assert_null(pmap_imap_array(pool, NULL, 3, 8));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap_imap_array_unordered(pool, xs, 1, 65));
    assert_int_equal(errno, E2BIG);
    errno = 0;
    assert_null(pmap_imap_array(NULL, xs, 1, 4));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
}

/* The task of test_map_array: the square as 8 bytes, except for 7 (a task
 * error) and 11 (a result of the wrong size). */
static int square(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint32_t x;
    uint64_t y;

    (void)ctx;
    if (len != sizeof x)
        return 2;
    memcpy(&x, param, sizeof x);
    if (x == 7)
        return 3;
    y = (uint64_t)x * x;
    return pmap_buf_set(out, &y, x == 11 ? 4 : sizeof y) == PMAP_OK ? 0 : 1;
}

static void test_map_array(void **state)
{
    enum { N = 200 };
    uint32_t xs[N];
    uint64_t ys[N];
    int st[N], i;
    pmap_options opt;
    pmap_pool *pool;

    (void)state;
    pmap_options_init(&opt);
    opt.workers = 2;
    pool = pmap_pool_create(square, NULL, &opt);
    assert_non_null(pool);

    for (i = 0; i < N; i++)
        xs[i] = (uint32_t)(i + 20); /* none is 7 or 11 */
    memset(ys, 0xff, sizeof ys);
    assert_int_equal(pmap_map_array(pool, xs, N, sizeof xs[0], ys, sizeof ys[0], st), PMAP_OK);
    for (i = 0; i < N; i++) {
        assert_int_equal(st[i], PMAP_OK);
        assert_int_equal(ys[i], (uint64_t)xs[i] * xs[i]);
    }

    /* Failures are per item; the first by index is returned. */
    xs[50] = 11;
    xs[30] = 7;
    memset(ys, 0xff, sizeof ys);
    assert_int_equal(pmap_map_array(pool, xs, N, sizeof xs[0], ys, sizeof ys[0], st), PMAP_ETASK);
    for (i = 0; i < N; i++) {
        int want = i == 30 ? PMAP_ETASK : i == 50 ? PMAP_ETOOBIG : PMAP_OK;

        assert_int_equal(st[i], want);
        assert_int_equal(ys[i], want == PMAP_OK ? (uint64_t)xs[i] * xs[i] : 0);
    }
    xs[30] = 30;
    assert_int_equal(pmap_map_array(pool, xs, N, sizeof xs[0], ys, sizeof ys[0], NULL),
                     PMAP_ETOOBIG);
    assert_int_equal(pmap_map_array(pool, xs, 0, sizeof xs[0], NULL, sizeof ys[0], NULL), PMAP_OK);
    assert_int_equal(pmap_map_array(pool, xs, 1, sizeof xs[0], NULL, sizeof ys[0], st),
                     PMAP_EINVAL);
    assert_int_equal(pmap_map_array(NULL, xs, 1, sizeof xs[0], ys, sizeof ys[0], st), PMAP_EINVAL);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_export),
        cmocka_unit_test(test_imap_array),
        cmocka_unit_test(test_map_array),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
