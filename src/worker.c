/*
 * The worker program: what runs in every worker process, whoever started
 * it. It reads frames of parameters from one pipe, runs the task on each
 * record, and writes frames of results to the other; it publishes in
 * shared memory which record runs and since when (so the caller can pin a
 * crash or a timeout on it); and a watchdog thread ends it when the
 * process that started it is gone.
 *
 * Results are batched: a frame goes out when FLUSH_BYTES wait, when the
 * oldest waiting result is FLUSH_NS old, or at the end of the input frame.
 * A result must not wait for a slow record that follows it in its batch,
 * and the main thread cannot know a record will be slow before it runs
 * it: so the watchdog thread, which looks at the worker every
 * WATCH_TICK_NS while it is busy, sends the waiting results itself when
 * it finds one task running for a whole tick (see w_watch_flush).
 */
#ifdef __linux__
#define _GNU_SOURCE
#endif
#define _POSIX_C_SOURCE 200809L

#include "worker.h"

#include "arena.h"
#include "buf.h"
#include "io.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif
#include <time.h>
#include <unistd.h>

/* Input is read this much at a time; a large payload straight into its
 * buffer, up to READ_MAX per read. */
#define STAGE_SIZE (128u * 1024u)
#define READ_MAX ((size_t)1 << 24)
/* Payloads with this many bytes to come are read straight into the
 * parameter buffer, and the read after one asks only for PEEK_SIZE bytes
 * (the headers before the next payload), as in pool.c. */
#define DIRECT_MIN ((size_t)32 << 10)
#define PEEK_SIZE 256u
#define PIPE_BYTES (1024 * 1024)
/* Results are flushed when this many bytes wait, or when the oldest
 * waiting result is this old. */
#define FLUSH_BYTES (256u * 1024u)
#define FLUSH_NS (2u * PMAP__NS_PER_MS)
#define OUT_INITIAL (64u * 1024u)
/* A result this large travels as a frame of its own, without a copy. */
#define BIG_RESULT (64u * 1024u)
/* A task's one-off huge result is not kept for the next record. */
#define RESULT_KEEP ((size_t)64 << 20)
/* A record whose task took less than SAMPLE_BELOW_NS is followed by
 * SAMPLE_EVERY - 1 untimed ones (each counted at that time). */
#define SAMPLE_BELOW_NS 4000u
#define SAMPLE_EVERY 32u
#define RSS_CHECK_NS (10u * PMAP__NS_PER_MS)
/* Without a pidfd, how often the watchdog looks for the caller. */
#define WATCHDOG_MS 100
#define WATCHDOG_NS (WATCHDOG_MS * 1000000L)
#define WATCHDOG_STACK (64 * 1024)
/* While the worker runs a batch of several records the watchdog looks at
 * it this often; after WATCH_IDLE_TICKS looks that find no such batch it
 * sleeps until one comes (or the parent dies), so that workers that wait,
 * or run batches of one slow record each, cost it no wakeups. */
#define WATCH_TICK_MS 3
#define WATCH_IDLE_TICKS 3

static int worker_id_value = -1;

int pmap_worker_id(void)
{
    return worker_id_value;
}

struct wctx {
    const struct pmap__worker_args *a;
    pmap_task_fn fn; /* the task of the current map (K_USE), first the pool's */
    void *ctx;
    struct pmap__shm_slot *shm;
    int rfd, wfd;
    uint64_t seq;   /* records received */
    uint64_t begun; /* records whose task has started */
    int each;       /* this frame's results go out one by one (PMAP__F_EACH) */
    struct pmap_buf param, result, out;
    uint32_t out_count;
    int out_uniform; /* `out` holds bare results of out_ulen bytes each */
    size_t out_ulen;
    uint64_t out_first; /* sequence number of the first result in `out` */
    uint64_t out_t0;    /* when the first result in `out` was finished */
    uint64_t out_task_ns;
    uint64_t rss_base, rss_next_check;
    uint64_t last_ns;     /* the latest clock reading */
    uint64_t est_ns;      /* task time of the latest timed record */
    unsigned sample_left; /* untimed records before the next timed one */
    int retire;
    /* Shared with the watchdog thread (w_watch_flush). */
    _Atomic uint64_t running; /* `begun` of the record whose task runs; 0: none */
    _Atomic uint64_t claim;   /* the watchdog owns `out` while record `claim` runs */
    _Atomic int batch;        /* a frame of several records is being run */
    _Atomic int wd_sleeping;  /* the watchdog waits for wakefd, not for ticks */
    int wakefd;               /* main -> watchdog: input came, look again; -1: none */
    /* Its arena: parameters to read, results to write (empty: none). */
    struct pmap__arena ain, aout;
    /* The pool's shared parameter blocks, read-only (base NULL: none). */
    struct pmap__arena blocks;
};

