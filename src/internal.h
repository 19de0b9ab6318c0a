/*
 * Internal declarations shared by the modules of libpmap. Nothing here is
 * part of the public API; names with a double underscore are hidden in the
 * shared library (C_VISIBILITY_PRESET hidden) but reachable by the unit
 * tests, which link the static library.
 */
#ifndef PMAP_INTERNAL_H
#define PMAP_INTERNAL_H

#include "pmap.h"

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

/* ------------------------------------------------------------------------ */
/* Limits and tuning                                                        */
/* ------------------------------------------------------------------------ */

#define PMAP__DEFAULT_MAX_RECORD ((size_t)1 << 30)
/* Largest batch the adaptive sizing builds; explicit `chunk` may go higher. */
#define PMAP__CHUNK_MAX 2048u
/* Most records in one frame accepted from the wire: a sanity bound only. */
#define PMAP__FRAME_MAX_COUNT (1u << 24)
/* Slot buffers that grew past this are released when the slot is reused,
 * so that one large record does not pin its memory in every slot. */
#define PMAP__KEEP_BYTES ((size_t)1 << 20)

/* For the rare branch of a per-record function (a buffer that must grow):
 * kept out of line so that the common path is a leaf that saves no
 * registers, and laid out away from the hot code. */
#if defined(__GNUC__)
#define PMAP__RARE __attribute__((cold, noinline))
#define PMAP__NOINLINE __attribute__((noinline))
#else
#define PMAP__RARE
#define PMAP__NOINLINE
#endif

/* ------------------------------------------------------------------------ */
/* Buffers (buf.c)                                                          */
/* ------------------------------------------------------------------------ */

/* Records up to this size live inside the buffer itself: a slot of the
 * window then holds a tiny record without a heap block of its own, which
 * halves the memory a map of tiny records walks through per record. */
#define PMAP__BUF_SMALL 16u

/* A buffer must not be moved or copied once initialised (data may point
 * into it). */
struct pmap_buf {
    unsigned char *data; /* `small` until more is needed; never NULL once initialised */
    size_t len;
    size_t cap;
    size_t max; /* max_record_bytes: the most len may be */
    unsigned char small[PMAP__BUF_SMALL];
};

void pmap__buf_init(struct pmap_buf *b, size_t max);
/* Make room for `cap` bytes, keeping the contents. 0 or PMAP_ENOMEM. */
int pmap__buf_reserve(struct pmap_buf *b, size_t cap);
/* Append bytes (no max check: used for internal staging). 0 or PMAP_ENOMEM. */
int pmap__buf_append(struct pmap_buf *b, const void *data, size_t len);
/* Release the storage if it grew past `keep` bytes; empty the buffer. */
void pmap__buf_trim(struct pmap_buf *b, size_t keep);
void pmap__buf_free(struct pmap_buf *b);

/* memcpy for records that are usually a few bytes: fixed-size moves the
 * compiler inlines, instead of a library call per record. No overlap. */
static inline void pmap__copy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (n >= 8 && n <= 16) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4 && n < 8) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else if (n < 4) {
        if (n > 0)
            d[0] = s[0];
        if (n > 1)
            d[1] = s[1];
        if (n > 2)
            d[2] = s[2];
    } else {
        memcpy(d, s, n);
    }
}

/* ------------------------------------------------------------------------ */
/* System helpers (io.c)                                                    */
/* ------------------------------------------------------------------------ */

/* A pipe whose ends are close-on-exec, numbered >= 3 and registered as
 * libpmap's own (so every worker closes them). 0 or PMAP_ESYS/ENOMEM. */
int pmap__pipe(int fds[2]);
/* Unregister and close *fd (if >= 0), then set it to -1. errno preserved. */
void pmap__close(int *fd);
int pmap__set_nonblock(int fd);
/* Ask for a larger pipe buffer where the kernel allows; failure is harmless. */
void pmap__pipe_grow(int fd, int bytes);

/* Write buf[*off .. len) to fd, advancing *off; stops early with 0 when a
 * non-blocking fd is full. 0 or PMAP_ESYS. */
