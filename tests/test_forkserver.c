/*
 * The fork server (DESIGN §8, PMAP_START_FORKSERVER): every worker is
 * forked by one server process that holds the caller's memory as it was
 * at pmap_pool_create(). The first two tests run the same scenario in
 * fork mode too, as a control: there the replacement workers inherit a
 * lock held by a host thread, and a global changed after create, which is
 * what the server exists to prevent. The rest are the §3-§4 guarantees in
 * server mode.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "faultops.h"
#include "testutil.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
    T_LOCK = 200,   /* take host_lock within LOCK_WAIT_MS: value 1, else task error 77 */
    T_SNAP,         /* aux = snap_value, value = pmap_worker_id() */
    T_SIGCHLD,      /* aux = 1 if SIGCHLD is ignored in the worker */
    T_REPORT_SLEEP, /* write {pid, 0} to report_fd, then sleep arg ms */
};
#define LOCK_WAIT_MS 200
#define LOCK_FAILED 77

static int arm(void **state)
{
    (void)state;
    alarm(120);
    return 0;
}

static int disarm(void **state)
{
    (void)state;
    alarm(0);
    return 0;
}

static pthread_mutex_t host_lock = PTHREAD_MUTEX_INITIALIZER;
static int snap_value = 1;
static int report_fd = -1;

static int lock_bounded(pthread_mutex_t *m)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)LOCK_WAIT_MS * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    return pthread_mutex_timedlock(m, &ts);
}

static int fs_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct fo_op op;
    struct fo_res res;

    if (len != sizeof op)
        return fo_task(ctx, param, len, out);
    memcpy(&op, param, sizeof op);
    memset(&res, 0, sizeof res);
    res.index = op.index;
    res.pid = (int64_t)getpid();
    switch (op.kind) {
    case T_LOCK:
        if (lock_bounded(&host_lock) != 0)
            return LOCK_FAILED;
        pthread_mutex_unlock(&host_lock);
        res.value = 1;
        break;
    case T_SNAP:
        res.value = pmap_worker_id();
        res.aux = snap_value;
        break;
    case T_SIGCHLD: {
        struct sigaction sa;

        res.aux = sigaction(SIGCHLD, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN;
        break;
    }
    case T_REPORT_SLEEP: {
        int64_t v[2] = {getpid(), 0};

        (void)!write(report_fd, v, sizeof v);
        fo_sleep_ms(op.arg);
        break;
    }
    default:
        return fo_task(ctx, param, len, out);
    }
    return pmap_buf_set(out, &res, sizeof res) == PMAP_OK ? 0 : 9996;
}

static void opts(pmap_options *opt, int method, int workers)
{
    pmap_options_init(opt);
    opt->workers = workers;
    opt->chunk = 1;
    opt->start_method = method;
}

/* ------------------------------------------------------------------------ */
/* What the server is for                                                   */
/* ------------------------------------------------------------------------ */

/* A host thread that takes host_lock and keeps it until told to stop. */
struct holder {
    pthread_t th;
    int go[2];   /* main -> holder: release */
    int held[2]; /* holder -> main: taken */
};

static void *hold_lock(void *arg)
{
    struct holder *h = arg;
    char c = 1;

    pthread_mutex_lock(&host_lock);
    (void)!write(h->held[1], &c, 1);
    while (read(h->go[0], &c, 1) < 0 && errno == EINTR)
        ;
    pthread_mutex_unlock(&host_lock);
    return NULL;
}

static void holder_start(struct holder *h)
{
    char c;

    assert_int_equal(pipe(h->go), 0);
    assert_int_equal(pipe(h->held), 0);
    assert_int_equal(pthread_create(&h->th, NULL, hold_lock, h), 0);
    while (read(h->held[0], &c, 1) < 0 && errno == EINTR)
        ;
}

static void holder_stop(struct holder *h)
{
    char c = 1;

    assert_int_equal(write(h->go[1], &c, 1), 1);
    assert_int_equal(pthread_join(h->th, NULL), 0);
    close(h->go[0]);
    close(h->go[1]);
    close(h->held[0]);
    close(h->held[1]);
}

/* Crashes force replacements; every lock record after the first crash
 * runs on a replacement (one worker, one record per batch). Returns how
 * many lock records got the lock; asserts everything else. */
