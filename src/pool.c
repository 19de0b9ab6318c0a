/*
 * The process backend: workers are forked processes, each behind two pipes
 * (parameters in, results out). This file forks, runs the worker loop,
 * multiplexes the pipes with poll(), attributes crashes and timeouts to the
 * exact record, replaces dead workers, and stops and reaps them.
 *
 * Crash attribution: every worker publishes, in memory shared with the
 * caller, how many records it has started and when the current one began.
 * When a worker dies, the records it was sent fall in three groups: those
 * whose results arrived (done), the one it had started last (the culprit),
 * and the others (run again elsewhere: finished but unsent, or not started).
 */
#ifdef __linux__
#define _GNU_SOURCE
#endif
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

/* Parameters up to this size are copied into the batch; larger ones are
 * written straight from the record with writev. */
#define INLINE_MAX 4096u
#define STAGE_SIZE (128u * 1024u)
/* Bytes read from one worker per pump, so one busy pipe cannot starve
 * the others. */
#define READ_BUDGET (8u * 1024u * 1024u)
#define PIPE_BYTES (1024 * 1024)
/* Worker side: results are flushed when this many bytes wait, or when the
 * oldest waiting result is this old. */
#define FLUSH_BYTES (256u * 1024u)
#define FLUSH_NS 2000000u
#define BIG_RESULT (64u * 1024u)
/* Worker side: a record whose task took less than SAMPLE_BELOW_NS is
 * followed by SAMPLE_EVERY - 1 untimed ones (each counted at that time). */
#define SAMPLE_BELOW_NS 4000u
#define SAMPLE_EVERY 32u
#define TERM_GRACE_NS 50000000u  /* SIGTERM -> SIGKILL for a timed-out worker */
#define EXIT_WAIT_NS 1000000000u /* EOF seen, process not yet gone -> SIGKILL */
#define STOP_GRACE_NS 500000000u /* pool_destroy: idle workers to exit on EOF */
#define UNEXPLAINED_TRIES 3u     /* re-runs before an unexplained crash is blamed */

/* Worker exit statuses of the library's own making. */
#define EXIT_INIT 120   /* worker_init failed */
#define EXIT_PROTO 121  /* the caller's stream was malformed */
#define EXIT_ORPHAN 122 /* the caller died */
#define EXIT_IO 123     /* the result pipe failed */

static int worker_id_value = -1;

int pmap_worker_id(void)
{
    return worker_id_value;
}

/* Shared with the workers: one cache line per worker. */
struct shm_slot {
    _Atomic uint64_t started;  /* records the current process has begun */
    _Atomic uint64_t start_ns; /* CLOCK_MONOTONIC at the current record's start; 0: idle */
    _Atomic uint64_t pad[6];
};

enum wstate {
    W_EMPTY,    /* no process */
    W_STARTING, /* forked, READY not yet received */
    W_READY,    /* running records */
    W_DRAINING, /* told to exit (recycling); waiting for it */
    W_KILLED,   /* signalled; waiting for it to die */
    W_EXITED    /* its result pipe hit EOF; waiting to reap it */
};

enum kill_reason { K_NONE, K_TIMEOUT, K_PROTO, K_STOP };

/* A piece of the pending output: bytes in txbuf at `off`, or a record's own
 * parameter bytes at `ext`. */
struct seg {
    const unsigned char *ext;
    size_t off;
    size_t len;
};

struct worker {
    struct pmap_pool *pool;
    int id;
    pid_t pid;
    int tx; /* caller -> worker, non-blocking */
    int rx; /* worker -> caller, non-blocking */
    enum wstate state;
    enum kill_reason kill;
    int ever_ready;
    int retired;
    int rx_eof;
    int reaped; /* waitpid has collected it; its status is in rcode */
    int rcode;
    uint64_t deadline_ns;
    uint64_t next_reap_ns; /* next look for an exit that no EOF announced */
    uint64_t sent;         /* records sent to this process */
    uint64_t recv;         /* results accepted */
    uint32_t pending;      /* results of the current frame, accepted at its trailer */
    uint64_t blame;        /* K_TIMEOUT: the record that ran too long */
    /* Records in flight: fifo[seq & (fifo_cap - 1)] for seq in [recv, sent). */
    struct pmap__rec **fifo;
    uint32_t fifo_cap;
    /* Output not yet written. */
    struct pmap_buf txbuf;
    struct seg *segs;
    size_t nseg, seg_cap, seg_pos, seg_off;
    /* Input. */
    struct pmap__decoder dec;
    unsigned char *stage;
};

struct pmap_pool {
    pmap_task_fn fn;
    void *ctx;
    pmap_options opt;
    int nworkers;
    unsigned window;
    size_t max_record;
    pid_t owner;
    struct worker *w;
    struct shm_slot *shm;
    size_t shm_len;
    struct pmap_iter *iter;
    const struct pmap__sink *sink; /* during pump() only */
    int fatal;                     /* an error found inside a callback */
    unsigned start_fail;           /* workers in a row that died before READY */
    uint64_t spawn_after_ns;
    struct pollfd *pfd;
    struct worker **pfw;
};

static const struct pmap__decoder_ops caller_ops;

/* ------------------------------------------------------------------------ */
/* The worker process                                                       */
/* ------------------------------------------------------------------------ */

struct wctx {
    struct pmap_pool *pool;
    struct shm_slot *shm;
    int rfd, wfd;
    uint64_t seq;   /* records received */
    uint64_t begun; /* records whose task has started */
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
};

static unsigned char empty_byte;

static void worker_exit(int code)
{
    fflush(NULL);
    _exit(code);
}

static void worker_flush(struct wctx *c)
{
    struct pmap__frame f;
    struct iovec iov[2];
    unsigned char trl[PMAP__TRL_SIZE];

    if (c->out_count == 0)
        return;
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
        worker_exit(EXIT_IO);
    c->out.len = PMAP__HDR_SIZE;
    c->out_first += c->out_count;
    c->out_count = 0;
    c->out_task_ns = 0;
}

/* A result that breaks the run of successes of one length: give the
 * results so far their record headers (back to front, in place). */
static PMAP__RARE void worker_ununiform(struct wctx *c)
{
    size_t k = c->out_count, len = c->out_ulen, i;
    unsigned char *base;

    if (pmap__buf_reserve(&c->out, PMAP__HDR_SIZE + k * (PMAP__REC_SIZE + len)) != 0)
        worker_exit(EXIT_IO);
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
static void worker_send_big(struct wctx *c, uint64_t task_ns)
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
    pmap__rec_hdr(head + PMAP__HDR_SIZE, 0, c->result.len);
    pmap__frame_trl(trl, &f);
    iov[0].iov_base = head;
    iov[0].iov_len = PMAP__HDR_SIZE + hsize;
    iov[1].iov_base = c->result.data;
    iov[1].iov_len = c->result.len;
    iov[2].iov_base = trl;
    iov[2].iov_len = sizeof trl;
    if (pmap__writev_all(c->wfd, iov, 3) != 0)
        worker_exit(EXIT_IO);
    c->out_first++;
}

