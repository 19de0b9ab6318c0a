/*
 * The process backend, caller's side: workers are local processes (the
 * worker program of worker.c), each behind two pipes (parameters in,
 * results out). This file starts them, multiplexes the pipes with poll(),
 * attributes crashes and timeouts to the exact record, replaces dead
 * workers, recycles old ones, and stops and reaps them.
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

#include "arena.h"
#include "backend.h"
#include "buf.h"
#include "io.h"
#include "spawner.h"
#include "wire.h"
#include "worker.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

/* Parameters up to this size are copied into the batch; larger ones are
 * written straight from the record with writev. */
#define INLINE_MAX 4096u
#define STAGE_SIZE (128u * 1024u)
/* Most bytes asked of one read into a record's own buffer. */
#define READ_MAX ((size_t)1 << 24)
/* A payload with this many bytes still to come is read straight into its
 * record's buffer, and the read after it asks only for PEEK_SIZE bytes:
 * the trailer and headers before the next payload, which then goes
 * straight too. Staged through STAGE_SIZE reads instead, records of 64 KiB
 * were copied twice in this process, out of the pipe and out of the
 * stage. */
#define DIRECT_MIN ((size_t)32 << 10)
#define PEEK_SIZE 256u
/* Bytes read from one worker per pump, so one busy pipe cannot starve
 * the others. */
#define READ_BUDGET (8u * 1024u * 1024u)
/* Most records in flight on one worker (a sanity bound on the fifo). */
#define FIFO_MAX (1u << 30)
#define TERM_GRACE_NS (50u * PMAP__NS_PER_MS)  /* SIGTERM -> SIGKILL for a timed-out worker */
#define EXIT_WAIT_NS (1u * PMAP__NS_PER_S)     /* EOF seen, process not yet gone -> SIGKILL */
#define EXIT_POLL_NS (2u * PMAP__NS_PER_MS)    /* how often to look for an exit that is due */
#define HIDDEN_EXIT_NS (1u * PMAP__NS_PER_S)   /* how often to look for an exit no EOF told of */
#define STOP_GRACE_NS (500u * PMAP__NS_PER_MS) /* destroy: idle workers to exit on EOF */
#define START_BACKOFF_NS (5u * PMAP__NS_PER_MS) /* first pause after a failed start */
#define START_BACKOFF_SHIFT_MAX 8u             /* ... doubling up to 2^8 times that */
/* While a time limit is set: how soon to look again at a worker whose
 * start time was being written (torn read), or that is between records. */
#define TIMING_RETRY_NS (1u * PMAP__NS_PER_MS)
#define BETWEEN_RECORDS_NS (10u * PMAP__NS_PER_MS)
#define UNEXPLAINED_TRIES 3u /* re-runs before an unexplained crash is blamed */

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
    struct pool *pool;
    int id; /* its place, 0 .. nworkers-1 */
    pid_t pid;
    int tx; /* caller -> worker, non-blocking */
    int rx; /* worker -> caller, non-blocking */
    /* In the pool's epoll set (pool.ep): rx, and tx while a write to it
     * would block. */
    unsigned char ep_rx, ep_tx;
    enum wstate state;
    enum kill_reason kill;
    int ever_ready;
    int retired;
    int reaped; /* the spawner reported it gone; its status is in rcode */
    int rcode;
    uint64_t deadline_ns;
    uint64_t next_reap_ns; /* next look for an exit that no EOF announced */
    uint64_t sent;         /* records sent to this process */
    uint64_t recv;         /* results accepted */
    uint32_t pending;      /* results of the current frame, accepted at its trailer */
    uint64_t blame;        /* K_TIMEOUT: the record that ran too long */
    uint64_t task_gen;     /* the task it runs: pool.task_gen when told; 0: the pool's own */
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
    int peek; /* the last read went straight into a record: ask PEEK_SIZE next */
    /* Its process's arena (arena.h): parameters written here, results
     * read from there; empty when it has none. */
    struct pmap__arena ain, aout;
    int arena_seen; /* the current frame had results in the arena */
};

struct pool {
    struct pmap__spawner *sp; /* starts, signals and reaps the workers */
    /* The pool's own task, which every new worker starts with. */
    pmap_task_fn fn;
    void *ctx;
    /* The task of the current map when it is not fn/ctx: task_gen names
     * it (0: fn/ctx), so a worker that runs another is told before its
     * next batch. */
    pmap_task_fn task_fn;
    void *task_ctx;
    uint64_t task_gen, task_seq;
    unsigned timeout_ms;
    unsigned long max_tasks;
    size_t max_record;
    size_t arena_half; /* each worker's arena halves; 0: no arenas */
    /* Shared parameter blocks (arena.h): generators write large
     * parameters into them, and sending one copies nothing. */
    struct pmap__blocks blk;
    int nworkers;
    struct worker *w;
    struct pmap__shm_slot *shm;
    size_t shm_len;
    const struct pmap__sink *sink; /* during pump() only */
    int fatal;                     /* an error found inside a callback */
    unsigned start_fail;           /* workers in a row that died before READY */
    uint64_t spawn_after_ns;
    struct pollfd *pfd;
    struct worker **pfw;
    /* For event loops (be_fd): an epoll set of the pipes, made on the
     * first request, -1 until then. */
    int ep;
    uint64_t next_ns; /* the earliest deadline the last pump left (0: none) */
    int exits_noted; /* the spawner's descriptor polled readable */
};

static const struct pmap__decoder_ops caller_ops;
static unsigned char empty_byte;

/* ------------------------------------------------------------------------ */
/* Starting and ending workers                                              */
/* ------------------------------------------------------------------------ */

