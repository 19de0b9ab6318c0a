/*
 * Resource exhaustion by fault injection, without touching the library:
 * this executable is linked with -Wl,--wrap=fork,--wrap=pipe2, so the
 * static library's fork() and pipe2() calls come here first and fail on
 * demand (EAGAIN as under RLIMIT_NPROC, EMFILE as when descriptors run
 * out). Also a real RLIMIT_NOFILE that is too low. Each case checks the
 * error, that nothing leaked and that nothing loops.
 */
#define _GNU_SOURCE /* pipe2 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "faultops.h"
#include "testutil.h"

#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <unistd.h>

pid_t __real_fork(void);
pid_t __wrap_fork(void);
int __real_pipe2(int fds[2], int flags);
int __wrap_pipe2(int fds[2], int flags);

/* Calls seen, and from which call on (0-based) they fail; -1: never. */
static atomic_long fork_calls, pipe_calls;
static atomic_long fork_fail_from = -1, pipe_fail_from = -1;

pid_t __wrap_fork(void)
{
    long n = atomic_fetch_add(&fork_calls, 1);
    long from = atomic_load(&fork_fail_from);

    if (from >= 0 && n >= from) {
        errno = EAGAIN;
        return -1;
    }
    return __real_fork();
}

int __wrap_pipe2(int fds[2], int flags)
{
    long n = atomic_fetch_add(&pipe_calls, 1);
    long from = atomic_load(&pipe_fail_from);

    if (from >= 0 && n >= from) {
        errno = EMFILE;
        return -1;
    }
    return __real_pipe2(fds, flags);
}

static void inject_reset(void)
{
    atomic_store(&fork_fail_from, -1);
    atomic_store(&pipe_fail_from, -1);
    atomic_store(&fork_calls, 0);
    atomic_store(&pipe_calls, 0);
}

static int arm(void **state)
{
    (void)state;
    inject_reset();
    alarm(120);
    return 0;
}

static int disarm(void **state)
{
    (void)state;
    inject_reset();
    alarm(0);
    return 0;
}

/* fork fails for the k-th worker of three: NULL with EAGAIN, and the
 * workers already started are gone. */
static void test_fork_fails_at_create(void **state)
{
    struct tu_snap snap;
    pmap_options opt;
    long k;

    (void)state;
    tu_snap_take(&snap);
    for (k = 0; k < 3; k++) {
        inject_reset();
        atomic_store(&fork_fail_from, k);
        fo_opts(&opt, 3, 0);
        errno = 0;
        assert_null(pmap_pool_create(fo_task, NULL, &opt));
        assert_int_equal(errno, EAGAIN);
        assert_int_equal(atomic_load(&fork_calls), k + 1); /* no retry loop */
        tu_snap_check(&snap);
    }
}

/* pipe2 fails at each of the four pipes two workers need: NULL with
 * EMFILE, nothing left behind. */
static void test_pipe_fails_at_create(void **state)
{
    struct tu_snap snap;
    pmap_options opt;
    long k;

    (void)state;
    tu_snap_take(&snap);
    for (k = 0; k < 4; k++) {
        inject_reset();
        atomic_store(&pipe_fail_from, k);
        fo_opts(&opt, 2, 0);
        errno = 0;
        assert_null(pmap_pool_create(fo_task, NULL, &opt));
        assert_int_equal(errno, EMFILE);
        assert_int_equal(atomic_load(&pipe_calls), k + 1);
        tu_snap_check(&snap);
    }
}

/* A worker crashes and cannot be replaced (fork or pipe2 failing): the map
 * goes on with the worker that is left, or ends with PMAP_EWORKER; either
 * way without a busy loop, and the pool works again once the system does. */
