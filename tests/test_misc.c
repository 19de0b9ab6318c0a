/*
 * Helpers of the public API: status strings, version, option defaults, the
 * CPU count and the limits of pmap_buf_set() / pmap_buf_reserve().
 */
#ifdef __linux__
#define _GNU_SOURCE /* sched_setaffinity, CPU_* */
#endif
#define _POSIX_C_SOURCE 200809L

#include "pmap.h"
/* buf.h: the caller's stash of large blocks, tested on its own. */
#include "buf.h"
#include "testutil.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __linux__
#include <sched.h>
#endif

#include <cmocka.h>

/* Every status code of the contract, lowest to highest. */
static const int all_codes[] = {
    PMAP_OK,       PMAP_DONE, PMAP_EINVAL,  PMAP_ENOMEM, PMAP_ESYS,  PMAP_ETASK,   PMAP_ECRASH,
    PMAP_ETIMEOUT, PMAP_EGEN, PMAP_ETOOBIG, PMAP_EPROTO, PMAP_EBUSY, PMAP_EWORKER, PMAP_EJOURNAL,
    PMAP_EAGAIN,
};
#define NCODES (sizeof all_codes / sizeof all_codes[0])

static void test_strerror_every_code(void **state)
{
    size_t i, j;

    (void)state;
    for (i = 0; i < NCODES; i++) {
        const char *s = pmap_strerror(all_codes[i]);

        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, "unknown status");
        /* Static: the same pointer every time. */
        assert_ptr_equal(s, pmap_strerror(all_codes[i]));
        for (j = 0; j < i; j++)
            assert_string_not_equal(s, pmap_strerror(all_codes[j]));
    }
}

static void test_strerror_unknown(void **state)
{
    static const int unknown[] = {2, 3, -14, 100, -100, 42, INT32_MAX, INT32_MIN};
    size_t i;

    (void)state;
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = pmap_strerror(unknown[i]);

        assert_non_null(s);
        assert_string_equal(s, "unknown status");
    }
}

static void test_version(void **state)
{
    char buf[32];

    (void)state;
    assert_non_null(pmap_version());
    assert_string_equal(pmap_version(), PMAP_VERSION_STRING);
    snprintf(buf, sizeof buf, "%d.%d.%d", PMAP_VERSION_MAJOR, PMAP_VERSION_MINOR,
             PMAP_VERSION_PATCH);
    assert_string_equal(buf, PMAP_VERSION_STRING);
    assert_int_equal(PMAP_VERSION_NUMBER,
                     PMAP_VERSION_MAJOR * 10000 + PMAP_VERSION_MINOR * 100 + PMAP_VERSION_PATCH);
}

static void test_options_init(void **state)
{
    pmap_options opt, zero;

    (void)state;
    memset(&opt, 0xa5, sizeof opt);
    memset(&zero, 0, sizeof zero);
    pmap_options_init(&opt);
    assert_memory_equal(&opt, &zero, sizeof opt);
    assert_int_equal(opt.workers, 0);
    assert_int_equal(opt.chunk, 0);
    assert_int_equal(opt.window, 0);
    assert_int_equal(opt.max_tasks_per_worker, 0);
    assert_int_equal(opt.task_timeout_ms, 0);
    assert_int_equal(opt.max_record_bytes, 0);
    assert_null(opt.worker_init);
    pmap_options_init(NULL); /* a no-op, must not crash */
}

static int sq_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    return pmap_buf_set(out, param, len);
}

/* The sized entry points behind the macros (DESIGN 7): a struct from a
 * newer header is accepted when the fields this library does not know are
 * at their defaults (zero), refused otherwise; a size smaller than the
 * 1.0 layout is refused. */
static void test_options_sizes(void **state)
{
    struct {
        pmap_options opt;
        uint64_t newer[2]; /* fields of a later version */
    } big;
    size_t v1 = offsetof(pmap_options, max_worker_rss) + sizeof(size_t);
    pmap_pool *pool;

    (void)state;
    memset(&big, 0xa5, sizeof big);
    pmap_options_init_sized(&big.opt, sizeof big);
    assert_int_equal(big.newer[0], 0);
    assert_int_equal(big.newer[1], 0);
    big.opt.workers = 1;
    pool = pmap_pool_create_sized(sq_task, NULL, &big.opt, sizeof big);
    assert_non_null(pool);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);

    big.newer[1] = 1;
    errno = 0;
    assert_null(pmap_pool_create_sized(sq_task, NULL, &big.opt, sizeof big));
    assert_int_equal(errno, EINVAL);

    errno = 0;
    assert_null(pmap_pool_create_sized(sq_task, NULL, &big.opt, v1 - 1));
    assert_int_equal(errno, EINVAL);

    /* Init never writes past the size it is given. */
    memset(&big, 0xa5, sizeof big);
    pmap_options_init_sized(&big.opt, v1);
    assert_int_equal(((unsigned char *)&big)[v1], 0xa5);
    assert_int_equal(big.opt.workers, 0);
}

