/*
 * The journal (DESIGN §9): stored items replayed in place of running their
 * records, in both order modes; a caller killed mid-map resumes; torn and
 * scribbled tails are cut; another input, a second process and a file
 * that is not a journal are refused; what is and is not stored.
 *
 * The task reports every call through a pipe made before any pool (the
 * index and the pid of the worker's parent, so that calls made by the
 * workers of a killed child are told apart). Workers never assert.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include "pmap.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

#define MAXREC 4096

enum mode {
    M_PLAIN,  /* result_of(i) */
    M_MIXED,  /* as M_PLAIN, but every fifth record is a task error with a message */
    M_CRASH,  /* as M_MIXED, and record `crash_at` kills its worker */
    M_SLOW,   /* as M_PLAIN, a millisecond per record */
    M_SLOW40, /* as M_PLAIN, 40 ms per record */
    M_BIG     /* as M_PLAIN, but every third result is big_len bytes of a pattern */
};

/* Results of M_BIG: larger than the journal's 1 MiB buffers. */
#define BIG_LEN ((size_t)1536 << 10)

struct shared {
    volatile int mode;
    volatile uint64_t crash_at;
    /* Calls counted here instead of the pipe (too many for it). */
    volatile int quiet;
    atomic_uint ncalls;
};

struct call {
    uint32_t index;
    int32_t ppid;
};

static struct shared *sh;

/* The library's hash (journal.c), to write a journal by hand from its
 * documented format. The test links the static library. */
uint64_t pmap__hash64(const void *p, size_t n, uint64_t seed);

#ifdef PMAP_TEST_WRAP_FDATASYNC
/* Linked with --wrap=fdatasync: the library's calls are counted here. */
int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
static atomic_uint syncs;
/* Set by tests of the reader alone, which open hundreds of files: a sync
 * each on a real disk took seconds. */
static int no_sync;

int __wrap_fdatasync(int fd)
{
    atomic_fetch_add(&syncs, 1u);
    return no_sync ? 0 : __real_fdatasync(fd);
}
#define SKIP_SYNC(on) (no_sync = (on))
#else
#define SKIP_SYNC(on) ((void)0)
#endif
static int calls_pipe[2] = {-1, -1};
static char dir[256];
static char path[300];

static void sleep_ms(unsigned ms)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t result_of(uint64_t i)
{
    return i * 2654435761u + 1u;
}

static int task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct shared *s = ctx;
    struct call c;
    uint64_t i, v;
    ssize_t n;

    if (len != sizeof i)
        return 100;
    memcpy(&i, param, sizeof i);
    if (s->quiet) {
        atomic_fetch_add(&s->ncalls, 1u);
        goto compute;
    }
    c.index = (uint32_t)i;
    c.ppid = (int32_t)getppid();
    do
        n = write(calls_pipe[1], &c, sizeof c);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof c)
        return 101;
compute:
    if (s->mode == M_SLOW)
        sleep_ms(1);
    if (s->mode == M_SLOW40)
        sleep_ms(40);
    if (s->mode == M_BIG && i % 3 == 0) {
        unsigned char *b = pmap_buf_reserve(out, BIG_LEN);
        size_t k;

        if (b == NULL)
            return 102;
        for (k = 0; k < BIG_LEN; k++)
            b[k] = (unsigned char)(k * 7 + i);
        return 0;
    }
    if (s->mode == M_CRASH && i == s->crash_at)
        (void)raise(SIGKILL);
    if ((s->mode == M_MIXED || s->mode == M_CRASH) && i % 5 == 2) {
        (void)pmap_buf_set(out, "bad record", 10);
        return 40 + (int)(i % 3);
    }
    /* Results of several sizes, so entries are not all alike. */
    v = result_of(i);
    if (i % 7 == 0)
        return pmap_buf_set(out, NULL, 0);
    return pmap_buf_set(out, &v, i % 2 ? sizeof v : 5);
}

/* Calls made since the last drain by workers whose parent is `ppid`
 * (0: any), per index into per[] (may be NULL); their total. */
static unsigned drain_calls(pid_t ppid, unsigned char *per)
{
    struct call c[256];
    unsigned total = 0;
    ssize_t n, k;

    for (;;) {
        n = read(calls_pipe[0], c, sizeof c);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (k = 0; k < n / (ssize_t)sizeof c[0]; k++) {
            if (ppid != 0 && c[k].ppid != (int32_t)ppid)
                continue;
            total++;
            if (per != NULL && c[k].index < MAXREC && per[c[k].index] < 255)
                per[c[k].index]++;
        }
    }
    return total;
}

static pmap_pool *make_pool(unsigned retries)
{
    pmap_options opt;
    pmap_pool *pool;

    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_retries = retries;
    pool = pmap_pool_create(task, sh, &opt);
    assert_non_null(pool);
    return pool;
}

/* What a map handed out, by index. */
struct item {
    int seen, status, code;
    size_t len;
    unsigned char data[16];
};

/* Records over [0, n): record i is i, except from `alter_from` on, where
 * it is i + 1000000 (another input). */
struct gen {
    uint64_t next, n, alter_from;
};

