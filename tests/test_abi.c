/*
 * A program built against the 1.0 header (tests/abi/pmap_1_0.h, a frozen
 * copy) and linked with the current shared library, as an old binary
 * would run against a newer libpmap (DESIGN §7). Its pmap_options and
 * pmap_item sit right before a page the process may not touch, so a
 * library that read or wrote past the 1.0 layout would crash the test.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include "abi/pmap_1_0.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

/* `size` bytes that end exactly where a PROT_NONE page begins. */
struct fenced {
    unsigned char *map;
    size_t map_len;
    void *obj;
};

static void fence(struct fenced *f, size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    f->map_len = 2 * page;
    f->map = mmap(NULL, f->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(f->map != MAP_FAILED);
    assert_int_equal(mprotect(f->map + page, page, PROT_NONE), 0);
    /* Both structs need 8-byte alignment, which their 1.0 sizes keep. */
    assert_int_equal(size % 8, 0);
    f->obj = f->map + page - size;
    memset(f->map, 0xa5, page); /* what init must overwrite */
}

static void unfence(struct fenced *f)
{
    munmap(f->map, f->map_len);
}

static int square(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    int v;

    (void)ctx;
    if (len != sizeof v)
        return 1;
    memcpy(&v, param, sizeof v);
    v *= v;
    return pmap_buf_set(out, &v, sizeof v);
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

/* Tries a 65-byte record, keeps what pmap_buf_set said, ends the input. */
static int gen_big(void *ctx, pmap_buf *param)
{
    static const unsigned char big[65];

    *(int *)ctx = pmap_buf_set(param, big, sizeof big);
    return 0;
}

static int init_calls;

static int winit(void *ctx)
{
    (void)ctx;
    init_calls++; /* in the worker: only that worker's copy changes */
    return pmap_worker_id() >= 0 ? 0 : 1;
}

static void test_old_binary(void **state)
{
    struct fenced fo, fi;
    pmap_options *opt;
    pmap_item *item;
    pmap_pool *pool;
    pmap_iter *it;
    struct count c = {0, 1000};
    long sum = 0, want = 0;
    int rc, i, big_rc = 0;

    (void)state;
    fence(&fo, sizeof(pmap_options));
    fence(&fi, sizeof(pmap_item));
    opt = fo.obj;
    item = fi.obj;
    pmap_options_init(opt);
    /* Every field of the 1.0 layout is a default (zero) after init. */
    for (i = 0; i < (int)sizeof *opt; i++)
        assert_int_equal(((unsigned char *)opt)[i], 0);
    opt->workers = 2;
    opt->chunk = 7;
    opt->window = 64;
    opt->max_tasks_per_worker = 300; /* recycling, to see the options are read */
    opt->task_timeout_ms = 10000;
    opt->max_record_bytes = 64;
    opt->worker_init = winit;
    opt->max_worker_rss = (size_t)1 << 40;
    pool = pmap_pool_create(square, NULL, opt);
    assert_non_null(pool);
    it = pmap_imap(pool, gen, &c);
    assert_non_null(it);
    while ((rc = pmap_next(it, item)) == PMAP_OK) {
        int v;

        assert_int_equal(item->status, PMAP_OK);
        assert_int_equal(item->len, sizeof v);
        memcpy(&v, item->data, sizeof v);
        assert_int_equal(v, (int)((item->index + 1) * (item->index + 1)));
        sum += v;
    }
    assert_int_equal(rc, PMAP_DONE);
    for (i = 1; i <= 1000; i++)
        want += (long)i * i;
    assert_int_equal(sum, want);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    /* worker_init ran in the workers, not here. */
    assert_int_equal(init_calls, 0);

    /* max_record_bytes was read from the 1.0 struct: a 65-byte record is
     * refused in the generator. */
    pool = pmap_pool_create(square, NULL, opt);
    assert_non_null(pool);
    it = pmap_imap(pool, gen_big, &big_rc);
    assert_non_null(it);
    assert_int_equal(pmap_next(it, item), PMAP_DONE);
    assert_int_equal(big_rc, PMAP_ETOOBIG);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    unfence(&fo);
    unfence(&fi);
}

/* Defaults (NULL options) and the version: as 1.0 promised. */
static void test_old_defaults(void **state)
{
    struct fenced fi;
    pmap_item *item;
    pmap_pool *pool;
    pmap_iter *it;
    struct count c = {0, 10};
    int n = 0, rc;

    (void)state;
    assert_int_equal(strncmp(pmap_version(), "1.", 2), 0);
    fence(&fi, sizeof(pmap_item));
    item = fi.obj;
    pool = pmap_pool_create(square, NULL, NULL);
    assert_non_null(pool);
    it = pmap_imap_unordered(pool, gen, &c);
    assert_non_null(it);
    while ((rc = pmap_next(it, item)) == PMAP_OK)
        n++;
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(n, 10);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    unfence(&fi);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_old_binary),
        cmocka_unit_test(test_old_defaults),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