static void worker_send_control(struct wctx *c, unsigned kind, uint32_t seq)
{
    struct pmap__frame f = {kind, 0, seq, 0, 0, 0};
    unsigned char buf[PMAP__HDR_SIZE + PMAP__TRL_SIZE];
    struct iovec iov = {buf, sizeof buf};

    pmap__frame_hdr(buf, &f);
    pmap__frame_trl(buf + PMAP__HDR_SIZE, &f);
    if (pmap__writev_all(c->wfd, &iov, 1) != 0)
        worker_exit(EXIT_IO);
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

    if (f->kind != PMAP__K_TASKS || f->seq != (uint32_t)c->seq)
        worker_exit(EXIT_PROTO);
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
    struct pmap_pool *p = c->pool;
    uint64_t t0 = 0, t1 = 0;
    int rc, timed;

    c->seq++;
    if (c->retire)
        return 0; /* records after the decision to retire are not run */
    /* Reading the clock costs about as much as a tiny task, so records
     * that are known to be cheap are timed one in SAMPLE_EVERY; a time
     * limit needs every start time. */
    timed = p->opt.task_timeout_ms != 0 || c->sample_left == 0;
    if (timed) {
        t0 = pmap__now_ns();
        atomic_store_explicit(&c->shm->start_ns, t0, memory_order_relaxed);
    }
    atomic_store_explicit(&c->shm->started, ++c->begun, memory_order_release);
    c->result.len = 0;
    rc = p->fn(p->ctx, param, param_len, &c->result);
    if (timed) {
        t1 = pmap__now_ns();
        atomic_store_explicit(&c->shm->start_ns, 0, memory_order_release);
        c->last_ns = t1;
        c->est_ns = t1 - t0;
        /* Untimed records are only for a pool without a time limit, and
         * none run once the worker retires (w_run_fast relies on it). */
        c->sample_left = c->est_ns < SAMPLE_BELOW_NS && p->opt.task_timeout_ms == 0 && !c->retire
                             ? SAMPLE_EVERY - 1u
                             : 0u;
    } else {
        c->sample_left--;
    }
    w_after(c, rc, timed, t1);
    return 0;
}