static void place_reset(struct worker *w)
{
    w->pid = -1;
    w->ep_rx = 0;
    w->ep_tx = 0;
    w->state = W_EMPTY;
    w->kill = K_NONE;
    w->ever_ready = 0;
    w->retired = 0;
    w->reaped = 0;
    w->rcode = -1;
    w->deadline_ns = 0;
    w->next_reap_ns = 0;
    w->sent = 0;
    w->recv = 0;
    w->pending = 0;
    w->blame = 0;
    w->task_gen = 0; /* a new process starts with the pool's task */
    w->txbuf.len = 0;
    w->nseg = 0;
    w->seg_pos = 0;
    w->seg_off = 0;
}

/*
 * The epoll set of be_fd. It exists only once an event loop asked for it,
 * so the blocking path pays one test per change of a pipe. An entry is
 * removed before its descriptor is closed: a copy inherited by a child (a
 * new worker that has not closed it yet, a host's fork) would otherwise
 * keep the entry of a closed descriptor alive, polling readable for as
 * long as that child lives. Never from a child that inherited the pool:
 * the set is shared with the parent (pool_free closes without removing).
 *
 * Watch tx for room (on) or stop (off). A pipe with room polls writable
 * all the time, so it is watched only while a write would block. 0 or
 * PMAP_ESYS.
 */
static int tx_watch(struct worker *w, int on)
{
    struct pool *p = w->pool;

    if (w->ep_tx == on || p->ep < 0)
        return 0;
    if (on) {
        if (pmap__epoll_add(p->ep, w->tx, 1) != 0)
            return PMAP_ESYS;
    } else {
        pmap__epoll_del(p->ep, w->tx);
    }
    w->ep_tx = (unsigned char)on;
    return 0;
}

static void close_tx(struct worker *w)
{
    (void)tx_watch(w, 0);
    pmap__close(&w->tx);
}

static void close_rx(struct worker *w)
{
    if (w->ep_rx) {
        pmap__epoll_del(w->pool->ep, w->rx);
        w->ep_rx = 0;
    }
    pmap__close(&w->rx);
}

static void stop_now(struct worker *w);

static void arena_drop(struct worker *w)
{
    pmap__arena_unmap(&w->ain);
    pmap__arena_unmap(&w->aout);
}

/* A fresh arena for the worker about to be forked, mapped here (and not
 * inherited by any child: the worker maps its own from *fd). 0, or -1:
 * this worker goes without (its records all take the pipes). */
static int arena_make(struct pool *p, struct worker *w, int *fd)
{
    if (pmap__arena_open(p->arena_half, fd) != 0)
        return -1;
    if (pmap__arena_map(&w->ain, *fd, p->arena_half, 0, 1, 1) != 0 ||
        pmap__arena_map(&w->aout, *fd, p->arena_half, 1, 0, 1) != 0) {
        arena_drop(w);
        pmap__close(fd);
        return -1;
    }
    return 0;
}

static int start_worker(struct pool *p, struct worker *w)
{
    pid_t pid;
    int tx, rx, rc, afd = -1;

    arena_drop(w);
    if (p->arena_half != 0 && arena_make(p, w, &afd) != 0)
        afd = -1;
    /* The worker keeps the pool's blocks, read-only; no other child does. */
    pmap__blocks_keep(p->blk.base);
    rc = pmap__spawner_start(p->sp, w->id, afd, &pid, &tx, &rx);
    pmap__blocks_keep(NULL);
    pmap__close(&afd); /* the mappings stay */
    if (rc != 0) {
        arena_drop(w);
        return rc;
    }
    place_reset(w);
    w->pid = pid;
    w->tx = tx;
    w->rx = rx;
    w->state = W_STARTING;
    pmap__decoder_init(&w->dec, &caller_ops, w, p->max_record);
    w->peek = 0;
    if (p->ep >= 0) {
        /* Unheard by the event loop, the worker would hang the map: a
         * failed start instead. */
        if (pmap__epoll_add(p->ep, rx, 0) != 0) {
            int saved = errno;

            stop_now(w);
            errno = saved;
            return PMAP_ESYS;
        }
        w->ep_rx = 1;
    }
    return 0;
}

/* Wait for exactly this worker. 1: gone (status in *code, -1 if it
 * could not be known), 0: still running. */
static int reap(struct worker *w, int block, int *code)
{
    if (w->reaped) {
        *code = w->rcode;
        return 1;
    }
    if (w->pid <= 0 || !pmap__spawner_reap(w->pool->sp, w->pid, block, code))
        return 0;
    w->reaped = 1;
    w->rcode = *code;
    return 1;
}

static void signal_worker(struct worker *w, int sig)
{
    /* Only while the spawner has not reported it gone: until then its pid
     * cannot have been reused. */
    if (w->pid > 0 && !w->reaped)
        pmap__spawner_kill(w->pool->sp, w->pid, sig);
}

static void tx_clear(struct worker *w)
{
    if (w->ep_tx)
        (void)tx_watch(w, 0);
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
 * (doubling) before the next fork, so a broken environment costs no busy
 * loop. */
static void start_failed(struct pool *p, uint64_t now)
{
    unsigned shift = p->start_fail < START_BACKOFF_SHIFT_MAX ? p->start_fail
                                                             : START_BACKOFF_SHIFT_MAX;

    p->start_fail++;
    p->spawn_after_ns = now + ((uint64_t)START_BACKOFF_NS << shift);
}

static void report_failed(const struct pmap__sink *s, struct pmap__rec *r, int status, int code)
{
    r->status = status;
    r->code = code;
    r->result.len = 0;
    s->done(s->it, r);
}

/* The process is gone and every byte it wrote has been read: settle the
 * records it had, then free its place. */
static void finalize(struct pool *p, struct worker *w, int code)
{
    const struct pmap__sink *s = p->sink;
    uint64_t started = atomic_load(&p->shm[w->id].started);
    uint64_t culprit = UINT64_MAX, seq;
    int status = PMAP_ECRASH;
    int unexplained = 0;

    close_tx(w);
    close_rx(w);
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
        /* Records before the last one started ran to the end, but their
         * results never came out. */
        if (started > w->sent)
            started = w->sent;
        for (seq = w->recv; seq < w->sent; seq++) {
            struct pmap__rec *r = fifo_at(w, seq);

            if (seq == culprit) {
                report_failed(s, r, status, code);
            } else if (unexplained && ++r->tries >= UNEXPLAINED_TRIES) {
                report_failed(s, r, PMAP_ECRASH, code);
            } else {
                if (seq + 1 < started)
                    r->lost = 1;
                s->retry(s->it, r);
            }
        }
    }
    arena_drop(w);
    place_reset(w);
}