int pmap__write_some(int fd, const void *buf, size_t len, size_t *off);
/* Blocking write of everything, iovecs included (worker side). 0 or ESYS. */
int pmap__writev_all(int fd, struct iovec *iov, int iovcnt);
/* One read, retried on EINTR: >0 bytes, 0 EOF, -1 would block, PMAP_ESYS. */
long pmap__read_once(int fd, void *buf, size_t cap);

/* Guard against SIGPIPE around writes to pipes whose reader may be gone:
 * blocks SIGPIPE in this thread and, on leaving, discards a SIGPIPE that our
 * writes raised (never one that was pending before). */
struct pmap__sigpipe_guard {
    int was_pending;
    int blocked; /* the guard blocked it (it was not blocked already) */
    int epipe;   /* set by the writer when a write failed with EPIPE */
};
void pmap__sigpipe_enter(struct pmap__sigpipe_guard *g);
void pmap__sigpipe_leave(struct pmap__sigpipe_guard *g);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t pmap__now_ns(void);

/* A number that changes in every child forked after the first call (a
 * pthread_atfork child handler bumps it), so that "am I still the process
 * that made this?" costs a load instead of a getpid() system call on the
 * hot path. Returns 0 when the handler could not be installed: then the
 * caller must ask getpid() every time. */
unsigned pmap__fork_gen(void);
extern volatile unsigned pmap__fork_gen_value;

/* The registry of libpmap's descriptors, so that a new worker can close
 * every descriptor of every pool but its own. */
void pmap__fdreg_lock(void);
void pmap__fdreg_unlock(void);
/* In a freshly forked worker, with the registry lock held by the fork:
 * close every registered descriptor except keep1 and keep2, and leave the
 * worker with an empty, unlocked registry of its own. */
void pmap__fdreg_child(int keep1, int keep2);

/* ------------------------------------------------------------------------ */
/* Wire format (wire.c)                                                     */
/* ------------------------------------------------------------------------ */

/*
 * A frame is a header, `count` records and a trailer. Each record is a
 * record header and `len` bytes. Integers are in the host's byte order
 * (both ends run on one machine). The header carries a check value over
 * its own fields and the trailer one over the header's, so that bytes a
 * buggy task scribbles into the stream are caught at the next boundary.
 *
 *   header  (32): magic u32 | kind u8 | flags u8 | version u16 | count u32 |
 *                 seq u32 | bytes u64 (records incl. their headers) |
 *                 aux u32 | check u32
 *   record   (8): len u32 | code i32 (0: ok; else a task error, len 0)
 *   record  (16): 0xffffffff u32 | code i32 | len u64 (>= 0xffffffff)
 *   trailer  (8): magic u32 | check u32
 *
 * Record headers are short because records usually are, and every header
 * byte is copied twice through a pipe; only a record of 4 GiB or more has
 * the long form. A frame whose records all succeeded (for tasks: any
 * parameters) and all have one length may be *uniform* (PMAP__F_UNIFORM):
 * its records are bare payloads of bytes / count bytes each. Generators
 * and tasks of fixed-size records, the usual kind, thus move nothing but
 * their payload through the pipes.
 */
#define PMAP__HDR_SIZE 32u
#define PMAP__REC_SIZE 8u   /* record header */
#define PMAP__REC_XSIZE 16u /* record header with the 64-bit length */
#define PMAP__REC_XLEN 0xffffffffu
#define PMAP__TRL_SIZE 8u

enum pmap__kind {
    PMAP__K_TASKS = 1,   /* caller -> worker: parameter records */
    PMAP__K_RESULTS = 2, /* worker -> caller: result records, aux = task time (us) */
    PMAP__K_READY = 3,   /* worker -> caller: worker_init done, no records */
    PMAP__K_RETIRE = 4   /* worker -> caller: exiting after `seq` records (memory limit) */
};

enum { PMAP__R_OK = 0, PMAP__R_TASKERR = 1 };

#define PMAP__F_UNIFORM 0x100u /* frame flag: headerless records of bytes / count */