static int gen(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    uint64_t v;

    if (g->next >= g->n)
        return 0;
    v = g->next++;
    if (v >= g->alter_from)
        v += 1000000;
    return pmap_buf_set(param, &v, sizeof v) == PMAP_OK ? 1 : -1;
}

/* Run a map over [0, n) with journal j (NULL: none) into items[]; the
 * status pmap_next ended with. Items must come in input order if ordered. */
static int run_map(pmap_pool *pool, pmap_journal *j, uint64_t n, int ordered, struct item *items,
                   uint64_t alter_from)
{
    struct gen g = {0, n, alter_from};
    pmap_iter *it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
    pmap_item item;
    uint64_t got = 0;
    int rc, frc;

    assert_non_null(it);
    if (j != NULL)
        assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_true(item.index < n);
        if (ordered)
            assert_int_equal(item.index, got);
        assert_int_equal(items[item.index].seen, 0);
        assert_true(item.len <= sizeof items[0].data);
        items[item.index].seen = 1;
        items[item.index].status = item.status;
        items[item.index].code = item.code;
        items[item.index].len = item.len;
        if (item.len)
            memcpy(items[item.index].data, item.data, item.len);
        got++;
    }
    frc = pmap_iter_free(it);
    assert_int_equal(frc, rc == PMAP_DONE ? PMAP_OK : rc);
    return rc;
}

/* The item record i gives in mode M_MIXED (crashed: PMAP_ECRASH). */
static void check_item(const struct item *it, uint64_t i, int mode)
{
    uint64_t v = result_of(i);

    assert_int_equal(it->seen, 1);
    if (mode != M_PLAIN && i % 5 == 2) {
        assert_int_equal(it->status, PMAP_ETASK);
        assert_int_equal(it->code, 40 + (int)(i % 3));
        assert_int_equal(it->len, 10);
        assert_memory_equal(it->data, "bad record", 10);
        return;
    }
    assert_int_equal(it->status, PMAP_OK);
    assert_int_equal(it->code, 0);
    if (i % 7 == 0) {
        assert_int_equal(it->len, 0);
        return;
    }
    assert_int_equal(it->len, i % 2 ? sizeof v : 5);
    assert_memory_equal(it->data, &v, it->len);
}

static void check_all(const struct item *items, uint64_t n, int mode)
{
    uint64_t i;

    for (i = 0; i < n; i++)
        check_item(&items[i], i, mode);
}

static long file_size(const char *p)
{
    struct stat st;

    if (stat(p, &st) != 0)
        return -1;
    return (long)st.st_size;
}

static void fresh_path(const char *name)
{
    (void)snprintf(path, sizeof path, "%s/%s", dir, name);
    (void)unlink(path);
}

/* ------------------------------------------------------------------------ */

/* A map run twice gives the same items, the second time without a single
 * task call, in both order modes, over one journal reopened and over one
 * journal serving several maps in turn; PMAP_ETASK items keep their code
 * and message. */
static void test_run_twice(void **state)
{
    static struct item a[MAXREC], b[MAXREC];
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    uint64_t n = 600;
    long size;
    int ordered;

    (void)state;
    fresh_path("twice.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_MIXED;
    for (ordered = 1; ordered >= 0; ordered--) {
        (void)unlink(path);
        memset(a, 0, sizeof a);
        memset(b, 0, sizeof b);
        j = pmap_journal_open(path);
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), 0);
        (void)drain_calls(0, NULL);
        assert_int_equal(run_map(pool, j, n, ordered, a, UINT64_MAX), PMAP_DONE);
        assert_int_equal(drain_calls(0, NULL), n);
        check_all(a, n, M_MIXED);
        assert_int_equal(pmap_journal_count(j), n);
        /* The same journal, the next map: everything replayed. */
        assert_int_equal(run_map(pool, j, n, !ordered, b, UINT64_MAX), PMAP_DONE);
        assert_int_equal(drain_calls(0, NULL), 0);
        assert_memory_equal(a, b, sizeof a[0] * n);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        size = file_size(path);
        /* 32 bytes per item and its result, after a 32-byte header. */
        assert_true(size > 32 + 32 * (long)n && size <= 32 + 42 * (long)n);

        /* Reopened: the same again. */
        memset(b, 0, sizeof b);
        j = pmap_journal_open(path);
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), n);
        assert_int_equal(run_map(pool, j, n, ordered, b, UINT64_MAX), PMAP_DONE);
        assert_int_equal(drain_calls(0, NULL), 0);
        assert_memory_equal(a, b, sizeof a[0] * n);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        assert_int_equal(file_size(path), size);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A longer input over a journal of a shorter one: the stored prefix is
 * replayed, the rest computed, and the journal then holds all of it. */