/* After the task: queue its result; `timed`: t1 is the clock after it. */
static PMAP__NOINLINE void w_after(struct wctx *c, int rc, int timed, uint64_t t1)
{
    struct pmap_pool *p = c->pool;
    uint64_t task_ns = c->est_ns;
    size_t need;

    /* Untimed, the result was finished at the latest clock reading or
     * after it: the flush below can only come early, never late. */
    if (c->out_count == 0)
        c->out_t0 = c->last_ns;
    if (rc == 0 && c->result.len >= BIG_RESULT) {
        worker_flush(c);
        worker_send_big(c, task_ns);
    } else {
        size_t len = rc != 0 ? 0 : c->result.len;
        size_t hsize;

        /* Successes of one length go bare (a uniform frame) until a
         * result differs. len < BIG_RESULT: the short record header. */
        if (c->out_count == 0) {
            c->out_uniform = rc == 0;
            c->out_ulen = len;
        } else if (c->out_uniform && (rc != 0 || len != c->out_ulen)) {
            worker_ununiform(c);
        }
        hsize = c->out_uniform ? 0 : PMAP__REC_SIZE;
        need = c->out.len + hsize + len;
        if (need > c->out.cap && pmap__buf_reserve(&c->out, need) != 0)
            worker_exit(EXIT_IO);
        if (hsize)
            pmap__rec_hdr(c->out.data + c->out.len, rc, len);
        if (len)
            pmap__copy(c->out.data + c->out.len + hsize, c->result.data, len);
        c->out.len = need;
        c->out_count++;
        c->out_task_ns += task_ns;
    }
    if (c->out.len >= FLUSH_BYTES || (timed && c->out_count && t1 - c->out_t0 >= FLUSH_NS))
        worker_flush(c);
    /* Keep a task's one-off huge result from pinning memory forever. */
    if (c->result.cap > ((size_t)64 << 20))
        pmap__buf_trim(&c->result, 0);
    if (p->opt.max_worker_rss && timed && t1 >= c->rss_next_check) {
        uint64_t rss = self_rss();

        c->rss_next_check = t1 + 10000000u;
        if (rss > c->rss_base && rss - c->rss_base > p->opt.max_worker_rss) {
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
    struct pmap_pool *p = c->pool;
    size_t len, need;
    int rc;

    if (c->sample_left == 0 || c->out_count == 0 || !c->out_uniform)
        return w_run(c, param, param_len);
    c->seq++;
    atomic_store_explicit(&c->shm->started, ++c->begun, memory_order_release);
    c->result.len = 0;
    rc = p->fn(p->ctx, param, param_len, &c->result);
    c->sample_left--;
    len = c->result.len;
    need = c->out.len + len;
    if (rc != 0 || len != c->out_ulen || need > c->out.cap || need >= FLUSH_BYTES ||
        c->result.cap > ((size_t)64 << 20)) {
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

    (void)f;
    worker_flush(c);
    if (c->retire) {
        worker_send_control(c, PMAP__K_RETIRE, (uint32_t)c->out_first);
        worker_exit(0);
    }
    return 0;
}

static const struct pmap__decoder_ops worker_ops = {w_frame, w_record, w_record_end, w_frame_end};

static pid_t watchdog_parent;

/* Ends the worker when the caller is gone, even in the middle of a long
 * task. PR_SET_PDEATHSIG would follow the forking *thread*, which may end
 * long before the pool; the parent pid does not change until the caller
 * process itself is gone. */
static void *watchdog(void *arg)
{
    struct timespec ts = {0, 100000000};

    (void)arg;
    for (;;) {
        nanosleep(&ts, NULL);
        if (getppid() != watchdog_parent)
            _exit(EXIT_ORPHAN);
    }
    return NULL;
}

static void worker_signals(void)
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

static void worker_main(struct pmap_pool *p, int id, int rfd, int wfd, const sigset_t *mask,
                        pid_t parent)
{
    struct wctx c;
    struct pmap__decoder dec;
    unsigned char *stage;
    pthread_t th;
    pthread_attr_t attr;

    worker_id_value = id;
    worker_signals();
    /* The thread starts with every signal blocked (the fork's mask), so
     * signals keep going to the task's thread. */
    watchdog_parent = parent;
    if (pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        (void)pthread_attr_setstacksize(&attr, 64 * 1024);
        /* Without the thread, EOF on the task pipe still ends an idle
         * worker; only a busy one would outlive its caller. */
        (void)pthread_create(&th, &attr, watchdog, NULL);
        (void)pthread_attr_destroy(&attr);
    }
    pthread_sigmask(SIG_SETMASK, mask, NULL);
    if (getppid() != parent)
        worker_exit(EXIT_ORPHAN);

    memset(&c, 0, sizeof c);
    c.pool = p;
    c.shm = &p->shm[id];
    c.rfd = rfd;
    c.wfd = wfd;
    pmap__buf_init(&c.param, p->max_record);
    pmap__buf_init(&c.result, p->max_record);
    pmap__buf_init(&c.out, SIZE_MAX);
    stage = malloc(STAGE_SIZE);
    if (stage == NULL || pmap__buf_reserve(&c.out, 64 * 1024) != 0)
        worker_exit(EXIT_IO);
    c.out.len = PMAP__HDR_SIZE;

    if (p->opt.worker_init != NULL && p->opt.worker_init(p->ctx) != 0)
        worker_exit(EXIT_INIT);
    if (p->opt.max_worker_rss)
        c.rss_base = self_rss();
    worker_send_control(&c, PMAP__K_READY, 0);

    pmap__decoder_init(&dec, &worker_ops, &c, p->max_record);
    for (;;) {
        uint64_t want;
        unsigned char *direct = pmap__decoder_direct(&dec, &want);
        long n;

        if (direct != NULL && want >= STAGE_SIZE) {
            n = pmap__read_once(rfd, direct, want > (1u << 24) ? (1u << 24) : (size_t)want);
            if (n > 0 && pmap__decode_direct(&dec, (size_t)n) != 0)
                worker_exit(EXIT_PROTO);
        } else {
            n = pmap__read_once(rfd, stage, STAGE_SIZE);
            if (n > 0 && pmap__decode_with(&dec, stage, (size_t)n, w_whole) != 0)
                worker_exit(EXIT_PROTO);
        }
        if (n == 0)
            worker_exit(0); /* EOF: the caller closed the pipe or is gone */
        if (n < 0)
            worker_exit(EXIT_IO);
    }
}

/* ------------------------------------------------------------------------ */
/* Caller side: starting and ending workers                                 */
/* ------------------------------------------------------------------------ */

static void worker_reset(struct worker *w)
{
    w->pid = -1;
    w->state = W_EMPTY;
    w->kill = K_NONE;
    w->ever_ready = 0;
    w->retired = 0;
    w->rx_eof = 0;
    w->reaped = 0;
    w->rcode = -1;
    w->deadline_ns = 0;
    w->next_reap_ns = 0;
    w->sent = 0;
    w->recv = 0;
    w->pending = 0;
    w->blame = 0;
    w->txbuf.len = 0;
    w->nseg = 0;
    w->seg_pos = 0;
    w->seg_off = 0;
}

static int spawn(struct pmap_pool *p, struct worker *w)
{
    int tp[2] = {-1, -1}, rp[2] = {-1, -1};
    sigset_t all, old;
    pid_t pid, parent = getpid();
    int rc, saved;

    rc = pmap__pipe(tp);
    if (rc == 0)
        rc = pmap__pipe(rp);
    if (rc != 0) {
        saved = errno;
        pmap__close(&tp[0]);
        pmap__close(&tp[1]);
        errno = saved;
        return rc;
    }
    pmap__pipe_grow(tp[1], PIPE_BYTES);
    pmap__pipe_grow(rp[1], PIPE_BYTES);
    if (pmap__set_nonblock(tp[1]) != 0 || pmap__set_nonblock(rp[0]) != 0) {
        saved = errno;
        pmap__close(&tp[0]);
        pmap__close(&tp[1]);
        pmap__close(&rp[0]);
        pmap__close(&rp[1]);
        errno = saved;
        return PMAP_ESYS;
    }
    atomic_store(&p->shm[w->id].started, 0);
    atomic_store(&p->shm[w->id].start_ns, 0);

    /* Nothing buffered in the caller's stdio may be written twice. */
    fflush(NULL);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pmap__fdreg_lock();
    pid = fork();
    if (pid == 0) {
        pmap__fdreg_child(tp[0], rp[1]);
        worker_main(p, w->id, tp[0], rp[1], &old, parent);
        _exit(EXIT_IO); /* not reached */
    }
    saved = errno;
    pmap__fdreg_unlock();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pmap__close(&tp[0]);
    pmap__close(&rp[1]);
    if (pid < 0) {
        pmap__close(&tp[1]);
        pmap__close(&rp[0]);
        errno = saved;
        return PMAP_ESYS;
    }
    worker_reset(w);
    w->pid = pid;
    w->tx = tp[1];
    w->rx = rp[0];
    w->state = W_STARTING;
    pmap__decoder_init(&w->dec, &caller_ops, w, p->max_record);
    return 0;
}

/* waitpid for exactly this child. 1: gone (status in *code, -1 if it
 * could not be known), 0: still running. */
static int reap(struct worker *w, int block, int *code)
{
    int st;
    pid_t r;

    if (w->reaped) {
        *code = w->rcode;
        return 1;
    }
    if (w->pid <= 0)
        return 0;
    do {
        r = waitpid(w->pid, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return 0;
    if (r < 0) {
        /* ECHILD: reaped behind our back (SIGCHLD ignored by the host). */
        *code = -1;
    } else if (WIFSIGNALED(st)) {
        *code = WTERMSIG(st);
    } else if (WIFEXITED(st)) {
        *code = WEXITSTATUS(st);
    } else {
        return 0; /* stopped or continued: not gone */
    }
    w->reaped = 1;
    w->rcode = *code;
    return 1;
}

static void signal_worker(struct worker *w, int sig)
{
    /* Only while it is our unreaped child: its pid cannot be reused yet. */
    if (w->pid > 0 && !w->reaped)
        (void)kill(w->pid, sig);
}

static void tx_clear(struct worker *w)
{
    w->txbuf.len = 0;
    w->nseg = 0;
    w->seg_pos = 0;
    w->seg_off = 0;
}

static int tx_pending(const struct worker *w)
{
    return w->seg_pos < w->nseg;
}

static struct pmap__rec *fifo_at(struct worker *w, uint64_t seq)
{
    return w->fifo[seq & (w->fifo_cap - 1)];
}

/* A worker died before it was ready, or could not be forked: back off
 * (5 ms doubling to 1 s) before the next fork, so a broken environment
 * costs no busy loop. */
static void start_failed(struct pmap_pool *p, uint64_t now)
{
    unsigned shift = p->start_fail < 8 ? p->start_fail : 8;

    p->start_fail++;
    p->spawn_after_ns = now + ((uint64_t)5000000u << shift);
}

/* The process is gone and every byte it wrote has been read: settle the
 * records it had, then free its place. */
static void finalize(struct pmap_pool *p, struct worker *w, int code)
{
    const struct pmap__sink *s = p->sink;
    uint64_t started = atomic_load(&p->shm[w->id].started);
    uint64_t culprit = UINT64_MAX, seq;
    int status = PMAP_ECRASH;
    int unexplained = 0;

    pmap__close(&w->tx);
    pmap__close(&w->rx);
    if (!w->ever_ready && w->kill != K_STOP)
        start_failed(p, pmap__now_ns());
    if (w->sent > w->recv && s != NULL) {
        if (w->kill == K_TIMEOUT) {
            culprit = w->blame;
            status = PMAP_ETIMEOUT;
            code = 0;
        } else if (w->ever_ready && !w->retired && w->kill != K_STOP) {
            if (started > w->recv && started <= w->sent)
                culprit = started - 1;
            else
                unexplained = 1;
        }
        for (seq = w->recv; seq < w->sent; seq++) {
            struct pmap__rec *r = fifo_at(w, seq);

            if (seq == culprit) {
                r->status = status;
                r->code = code;
                r->result.len = 0;
                s->done(s->it, r);
            } else if (unexplained && ++r->tries >= UNEXPLAINED_TRIES) {
                r->status = PMAP_ECRASH;
                r->code = code;
                r->result.len = 0;
                s->done(s->it, r);
            } else {
                s->retry(s->it, r);
            }
        }
    }
    worker_reset(w);
}

/* Records in flight get `status` now (a protocol failure is not re-run:
 * the stream cannot be trusted to say which records it finished). */
static void fail_inflight(struct pmap_pool *p, struct worker *w, int status)
{
    const struct pmap__sink *s = p->sink;
    uint64_t seq;

    if (s != NULL) {
        for (seq = w->recv; seq < w->sent; seq++) {
            struct pmap__rec *r = fifo_at(w, seq);

            r->status = status;
            r->code = 0;
            r->result.len = 0;
            s->done(s->it, r);
        }
    }
    w->recv = w->sent;
    w->pending = 0;
}

static void kill_worker(struct worker *w, enum kill_reason why, int sig)
{
    uint64_t now = pmap__now_ns();

    if (w->kill == K_NONE || why == K_PROTO)
        w->kill = why;
    signal_worker(w, sig);
    if (w->state != W_EXITED) {
        w->state = W_KILLED;
        w->deadline_ns = now + (sig == SIGKILL ? EXIT_WAIT_NS : TERM_GRACE_NS);
    }
    tx_clear(w);
}

static void protocol_failure(struct pmap_pool *p, struct worker *w)
{
    fail_inflight(p, w, PMAP_EPROTO);
    kill_worker(w, K_PROTO, SIGKILL);
    /* Nothing more from this stream is believed. */
    pmap__close(&w->rx);
    w->rx_eof = 1;
}

/* EOF on the result pipe (or the pipe closed after a protocol failure). */
static void try_finish(struct pmap_pool *p, struct worker *w, uint64_t now)
{
    int code = -1;

    if (reap(w, 0, &code)) {
        finalize(p, w, code);
        return;
    }
    if (w->state != W_EXITED && w->state != W_KILLED) {
        w->state = W_EXITED;
        w->deadline_ns = now + EXIT_WAIT_NS;
    }
}

/* ------------------------------------------------------------------------ */
/* Caller side: the stream from a worker                                    */
/* ------------------------------------------------------------------------ */

static int c_frame(void *ud, const struct pmap__frame *f)
{
    struct worker *w = ud;

    switch (f->kind) {
    case PMAP__K_READY:
        if (w->ever_ready)
            return PMAP_EPROTO;
        w->ever_ready = 1;
        w->pool->start_fail = 0;
        if (w->state == W_STARTING)
            w->state = W_READY;
        return 0;
    case PMAP__K_RESULTS:
        if (!w->ever_ready || f->seq != (uint32_t)w->recv || f->count == 0 ||
            f->count > w->sent - w->recv)
            return PMAP_EPROTO;
        return 0;
    case PMAP__K_RETIRE:
        if (!w->ever_ready || f->seq != (uint32_t)w->recv)
            return PMAP_EPROTO;
        w->retired = 1;
        return 0;
    default:
        return PMAP_EPROTO;
    }
}

/* The count of the frame's results (w->pending) grows as each record
 * starts rather than when its bytes are in: it is read only at the
 * trailer, when every record is whole, and reset when a frame is dropped,
 * so counting early is the same and saves a callback per record. */
/* c_record for a result larger than its buffer: out of line and reached
 * by a tail call, so that c_record itself is a leaf. */
static PMAP__RARE int c_result_grow(struct worker *w, struct pmap__rec *r, uint64_t len)
{
    r->result.len = 0;
    if (pmap__buf_reserve(&r->result, (size_t)len) != 0) {
        w->pool->fatal = PMAP_ENOMEM;
        return PMAP_ENOMEM;
    }
    return 0;
}

static PMAP__RARE unsigned char *c_record_grow(struct worker *w, struct pmap__rec *r, uint64_t len)
{
    if (c_result_grow(w, r, len) != 0)
        return NULL;
    r->result.len = (size_t)len;
    w->pending++;
    return r->result.data;
}

static unsigned char *c_record(void *ud, unsigned status, int code, uint64_t len)
{
    struct worker *w = ud;
    struct pmap__rec *r = fifo_at(w, w->recv + w->pending);

    r->status = status == PMAP__R_OK ? PMAP_OK : PMAP_ETASK;
    r->code = code;
    r->result.len = 0;
    if (len == 0) {
        w->pending++;
        return &empty_byte;
    }
    if (len > r->result.cap)
        return c_record_grow(w, r, len);
    r->result.len = (size_t)len;
    w->pending++;
    return r->result.data;
}

/* c_record and the copy, for a result whole in the input: inlined into
 * the decoder's loop. */
static inline int c_whole(struct pmap__decoder *d, unsigned status, int code,
                          const unsigned char *data, uint64_t len)
{
    struct worker *w = d->ud;
    struct pmap__rec *r = fifo_at(w, w->recv + w->pending);

    r->status = status == PMAP__R_OK ? PMAP_OK : PMAP_ETASK;
    r->code = code;
    if (len > r->result.cap && c_result_grow(w, r, len) != 0)
        return PMAP_ENOMEM;
    r->result.len = (size_t)len;
    if (len)
        pmap__copy(r->result.data, data, (size_t)len);
    w->pending++;
    return 0;
}

static int c_frame_end(void *ud, const struct pmap__frame *f)
{
    struct worker *w = ud;
    struct pmap_pool *p = w->pool;
    const struct pmap__sink *s = p->sink;
    uint32_t i;

    if (f->kind != PMAP__K_RESULTS)
        return 0;
    /* Results are believed only once their frame's trailer checks out. */
    if (s != NULL && s->done_many != NULL) {
        /* The fifo is a ring: the frame's records are at most two runs. */
        uint32_t mask = w->fifo_cap - 1, at = (uint32_t)(w->recv & mask);
        uint32_t first = w->fifo_cap - at < w->pending ? w->fifo_cap - at : w->pending;

        if (first > 0)
            s->done_many(s->it, &w->fifo[at], first);
        if (w->pending > first)
            s->done_many(s->it, &w->fifo[0], w->pending - first);
    } else if (s != NULL) {
        for (i = 0; i < w->pending; i++)
            s->done(s->it, fifo_at(w, w->recv + i));
    }
    w->recv += w->pending;
    w->pending = 0;
    if (s != NULL && s->timing != NULL)
        s->timing(s->it, f->count, f->aux);
    return 0;
}

/* No record_end: c_record counts the record (see there). */
static const struct pmap__decoder_ops caller_ops = {c_frame, c_record, NULL, c_frame_end};

/* Read what the worker has written (up to a budget). */
static void read_worker(struct pmap_pool *p, struct worker *w, uint64_t now)
{
    size_t budget = READ_BUDGET;

    if (w->stage == NULL) {
        w->stage = malloc(STAGE_SIZE);
        if (w->stage == NULL) {
            p->fatal = PMAP_ENOMEM;
            return;
        }
    }
    while (budget > 0 && w->rx >= 0) {
        uint64_t want;
        unsigned char *direct = pmap__decoder_direct(&w->dec, &want);
        size_t asked;
        long n;
        int rc;

        if (direct != NULL && want >= STAGE_SIZE) {
            asked = want > (1u << 24) ? (1u << 24) : (size_t)want;
            n = pmap__read_once(w->rx, direct, asked);
            rc = n > 0 ? pmap__decode_direct(&w->dec, (size_t)n) : 0;
        } else {
            asked = STAGE_SIZE;
            n = pmap__read_once(w->rx, w->stage, asked);
            rc = n > 0 ? pmap__decode_with(&w->dec, w->stage, (size_t)n, c_whole) : 0;
        }
        if (n == -1)
            return; /* drained for now */
        if (rc == PMAP_ENOMEM || p->fatal) {
            p->fatal = PMAP_ENOMEM;
            return;
        }
        if (rc != 0) {
            protocol_failure(p, w);
            return;
        }
        if (n == 0 || n < -1) {
            /* EOF (or a broken pipe): a partial frame is dropped, its
             * records settled by finalize like any unfinished ones. */
            w->pending = 0;
            pmap__close(&w->rx);
            w->rx_eof = 1;
            try_finish(p, w, now);
            return;
        }
        /* A pipe read returns less than asked only when the pipe ran
         * empty: the next poll() tells when there is more, which saves
         * the read that would only say EAGAIN. */
        if ((size_t)n < asked)
            return;
        budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
    }
}

/* Write pending output; the guard turns EPIPE into a dead worker. */
static void write_worker(struct pmap_pool *p, struct worker *w, struct pmap__sigpipe_guard *g)
{
    (void)p;
    while (tx_pending(w)) {
        struct iovec iov[64];
        int cnt = 0;
        size_t i;
        ssize_t n;

        for (i = w->seg_pos; i < w->nseg && cnt < 64; i++, cnt++) {
            const struct seg *s = &w->segs[i];
            const unsigned char *base = s->ext ? s->ext : w->txbuf.data + s->off;
            size_t skip = i == w->seg_pos ? w->seg_off : 0;

            iov[cnt].iov_base = (void *)(base + skip);
            iov[cnt].iov_len = s->len - skip;
        }
        n = writev(w->tx, iov, cnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EPIPE)
                g->epipe = 1;
            /* The worker closed its end: it is dying; its EOF settles it. */
            tx_clear(w);
            pmap__close(&w->tx);
            return;
        }
        while (n > 0) {
            const struct seg *s = &w->segs[w->seg_pos];
            size_t left = s->len - w->seg_off;

            if ((size_t)n >= left) {
                n -= (ssize_t)left;
                w->seg_pos++;
                w->seg_off = 0;
            } else {
                w->seg_off += (size_t)n;
                n = 0;
            }
        }
    }
    tx_clear(w);
}

/* ------------------------------------------------------------------------ */
/* Backend operations                                                       */
/* ------------------------------------------------------------------------ */

static int be_nworkers(void *be)
{
    return ((struct pmap_pool *)be)->nworkers;
}

static uint32_t be_inflight(void *be, int i)
{
    struct worker *w = &((struct pmap_pool *)be)->w[i];

    return (uint32_t)(w->sent - w->recv);
}

static uint32_t be_room(void *be, int i)
{
    struct pmap_pool *p = be;
    struct worker *w = &p->w[i];
    unsigned long max = p->opt.max_tasks_per_worker;

    if ((w->state != W_READY && w->state != W_STARTING) || w->retired || w->tx < 0)
        return 0;
    if (max == 0)
        return UINT32_MAX;
    if (w->sent >= max)
        return 0;
    return max - w->sent > UINT32_MAX ? UINT32_MAX : (uint32_t)(max - w->sent);
}

static int seg_add(struct worker *w, const unsigned char *ext, size_t off, size_t len)
{
    if (ext == NULL && w->nseg > w->seg_pos) {
        struct seg *last = &w->segs[w->nseg - 1];

        if (last->ext == NULL && last->off + last->len == off) {
            last->len += len;
            return 0;
        }
    }
    if (w->nseg == w->seg_cap) {
        size_t ncap = w->seg_cap ? w->seg_cap * 2 : 16;
        struct seg *n = realloc(w->segs, ncap * sizeof *n);

        if (n == NULL)
            return PMAP_ENOMEM;
        w->segs = n;
        w->seg_cap = ncap;
    }
    w->segs[w->nseg].ext = ext;
    w->segs[w->nseg].off = off;
    w->segs[w->nseg].len = len;
    w->nseg++;
    return 0;
}

static int fifo_reserve(struct worker *w, uint32_t more)
{
    uint64_t need = w->sent - w->recv + more;
    uint32_t ncap;
    struct pmap__rec **n;
    uint64_t seq;

    if (need <= w->fifo_cap)
        return 0;
    if (need > (1u << 30))
        return PMAP_ENOMEM;
    ncap = w->fifo_cap ? w->fifo_cap : 64;
    while (ncap < need)
        ncap *= 2;
    n = malloc((size_t)ncap * sizeof *n);
    if (n == NULL)
        return PMAP_ENOMEM;
    for (seq = w->recv; seq < w->sent; seq++)
        n[seq & (ncap - 1)] = fifo_at(w, seq);
    free(w->fifo);
    w->fifo = n;
    w->fifo_cap = ncap;
    return 0;
}

static int be_submit(void *be, int i, struct pmap__rec **recs, uint32_t n)
{
    struct pmap_pool *p = be;
    struct worker *w = &p->w[i];
    struct pmap__frame f;
    unsigned char *out;
    size_t inl = PMAP__HDR_SIZE + PMAP__TRL_SIZE, start, pos, len0;
    int uniform;
    struct pmap__rec **fifo;
    uint64_t sent;
    uint32_t k, mask;
    int rc;

    if (n == 0)
        return 0;
    rc = fifo_reserve(w, n);
    if (rc != 0)
        return rc;
    if (!tx_pending(w))
        tx_clear(w);
    f.kind = PMAP__K_TASKS;
    f.count = n;
    f.seq = (uint32_t)w->sent;
    f.bytes = 0;
    f.aux = 0;
    /* Parameters of one length (the usual case) go bare. */
    len0 = recs[0]->param.len;
    for (k = 1; k < n && recs[k]->param.len == len0; k++)
        ;
    uniform = k == n;
    if (uniform) {
        f.bytes = (uint64_t)n * len0;
        inl += len0 <= INLINE_MAX ? n * len0 : 0;
    } else {
        for (k = 0; k < n; k++) {
            size_t len = recs[k]->param.len;

            f.bytes += pmap__rec_hdr_size(len) + len;
            inl += pmap__rec_hdr_size(len) + (len <= INLINE_MAX ? len : 0);
        }
    }
    f.flags = uniform ? PMAP__F_UNIFORM : 0;
    /* One reservation for the whole frame, then the headers and the small
     * parameters are written in place; a large parameter is a segment of
     * its own, written from the record without a copy. On ENOMEM the map
     * fails as a whole and cancel() cleans up. */
    if (inl > SIZE_MAX - w->txbuf.len || pmap__buf_reserve(&w->txbuf, w->txbuf.len + inl) != 0)
        return PMAP_ENOMEM;
    out = w->txbuf.data;
    /* In locals: stores through `out` would otherwise make the compiler
     * reload them for every record. */
    fifo = w->fifo;
    mask = w->fifo_cap - 1;
    sent = w->sent;
    start = pos = w->txbuf.len;
    w->txbuf.len += inl;
    pmap__frame_hdr(out + pos, &f);
    pos += PMAP__HDR_SIZE;
    if (uniform && len0 <= INLINE_MAX) {
        /* The common case, with nothing to decide per record. */
        for (k = 0; k < n; k++) {
            fifo[(sent + k) & mask] = recs[k];
            pmap__copy(out + pos, recs[k]->param.data, len0);
            pos += len0;
        }
        k = n; /* skips the general loop */
    } else {
        k = 0;
    }
    for (; k < n; k++) {
        const struct pmap_buf *b = &recs[k]->param;

        /* Filled ahead of w->sent, which alone makes the entry live: on
         * an error below the map fails and nothing reads it. */
        fifo[(sent + k) & mask] = recs[k];
        if (!uniform)
            pos += pmap__rec_hdr(out + pos, 0, b->len);
        if (b->len > INLINE_MAX) {
            rc = seg_add(w, NULL, start, pos - start);
            if (rc == 0)
                rc = seg_add(w, b->data, 0, b->len);
            if (rc != 0)
                return rc;
            start = pos;
        } else if (b->len > 0) {
            pmap__copy(out + pos, b->data, b->len);
            pos += b->len;
        }
    }
    pmap__frame_trl(out + pos, &f);
    pos += PMAP__TRL_SIZE;
    rc = seg_add(w, NULL, start, pos - start);
    if (rc != 0)
        return rc;
    w->sent += n;
    return 0; /* written by the next pump(), under one SIGPIPE guard */
}

static unsigned alive_ready(const struct pmap_pool *p)
{
    unsigned n = 0;
    int i;

    for (i = 0; i < p->nworkers; i++)
        if (p->w[i].state == W_READY)
            n++;
    return n;
}

static int breaker_tripped(const struct pmap_pool *p)
{
    return p->start_fail >= (unsigned)p->nworkers + 3u && alive_ready(p) == 0;
}

static int spawn_missing(struct pmap_pool *p, uint64_t now)
{
    int i;

    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->state != W_EMPTY)
            continue;
        if (breaker_tripped(p))
            return PMAP_EWORKER;
        if (now < p->spawn_after_ns)
            return 0;
        if (spawn(p, w) != 0) {
            start_failed(p, now);
            if (breaker_tripped(p))
                return PMAP_EWORKER;
            return 0;
        }
    }
    return 0;
}

/* Timeouts, grace periods and exits we are waiting for. Returns the
 * earliest deadline still ahead (0: none). */
static uint64_t check_deadlines(struct pmap_pool *p, uint64_t now)
{
    uint64_t next = 0;
    unsigned limit_ms = p->opt.task_timeout_ms;
    int i;

#define NEXT(t)                                                                                    \
    do {                                                                                           \
        if (next == 0 || (t) < next)                                                               \
            next = (t);                                                                            \
    } while (0)

    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->state == W_EMPTY)
            continue;
        if (w->state == W_KILLED || w->state == W_EXITED) {
            int code = -1;

            if (reap(w, 0, &code)) {
                if (w->rx >= 0) {
                    /* Gone, but someone else (a task's own child) still
                     * holds the pipe: take what arrived, then settle. */
                    read_worker(p, w, now);
                    if (w->state == W_EMPTY)
                        continue;
                    pmap__close(&w->rx);
                }
                w->pending = 0;
                finalize(p, w, code);
                continue;
            }
            if (now >= w->deadline_ns) {
                signal_worker(w, SIGKILL);
                w->deadline_ns = now + EXIT_WAIT_NS;
            }
            /* Poll for the exit often while it is due. */
            NEXT(now + 2000000u < w->deadline_ns ? now + 2000000u : w->deadline_ns);
            continue;
        }
        if (w->sent > w->recv || w->state != W_READY) {
            /* EOF normally says a worker died, but a task's own child may
             * hold the pipe open: look for the exit itself now and then. */
            int code = -1;

            if (now >= w->next_reap_ns) {
                w->next_reap_ns = now + 1000000000u;
                if (reap(w, 0, &code)) {
                    read_worker(p, w, now);
                    if (w->state != W_EMPTY) {
                        pmap__close(&w->rx);
                        w->pending = 0;
                        finalize(p, w, code);
                    }
                    continue;
                }
            }
            NEXT(w->next_reap_ns);
        }
        if (limit_ms && w->sent > w->recv) {
            struct shm_slot *s = &p->shm[w->id];
            uint64_t a, t, b;

            a = atomic_load_explicit(&s->started, memory_order_acquire);
            t = atomic_load_explicit(&s->start_ns, memory_order_acquire);
            b = atomic_load_explicit(&s->started, memory_order_acquire);
            if (a == b && t != 0 && a > w->recv && a <= w->sent) {
                uint64_t due = t + (uint64_t)limit_ms * 1000000u;

                if (now >= due) {
                    w->blame = a - 1;
                    kill_worker(w, K_TIMEOUT, SIGTERM);
                    NEXT(w->deadline_ns);
                } else {
                    NEXT(due);
                }
            } else if (a != b || t != 0) {
                NEXT(now + 1000000u);
            } else {
                /* Between records: look again soon, the next one starts. */
                NEXT(now + 10000000u);
            }
        }
    }
#undef NEXT
    return next;
}

