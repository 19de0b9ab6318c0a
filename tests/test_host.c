/*
 * Host citizenship: libpmap runs inside somebody else's program and must not
 * disturb it — signal dispositions and masks, SIGPIPE, SIGCHLD, the host's
 * own children, its descriptors and stdio, its threads — and its workers
 * must never outlive the caller. Scenarios that may kill or mutilate the
 * process (SIGPIPE, closed stdio, caller death) run in a forked copy of the
 * test that reports through its exit status.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "faultops.h"
#include "testutil.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXSIG 65

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

/* ------------------------------------------------------------------------ */
/* A task and a generator that also carry large records                    */
/* ------------------------------------------------------------------------ */

enum { H_REPORT_SLEEP = 100 }; /* write the pid to report_fd, sleep arg ms, echo */

static int report_fd = -1;

static int64_t big_sum(const unsigned char *p, size_t len)
{
    uint64_t s = 0;
    size_t i;

    for (i = 0; i < len; i++)
        s = s * 31u + p[i];
    return (int64_t)(s >> 1);
}

/* Records longer than a struct fo_op are "big": the result echoes their
 * first 8 bytes as the index, their length and a checksum. */
static int host_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct fo_op op;

    if (len > sizeof op) {
        struct fo_res res;

        memset(&res, 0, sizeof res);
        memcpy(&res.index, param, sizeof res.index);
        res.pid = getpid();
        res.value = (int64_t)len;
        res.aux = big_sum(param, len);
        return pmap_buf_set(out, &res, sizeof res) == PMAP_OK ? 0 : 9996;
    }
    if (len == sizeof op) {
        memcpy(&op, param, sizeof op);
        if (op.kind == H_REPORT_SLEEP) {
            int64_t pid = getpid();

            (void)!write(report_fd, &pid, sizeof pid);
            fo_sleep_ms(op.arg);
            op.kind = FO_ECHO;
            return fo_task(ctx, &op, sizeof op, out);
        }
    }
    return fo_task(ctx, param, len, out);
}

/* One record of a mixed plan: an operation, or a big record of big_len. */
struct hrec {
    uint32_t kind;
    uint32_t arg;
    size_t big_len;
};

struct hgen {
    const struct hrec *recs;
    uint64_t n, next;
};

static void big_fill(unsigned char *p, size_t len, uint64_t index)
{
    size_t i;

    memcpy(p, &index, sizeof index);
    for (i = sizeof index; i < len; i++)
        p[i] = (unsigned char)((index + i * 7u) >> (i % 5u));
}

static int hgen_next(void *ctx, pmap_buf *param)
{
    struct hgen *g = ctx;
    const struct hrec *r;
    uint64_t i = g->next;

    if (i >= g->n)
        return 0;
    g->next++;
    r = &g->recs[i];
    if (r->big_len > sizeof(struct fo_op)) {
        unsigned char *p = pmap_buf_reserve(param, r->big_len);

        if (p == NULL)
            return -1;
        big_fill(p, r->big_len, i);
    } else {
        struct fo_op op = {i, r->kind, r->arg};

        if (pmap_buf_set(param, &op, sizeof op) != PMAP_OK)
            return -1;
    }
    return 1;
}

/* The item is the right result of its record. */
static int hrec_ok(const struct hrec *r, const pmap_item *item)
{
    struct fo_res res;

    if (item->status != PMAP_OK || item->len != sizeof res)
        return 0;
    memcpy(&res, item->data, sizeof res);
    if (res.index != item->index)
        return 0;
    if (r->big_len > sizeof(struct fo_op)) {
        unsigned char *p = malloc(r->big_len);
        int64_t sum;

        if (p == NULL)
            return 0;
        big_fill(p, r->big_len, item->index);
        sum = big_sum(p, r->big_len);
        free(p);
        return res.value == (int64_t)r->big_len && res.aux == sum;
    }
    return res.value == fo_echo_value(item->index);
}

static pmap_pool *host_pool(int workers, unsigned chunk, unsigned timeout_ms)
{
    pmap_options opt;

    fo_opts(&opt, workers, chunk);
    opt.task_timeout_ms = timeout_ms;
    return pmap_pool_create(host_task, NULL, &opt);
}

/* ------------------------------------------------------------------------ */
/* Forked copies of the test                                                */
/* ------------------------------------------------------------------------ */

/* Run fn in a child process; return its wait status. The child never goes
 * back into cmocka: it ends with _exit(fn()). */