static void test_extend(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    unsigned char per[MAXREC] = {0};
    pmap_pool *pool;
    pmap_journal *j;
    uint64_t i;

    (void)state;
    fresh_path("extend.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_PLAIN;
    j = pmap_journal_open(path);
    assert_non_null(j);
    assert_int_equal(run_map(pool, j, 100, 1, a, UINT64_MAX), PMAP_DONE);
    memset(a, 0, sizeof a);
    (void)drain_calls(0, NULL);
    assert_int_equal(run_map(pool, j, 3000, 0, a, UINT64_MAX), PMAP_DONE);
    check_all(a, 3000, M_PLAIN);
    assert_int_equal(drain_calls(0, per), 2900);
    for (i = 0; i < 3000; i++)
        assert_int_equal(per[i], i < 100 ? 0 : 1);
    assert_int_equal(pmap_journal_count(j), 3000);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A caller SIGKILLed in the middle of a map (a forked child running it)
 * resumes: every item correct, and none of the items it had handed out
 * is computed again. */
static void test_sigkill_resume(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    unsigned char per[MAXREC] = {0}, handed[MAXREC] = {0};
    int rep[2];
    uint64_t n = 1200, i, got = 0;
    pmap_pool *pool;
    pmap_journal *j;
    pid_t pid;
    int wst;

    (void)state;
    fresh_path("killed.pmj");
    tu_snap_take(&snap);
    assert_int_equal(pipe(rep), 0);
    sh->mode = M_SLOW;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pmap_options opt;
        pmap_pool *cp;
        pmap_iter *it;
        pmap_item item;
        struct gen g = {0, n, UINT64_MAX};
        uint32_t idx;

        close(rep[0]);
        j = pmap_journal_open(path);
        pmap_options_init(&opt);
        opt.workers = 2;
        cp = pmap_pool_create(task, sh, &opt);
        if (j == NULL || cp == NULL)
            _exit(2);
        it = pmap_imap(cp, gen, &g);
        if (it == NULL || pmap_iter_journal(it, j) != PMAP_OK)
            _exit(3);
        /* Reports every item handed out, then keeps going until killed. */
        while (pmap_next(it, &item) == PMAP_OK) {
            idx = (uint32_t)item.index;
            if (write(rep[1], &idx, sizeof idx) != (ssize_t)sizeof idx)
                _exit(4);
        }
        _exit(5);
    }
    close(rep[1]);
    while (got < 200) {
        uint32_t idx;
        ssize_t r = read(rep[0], &idx, sizeof idx);

        if (r < 0 && errno == EINTR)
            continue;
        assert_int_equal(r, sizeof idx);
        assert_true(idx < n);
        handed[idx] = 1;
        got++;
    }
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFSIGNALED(wst));
    /* What it reported before the kill landed was handed out too. */
    for (;;) {
        uint32_t idx;
        ssize_t r = read(rep[0], &idx, sizeof idx);

        if (r < 0 && errno == EINTR)
            continue;
        if (r != (ssize_t)sizeof idx)
            break;
        handed[idx] = 1;
    }
    close(rep[0]);

    /* The lock went with the child (its workers never held it). */
    j = pmap_journal_open(path);
    assert_non_null(j);
    assert_true(pmap_journal_count(j) >= got);
    sh->mode = M_PLAIN;
    pool = make_pool(0);
    assert_int_equal(run_map(pool, j, n, 1, a, UINT64_MAX), PMAP_DONE);
    check_all(a, n, M_PLAIN);
    (void)drain_calls(getpid(), per);
    for (i = 0; i < n; i++) {
        if (handed[i])
            assert_int_equal(per[i], 0);
        else
            assert_in_range(per[i], 0, 2);
    }
    assert_int_equal(pmap_journal_count(j), n);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    /* The killed child's workers may still be on their way out: their
     * calls are not this test's. */
    (void)drain_calls(0, NULL);
    tu_snap_check(&snap);
}

/* Build a journal of n items of mode M_PLAIN at `path`. */
static void build(pmap_pool *pool, uint64_t n)
{
    static struct item a[MAXREC];
    pmap_journal *j;

    memset(a, 0, sizeof a);
    (void)unlink(path);
    j = pmap_journal_open(path);
    assert_non_null(j);
    assert_int_equal(run_map(pool, j, n, 1, a, UINT64_MAX), PMAP_DONE);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    (void)drain_calls(0, NULL);
}

/* Where the last entry of the journal at p starts, and its index. */
static long last_entry(const char *p, uint64_t *index)
{
    unsigned char h[32];
    long size = file_size(p), pos = 32, last = -1;
    int fd = open(p, O_RDONLY);

    assert_true(fd >= 0);
    while (pos + 32 <= size) {
        assert_int_equal(pread(fd, h, sizeof h, pos), (ssize_t)sizeof h);
        last = pos;
        memcpy(index, h + 8, sizeof *index); /* little-endian machines */
        pos += 32 + (long)((uint32_t)h[4] | (uint32_t)h[5] << 8);
    }
    assert_int_equal(close(fd), 0);
    assert_int_equal(pos, size);
    return last;
}

static void write_at(const char *p, long off, const void *data, size_t n)
{
    int fd = open(p, O_WRONLY);

    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, data, n, off), (ssize_t)n);
    assert_int_equal(close(fd), 0);
}

/* A journal cut by a few bytes, or with its last entry scribbled on,
 * opens with every entry before it and the map resumes: only the lost
 * record runs again. */