static int be_pump(void *be, int timeout_ms, const struct pmap__sink *sink)
{
    struct pmap_pool *p = be;
    struct pmap__sigpipe_guard g;
    uint64_t now = pmap__now_ns(), next;
    int i, nfds = 0, rc, empty, guarded;

    p->sink = sink;
    p->fatal = 0;
    if (sink != NULL) {
        rc = spawn_missing(p, now);
        if (rc != 0)
            return rc;
    }
    /* SIGPIPE is blocked from the first write to the end of the pump: a
     * worker may die while we write to it, and the host must never see
     * the signal. A pump with nothing to write (most of them while results
     * are delivered) skips the three system calls of the guard. */
    guarded = 0;
    for (i = 0; i < p->nworkers; i++) {
        if (p->w[i].tx >= 0 && tx_pending(&p->w[i])) {
            if (!guarded) {
                pmap__sigpipe_enter(&g);
                guarded = 1;
            }
            write_worker(p, &p->w[i], &g);
        }
    }
    for (i = 0, empty = 0; i < p->nworkers; i++)
        empty += p->w[i].state == W_EMPTY;
    next = check_deadlines(p, now);
    /* A worker settled just now (its records reported or queued again, its
     * place free): the iterator has work at once, so do not sleep. */
    for (i = 0; i < p->nworkers; i++)
        empty -= p->w[i].state == W_EMPTY;
    if (empty < 0)
        timeout_ms = 0;
    if (sink != NULL && p->spawn_after_ns > now) {
        for (i = 0; i < p->nworkers; i++)
            if (p->w[i].state == W_EMPTY && (next == 0 || p->spawn_after_ns < next))
                next = p->spawn_after_ns;
    }
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->state == W_EMPTY)
            continue;
        if (w->rx >= 0) {
            p->pfd[nfds].fd = w->rx;
            p->pfd[nfds].events = POLLIN;
            p->pfw[nfds++] = w;
        }
        if (w->tx >= 0 && tx_pending(w)) {
            p->pfd[nfds].fd = w->tx;
            p->pfd[nfds].events = POLLOUT;
            p->pfw[nfds++] = w;
        }
    }
    if (next != 0) {
        uint64_t ms = next > now ? (next - now + 999999u) / 1000000u : 0;

        if (timeout_ms < 0 || ms < (uint64_t)timeout_ms)
            timeout_ms = (int)(ms > INT_MAX ? INT_MAX : ms);
    }
    rc = 0;
    if (nfds > 0 || timeout_ms >= 0) {
        rc = poll(p->pfd, (nfds_t)nfds, timeout_ms);
        if (rc < 0 && errno != EINTR) {
            if (guarded)
                pmap__sigpipe_leave(&g);
            return PMAP_ESYS;
        }
    }
    now = pmap__now_ns();
    for (i = 0; i < nfds && rc > 0 && !p->fatal; i++) {
        struct worker *w = p->pfw[i];

        if (p->pfd[i].revents == 0)
            continue;
        if (p->pfd[i].fd == w->rx && w->rx >= 0) {
            read_worker(p, w, now);
        } else if (p->pfd[i].fd == w->tx && w->tx >= 0) {
            if (!guarded) {
                pmap__sigpipe_enter(&g);
                guarded = 1;
            }
            write_worker(p, w, &g);
        }
    }
    if (guarded)
        pmap__sigpipe_leave(&g);
    if (p->fatal)
        return p->fatal;
    (void)check_deadlines(p, pmap__now_ns());

    /* Recycling: a worker that used its allowance, or retired, exits once
     * its results are all back (EOF on its input tells it to). */
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if ((w->state == W_READY || w->state == W_STARTING) && w->sent == w->recv &&
            ((p->opt.max_tasks_per_worker && w->sent >= p->opt.max_tasks_per_worker) ||
             w->retired)) {
            pmap__close(&w->tx);
            w->state = W_DRAINING;
            w->kill = K_STOP;
        }
    }
    return 0;
}