static void read_worker(struct pool *p, struct worker *w, uint64_t now);

/* The process is gone (reaped, status `code`): take what it wrote before
 * it died (a task's own child may still hold the pipe open, so EOF need
 * not have come), then settle its records. */
static void settle_gone(struct pool *p, struct worker *w, int code, uint64_t now)
{
    if (w->rx >= 0) {
        read_worker(p, w, now);
        if (w->state == W_EMPTY)
            return; /* the read reached EOF and settled it */
        close_rx(w);
    }
    w->pending = 0; /* a partial frame is dropped: its records are unfinished */
    finalize(p, w, code);
}

/* Records in flight get `status` now (a protocol failure is not re-run:
 * the stream cannot be trusted to say which records it finished). */
static void fail_inflight(struct pool *p, struct worker *w, int status)
{
    const struct pmap__sink *s = p->sink;
    uint64_t seq;

    if (s != NULL)
        for (seq = w->recv; seq < w->sent; seq++)
            report_failed(s, fifo_at(w, seq), status, 0);
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

static void protocol_failure(struct pool *p, struct worker *w)
{
    fail_inflight(p, w, PMAP_EPROTO);
    kill_worker(w, K_PROTO, SIGKILL);
    /* Nothing more from this stream is believed. */
    close_rx(w);
}

/* EOF on the result pipe (or the pipe closed after a protocol failure):
 * settle now if the process is gone, else give it a moment to be. */
static void on_eof(struct pool *p, struct worker *w, uint64_t now)
{
    int code = -1;

    if (reap(w, 0, &code)) {
        settle_gone(p, w, code, now);
        return;
    }
    if (w->state != W_EXITED && w->state != W_KILLED) {
        w->state = W_EXITED;
        w->deadline_ns = now + EXIT_WAIT_NS;
    }
}

/* ------------------------------------------------------------------------ */
/* The stream from a worker                                                 */
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
    if (pmap__stash_reserve(w->pool->sink->stash, &r->result, (size_t)len) != 0) {
        w->pool->fatal = PMAP_ENOMEM;
        return PMAP_ENOMEM;
    }
    /* The result's bytes are all about to be written. */
    pmap__buf_populate(&r->result, 0, (size_t)len);
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

/* A record the library failed in the worker (PMAP__R_STATUS). */
static PMAP__RARE void c_status(struct pmap__rec *r, unsigned status, int code)
{
    r->status = status == PMAP__R_STATUS ? code : PMAP_ETASK;
    r->code = status == PMAP__R_STATUS ? 0 : code;
}

static unsigned char *c_record(void *ud, unsigned status, int code, uint64_t len)
{
    struct worker *w = ud;
    struct pmap__rec *r = fifo_at(w, w->recv + w->pending);

    r->status = PMAP_OK;
    r->code = 0;
    if (status != PMAP__R_OK)
        c_status(r, status, code);
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

    r->status = PMAP_OK;
    r->code = 0;
    if (status != PMAP__R_OK)
        c_status(r, status, code);
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
    const struct pmap__sink *s = w->pool->sink;
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
    /* The records whose results are in: their parameters' regions are
     * ours again, and the results' regions we copied out are the
     * worker's (release: our copies come before its next writes). */
    pmap__arena_release(&w->ain, w->recv);
    if (w->arena_seen) {
        w->arena_seen = 0;
        atomic_store_explicit(&w->pool->shm[w->id].consumed, w->recv, memory_order_release);
    }
    if (s != NULL && s->timing != NULL)
        s->timing(s->it, f->count, f->aux);
    return 0;
}

/* A result in the worker's arena: checked against our own mapping of it,
 * then copied out into the record's buffer at once, so nothing handed out
 * ever points into memory the worker can write (arena.h). */
static int c_arena(void *ud, unsigned status, int code, uint64_t off, uint64_t len)
{
    struct worker *w = ud;
    struct pmap__rec *r = fifo_at(w, w->recv + w->pending);
    const unsigned char *src = pmap__arena_at(&w->aout, off, len);

    if (src == NULL)
        return PMAP_EPROTO;
    r->status = PMAP_OK;
    r->code = 0;
    if (status != PMAP__R_OK)
        c_status(r, status, code);
    if (len > r->result.cap && c_result_grow(w, r, len) != 0)
        return PMAP_ENOMEM;
    memcpy(r->result.data, src, (size_t)len);
    r->result.len = (size_t)len;
    w->pending++;
    w->arena_seen = 1;
    return 0;
}

/* No record_end: c_record counts the record (see there). */
static const struct pmap__decoder_ops caller_ops = {c_frame, c_record, NULL, c_frame_end, c_arena};

/* Read what the worker has written (up to a budget). */
static void read_worker(struct pool *p, struct worker *w, uint64_t now)
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

        if (direct != NULL && want >= DIRECT_MIN && want <= READ_MAX) {
            /* The rest of the payload in place, and in the same call
             * the headers after it (a peek's worth). */
            n = pmap__read2_once(w->rx, direct, (size_t)want, w->stage, PEEK_SIZE);
            asked = (size_t)want + PEEK_SIZE;
            rc = 0;
            if (n > 0)
                rc = pmap__decode_direct(&w->dec, (size_t)n < want ? (size_t)n : (size_t)want);
            if (rc == 0 && n > 0 && (size_t)n > want) {
                rc = pmap__decode_with(&w->dec, w->stage, (size_t)n - (size_t)want, c_whole);
                w->peek = pmap__decoder_large(&w->dec, DIRECT_MIN);
            }
        } else if (direct != NULL && want >= DIRECT_MIN) {
            asked = READ_MAX;
            n = pmap__read_once(w->rx, direct, asked);
            rc = n > 0 ? pmap__decode_direct(&w->dec, (size_t)n) : 0;
        } else {
            asked = w->peek ? PEEK_SIZE : STAGE_SIZE;
            n = pmap__read_once(w->rx, w->stage, asked);
            rc = n > 0 ? pmap__decode_with(&w->dec, w->stage, (size_t)n, c_whole) : 0;
            /* Frames of large records: peek before each payload, even
             * when the pipe holds it whole, so that it is read in place. */
            w->peek = pmap__decoder_large(&w->dec, DIRECT_MIN);
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
            close_rx(w);
            on_eof(p, w, now);
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

/* ------------------------------------------------------------------------ */
/* The stream to a worker                                                   */
/* ------------------------------------------------------------------------ */

/* Write pending output; the guard turns EPIPE into a dead worker. */
static void write_worker(struct worker *w, struct pmap__sigpipe_guard *g)
{
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
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* An event loop must hear when the pipe has room again. */
                if (tx_watch(w, 1) != 0)
                    w->pool->fatal = PMAP_ESYS;
                return;
            }
            if (errno == EPIPE)
                g->epipe = 1;
            /* The worker closed its end: it is dying; its EOF settles it. */
            tx_clear(w);
            close_tx(w);
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
    if (need > FIFO_MAX)
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

/* Queue a K_USE frame: the worker runs the pool's current task from its
 * next batch on. */
static PMAP__RARE int tx_use(struct worker *w)
{
    struct pool *p = w->pool;
    struct pmap__frame f;
    size_t pos = w->txbuf.len;
    int rc;

    if (p->task_gen != 0)
        pmap__frame_use(&f, p->task_fn, p->task_ctx);
    else
        pmap__frame_use(&f, p->fn, p->ctx);
    if (pmap__buf_reserve(&w->txbuf, pos + PMAP__HDR_SIZE + PMAP__TRL_SIZE) != 0)
        return PMAP_ENOMEM;
    pmap__frame_hdr(w->txbuf.data + pos, &f);
    pmap__frame_trl(w->txbuf.data + pos + PMAP__HDR_SIZE, &f);
    w->txbuf.len = pos + PMAP__HDR_SIZE + PMAP__TRL_SIZE;
    rc = seg_add(w, NULL, pos, PMAP__HDR_SIZE + PMAP__TRL_SIZE);
    if (rc != 0)
        return rc;
    w->task_gen = p->task_gen;
    return 0;
}

static int be_submit(void *be, int i, struct pmap__rec **recs, uint32_t n)
{
    struct pool *p = be;
    struct worker *w = &p->w[i];
    struct pmap__frame f;
    unsigned char *out;
    size_t inl = PMAP__HDR_SIZE + PMAP__TRL_SIZE, start, pos, len0;
    int uniform;
    struct pmap__rec **fifo;
    uint64_t sent;
    uint32_t k, mask, narena = 0, ri;
    const uint32_t rmark = w->ain.reg_n;
    int rc;

    if (n == 0)
        return 0;
    rc = fifo_reserve(w, n);
    if (rc != 0)
        return rc;
    if (!tx_pending(w))
        tx_clear(w);
    if (w->task_gen != p->task_gen) {
        rc = tx_use(w);
        if (rc != 0)
            return rc;
    }
    f.kind = PMAP__K_TASKS;
    f.count = n;
    f.seq = (uint32_t)w->sent;
    f.bytes = 0;
    f.aux = 0;
    /* Parameters of one length (the usual case) go bare, unless they are
     * large enough for the arena. */
    len0 = recs[0]->param.len;
    for (k = 1; k < n && recs[k]->param.len == len0; k++)
        ;
    uniform = k == n && (len0 < PMAP__ARENA_MIN || (w->ain.base == NULL && p->blk.base == NULL));
    if (uniform) {
        f.bytes = (uint64_t)n * len0;
        inl += len0 <= INLINE_MAX ? n * len0 : 0;
    } else {
        for (k = 0; k < n; k++) {
            size_t len = recs[k]->param.len;

            /* Written by the generator into a shared block: only where. */
            if (len >= PMAP__ARENA_MIN && pmap__blocks_own(&p->blk, recs[k]->param.data)) {
                f.bytes += PMAP__REC_ASIZE;
                inl += PMAP__REC_ASIZE;
                continue;
            }
            /* A region of the arena, in the order of the records (the
             * second pass finds them so). */
            if (len >= PMAP__ARENA_MIN && w->ain.base != NULL &&
                pmap__arena_alloc(&w->ain, w->sent + k, len) != PMAP__ARENA_NONE) {
                f.bytes += PMAP__REC_ASIZE;
                inl += PMAP__REC_ASIZE;
                narena++;
                continue;
            }
            f.bytes += pmap__rec_hdr_size(len) + len;
            inl += pmap__rec_hdr_size(len) + (len <= INLINE_MAX ? len : 0);
        }
    }
    f.flags = (uniform ? PMAP__F_UNIFORM : 0u) | (recs[0]->lost ? PMAP__F_EACH : 0u);
    /* One reservation for the whole frame, then the headers and the small
     * parameters are written in place; a large parameter is a segment of
     * its own, written from the record without a copy, or copied into the
     * arena. On ENOMEM the map fails as a whole and cancel() cleans up. */
    if (inl > SIZE_MAX - w->txbuf.len || pmap__buf_reserve(&w->txbuf, w->txbuf.len + inl) != 0) {
        rc = PMAP_ENOMEM;
        goto fail;
    }
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
    for (ri = rmark; k < n; k++) {
        const struct pmap_buf *b = &recs[k]->param;

        /* Filled ahead of w->sent, which alone makes the entry live: on
         * an error below the map fails and nothing reads it. */
        fifo[(sent + k) & mask] = recs[k];
        if (b->len >= PMAP__ARENA_MIN && pmap__blocks_own(&p->blk, b->data)) {
            /* Nothing to copy: workers see the block read-only, and the
             * iterator reuses it only once the record is done with. */
            pos += pmap__rec_arena(out + pos, PMAP__AREC_SHARED, b->len,
                                   (uint64_t)((uintptr_t)b->data - (uintptr_t)p->blk.base));
            continue;
        }
        if (narena != 0 && ri < w->ain.reg_n && pmap__arena_reg(&w->ain, ri)->seq == sent + k) {
            size_t off = pmap__arena_reg(&w->ain, ri++)->off;

            /* The region is the worker's from the send of this frame
             * until this record's result is read (arena.h). */
            memcpy(w->ain.base + off, b->data, b->len);
            pos += pmap__rec_arena(out + pos, 0, b->len, off);
            continue;
        }
        if (!uniform)
            pos += pmap__rec_hdr(out + pos, 0, b->len);
        if (b->len > INLINE_MAX) {
            rc = seg_add(w, NULL, start, pos - start);
            if (rc == 0)
                rc = seg_add(w, b->data, 0, b->len);
            if (rc != 0)
                goto fail;
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
        goto fail;
    w->sent += n;
    return 0; /* written by the next pump(), under one SIGPIPE guard */
fail:
    if (narena != 0)
        pmap__arena_unalloc(&w->ain, w->sent);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Deadlines: exits, hidden exits, time limits                              */
/* ------------------------------------------------------------------------ */

/* The earliest of the deadlines offered (0: none yet). */
static void earliest(uint64_t *next, uint64_t t)
{
    if (*next == 0 || t < *next)
        *next = t;
}

/* A worker that was signalled, or whose pipe hit EOF: settle it once it
 * is gone; SIGKILL it when it overstays. */
static void check_exit(struct pool *p, struct worker *w, uint64_t now, uint64_t *next)
{
    int code = -1;

    if (reap(w, 0, &code)) {
        settle_gone(p, w, code, now);
        return;
    }
    if (now >= w->deadline_ns) {
        signal_worker(w, SIGKILL);
        w->deadline_ns = now + EXIT_WAIT_NS;
    }
    /* Look for the exit often while it is due, unless the spawner tells. */
    if (pmap__spawner_fd(p->sp) < 0 && now + EXIT_POLL_NS < w->deadline_ns)
        earliest(next, now + EXIT_POLL_NS);
    else
        earliest(next, w->deadline_ns);
}

/* EOF normally says a worker died, but a task's own child may hold the
 * pipe open: look for the exit itself now and then. 1: it was gone. */
static int check_hidden_exit(struct pool *p, struct worker *w, uint64_t now, uint64_t *next)
{
    int code = -1;

    if (now >= w->next_reap_ns) {
        w->next_reap_ns = now + HIDDEN_EXIT_NS;
        if (reap(w, 0, &code)) {
            settle_gone(p, w, code, now);
            return 1;
        }
    }
    earliest(next, w->next_reap_ns);
    return 0;
}

/* The record running on a busy worker against the time limit. */
static void check_timeout(struct pool *p, struct worker *w, uint64_t now, uint64_t *next)
{
    struct pmap__shm_slot *s = &p->shm[w->id];
    uint64_t a, t, b;
    int code = -1;

    a = atomic_load_explicit(&s->started, memory_order_acquire);
    t = atomic_load_explicit(&s->start_ns, memory_order_acquire);
    b = atomic_load_explicit(&s->started, memory_order_acquire);
    if (a == b && t != 0 && a > w->recv && a <= w->sent) {
        uint64_t due = t + (uint64_t)p->timeout_ms * PMAP__NS_PER_MS;

        if (now < due) {
            earliest(next, due);
            return;
        }
        /* Gone already, its end not yet read (the caller was away longer
         * than the limit, e.g. a slow consumer): the worker died on its
         * own, not by a kill for the limit, so the record is the crash it
         * was (ETIMEOUT says its worker was killed). */
        if (reap(w, 0, &code)) {
            settle_gone(p, w, code, now);
            return;
        }
        w->blame = a - 1;
        kill_worker(w, K_TIMEOUT, SIGTERM);
        earliest(next, w->deadline_ns);
    } else if (a != b || t != 0) {
        earliest(next, now + TIMING_RETRY_NS); /* caught mid-update */
    } else {
        earliest(next, now + BETWEEN_RECORDS_NS); /* the next one starts soon */
    }
}

/* Timeouts, grace periods and exits we are waiting for. Returns the
 * earliest deadline still ahead (0: none). */
static uint64_t check_deadlines(struct pool *p, uint64_t now)
{
    uint64_t next = 0;
    int i;

    if (p->exits_noted) {
        /* News of exits: every worker's is looked for now. */
        p->exits_noted = 0;
        for (i = 0; i < p->nworkers; i++)
            p->w[i].next_reap_ns = 0;
    }
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->state == W_EMPTY)
            continue;
        if (w->state == W_KILLED || w->state == W_EXITED) {
            check_exit(p, w, now, &next);
            continue;
        }
        if ((w->sent > w->recv || w->state != W_READY) && check_hidden_exit(p, w, now, &next))
            continue;
        if (p->timeout_ms && w->sent > w->recv)
            check_timeout(p, w, now, &next);
    }
    return next;
}

/* ------------------------------------------------------------------------ */
/* Pump                                                                     */
/* ------------------------------------------------------------------------ */

static unsigned alive_ready(const struct pool *p)
{
    unsigned n = 0;
    int i;

    for (i = 0; i < p->nworkers; i++)
        if (p->w[i].state == W_READY)
            n++;
    return n;
}

/* The crash-loop breaker: workers keep dying before they are ready (a
 * failing worker_init, a broken environment) and none is running. */
static int breaker_tripped(const struct pool *p)
{
    return p->start_fail >= (unsigned)p->nworkers + 3u && alive_ready(p) == 0;
}

static int spawn_missing(struct pool *p, uint64_t now)
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
        if (start_worker(p, w) != 0) {
            start_failed(p, now);
            if (breaker_tripped(p))
                return PMAP_EWORKER;
            return 0;
        }
    }
    return 0;
}

static int count_empty(const struct pool *p)
{
    int i, n = 0;

    for (i = 0; i < p->nworkers; i++)
        n += p->w[i].state == W_EMPTY;
    return n;
}

/* Wait up to timeout_ms (-1: no limit) or until `next` (0: none) for the
 * pipes, then read and write what they allow. SIGPIPE is blocked from the
 * first write to the end: a worker may die while we write to it, and the
 * host must never see the signal. A pump with nothing to write (most of
 * them while results are delivered) skips the guard's system calls. */
static int poll_once(struct pool *p, int timeout_ms, uint64_t next, int writes)
{
    struct pmap__sigpipe_guard g;
    uint64_t now = pmap__now_ns();
    int i, nfds = 0, rc, guarded = 0;

    for (i = 0; writes && i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->tx >= 0 && tx_pending(w)) {
            if (!guarded) {
                pmap__sigpipe_enter(&g);
                guarded = 1;
            }
            write_worker(w, &g);
        }
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
    /* The fork server's news of exits; -1 in fork mode (exits that are due
     * are then looked for every EXIT_POLL_NS). */
    p->pfd[nfds].fd = pmap__spawner_fd(p->sp);
    if (p->pfd[nfds].fd >= 0) {
        p->pfd[nfds].events = POLLIN;
        p->pfw[nfds++] = NULL;
    }
    if (next != 0) {
        uint64_t ms = next > now ? (next - now + PMAP__NS_PER_MS - 1) / PMAP__NS_PER_MS : 0;

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
        if (w == NULL) {
            pmap__spawner_poll(p->sp);
            p->exits_noted = 1;
        } else if (p->pfd[i].fd == w->rx && w->rx >= 0) {
            read_worker(p, w, now);
        } else if (p->pfd[i].fd == w->tx && w->tx >= 0) {
            if (!guarded) {
                pmap__sigpipe_enter(&g);
                guarded = 1;
            }
            write_worker(w, &g);
        }
    }
    if (guarded)
        pmap__sigpipe_leave(&g);
    return p->fatal;
}

/* Recycling: a worker that used its allowance, or retired, exits once its
 * results are all back (EOF on its input tells it to). */
static void recycle_spent(struct pool *p)
{
    int i;

    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if ((w->state == W_READY || w->state == W_STARTING) && w->sent == w->recv &&
            ((p->max_tasks && w->sent >= p->max_tasks) || w->retired)) {
            close_tx(w);
            w->state = W_DRAINING;
            w->kill = K_STOP;
        }
    }
}