static int run_locks(int method)
{
    enum { N = 7 };
    static const uint32_t kinds[N] = {T_LOCK, FO_ABORT, T_LOCK, FO_ABORT, T_LOCK, T_LOCK, FO_ABORT};
    struct tu_snap snap;
    struct holder h;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    struct fo_got got[N];
    int i, locked = 0;

    tu_snap_take(&snap);
    for (i = 0; i < N; i++)
        pl->ops[i].kind = kinds[i];
    opts(&opt, method, 1);
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    holder_start(&h);
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    holder_stop(&h);
    for (i = 0; i < N; i++) {
        if (kinds[i] == FO_ABORT) {
            assert_int_equal(got[i].status, PMAP_ECRASH);
            assert_int_equal(got[i].code, SIGABRT);
        } else if (got[i].status == PMAP_OK) {
            assert_int_equal(got[i].res.value, 1);
            locked++;
        } else {
            assert_int_equal(got[i].status, PMAP_ETASK);
            assert_int_equal(got[i].code, LOCK_FAILED);
        }
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
    return locked;
}

/* A host thread holds a lock from after pmap_pool_create() on: every
 * worker of a server pool, replacements included, still takes it. */
static void test_lock_held_after_create(void **state)
{
    (void)state;
    assert_int_equal(run_locks(PMAP_START_FORKSERVER), 4);
    /* Control: forked from the caller, the three replacements' copies of
     * the lock are held for ever; only the first worker's is free. */
    assert_int_equal(run_locks(PMAP_START_FORK), 1);
}

static int snap_init(void *ctx)
{
    (void)ctx;
    return snap_value == 1 ? 0 : 1;
}

/* Two maps on one worker, each with crashes; every record after the
 * first crash runs on a replacement. Returns how many records saw
 * snap_value as it was at create. */
static int run_snapshot(int method)
{
    enum { N = 8 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, T_SNAP, 0);
    struct fo_got got[N];
    int i, map, old = 0;

    tu_snap_take(&snap);
    pl->ops[1].kind = FO_ABORT;
    pl->ops[4].kind = FO_ABORT;
    opts(&opt, method, 1);
    /* worker_init sees the same snapshot: with the new value it fails. */
    if (method == PMAP_START_FORKSERVER)
        opt.worker_init = snap_init;
    snap_value = 1;
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    snap_value = 2;
    for (map = 0; map < 2; map++) {
        assert_int_equal(fo_run(pool, pl, map, got, UINT64_MAX, NULL), PMAP_DONE);
        for (i = 0; i < N; i++) {
            if (pl->ops[i].kind == FO_ABORT) {
                assert_int_equal(got[i].status, PMAP_ECRASH);
                continue;
            }
            assert_int_equal(got[i].status, PMAP_OK);
            assert_int_equal(got[i].res.value, 0); /* pmap_worker_id */
            assert_true(got[i].res.aux == 1 || got[i].res.aux == 2);
            old += got[i].res.aux == 1;
        }
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    snap_value = 1;
    fo_plan_free(pl);
    tu_snap_check(&snap);
    return old;
}

/* A global changed after create: every worker of a server pool sees its
 * create-time value, the replacements too. */
static void test_snapshot_at_create(void **state)
{
    (void)state;
    assert_int_equal(run_snapshot(PMAP_START_FORKSERVER), 12);
    /* Control: in fork mode the replacements see the new value; only the
     * first record ran on the worker forked at create. */
    assert_int_equal(run_snapshot(PMAP_START_FORK), 1);
}

/* ------------------------------------------------------------------------ */
/* Everything else holds in server mode                                     */
/* ------------------------------------------------------------------------ */

/* Crash codes, timeouts (TERM, and KILL for a task that ignores TERM),
 * recycling, pmap_worker_id; the caller's only child is the server. */
static void test_statuses(void **state)
{
    enum { N = 24 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, T_SNAP, 0);
    struct fo_got got[N];
    int64_t pids[N];
    int i, j, npids = 0;

    (void)state;
    tu_snap_take(&snap);
    pl->ops[2].kind = FO_ABORT;
    pl->ops[5].kind = FO_RAISE;
    pl->ops[5].arg = SIGSEGV;
    pl->ops[9].kind = FO_EXIT;
    pl->ops[9].arg = 3;
    pl->ops[13].kind = FO_SLEEP;
    pl->ops[13].arg = 60000;
    pl->ops[17].kind = FO_SLEEP_NOTERM;
    pl->ops[17].arg = 60000;
    opts(&opt, PMAP_START_FORKSERVER, 2);
    opt.task_timeout_ms = FAULT_LIMIT_MS;
    opt.max_tasks_per_worker = 3;
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    /* Workers are the server's children, never the caller's. */
    assert_int_equal(tu_child_count(), snap.children + 1);
    assert_int_equal(got[2].status, PMAP_ECRASH);
    assert_int_equal(got[2].code, SIGABRT);
    assert_int_equal(got[5].status, PMAP_ECRASH);
    assert_int_equal(got[5].code, SIGSEGV);
    assert_int_equal(got[9].status, PMAP_ECRASH);
    assert_true(fo_exit_code_ok(got[9].code, 3));
    assert_int_equal(got[13].status, PMAP_ETIMEOUT);
    assert_int_equal(got[17].status, PMAP_ETIMEOUT);
    for (i = 0; i < N; i++) {
        if (pl->ops[i].kind != T_SNAP)
            continue;
        assert_int_equal(got[i].status, PMAP_OK);
        assert_true(got[i].res.value == 0 || got[i].res.value == 1);
        for (j = 0; j < npids && pids[j] != got[i].res.pid; j++)
            ;
        if (j == npids)
            pids[npids++] = got[i].res.pid;
    }
    /* 19 records, at most 3 per worker: recycled. */
    assert_true(npids >= 7);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* A host that ignores SIGCHLD: statuses are still exact (the server
 * collects them), and the workers ignore SIGCHLD as the host does. */
static void test_sigchld_ignored(void **state)
{
    enum { N = 6 };
    struct tu_snap snap;
    struct sigaction sa, old;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, T_SIGCHLD, 0);
    struct fo_got got[N];

    (void)state;
    tu_snap_take(&snap);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGCHLD, &sa, &old), 0);
    pl->ops[1].kind = FO_ABORT;
    pl->ops[3].kind = FO_EXIT;
    pl->ops[3].arg = 3;
    opts(&opt, PMAP_START_FORKSERVER, 2);
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    assert_int_equal(sigaction(SIGCHLD, &old, NULL), 0);
    assert_int_equal(got[1].status, PMAP_ECRASH);
    assert_int_equal(got[1].code, SIGABRT);
    assert_int_equal(got[3].status, PMAP_ECRASH);
    assert_true(fo_exit_code_ok(got[3].code, 3));
    assert_int_equal(got[0].status, PMAP_OK);
    assert_int_equal(got[0].res.aux, 1);
    assert_int_equal(got[5].status, PMAP_OK);
    assert_int_equal(got[5].res.aux, 1);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* worker_init reads a flag in memory shared with the test, so that it can
 * start failing after create (the server's snapshot would not see a
 * plain global change). */
static _Atomic int *init_fail;

static int flag_init(void *ctx)
{
    (void)ctx;
    return atomic_load(init_fail);
}

static void test_worker_init(void **state)
{
    enum { N = 10 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_ABORT, 0);
    struct fo_got got[N];
    uint64_t i;

    (void)state;
    init_fail = mmap(NULL, sizeof *init_fail, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    assert_true(init_fail != MAP_FAILED);
    tu_snap_take(&snap);
    opts(&opt, PMAP_START_FORKSERVER, 2);
    opt.worker_init = flag_init;

    /* Failing at create: NULL + ECHILD, server and workers gone. */
    atomic_store(init_fail, 1);
    errno = 0;
    assert_null(pmap_pool_create(fs_task, NULL, &opt));
    assert_int_equal(errno, ECHILD);
    tu_snap_check(&snap);

    /* Failing later: PMAP_EWORKER, and the pool works again once it can. */
    atomic_store(init_fail, 0);
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    atomic_store(init_fail, 1);
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_EWORKER);
    atomic_store(init_fail, 0);
    for (i = 0; i < N; i++)
        pl->ops[i].kind = FO_ECHO;
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++)
        assert_true(fo_ok(&got[i], i));
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
    munmap((void *)init_fail, sizeof *init_fail);
}