/* Stop a worker now and wait for it: used when its records are abandoned. */
static void stop_now(struct pmap_pool *p, struct worker *w)
{
    int code;

    signal_worker(w, SIGKILL);
    (void)reap(w, 1, &code);
    pmap__close(&w->tx);
    pmap__close(&w->rx);
    (void)p;
    worker_reset(w);
}

static void be_cancel(void *be)
{
    struct pmap_pool *p = be;
    int i;

    p->sink = NULL;
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->state == W_EMPTY)
            continue;
        /* A recycled worker that owes us nothing is exiting on its own:
         * killing it would lose what its tasks printed but had not flushed. */
        if (w->state == W_DRAINING && w->sent == w->recv && pmap__decoder_idle(&w->dec))
            continue;
        if (w->sent != w->recv || w->state == W_KILLED || w->state == W_EXITED ||
            w->state == W_DRAINING || !pmap__decoder_idle(&w->dec) || tx_pending(w))
            stop_now(p, w);
    }
}

static void be_begin(void *be)
{
    struct pmap_pool *p = be;

    p->start_fail = 0;
    p->spawn_after_ns = 0;
}

static const struct pmap__backend_ops process_ops = {
    be_nworkers, be_room, be_inflight, be_submit, be_pump, be_cancel, be_begin,
};