static int be_pump(void *be, int timeout_ms, const struct pmap__sink *sink)
{
    struct pool *p = be;
    uint64_t now = pmap__now_ns(), next;
    int empty, rc;

    p->sink = sink;
    p->fatal = 0;
    rc = spawn_missing(p, now);
    if (rc != 0)
        return rc;
    empty = count_empty(p);
    next = check_deadlines(p, now);
    /* A worker settled just now (its records reported or queued again, its
     * place free): the iterator has work at once, so do not sleep. */
    if (count_empty(p) > empty)
        timeout_ms = 0;
    if (p->spawn_after_ns > now && count_empty(p) > 0)
        earliest(&next, p->spawn_after_ns);
    rc = poll_once(p, timeout_ms, next, 1);
    if (rc != 0)
        return rc;
    p->next_ns = check_deadlines(p, pmap__now_ns());
    recycle_spent(p);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Cancel and begin                                                         */
/* ------------------------------------------------------------------------ */

/* Stop a worker now and wait for it: used when its records are abandoned. */
static void stop_now(struct worker *w)
{
    int code;

    signal_worker(w, SIGKILL);
    (void)reap(w, 1, &code);
    close_tx(w);
    close_rx(w);
    arena_drop(w);
    place_reset(w);
}

static void be_cancel(void *be)
{
    struct pool *p = be;
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
            stop_now(w);
    }
}