static void test_worker_id_in_caller(void **state)
{
    (void)state;
    assert_int_equal(pmap_worker_id(), -1);
}

static void test_cpu_count(void **state)
{
    int n = pmap_cpu_count();

    (void)state;
    assert_true(n >= 1);
#ifdef __linux__
    {
        cpu_set_t set;

        CPU_ZERO(&set);
        assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
        /* A cgroup quota may only lower it. */
        assert_true(n <= CPU_COUNT(&set));
    }
#endif
}

#ifdef __linux__
/* In a child (so the test process keeps its mask): narrow the affinity to
 * `want` CPUs and report pmap_cpu_count() through the exit status. */
static int cpu_count_pinned(int want)
{
    struct tu_snap snap;
    pid_t pid;
    int st = 0;
    pid_t r;

    tu_snap_take(&snap);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cpu_set_t set, one;
        int cpu, got = 0;

        CPU_ZERO(&set);
        if (sched_getaffinity(0, sizeof set, &set) != 0)
            _exit(200);
        CPU_ZERO(&one);
        for (cpu = 0; cpu < CPU_SETSIZE && got < want; cpu++) {
            if (CPU_ISSET(cpu, &set)) {
                CPU_SET(cpu, &one);
                got++;
            }
        }
        if (got < want)
            _exit(201);
        if (sched_setaffinity(0, sizeof one, &one) != 0)
            _exit(202);
        got = pmap_cpu_count();
        _exit(got >= 0 && got < 200 ? got : 203);
    }
    do {
        r = waitpid(pid, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, pid);
    assert_true(WIFEXITED(st));
    tu_snap_check(&snap);
    return WEXITSTATUS(st);
}
#endif

static void test_cpu_count_affinity(void **state)
{
    (void)state;
#ifdef __linux__
    assert_int_equal(cpu_count_pinned(1), 1);
    if (pmap_cpu_count() >= 2) {
        int n = cpu_count_pinned(2);

        assert_true(n >= 1 && n <= 2);
    }
#else
    skip();
#endif
}

/* ------------------------------------------------------------------------ */
/* pmap_buf limits, exercised where a pmap_buf exists: in a generator       */
/* ------------------------------------------------------------------------ */

#define SMALL_MAX 100u

/* The task reports what it received: length, then a checksum of the bytes. */
static int echo_shape(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const unsigned char *p = param;
    uint64_t res[3] = {len, 0, param != NULL};
    size_t i;

    (void)ctx;
    for (i = 0; i < len; i++)
        res[1] = res[1] * 131u + p[i];
    return pmap_buf_set(out, res, sizeof res) == PMAP_OK ? 0 : 1;
}

static uint64_t sum_bytes(const unsigned char *p, size_t len)
{
    uint64_t s = 0;
    size_t i;

    for (i = 0; i < len; i++)
        s = s * 131u + p[i];
    return s;
}

struct limits_gen {
    int calls;
    unsigned char big[SMALL_MAX + 1];
};

/*
 * Record k checks one rule and leaves in the buffer what the task should
 * then see (checked in the caller from the results):
 *  0: set of max+1 -> ETOOBIG; then reserve(0) (a failed buffer must
 *     not be sent: test_buffail), which leaves it empty
 *  1: reserve of max+1 -> NULL/E2BIG; then reserve(0): empty
 *  2: reserve of exactly max -> writable, sent whole
 *  3: set with NULL data and len > 0 -> EINVAL; then reserve(0): empty
 *  4: set with NULL data and len 0 -> OK, empty
 *  5: reserve of 0 -> non-NULL, empty
 *  6: set of exactly max -> OK
 */