/* ------------------------------------------------------------------------ */
/* Public pool API                                                          */
/* ------------------------------------------------------------------------ */

static void pool_free(struct pmap_pool *p)
{
    int i;

    if (p->w != NULL) {
        for (i = 0; i < p->nworkers; i++) {
            struct worker *w = &p->w[i];

            pmap__close(&w->tx);
            pmap__close(&w->rx);
            free(w->fifo);
            free(w->segs);
            free(w->stage);
            pmap__buf_free(&w->txbuf);
        }
    }
    if (p->shm != NULL && p->shm != MAP_FAILED)
        munmap(p->shm, p->shm_len);
    free(p->w);
    free(p->pfd);
    free(p->pfw);
    free(p);
}

/* End every worker: EOF first (idle workers exit at once), SIGKILL for any
 * still there after a grace period. */
static void stop_all(struct pmap_pool *p)
{
    uint64_t deadline;
    long nap_ns = 20000;
    int i, left;

    for (i = 0; i < p->nworkers; i++)
        pmap__close(&p->w[i].tx);
    deadline = pmap__now_ns() + STOP_GRACE_NS;
    for (;;) {
        int nfds = 0;
        uint64_t now = pmap__now_ns();

        left = 0;
        for (i = 0; i < p->nworkers; i++) {
            struct worker *w = &p->w[i];
            int code;

            if (w->pid <= 0)
                continue;
            if (w->rx < 0 && reap(w, 0, &code)) {
                w->pid = -1;
                continue;
            }
            left++;
            if (w->rx >= 0) {
                p->pfd[nfds].fd = w->rx;
                p->pfd[nfds].events = POLLIN;
                p->pfw[nfds++] = w;
            }
        }
        if (left == 0 || now >= deadline)
            break;
        if (nfds == 0) {
            /* Every pipe is at EOF: the exits are a moment away (EOF comes
             * while the process is still tearing down). Naps from 20 us,
             * doubling to 1 ms, so that an idle pool stops in tens of
             * microseconds, not in a millisecond per round. */
            struct timespec ts = {0, nap_ns};

            nanosleep(&ts, NULL);
            if (nap_ns < 1000000)
                nap_ns *= 2;
            continue;
        }
        if (poll(p->pfd, (nfds_t)nfds, (int)((deadline - now) / 1000000u) + 1) < 0 &&
            errno != EINTR)
            break;
        for (i = 0; i < nfds; i++) {
            struct worker *w = p->pfw[i];
            unsigned char junk[4096];
            long n;

            if (p->pfd[i].revents == 0)
                continue;
            /* Whatever it still says is of no use now: read to EOF. */
            do {
                n = pmap__read_once(w->rx, junk, sizeof junk);
            } while (n > 0);
            if (n == 0 || n < -1)
                pmap__close(&w->rx);
        }
    }
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];
        int code;

        if (w->pid > 0) {
            signal_worker(w, SIGKILL);
            (void)reap(w, 1, &code);
        }
        pmap__close(&w->rx);
        worker_reset(w);
    }
}