struct pmap__frame {
    unsigned kind;
    uint32_t count;
    uint32_t seq;   /* low 32 bits of the sequence number of the first record */
    uint64_t bytes; /* the records with their headers */
    uint32_t aux;
    unsigned flags; /* PMAP__F_UNIFORM or 0 */
};

void pmap__frame_hdr(unsigned char out[PMAP__HDR_SIZE], const struct pmap__frame *f);
void pmap__frame_trl(unsigned char out[PMAP__TRL_SIZE], const struct pmap__frame *f);
/* Bytes of the header of a record of `len` bytes. */
static inline size_t pmap__rec_hdr_size(uint64_t len)
{
    return len < PMAP__REC_XLEN ? PMAP__REC_SIZE : PMAP__REC_XSIZE;
}

/* Write a record header (code 0: a success; else a task error, len 0);
 * returns its size. Inline: written once per record on both sides of
 * every pipe. */
static inline size_t pmap__rec_hdr(unsigned char *out, int code, uint64_t len)
{
    uint32_t len32 = len < PMAP__REC_XLEN ? (uint32_t)len : PMAP__REC_XLEN;

    memcpy(out, &len32, 4);
    memcpy(out + 4, &code, 4);
    if (len32 != PMAP__REC_XLEN)
        return PMAP__REC_SIZE;
    memcpy(out + 8, &len, 8);
    return PMAP__REC_XSIZE;
}

/*
 * Incremental decoder: feed it bytes in any split; it calls back as
 * frames and records complete. A callback returning non-zero stops the
 * decoder with that value (sticky). Malformed input gives PMAP_EPROTO.
 */
struct pmap__decoder_ops {
    /* A valid header arrived. Return 0 to accept, or a negative status. */
    int (*frame)(void *ud, const struct pmap__frame *f);
    /* A record of `len` bytes starts: return where its bytes go (room for
     * len bytes; any non-NULL pointer when len is 0), or NULL on ENOMEM. */
    unsigned char *(*record)(void *ud, unsigned status, int code, uint64_t len);
    /* The record's bytes are all in place. May be NULL: a user that needs
     * nothing here saves an indirect call per record. */
    int (*record_end)(void *ud);
    /* The trailer checked out. */
    int (*frame_end)(void *ud, const struct pmap__frame *f);
};

struct pmap__decoder {
    const struct pmap__decoder_ops *ops;
    void *ud;
    uint64_t max_record;
    int state;
    int rc; /* sticky error */
    struct pmap__frame f;
    uint32_t recs_left;
    uint64_t bytes_left;
    unsigned char *dst; /* payload destination of the current record */
    uint64_t data_left;
    int xcode;     /* code of a record whose 64-bit length is still due */
    uint64_t ulen; /* uniform frame: the length of every record */
    unsigned char tmp[PMAP__HDR_SIZE];
    size_t tmp_len;
};

void pmap__decoder_init(struct pmap__decoder *d, const struct pmap__decoder_ops *ops, void *ud,
                        uint64_t max_record);
/* Consume n bytes. 0, or the sticky error. */
int pmap__decode(struct pmap__decoder *d, const unsigned char *p, size_t n);
/* While a record's payload is being received: where the next bytes go and
 * how many are still due, so a large payload can be read in place. NULL
 * when the decoder is not inside a payload. Then pmap__decode_direct(n). */
unsigned char *pmap__decoder_direct(struct pmap__decoder *d, uint64_t *want);
int pmap__decode_direct(struct pmap__decoder *d, size_t n);
/* True between frames (nothing partial buffered). */
int pmap__decoder_idle(const struct pmap__decoder *d);

/*
 * The decoder's inner loop, inlined where it is used so that the callback
 * for whole records is a direct (usually inlined) call: for records of a
 * few bytes this loop is most of what each side of a pipe does per record,
 * and an indirect call per record was a fifth of it.
 */
enum { PMAP__S_HDR, PMAP__S_REC, PMAP__S_XLEN, PMAP__S_DATA, PMAP__S_TRL, PMAP__S_ERR };

/* A record that lies whole in the input: its header fields and payload.
 * Returns 0, or a status that stops the decoder. */
typedef int (*pmap__whole_fn)(struct pmap__decoder *d, unsigned status, int code,
                              const unsigned char *data, uint64_t len);