static int limits_gen(void *ctx, pmap_buf *param)
{
    struct limits_gen *g = ctx;
    void *p;
    int k = g->calls++;

    assert_int_equal(pmap_worker_id(), -1);
    switch (k) {
    case 0:
        assert_int_equal(pmap_buf_set(param, "0123456789", 10), PMAP_OK);
        assert_int_equal(pmap_buf_set(param, g->big, SMALL_MAX + 1), PMAP_ETOOBIG);
        assert_non_null(pmap_buf_reserve(param, 0));
        return 1;
    case 1:
        assert_int_equal(pmap_buf_set(param, "0123456789", 10), PMAP_OK);
        errno = 0;
        assert_null(pmap_buf_reserve(param, SMALL_MAX + 1));
        assert_int_equal(errno, E2BIG);
        errno = 0;
        assert_null(pmap_buf_reserve(param, SIZE_MAX));
        assert_int_equal(errno, E2BIG);
        assert_non_null(pmap_buf_reserve(param, 0));
        return 1;
    case 2:
        p = pmap_buf_reserve(param, SMALL_MAX);
        assert_non_null(p);
        memcpy(p, g->big, SMALL_MAX);
        return 1;
    case 3:
        assert_int_equal(pmap_buf_set(param, "abc", 3), PMAP_OK);
        assert_int_equal(pmap_buf_set(param, NULL, 5), PMAP_EINVAL);
        assert_non_null(pmap_buf_reserve(param, 0));
        return 1;
    case 4:
        assert_int_equal(pmap_buf_set(param, NULL, 0), PMAP_OK);
        return 1;
    case 5:
        assert_int_equal(pmap_buf_set(param, "abc", 3), PMAP_OK);
        assert_non_null(pmap_buf_reserve(param, 0));
        return 1;
    case 6:
        assert_int_equal(pmap_buf_set(param, g->big, SMALL_MAX), PMAP_OK);
        return 1;
    default:
        /* NULL buffers, for completeness. */
        assert_int_equal(pmap_buf_set(NULL, "x", 1), PMAP_EINVAL);
        assert_int_equal(pmap_buf_set(NULL, NULL, 0), PMAP_EINVAL);
        errno = 0;
        assert_null(pmap_buf_reserve(NULL, 1));
        assert_int_equal(errno, EINVAL);
        return 0;
    }
}

static void test_buf_limits(void **state)
{
    struct tu_snap snap;
    struct limits_gen g;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t want_len[7] = {0, 0, SMALL_MAX, 0, 0, 0, SMALL_MAX};
    uint64_t n = 0;
    size_t i;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    memset(&g, 0, sizeof g);
    for (i = 0; i < sizeof g.big; i++)
        g.big[i] = (unsigned char)(i * 7 + 3);
    pmap_options_init(&opt);
    opt.workers = 1;
    opt.max_record_bytes = SMALL_MAX;
    pool = pmap_pool_create(echo_shape, NULL, &opt);
    assert_non_null(pool);
    it = pmap_imap(pool, limits_gen, &g);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        const uint64_t *res = item.data;

        assert_true(n < 7);
        assert_int_equal(item.index, n);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, 3 * sizeof(uint64_t));
        assert_int_equal(res[0], want_len[n]);
        assert_int_equal(res[1], sum_bytes(g.big, (size_t)want_len[n]));
        assert_int_equal(res[2], 1); /* param is never NULL, even empty */
        n++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(n, 7);
    assert_int_equal(g.calls, 8);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* The stash of large blocks: which blocks it keeps, which it lets go of,
 * and that a block is handed out once. */
static size_t stash_sum(const struct pmap__stash *s)
{
    size_t sum = 0;
    unsigned i;

    for (i = 0; i < s->n; i++)
        sum += s->cap[i];
    return sum;
}

/* b with a heap block of exactly `cap` bytes (a power of two, >= 64). */
static void stash_buf(struct pmap_buf *b, size_t cap)
{
    pmap__buf_init(b, SIZE_MAX);
    assert_int_equal(pmap__buf_reserve(b, cap), 0);
    assert_int_equal(b->cap, cap);
    b->len = 5; /* put() ignores what the buffer held */
}

