/*
 * A scriptable task for the fault and host suites: each parameter record
 * names an operation (echo, sleep, crash, leak, scribble on pipes, ...) that
 * the worker performs. Workers never assert: they report through the result
 * record (struct fo_res) or through how they die; the tests assert in the
 * caller. Include after <cmocka.h>.
 */
#ifndef PMAP_TEST_FAULTOPS_H
#define PMAP_TEST_FAULTOPS_H

#include "io.h"
#include "wire.h"
#include "pmap.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Task timeout for tests that mix timeouts with crashes and expect each
 * status exactly: it must stay far above what a crash or a short task can
 * take on a loaded machine or under valgrind (an abort there costs a stack
 * dump), while the stuck task sleeps far longer still. */
#define FAULT_LIMIT_MS 1000u

#if defined(__SANITIZE_ADDRESS__)
#define FO_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FO_SANITIZED 1
#endif
#endif

enum fo_kind {
    FO_ECHO,         /* result value = index * 3 + 7 */
    FO_SLEEP,        /* sleep arg ms, then echo */
    FO_SLEEP_NOTERM, /* ignore SIGTERM, sleep arg ms, then echo */
    FO_SLEEP_TERMH,  /* catch SIGTERM (no SA_RESTART), sleep arg ms, then echo */
    FO_ABORT,        /* abort() */
    FO_EXIT,         /* _exit(arg) */
    FO_TASKERR,      /* return arg */
    FO_LEAK,         /* keep arg MiB of touched memory, then echo */
    FO_SCRIBBLE,     /* write junk (variant arg) into writable pipes, then echo */
    FO_BIG,          /* a result of arg bytes (see fo_task) */
    FO_FIFOS,        /* value = open pipe descriptors >= 3 */
    FO_RAISE,        /* raise(arg), then echo */
    FO_PRINTF,       /* printf without flushing (arg 0: also write to fds 1, 2), then echo */
    FO_SLEEP_EXIT,   /* sleep arg ms, then _exit(3) */
    FO_CLOSE_IN_EXIT, /* close the pipes it reads from, sleep arg ms, then _exit(3) */
    FO_FDOPEN         /* value = 1 if descriptor arg is open in the worker, else 0 */
};

struct fo_op {
    uint64_t index;
    uint32_t kind;
    uint32_t arg;
};

/* What a task that finishes returns. */
struct fo_res {
    uint64_t index;
    int64_t pid;
    int64_t value;
    int64_t aux;
};

static inline int64_t fo_echo_value(uint64_t index)
{
    return (int64_t)(index * 3u + 7u);
}

/* Pipes the host itself holds (set before creating pools), which a
 * scribbling task must leave alone: they are not libpmap's. */
static int fo_host_fifo[64];
static int fo_host_nfifo;

static inline int fo_is_fifo(int fd)
{
    struct stat st;

    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

static inline int fo_count_fifos(void)
{
    int fd, n = 0;

    for (fd = 3; fd < 1024; fd++)
        n += fo_is_fifo(fd);
    return n;
}

static inline void fo_note_host_fifos(void)
{
    int fd;

    fo_host_nfifo = 0;
    for (fd = 3; fd < 1024 && fo_host_nfifo < 64; fd++)
        if (fo_is_fifo(fd))
            fo_host_fifo[fo_host_nfifo++] = fd;
}

static inline void fo_sleep_ms(unsigned ms)
{
    struct timespec now, end;

    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += ms / 1000u;
    end.tv_nsec += (long)(ms % 1000u) * 1000000L;
    if (end.tv_nsec >= 1000000000L) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000L;
    }
    for (;;) {
        struct timespec left;

        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > end.tv_sec || (now.tv_sec == end.tv_sec && now.tv_nsec >= end.tv_nsec))
            return;
        left.tv_sec = end.tv_sec - now.tv_sec;
        left.tv_nsec = end.tv_nsec - now.tv_nsec;
        if (left.tv_nsec < 0) {
            left.tv_sec--;
            left.tv_nsec += 1000000000L;
        }
        (void)nanosleep(&left, NULL); /* EINTR: go round */
    }
}

static inline void fo_noop_handler(int sig)
{
    (void)sig;
}

/* Junk for a worker's result pipe: arg 0 random bytes; 1 a well-formed
 * header announcing an absurd size; 2 a second READY frame; 3 a results
 * frame for a record that was never sent. */
static inline size_t fo_junk(uint32_t variant, unsigned char *buf)
{
    struct pmap__frame f;

    memset(&f, 0, sizeof f);
    switch (variant) {
    case 1:
        f.kind = PMAP__K_RESULTS;
        f.count = 1;
        f.bytes = (uint64_t)1 << 50;
        pmap__frame_hdr(buf, &f);
        return PMAP__HDR_SIZE;
    case 2:
        f.kind = PMAP__K_READY;
        pmap__frame_hdr(buf, &f);
        pmap__frame_trl(buf + PMAP__HDR_SIZE, &f);
        return PMAP__HDR_SIZE + PMAP__TRL_SIZE;
    case 3:
        f.kind = PMAP__K_RESULTS;
        f.count = 1;
        f.seq = 0x7fff0000u;
        f.bytes = PMAP__REC_SIZE;
        pmap__frame_hdr(buf, &f);
        pmap__rec_hdr(buf + PMAP__HDR_SIZE, 0, 0);
        pmap__frame_trl(buf + PMAP__HDR_SIZE + PMAP__REC_SIZE, &f);
        return PMAP__HDR_SIZE + PMAP__REC_SIZE + PMAP__TRL_SIZE;
    default:
        memcpy(buf, "garbage! this is not a frame at all, not even close.....", 56);
        return 56;
    }
}