/* Make the error sticky; returns rc. */
int pmap__decoder_fail(struct pmap__decoder *d, int rc);
/* One piece of the input (a header, a trailer, a record header or payload,
 * or part of one) through the general state machine, calling the ops. */
int pmap__decode_step(struct pmap__decoder *d, const unsigned char **pp, size_t *pn);

/* Records that lie whole in the input one after another, with the checks
 * of the state machine and the frame's counters kept in registers. Stops
 * at the first record that is not whole, at the end of the frame's
 * records, or on an error, which it returns. */
static inline int pmap__decode_whole(struct pmap__decoder *d, const unsigned char **pp, size_t *pn,
                                     pmap__whole_fn fn)
{
    const unsigned char *p = *pp;
    size_t n = *pn;
    uint64_t bytes_left = d->bytes_left;
    uint32_t recs_left = d->recs_left;
    const uint64_t max_record = d->max_record;
    int rc = 0;

    while (n >= PMAP__REC_SIZE) {
        uint32_t len;
        int code;

        memcpy(&len, p, 4);
        memcpy(&code, p + 4, 4);
        /* The escape (a 64-bit length follows) takes the general way. */
        if (len > n - PMAP__REC_SIZE || len == PMAP__REC_XLEN)
            break;
        /* A task error has no payload. */
        if ((code != 0 && len != 0) || len > max_record || bytes_left < PMAP__REC_SIZE ||
            len > bytes_left - PMAP__REC_SIZE) {
            rc = pmap__decoder_fail(d, PMAP_EPROTO);
            break;
        }
        bytes_left -= PMAP__REC_SIZE + len;
        recs_left--;
        rc = fn(d, code != 0 ? PMAP__R_TASKERR : PMAP__R_OK, code, p + PMAP__REC_SIZE, len);
        p += PMAP__REC_SIZE + (size_t)len;
        n -= PMAP__REC_SIZE + (size_t)len;
        if (rc != 0) {
            rc = pmap__decoder_fail(d, rc);
            break;
        }
        if (recs_left == 0) {
            if (bytes_left != 0)
                rc = pmap__decoder_fail(d, PMAP_EPROTO);
            else
                d->state = PMAP__S_TRL;
            break;
        }
    }
    d->bytes_left = bytes_left;
    d->recs_left = recs_left;
    *pp = p;
    *pn = n;
    return rc;
}

/* The same for a uniform frame, whose records are ulen (> 0) bytes each
 * and need no checks: the header's check covered their length. At least
 * one record is whole in the input. */
static inline int pmap__decode_uniform(struct pmap__decoder *d, const unsigned char **pp,
                                       size_t *pn, pmap__whole_fn fn)
{
    const unsigned char *p = *pp;
    size_t n = *pn;
    const size_t len = (size_t)d->ulen;
    uint32_t recs_left = d->recs_left;
    int rc = 0;

    do {
        recs_left--;
        rc = fn(d, PMAP__R_OK, 0, p, len);
        p += len;
        n -= len;
        if (rc != 0) {
            rc = pmap__decoder_fail(d, rc);
            break;
        }
        if (recs_left == 0) {
            d->state = PMAP__S_TRL;
            break;
        }
    } while (n >= len);
    d->bytes_left = (uint64_t)recs_left * len;
    d->recs_left = recs_left;
    *pp = p;
    *pn = n;
    return rc;
}

/* pmap__decode with `fn` for whole records (the ops' record and record_end
 * still serve records split across inputs). */
static inline int pmap__decode_with(struct pmap__decoder *d, const unsigned char *p, size_t n,
                                    pmap__whole_fn fn)
{
    while (n > 0) {
        int rc;

        if (d->state == PMAP__S_REC && d->tmp_len == 0 && (d->f.flags & PMAP__F_UNIFORM) &&
            d->ulen != 0 && n >= d->ulen) {
            rc = pmap__decode_uniform(d, &p, &n, fn);
            if (rc != 0)
                return rc;
            continue;
        }
        if (d->state == PMAP__S_REC && d->tmp_len == 0 && n >= PMAP__REC_SIZE &&
            !(d->f.flags & PMAP__F_UNIFORM)) {
            size_t before = n;

            rc = pmap__decode_whole(d, &p, &n, fn);
            if (rc != 0)
                return rc;
            if (n != before)
                continue;
        }
        rc = pmap__decode_step(d, &p, &n);
        if (rc != 0)
            return rc;
    }
    return d->state == PMAP__S_ERR ? d->rc : 0;
}

