/*
 * Frames over pipes. The decoder treats its input as untrusted: every
 * length is checked against the record limit and the frame's own byte count
 * before anything is allocated, and check values in the header and the
 * trailer catch bytes that do not belong to the stream.
 */
#define _POSIX_C_SOURCE 200809L

#include "wire.h"

#include "buf.h"

#include <string.h>

#define MAGIC_HDR 0x50414d50u /* "PMAP" in little-endian memory order */
#define MAGIC_TRL 0x444e4521u
/* 3: task errors may carry a payload; the status record. 4: the arena
 * record. A peer of another version is refused at its first frame
 * (PMAP_EPROTO). */
#define WIRE_VERSION 4u

#define S_HDR PMAP__S_HDR
#define S_REC PMAP__S_REC
#define S_XLEN PMAP__S_XLEN
#define S_AOFF PMAP__S_AOFF
#define S_DATA PMAP__S_DATA
#define S_TRL PMAP__S_TRL
#define S_ERR PMAP__S_ERR

static uint32_t mix(uint64_t a, uint64_t b)
{
    uint64_t x = a * 0x9e3779b97f4a7c15u ^ (b + 0x632be59bd9b4e019u);

    x ^= x >> 31;
    x *= 0xd6e8feb86659fd93u;
    x ^= x >> 32;
    return (uint32_t)x;
}

static void put32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put64(unsigned char *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v;

    memcpy(&v, p, 8);
    return v;
}

static uint32_t hdr_check(const unsigned char *h)
{
    return mix(get64(h) ^ get64(h + 16), get64(h + 8) ^ ((uint64_t)get32(h + 24) << 7));
}

void pmap__frame_hdr(unsigned char out[PMAP__HDR_SIZE], const struct pmap__frame *f)
{
    put32(out, MAGIC_HDR);
    put32(out + 4, (uint32_t)f->kind | (uint32_t)f->flags | (WIRE_VERSION << 16));
    put32(out + 8, f->count);
    put32(out + 12, f->seq);
    put64(out + 16, f->bytes);
    put32(out + 24, f->aux);
    put32(out + 28, hdr_check(out));
}

void pmap__frame_trl(unsigned char out[PMAP__TRL_SIZE], const struct pmap__frame *f)
{
    unsigned char h[PMAP__HDR_SIZE];

    pmap__frame_hdr(h, f);
    put32(out, MAGIC_TRL);
    put32(out + 4, mix(get32(h + 28), f->bytes ^ f->seq));
}

/* Pointers travel as their bytes: C has no portable integer for a
 * function pointer, but both ends run the same program image. */
_Static_assert(sizeof(pmap_task_fn) <= sizeof(uint64_t), "a task pointer fits in 64 bits");
_Static_assert(sizeof(void *) <= sizeof(uint64_t), "a pointer fits in 64 bits");

void pmap__frame_use(struct pmap__frame *f, pmap_task_fn fn, void *ctx)
{
    uint64_t fbits = 0, cbits = 0;

    memcpy(&fbits, &fn, sizeof fn);
    memcpy(&cbits, &ctx, sizeof ctx);
    f->kind = PMAP__K_USE;
    f->flags = 0;
    f->count = 0;
    f->bytes = fbits;
    f->seq = (uint32_t)cbits;
    f->aux = (uint32_t)(cbits >> 32);
}

int pmap__frame_use_read(const struct pmap__frame *f, pmap_task_fn *fn, void **ctx)
{
    uint64_t cbits = (uint64_t)f->aux << 32 | f->seq;

    if (f->bytes == 0)
        return PMAP_EPROTO;
    memcpy(fn, &f->bytes, sizeof *fn);
    memcpy(ctx, &cbits, sizeof *ctx);
    return 0;
}

void pmap__decoder_init(struct pmap__decoder *d, const struct pmap__decoder_ops *ops, void *ud,
                        uint64_t max_record)
{
    memset(d, 0, sizeof *d);
    d->ops = ops;
    d->ud = ud;
    d->max_record = max_record;
    d->state = S_HDR;
}

int pmap__decoder_idle(const struct pmap__decoder *d)
{
    return d->state == S_HDR && d->tmp_len == 0;
}

int pmap__decoder_fail(struct pmap__decoder *d, int rc)
{
    d->state = S_ERR;
    d->rc = rc;
    return rc;
}