static unsigned char empty_byte;

/* A frame of several records starts: results may now wait behind a slow
 * one, so the watchdog must look. Each side stores its flag, then loads
 * the other's, in one total order (seq_cst): the watchdog cannot fall
 * asleep unseen, and this costs one atomic exchange per frame. */
static void w_batch_begin(struct wctx *c)
{
    atomic_store(&c->batch, 1);
    if (atomic_load(&c->wd_sleeping) && atomic_exchange(&c->wd_sleeping, 0) && c->wakefd >= 0) {
        uint64_t one = 1;

        (void)!write(c->wakefd, &one, sizeof one);
    }
}

static _Noreturn void w_exit(int code)
{
    fflush(NULL);
    _exit(code);
}

/* The worker ends because it was told to (EOF on its input: the pool is
 * destroyed or recycles it, or the caller is gone) or retires itself
 * (max_worker_rss): worker_exit runs, on the task's thread, between
 * records. Every other end is a failure or a kill, and skips it. */
static _Noreturn void w_exit_normal(const struct wctx *c)
{
    if (c->a->fini != NULL)
        c->a->fini(c->a->ctx);
    w_exit(0);
}

/* Write the results waiting in `out` as one frame. 0, or -1 when the
 * pipe failed. */
static int w_write_out(struct wctx *c)
{
    struct pmap__frame f;
    struct iovec iov[2];
    unsigned char trl[PMAP__TRL_SIZE];

    f.kind = PMAP__K_RESULTS;
    f.flags = c->out_uniform ? PMAP__F_UNIFORM : 0;
    f.count = c->out_count;
    f.seq = (uint32_t)c->out_first;
    f.bytes = c->out.len - PMAP__HDR_SIZE;
    f.aux = c->out_task_ns / 1000u > UINT32_MAX ? UINT32_MAX : (uint32_t)(c->out_task_ns / 1000u);
    pmap__frame_hdr(c->out.data, &f);
    pmap__frame_trl(trl, &f);
    iov[0].iov_base = c->out.data;
    iov[0].iov_len = c->out.len;
    iov[1].iov_base = trl;
    iov[1].iov_len = sizeof trl;
    if (pmap__writev_all(c->wfd, iov, 2) != 0)
        return -1;
    c->out.len = PMAP__HDR_SIZE;
    c->out_first += c->out_count;
    c->out_count = 0;
    c->out_task_ns = 0;
    return 0;
}

static void w_flush(struct wctx *c)
{
    if (c->out_count != 0 && w_write_out(c) != 0)
        w_exit(PMAP__EXIT_IO);
}

/* The watchdog took `out` while the task ran: wait until it is done. */
static PMAP__RARE void w_wait_claim(struct wctx *c)
{
    struct timespec ts = {0, 20000};

    while (atomic_load_explicit(&c->claim, memory_order_acquire) != 0)
        nanosleep(&ts, NULL);
}

/* Run the task. While it runs, and only then, the watchdog may send the
 * results waiting in `out` (w_watch_flush): `running` says when. Leaving,
 * a compiler barrier is enough between the store and the load of the
 * handshake because the watchdog issues a process-wide memory barrier
 * (membarrier) between its own store and load: a fence here would cost
 * every tiny record. */
static inline int w_call(struct wctx *c, const unsigned char *param, size_t param_len)
{
    int rc;

    atomic_store_explicit(&c->running, c->begun, memory_order_release);
    rc = c->fn(c->ctx, param, param_len, &c->result);
    atomic_store_explicit(&c->running, 0, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&c->claim, memory_order_acquire) != 0)
        w_wait_claim(c);
    return rc;
}

/* A result that breaks the run of successes of one length: give the
 * results so far their record headers (back to front, in place). */