static void test_stash(void **state)
{
    struct pmap__stash s;
    struct pmap_buf b, c;
    unsigned char *block;
    unsigned i;

    (void)state;
    pmap__stash_init(&s);

    /* Below PMAP__STASH_MIN a block is freed, and the buffer is empty. */
    stash_buf(&b, PMAP__STASH_MIN / 2);
    pmap__stash_put(&s, &b);
    assert_int_equal(s.n, 0);
    assert_ptr_equal(b.data, b.small);
    assert_int_equal(b.len, 0);

    /* A kept block comes back to a buffer that asks for no more than it
     * holds, the smallest that fits first, and leaves the stash. */
    stash_buf(&b, (size_t)64 << 10);
    block = b.data;
    pmap__stash_put(&s, &b);
    stash_buf(&b, (size_t)256 << 10);
    pmap__stash_put(&s, &b);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.bytes, ((size_t)320) << 10);
    pmap__buf_init(&c, SIZE_MAX);
    assert_int_equal(pmap__stash_reserve(&s, &c, (size_t)40 << 10), 0);
    assert_ptr_equal(c.data, block);
    assert_int_equal(c.cap, (size_t)64 << 10);
    assert_int_equal(s.n, 1);
    assert_int_equal(s.bytes, (size_t)256 << 10);
    /* Enough room already: the stash is not asked. */
    assert_int_equal(pmap__stash_reserve(&s, &c, (size_t)60 << 10), 0);
    assert_ptr_equal(c.data, block);
    assert_int_equal(s.n, 1);
    /* A buffer holding bytes keeps them: it grows in place, not from the
     * stash (whose block would lose them). */
    c.len = 3;
    memcpy(c.data, "abc", 3);
    assert_int_equal(pmap__stash_reserve(&s, &c, (size_t)128 << 10), 0);
    assert_int_equal(s.n, 1);
    assert_memory_equal(c.data, "abc", 3);
    /* Nothing large enough: a new block, the stash untouched. */
    c.len = 0;
    assert_int_equal(pmap__stash_reserve(&s, &c, (size_t)1 << 20), 0);
    assert_true(c.cap >= (size_t)1 << 20);
    assert_int_equal(s.n, 1);
    pmap__buf_free(&c);

    /* Full by count: a larger block replaces the smallest, a block no
     * larger than any kept one is freed. */
    pmap__stash_free(&s);
    assert_int_equal(s.n, 0);
    assert_int_equal(s.bytes, 0);
    for (i = 0; i < PMAP__STASH_SLOTS; i++) {
        stash_buf(&b, PMAP__STASH_MIN << (i % 3));
        pmap__stash_put(&s, &b);
    }
    assert_int_equal(s.n, PMAP__STASH_SLOTS);
    stash_buf(&b, PMAP__STASH_MIN);
    pmap__stash_put(&s, &b);
    assert_int_equal(s.n, PMAP__STASH_SLOTS);
    assert_int_equal(s.bytes, stash_sum(&s));
    stash_buf(&b, (size_t)1 << 20);
    block = b.data;
    pmap__stash_put(&s, &b);
    assert_int_equal(s.n, PMAP__STASH_SLOTS);
    assert_int_equal(s.bytes, stash_sum(&s));
    for (i = 0; i < s.n && s.block[i] != block; i++)
        ;
    assert_true(i < s.n);

    /* Full by bytes: never more than PMAP__STASH_BYTES, and a block larger
     * than that is not kept at all. Malloc'd, never touched: no RSS. */
    pmap__stash_free(&s);
    stash_buf(&b, PMAP__STASH_BYTES / 2);
    pmap__stash_put(&s, &b);
    stash_buf(&b, PMAP__STASH_BYTES / 4);
    pmap__stash_put(&s, &b);
    assert_int_equal(s.n, 2);
    stash_buf(&b, PMAP__STASH_BYTES / 2);
    pmap__stash_put(&s, &b); /* 1/2 + 1/4 + 1/2: the quarter goes */
    assert_int_equal(s.n, 2);
    assert_int_equal(s.bytes, PMAP__STASH_BYTES);
    stash_buf(&b, PMAP__STASH_BYTES * 2);
    pmap__stash_put(&s, &b);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.bytes, PMAP__STASH_BYTES);

    /* A failed buffer's block is a block like any other. */
    stash_buf(&b, PMAP__STASH_MIN);
    /* Past max: failed without an allocation (a huge malloc would abort
     * under ASan instead of returning NULL). */
    b.max = PMAP__STASH_MIN * 2;
    assert_null(pmap_buf_reserve(&b, PMAP__STASH_MIN * 4));
    assert_int_equal(b.cap, 0);
    pmap__stash_put(&s, &b);
    assert_ptr_equal(b.data, b.small);
    assert_int_equal(pmap__buf_failed(&b), 0);
    pmap__stash_free(&s);
    /* NULL stash: put frees, reserve allocates. */
    stash_buf(&b, PMAP__STASH_MIN);
    pmap__stash_put(NULL, &b);
    assert_ptr_equal(b.data, b.small);
    assert_int_equal(pmap__stash_reserve(NULL, &b, PMAP__STASH_MIN), 0);
    pmap__buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_every_code),
        cmocka_unit_test(test_strerror_unknown),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_options_init),
        cmocka_unit_test(test_options_sizes),
        cmocka_unit_test(test_worker_id_in_caller),
        cmocka_unit_test(test_cpu_count),
        cmocka_unit_test(test_cpu_count_affinity),
        cmocka_unit_test(test_buf_limits),
        cmocka_unit_test(test_stash),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