pmap_pool *pmap_pool_create(pmap_task_fn fn, void *ctx, const pmap_options *opt)
{
    struct pmap_pool *p;
    int i, rc, saved;

    if (fn == NULL || (opt != NULL && opt->workers < 0)) {
        errno = EINVAL;
        return NULL;
    }
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (opt != NULL)
        p->opt = *opt;
    else
        pmap_options_init(&p->opt);
    p->fn = fn;
    p->ctx = ctx;
    p->owner = getpid();
    p->nworkers = p->opt.workers ? p->opt.workers : pmap_cpu_count();
    p->max_record = p->opt.max_record_bytes ? p->opt.max_record_bytes : PMAP__DEFAULT_MAX_RECORD;
    if (p->opt.window) {
        p->window = p->opt.window;
    } else {
        uint64_t wnd = (uint64_t)p->nworkers * 4u * PMAP__CHUNK_MAX;

        if (p->opt.chunk && (uint64_t)p->nworkers * 4u * p->opt.chunk > wnd)
            wnd = (uint64_t)p->nworkers * 4u * p->opt.chunk;
        p->window = wnd > 65536u ? 65536u : (unsigned)wnd;
    }
    p->w = calloc((size_t)p->nworkers, sizeof *p->w);
    p->pfd = calloc((size_t)p->nworkers * 2u, sizeof *p->pfd);
    p->pfw = calloc((size_t)p->nworkers * 2u, sizeof *p->pfw);
    p->shm_len = (size_t)p->nworkers * sizeof(struct shm_slot);
    p->shm = mmap(NULL, p->shm_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p->w == NULL || p->pfd == NULL || p->pfw == NULL || p->shm == MAP_FAILED) {
        saved = p->shm == MAP_FAILED ? errno : ENOMEM;
        pool_free(p);
        errno = saved;
        return NULL;
    }
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        w->pool = p;
        w->id = i;
        w->tx = -1;
        w->rx = -1;
        pmap__buf_init(&w->txbuf, SIZE_MAX);
        worker_reset(w);
    }
    for (i = 0; i < p->nworkers; i++) {
        rc = spawn(p, &p->w[i]);
        if (rc != 0) {
            saved = rc == PMAP_ENOMEM ? ENOMEM : errno;
            goto fail;
        }
    }
    /* Wait until every worker has run worker_init. */
    for (;;) {
        int ready = 0, dead = 0;

        for (i = 0; i < p->nworkers; i++) {
            ready += p->w[i].state == W_READY;
            dead += p->w[i].state != W_READY && p->w[i].state != W_STARTING;
        }
        if (dead) {
            saved = ECHILD;
            goto fail;
        }
        if (ready == p->nworkers)
            break;
        rc = be_pump(p, -1, NULL);
        if (rc != 0) {
            saved = rc == PMAP_ENOMEM ? ENOMEM : errno;
            goto fail;
        }
    }
    p->sink = NULL;
    return p;

fail:
    stop_all(p);
    pool_free(p);
    errno = saved;
    return NULL;
}

int pmap_pool_destroy(pmap_pool *pool)
{
    if (pool == NULL)
        return PMAP_OK;
    if (getpid() != pool->owner) {
        /* Inherited through the host's fork(): the workers belong to the
         * parent. Release this process's copies only. */
        pool_free(pool);
        return PMAP_OK;
    }
    if (pool->iter != NULL)
        return PMAP_EBUSY;
    stop_all(pool);
    pool_free(pool);
    return PMAP_OK;
}

int pmap__pool_view(pmap_pool *pool, struct pmap__pool_view *v)
{
    if (pool == NULL || getpid() != pool->owner)
        return PMAP_EINVAL;
    v->ops = &process_ops;
    v->be = pool;
    v->chunk = pool->opt.chunk;
    v->window = pool->window;
    v->window_auto = pool->opt.window == 0;
    v->max_record = pool->max_record;
    v->iter_slot = &pool->iter;
    return 0;
}