static PMAP__RARE void w_ununiform(struct wctx *c)
{
    size_t k = c->out_count, len = c->out_ulen, i;
    unsigned char *base;

    if (pmap__buf_reserve(&c->out, PMAP__HDR_SIZE + k * (PMAP__REC_SIZE + len)) != 0)
        w_exit(PMAP__EXIT_IO);
    base = c->out.data + PMAP__HDR_SIZE;
    for (i = k; i-- > 0;) {
        unsigned char *dst = base + i * (PMAP__REC_SIZE + len);

        memmove(dst + PMAP__REC_SIZE, base + i * len, len);
        pmap__rec_hdr(dst, 0, len);
    }
    c->out.len = PMAP__HDR_SIZE + k * (PMAP__REC_SIZE + len);
    c->out_uniform = 0;
}

/* A large result travels as a frame of its own, written from the task's
 * buffer without a copy. */
static void w_send_big(struct wctx *c, int rc, uint64_t task_ns)
{
    struct pmap__frame f;
    unsigned char head[PMAP__HDR_SIZE + PMAP__REC_XSIZE], trl[PMAP__TRL_SIZE];
    size_t hsize = pmap__rec_hdr_size(c->result.len);
    struct iovec iov[3];

    f.kind = PMAP__K_RESULTS;
    f.flags = 0;
    f.count = 1;
    f.seq = (uint32_t)c->out_first;
    f.bytes = hsize + c->result.len;
    f.aux = task_ns / 1000u > UINT32_MAX ? UINT32_MAX : (uint32_t)(task_ns / 1000u);
    pmap__frame_hdr(head, &f);
    pmap__rec_hdr(head + PMAP__HDR_SIZE, rc, c->result.len);
    pmap__frame_trl(trl, &f);
    iov[0].iov_base = head;
    iov[0].iov_len = PMAP__HDR_SIZE + hsize;
    iov[1].iov_base = c->result.data;
    iov[1].iov_len = c->result.len;
    iov[2].iov_base = trl;
    iov[2].iov_len = sizeof trl;
    if (pmap__writev_all(c->wfd, iov, 3) != 0)
        w_exit(PMAP__EXIT_IO);
    c->out_first++;
}

static void w_send_control(struct wctx *c, unsigned kind, uint32_t seq)
{
    struct pmap__frame f = {kind, 0, seq, 0, 0, 0};
    unsigned char buf[PMAP__HDR_SIZE + PMAP__TRL_SIZE];
    struct iovec iov = {buf, sizeof buf};

    pmap__frame_hdr(buf, &f);
    pmap__frame_trl(buf + PMAP__HDR_SIZE, &f);
    if (pmap__writev_all(c->wfd, &iov, 1) != 0)
        w_exit(PMAP__EXIT_IO);
}