/* Parse and validate a complete header at h (in the input or d->tmp). */
static int parse_hdr(struct pmap__decoder *d, const unsigned char *h)
{
    uint32_t kv = get32(h + 4);
    struct pmap__frame f;
    int rc;

    if (get32(h) != MAGIC_HDR || (kv >> 16) != WIRE_VERSION || get32(h + 28) != hdr_check(h))
        return pmap__decoder_fail(d, PMAP_EPROTO);
    f.kind = kv & 0xffu;
    f.flags = kv & 0xff00u;
    f.count = get32(h + 8);
    f.seq = get32(h + 12);
    f.bytes = get64(h + 16);
    f.aux = get32(h + 24);
    if (f.kind < PMAP__K_TASKS || f.kind > PMAP__K_USE || f.count > PMAP__FRAME_MAX_COUNT)
        return pmap__decoder_fail(d, PMAP_EPROTO);
    if ((f.flags & ~(PMAP__F_UNIFORM | (f.kind == PMAP__K_TASKS ? PMAP__F_EACH : 0u))) != 0)
        return pmap__decoder_fail(d, PMAP_EPROTO);
    if (f.kind == PMAP__K_READY || f.kind == PMAP__K_RETIRE) {
        if (f.count != 0 || f.bytes != 0 || f.flags != 0)
            return pmap__decoder_fail(d, PMAP_EPROTO);
    } else if (f.kind == PMAP__K_USE) {
        /* `bytes` is the task here, not a length. */
        if (f.count != 0 || f.flags != 0)
            return pmap__decoder_fail(d, PMAP_EPROTO);
    } else if (f.flags & PMAP__F_UNIFORM) {
        /* Records of bytes / count bytes each, exactly. */
        if (f.count == 0 || f.bytes % f.count != 0 || f.bytes / f.count > d->max_record)
            return pmap__decoder_fail(d, PMAP_EPROTO);
        d->ulen = f.bytes / f.count;
    } else {
        /* Each record is at least its header and at most header + limit. */
        if (f.bytes < (uint64_t)f.count * PMAP__REC_SIZE)
            return pmap__decoder_fail(d, PMAP_EPROTO);
        if (d->max_record < UINT64_MAX / PMAP__FRAME_MAX_COUNT - PMAP__REC_XSIZE &&
            f.bytes > (uint64_t)f.count * (pmap__rec_hdr_size(d->max_record) + d->max_record))
            return pmap__decoder_fail(d, PMAP_EPROTO);
    }
    d->f = f;
    d->recs_left = f.count;
    d->bytes_left = f.bytes;
    rc = d->ops->frame(d->ud, &d->f);
    if (rc != 0)
        return pmap__decoder_fail(d, rc);
    d->state = f.count ? S_REC : S_TRL;
    return 0;
}

/* A record of `len` bytes with a header of `hsize` bytes starts. */
static int begin_rec_as(struct pmap__decoder *d, unsigned status, int code, uint64_t len,
                        size_t hsize)
{
    if (len > d->max_record || d->bytes_left < hsize || len > d->bytes_left - hsize)
        return pmap__decoder_fail(d, PMAP_EPROTO);
    d->bytes_left -= hsize + len;
    d->recs_left--;
    d->dst = d->ops->record(d->ud, status, code, len);
    if (d->dst == NULL)
        return pmap__decoder_fail(d, d->rc ? d->rc : PMAP_ENOMEM);
    d->data_left = len;
    d->state = S_DATA;
    return 0;
}

static int begin_rec(struct pmap__decoder *d, int code, uint64_t len, size_t hsize)
{
    return begin_rec_as(d, code != 0 ? PMAP__R_TASKERR : PMAP__R_OK, code, len, hsize);
}

static int parse_rec(struct pmap__decoder *d, const unsigned char *r)
{
    uint32_t len = get32(r);
    int code;

    memcpy(&code, r + 4, 4);
    if (len == PMAP__REC_XLEN) {
        d->xcode = code;
        d->state = S_XLEN;
        return 0;
    }
    return begin_rec(d, code, len, PMAP__REC_SIZE);
}

/* The 64-bit length of an escaped record: only lengths that do not fit
 * the 32-bit field may use it, so that every record has one encoding. */
static int parse_xlen(struct pmap__decoder *d, const unsigned char *x)
{
    uint64_t len = get64(x);

    if (len & PMAP__REC_AFLAG) {
        len &= ~PMAP__REC_AFLAG;
        if (len == 0 || len > d->max_record || d->ops->arena == NULL ||
            d->bytes_left < PMAP__REC_ASIZE)
            return pmap__decoder_fail(d, PMAP_EPROTO);
        d->alen = len;
        d->state = S_AOFF;
        return 0;
    }
    /* Length 0: a status record (a library status, never 0 or positive). */
    if (len == 0 && d->xcode < 0)
        return begin_rec_as(d, PMAP__R_STATUS, d->xcode, 0, PMAP__REC_XSIZE);
    if (len < PMAP__REC_XLEN)
        return pmap__decoder_fail(d, PMAP_EPROTO);
    return begin_rec(d, d->xcode, len, PMAP__REC_XSIZE);
}

/* A record is over: the next one, or the trailer. */
static int next_rec(struct pmap__decoder *d)
{
    if (d->recs_left)
        d->state = S_REC;
    else if (d->bytes_left != 0)
        return pmap__decoder_fail(d, PMAP_EPROTO);
    else
        d->state = S_TRL;
    return 0;
}

