/*
 * The MPI unit (DESIGN §11): the same map across the ranks of a
 * communicator. libpmap itself never links MPI: this unit reaches the core
 * through its public API and the table of internals in unit.h.
 *
 * On the root, a backend (ops table) whose places are the workers of the
 * serving ranks, all of them, numbered rank after rank: the root's
 * iterator keeps the window, the order and the per-item statuses, and a
 * rank with more workers simply has more places. A batch submitted to a
 * place travels as one message to its rank; the rank runs it on that
 * place's local worker (a process backend of its own, pool.c) and sends
 * the outcomes back, batched per pass of its loop. Every record carries a
 * slot number of the root's, so outcomes may come back in any order.
 *
 * Only nonblocking sends and probes, polled from pump(): no thread. MPI
 * has no descriptor to sleep on, so a pump with nothing to do sleeps in
 * short, growing steps between probes instead of spinning.
 *
 * All traffic goes over a duplicate of the caller's communicator, so it
 * never mixes with the program's own messages.
 */
#define _POSIX_C_SOURCE 200809L

#include <pmap_mpi.h>

#include "unit.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Message tags. */
enum {
    T_BATCH = 1,   /* root -> rank: records for one place */
    T_BEGIN = 2,   /* root -> rank: a map starts */
    T_CANCEL = 3,  /* root -> rank: forget everything in flight; answered by T_ACK */
    T_STOP = 4,    /* root -> rank: the pool is destroyed; answered by T_ACK */
    T_RESULTS = 5, /* rank -> root: outcomes */
    T_FATAL = 6,   /* rank -> root: the rank's backend failed */
    T_ACK = 7,
};

/* The largest message: MPI counts bytes in an int. Batches and result
 * messages are cut below it; a single record must fit. */
#define MSG_MAX ((size_t)1 << 30)
#define REC_MAX ((size_t)INT_MAX - 64u)

/* Per record, root -> rank. */
struct wire_param {
    uint32_t slot;
    uint16_t tries;
    uint16_t lost;
    uint64_t len;
};

struct wire_batch {
    uint32_t place; /* the rank's local worker */
    uint32_t n;
};

/* Per record, rank -> root. */
struct wire_result {
    uint32_t slot;
    int32_t status;
    int32_t code;
    uint16_t tries;
    uint8_t lost;
    uint8_t retry; /* 1: run it again elsewhere (sink retry), else done */
    uint64_t len;
};

struct wire_results {
    uint32_t n;
    uint32_t timed;   /* records the task times below cover */
    uint64_t task_us; /* their summed task time */
};

struct wire_fatal {
    int32_t status;
    int32_t err;
};

static const struct pmap__unit *core_table;

/* The core's internals (set at the first pool creation, before any use). */
static const struct pmap__unit *core(void)
{
    return core_table;
}

/* ------------------------------------------------------------------------ */
/* Shared by both sides                                                     */
/* ------------------------------------------------------------------------ */

/* A growable byte buffer for a message being built or received. */
struct bytes {
    unsigned char *p;
    size_t len, cap;
};

static int bytes_room(struct bytes *b, size_t more)
{
    size_t cap;
    unsigned char *p;

    if (b->cap - b->len >= more)
        return 0;
    cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return PMAP_ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void bytes_put(struct bytes *b, const void *src, size_t n)
{
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
}

/* Sends in flight: each owns its buffer until MPI lets go of it. */
struct sends {
    MPI_Request *req;
    unsigned char **buf;
    int n, cap;
};

static int sends_add(struct sends *s, MPI_Comm comm, int dest, int tag, unsigned char *buf,
                     size_t len)
{
    int rc;

    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        MPI_Request *req = realloc(s->req, (size_t)cap * sizeof *req);
        unsigned char **b;

        if (req == NULL)
            return PMAP_ENOMEM;
        s->req = req;
        b = realloc(s->buf, (size_t)cap * sizeof *b);
        if (b == NULL)
            return PMAP_ENOMEM;
        s->buf = b;
        s->cap = cap;
    }
    rc = MPI_Isend(buf, (int)len, MPI_BYTE, dest, tag, comm, &s->req[s->n]);
    if (rc != MPI_SUCCESS) {
        errno = EIO;
        return PMAP_ESYS;
    }
    s->buf[s->n++] = buf;
    return 0;
}