static void replacement_fails(int use_pipe)
{
    enum { N = 60, CRASH = 5 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_SLEEP, 5);
    struct fo_got got[N];
    uint64_t i, count;
    long attempts;
    int rc;

    tu_snap_take(&snap);
    fo_opts(&opt, 2, 1);
    pool = fo_pool(&opt);
    pl->ops[CRASH].kind = FO_ABORT;
    inject_reset();
    atomic_store(use_pipe ? &pipe_fail_from : &fork_fail_from, 0);
    rc = fo_run(pool, pl, 1, got, UINT64_MAX, &count);
    attempts = atomic_load(use_pipe ? &pipe_calls : &fork_calls);
    print_message("%s failing: map ended with %s after %llu items, %ld attempts\n",
                  use_pipe ? "pipe2" : "fork", pmap_strerror(rc), (unsigned long long)count,
                  attempts);
    assert_true(rc == PMAP_DONE || rc == PMAP_EWORKER);
    assert_true(attempts >= 1 && attempts < 50);
    for (i = 0; i < N; i++) {
        if (!got[i].seen)
            continue;
        if (i == CRASH) {
            assert_int_equal(got[i].status, PMAP_ECRASH);
            assert_int_equal(got[i].code, SIGABRT);
        } else {
            assert_true(fo_ok(&got[i], i));
        }
    }
    if (rc == PMAP_DONE)
        assert_int_equal(count, N);

    /* Every worker dies and none can be replaced: PMAP_EWORKER, quickly. */
    for (i = 0; i < N; i++)
        pl->ops[i].kind = FO_ABORT;
    atomic_store(use_pipe ? &pipe_calls : &fork_calls, 0);
    assert_int_equal(fo_run(pool, pl, 0, got, UINT64_MAX, &count), PMAP_EWORKER);
    assert_true(count <= 2);
    assert_true(atomic_load(use_pipe ? &pipe_calls : &fork_calls) < 50);

    /* The system recovers, and so does the pool. */
    inject_reset();
    for (i = 0; i < N; i++)
        pl->ops[i].kind = FO_ECHO;
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, &count), PMAP_DONE);
    for (i = 0; i < N; i++)
        assert_true(fo_ok(&got[i], i));
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

static void test_fork_fails_in_map(void **state)
{
    (void)state;
    replacement_fails(0);
}

static void test_pipe_fails_in_map(void **state)
{
    (void)state;
    replacement_fails(1);
}

/* The highest descriptor limit that leaves exactly k descriptors free. */
static int limit_with_free(int k)
{
    int fd, nfree = 0;

    for (fd = 0; fd < 65536; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        if (nfree == k)
            return fd;
        nfree++;
    }
    return fd;
}

/* A real descriptor limit too low for the pool: NULL with EMFILE. */
static void test_rlimit_nofile(void **state)
{
    struct tu_snap snap;
    struct rlimit old, low;
    pmap_options opt;
    pmap_pool *pool;
    int k, ok = 0;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    /* Four workers need at least eight descriptors at once; leave k free
     * below the limit, for k = 0 .. 6. */
    for (k = 0; k < 7; k++) {
        int lim = limit_with_free(k);

        low = old;
        low.rlim_cur = (rlim_t)lim;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
        fo_opts(&opt, 4, 0);
        errno = 0;
        pool = pmap_pool_create(fo_task, NULL, &opt);
        {
            int saved = errno;

            assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
            assert_null(pool);
            assert_int_equal(saved, EMFILE);
        }
        tu_snap_check(&snap);
    }
    /* With the limit back, the same pool starts. */
    fo_opts(&opt, 4, 0);
    pool = pmap_pool_create(fo_task, NULL, &opt);
    assert_non_null(pool);
    ok = pmap_pool_destroy(pool) == PMAP_OK;
    assert_true(ok);
    tu_snap_check(&snap);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, arm, disarm)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_fork_fails_at_create),
        T(test_pipe_fails_at_create),
        T(test_fork_fails_in_map),
        T(test_pipe_fails_in_map),
        T(test_rlimit_nofile),
    };

    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