/* The arena record is whole: its bytes are the receiver's to find. */
static int parse_aoff(struct pmap__decoder *d, const unsigned char *x)
{
    int rc;

    d->bytes_left -= PMAP__REC_ASIZE; /* checked in parse_xlen */
    d->recs_left--;
    rc = d->ops->arena(d->ud, d->xcode != 0 ? PMAP__R_TASKERR : PMAP__R_OK, d->xcode, get64(x),
                       d->alen);
    if (rc != 0)
        return pmap__decoder_fail(d, rc);
    return next_rec(d);
}

static int end_rec(struct pmap__decoder *d)
{
    int rc = d->ops->record_end != NULL ? d->ops->record_end(d->ud) : 0;

    if (rc != 0)
        return pmap__decoder_fail(d, rc);
    return next_rec(d);
}

static int parse_trl(struct pmap__decoder *d, const unsigned char *t)
{
    unsigned char want[PMAP__TRL_SIZE];
    int rc;

    pmap__frame_trl(want, &d->f);
    if (memcmp(want, t, PMAP__TRL_SIZE) != 0)
        return pmap__decoder_fail(d, PMAP_EPROTO);
    d->state = S_HDR;
    rc = d->ops->frame_end(d->ud, &d->f);
    if (rc != 0)
        return pmap__decoder_fail(d, rc);
    return 0;
}

/* The generic whole-record callback: the decoder's own callbacks, with
 * the payload copied to where `record` says. */
static int generic_whole(struct pmap__decoder *d, unsigned status, int code,
                         const unsigned char *data, uint64_t len)
{
    unsigned char *dst = d->ops->record(d->ud, status, code, len);

    if (dst == NULL)
        return d->rc ? d->rc : PMAP_ENOMEM;
    if (len)
        pmap__copy(dst, data, (size_t)len);
    return d->ops->record_end != NULL ? d->ops->record_end(d->ud) : 0;
}

int pmap__decode(struct pmap__decoder *d, const unsigned char *p, size_t n)
{
    return pmap__decode_with(d, p, n, generic_whole);
}

int pmap__decode_step(struct pmap__decoder *d, const unsigned char **pp, size_t *pn)
{
    const unsigned char *p = *pp, *h;
    size_t n = *pn, need, take;
    int rc = 0;

    switch (d->state) {
    case S_DATA:
        take = d->data_left < n ? (size_t)d->data_left : n;
        if (take) {
            pmap__copy(d->dst, p, take);
            d->dst += take;
            d->data_left -= take;
            p += take;
            n -= take;
        }
        if (d->data_left == 0)
            rc = end_rec(d);
        goto out;
    case S_ERR:
        return d->rc;
    case S_REC:
        if (d->f.flags & PMAP__F_UNIFORM) {
            /* No record header: the record starts where the last ended. */
            rc = begin_rec(d, 0, d->ulen, 0);
            if (rc == 0 && d->data_left == 0)
                rc = end_rec(d);
            goto out;
        }
        break;
    default:
        break;
    }
    need = d->state == S_HDR    ? PMAP__HDR_SIZE
           : d->state == S_REC  ? PMAP__REC_SIZE
           : d->state == S_XLEN ? PMAP__REC_XSIZE - PMAP__REC_SIZE
           : d->state == S_AOFF ? PMAP__REC_ASIZE - PMAP__REC_XSIZE
                                : PMAP__TRL_SIZE;
    if (d->tmp_len == 0 && n >= need) {
        /* The common case: the whole piece is in the input; parse it where
         * it is instead of gathering it byte by byte. */
        h = p;
        p += need;
        n -= need;
    } else {
        take = need - d->tmp_len < n ? need - d->tmp_len : n;
        memcpy(d->tmp + d->tmp_len, p, take);
        d->tmp_len += take;
        p += take;
        n -= take;
        if (d->tmp_len < need)
            goto out;
        d->tmp_len = 0;
        h = d->tmp;
    }
    if (d->state == S_HDR)
        rc = parse_hdr(d, h);
    else if (d->state == S_REC)
        rc = parse_rec(d, h);
    else if (d->state == S_XLEN)
        rc = parse_xlen(d, h);
    else if (d->state == S_AOFF)
        rc = parse_aoff(d, h);
    else
        rc = parse_trl(d, h);
    /* A zero-length payload completes at once. */
    if (rc == 0 && d->state == S_DATA && d->data_left == 0)
        rc = end_rec(d);
out:
    *pp = p;
    *pn = n;
    return rc;
}

unsigned char *pmap__decoder_direct(struct pmap__decoder *d, uint64_t *want)
{
    if (d->state != S_DATA || d->data_left == 0)
        return NULL;
    *want = d->data_left;
    return d->dst;
}

int pmap__decode_direct(struct pmap__decoder *d, size_t n)
{
    int rc;

    d->dst += n;
    d->data_left -= n;
    if (d->data_left == 0 && (rc = end_rec(d)) != 0)
        return rc;
    return 0;
}