/* Let go of the sends that completed. */
static int sends_test(struct sends *s)
{
    int i, done;

    for (i = 0; i < s->n;) {
        if (MPI_Test(&s->req[i], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            errno = EIO;
            return PMAP_ESYS;
        }
        if (!done) {
            i++;
            continue;
        }
        free(s->buf[i]);
        s->n--;
        s->req[i] = s->req[s->n];
        s->buf[i] = s->buf[s->n];
    }
    return 0;
}

static void sends_wait(struct sends *s)
{
    int i;

    if (s->n > 0)
        (void)MPI_Waitall(s->n, s->req, MPI_STATUSES_IGNORE);
    for (i = 0; i < s->n; i++)
        free(s->buf[i]);
    s->n = 0;
}

static void sends_free(struct sends *s)
{
    sends_wait(s);
    free(s->req);
    free(s->buf);
}

/* Receive the message that probe found into b (b->len its length). */
static int recv_probed(MPI_Comm comm, const MPI_Status *st, struct bytes *b)
{
    int count;
    MPI_Status st2;

    if (MPI_Get_count(st, MPI_BYTE, &count) != MPI_SUCCESS || count < 0) {
        errno = EIO;
        return PMAP_ESYS;
    }
    b->len = 0;
    if (bytes_room(b, (size_t)count + 1u) != 0)
        return PMAP_ENOMEM;
    if (MPI_Recv(b->p, count, MPI_BYTE, st->MPI_SOURCE, st->MPI_TAG, comm, &st2) !=
        MPI_SUCCESS) {
        errno = EIO;
        return PMAP_ESYS;
    }
    b->len = (size_t)count;
    return 0;
}

/* A small control message, sent and waited for at once (the peer always
 * listens, so this never waits long). */
static int send_ctl(MPI_Comm comm, int dest, int tag, const void *data, size_t len)
{
    static const unsigned char zero = 0;

    if (len == 0) {
        data = &zero;
        len = 1;
    }
    if (MPI_Send((void *)(uintptr_t)data, (int)len, MPI_BYTE, dest, tag, comm) != MPI_SUCCESS) {
        errno = EIO;
        return PMAP_ESYS;
    }
    return 0;
}

static uint64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Sleep for us microseconds (an interrupted sleep just ends early: every
 * caller probes again and recomputes its wait). */
static void nap(unsigned us)
{
    struct timespec ts;

    ts.tv_sec = us / 1000000u;
    ts.tv_nsec = (long)(us % 1000000u) * 1000L;
    (void)nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------------ */
/* Root: the backend                                                        */
/* ------------------------------------------------------------------------ */

struct root {
    MPI_Comm comm;
    int me, nranks;
    int live; /* the ranks serve: destroy must stop them */
    size_t max_record;
    int nplaces;
    int *place_rank;  /* rank of each place */
    int *place_local; /* its worker on that rank */
    uint32_t *inflight;
    /* Records out on the ranks, by slot. */
    struct pmap__rec **slot;
    int *slot_place;
    uint32_t *free_slot;
    uint32_t nfree, nslots;
    struct sends sends;
    struct bytes in;
    /* A rank's backend failed: returned by the next pump. */
    int fatal, fatal_errno;
    /* Running means of a record's task time and of a batch's records,
     * and the queue depth they give (see root_inflight). */
    double rec_us, batch_recs;
    uint32_t depth;
    const struct pmap__sink *sink;
};

struct root_setup {
    MPI_Comm comm;
    int root;
    const int *workers; /* per rank, 0 for the root */
};

static int root_grow_slots(struct root *R)
{
    uint32_t cap = R->nslots ? 2 * R->nslots : 1024, i;
    struct pmap__rec **s;
    int *pl;
    uint32_t *fr;

    if (cap <= R->nslots)
        return PMAP_ENOMEM;
    s = realloc(R->slot, (size_t)cap * sizeof *s);
    if (s == NULL)
        return PMAP_ENOMEM;
    R->slot = s;
    pl = realloc(R->slot_place, (size_t)cap * sizeof *pl);
    if (pl == NULL)
        return PMAP_ENOMEM;
    R->slot_place = pl;
    fr = realloc(R->free_slot, (size_t)cap * sizeof *fr);
    if (fr == NULL)
        return PMAP_ENOMEM;
    R->free_slot = fr;
    /* Lowest slots on top of the stack. */
    for (i = cap; i > R->nslots; i--) {
        R->slot[i - 1] = NULL;
        R->free_slot[R->nfree++] = i - 1;
    }
    R->nslots = cap;
    return 0;
}

static void root_free(struct root *R)
{
    free(R->place_rank);
    free(R->place_local);
    free(R->inflight);
    free(R->slot);
    free(R->slot_place);
    free(R->free_slot);
    free(R->in.p);
    free(R);
}

static int root_create(const struct pmap__backend_cfg *cfg, void **out)
{
    const struct root_setup *S = cfg->arg;
    struct root *R = calloc(1, sizeof *R);
    int r, w, k;

    if (R == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    R->comm = S->comm;
    R->me = S->root;
    if (MPI_Comm_size(S->comm, &R->nranks) != MPI_SUCCESS) {
        free(R);
        errno = EIO;
        return PMAP_ESYS;
    }
    R->max_record = cfg->max_record;
    R->depth = 1;
    for (r = 0; r < R->nranks; r++)
        R->nplaces += S->workers[r];
    R->place_rank = calloc((size_t)R->nplaces, sizeof *R->place_rank);
    R->place_local = calloc((size_t)R->nplaces, sizeof *R->place_local);
    R->inflight = calloc((size_t)R->nplaces, sizeof *R->inflight);
    if (R->nplaces < 1) {
        root_free(R);
        errno = EINVAL;
        return PMAP_EINVAL;
    }
    if (R->place_rank == NULL || R->place_local == NULL || R->inflight == NULL ||
        root_grow_slots(R) != 0) {
        root_free(R);
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    for (r = 0, k = 0; r < R->nranks; r++)
        for (w = 0; w < S->workers[r]; w++, k++) {
            R->place_rank[k] = r;
            R->place_local[k] = w;
        }
    *out = R;
    return 0;
}

/* Receive from `rank` until its T_ACK, dropping everything before it. */
static void root_await_ack(struct root *R, int rank)
{
    for (;;) {
        MPI_Status st;

        if (MPI_Probe(rank, MPI_ANY_TAG, R->comm, &st) != MPI_SUCCESS)
            return;
        if (recv_probed(R->comm, &st, &R->in) != 0)
            return;
        if (st.MPI_TAG == T_ACK)
            return;
    }
}

/* Tell every serving rank `tag` and wait for their answers. */
static void root_ctl_all(struct root *R, int tag)
{
    int r;

    for (r = 0; r < R->nranks; r++)
        if (r != R->me)
            (void)send_ctl(R->comm, r, tag, NULL, 0);
    for (r = 0; r < R->nranks; r++)
        if (r != R->me)
            root_await_ack(R, r);
    sends_wait(&R->sends);
}

static void root_forget(struct root *R)
{
    uint32_t i;
    int w;

    R->nfree = 0;
    for (i = R->nslots; i > 0; i--) {
        R->slot[i - 1] = NULL;
        R->free_slot[R->nfree++] = i - 1;
    }
    for (w = 0; w < R->nplaces; w++)
        R->inflight[w] = 0;
}

static void root_destroy(void *be)
{
    struct root *R = be;

    if (R->live) {
        root_ctl_all(R, T_STOP);
        (void)MPI_Comm_free(&R->comm);
    }
    sends_free(&R->sends);
    root_free(R);
}

/* In a child of the host: MPI is not ours to touch there. */
static void root_release(void *be)
{
    struct root *R = be;

    free(R->sends.req);
    for (int i = 0; i < R->sends.n; i++)
        free(R->sends.buf[i]);
    free(R->sends.buf);
    root_free(R);
}

static int root_nworkers(void *be)
{
    return ((struct root *)be)->nplaces;
}

/* The rank queues what its worker cannot take yet: never a reason to
 * hold records back here. */
static uint32_t root_room(void *be, int w)
{
    (void)be;
    (void)w;
    return UINT32_MAX;
}

/*
 * A batch takes a round trip through two processes that sleep between
 * probes before its place hears of it; with the iterator's usual queue of
 * two batches per place, workers running ~1 ms tasks sat idle half of the
 * time waiting for the next. So a place's records count 1/depth each here
 * (rounded up: a place with any is never taken for idle), and the
 * iterator keeps `depth` times its usual queue on every place, where depth
 * covers COVER_US of the place's work beyond that queue, from the task
 * times the ranks report and the batch sizes sent: many for tiny records,
 * 1 for tasks long enough that a deeper queue would only lengthen the
 * map's tail. 4 ms was too little on a loaded machine: with 3 ranks over
 * TCP (load 11-14 on 2 cores) 1 ms tasks took a median 1.8-2.3x the
 * local pool's time at 4 ms and 1.0-1.2x at 16 ms, in alternating runs;
 * the tail this adds is at most 16 ms of one place's work.
 */
#define COVER_US 16000.0
#define DEPTH_MAX 16u

static void root_redepth(struct root *R)
{
    double batch_us = R->rec_us * R->batch_recs, d;

    if (batch_us <= 0.0)
        return;
    d = 1.0 + COVER_US / batch_us;
    R->depth = d >= DEPTH_MAX ? DEPTH_MAX : (uint32_t)d;
}

static uint32_t root_inflight(void *be, int w)
{
    const struct root *R = be;
    uint32_t n = R->inflight[w];

    return n / R->depth + (n % R->depth != 0);
}

/* Send recs[0..n) to place w as one message (the caller keeps it under
 * MSG_MAX). */
static int root_send(struct root *R, int w, struct pmap__rec **recs, uint32_t n, size_t bytes)
{
    struct wire_batch b;
    unsigned char *buf, *p;
    uint32_t i;
    int rc;

    while (R->nfree < n)
        if (root_grow_slots(R) != 0) {
            errno = ENOMEM;
            return PMAP_ENOMEM;
        }
    buf = malloc(bytes);
    if (buf == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    b.place = (uint32_t)R->place_local[w];
    b.n = n;
    memcpy(buf, &b, sizeof b);
    p = buf + sizeof b;
    for (i = 0; i < n; i++) {
        struct pmap__rec *r = recs[i];
        struct wire_param h;
        uint32_t s = R->free_slot[--R->nfree];

        R->slot[s] = r;
        R->slot_place[s] = w;
        h.slot = s;
        h.tries = r->tries;
        h.lost = r->lost;
        h.len = r->param.len;
        memcpy(p, &h, sizeof h);
        p += sizeof h;
        if (h.len)
            memcpy(p, r->param.data, r->param.len);
        p += r->param.len;
    }
    rc = sends_add(&R->sends, R->comm, R->place_rank[w], T_BATCH, buf, bytes);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    R->inflight[w] += n;
    return 0;
}

static int root_submit(void *be, int w, struct pmap__rec **recs, uint32_t n)
{
    struct root *R = be;
    uint32_t i, first = 0;
    size_t bytes = sizeof(struct wire_batch);
    int rc;

    R->batch_recs = R->batch_recs == 0.0 ? n : 0.9 * R->batch_recs + 0.1 * n;
    for (i = 0; i < n; i++) {
        size_t one = sizeof(struct wire_param) + recs[i]->param.len;

        if (recs[i]->param.len > REC_MAX) {
            errno = E2BIG;
            return PMAP_ETOOBIG;
        }
        if (i > first && bytes + one > MSG_MAX) {
            rc = root_send(R, w, recs + first, i - first, bytes);
            if (rc != 0)
                return rc;
            first = i;
            bytes = sizeof(struct wire_batch);
        }
        bytes += one;
    }
    return n > first ? root_send(R, w, recs + first, n - first, bytes) : 0;
}

/* Outcomes from a rank. Anything malformed is a protocol failure of the
 * map as a whole: ranks are the same program, so it cannot be blamed on
 * one record. */
static int root_results(struct root *R, const struct pmap__sink *sink)
{
    const unsigned char *p = R->in.p, *end = R->in.p + R->in.len;
    struct wire_results m;
    uint32_t i;

    if (R->in.len < sizeof m)
        return PMAP_EPROTO;
    memcpy(&m, p, sizeof m);
    p += sizeof m;
    for (i = 0; i < m.n; i++) {
        struct wire_result h;
        struct pmap__rec *r;

        if ((size_t)(end - p) < sizeof h)
            return PMAP_EPROTO;
        memcpy(&h, p, sizeof h);
        p += sizeof h;
        if (h.slot >= R->nslots || R->slot[h.slot] == NULL || h.len > (uint64_t)(end - p))
            return PMAP_EPROTO;
        r = R->slot[h.slot];
        R->slot[h.slot] = NULL;
        R->free_slot[R->nfree++] = h.slot;
        R->inflight[R->slot_place[h.slot]]--;
        r->tries = h.tries;
        if (h.retry) {
            r->lost = h.lost;
            sink->retry(sink->it, r);
            continue;
        }
        r->status = h.status;
        r->code = h.code;
        r->result.len = 0;
        if (h.len > r->result.max) {
            r->status = PMAP_ETOOBIG;
            r->code = 0;
        } else if (h.len > 0) {
            if (h.len > r->result.cap &&
                core()->stash_reserve(sink->stash, &r->result, (size_t)h.len) != 0) {
                errno = ENOMEM;
                return PMAP_ENOMEM;
            }
            memcpy(r->result.data, p, (size_t)h.len);
            r->result.len = (size_t)h.len;
        }
        p += h.len;
        sink->done(sink->it, r);
    }
    if (m.timed > 0) {
        double us = (double)m.task_us / m.timed;

        R->rec_us = R->rec_us == 0.0 ? us : 0.8 * R->rec_us + 0.2 * us;
        root_redepth(R);
        if (sink->timing != NULL)
            sink->timing(sink->it, m.timed,
                         m.task_us > UINT32_MAX ? UINT32_MAX : (uint32_t)m.task_us);
    }
    return 0;
}

/* Receive and handle every message waiting. 1 if any was, 0 if none, or
 * a fatal status. */
static int root_poll(struct root *R, const struct pmap__sink *sink)
{
    int got = 0, rc;

    for (;;) {
        MPI_Status st;
        int flag;

        if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, R->comm, &flag, &st) != MPI_SUCCESS) {
            errno = EIO;
            return PMAP_ESYS;
        }
        if (!flag)
            break;
        rc = recv_probed(R->comm, &st, &R->in);
        if (rc != 0)
            return rc;
        got = 1;
        if (st.MPI_TAG == T_RESULTS) {
            rc = root_results(R, sink);
            if (rc != 0)
                return rc;
        } else if (st.MPI_TAG == T_FATAL && R->fatal == 0) {
            struct wire_fatal f = {PMAP_EPROTO, EIO};

            if (R->in.len >= sizeof f)
                memcpy(&f, R->in.p, sizeof f);
            R->fatal = f.status < 0 ? f.status : PMAP_EPROTO;
            R->fatal_errno = f.err;
        }
        /* Hand the iterator what came before reading more, so that it
         * refills the places this freed at once. */
        break;
    }
    return got;
}

/* Sleeps between probes while nothing comes: from NAP_MIN doubling to
 * NAP_MAX. A result waits at most NAP_MAX for the root to see it, which
 * the batches queued on every place hide; the root costs next to no CPU
 * while its places work. Shorter while sends are in flight: a large one
 * over TCP moves on only while this side calls MPI. */
#define NAP_MIN 20u
#define NAP_MAX 1000u
#define NAP_MAX_SENDING 20u

static int root_pump(void *be, int timeout_ms, const struct pmap__sink *sink)
{
    struct root *R = be;
    uint64_t start = timeout_ms > 0 ? now_us() : 0;
    unsigned step = NAP_MIN;
    int rc;

    for (;;) {
        rc = sends_test(&R->sends);
        if (rc != 0)
            return rc;
        rc = root_poll(R, sink);
        if (rc < 0)
            return rc;
        if (R->fatal != 0) {
            rc = R->fatal;
            errno = R->fatal_errno;
            R->fatal = 0;
            return rc;
        }
        if (rc > 0 || timeout_ms == 0)
            return 0;
        if (timeout_ms > 0) {
            uint64_t spent = now_us() - start, limit = (uint64_t)timeout_ms * 1000u;

            if (spent >= limit)
                return 0;
            if (step > limit - spent)
                step = (unsigned)(limit - spent);
        }
        nap(step);
        step *= 2;
        if (step > (R->sends.n > 0 ? NAP_MAX_SENDING : NAP_MAX))
            step = R->sends.n > 0 ? NAP_MAX_SENDING : NAP_MAX;
    }
}

static void root_cancel(void *be)
{
    struct root *R = be;

    root_ctl_all(R, T_CANCEL);
    root_forget(R);
}

static void root_begin(void *be)
{
    struct root *R = be;
    int r;

    R->fatal = 0;
    for (r = 0; r < R->nranks; r++)
        if (r != R->me)
            (void)send_ctl(R->comm, r, T_BEGIN, NULL, 0);
}

/*
 * A batch's round trip here crosses two more processes, each of which
 * may sleep before it sees the batch: with the iterator's automatic
 * window (16384 records for two places) a map of tiny records spent most
 * of its time with the whole window out and the root asleep (2.2-3.2 M
 * records/s over TCP; 5.2-7.8 M/s with this window, same run, 3 ranks).
 * More did not help: the records' slots then miss the caches.
 */
#define ROOT_WINDOW 65536u

static unsigned root_auto_window(void *be)
{
    (void)be;
    return ROOT_WINDOW;
}

/* No fd (MPI has none to wait on), no timeout, and no set_task: the
 * ranks' workers cannot run a function pointer of the root's process. */
static const struct pmap__backend_ops root_ops = {
    .create = root_create,
    .destroy = root_destroy,
    .release = root_release,
    .nworkers = root_nworkers,
    .room = root_room,
    .inflight = root_inflight,
    .submit = root_submit,
    .pump = root_pump,
    .cancel = root_cancel,
    .begin = root_begin,
    .auto_window = root_auto_window,
};

/* ------------------------------------------------------------------------ */
/* Serving ranks                                                            */
/* ------------------------------------------------------------------------ */

/* A record on a serving rank: the root's slot and the local record. */
struct srec {
    struct pmap__rec r; /* first: the sink gets &r */
    uint32_t slot;
    struct srec *next; /* free list, or the place's queue */
};

struct squeue {
    struct srec *head, *tail;
    uint32_t n;
};

struct server {
    MPI_Comm comm;
    int root;
    pmap_pool *pool;
    const struct pmap__backend_ops *ops;
    void *be;
    int nplaces;
    size_t max_record;
    struct squeue *queue; /* per place: received, not yet submitted */
    struct srec *free_recs;
    struct srec **all; /* every record made, to take back what a cancel forgot */
    uint32_t nall, all_cap;
    struct srec **batch;
    uint32_t batch_cap;
    struct bytes in, out;
    uint32_t out_n, out_timed;
    uint64_t out_us;
    struct sends sends;
    int failed; /* a fatal status to report */
};

/* Keep a record's buffers up to this size between uses. */
#define KEEP_BYTES ((size_t)64 << 10)

static struct srec *srec_get(struct server *S)
{
    struct srec *s = S->free_recs;

    if (s != NULL) {
        S->free_recs = s->next;
    } else {
        if (S->nall == S->all_cap) {
            uint32_t cap = S->all_cap ? 2 * S->all_cap : 256;
            struct srec **a = realloc(S->all, (size_t)cap * sizeof *a);

            if (a == NULL)
                return NULL;
            S->all = a;
            S->all_cap = cap;
        }
        s = calloc(1, sizeof *s);
        if (s == NULL)
            return NULL;
        S->all[S->nall++] = s;
        core()->buf_init(&s->r.param, S->max_record);
        core()->buf_init(&s->r.result, S->max_record);
    }
    s->next = NULL;
    return s;
}

static void srec_put(struct server *S, struct srec *s)
{
    /* The common case, tiny records: nothing to give back, no call (cap
     * 0 is a failed buffer, which the trim clears). */
    if (s->r.param.cap > KEEP_BYTES || s->r.param.cap == 0)
        core()->buf_trim(&s->r.param, KEEP_BYTES);
    if (s->r.result.cap > KEEP_BYTES || s->r.result.cap == 0)
        core()->buf_trim(&s->r.result, KEEP_BYTES);
    s->r.param.len = s->r.result.len = 0;
    s->next = S->free_recs;
    S->free_recs = s;
}

static void srec_destroy(struct srec *s)
{
    core()->buf_free(&s->r.param);
    core()->buf_free(&s->r.result);
    free(s);
}

/* Ship the outcomes gathered so far. */
static int server_flush(struct server *S)
{
    struct wire_results m;
    int rc;

    if (S->out_n == 0)
        return 0;
    m.n = S->out_n;
    m.timed = S->out_timed;
    m.task_us = S->out_us;
    memcpy(S->out.p, &m, sizeof m);
    rc = sends_add(&S->sends, S->comm, S->root, T_RESULTS, S->out.p, S->out.len);
    if (rc != 0)
        return rc;
    S->out.p = NULL;
    S->out.len = S->out.cap = 0;
    S->out_n = S->out_timed = 0;
    S->out_us = 0;
    return 0;
}

static void server_outcome(struct server *S, struct srec *s, int retry)
{
    struct wire_result h;
    size_t len = retry ? 0 : s->r.result.len;
    int rc = 0;

    if (len > REC_MAX) {
        s->r.status = PMAP_ETOOBIG;
        s->r.code = 0;
        len = 0;
    }
    if (S->out.len + sizeof h + len > MSG_MAX && S->out_n > 0)
        rc = server_flush(S);
    if (rc == 0 && S->out.len == 0) {
        rc = bytes_room(&S->out, sizeof(struct wire_results));
        if (rc == 0)
            S->out.len = sizeof(struct wire_results);
    }
    if (rc == 0)
        rc = bytes_room(&S->out, sizeof h + len);
    if (rc != 0) {
        /* Nothing can tell the root about this record: the map fails. */
        if (S->failed == 0)
            S->failed = PMAP_ENOMEM;
        srec_put(S, s);
        return;
    }
    h.slot = s->slot;
    h.status = retry ? 0 : s->r.status;
    h.code = retry ? 0 : s->r.code;
    h.tries = s->r.tries;
    h.lost = (uint8_t)(s->r.lost != 0);
    h.retry = (uint8_t)retry;
    h.len = len;
    bytes_put(&S->out, &h, sizeof h);
    bytes_put(&S->out, s->r.result.data, len);
    S->out_n++;
    srec_put(S, s);
}

static void sink_done(void *it, struct pmap__rec *r)
{
    server_outcome(it, (struct srec *)(void *)r, 0);
}

static void sink_retry(void *it, struct pmap__rec *r)
{
    server_outcome(it, (struct srec *)(void *)r, 1);
}

static void sink_timing(void *it, uint32_t count, uint32_t task_us)
{
    struct server *S = it;

    S->out_timed += count;
    S->out_us += task_us;
}

/* Queue a batch from the root on its place. */
static int server_batch(struct server *S)
{
    const unsigned char *p = S->in.p, *end = S->in.p + S->in.len;
    struct wire_batch b;
    struct squeue *q;
    uint32_t i;

    if (S->in.len < sizeof b)
        return PMAP_EPROTO;
    memcpy(&b, p, sizeof b);
    p += sizeof b;
    if (b.place >= (uint32_t)S->nplaces)
        return PMAP_EPROTO;
    q = &S->queue[b.place];
    for (i = 0; i < b.n; i++) {
        struct wire_param h;
        struct srec *s;

        if ((size_t)(end - p) < sizeof h)
            return PMAP_EPROTO;
        memcpy(&h, p, sizeof h);
        p += sizeof h;
        if (h.len > (uint64_t)(end - p))
            return PMAP_EPROTO;
        s = srec_get(S);
        if (s == NULL || pmap_buf_set(&s->r.param, p, (size_t)h.len) != 0) {
            if (s != NULL)
                srec_put(S, s);
            return PMAP_ENOMEM;
        }
        p += h.len;
        s->slot = h.slot;
        s->r.index = h.slot;
        s->r.status = PMAP_OK;
        s->r.code = 0;
        s->r.tries = h.tries;
        s->r.lost = h.lost;
        s->r.result.len = 0;
        if (q->tail == NULL)
            q->head = s;
        else
            q->tail->next = s;
        q->tail = s;
        q->n++;
    }
    return 0;
}

/* Submit what the local places can take: runs of one `lost` value (the
 * backend's batch contract). */
static int server_submit(struct server *S)
{
    int w, rc;

    for (w = 0; w < S->nplaces; w++) {
        struct squeue *q = &S->queue[w];

        while (q->n > 0) {
            uint32_t room = S->ops->room(S->be, w), n = 0;
            uint16_t lost = q->head->r.lost;

            if (room == 0)
                break;
            if (room > q->n)
                room = q->n;
            if (room > S->batch_cap) {
                struct srec **nb = realloc(S->batch, (size_t)room * sizeof *nb);

                if (nb == NULL)
                    return PMAP_ENOMEM;
                S->batch = nb;
                S->batch_cap = room;
            }
            while (n < room && q->head != NULL && q->head->r.lost == lost) {
                struct srec *s = q->head;

                q->head = s->next;
                if (q->head == NULL)
                    q->tail = NULL;
                s->next = NULL;
                q->n--;
                S->batch[n++] = s;
            }
            /* struct srec begins with its record. */
            rc = S->ops->submit(S->be, w, (struct pmap__rec **)(void *)S->batch, n);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* Forget everything: the root cancelled. The local backend reports none
 * of the records it had, so every record made goes back to the free
 * list. */
static void server_cancel(struct server *S)
{
    uint32_t i;
    int w;

    S->ops->cancel(S->be);
    for (w = 0; w < S->nplaces; w++) {
        S->queue[w].head = S->queue[w].tail = NULL;
        S->queue[w].n = 0;
    }
    S->free_recs = NULL;
    for (i = 0; i < S->nall; i++)
        srec_put(S, S->all[i]);
    S->out.len = 0;
    S->out_n = S->out_timed = 0;
    S->out_us = 0;
    S->failed = 0;
}

static void server_fail(struct server *S, int status)
{
    struct wire_fatal f;
    unsigned char *buf = malloc(sizeof f);

    f.status = status;
    f.err = errno;
    if (buf == NULL)
        return;
    memcpy(buf, &f, sizeof f);
    if (sends_add(&S->sends, S->comm, S->root, T_FATAL, buf, sizeof f) != 0)
        free(buf);
}

static int server_inflight(const struct server *S)
{
    int w;

    for (w = 0; w < S->nplaces; w++)
        if (S->queue[w].n > 0 || S->ops->inflight(S->be, w) > 0)
            return 1;
    return 0;
}

/* Longest wait in the local backend between probes for the root's
 * messages: while records run, or shortly after, a new batch waits at
 * most SERVE_WAIT_BUSY_MS for the rank to notice it (the batches queued on
 * each place hide it); after SERVE_IDLE_AFTER_US of nothing at all, up to
 * SERVE_WAIT_IDLE_MS, so that a rank between maps costs next to nothing.
 * While a send is in flight the rank comes back every SERVE_SENDING_US
 * instead: over TCP a large message moves on only while its sender calls
 * MPI. */
#define SERVE_WAIT_BUSY_MS 1
#define SERVE_WAIT_IDLE_MS 16
#define SERVE_IDLE_AFTER_US 200000u
#define SERVE_SENDING_US 20u

/* Serve until the root's T_STOP. 0, or a status if MPI itself failed. */
static int server_loop(struct server *S)
{
    struct pmap__sink sink;
    uint64_t last_busy = now_us();

    memset(&sink, 0, sizeof sink);
    sink.it = S;
    sink.done = sink_done;
    sink.retry = sink_retry;
    sink.timing = sink_timing;
    for (;;) {
        int got = 0, rc, wait;

        for (;;) {
            MPI_Status st;
            int flag;

            if (MPI_Iprobe(S->root, MPI_ANY_TAG, S->comm, &flag, &st) != MPI_SUCCESS)
                return PMAP_ESYS;
            if (!flag)
                break;
            rc = recv_probed(S->comm, &st, &S->in);
            if (rc != 0)
                return rc;
            got = 1;
            switch (st.MPI_TAG) {
            case T_BATCH:
                rc = server_batch(S);
                if (rc != 0 && S->failed == 0)
                    S->failed = rc;
                break;
            case T_BEGIN:
                S->ops->begin(S->be);
                break;
            case T_CANCEL:
                server_cancel(S);
                rc = sends_test(&S->sends);
                if (rc == 0)
                    rc = send_ctl(S->comm, S->root, T_ACK, NULL, 0);
                if (rc != 0)
                    return rc;
                break;
            case T_STOP:
                return 0;
            default:
                if (S->failed == 0)
                    S->failed = PMAP_EPROTO;
                break;
            }
        }
        if (S->failed == 0) {
            rc = server_submit(S);
            if (rc != 0)
                S->failed = rc;
        }
        /* Wait in the local backend (its descriptors) for results, but
         * come back soon enough to see the root's next messages. */
        if (got || server_inflight(S))
            last_busy = now_us();
        if (got || S->sends.n > 0)
            wait = 0;
        else if (now_us() - last_busy < SERVE_IDLE_AFTER_US)
            wait = SERVE_WAIT_BUSY_MS;
        else
            wait = SERVE_WAIT_IDLE_MS;
        if (S->failed == 0) {
            rc = S->ops->pump(S->be, wait, &sink);
            if (rc != 0)
                S->failed = rc;
        } else if (wait > 0) {
            nap((unsigned)wait * 1000u);
        }
        if (!got && wait == 0 && S->sends.n > 0)
            nap(SERVE_SENDING_US);
        if (S->failed != 0 && S->failed != 1) {
            server_fail(S, S->failed);
            /* Reported once; the root cancels, which clears it. */
            S->failed = 1;
        }
        rc = server_flush(S);
        if (rc == 0)
            rc = sends_test(&S->sends);
        if (rc != 0)
            return rc;
    }
}

static int serve(MPI_Comm comm, int root, pmap_pool *pool, size_t max_record)
{
    struct server S;
    uint32_t i;
    int rc, saved;

    memset(&S, 0, sizeof S);
    S.comm = comm;
    S.root = root;
    S.pool = pool;
    S.ops = pool->ops;
    S.be = pool->be;
    S.nplaces = pool->nworkers;
    S.max_record = max_record;
    S.queue = calloc((size_t)S.nplaces, sizeof *S.queue);
    if (S.queue == NULL) {
        errno = ENOMEM;
        rc = PMAP_ENOMEM;
    } else {
        rc = server_loop(&S);
    }
    saved = errno;
    if (S.queue != NULL) {
        server_cancel(&S);
        /* Answer the stop only once the local workers are gone. */
        if (rc == 0)
            rc = send_ctl(comm, root, T_ACK, NULL, 0);
    }
    sends_free(&S.sends);
    for (i = 0; i < S.nall; i++)
        srec_destroy(S.all[i]);
    free(S.all);
    free(S.queue);
    free(S.batch);
    free(S.in.p);
    free(S.out.p);
    errno = saved;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                 */
/* ------------------------------------------------------------------------ */

/* The size of pmap_options in the header that first declared this unit
 * (1.1): what the unsuffixed entry point stands for. */
#define OPTIONS_V11_SIZE (offsetof(pmap_options, max_worker_rss) + sizeof(size_t))

pmap_pool *pmap_mpi_pool_create_sized(MPI_Comm comm, int root, pmap_task_fn fn, void *ctx,
                                      const pmap_options *opt, size_t size)
{
    MPI_Comm dup = MPI_COMM_NULL;
    int nranks, me, mine, base, err, first_err;
    int *workers = NULL;
    pmap_pool *pool = NULL;
    struct root_setup setup;

    core_table = pmap_unit_internals();
    if (core()->size < sizeof(struct pmap__unit)) {
        errno = ENOSYS;
        return NULL;
    }
    if (MPI_Comm_size(comm, &nranks) != MPI_SUCCESS ||
        MPI_Comm_rank(comm, &me) != MPI_SUCCESS) {
        errno = EINVAL;
        return NULL;
    }
    /* Every rank checks the same arguments, so all of them agree on the
     * outcome without exchanging a message. */
    if (root < 0 || root >= nranks || fn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    if (nranks == 1)
        return pmap_pool_create_sized(fn, ctx, opt, size);

    if (MPI_Comm_dup(comm, &dup) != MPI_SUCCESS) {
        errno = EIO;
        return NULL;
    }
    /* Every rank's local worker count: each serving rank numbers its
     * workers after those of the ranks before it, and the root makes one
     * place of each. */
    mine = 0;
    if (me != root) {
        mine = opt != NULL && opt->workers != 0 ? opt->workers : pmap_cpu_count();
        if (mine < 0 || mine > PMAP_WORKERS_MAX)
            mine = 0; /* the pool below refuses these options on every rank */
    }
    err = 0;
    if (me == root) {
        workers = calloc((size_t)nranks, sizeof *workers);
        if (workers == NULL)
            err = ENOMEM;
    }
    /* A root that could not allocate still takes part, in a collective
     * that needs no buffer, and every rank gives up together. */
    if (MPI_Allreduce(MPI_IN_PLACE, &err, 1, MPI_INT, MPI_MAX, dup) != MPI_SUCCESS)
        err = EIO;
    base = 0;
    if (err == 0 &&
        (MPI_Gather(&mine, 1, MPI_INT, workers, 1, MPI_INT, root, dup) != MPI_SUCCESS ||
         MPI_Exscan(&mine, &base, 1, MPI_INT, MPI_SUM, dup) != MPI_SUCCESS))
        err = EIO;
    if (me == 0)
        base = 0; /* MPI_Exscan leaves rank 0's result undefined */
    if (err == 0) {
        errno = 0;
        if (me == root) {
            setup.comm = dup;
            setup.root = root;
            setup.workers = workers;
            pool = core()->pool_new(&root_ops, fn, ctx, opt, size, &setup, 0);
        } else {
            pool = core()->pool_new(core()->process_ops, fn, ctx, opt, size, NULL, base);
        }
        if (pool == NULL)
            err = errno != 0 ? errno : EIO;
    }
    /* Everyone learns whether everyone is ready (and agrees on one
     * errno when not). */
    first_err = err;
    if (MPI_Allreduce(&err, &first_err, 1, MPI_INT, MPI_MAX, dup) != MPI_SUCCESS)
        first_err = EIO;
    free(workers);
    if (first_err != 0) {
        pmap_pool_destroy(pool); /* the root's is not live yet: no message */
        (void)MPI_Comm_free(&dup);
        errno = first_err;
        return NULL;
    }
    if (me == root) {
        ((struct root *)pool->be)->live = 1;
        return pool;
    }
    err = serve(dup, root, pool, pool->max_record) != 0 ? (errno != 0 ? errno : EIO) : 0;
    pmap_pool_destroy(pool);
    (void)MPI_Comm_free(&dup);
    errno = err;
    return NULL;
}

/* The function of the macro's name: the layout of the first header that
 * declared it (1.1). */
#undef pmap_mpi_pool_create
pmap_pool *pmap_mpi_pool_create(MPI_Comm comm, int root, pmap_task_fn fn, void *ctx,
                                const pmap_options *opt)
{
    /* Fields added after 1.1 take their defaults. */
    return pmap_mpi_pool_create_sized(comm, root, fn, ctx, opt, OPTIONS_V11_SIZE);
}