static void test_damaged_tail(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    unsigned char per[MAXREC] = {0};
    pmap_pool *pool;
    pmap_journal *j;
    uint64_t n = 50, i, lost;
    long size, start;
    int round;

    (void)state;
    fresh_path("tail.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_PLAIN;
    for (round = 0; round < 2; round++) {
        build(pool, n);
        size = file_size(path);
        start = last_entry(path, &lost);
        if (round == 0)
            assert_int_equal(truncate(path, size - 3), 0);
        else
            write_at(path, start + 8, "XXXX", 4); /* the entry's index */
        j = pmap_journal_open(path);
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), n - 1);
        /* The torn entry is gone from the file. */
        assert_int_equal(file_size(path), start);
        memset(a, 0, sizeof a);
        memset(per, 0, sizeof per);
        assert_int_equal(run_map(pool, j, n, round, a, UINT64_MAX), PMAP_DONE);
        check_all(a, n, M_PLAIN);
        assert_int_equal(drain_calls(0, per), 1);
        for (i = 0; i < n; i++)
            assert_int_equal(per[i], i == lost);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        assert_int_equal(file_size(path), size);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* Another input: the map hands out the items before the first record
 * that differs, then ends with PMAP_EJOURNAL (again from pmap_next and
 * from pmap_iter_free); the pool stays usable and the journal unchanged. */
static void test_other_input(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    struct gen g = {0, 100, 40};
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0, i;
    long size;
    int rc, ordered;

    (void)state;
    fresh_path("other.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_PLAIN;
    build(pool, 100);
    size = file_size(path);
    j = pmap_journal_open(path);
    assert_non_null(j);
    for (ordered = 1; ordered >= 0; ordered--) {
        g.next = 0;
        got = 0;
        memset(a, 0, sizeof a);
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            assert_true(item.index < 40);
            a[item.index].seen++;
            got++;
        }
        assert_int_equal(rc, PMAP_EJOURNAL);
        assert_int_equal(pmap_next(it, &item), PMAP_EJOURNAL);
        assert_int_equal(got, 40);
        for (i = 0; i < 40; i++)
            assert_int_equal(a[i].seen, 1);
        assert_int_equal(pmap_iter_free(it), PMAP_EJOURNAL);
    }
    assert_int_equal(drain_calls(0, NULL), 0);
    assert_int_equal(pmap_journal_count(j), 100);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(file_size(path), size);
    /* The pool is still fine. */
    memset(a, 0, sizeof a);
    assert_int_equal(run_map(pool, NULL, 30, 1, a, UINT64_MAX), PMAP_DONE);
    check_all(a, 30, M_PLAIN);
    (void)drain_calls(0, NULL);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* One process at a time: a second process gets EWOULDBLOCK; the workers
 * of a pool (and a fork server) never hold the lock, so after close the
 * same process reopens at once while they run. */
static void test_locked(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    pmap_journal *j, *j2;
    pid_t pid;
    int wst, sm;

    (void)state;
    fresh_path("locked.pmj");
    tu_snap_take(&snap);
    for (sm = 0; sm < 2; sm++) {
        (void)unlink(path);
        memset(a, 0, sizeof a);
        j = pmap_journal_open(path);
        assert_non_null(j);
        /* Workers forked after the open (by the caller, or by a server forked
         * after it), and replacements forked while a map runs over it (a
         * crash), must not keep the descriptor. */
        pmap_options_init(&opt);
        opt.workers = 2;
        opt.start_method = sm ? PMAP_START_FORKSERVER : PMAP_START_FORK;
        pool = pmap_pool_create(task, sh, &opt);
        assert_non_null(pool);
        sh->mode = M_CRASH;
        sh->crash_at = 3;
        assert_int_equal(run_map(pool, j, 20, 1, a, UINT64_MAX), PMAP_DONE);
        (void)drain_calls(0, NULL);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            pmap_journal *k = pmap_journal_open(path);

            _exit(k == NULL && errno == EWOULDBLOCK ? 0 : 1);
        }
        assert_int_equal(waitpid(pid, &wst, 0), pid);
        assert_true(WIFEXITED(wst));
        assert_int_equal(WEXITSTATUS(wst), 0);
        /* A second open in this process is another holder as well. */
        j2 = pmap_journal_open(path);
        assert_null(j2);
        assert_int_equal(errno, EWOULDBLOCK);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        j = pmap_journal_open(path);
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), 19);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    tu_snap_check(&snap);
}

/* A text file is not a journal: EBADMSG, and it stays byte-identical. */
static void test_not_journal(void **state)
{
    static const char text[] = "x = 1\ny = 2\nthis is somebody's notes file\n";
    struct tu_snap snap;
    char back[sizeof text];
    struct stat st0, st1;
    int fd;

    (void)state;
    fresh_path("notes.txt");
    tu_snap_take(&snap);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    assert_int_equal(close(fd), 0);
    assert_int_equal(stat(path, &st0), 0);
    errno = 0;
    assert_null(pmap_journal_open(path));
    assert_int_equal(errno, EBADMSG);
    /* Shorter than a header, and not the start of one. */
    write_at(path, 0, "x", 1);
    assert_null(pmap_journal_open(path));
    assert_int_equal(errno, EBADMSG);
    write_at(path, 0, "x", 1);
    assert_int_equal(stat(path, &st1), 0);
    assert_int_equal(st1.st_size, st0.st_size);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, back, sizeof back), (ssize_t)(sizeof text - 1));
    assert_int_equal(close(fd), 0);
    assert_memory_equal(back, text, sizeof text - 1);
    /* A directory is not one either. */
    assert_null(pmap_journal_open(dir));
    tu_snap_check(&snap);
}