#ifdef __linux__
static uint64_t self_rss(void)
{
    char buf[128];
    long n;
    unsigned long long size = 0, resident = 0;
    int fd;

    do {
        fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return 0;
    n = pmap__read_once(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}
#else
static uint64_t self_rss(void)
{
    return 0;
}
#endif

static int w_frame(void *ud, const struct pmap__frame *f)
{
    struct wctx *c = ud;

    /* Between batches: the task for the next ones (pmap_imap_task). */
    if (f->kind == PMAP__K_USE) {
        if (pmap__frame_use_read(f, &c->fn, &c->ctx) != 0)
            w_exit(PMAP__EXIT_PROTO);
        return 0;
    }
    if (f->kind != PMAP__K_TASKS || f->seq != (uint32_t)c->seq)
        w_exit(PMAP__EXIT_PROTO);
    c->each = (f->flags & PMAP__F_EACH) != 0;
    if (f->count > 1)
        w_batch_begin(c);
    return 0;
}

static unsigned char *w_record(void *ud, unsigned status, int code, uint64_t len)
{
    struct wctx *c = ud;

    (void)status;
    (void)code;
    c->param.len = 0;
    if (len > c->param.cap && pmap__buf_reserve(&c->param, (size_t)len) != 0)
        return NULL;
    c->param.len = (size_t)len;
    return c->param.data ? c->param.data : &empty_byte;
}

static PMAP__NOINLINE void w_after(struct wctx *c, int rc, int timed, uint64_t t1);

/* Run the task on one record and queue its result, in general. */
static PMAP__NOINLINE int w_run(struct wctx *c, const unsigned char *param, size_t param_len)
{
    const struct pmap__worker_args *a = c->a;
    uint64_t t0 = 0, t1 = 0;
    int rc, timed;

    c->seq++;
    if (c->retire)
        return 0; /* records after the decision to retire are not run */
    /* Reading the clock costs about as much as a tiny task, so records
     * that are known to be cheap are timed one in SAMPLE_EVERY; a time
     * limit needs every start time. */
    timed = a->task_timeout_ms != 0 || c->sample_left == 0;
    if (timed) {
        t0 = pmap__now_ns();
        atomic_store_explicit(&c->shm->start_ns, t0, memory_order_relaxed);
    }
    atomic_store_explicit(&c->shm->started, ++c->begun, memory_order_release);
    c->result.len = 0;
    rc = w_call(c, param, param_len);
    if (timed) {
        t1 = pmap__now_ns();
        atomic_store_explicit(&c->shm->start_ns, 0, memory_order_release);
        c->last_ns = t1;
        c->est_ns = t1 - t0;
        /* Untimed records are only for a pool without a time limit, and
         * none run once the worker retires (w_run_fast relies on it). */
        c->sample_left = c->est_ns < SAMPLE_BELOW_NS && a->task_timeout_ms == 0 && !c->retire
                             ? SAMPLE_EVERY - 1u
                             : 0u;
    } else {
        c->sample_left--;
    }
    w_after(c, rc, timed, t1);
    return 0;
}

/* A large result goes into the arena, and the pipe carries only where it
 * is (sent at once: the caller copies it out and so frees its region as
 * soon as it can). 0: no room there, the pipe takes it. */
static int w_send_arena(struct wctx *c, int rc, uint64_t task_ns)
{
    size_t len = c->result.len, need;
    uint64_t off;

    /* Acquire: the caller's copies out of the regions it hands back
     * happened before this process writes them again. */
    pmap__arena_release(&c->aout,
                        atomic_load_explicit(&c->shm->consumed, memory_order_acquire));
    off = pmap__arena_alloc(&c->aout, c->out_first + c->out_count, len);
    if (off == PMAP__ARENA_NONE)
        return 0;
    memcpy(c->aout.base + off, c->result.data, len);
    if (c->out_uniform && c->out_count != 0)
        w_ununiform(c);
    c->out_uniform = 0;
    need = c->out.len + PMAP__REC_ASIZE;
    if (need > c->out.cap && pmap__buf_reserve(&c->out, need) != 0)
        w_exit(PMAP__EXIT_IO);
    pmap__rec_arena(c->out.data + c->out.len, rc, len, off);
    c->out.len = need;
    c->out_count++;
    c->out_task_ns += task_ns;
    w_flush(c);
    return 1;
}

/* The task left its result buffer failed (its last pmap_buf_set or
 * pmap_buf_reserve failed, whatever it returned): the record fails with
 * that status (PMAP_ETOOBIG, ...) as a status record, never as a result. */
static PMAP__RARE void w_after_failed(struct wctx *c, uint64_t task_ns)
{
    int status = pmap__buf_failed(&c->result);
    size_t need;

    pmap__buf_unfail(&c->result);
    if (c->out_uniform && c->out_count != 0)
        w_ununiform(c);
    c->out_uniform = 0;
    need = c->out.len + PMAP__REC_XSIZE;
    if (need > c->out.cap && pmap__buf_reserve(&c->out, need) != 0)
        w_exit(PMAP__EXIT_IO);
    pmap__rec_status(c->out.data + c->out.len, status);
    c->out.len = need;
    c->out_count++;
    c->out_task_ns += task_ns;
}

/* After the task: queue its result; `timed`: t1 is the clock after it. */
static PMAP__NOINLINE void w_after(struct wctx *c, int rc, int timed, uint64_t t1)
{
    const struct pmap__worker_args *a = c->a;
    uint64_t task_ns = c->est_ns;
    size_t need;

    /* Untimed, the result was finished at the latest clock reading or
     * after it: the flush below can only come early, never late. */
    if (c->out_count == 0)
        c->out_t0 = c->last_ns;
    if (c->result.cap == 0) {
        w_after_failed(c, task_ns);
    } else if (c->result.len >= PMAP__ARENA_MIN && c->aout.base != NULL &&
               w_send_arena(c, rc, task_ns)) {
        /* sent */
    } else if (c->result.len >= BIG_RESULT) {
        w_flush(c);
        w_send_big(c, rc, task_ns);
    } else {
        /* A task error's payload is its message. */
        size_t len = c->result.len;
        size_t hsize;

        /* Successes of one length go bare (a uniform frame) until a
         * result differs. len < BIG_RESULT: the short record header. */
        if (c->out_count == 0) {
            c->out_uniform = rc == 0;
            c->out_ulen = len;
        } else if (c->out_uniform && (rc != 0 || len != c->out_ulen)) {
            w_ununiform(c);
        }
        hsize = c->out_uniform ? 0 : PMAP__REC_SIZE;
        need = c->out.len + hsize + len;
        if (need > c->out.cap && pmap__buf_reserve(&c->out, need) != 0)
            w_exit(PMAP__EXIT_IO);
        if (hsize)
            pmap__rec_hdr(c->out.data + c->out.len, rc, len);
        if (len)
            pmap__copy(c->out.data + c->out.len + hsize, c->result.data, len);
        c->out.len = need;
        c->out_count++;
        c->out_task_ns += task_ns;
    }
    if (c->out.len >= FLUSH_BYTES || c->each ||
        (timed && c->out_count && t1 - c->out_t0 >= FLUSH_NS))
        w_flush(c);
    /* Keep a task's one-off huge result from pinning memory forever. */
    if (c->result.cap > RESULT_KEEP)
        pmap__buf_trim(&c->result, 0);
    if (a->max_worker_rss && timed && t1 >= c->rss_next_check) {
        uint64_t rss = self_rss();

        c->rss_next_check = t1 + RSS_CHECK_NS;
        if (rss > c->rss_base && rss - c->rss_base > a->max_worker_rss) {
            c->retire = 1;
            c->sample_left = 0;
        }
    }
}

/* w_run for the common case of tiny tasks: an untimed record (so no time
 * limit and not retiring) whose result continues the batch's run of
 * successes of one length, with room and no flush due. Anything else the
 * general code finishes. */
static inline int w_run_fast(struct wctx *c, const unsigned char *param, size_t param_len)
{
    size_t len, need;
    int rc;

    if (c->sample_left == 0 || c->out_count == 0 || !c->out_uniform)
        return w_run(c, param, param_len);
    c->seq++;
    atomic_store_explicit(&c->shm->started, ++c->begun, memory_order_release);
    c->result.len = 0;
    rc = w_call(c, param, param_len);
    c->sample_left--;
    len = c->result.len;
    need = c->out.len + len;
    if (rc != 0 || len != c->out_ulen || need > c->out.cap || c->result.cap == 0 ||
        need >= FLUSH_BYTES || c->result.cap > RESULT_KEEP) {
        w_after(c, rc, 0, 0);
        return 0;
    }
    pmap__copy(c->out.data + c->out.len, c->result.data, len);
    c->out.len = need;
    c->out_count++;
    c->out_task_ns += c->est_ns;
    return 0;
}

/* A record that arrived in pieces, gathered in c->param. */
static int w_record_end(void *ud)
{
    struct wctx *c = ud;

    return w_run(c, c->param.data ? c->param.data : &empty_byte, c->param.len);
}

/* A record whole in the input: the task reads it where it lies when it is
 * 8-byte aligned (as a buffer of its own would be), saving a copy and two
 * indirect calls per record; else it is gathered like a split one. */
static inline int w_whole(struct pmap__decoder *d, unsigned status, int code,
                          const unsigned char *data, uint64_t len)
{
    struct wctx *c = d->ud;

    if (len == 0 || ((uintptr_t)data & 7u) != 0) {
        unsigned char *dst = w_record(c, status, code, len);

        if (dst == NULL)
            return PMAP_ENOMEM;
        if (len)
            pmap__copy(dst, data, (size_t)len);
        return w_record_end(c);
    }
    return w_run_fast(c, data, (size_t)len);
}

static int w_frame_end(void *ud, const struct pmap__frame *f)
{
    struct wctx *c = ud;

    if (f->kind != PMAP__K_TASKS)
        return 0;
    w_flush(c);
    atomic_store_explicit(&c->batch, 0, memory_order_relaxed);
    if (c->retire) {
        w_send_control(c, PMAP__K_RETIRE, (uint32_t)c->out_first);
        w_exit_normal(c);
    }
    return 0;
}

/* A parameter in the arena: the task reads it where it is. An offset outside the arena is the caller's
 * stream gone wrong. */
static int w_arena(void *ud, unsigned status, int code, uint64_t off, uint64_t len)
{
    struct wctx *c = ud;
    const unsigned char *p =
        pmap__arena_at(code == PMAP__AREC_SHARED ? &c->blocks : &c->ain, off, len);

    (void)status;
    if (p == NULL)
        w_exit(PMAP__EXIT_PROTO);
    return w_run(c, p, (size_t)len);
}

static const struct pmap__decoder_ops w_ops = {w_frame, w_record, w_record_end, w_frame_end,
                                               w_arena};

static pid_t watchdog_parent;
static int watchdog_pidfd = -1;

/* A descriptor that polls readable once process `pid` (our parent) has
 * exited, or -1; exits at once when it is already gone. */
static int parent_pidfd(pid_t pid)
{
    int fd = pmap__parent_pidfd(pid);

    if (fd == -2)
        _exit(PMAP__EXIT_ORPHAN);
    return fd;
}

#if defined(__linux__) && defined(SYS_membarrier)
#include <linux/membarrier.h>
#endif

/* A memory barrier on every running thread of this process, so that the
 * main thread's side of the w_call handshake needs none. 0, or -1 where
 * the kernel cannot (then the watchdog never takes `out`). */
static int w_membarrier(void)
{
#if defined(__linux__) && defined(SYS_membarrier)
    /* (The commands are enum constants: no macro to test for them.) */
    static int registered; /* watchdog thread only */

    if (registered == 0)
        registered = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0
                         ? 1
                         : -1;
    if (registered < 0)
        return -1;
    return syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 ? 0 : -1;
#else
    return -1;
#endif
}

/*
 * Results wait in `out` behind a task that has run for a whole tick (the
 * same record as at the previous look): send them now. The main thread
 * owns `out` except while a task runs; to take it, the watchdog claims
 * the running record, makes the claim visible (membarrier), and checks
 * that the same task still runs. If it does, the main thread will see the
 * claim when the task returns and wait; if not, the claim is withdrawn.
 */
static void w_watch_flush(struct wctx *c, uint64_t *last)
{
    uint64_t r = atomic_load_explicit(&c->running, memory_order_acquire);

    if (r == 0 || r != *last) {
        *last = r;
        return;
    }
    atomic_store_explicit(&c->claim, r, memory_order_relaxed);
    if (w_membarrier() == 0 && atomic_load_explicit(&c->running, memory_order_acquire) == r &&
        c->out_count != 0 && w_write_out(c) != 0)
        _exit(PMAP__EXIT_IO); /* not w_exit: stdio belongs to the task's thread */
    atomic_store_explicit(&c->claim, 0, memory_order_release);
    *last = 0; /* once per record is enough */
}

/* The watchdog's side of w_batch_begin. 1: asleep is safe. */
static int w_watch_may_sleep(struct wctx *c)
{
    atomic_store(&c->wd_sleeping, 1);
    if (!atomic_load(&c->batch))
        return 1;
    atomic_store(&c->wd_sleeping, 0);
    return 0;
}

/*
 * Ends the worker when the caller is gone, even in the middle of a long
 * task. PR_SET_PDEATHSIG would follow the forking *thread*, which may end
 * long before the pool; the parent pid does not change until the caller
 * process itself is gone. Where the kernel has pidfds the thread waits on
 * one for its parent, and wakes only every WATCH_TICK_MS while the worker
 * runs a batch of several records (to send results waiting behind a slow
 * task): an idle pool of
 * thousands of workers costs no wakeups at all (a look at getppid() ten
 * times a second in every worker cost a 2-core machine half its time with
 * 2000 workers, and made creating them quadratic). Elsewhere it looks ten
 * times a second and never flushes.
 */
static void *watchdog(void *arg)
{
    struct wctx *c = arg;
    struct timespec ts = {0, WATCHDOG_NS};
    uint64_t last = 0;
    unsigned idle = 0;

    for (;;) {
        struct pollfd pfd[2];
        int n = 0, asleep, k;

        if (watchdog_pidfd >= 0)
            pfd[n++] = (struct pollfd){watchdog_pidfd, POLLIN, 0};
        if (c->wakefd >= 0)
            pfd[n++] = (struct pollfd){c->wakefd, POLLIN, 0};
        /* Asleep, only the parent's exit (or, without a pidfd, the next
         * look at getppid()) and the next batch wake it. */
        asleep = c->wakefd >= 0 && idle >= WATCH_IDLE_TICKS && w_watch_may_sleep(c);
        if (n == 0) {
            nanosleep(&ts, NULL);
        } else if (poll(pfd, (nfds_t)n, asleep ? (watchdog_pidfd >= 0 ? -1 : WATCHDOG_MS)
                                                : WATCH_TICK_MS) < 0 &&
                   errno != EINTR) {
            /* Cannot wait on them: look ten times a second, flush never. */
            watchdog_pidfd = -1;
            c->wakefd = -1;
            continue;
        }
        for (k = 0; k < n; k++) {
            if (pfd[k].fd == c->wakefd && (pfd[k].revents & POLLIN)) {
                uint64_t junk;

                (void)!read(c->wakefd, &junk, sizeof junk);
                idle = 0;
            }
        }
        if (asleep)
            atomic_store(&c->wd_sleeping, 0);
        if (c->wakefd >= 0) {
            idle = atomic_load_explicit(&c->batch, memory_order_relaxed) ? 0 : idle + 1;
            w_watch_flush(c, &last);
        }
        if (getppid() != watchdog_parent)
            _exit(PMAP__EXIT_ORPHAN);
    }
    return NULL;
}

/* The watchdog's wake-up descriptor (non-blocking both ways), or -1. */
static int w_wakefd(void)
{
#ifdef __linux__
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

    if (fd >= 0 && pmap__fdreg_add(fd) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
#else
    return -1;
#endif
}

void pmap__child_signals(void)
{
    int sig;

    for (sig = 1; sig < 65; sig++) {
        struct sigaction sa;

        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &sa) != 0)
            continue;
        if ((sa.sa_flags & SA_SIGINFO) || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN)) {
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = SIG_DFL;
            sigemptyset(&sa.sa_mask);
            sigaction(sig, &sa, NULL);
        }
    }
    {
        struct sigaction sa;

        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_IGN;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
    }
}