static int in_child(int (*fn)(void *), void *arg)
{
    pid_t pid, r;
    int st = 0;

    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(fn(arg));
    do {
        r = waitpid(pid, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, pid);
    return st;
}

static void assert_child_ok(int st)
{
    if (WIFSIGNALED(st))
        print_message("child killed by signal %d\n", WTERMSIG(st));
    else if (WEXITSTATUS(st) != 0)
        print_message("child failed at step %d\n", WEXITSTATUS(st));
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void tmp_path(char *buf, size_t cap, const char *tag)
{
    int fd;

    snprintf(buf, cap, "/tmp/pmap-%s-XXXXXX", tag);
    fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf = calloc(1, 1 << 20);
    size_t n;

    assert_non_null(f);
    assert_non_null(buf);
    n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int count_substr(const char *hay, const char *needle)
{
    int n = 0;
    size_t l = strlen(needle);

    while ((hay = strstr(hay, needle)) != NULL) {
        n++;
        hay += l;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Signals                                                                  */
/* ------------------------------------------------------------------------ */

struct sigstate {
    struct sigaction sa[MAXSIG];
    sigset_t mask;
};

static void sig_snap(struct sigstate *s)
{
    int sig;

    memset(s, 0, sizeof *s);
    for (sig = 1; sig < MAXSIG && sig <= SIGRTMAX; sig++)
        (void)sigaction(sig, NULL, &s->sa[sig]);
    pthread_sigmask(SIG_SETMASK, NULL, &s->mask);
}

static void sig_check(const struct sigstate *a, const struct sigstate *b)
{
    int sig, k;

    for (sig = 1; sig < MAXSIG && sig <= SIGRTMAX; sig++) {
        if (a->sa[sig].sa_handler != b->sa[sig].sa_handler ||
            a->sa[sig].sa_flags != b->sa[sig].sa_flags)
            print_message("disposition of signal %d changed\n", sig);
        assert_true(a->sa[sig].sa_handler == b->sa[sig].sa_handler);
        assert_int_equal(a->sa[sig].sa_flags, b->sa[sig].sa_flags);
        for (k = 1; k < MAXSIG && k <= SIGRTMAX; k++)
            assert_int_equal(sigismember(&a->sa[sig].sa_mask, k),
                             sigismember(&b->sa[sig].sa_mask, k));
    }
    for (k = 1; k < MAXSIG && k <= SIGRTMAX; k++) {
        if (sigismember(&a->mask, k) != sigismember(&b->mask, k))
            print_message("signal %d changed in the mask\n", k);
        assert_int_equal(sigismember(&a->mask, k), sigismember(&b->mask, k));
    }
}

static void set_handler(int sig, void (*fn)(int), int flags)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(sig, &sa, NULL), 0);
}

static int sigpipe_pending(void)
{
    sigset_t p;

    sigemptyset(&p);
    sigpending(&p);
    return sigismember(&p, SIGPIPE);
}

/* A worker dies while the caller is writing an 8 MiB record to it: items 0
 * and 1 travel in one batch; the worker starts item 0 as soon as it has
 * it, while the caller is still pushing item 1 (8 MiB, eight times what a
 * pipe holds at most without privileges) after it. The task closes the worker's input first (as a
 * dying process does, before it can be reaped), so the caller's next write
 * meets a pipe without a reader for certain, then sleeps and exits. */
static const struct hrec pipe_plan[] = {
    {FO_CLOSE_IN_EXIT, 300, 0},
    {0, 0, (size_t)8 << 20},
    {FO_ECHO, 0, 0},
};

/* Runs pipe_plan; 0 when every item is as expected. */
static int run_pipe_plan(void)
{
    pmap_pool *pool = host_pool(1, 2, 0);
    struct hgen g = {pipe_plan, 3, 0};
    pmap_iter *it;
    pmap_item item;
    int rc, bad = 0;

    if (pool == NULL)
        return 1;
    it = pmap_imap(pool, hgen_next, &g);
    if (it == NULL)
        return 2;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (item.index == 0)
            bad |= item.status != PMAP_ECRASH || !fo_exit_code_ok(item.code, 3);
        else
            bad |= !hrec_ok(&pipe_plan[item.index], &item);
    }
    bad |= rc != PMAP_DONE;
    pmap_iter_free(it);
    if (pmap_pool_destroy(pool) != PMAP_OK)
        return 4;
    return bad ? 3 : 0;
}

static int sigpipe_child(void *arg)
{
    int rc;

    (void)arg;
    signal(SIGPIPE, SIG_DFL);
    rc = run_pipe_plan();
    if (rc != 0)
        return 10 + rc;
    return sigpipe_pending() ? 20 : 0;
}

static void test_sigpipe_never_reaches_host(void **state)
{
    struct tu_snap snap;

    (void)state;
    tu_snap_take(&snap);
    assert_child_ok(in_child(sigpipe_child, NULL));
    tu_snap_check(&snap);
}

/* Faults of every kind (crash, timeout, SIGPIPE, early free) leave every
 * disposition and the signal mask as they were, also when the host has
 * SIGPIPE blocked and handlers installed. */
static void on_sig(int sig)
{
    (void)sig;
}

static void test_signals_untouched(void **state)
{
    static const struct hrec plan[] = {
        {FO_ECHO, 0, 0},  {FO_ABORT, 0, 0}, {FO_SLEEP, 20000, 0},
        {FO_ECHO, 0, 0},  {FO_EXIT, 5, 0},  {0, 0, 300000},
        {FO_ECHO, 0, 0},  {FO_ECHO, 0, 0},
    };
    struct tu_snap snap;
    struct sigstate before, after;
    struct sigaction old_chld, old_usr1;
    sigset_t blk, old_mask;
    int round;

    (void)state;
    tu_snap_take(&snap);
    sigaction(SIGCHLD, NULL, &old_chld);
    sigaction(SIGUSR1, NULL, &old_usr1);
    pthread_sigmask(SIG_SETMASK, NULL, &old_mask);
    for (round = 0; round < 2; round++) {
        pmap_pool *pool;
        pmap_iter *it;
        pmap_item item;
        struct hgen g = {plan, sizeof plan / sizeof plan[0], 0};
        int rc;

        if (round == 1) {
            /* A host with opinions: handlers, and SIGPIPE blocked. */
            set_handler(SIGCHLD, on_sig, SA_RESTART);
            set_handler(SIGUSR1, on_sig, 0);
            sigemptyset(&blk);
            sigaddset(&blk, SIGPIPE);
            sigaddset(&blk, SIGUSR2);
            pthread_sigmask(SIG_BLOCK, &blk, NULL);
        }
        sig_snap(&before);
        pool = host_pool(2, 1, fo_limit_ms());
        assert_non_null(pool);
        it = pmap_imap(pool, hgen_next, &g);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            if (item.index == 1)
                assert_int_equal(item.status, PMAP_ECRASH);
            else if (item.index == 2)
                assert_int_equal(item.status, PMAP_ETIMEOUT);
            else if (item.index == 4)
                assert_int_equal(item.status, PMAP_ECRASH);
            else
                assert_true(hrec_ok(&plan[item.index], &item));
        }
        assert_int_equal(rc, PMAP_DONE);
        pmap_iter_free(it);
        /* An early free kills busy workers. */
        g.next = 0;
        it = pmap_imap(pool, hgen_next, &g);
        assert_non_null(it);
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        pmap_iter_free(it);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
        /* The SIGPIPE scenario, in this process. */
        assert_int_equal(run_pipe_plan(), 0);
        sig_snap(&after);
        sig_check(&before, &after);
        assert_false(sigpipe_pending());
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    sigaction(SIGCHLD, &old_chld, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    tu_snap_check(&snap);
}

/* The host ignores SIGCHLD, so the kernel reaps every child at once: the
 * statuses are still right (a crash's code may be unknowable: -1). */
static void test_sigchld_ignored(void **state)
{
    enum { N = 40 };
    struct tu_snap snap;
    struct sigaction old;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    struct fo_got got[N];
    uint64_t i;
    int ordered;

    (void)state;
    tu_snap_take(&snap);
    sigaction(SIGCHLD, NULL, &old);
    set_handler(SIGCHLD, SIG_IGN, 0);
    for (i = 0; i < N; i++) {
        if (i % 7 == 3)
            pl->ops[i].kind = FO_ABORT;
        if (i % 13 == 5) {
            pl->ops[i].kind = FO_EXIT;
            pl->ops[i].arg = 9;
        }
    }
    pl->ops[11].kind = FO_SLEEP;
    pl->ops[11].arg = 20000;
    fo_opts(&opt, 2, 0);
    opt.task_timeout_ms = fo_limit_ms();
    opt.max_tasks_per_worker = 6;
    pool = pmap_pool_create(fo_task, NULL, &opt);
    assert_non_null(pool);
    for (ordered = 0; ordered < 2; ordered++) {
        assert_int_equal(fo_run(pool, pl, ordered, got, UINT64_MAX, NULL), PMAP_DONE);
        for (i = 0; i < N; i++) {
            if (pl->ops[i].kind == FO_ABORT) {
                assert_int_equal(got[i].status, PMAP_ECRASH);
                assert_true(got[i].code == SIGABRT || got[i].code == -1);
            } else if (pl->ops[i].kind == FO_EXIT) {
                assert_int_equal(got[i].status, PMAP_ECRASH);
                assert_true(fo_exit_code_ok(got[i].code, 9) || got[i].code == -1);
            } else if (i == 11) {
                assert_int_equal(got[i].status, PMAP_ETIMEOUT);
            } else {
                assert_true(fo_ok(&got[i], i));
            }
        }
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    sigaction(SIGCHLD, &old, NULL);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* A child of the host's own keeps its exit status for the host. */
static void test_host_child_status(void **state)
{
    enum { N = 20 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_ABORT, 0);
    struct fo_got got[N];
    pid_t child, r;
    int st = 0;

    (void)state;
    tu_snap_take(&snap);
    child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(42);
    fo_opts(&opt, 2, 0);
    opt.max_tasks_per_worker = 2;
    pool = fo_pool(&opt);
    /* Crashes and recycling make the pool reap many of its own. */
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    do {
        r = waitpid(child, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 42);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* Host handlers never run in a worker: caught signals are reset to their
 * default action there, ignored ones stay ignored, SIGINT is ignored. */
static char marker[64];

static void marker_handler(int sig)
{
    int fd = open(marker, O_WRONLY | O_CREAT | O_APPEND, 0600);

    (void)sig;
    if (fd >= 0) {
        (void)!write(fd, "h", 1);
        close(fd);
    }
}

static void marker_action(int sig, siginfo_t *si, void *uc)
{
    (void)si;
    (void)uc;
    marker_handler(sig);
}

static void test_host_handlers_not_in_worker(void **state)
{
    enum { N = 10 };
    struct tu_snap snap;
    struct sigaction o1, o2, o3, sa;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    struct fo_got got[N];
    struct stat st;
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    snprintf(marker, sizeof marker, "/tmp/pmap-marker-%ld", (long)getpid());
    unlink(marker);
    sigaction(SIGUSR1, NULL, &o1);
    sigaction(SIGUSR2, NULL, &o2);
    sigaction(SIGHUP, NULL, &o3);
    set_handler(SIGUSR1, marker_handler, 0);
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = marker_action;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
    set_handler(SIGHUP, SIG_IGN, 0);

    pl->ops[1].kind = FO_RAISE;
    pl->ops[1].arg = SIGUSR1;
    pl->ops[3].kind = FO_RAISE;
    pl->ops[3].arg = SIGUSR2;
    pl->ops[5].kind = FO_RAISE;
    pl->ops[5].arg = SIGHUP;
    pl->ops[7].kind = FO_RAISE; /* in a replacement worker by now */
    pl->ops[7].arg = SIGUSR1;
    fo_opts(&opt, 1, 1);
    pool = fo_pool(&opt);
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    sigaction(SIGUSR1, &o1, NULL);
    sigaction(SIGUSR2, &o2, NULL);
    sigaction(SIGHUP, &o3, NULL);

    assert_int_equal(got[1].status, PMAP_ECRASH);
    assert_int_equal(got[1].code, SIGUSR1);
    assert_int_equal(got[3].status, PMAP_ECRASH);
    assert_int_equal(got[3].code, SIGUSR2);
    assert_int_equal(got[7].status, PMAP_ECRASH);
    assert_int_equal(got[7].code, SIGUSR1);
    for (i = 0; i < N; i++)
        if (i != 1 && i != 3 && i != 7)
            assert_true(fo_ok(&got[i], i));
    assert_true(stat(marker, &st) != 0); /* no handler ran anywhere */
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* Ctrl-C is the host's decision: workers ignore SIGINT. */
static void test_workers_ignore_sigint(void **state)
{
    enum { N = 6 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_RAISE, SIGINT);
    struct fo_got got[N];
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    fo_opts(&opt, 2, 1);
    pool = fo_pool(&opt);
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++)
        assert_true(fo_ok(&got[i], i));
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* A host thread interrupts the caller with SIGALRM every millisecond
 * (handler without SA_RESTART): same results. */
static atomic_int storm_stop;
static atomic_long storm_hits;
static pthread_t storm_target;

static void storm_handler(int sig)
{
    (void)sig;
    atomic_fetch_add(&storm_hits, 1);
}

static void *storm_thread(void *arg)
{
    struct timespec ms = {0, 1000000};

    (void)arg;
    while (!atomic_load(&storm_stop)) {
        pthread_kill(storm_target, SIGALRM);
        nanosleep(&ms, NULL);
    }
    return NULL;
}

static void test_eintr_storm(void **state)
{
    uint64_t n = fo_quick() ? 4000 : 20000, i;
    struct tu_snap snap;
    struct sigaction old;
    struct hrec *plan = calloc(n, sizeof *plan);
    pthread_t th;
    pmap_pool *pool;
    int ordered;

    (void)state;
    assert_non_null(plan);
    tu_snap_take(&snap);
    for (i = 0; i < n; i++) {
        plan[i].kind = FO_ECHO;
        if (i % 997 == 0)
            plan[i].big_len = 300000 + i; /* partial writes and reads */
    }
    alarm(0); /* the guard uses SIGALRM too */
    sigaction(SIGALRM, NULL, &old);
    set_handler(SIGALRM, storm_handler, 0);
    atomic_store(&storm_stop, 0);
    atomic_store(&storm_hits, 0);
    storm_target = pthread_self();
    assert_int_equal(pthread_create(&th, NULL, storm_thread, NULL), 0);
    pool = host_pool(2, 0, 0);
    assert_non_null(pool);
    /* At least two maps, and on until the storm has hit a few hundred
     * times (a fast machine maps 20k records in a fraction of a second). */
    for (ordered = 0; ordered < 2 || (atomic_load(&storm_hits) < 300 && ordered < 40); ordered++) {
        struct hgen g = {plan, n, 0};
        pmap_iter *it = ordered % 2 ? pmap_imap(pool, hgen_next, &g)
                                : pmap_imap_unordered(pool, hgen_next, &g);
        pmap_item item;
        uint64_t got = 0, bad = 0;
        int rc;

        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            bad += !hrec_ok(&plan[item.index], &item);
            got++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(got, n);
        assert_int_equal(bad, 0);
    }
    /* Early frees under the storm: busy workers are killed and reaped
     * with blocking waits that the signals interrupt. */
    for (i = 0; i < (fo_quick() ? 5u : 25u); i++) {
        static const struct hrec slow[] = {
            {FO_ECHO, 0, 0}, {FO_SLEEP, 5000, 0}, {FO_SLEEP, 5000, 0}, {FO_SLEEP, 5000, 0}};
        struct hgen g = {slow, 4, 0};
        pmap_iter *it = pmap_imap(pool, hgen_next, &g);
        pmap_item item;

        assert_non_null(it);
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        assert_true(hrec_ok(&slow[0], &item));
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        /* Killed workers were reaped, not left as zombies. */
        assert_true(tu_child_count() <= snap.children + 2);
    }
    /* Creating and destroying pools under the storm too. */
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    for (i = 0; i < 5; i++) {
        pool = host_pool(2, 0, 0);
        assert_non_null(pool);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    atomic_store(&storm_stop, 1);
    pthread_join(th, NULL);
    sigaction(SIGALRM, &old, NULL);
    print_message("%ld signals delivered during the maps\n", (long)atomic_load(&storm_hits));
    assert_true(atomic_load(&storm_hits) >= 300);
    free(plan);
    alarm(120);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Processes                                                                */
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

/* Every worker reports its pid when it starts. */
static int report_init(void *ctx)
{
    int64_t pid = -(int64_t)getpid();

    (void)ctx;
    return write(report_fd, &pid, sizeof pid) == (ssize_t)sizeof pid ? 0 : 1;
}

/* The caller: a pool of two workers whose pids are reported (negative) by
 * worker_init; then a map of 10 s tasks, each reporting its pid (positive)
 * as it starts. */
static int doomed_caller(void *arg)
{
    static const struct hrec plan[] = {{H_REPORT_SLEEP, 10000, 0},
                                       {H_REPORT_SLEEP, 10000, 0},
                                       {H_REPORT_SLEEP, 10000, 0},
                                       {H_REPORT_SLEEP, 10000, 0}};
    struct hgen g = {plan, 4, 0};
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;

    (void)arg;
    fo_opts(&opt, 2, 1);
    opt.worker_init = report_init;
    pool = pmap_pool_create(host_task, NULL, &opt);
    if (pool == NULL)
        return 1;
    it = pmap_imap(pool, hgen_next, &g);
    if (it == NULL)
        return 2;
    while (pmap_next(it, &item) == PMAP_OK)
        ;
    return 3; /* not reached: killed first */
}

static void test_caller_death(void **state)
{
    struct tu_snap snap;
    int fds[2];
    int64_t pids[2] = {0, 0}, v;
    int nstart = 0, nbusy = 0, k;
    pid_t caller, r;
    int st;
    uint64_t t0, ms;

    (void)state;
    tu_snap_take(&snap);
    assert_int_equal(pipe(fds), 0);
    report_fd = fds[1];
    fflush(NULL);
    caller = fork();
    assert_true(caller >= 0);
    if (caller == 0) {
        close(fds[0]);
        _exit(doomed_caller(NULL));
    }
    close(fds[1]);
    report_fd = -1;
    /* Both workers started, and at least one is inside a 10 s task. */
    while (nstart < 2 || nbusy < 1) {
        struct pollfd pfd = {fds[0], POLLIN, 0};
        size_t got = 0;

        assert_true(poll(&pfd, 1, 20000) == 1);
        while (got < sizeof v) {
            ssize_t n = read(fds[0], (char *)&v + got, sizeof v - got);

            if (n < 0 && errno == EINTR)
                continue;
            assert_true(n > 0);
            got += (size_t)n;
        }
        if (v < 0) {
            assert_true(nstart < 2);
            pids[nstart++] = -v;
        } else {
            assert_true(v == pids[0] || v == pids[1]);
            nbusy++;
        }
    }
    /* fds[0] stays open until the caller is dead: a worker that starts its
     * task late still reports, and must not die of SIGPIPE doing so. */
    for (k = 0; k < 2; k++)
        assert_false(pid_gone((pid_t)pids[k]));
    /* The caller dies while its workers are idle or in the middle of a
     * 10 s task. */
    assert_int_equal(kill(caller, SIGKILL), 0);
    do {
        r = waitpid(caller, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, caller);
    t0 = pmap__now_ns();
    for (;;) {
        int left = 0;

        for (k = 0; k < 2; k++)
            left += !pid_gone((pid_t)pids[k]);
        ms = (pmap__now_ns() - t0) / 1000000u;
        if (left == 0 || ms > 1500)
            break;
        fo_sleep_ms(10);
    }
    close(fds[0]);
    print_message("workers gone %llu ms after their caller died\n", (unsigned long long)ms);
    for (k = 0; k < 2; k++)
        assert_true(pid_gone((pid_t)pids[k]));
    tu_snap_check(&snap);
}

/* Pids of a pool's workers as they start, by worker id (shared memory, so
 * that the record does not depend on which worker runs which records). */
static _Atomic int64_t *start_pids;

static int record_pid_init(void *ctx)
{
    int id = pmap_worker_id();

    (void)ctx;
    if (id >= 0 && id < 7)
        atomic_store(&start_pids[id], (int64_t)getpid());
    atomic_fetch_add(&start_pids[7], 1); /* workers started */
    return 0;
}

static void start_pids_map(void)
{
    start_pids = mmap(NULL, 8 * sizeof *start_pids, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(start_pids != MAP_FAILED);
    memset((void *)start_pids, 0, 8 * sizeof *start_pids);
}

static void start_pids_unmap(void)
{
    munmap((void *)start_pids, 8 * sizeof *start_pids);
    start_pids = NULL;
}

/* A pool created in a thread that has ended keeps its workers. */
struct thread_pool {
    pmap_pool *pool;
    int ok;
};

static void *make_pool_thread(void *arg)
{
    struct thread_pool *tp = arg;
    struct fo_plan *pl = fo_plan_new(8, FO_SLEEP, 20);
    struct fo_got got[8];
    pmap_options opt;

    fo_opts(&opt, 2, 1);
    opt.worker_init = record_pid_init;
    tp->pool = pmap_pool_create(fo_task, NULL, &opt);
    tp->ok = tp->pool != NULL && fo_run(tp->pool, pl, 1, got, UINT64_MAX, NULL) == PMAP_DONE;
    fo_plan_free(pl);
    return NULL;
}

static void test_pool_outlives_thread(void **state)
{
    enum { N = 40 };
    struct tu_snap snap;
    struct thread_pool tp;
    struct fo_plan *pl = fo_plan_new(N, FO_SLEEP, 2);
    struct fo_got got[N];
    int64_t pids[2];
    pthread_t th;
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    start_pids_map();
    memset(&tp, 0, sizeof tp);
    assert_int_equal(pthread_create(&th, NULL, make_pool_thread, &tp), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_non_null(tp.pool);
    assert_true(tp.ok);
    pids[0] = atomic_load(&start_pids[0]);
    pids[1] = atomic_load(&start_pids[1]);
    assert_true(pids[0] > 0 && pids[1] > 0);
    /* Give a wrongly delivered death signal time to act. */
    fo_sleep_ms(200);
    assert_int_equal(fo_run(tp.pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++)
        assert_true(fo_ok(&got[i], i));
    /* The same two workers: none was killed and replaced. */
    assert_true(atomic_load(&start_pids[0]) == pids[0]);
    assert_true(atomic_load(&start_pids[1]) == pids[1]);
    for (i = 0; i < N; i++)
        assert_true(got[i].res.pid == pids[0] || got[i].res.pid == pids[1]);
    assert_int_equal(pmap_pool_destroy(tp.pool), PMAP_OK);
    start_pids_unmap();
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Several pools                                                            */
/* ------------------------------------------------------------------------ */

/* Every worker holds exactly two pipe ends beyond the host's own: its own
 * two, none of another worker's or another pool's. */
static void test_worker_holds_only_its_pipes(void **state)
{
    enum { N = 16, NP = 3 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pools[NP];
    struct fo_plan *pl = fo_plan_new(N, FO_FIFOS, 0);
    struct fo_got got[N];
    int host = fo_count_fifos(), k;
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    pl->ops[5].kind = FO_ABORT; /* replacements are forked with all pools alive */
    for (k = 0; k < NP; k++) {
        fo_opts(&opt, 2, 1);
        pools[k] = fo_pool(&opt);
    }
    for (k = 0; k < NP; k++) {
        assert_int_equal(fo_run(pools[k], pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
        for (i = 0; i < N; i++) {
            if (i == 5)
                continue;
            assert_int_equal(got[i].status, PMAP_OK);
            assert_int_equal(got[i].res.value, host + 2);
        }
    }
    for (k = 0; k < NP; k++)
        assert_int_equal(pmap_pool_destroy(pools[k]), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* Host descriptors that lie between libpmap's own (opened after one pool
 * and before the next) stay open in workers, which close their pool
 * siblings' descriptors in runs: a run must never span the host's. */
static void test_host_fds_between_pools_kept(void **state)
{
    enum { N = 8 };
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *a, *b;
    struct fo_plan *pl = fo_plan_new(N, FO_FDOPEN, 0);
    struct fo_got got[N];
    int host[2];
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    fo_opts(&opt, 2, 1);
    a = fo_pool(&opt);
    assert_int_equal(pipe(host), 0);
    b = fo_pool(&opt);
    for (i = 0; i < N; i++)
        pl->ops[i].arg = (uint32_t)host[i % 2];
    pl->ops[3].kind = FO_ABORT; /* and in a replacement forked now */
    assert_int_equal(fo_run(b, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++) {
        if (i == 3)
            continue;
        assert_int_equal(got[i].status, PMAP_OK);
        assert_int_equal(got[i].res.value, 1);
    }
    assert_int_equal(pmap_pool_destroy(a), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(b), PMAP_OK);
    close(host[0]);
    close(host[1]);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* Two pools, maps interleaved item by item, destroyed in either order. */
static void test_two_pools_interleaved(void **state)
{
    enum { N = 200 };
    struct tu_snap snap;
    pmap_options opt;
    struct fo_plan *pa = fo_plan_new(N, FO_ECHO, 0), *pb = fo_plan_new(N, FO_ECHO, 0);
    int order;

    (void)state;
    tu_snap_take(&snap);
    pa->ops[17].kind = FO_ABORT;
    pb->ops[33].kind = FO_SLEEP;
    pb->ops[33].arg = 20000;
    for (order = 0; order < 2; order++) {
        pmap_pool *a, *b;
        pmap_iter *ia, *ib;
        pmap_item item;
        int ra = PMAP_OK, rb = PMAP_OK;
        uint64_t na = 0, nb = 0;

        fo_opts(&opt, 2, 0);
        a = fo_pool(&opt);
        opt.task_timeout_ms = fo_limit_ms();
        b = fo_pool(&opt);
        pa->next = pb->next = 0;
        ia = pmap_imap(a, fo_gen, pa);
        ib = pmap_imap_unordered(b, fo_gen, pb);
        assert_non_null(ia);
        assert_non_null(ib);
        while (ra == PMAP_OK || rb == PMAP_OK) {
            if (ra == PMAP_OK && (ra = pmap_next(ia, &item)) == PMAP_OK) {
                struct fo_res res;

                assert_int_equal(item.index, na);
                if (item.index == 17) {
                    assert_int_equal(item.status, PMAP_ECRASH);
                } else {
                    assert_int_equal(item.len, sizeof res);
                    memcpy(&res, item.data, sizeof res);
                    assert_true(res.value == fo_echo_value(item.index));
                }
                na++;
            }
            if (rb == PMAP_OK && (rb = pmap_next(ib, &item)) == PMAP_OK) {
                struct fo_res res;

                if (item.index == 33) {
                    assert_int_equal(item.status, PMAP_ETIMEOUT);
                } else {
                    assert_int_equal(item.len, sizeof res);
                    memcpy(&res, item.data, sizeof res);
                    assert_true(res.value == fo_echo_value(item.index));
                }
                nb++;
            }
        }
        assert_int_equal(ra, PMAP_DONE);
        assert_int_equal(rb, PMAP_DONE);
        assert_int_equal(na, N);
        assert_int_equal(nb, N);
        /* Free and destroy in the order of the round. */
        if (order == 0) {
            pmap_iter_free(ia);
            assert_int_equal(pmap_pool_destroy(a), PMAP_OK);
            pmap_iter_free(ib);
            assert_int_equal(pmap_pool_destroy(b), PMAP_OK);
        } else {
            pmap_iter_free(ib);
            assert_int_equal(pmap_pool_destroy(b), PMAP_OK);
            pmap_iter_free(ia);
            assert_int_equal(pmap_pool_destroy(a), PMAP_OK);
        }
        tu_snap_check(&snap);
    }
    /* Both alive with iterators stopped early, destroyed newest first. */
    {
        pmap_pool *a, *b;
        pmap_iter *ia, *ib;
        pmap_item item;

        fo_opts(&opt, 2, 0);
        a = fo_pool(&opt);
        b = fo_pool(&opt);
        pa->next = pb->next = 0;
        ia = pmap_imap(a, fo_gen, pa);
        ib = pmap_imap(b, fo_gen, pb);
        assert_int_equal(pmap_next(ia, &item), PMAP_OK);
        assert_int_equal(pmap_next(ib, &item), PMAP_OK);
        assert_int_equal(pmap_pool_destroy(a), PMAP_EBUSY);
        pmap_iter_free(ib);
        pmap_iter_free(ia);
        assert_int_equal(pmap_pool_destroy(b), PMAP_OK);
        assert_int_equal(pmap_pool_destroy(a), PMAP_OK);
    }
    fo_plan_free(pa);
    fo_plan_free(pb);
    tu_snap_check(&snap);
}

/* Two threads, each with its own pool, at the same time. */
static int thread_host_fifos;

static void *pool_thread(void *arg)
{
    uint64_t n = fo_quick() ? 1000 : 3000, i;
    struct fo_plan *pl = fo_plan_new(n, FO_ECHO, 0);
    struct fo_got *got = calloc(n, sizeof *got);
    long bad = 0;
    int round;

    (void)arg;
    for (round = 0; round < 4 && got != NULL; round++) {
        pmap_options opt;
        pmap_pool *pool;

        fo_opts(&opt, 2, 0);
        pool = pmap_pool_create(fo_task, NULL, &opt);
        if (pool == NULL) {
            bad += 1000000;
            break;
        }
        for (i = 0; i < n; i++)
            pl->ops[i].kind = i % 100 == 7 ? FO_FIFOS : FO_ECHO;
        pl->ops[n / 2].kind = FO_ABORT;
        pl->next = 0;
        {
            pmap_iter *it = round % 2 ? pmap_imap(pool, fo_gen, pl)
                                      : pmap_imap_unordered(pool, fo_gen, pl);
            pmap_item item;
            uint64_t count = 0;

            while (it != NULL && pmap_next(it, &item) == PMAP_OK) {
                struct fo_res res;

                count++;
                if (item.index == n / 2) {
                    bad += item.status != PMAP_ECRASH;
                    continue;
                }
                if (item.status != PMAP_OK || item.len != sizeof res) {
                    bad++;
                    continue;
                }
                memcpy(&res, item.data, sizeof res);
                if (pl->ops[item.index].kind == FO_FIFOS)
                    bad += res.value != thread_host_fifos + 2;
                else
                    bad += res.value != fo_echo_value(item.index);
            }
            bad += count != n;
            pmap_iter_free(it);
        }
        if (pmap_pool_destroy(pool) != PMAP_OK)
            bad++;
    }
    free(got);
    fo_plan_free(pl);
    return (void *)(intptr_t)bad;
}

static void test_pools_in_two_threads(void **state)
{
    struct tu_snap snap;
    pthread_t th[2];
    void *ret;
    int k;

    (void)state;
    tu_snap_take(&snap);
    thread_host_fifos = fo_count_fifos();
    for (k = 0; k < 2; k++)
        assert_int_equal(pthread_create(&th[k], NULL, pool_thread, NULL), 0);
    for (k = 0; k < 2; k++) {
        assert_int_equal(pthread_join(th[k], &ret), 0);
        assert_int_equal((intptr_t)ret, 0);
    }
    tu_snap_check(&snap);
}

/* In a child forked by the host, an inherited pool is inert: destroying it
 * there leaves the parent's workers alone. */
static pmap_pool *inherited;

static int inherit_child(void *arg)
{
    struct fo_plan pl;
    struct fo_op op = {0, FO_ECHO, 0};

    (void)arg;
    memset(&pl, 0, sizeof pl);
    pl.ops = &op;
    pl.n = 1;
    pl.fail_at = UINT64_MAX;
    if (pmap_imap(inherited, fo_gen, &pl) != NULL || errno != EINVAL)
        return 1;
    if (pmap_pool_destroy(inherited) != PMAP_OK)
        return 2;
    return 0;
}

static void test_inherited_pool_inert(void **state)
{
    enum { N = 30 };
    struct tu_snap snap;
    pmap_options opt;
    struct fo_plan *pl = fo_plan_new(N, FO_SLEEP, 5);
    struct fo_got got[N];
    int64_t pids[2];
    uint64_t i;

    (void)state;
    tu_snap_take(&snap);
    start_pids_map();
    fo_opts(&opt, 2, 1);
    opt.worker_init = record_pid_init;
    inherited = fo_pool(&opt);
    pids[0] = atomic_load(&start_pids[0]);
    pids[1] = atomic_load(&start_pids[1]);
    assert_int_equal(fo_run(inherited, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++)
        assert_true(fo_ok(&got[i], i));
    assert_child_ok(in_child(inherit_child, NULL));
    /* The parent's workers are untouched: the same two run everything. */
    assert_int_equal(fo_run(inherited, pl, 0, got, UINT64_MAX, NULL), PMAP_DONE);
    for (i = 0; i < N; i++) {
        assert_true(fo_ok(&got[i], i));
        assert_true(got[i].res.pid == pids[0] || got[i].res.pid == pids[1]);
    }
    assert_true(atomic_load(&start_pids[0]) == pids[0]);
    assert_true(atomic_load(&start_pids[1]) == pids[1]);
    assert_int_equal(pmap_pool_destroy(inherited), PMAP_OK);
    start_pids_unmap();
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* An iterator open when the host forks: in the child it is inert
 * (pmap_next says PMAP_EINVAL, pmap_iter_free frees the child's copy and
 * stops nothing), and the parent's map goes on, whole. */
static pmap_iter *inherited_it;

static int inherit_iter_child(void *arg)
{
    pmap_item item;

    (void)arg;
    if (pmap_next(inherited_it, &item) != PMAP_EINVAL)
        return 1;
    if (pmap_next(inherited_it, &item) != PMAP_EINVAL)
        return 2;
    if (pmap_iter_free(inherited_it) != PMAP_OK)
        return 3;
    if (pmap_pool_destroy(inherited) != PMAP_OK)
        return 4;
    return 0;
}

static void test_inherited_iter_inert(void **state)
{
    enum { N = 40 };
    struct tu_snap snap;
    pmap_options opt;
    struct fo_plan *pl = fo_plan_new(N, FO_SLEEP, 2);
    pmap_item item;
    uint64_t got = 0;
    int rc;

    (void)state;
    tu_snap_take(&snap);
    fo_opts(&opt, 2, 1);
    inherited = fo_pool(&opt);
    inherited_it = pmap_imap(inherited, fo_gen, pl);
    assert_non_null(inherited_it);
    for (; got < 5; got++) {
        assert_int_equal(pmap_next(inherited_it, &item), PMAP_OK);
        assert_int_equal(item.index, got);
    }
    /* Records are in flight on both workers now. */
    assert_child_ok(in_child(inherit_iter_child, NULL));
    while ((rc = pmap_next(inherited_it, &item)) == PMAP_OK) {
        struct fo_res res;

        assert_int_equal(item.index, got);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, sizeof res);
        memcpy(&res, item.data, sizeof res);
        assert_true(res.value == fo_echo_value(got));
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, N);
    assert_int_equal(pmap_iter_free(inherited_it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(inherited), PMAP_OK);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* Descriptors 0-2 and stdio                                                */
/* ------------------------------------------------------------------------ */

/* The host closed stdin, stdout and stderr: neither the host's nor a task's
 * writes to fds 1 and 2 may reach the protocol. */
static int closed_stdio_child(void *arg)
{
    enum { N = 60 };
    struct fo_op ops[N];
    struct fo_plan pl;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int rc, bad = 0, k, npids = 0;
    int64_t pids[2] = {0, 0};

    (void)arg;
    /* The host's own writes into what was its stdout are its business:
     * only the pool is under test here. */
    signal(SIGPIPE, SIG_IGN);
    start_pids = mmap(NULL, 8 * sizeof *start_pids, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (start_pids == MAP_FAILED)
        return 9;
    close(0);
    close(1);
    close(2);
    memset(&pl, 0, sizeof pl);
    memset(ops, 0, sizeof ops);
    for (k = 0; k < N; k++)
        ops[k].kind = FO_PRINTF;
    pl.ops = ops;
    pl.n = N;
    pl.fail_at = UINT64_MAX;
    fo_opts(&opt, 2, 1);
    opt.worker_init = record_pid_init;
    pool = pmap_pool_create(fo_task, NULL, &opt);
    if (pool == NULL)
        return 1;
    for (k = 0; k < 2; k++) {
        uint64_t n = 0;

        pl.next = 0;
        it = pmap_imap(pool, fo_gen, &pl);
        if (it == NULL)
            return 2;
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            struct fo_res res;

            /* The host writes to its closed stdout and stderr too. */
            printf("host noise %d\n", k);
            fflush(stdout);
            (void)!write(1, "host fd 1\n", 10);
            (void)!write(2, "host fd 2\n", 10);
            if (item.status != PMAP_OK || item.len != sizeof res) {
                bad++;
                continue;
            }
            memcpy(&res, item.data, sizeof res);
            bad += res.value != fo_echo_value(item.index);
            /* No worker had its stream broken and was replaced: the same
             * two did everything. */
            if (res.pid != pids[0] && res.pid != pids[1]) {
                if (npids == 2)
                    bad++;
                else
                    pids[npids++] = res.pid;
            }
            n++;
        }
        pmap_iter_free(it);
        if (rc != PMAP_DONE || n != N)
            bad++;
    }
    if (pmap_pool_destroy(pool) != PMAP_OK)
        return 3;
    /* No worker's stream was broken, so none was replaced. */
    if (atomic_load(&start_pids[7]) != 2)
        return 5;
    return bad ? 4 : 0;
}

static void test_closed_stdio(void **state)
{
    struct tu_snap snap;

    (void)state;
    tu_snap_take(&snap);
    assert_child_ok(in_child(closed_stdio_child, NULL));
    tu_snap_check(&snap);
}

/* The caller's unflushed stdio buffers are not written twice by forking. */
static void test_stdio_not_duplicated(void **state)
{
    enum { N = 10 };
    struct tu_snap snap;
    char path[64];
    FILE *f;
    char *text;
    pmap_options opt;
    pmap_pool *pool;
    struct fo_plan *pl = fo_plan_new(N, FO_ECHO, 0);
    struct fo_got got[N];

    (void)state;
    tu_snap_take(&snap);
    tmp_path(path, sizeof path, "stdio");
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(setvbuf(f, NULL, _IOFBF, 1 << 16), 0);
    fprintf(f, "before create\n");
    fo_opts(&opt, 2, 1);
    opt.max_tasks_per_worker = 3; /* workers are forked during the map too */
    pool = fo_pool(&opt);
    fprintf(f, "before map\n");
    pl->ops[4].kind = FO_ABORT;
    assert_int_equal(fo_run(pool, pl, 1, got, UINT64_MAX, NULL), PMAP_DONE);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    fclose(f);
    text = slurp(path);
    assert_int_equal(count_substr(text, "before create\n"), 1);
    assert_int_equal(count_substr(text, "before map\n"), 1);
    free(text);
    unlink(path);
    fo_plan_free(pl);
    tu_snap_check(&snap);
}

/* Workers flush what tasks printed and end with _exit: no task output is
 * lost and the host's atexit handlers run in the host only. */
static char out_path[64], atexit_path[64];

static void host_atexit(void)
{
    char line[64];
    int fd = open(atexit_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    int n = snprintf(line, sizeof line, "atexit %ld\n", (long)getpid());

    if (fd >= 0) {
        (void)!write(fd, line, (size_t)n);
        close(fd);
    }
}

static int stdio_child(void *arg)
{
    enum { N = 20 };
    struct fo_op ops[N];
    struct fo_plan pl;
    pmap_options opt;
    pmap_pool *pool;
    int fd, k;

    (void)arg;
    fd = open(out_path, O_WRONLY | O_TRUNC);
    if (fd < 0 || dup2(fd, 1) != 1)
        return 1;
    close(fd);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    if (atexit(host_atexit) != 0)
        return 2;
    printf("host before\n"); /* not flushed when the workers are forked */
    memset(&pl, 0, sizeof pl);
    memset(ops, 0, sizeof ops);
    for (k = 0; k < N; k++) {
        ops[k].kind = FO_PRINTF;
        ops[k].arg = 1;
    }
    pl.ops = ops;
    pl.n = N;
    pl.fail_at = UINT64_MAX;
    fo_opts(&opt, 2, 1);
    opt.max_tasks_per_worker = 4; /* some workers end during the map */
    pool = pmap_pool_create(fo_task, NULL, &opt);
    if (pool == NULL)
        return 3;
    {
        pmap_iter *it = pmap_imap(pool, fo_gen, &pl);
        pmap_item item;
        int n = 0;

        while (it != NULL && pmap_next(it, &item) == PMAP_OK)
            n += item.status == PMAP_OK;
        pmap_iter_free(it);
        if (n != N)
            return 4;
    }
    if (pmap_pool_destroy(pool) != PMAP_OK)
        return 5;
    printf("host after\n");
    exit(0); /* runs host_atexit here, and flushes stdout */
}

static void test_stdio_flushed_atexit_host_only(void **state)
{
    struct tu_snap snap;
    char *text, line[64];
    pid_t pid, r;
    int st, k;

    (void)state;
    tu_snap_take(&snap);
    tmp_path(out_path, sizeof out_path, "out");
    tmp_path(atexit_path, sizeof atexit_path, "atexit");
    fflush(NULL);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(stdio_child(NULL) + 100); /* stdio_child exits 0 itself on success */
    do {
        r = waitpid(pid, &st, 0);
    } while (r < 0 && errno == EINTR);
    assert_int_equal(r, pid);
    assert_child_ok(st);

    text = slurp(out_path);
    if (count_substr(text, "host before\n") != 1 || count_substr(text, "host after\n") != 1)
        print_message("output was:\n%s", text);
    assert_int_equal(count_substr(text, "host before\n"), 1);
    assert_int_equal(count_substr(text, "host after\n"), 1);
    for (k = 0; k < 20; k++) {
        snprintf(line, sizeof line, "task output %d\n", k);
        assert_int_equal(count_substr(text, line), 1);
    }
    free(text);
    text = slurp(atexit_path);
    snprintf(line, sizeof line, "atexit %ld\n", (long)pid);
    assert_string_equal(text, line);
    free(text);
    unlink(out_path);
    unlink(atexit_path);
    tu_snap_check(&snap);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, arm, disarm)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_signals_untouched),
        T(test_sigpipe_never_reaches_host),
        T(test_sigchld_ignored),
        T(test_host_child_status),
        T(test_host_handlers_not_in_worker),
        T(test_workers_ignore_sigint),
        T(test_eintr_storm),
        T(test_caller_death),
        T(test_pool_outlives_thread),
        T(test_worker_holds_only_its_pipes),
        T(test_host_fds_between_pools_kept),
        T(test_two_pools_interleaved),
        T(test_pools_in_two_threads),
        T(test_inherited_pool_inert),
        T(test_inherited_iter_inert),
        T(test_closed_stdio),
        T(test_stdio_not_duplicated),
        T(test_stdio_flushed_atexit_host_only),
    };

    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