/* Misuse: NULL arguments, attaching after the first pmap_next, closing a
 * journal an iterator uses, a journal used by two iterators. */
static void test_misuse(void **state)
{
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    pmap_iter *it;
    pmap_item item;
    struct gen g = {0, 10, UINT64_MAX};
    int rc;

    (void)state;
    fresh_path("misuse.pmj");
    tu_snap_take(&snap);
    errno = 0;
    assert_null(pmap_journal_open(NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(pmap_journal_close(NULL), PMAP_OK);
    assert_int_equal(pmap_journal_count(NULL), 0);
    assert_int_equal(pmap_iter_journal(NULL, NULL), PMAP_EINVAL);
    assert_string_equal(pmap_strerror(PMAP_EJOURNAL), "the journal cannot be used");

    pool = make_pool(0);
    sh->mode = M_PLAIN;
    j = pmap_journal_open(path);
    assert_non_null(j);
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_iter_journal(it, NULL), PMAP_EINVAL);
    assert_int_equal(pmap_next(it, &item), PMAP_OK);
    assert_int_equal(pmap_iter_journal(it, j), PMAP_EINVAL);
    while ((rc = pmap_next(it, &item)) == PMAP_OK)
        ;
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_journal_count(j), 0);

    g.next = 0;
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
    assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
    assert_int_equal(pmap_journal_close(j), PMAP_EBUSY);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_journal_count(j), 0);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    (void)drain_calls(0, NULL);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A crashed item is not stored: it runs again next time, and nothing
 * else does. Retried to success, it is stored like any other. */
static void test_crash_not_stored(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    unsigned char per[MAXREC] = {0};
    pmap_pool *pool;
    pmap_journal *j;
    uint64_t n = 40, i;

    (void)state;
    fresh_path("crash.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_CRASH;
    sh->crash_at = 12;
    j = pmap_journal_open(path);
    assert_non_null(j);
    assert_int_equal(run_map(pool, j, n, 0, a, UINT64_MAX), PMAP_DONE);
    assert_int_equal(a[12].status, PMAP_ECRASH);
    assert_int_equal(a[12].code, SIGKILL);
    assert_int_equal(pmap_journal_count(j), n - 1);
    (void)drain_calls(0, NULL);
    sh->mode = M_MIXED;
    memset(a, 0, sizeof a);
    assert_int_equal(run_map(pool, j, n, 1, a, UINT64_MAX), PMAP_DONE);
    check_all(a, n, M_MIXED);
    assert_int_equal(drain_calls(0, per), 1);
    for (i = 0; i < n; i++)
        assert_int_equal(per[i], i == 12);
    assert_int_equal(pmap_journal_count(j), n);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* Read the file at `p` whole; its length in *n. */
static unsigned char *slurp(const char *p, size_t *n)
{
    long size = file_size(p);
    unsigned char *b;
    int fd;

    assert_true(size >= 0);
    b = malloc((size_t)size + 1);
    assert_non_null(b);
    fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, b, (size_t)size), (ssize_t)size);
    assert_int_equal(close(fd), 0);
    *n = (size_t)size;
    return b;
}

static void spill(const char *p, const unsigned char *b, size_t n)
{
    int fd;

    /* A new file rather than a truncated one: ext4 flushes a file
     * truncated and rewritten when it is closed (auto_da_alloc), which
     * made the table below take seconds. */
    (void)unlink(p);
    fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);

    assert_true(fd >= 0);
    if (n > 0)
        assert_int_equal(write(fd, b, n), (ssize_t)n);
    assert_int_equal(close(fd), 0);
}

/* The reader on damaged files, a table of every cut and every flipped
 * byte of a small journal: never a crash; the header damaged is EBADMSG
 * with the file untouched; otherwise exactly the entries before the
 * damage are kept and the file is cut after them. And entries that claim
 * more bytes than the file holds are refused without allocating them. */