/* The worker program; never returns. `parent` is the process whose death
 * ends it; `mask` the signal mask to restore (the fork ran with every
 * signal blocked). */
static _Noreturn void w_main(const struct pmap__worker_args *a, int rfd, int wfd, pid_t parent,
                             const sigset_t *mask)
{
    struct wctx c;
    struct pmap__decoder dec;
    unsigned char *stage;
    int peek; /* the last read went straight into a record */
    pthread_t th;
    pthread_attr_t attr;

    worker_id_value = a->id;
    pmap__child_signals();
    if (a->sigchld_ignored) {
        struct sigaction sa;

        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_IGN;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGCHLD, &sa, NULL);
    }
    memset(&c, 0, sizeof c);
    c.a = a;
    c.fn = a->fn;
    c.ctx = a->ctx;
    c.shm = a->shm;
    c.rfd = rfd;
    c.wfd = wfd;
    atomic_init(&c.running, 0);
    atomic_init(&c.claim, 0);
    atomic_init(&c.batch, 0);
    atomic_init(&c.wd_sleeping, 0);
    pmap__buf_init(&c.param, a->max_record);
    pmap__buf_init(&c.result, a->max_record);
    pmap__buf_init(&c.out, SIZE_MAX);
    stage = malloc(STAGE_SIZE);
    if (stage == NULL || pmap__buf_reserve(&c.out, OUT_INITIAL) != 0)
        w_exit(PMAP__EXIT_IO);
    c.out.len = PMAP__HDR_SIZE;
    if (a->arena_fd >= 0) {
        int afd = a->arena_fd;

        /* Mapped, the descriptor is of no more use: the task never sees it.
         * Parameters copied here are writable, as in a buffer of the
         * worker's; those in the pool's shared blocks are not (pmap.h
         * promises a task only that it may read its parameter). */
        if (pmap__arena_map(&c.ain, afd, a->arena_half, 0, 1, 0) != 0 ||
            pmap__arena_map(&c.aout, afd, a->arena_half, 1, 1, 0) != 0)
            w_exit(PMAP__EXIT_IO);
        pmap__close(&afd);
    }
    /* Inherited, and made read-only by the fork (arena.h); never
     * unmapped here. */
    memset(&c.blocks, 0, sizeof c.blocks);
    c.blocks.base = (unsigned char *)(uintptr_t)a->blocks_base;
    c.blocks.size = a->blocks_base != NULL ? a->blocks_size : 0;
    c.wakefd = w_wakefd();
    /* The thread starts with every signal blocked (the fork's mask), so
     * signals keep going to the task's thread. */
    watchdog_parent = parent;
    watchdog_pidfd = parent_pidfd(parent);
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        (void)pthread_attr_setstacksize(&attr, WATCHDOG_STACK);
        /* Without the thread, EOF on the task pipe still ends an idle
         * worker; only a busy one would outlive its caller. */
        (void)pthread_create(&th, &attr, watchdog, &c);
        (void)pthread_attr_destroy(&attr);
    }
    pthread_sigmask(SIG_SETMASK, mask, NULL);
    if (getppid() != parent)
        w_exit(PMAP__EXIT_ORPHAN);

    if (a->init != NULL && a->init(a->ctx) != 0)
        w_exit(PMAP__EXIT_INIT);
    if (a->max_worker_rss)
        c.rss_base = self_rss();
    w_send_control(&c, PMAP__K_READY, 0);

    pmap__decoder_init(&dec, &w_ops, &c, a->max_record);
    peek = 0;
    for (;;) {
        uint64_t want;
        unsigned char *direct = pmap__decoder_direct(&dec, &want);
        long n;

        if (direct != NULL && want >= DIRECT_MIN && want <= READ_MAX) {
            /* As in pool.c: the payload in place, the headers after it
             * in the same call. */
            n = pmap__read2_once(rfd, direct, (size_t)want, stage, PEEK_SIZE);
            if (n > 0 && pmap__decode_direct(&dec, (size_t)n < want ? (size_t)n : (size_t)want) != 0)
                w_exit(PMAP__EXIT_PROTO);
            if (n > 0 && (size_t)n > want) {
                if (pmap__decode_with(&dec, stage, (size_t)n - (size_t)want, w_whole) != 0)
                    w_exit(PMAP__EXIT_PROTO);
                peek = pmap__decoder_large(&dec, DIRECT_MIN);
            }
        } else if (direct != NULL && want >= DIRECT_MIN) {
            n = pmap__read_once(rfd, direct, READ_MAX);
            if (n > 0 && pmap__decode_direct(&dec, (size_t)n) != 0)
                w_exit(PMAP__EXIT_PROTO);
        } else {
            size_t asked = peek ? PEEK_SIZE : STAGE_SIZE;

            n = pmap__read_once(rfd, stage, asked);
            if (n > 0 && pmap__decode_with(&dec, stage, (size_t)n, w_whole) != 0)
                w_exit(PMAP__EXIT_PROTO);
            /* As in pool.c: frames of large records are peeked into. */
            peek = pmap__decoder_large(&dec, DIRECT_MIN);
        }
        if (n == 0)
            w_exit_normal(&c); /* EOF: the caller closed the pipe or is gone */
        if (n < 0)
            w_exit(PMAP__EXIT_IO);
    }
}