static void be_begin(void *be)
{
    struct pool *p = be;

    p->start_fail = 0;
    p->spawn_after_ns = 0;
}

static int be_nworkers(void *be)
{
    return ((struct pool *)be)->nworkers;
}

static uint32_t be_inflight(void *be, int i)
{
    struct worker *w = &((struct pool *)be)->w[i];

    return (uint32_t)(w->sent - w->recv);
}

static uint32_t be_room(void *be, int i)
{
    struct pool *p = be;
    struct worker *w = &p->w[i];

    if ((w->state != W_READY && w->state != W_STARTING) || w->retired || w->tx < 0)
        return 0;
    if (p->max_tasks == 0)
        return UINT32_MAX;
    if (w->sent >= p->max_tasks)
        return 0;
    return p->max_tasks - w->sent > UINT32_MAX ? UINT32_MAX : (uint32_t)(p->max_tasks - w->sent);
}

/* ------------------------------------------------------------------------ */
/* Event loops                                                              */
/* ------------------------------------------------------------------------ */

static int be_fd(void *be)
{
    struct pool *p = be;
    int i, saved;

    if (p->ep >= 0)
        return p->ep;
    if (pmap__epoll_open(&p->ep) != 0)
        return -1;
    /* The fork server's news of exits (it is never closed before ep). */
    if (pmap__spawner_fd(p->sp) >= 0 && pmap__epoll_add(p->ep, pmap__spawner_fd(p->sp), 0) != 0)
        goto fail;
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        if (w->rx >= 0) {
            if (pmap__epoll_add(p->ep, w->rx, 0) != 0)
                goto fail;
            w->ep_rx = 1;
        }
        if (w->tx >= 0 && tx_pending(w) && tx_watch(w, 1) != 0)
            goto fail;
    }
    return p->ep;