static void test_reader_table(void **state)
{
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    unsigned char *good, *bad;
    size_t size, ends[8], nent = 0, pos, k;
    char copy[320];

    (void)state;
    fresh_path("table.pmj");
    /* Hundreds of opens and closes, each with its fdatasync: on a memory
     * file system where there is one (the reader is the same there). */
    if (access("/dev/shm", W_OK) == 0)
        (void)snprintf(copy, sizeof copy, "/dev/shm/pmap-table-%ld.pmj", (long)getpid());
    else
        (void)snprintf(copy, sizeof copy, "%s/table-copy.pmj", dir);
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_PLAIN;
    /* Records 0..3: results of 0, 8, 5 and 8 bytes (see task). */
    build(pool, 4);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    good = slurp(path, &size);
    /* Entry ends, in file order (one worker's results may come first). */
    for (pos = 32; pos < size; nent++) {
        uint32_t len = (uint32_t)good[pos + 4] | (uint32_t)good[pos + 5] << 8;

        pos += 32 + len;
        ends[nent] = pos;
    }
    assert_int_equal(nent, 4);
    assert_int_equal(pos, size);
    bad = malloc(size);
    assert_non_null(bad);
    SKIP_SYNC(1);

    /* Every cut. */
    for (pos = 0; pos <= size; pos++) {
        uint64_t want = 0;
        size_t keep = pos == 0 ? 0 : 32;

        for (k = 0; k < nent; k++)
            if (ends[k] <= pos) {
                want = k + 1;
                keep = ends[k];
            }
        spill(copy, good, pos);
        j = pmap_journal_open(copy);
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), want);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        /* A cut header is rewritten whole. */
        assert_int_equal(file_size(copy), (long)(pos < 32 ? 32 : keep));
    }
    /* Every flipped byte. */
    for (pos = 0; pos < size; pos++) {
        uint64_t want = 0;
        size_t keep = 32;

        memcpy(bad, good, size);
        bad[pos] ^= 0x5a;
        for (k = 0; k < nent && ends[k] <= pos; k++) {
            want = k + 1;
            keep = ends[k];
        }
        spill(copy, bad, size);
        j = pmap_journal_open(copy);
        if (pos < 32) {
            unsigned char *back;

            assert_null(j);
            assert_int_equal(errno, EBADMSG);
            back = slurp(copy, &k);
            assert_int_equal(k, size);
            assert_memory_equal(back, bad, size);
            free(back);
            continue;
        }
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), want);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        assert_int_equal(file_size(copy), (long)keep);
    }
    /* An entry that claims 4 GiB of result (and one that claims a little
     * more than the file has): cut, nothing of that size allocated. */
    for (k = 0; k < 2; k++) {
        memcpy(bad, good, size);
        if (k == 0)
            memset(bad + 32 + 4, 0xff, 4);
        else
            bad[32 + 4] = (unsigned char)(size - 32 - 32 + 1);
        bad[32 + 5] = k == 0 ? 0xff : 0;
        spill(copy, bad, size);
        j = pmap_journal_open(copy);
        assert_non_null(j);
        assert_int_equal(pmap_journal_count(j), 0);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        assert_int_equal(file_size(copy), 32);
    }
    SKIP_SYNC(0);
    free(bad);
    free(good);
    (void)unlink(copy);
    tu_snap_check(&snap);
}

/* Results larger than the journal's buffers are written and replayed
 * whole, in both order modes, and survive a reopen. */