static inline void fo_scribble(uint32_t variant)
{
    unsigned char junk[128];
    size_t n = fo_junk(variant, junk);
    int fd, k;

    for (fd = 3; fd < 1024; fd++) {
        int fl, host = 0;

        for (k = 0; k < fo_host_nfifo; k++)
            host |= fo_host_fifo[k] == fd;
        if (host || !fo_is_fifo(fd))
            continue;
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || (fl & O_ACCMODE) != O_WRONLY)
            continue;
        (void)!write(fd, junk, n);
    }
}

/* Memory a FO_LEAK task keeps on purpose (reachable, so leak checkers in
 * the worker stay quiet). */
static void *fo_leaked[256];
static unsigned fo_nleaked;

static inline int fo_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct fo_op op;
    struct fo_res res;

    (void)ctx;
    if (len != sizeof op)
        return 9999;
    memcpy(&op, param, sizeof op);
    memset(&res, 0, sizeof res);
    res.index = op.index;
    res.pid = (int64_t)getpid();
    res.value = fo_echo_value(op.index);
    switch (op.kind) {
    case FO_ECHO:
        break;
    case FO_SLEEP:
        fo_sleep_ms(op.arg);
        break;
    case FO_SLEEP_NOTERM:
    case FO_SLEEP_TERMH: {
        struct sigaction sa;

        memset(&sa, 0, sizeof sa);
        sa.sa_handler = op.kind == FO_SLEEP_NOTERM ? SIG_IGN : fo_noop_handler;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        fo_sleep_ms(op.arg);
        break;
    }
    case FO_ABORT:
        abort();
    case FO_EXIT:
        _exit((int)op.arg);
    case FO_TASKERR:
        return (int)op.arg;
    case FO_LEAK: {
        size_t n = (size_t)op.arg << 20;
        void *p = malloc(n);

        if (p == NULL)
            return 9998;
        memset(p, 0x5a, n);
        if (fo_nleaked < 256)
            fo_leaked[fo_nleaked++] = p;
        break;
    }
    case FO_SCRIBBLE:
        fo_scribble(op.arg);
        break;
    case FO_BIG: {
        unsigned char *big = malloc(op.arg ? op.arg : 1);
        int rc;

        if (big == NULL)
            return 9998;
        memset(big, (int)(op.index & 0xff), op.arg);
        rc = pmap_buf_set(out, big, op.arg);
        free(big);
        if (rc == PMAP_OK)
            return 0; /* the result is the op.arg bytes */
        res.value = rc;
        errno = 0;
        res.aux = pmap_buf_reserve(out, op.arg) == NULL ? errno : 0;
        break;
    }
    case FO_FIFOS:
        res.value = fo_count_fifos();
        break;
    case FO_RAISE:
        raise((int)op.arg);
        break;
    case FO_PRINTF:
        printf("task output %llu\n", (unsigned long long)op.index);
        if (op.arg == 0) {
            (void)!write(1, "noise on fd 1\n", 14);
            (void)!write(2, "noise on fd 2\n", 14);
        }
        break;
    case FO_FDOPEN:
        res.value = fcntl((int)op.arg, F_GETFD) >= 0;
        break;
    case FO_SLEEP_EXIT:
        fo_sleep_ms(op.arg);
        _exit(3);
    case FO_CLOSE_IN_EXIT: {
        int fd, k;

        for (fd = 3; fd < 1024; fd++) {
            int fl, host = 0;

            for (k = 0; k < fo_host_nfifo; k++)
                host |= fo_host_fifo[k] == fd;
            fl = fcntl(fd, F_GETFL);
            if (!host && fo_is_fifo(fd) && fl >= 0 && (fl & O_ACCMODE) == O_RDONLY)
                close(fd);
        }
        fo_sleep_ms(op.arg);
        _exit(3);
    }
    default:
        return 9997;
    }
    return pmap_buf_set(out, &res, sizeof res) == PMAP_OK ? 0 : 9996;
}

/* A generator over a plan of operations; optionally fails at `fail_at`. */
struct fo_plan {
    struct fo_op *ops;
    uint64_t n;
    uint64_t next;
    uint64_t fail_at; /* UINT64_MAX: never */
};

static inline int fo_gen(void *ctx, pmap_buf *param)
{
    struct fo_plan *pl = ctx;

    if (pl->next == pl->fail_at)
        return -1;
    if (pl->next >= pl->n)
        return 0;
    pl->ops[pl->next].index = pl->next;
    pl->next++;
    return pmap_buf_set(param, &pl->ops[pl->next - 1], sizeof(struct fo_op)) == PMAP_OK ? 1 : -1;
}

