/*
 * The wire format between the caller and a worker (wire.c): frames of
 * records over a byte stream, and the incremental decoder that treats its
 * input as untrusted.
 */
#ifndef PMAP_WIRE_H
#define PMAP_WIRE_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Most records in one frame accepted from the wire: a sanity bound only. */
#define PMAP__FRAME_MAX_COUNT (1u << 24)

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
 *   record   (8): len u32 | code i32 (0: ok; else a task error whose
 *                 payload is the task's message)
 *   record  (16): 0xffffffff u32 | code i32 | len u64 (>= 0xffffffff)
 *   status  (16): 0xffffffff u32 | status i32 | 0 u64: no payload; the
 *                 record failed in the library (status < 0, e.g.
 *                 PMAP_ETOOBIG for a result buffer whose last set failed)
 *   arena   (24): 0xffffffff u32 | code i32 | len u64 with bit 63 set |
 *                 off u64: no payload in the stream; the record's len
 *                 (> 0) bytes are at `off` in the sender's shared arena
 *                 (arena.h), which the receiver checks against its view
 *                 of that arena before it reads a byte
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
#define PMAP__REC_ASIZE 24u /* an arena record's header, its whole size in the stream */
#define PMAP__REC_AFLAG ((uint64_t)1 << 63)
#define PMAP__TRL_SIZE 8u

enum pmap__kind {
    PMAP__K_TASKS = 1,   /* caller -> worker: parameter records */
    PMAP__K_RESULTS = 2, /* worker -> caller: result records, aux = task time (us) */
    PMAP__K_READY = 3,   /* worker -> caller: worker_init done, no records */
    PMAP__K_RETIRE = 4,  /* worker -> caller: exiting after `seq` records (memory limit) */
    /* caller -> worker: the task of the frames that follow, no records:
     * the function's bits in `bytes`, its ctx's in aux (high) and seq
     * (low half). Fork-based workers share the caller's program image, so
     * the values are the worker's pointers too. */
    PMAP__K_USE = 5
};


enum { PMAP__R_OK = 0, PMAP__R_TASKERR = 1, PMAP__R_STATUS = 2 /* code: a pmap status */ };

/* The status record of status `status` (< 0): PMAP__REC_XSIZE bytes. */
static inline size_t pmap__rec_status(unsigned char *out, int status)
{
    uint32_t len32 = PMAP__REC_XLEN;
    uint64_t zero = 0;

    memcpy(out, &len32, 4);
    memcpy(out + 4, &status, 4);
    memcpy(out + 8, &zero, 8);
    return PMAP__REC_XSIZE;
}

/* The arena record of `len` (> 0) bytes at `off`: PMAP__REC_ASIZE bytes. */
static inline size_t pmap__rec_arena(unsigned char *out, int code, uint64_t len, uint64_t off)
{
    uint32_t len32 = PMAP__REC_XLEN;
    uint64_t flen = len | PMAP__REC_AFLAG;

    memcpy(out, &len32, 4);
    memcpy(out + 4, &code, 4);
    memcpy(out + 8, &flen, 8);
    memcpy(out + 16, &off, 8);
    return PMAP__REC_ASIZE;
}

#define PMAP__F_UNIFORM 0x100u /* frame flag: headerless records of bytes / count */
/* Task frame flag: return each result as soon as it is ready (records
 * whose results were once lost with a crashed worker). */
#define PMAP__F_EACH 0x200u

struct pmap__frame {
    unsigned kind;
    uint32_t count;
    uint32_t seq;   /* low 32 bits of the sequence number of the first record */
    uint64_t bytes; /* the records with their headers */
    uint32_t aux;
    unsigned flags; /* PMAP__F_UNIFORM, PMAP__F_EACH (tasks only) or 0 */
};

void pmap__frame_hdr(unsigned char out[PMAP__HDR_SIZE], const struct pmap__frame *f);
void pmap__frame_trl(unsigned char out[PMAP__TRL_SIZE], const struct pmap__frame *f);
/* The header of a K_USE frame for task `fn` and `ctx`. */
void pmap__frame_use(struct pmap__frame *f, pmap_task_fn fn, void *ctx);
/* The task and ctx a K_USE frame names; 0, or PMAP_EPROTO for a NULL task. */
int pmap__frame_use_read(const struct pmap__frame *f, pmap_task_fn *fn, void **ctx);
/* Bytes of the header of a record of `len` bytes. */
static inline size_t pmap__rec_hdr_size(uint64_t len)
{
    return len < PMAP__REC_XLEN ? PMAP__REC_SIZE : PMAP__REC_XSIZE;
}

/* Write a record header (code 0: a success; else a task error);
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
    /* An arena record: `len` (1 .. the record limit) bytes at `off` in the
     * peer's arena, neither checked against it yet. 0, or a status that
     * stops the decoder. NULL: arena records are a protocol error. */
    int (*arena)(void *ud, unsigned status, int code, uint64_t off, uint64_t len);
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
    uint64_t alen; /* length of an arena record whose offset is still due */
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
/* Whether the records of the current (or, between frames, the last)
 * frame average `min` bytes or more: their payloads are worth reading in
 * place, and the reads between them worth keeping short. */
static inline int pmap__decoder_large(const struct pmap__decoder *d, uint64_t min)
{
    return d->f.count != 0 && d->f.bytes / d->f.count >= min;
}
/* True between frames (nothing partial buffered). */
int pmap__decoder_idle(const struct pmap__decoder *d);

/*
 * The decoder's inner loop, inlined where it is used so that the callback
 * for whole records is a direct (usually inlined) call: for records of a
 * few bytes this loop is most of what each side of a pipe does per record,
 * and an indirect call per record was a fifth of it.
 */
enum {
    PMAP__S_HDR,
    PMAP__S_REC,
    PMAP__S_XLEN,
    PMAP__S_AOFF, /* an arena record's offset */
    PMAP__S_DATA,
    PMAP__S_TRL,
    PMAP__S_ERR
};

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
        if (len > max_record || bytes_left < PMAP__REC_SIZE ||
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

#endif /* PMAP_WIRE_H */