fail:
    saved = errno;
    for (i = 0; i < p->nworkers; i++)
        p->w[i].ep_rx = p->w[i].ep_tx = 0;
    pmap__close(&p->ep);
    errno = saved;
    return -1;
}

static int be_timeout(void *be)
{
    struct pool *p = be;
    uint64_t now = pmap__now_ns(), next = p->next_ns, ms;

    /* A free place is filled by the next pump (after the start backoff):
     * nothing on the pipes would tell. */
    if (count_empty(p) > 0)
        earliest(&next, p->spawn_after_ns > now ? p->spawn_after_ns : now);
    if (next == 0)
        return -1;
    if (next <= now)
        return 0;
    ms = (next - now + PMAP__NS_PER_MS - 1) / PMAP__NS_PER_MS;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* ------------------------------------------------------------------------ */
/* Create and destroy                                                       */
/* ------------------------------------------------------------------------ */

/* This process's copies of everything; no worker is touched. */
static void pool_free(struct pool *p)
{
    int i;

    if (p->w != NULL) {
        for (i = 0; i < p->nworkers; i++) {
            struct worker *w = &p->w[i];

            /* Closed, not removed from p->ep: this may be a child that
             * inherited the pool, whose epoll set is the parent's. */
            pmap__close(&w->tx);
            pmap__close(&w->rx);
            free(w->fifo);
            free(w->segs);
            free(w->stage);
            pmap__buf_free(&w->txbuf);
            /* Unmapped by now, or never mapped here (a child of the host
             * does not inherit the arenas). */
            pmap__arena_forget(&w->ain);
            pmap__arena_forget(&w->aout);
        }
    }
    /* Unmapped by now, or not mapped here (a child of the host). */
    pmap__blocks_forget(&p->blk);
    pmap__close(&p->ep);
    pmap__spawner_release(p->sp);
    if (p->shm != NULL && p->shm != MAP_FAILED)
        munmap(p->shm, p->shm_len);
    free(p->w);
    free(p->pfd);
    free(p->pfw);
    free(p);
}

/* Wait for the exits of workers whose input is closed, draining their
 * output to EOF, until all are gone or the deadline. */
static void drain_exits(struct pool *p, uint64_t deadline)
{
    long nap_ns = 20000;
    int i;

    for (;;) {
        int nfds = 0, left = 0;
        uint64_t now = pmap__now_ns();

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
            return;
        /* The fork server tells of the exits: wait for that. */
        p->pfd[nfds].fd = pmap__spawner_fd(p->sp);
        if (p->pfd[nfds].fd >= 0) {
            p->pfd[nfds].events = POLLIN;
            p->pfw[nfds++] = NULL;
        }
        if (nfds == 0) {
            /* Every pipe is at EOF: the exits are a moment away (EOF comes
             * while the process is still tearing down). Naps from 20 us,
             * doubling to 1 ms, so that an idle pool stops in tens of
             * microseconds, not in a millisecond per round. */
            struct timespec ts = {0, nap_ns};

            nanosleep(&ts, NULL);
            if (nap_ns < (long)PMAP__NS_PER_MS)
                nap_ns *= 2;
            continue;
        }
        if (poll(p->pfd, (nfds_t)nfds, (int)((deadline - now) / PMAP__NS_PER_MS) + 1) < 0 &&
            errno != EINTR)
            return;
        for (i = 0; i < nfds; i++) {
            struct worker *w = p->pfw[i];
            unsigned char junk[4096];
            long n;

            if (p->pfd[i].revents == 0)
                continue;
            if (w == NULL) {
                pmap__spawner_poll(p->sp);
                continue;
            }
            /* Whatever it still says is of no use now: read to EOF. */
            do {
                n = pmap__read_once(w->rx, junk, sizeof junk);
            } while (n > 0);
            if (n == 0 || n < -1)
                close_rx(w);
        }
    }
}

/* End every worker: EOF first (idle workers exit at once), SIGKILL for any
 * still there after a grace period. */
static void stop_workers(struct pool *p)
{
    int i;

    for (i = 0; i < p->nworkers; i++)
        close_tx(&p->w[i]);
    drain_exits(p, pmap__now_ns() + STOP_GRACE_NS);
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];
        int code;

        if (w->pid > 0) {
            signal_worker(w, SIGKILL);
            (void)reap(w, 1, &code);
        }
        close_rx(w);
        arena_drop(w);
        place_reset(w);
    }
}