static inline struct fo_plan *fo_plan_new(uint64_t n, uint32_t kind, uint32_t arg)
{
    struct fo_plan *pl = calloc(1, sizeof *pl);
    uint64_t i;

    assert_non_null(pl);
    pl->ops = calloc(n ? n : 1, sizeof *pl->ops);
    assert_non_null(pl->ops);
    pl->n = n;
    pl->fail_at = UINT64_MAX;
    for (i = 0; i < n; i++) {
        pl->ops[i].kind = kind;
        pl->ops[i].arg = arg;
    }
    return pl;
}

static inline void fo_plan_free(struct fo_plan *pl)
{
    free(pl->ops);
    free(pl);
}

/* One item as the caller got it. */
struct fo_got {
    int seen;
    int status;
    int code;
    size_t len;
    struct fo_res res; /* when status is PMAP_OK and len matches */
    uint64_t at_ns;    /* when pmap_next returned it, from the start of the map */
};

/* Run the plan to the end (or to `stop_after` items, then free early).
 * Asserts that every index comes at most once and, in input order, in
 * sequence. Returns pmap_next's final status (PMAP_DONE, an error, or
 * PMAP_OK when stopped early); *count: items received. */
static inline int fo_run(pmap_pool *pool, struct fo_plan *pl, int ordered, struct fo_got *got,
                         uint64_t stop_after, uint64_t *count)
{
    pmap_iter *it;
    pmap_item item;
    uint64_t n = 0, t0 = pmap__now_ns();
    int rc;

    pl->next = 0;
    memset(got, 0, (size_t)(pl->n ? pl->n : 1) * sizeof *got);
    it = ordered ? pmap_imap(pool, fo_gen, pl) : pmap_imap_unordered(pool, fo_gen, pl);
    assert_non_null(it);
    while (n < stop_after && (rc = pmap_next(it, &item)) == PMAP_OK) {
        struct fo_got *g;

        assert_true(item.index < pl->n);
        if (ordered)
            assert_true(item.index == n);
        g = &got[item.index];
        assert_false(g->seen);
        g->seen = 1;
        g->status = item.status;
        g->code = item.code;
        g->len = item.len;
        g->at_ns = pmap__now_ns() - t0;
        if (item.status == PMAP_OK && item.len == sizeof g->res)
            memcpy(&g->res, item.data, sizeof g->res);
        n++;
    }
    if (n >= stop_after)
        rc = PMAP_OK;
    {
        int frc = pmap_iter_free(it);

        if (rc != PMAP_OK && rc != PMAP_DONE)
            assert_int_equal(frc, rc);
    }
    if (count != NULL)
        *count = n;
    return rc;
}

/* The item is a correct echo of its record. */
static inline int fo_ok(const struct fo_got *g, uint64_t index)
{
    return g->seen && g->status == PMAP_OK && g->len == sizeof g->res && g->res.index == index &&
           g->res.value == fo_echo_value(index);
}

/* PMAP_TEST_START_METHOD=forkserver runs the suites that build their
 * options here with the fork server (DESIGN §8), by hand or in CI. */
static inline void fo_opts(pmap_options *opt, int workers, unsigned chunk)
{
    const char *m = getenv("PMAP_TEST_START_METHOD");

    pmap_options_init(opt);
    opt->workers = workers;
    opt->chunk = chunk;
    if (m != NULL && strcmp(m, "forkserver") == 0)
        opt->start_method = PMAP_START_FORKSERVER;
}

static inline pmap_pool *fo_pool(const pmap_options *opt)
{
    pmap_pool *pool = pmap_pool_create(fo_task, NULL, opt);

    assert_non_null(pool);
    return pool;
}

/* Under valgrind with --error-exitcode, a process that exits with leak
 * reports (every worker: its watchdog thread's TLS counts as "possibly
 * lost") has its exit status replaced by that code. Signals are not. */
static inline int fo_valgrind(void)
{
    const char *pre = getenv("LD_PRELOAD");

    return pre != NULL && strstr(pre, "vgpreload") != NULL;
}

/* An exit status of a crashed worker as reported: `want`, or under
 * valgrind any exit status it may have put in its place. */
static inline int fo_exit_code_ok(int code, int want)
{
    return code == want || (fo_valgrind() && code > 0 && code < 256);
}

static inline int fo_quick(void)
{
    const char *q = getenv("PMAP_TEST_QUICK");

    return q != NULL && *q != '\0' && *q != '0';
}

/* The limit for the tests above. FAULT_LIMIT_MS is for builds and runs
 * where a crash is slow (AddressSanitizer reports it with a symbolized
 * stack, valgrind dumps one); in a plain build a crash ends in
 * microseconds of CPU, and half a second still leaves a loaded machine
 * hundreds of milliseconds of scheduling delay for a short task, while
 * every timed-out record costs the limit in wall time. */
static inline unsigned fo_limit_ms(void)
{
#ifdef FO_SANITIZED
    return FAULT_LIMIT_MS;
#else
    return fo_valgrind() || fo_quick() ? FAULT_LIMIT_MS : 500u;
#endif
}

#endif