/* ------------------------------------------------------------------------ */
/* Records and the backend interface                                        */
/* ------------------------------------------------------------------------ */

/* One record of the window: its parameter until the result is back, then
 * its result until pmap_next() has handed it out. */
struct pmap__rec {
    /* The first 64 bytes hold all that handing out a finished record
     * reads (code only when status is not PMAP_OK: it is 0 otherwise), so
     * that delivery, often long after the result was decoded, touches one
     * cache line per record. */
    struct pmap_buf result;
    uint64_t index;
    int status;
    unsigned state; /* enum pmap__rec_state (iter.c) */
    struct pmap_buf param;
    int code;
    unsigned tries; /* re-runs caused by crashes that no record could be blamed for */
    uint32_t next;  /* intrusive queue link (slot number), UINT32_MAX: none */
};

/* How a backend reports to the iterator. Called only from within pump(). */
struct pmap__sink {
    void *it;
    /* The record is finished: r->status, r->code and r->result are set. */
    void (*done)(void *it, struct pmap__rec *r);
    /* done() for n records at once (a frame's worth of tiny results costs
     * one indirect call instead of n). May be NULL: then done() each. */
    void (*done_many)(void *it, struct pmap__rec *const *recs, uint32_t n);
    /* The record did not finish on its worker through no fault of its own:
     * queue it to run again. */
    void (*retry)(void *it, struct pmap__rec *r);
    /* A worker ran `count` records in `task_us` microseconds. */
    void (*timing)(void *it, uint32_t count, uint32_t task_us);
};

/*
 * The iterator drives workers only through these operations: today they
 * are processes behind pipes (pool.c); another transport plugs in here.
 * Records handed to submit() stay owned by the iterator; the backend
 * references them until it reports them through the sink or cancel() ends.
 */
struct pmap__backend_ops {
    /* Number of worker places (fixed for the pool's life). */
    int (*nworkers)(void *be);
    /* Records worker w may take now: 0 when it cannot (dead, retiring,
     * recycling); otherwise the rest of its max_tasks allowance, or
     * UINT32_MAX. */
    uint32_t (*room)(void *be, int w);
    /* Records in flight on worker w. */
    uint32_t (*inflight)(void *be, int w);
    /* Queue a batch for worker w (room() permitting). 0 or a fatal status. */
    int (*submit)(void *be, int w, struct pmap__rec **recs, uint32_t n);
    /* Start workers that are missing, move bytes, wait up to timeout_ms
     * (-1: until something happens) for results and faults, report them to
     * the sink. 0 or a fatal status (PMAP_ESYS, PMAP_EWORKER, PMAP_ENOMEM). */
    int (*pump)(void *be, int timeout_ms, const struct pmap__sink *sink);
    /* Forget every record in flight: busy workers are stopped (and replaced
     * later); returns once they are gone. */
    void (*cancel)(void *be);
    /* A new map starts / ended (resets the crash-loop breaker etc.). */
    void (*begin)(void *be);
};

/* The pool as the iterator sees it (pool.c fills it). */
struct pmap__pool_view {
    const struct pmap__backend_ops *ops;
    void *be;
    unsigned chunk;  /* explicit chunk, 0: adaptive */
    unsigned window; /* resolved window, >= 1 */
    int window_auto; /* the window was chosen by the library */
    size_t max_record;
    struct pmap_iter **iter_slot; /* where the open iterator is recorded */
};

/* pool.c: the view of a pool, or PMAP_EINVAL if it is not usable here
 * (inherited through fork). */
int pmap__pool_view(pmap_pool *pool, struct pmap__pool_view *v);

#endif /* PMAP_INTERNAL_H */