/* Wait until every worker has run worker_init: ECHILD as soon as one
 * died instead. */
static int wait_ready(struct pool *p)
{
    for (;;) {
        int i, ready = 0, rc;

        for (i = 0; i < p->nworkers; i++) {
            enum wstate st = p->w[i].state;

            if (st != W_READY && st != W_STARTING) {
                errno = ECHILD;
                return PMAP_ESYS;
            }
            ready += st == W_READY;
        }
        if (ready == p->nworkers)
            return 0;
        rc = poll_once(p, -1, check_deadlines(p, pmap__now_ns()), 0);
        if (rc != 0) {
            if (rc == PMAP_ENOMEM)
                errno = ENOMEM;
            return rc;
        }
    }
}

static int be_create(const struct pmap__backend_cfg *cfg, void **out)
{
    struct pmap__worker_args a;
    struct pool *p;
    int i, rc, saved;

    p = calloc(1, sizeof *p);
    if (p == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    p->fn = cfg->fn;
    p->ctx = cfg->ctx;
    p->timeout_ms = cfg->opt->task_timeout_ms;
    p->max_tasks = cfg->opt->max_tasks_per_worker;
    p->max_record = cfg->max_record;
    /* Arenas only where the caller forks the workers itself: a fork
     * server would have to receive each memfd over its socket first (the
     * hook is pmap__worker_args.arena_fd), so its workers use the pipes. */
    p->arena_half = cfg->opt->start_method == PMAP_START_FORK ? pmap__arena_half(p->max_record) : 0;
    p->nworkers = cfg->nworkers;
    p->ep = -1;
    p->w = calloc((size_t)p->nworkers, sizeof *p->w);
    p->pfd = calloc((size_t)p->nworkers * 2u + 1u, sizeof *p->pfd);
    p->pfw = calloc((size_t)p->nworkers * 2u + 1u, sizeof *p->pfw);
    p->shm_len = (size_t)p->nworkers * sizeof(struct pmap__shm_slot);
    p->shm = mmap(NULL, p->shm_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p->w == NULL || p->pfd == NULL || p->pfw == NULL || p->shm == MAP_FAILED) {
        saved = p->shm == MAP_FAILED ? errno : ENOMEM;
        pool_free(p);
        errno = saved;
        return PMAP_ESYS;
    }
    for (i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];

        w->pool = p;
        w->id = i;
        w->tx = -1;
        w->rx = -1;
        pmap__buf_init(&w->txbuf, SIZE_MAX);
        place_reset(w);
    }
    memset(&a, 0, sizeof a);
    a.fn = cfg->fn;
    a.ctx = cfg->ctx;
    a.init = cfg->opt->worker_init;
    a.fini = cfg->opt->worker_exit;
    a.task_timeout_ms = cfg->opt->task_timeout_ms;
    a.max_worker_rss = cfg->opt->max_worker_rss;
    a.max_record = cfg->max_record;
    a.id = cfg->id_base;
    a.shm = p->shm;
    a.arena_fd = -1;
    a.arena_half = p->arena_half;
    /* Where there are arenas, and before any worker is forked: they all
     * inherit the blocks. Enough for the records a map keeps in flight
     * (a few per place); when they run out, parameters are copied as
     * before. Without them too. */
    if (p->arena_half != 0 &&
        pmap__blocks_open(&p->blk, p->max_record,
                          (uint32_t)(PMAP__ARENA_SPAN + 2u) * (uint32_t)p->nworkers) == 0) {
        a.blocks_base = p->blk.base;
        a.blocks_size = p->blk.size;
    }
    /* In server mode this forks the server, after the slots are mapped
     * (shared with every worker it forks) and before any worker. */
    rc = pmap__spawner_new(&p->sp, cfg->opt->start_method, &a, p->nworkers);
    if (rc != 0) {
        saved = errno;
        pmap__blocks_close(&p->blk);
        pool_free(p);
        errno = saved;
        return rc;
    }
    for (i = 0, rc = 0; i < p->nworkers && rc == 0; i++) {
        rc = start_worker(p, &p->w[i]);
        if (rc == PMAP_ENOMEM)
            errno = ENOMEM;
    }
    if (rc == 0)
        rc = wait_ready(p);
    if (rc != 0) {
        saved = errno;
        stop_workers(p);
        pmap__spawner_free(p->sp);
        p->sp = NULL;
        pmap__blocks_close(&p->blk);
        pool_free(p);
        errno = saved;
        return rc;
    }
    p->sink = NULL;
    *out = p;
    return 0;
}