/* Freeing an iterator early stops busy workers promptly (the server kills
 * them) and leaves the pool usable. */
static void test_early_free(void **state)
{
    enum { N = 6 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_SLEEP, 60000);
    struct fo_got got[N];
    uint64_t i, t0, count;

    (void)state;
    tu_snap_take(&snap);
    pl->ops[0].kind = FO_ECHO;
    opts(&opt, PMAP_START_FORKSERVER, 2);
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    t0 = pmap__now_ns();
    assert_int_equal(fo_run(pool, pl, 1, got, 1, &count), PMAP_OK);
    assert_int_equal(count, 1);
    /* Bounded by stopping the workers, not by their minute-long tasks. */
    assert_true(pmap__now_ns() - t0 < 20ull * PMAP__NS_PER_S);
    for (i = 0; i < N; i++)
        pl->ops[i].kind = FO_ECHO;
    assert_int_equal(fo_run(pool, pl, 0, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++)
        assert_true(fo_ok(&got[i], i));
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* An event loop (DESIGN §10) on a server pool: the server's news of exits
 * wakes it like the pipes do, so crashes, a timeout and replacements come
 * through without a busy loop. */
static void test_event_loop(void **state)
{
    enum { N = 12 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    int seen[N], rc = PMAP_EAGAIN, fd;
    unsigned wakeups = 0, i;

    (void)state;
    tu_snap_take(&snap);
    memset(seen, 0, sizeof seen);
    pl->ops[2].kind = FO_ABORT;
    pl->ops[6].kind = FO_EXIT;
    pl->ops[6].arg = 3;
    pl->ops[9].kind = FO_SLEEP;
    pl->ops[9].arg = 60000;
    opts(&opt, PMAP_START_FORKSERVER, 2);
    opt.task_timeout_ms = FAULT_LIMIT_MS;
    pool = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(pool);
    it = pmap_imap_unordered(pool, fo_gen, pl);
    assert_non_null(it);
    fd = pmap_iter_fd(it);
    assert_true(fd >= 0);
    while (rc != PMAP_DONE) {
        struct pollfd pfd = {fd, POLLIN, 0};

        assert_true(poll(&pfd, 1, pmap_iter_timeout(it)) >= 0 || errno == EINTR);
        wakeups++;
        while ((rc = pmap_try_next(it, &item)) == PMAP_OK) {
            assert_true(item.index < N && !seen[item.index]);
            seen[item.index] = 1;
            if (item.index == 2)
                assert_true(item.status == PMAP_ECRASH && item.code == SIGABRT);
            else if (item.index == 6)
                assert_true(item.status == PMAP_ECRASH && fo_exit_code_ok(item.code, 3));
            else if (item.index == 9)
                assert_int_equal(item.status, PMAP_ETIMEOUT);
            else
                assert_int_equal(item.status, PMAP_OK);
        }
        assert_true(rc == PMAP_EAGAIN || rc == PMAP_DONE);
    }
    for (i = 0; i < N; i++)
        assert_true(seen[i]);
    /* A loop that spun would wake thousands of times over the timeout. */
    print_message("event loop: %u wakeups\n", wakeups);
    assert_true(wakeups < 300);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Caller death, the host's fork                                            */
/* ------------------------------------------------------------------------ */

static int pid_gone(pid_t pid)
{
    char path[64], buf[512], *p;
    FILE *f;
    size_t n;

    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 1;
    /* Exited but not yet reaped by its new parent: gone for our purpose. */
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return 1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    return p != NULL && (p[2] == 'Z' || p[2] == 'X');
}

/* Every worker reports its pid (negated) and its parent's, the server. */
static int report_init(void *ctx)
{
    int64_t v[2] = {-(int64_t)getpid(), (int64_t)getppid()};

    (void)ctx;
    return write(report_fd, v, sizeof v) == (ssize_t)sizeof v ? 0 : 1;
}

/* The caller about to be killed: a server pool of two workers, both in a
 * long task. */
static int doomed_caller(void)
{
    struct fo_plan *pl = fo_plan_new(4, T_REPORT_SLEEP, 30000);
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;

    opts(&opt, PMAP_START_FORKSERVER, 2);
    opt.worker_init = report_init;
    pool = pmap_pool_create(fs_task, NULL, &opt);
    if (pool == NULL)
        return 1;
    it = pmap_imap(pool, fo_gen, pl);
    if (it == NULL)
        return 2;
    (void)pmap_next(it, &item);
    return 3;
}

static void read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        struct pollfd pfd = {fd, POLLIN, 0};
        ssize_t n;

        assert_int_equal(poll(&pfd, 1, 30000), 1);
        n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        got += (size_t)n;
    }
}

static void test_caller_death(void **state)
{
    struct tu_snap snap;
    int fds[2], k, busy = 0, left = 1;
    int64_t pids[3] = {0, 0, 0}, v[2];
    pid_t caller, r;
    uint64_t t0, ms = 0;
    int st;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    caller = fork();
    assert_true(caller >= 0);
    if (caller == 0) {
        close(fds[0]);
        report_fd = fds[1];
        _exit(doomed_caller());
    }
    close(fds[1]);
    /* Two workers started (each: -pid, server pid), and at least one is in
     * its task ({pid, 0}). */
    for (k = 0; k < 2 || !busy;) {
        read_full(fds[0], v, sizeof v);
        if (v[0] > 0) {
            busy = 1;
            continue;
        }
        assert_true(k < 2);
        pids[k++] = -v[0];
        assert_true(k == 1 || v[1] == pids[2]);
        pids[2] = v[1];
    }
    assert_true(pids[2] != caller);
    for (k = 0; k < 3; k++)
        assert_false(pid_gone((pid_t)pids[k]));
    assert_int_equal(kill(caller, SIGKILL), 0);
    do {
        r = waitpid(caller, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, caller);
    t0 = pmap__now_ns();
    while (left && ms < 5000) {
        fo_sleep_ms(10);
        left = 0;
        for (k = 0; k < 3; k++)
            left += !pid_gone((pid_t)pids[k]);
        ms = (pmap__now_ns() - t0) / 1000000u;
    }
    close(fds[0]);
    print_message("server and workers gone %llu ms after their caller died\n",
                  (unsigned long long)ms);
    for (k = 0; k < 3; k++)
        assert_true(pid_gone((pid_t)pids[k]));
    tu_snap_check(&snap);
}

/* Pids of the pool's workers by id, in memory shared with them. */
static _Atomic int64_t *start_pids;

static int record_pid_init(void *ctx)
{
    int id = pmap_worker_id();

    (void)ctx;
    if (id >= 0 && id < 2)
        atomic_store(&start_pids[id], (int64_t)getpid());
    return 0;
}

static pmap_pool *inherited;

static void test_inherited_pool_inert(void **state)
{
    enum { N = 10 };
    struct tu_snap snap;
    pmap_options opt;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    struct fo_got got[N];
    int64_t p0, p1;
    pid_t child, r;
    uint64_t i;
    int st;

    (void)state;
    start_pids = mmap(NULL, 2 * sizeof *start_pids, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(start_pids != MAP_FAILED);
    tu_snap_take(&snap);
    opts(&opt, PMAP_START_FORKSERVER, 2);
    opt.worker_init = record_pid_init;
    inherited = pmap_pool_create(fs_task, NULL, &opt);
    assert_non_null(inherited);
    p0 = atomic_load(&start_pids[0]);
    p1 = atomic_load(&start_pids[1]);
    fflush(NULL);
    child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(pmap_imap(inherited, fo_gen, pl) == NULL && pmap_pool_destroy(inherited) == PMAP_OK
                  ? 0
                  : 1);
    do {
        r = waitpid(child, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, child);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* The same two workers, untouched, run everything. */
    assert_int_equal(fo_run(inherited, pl, 0, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++) {
        assert_true(fo_ok(&got[i], i));
        assert_true(got[i].res.pid == p0 || got[i].res.pid == p1);
    }
    assert_true(atomic_load(&start_pids[0]) == p0 && atomic_load(&start_pids[1]) == p1);
    assert_int_equal(pmap_pool_destroy(inherited), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
    munmap((void *)start_pids, 2 * sizeof *start_pids);
}

/* Pools of both kinds alive at once, destroyed in any order: each server
 * holds only its own pool's descriptors, so nothing keeps another alive. */
static void test_pools_side_by_side(void **state)
{
    enum { N = 8 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *a, *b, *c;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    struct fo_got got[N];
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    opts(&opt, PMAP_START_FORKSERVER, 1);
    a = pmap_pool_create(fs_task, NULL, &opt);
    opt.start_method = PMAP_START_FORK;
    b = pmap_pool_create(fs_task, NULL, &opt);
    opt.start_method = PMAP_START_FORKSERVER;
    c = pmap_pool_create(fs_task, NULL, &opt);
    assert_true(a != NULL && b != NULL && c != NULL);
    pl->ops[3].kind = FO_ABORT; /* a replacement in each */
    assert_int_equal(fo_run(a, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(fo_run(b, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(fo_run(c, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(pmap_pool_destroy(a), PMAP_OK);
    assert_int_equal(fo_run(c, pl, 0, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(pmap_pool_destroy(b), PMAP_OK);
    for (i = 0; i < N; i++)
        assert_true(i == 3 ? got[i].status == PMAP_ECRASH : fo_ok(&got[i], i));
    assert_int_equal(pmap_pool_destroy(c), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lock_held_after_create, arm, disarm),
        cmocka_unit_test_setup_teardown(test_snapshot_at_create, arm, disarm),
        cmocka_unit_test_setup_teardown(test_statuses, arm, disarm),
        cmocka_unit_test_setup_teardown(test_sigchld_ignored, arm, disarm),
        cmocka_unit_test_setup_teardown(test_worker_init, arm, disarm),
        cmocka_unit_test_setup_teardown(test_early_free, arm, disarm),
        cmocka_unit_test_setup_teardown(test_event_loop, arm, disarm),
        cmocka_unit_test_setup_teardown(test_caller_death, arm, disarm),
        cmocka_unit_test_setup_teardown(test_inherited_pool_inert, arm, disarm),
        cmocka_unit_test_setup_teardown(test_pools_side_by_side, arm, disarm),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