/* ------------------------------------------------------------------------ */
/* Starting a worker                                                        */
/* ------------------------------------------------------------------------ */

/* Both pipes, caller ends non-blocking with large buffers. */
static int make_pipes(int tp[2], int rp[2])
{
    int rc, saved;

    rc = pmap__pipe(tp);
    if (rc == 0)
        rc = pmap__pipe(rp);
    if (rc == 0) {
        pmap__pipe_grow(tp[1], PIPE_BYTES);
        pmap__pipe_grow(rp[1], PIPE_BYTES);
        if (pmap__set_nonblock(tp[1]) != 0 || pmap__set_nonblock(rp[0]) != 0)
            rc = PMAP_ESYS;
    }
    if (rc != 0) {
        saved = errno;
        pmap__close(&tp[0]);
        pmap__close(&tp[1]);
        pmap__close(&rp[0]);
        pmap__close(&rp[1]);
        errno = saved;
    }
    return rc;
}

int pmap__worker_spawn(const struct pmap__worker_args *a, pid_t *pid_out, int *tx, int *rx)
{
    int tp[2] = {-1, -1}, rp[2] = {-1, -1};
    sigset_t old;
    pid_t pid, parent = getpid();
    int rc, saved;

    rc = make_pipes(tp, rp);
    if (rc != 0)
        return rc;
    atomic_store(&a->shm->started, 0);
    atomic_store(&a->shm->start_ns, 0);
    atomic_store(&a->shm->consumed, 0);

    pid = pmap__fork(tp[0], rp[1], a->arena_fd, &old);
    if (pid == 0)
        w_main(a, tp[0], rp[1], parent, &old);
    saved = errno;
    pmap__close(&tp[0]);
    pmap__close(&rp[1]);
    if (pid < 0) {
        pmap__close(&tp[1]);
        pmap__close(&rp[0]);
        errno = saved;
        return PMAP_ESYS;
    }
    *pid_out = pid;
    *tx = tp[1];
    *rx = rp[0];
    return 0;
}