static void be_destroy(void *be)
{
    struct pool *p = be;

    stop_workers(p);
    pmap__spawner_free(p->sp);
    p->sp = NULL;
    pmap__blocks_close(&p->blk);
    pool_free(p);
}

static void be_release(void *be)
{
    pool_free(be);
}

static void be_set_task(void *be, pmap_task_fn fn, void *ctx)
{
    struct pool *p = be;

    if (fn == NULL || (fn == p->fn && ctx == p->ctx)) {
        p->task_gen = 0;
    } else if (p->task_gen == 0 || fn != p->task_fn || ctx != p->task_ctx) {
        /* A new name even for a task run before: workers that still run
         * an older one compare names only. */
        p->task_fn = fn;
        p->task_ctx = ctx;
        p->task_gen = ++p->task_seq;
    }
}

/* A shared block for a parameter of up to `*cap` bytes... */
static void *be_block_get(void *be, size_t *cap)
{
    struct pool *p = be;

    *cap = p->blk.block;
    return pmap__blocks_get(&p->blk);
}

/* ... and back. */
static int be_block_put(void *be, void *data)
{
    struct pool *p = be;

    if (!pmap__blocks_own(&p->blk, data))
        return 0;
    pmap__blocks_put(&p->blk, data);
    return 1;
}

const struct pmap__backend_ops pmap__process_ops = {
    be_create,   be_destroy,  be_release,   be_nworkers, be_room,
    be_inflight, be_submit,   be_pump,      be_cancel,   be_begin,
    be_fd,       be_timeout,  be_set_task,
    NULL, /* auto_window: the iterator's own */
    be_block_get, be_block_put,
};