static void test_big_results(void **state)
{
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    uint64_t n = 12, got;
    int round, rc;

    (void)state;
    fresh_path("big.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_BIG;
    for (round = 0; round < 3; round++) {
        struct gen g = {0, n, UINT64_MAX};
        pmap_iter *it;
        pmap_item item;

        j = pmap_journal_open(path);
        assert_non_null(j);
        it = round == 1 ? pmap_imap_unordered(pool, gen, &g) : pmap_imap(pool, gen, &g);
        assert_non_null(it);
        assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
        got = 0;
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            assert_int_equal(item.status, PMAP_OK);
            if (item.index % 3 == 0) {
                const unsigned char *b = item.data;
                size_t k;

                assert_int_equal(item.len, BIG_LEN);
                for (k = 0; k < BIG_LEN; k += 4099)
                    assert_int_equal(b[k], (unsigned char)(k * 7 + item.index));
                assert_int_equal(b[BIG_LEN - 1], (unsigned char)((BIG_LEN - 1) * 7 + item.index));
            } else {
                assert_true(item.len <= 8);
            }
            got++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(got, n);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(pmap_journal_count(j), n);
        assert_int_equal(pmap_journal_close(j), PMAP_OK);
        assert_int_equal(drain_calls(0, NULL), round == 0 ? n : 0);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* A write that fails (here the file size limit: EFBIG) ends the map with
 * PMAP_EJOURNAL; every item handed out before is in the file, the journal
 * refuses further maps, and the pool stays usable. */
static void test_write_fails(void **state)
{
    static struct item a[MAXREC];
    struct tu_snap snap;
    struct rlimit old, lim;
    struct sigaction ign, prev;
    pmap_pool *pool;
    pmap_journal *j;
    struct gen g = {0, 3000, UINT64_MAX};
    pmap_iter *it;
    pmap_item item;
    uint64_t handed = 0, i;
    int rc;

    (void)state;
    fresh_path("full.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_PLAIN;
    j = pmap_journal_open(path);
    assert_non_null(j);
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    assert_int_equal(sigaction(SIGXFSZ, &ign, &prev), 0);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 16 << 10; /* about 400 entries */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    memset(a, 0, sizeof a);
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        assert_int_equal(item.index, handed);
        a[item.index].seen = 1;
        handed++;
    }
    assert_int_equal(rc, PMAP_EJOURNAL);
    assert_int_equal(pmap_iter_free(it), PMAP_EJOURNAL);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    assert_int_equal(sigaction(SIGXFSZ, &prev, NULL), 0);
    assert_true(handed < 3000);
    /* Broken: no more maps over it. */
    g.next = 0;
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_iter_journal(it, j), PMAP_EJOURNAL);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_journal_close(j), PMAP_EJOURNAL);
    (void)drain_calls(0, NULL);

    /* Reopened: the torn end is cut, and every item handed out is there
     * (only the others run). */
    j = pmap_journal_open(path);
    assert_non_null(j);
    assert_true(pmap_journal_count(j) >= handed);
    memset(a, 0, sizeof a);
    {
        unsigned char *per = calloc(MAXREC, 1);

        assert_non_null(per);
        assert_int_equal(run_map(pool, j, 3000, 1, a, UINT64_MAX), PMAP_DONE);
        check_all(a, 3000, M_PLAIN);
        (void)drain_calls(0, per);
        for (i = 0; i < handed; i++)
            assert_int_equal(per[i], 0);
        free(per);
    }
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* Append one entry in the documented format (version 1) to b. */
static size_t put_entry(unsigned char *b, uint64_t index, uint64_t param, uint32_t kind,
                        int32_t code, const void *data, uint32_t len)
{
    uint64_t ph = pmap__hash64(&param, sizeof param, 0x706172616d686173ull);
    uint32_t check;

    memcpy(b + 4, &len, 4);
    memcpy(b + 8, &index, 8);
    memcpy(b + 16, &ph, 8);
    memcpy(b + 24, &code, 4);
    memcpy(b + 28, &kind, 4);
    memcpy(b + 32, data, len);
    check = (uint32_t)pmap__hash64(b + 4, 28 + len, 0x656e747279636b31ull);
    memcpy(b, &check, 4);
    return 32 + len;
}

/* A journal written by hand from the format in journal.c, with stored
 * indexes far apart (the sparse index) and one index stored twice (the
 * first entry counts): the map replays exactly those, computes the rest. */
static void test_hand_written(void **state)
{
    static unsigned char file[4096];
    static const unsigned char magic[8] = {0x89, 'P', 'M', 'A', 'P', 'J', '\r', '\n'};
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    struct gen g = {0, 280001, UINT64_MAX};
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0, v;
    uint32_t u;
    size_t n = 0;
    int rc, ordered;

    (void)state;
    fresh_path("hand.pmj");
    tu_snap_take(&snap);
    memcpy(file, magic, 8);
    u = 1;
    memcpy(file + 8, &u, 4);
    u = 32;
    memcpy(file + 12, &u, 4);
    memcpy(file + 16, &u, 4);
    u = (uint32_t)pmap__hash64(file, 28, 0x6a6f75726e616c31ull);
    memcpy(file + 28, &u, 4);
    n = 32;
    n += put_entry(file + n, 280000, 280000, 0, 0, "last", 4);
    n += put_entry(file + n, 3, 3, 1, -9, "task said no", 12);
    n += put_entry(file + n, 140000, 140000, 0, 0, "middle", 6);
    n += put_entry(file + n, 3, 3, 0, 0, "ignored", 7);
    spill(path, file, n);
    j = pmap_journal_open(path);
    assert_non_null(j);
    assert_int_equal(pmap_journal_count(j), 3);
    assert_int_equal(file_size(path), (long)n);
    pool = make_pool(0);
    sh->mode = M_PLAIN;
    sh->quiet = 1;
    for (ordered = 1; ordered >= 0; ordered--) {
        g.next = 0;
        got = 0;
        atomic_store(&sh->ncalls, 0u);
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            got++;
            if (item.index == 3) {
                assert_int_equal(item.status, PMAP_ETASK);
                assert_int_equal(item.code, -9);
                assert_int_equal(item.len, 12);
                assert_memory_equal(item.data, "task said no", 12);
            } else if (item.index == 140000 || item.index == 280000) {
                assert_int_equal(item.status, PMAP_OK);
                assert_int_equal(item.len, item.index == 140000 ? 6 : 4);
                assert_memory_equal(item.data, item.index == 140000 ? "middle" : "last", item.len);
            } else if (item.index % 7 != 0) {
                assert_int_equal(item.status, PMAP_OK);
                v = result_of(item.index);
                assert_int_equal(item.len, item.index % 2 ? sizeof v : 5);
                assert_memory_equal(item.data, &v, item.len);
            }
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(got, 280001);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        /* The first map stored the rest. */
        assert_int_equal(pmap_journal_count(j), 280001);
        assert_int_equal(atomic_load(&sh->ncalls), ordered ? 280001 - 3 : 0);
    }
    sh->quiet = 0;
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

/* pmap_try_next over a journal, driven by poll on pmap_iter_fd: the same
 * items as pmap_next, computed the first time and replayed the second;
 * attaching after the first pmap_try_next is too late. */
static void test_event_loop(void **state)
{
    static struct item a[2][MAXREC];
    struct tu_snap snap;
    pmap_pool *pool;
    pmap_journal *j;
    uint64_t n = 300;
    int round;

    (void)state;
    fresh_path("evloop.pmj");
    tu_snap_take(&snap);
    pool = make_pool(0);
    sh->mode = M_MIXED;
    j = pmap_journal_open(path);
    assert_non_null(j);
    memset(a, 0, sizeof a);
    for (round = 0; round < 2; round++) {
        struct gen g = {0, n, UINT64_MAX};
        pmap_iter *it = pmap_imap(pool, gen, &g);
        pmap_item item;
        struct pollfd pfd;
        uint64_t got = 0;
        int rc, fd;

        assert_non_null(it);
        assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
        fd = pmap_iter_fd(it);
        assert_true(fd >= 0);
        for (;;) {
            while ((rc = pmap_try_next(it, &item)) == PMAP_OK) {
                struct item *x = &a[round][item.index];

                assert_int_equal(item.index, got);
                x->seen = 1;
                x->status = item.status;
                x->code = item.code;
                x->len = item.len;
                if (item.len)
                    memcpy(x->data, item.data, item.len);
                got++;
            }
            if (rc != PMAP_EAGAIN)
                break;
            pfd.fd = fd;
            pfd.events = POLLIN;
            pfd.revents = 0;
            assert_true(poll(&pfd, 1, pmap_iter_timeout(it)) >= 0 || errno == EINTR);
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(got, n);
        assert_int_equal(pmap_iter_journal(it, j), PMAP_EINVAL); /* too late, even the same one */
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(drain_calls(0, NULL), round == 0 ? n : 0);
        check_all(a[round], n, M_MIXED);
    }
    assert_memory_equal(a[0], a[1], sizeof a[0][0] * n);
    {
        struct gen g = {0, n, UINT64_MAX};
        pmap_iter *it = pmap_imap(pool, gen, &g);
        pmap_item item;
        int rc;

        assert_non_null(it);
        do
            rc = pmap_try_next(it, &item);
        while (rc == PMAP_EAGAIN);
        assert_int_equal(pmap_iter_journal(it, j), PMAP_EINVAL);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        (void)drain_calls(0, NULL);
    }
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}

#ifdef PMAP_TEST_WRAP_FDATASYNC
/* fdatasync while a map runs, at least once a second, but not per pump;
 * and once more when the iterator is freed. */
static void test_sync_periodic(void **state)
{
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    pmap_journal *j;
    struct gen g = {0, 64, UINT64_MAX};
    pmap_iter *it;
    pmap_item item;
    struct timespec t0, t1;
    double secs;
    unsigned during;
    int rc;

    (void)state;
    fresh_path("sync.pmj");
    tu_snap_take(&snap);
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.chunk = 1;
    pool = pmap_pool_create(task, sh, &opt);
    assert_non_null(pool);
    sh->mode = M_SLOW40;
    j = pmap_journal_open(path);
    assert_non_null(j);
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_iter_journal(it, j), PMAP_OK);
    atomic_store(&syncs, 0u);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while ((rc = pmap_next(it, &item)) == PMAP_OK)
        ;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    during = atomic_load(&syncs);
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    /* 64 records of 40 ms on two workers: 1.28 s at the least. */
    assert_true(secs > 1.2);
    assert_true(during >= 1);
    assert_true(during <= (unsigned)secs + 2u);
    assert_int_equal(atomic_load(&syncs), during + 1u);
    assert_int_equal(pmap_journal_close(j), PMAP_OK);
    (void)drain_calls(0, NULL);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
}
#endif

int main(void)
{
    struct rlimit nocore = {0, 0};
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_twice),        cmocka_unit_test(test_extend),
        cmocka_unit_test(test_sigkill_resume),   cmocka_unit_test(test_damaged_tail),
        cmocka_unit_test(test_other_input),      cmocka_unit_test(test_locked),
        cmocka_unit_test(test_not_journal),      cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_crash_not_stored), cmocka_unit_test(test_reader_table),
        cmocka_unit_test(test_big_results),      cmocka_unit_test(test_write_fails),
        cmocka_unit_test(test_hand_written),     cmocka_unit_test(test_event_loop),
#ifdef PMAP_TEST_WRAP_FDATASYNC
        cmocka_unit_test(test_sync_periodic),
#endif
    };
    const char *tmp = getenv("TMPDIR");
    void *p;
    int rc, flags;

    /* Before any pool: every worker, replacements included, shares it. */
    p = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 1;
    sh = p;
    if (pipe(calls_pipe) != 0)
        return 1;
    flags = fcntl(calls_pipe[0], F_GETFL);
    if (flags < 0 || fcntl(calls_pipe[0], F_SETFL, flags | O_NONBLOCK) != 0)
        return 1;
    (void)snprintf(dir, sizeof dir, "%s/pmap-journal-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL)
        return 1;
    (void)setrlimit(RLIMIT_CORE, &nocore);
    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    {
        static const char *names[] = {"twice.pmj", "extend.pmj", "killed.pmj", "tail.pmj",
                                      "other.pmj", "locked.pmj", "notes.txt",  "misuse.pmj",
                                      "crash.pmj", "table.pmj",  "big.pmj",    "full.pmj",
                                      "hand.pmj",  "sync.pmj",   "evloop.pmj"};
        size_t i;

        for (i = 0; i < sizeof names / sizeof names[0]; i++) {
            fresh_path(names[i]);
        }
    }
    (void)rmdir(dir);
    return rc;
}
