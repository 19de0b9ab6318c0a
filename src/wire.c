/*
 * Frames over pipes. The decoder treats its input as untrusted: every
 * length is checked against the record limit and the frame's own byte count
 * before anything is allocated, and check values in the header and the
 * trailer catch bytes that do not belong to the stream.
 */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"

#include <string.h>

#define MAGIC_HDR 0x50414d50u /* "PMAP" in little-endian memory order */
#define MAGIC_TRL 0x444e4521u
#define WIRE_VERSION 1u

enum { S_HDR, S_REC, S_DATA, S_TRL, S_ERR };

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
    put32(out + 4, (uint32_t)f->kind | (WIRE_VERSION << 16));
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

static int fail(struct pmap__decoder *d, int rc)
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
        return fail(d, PMAP_EPROTO);
    f.kind = kv & 0xffffu;
    f.count = get32(h + 8);
    f.seq = get32(h + 12);
    f.bytes = get64(h + 16);
    f.aux = get32(h + 24);
    if (f.kind < PMAP__K_TASKS || f.kind > PMAP__K_RETIRE || f.count > PMAP__FRAME_MAX_COUNT)
        return fail(d, PMAP_EPROTO);
    if (f.kind == PMAP__K_READY || f.kind == PMAP__K_RETIRE) {
        if (f.count != 0 || f.bytes != 0)
            return fail(d, PMAP_EPROTO);
    } else {
        /* Each record is at least its header and at most header + limit. */
        if (f.bytes < (uint64_t)f.count * PMAP__REC_SIZE)
            return fail(d, PMAP_EPROTO);
        if (d->max_record < UINT64_MAX / PMAP__FRAME_MAX_COUNT - PMAP__REC_SIZE &&
            f.bytes > (uint64_t)f.count * (PMAP__REC_SIZE + d->max_record))
            return fail(d, PMAP_EPROTO);
    }
    d->f = f;
    d->recs_left = f.count;
    d->bytes_left = f.bytes;
    rc = d->ops->frame(d->ud, &d->f);
    if (rc != 0)
        return fail(d, rc);
    d->state = f.count ? S_REC : S_TRL;
    return 0;
}

static int parse_rec(struct pmap__decoder *d, const unsigned char *r)
{
    uint32_t status = get32(r);
    int code;
    uint64_t len = get64(r + 8);

    memcpy(&code, r + 4, 4);
    if (status > PMAP__R_TASKERR || (status == PMAP__R_OK && code != 0) ||
        (status == PMAP__R_TASKERR && (code == 0 || len != 0)))
        return fail(d, PMAP_EPROTO);
    if (len > d->max_record || d->bytes_left < PMAP__REC_SIZE ||
        len > d->bytes_left - PMAP__REC_SIZE)
        return fail(d, PMAP_EPROTO);
    d->bytes_left -= PMAP__REC_SIZE + len;
    d->recs_left--;
    d->dst = d->ops->record(d->ud, status, code, len);
    if (d->dst == NULL)
        return fail(d, d->rc ? d->rc : PMAP_ENOMEM);
    d->data_left = len;
    d->state = S_DATA;
    return 0;
}

static int end_rec(struct pmap__decoder *d)
{
    int rc = d->ops->record_end != NULL ? d->ops->record_end(d->ud) : 0;

    if (rc != 0)
        return fail(d, rc);
    if (d->recs_left)
        d->state = S_REC;
    else if (d->bytes_left != 0)
        return fail(d, PMAP_EPROTO);
    else
        d->state = S_TRL;
    return 0;
}

static int parse_trl(struct pmap__decoder *d, const unsigned char *t)
{
    unsigned char want[PMAP__TRL_SIZE];
    int rc;

    pmap__frame_trl(want, &d->f);
    if (memcmp(want, t, PMAP__TRL_SIZE) != 0)
        return fail(d, PMAP_EPROTO);
    d->state = S_HDR;
    rc = d->ops->frame_end(d->ud, &d->f);
    if (rc != 0)
        return fail(d, rc);
    return 0;
}

/* Records that lie whole in the input one after another (the common case
 * of small records) are decoded here without going round the state
 * machine for each piece: the checks of parse_rec and end_rec, inlined,
 * with the frame's counters kept in registers, because for records of a
 * few bytes this loop is most of what the caller does per result. Stops at
 * the first record that is not whole, at the end of the frame's records,
 * or on an error, which it returns. */
static int whole_records(struct pmap__decoder *d, const unsigned char **pp, size_t *pn)
{
    const struct pmap__decoder_ops *ops = d->ops;
    const unsigned char *p = *pp;
    size_t n = *pn;
    uint64_t bytes_left = d->bytes_left;
    uint32_t recs_left = d->recs_left;
    const uint64_t max_record = d->max_record;
    int rc = 0;

    while (n >= PMAP__REC_SIZE) {
        uint64_t len = get64(p + 8);
        uint32_t status = get32(p);
        int code;
        unsigned char *dst;

        if (len > n - PMAP__REC_SIZE)
            break;
        memcpy(&code, p + 4, 4);
        /* status 0 with code 0 (a success) is one 64-bit compare; the
         * rest are the same checks as parse_rec. */
        if (get64(p) != 0 && (status != PMAP__R_TASKERR || code == 0 || len != 0)) {
            rc = fail(d, PMAP_EPROTO);
            break;
        }
        if (len > max_record || bytes_left < PMAP__REC_SIZE ||
            len > bytes_left - PMAP__REC_SIZE) {
            rc = fail(d, PMAP_EPROTO);
            break;
        }
        bytes_left -= PMAP__REC_SIZE + len;
        recs_left--;
        dst = ops->record(d->ud, status, code, len);
        if (dst == NULL) {
            rc = fail(d, d->rc ? d->rc : PMAP_ENOMEM);
            break;
        }
        if (len)
            pmap__copy(dst, p + PMAP__REC_SIZE, (size_t)len);
        p += PMAP__REC_SIZE + (size_t)len;
        n -= PMAP__REC_SIZE + (size_t)len;
        if (ops->record_end != NULL && (rc = ops->record_end(d->ud)) != 0) {
            rc = fail(d, rc);
            break;
        }
        if (recs_left == 0) {
            if (bytes_left != 0)
                rc = fail(d, PMAP_EPROTO);
            else
                d->state = S_TRL;
            break;
        }
    }
    d->bytes_left = bytes_left;
    d->recs_left = recs_left;
    *pp = p;
    *pn = n;
    return rc;
}

int pmap__decode(struct pmap__decoder *d, const unsigned char *p, size_t n)
{
    while (n > 0) {
        const unsigned char *h;
        size_t need, take;
        int rc;

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
            if (d->data_left == 0 && (rc = end_rec(d)) != 0)
                return rc;
            continue;
        case S_ERR:
            return d->rc;
        default:
            break;
        }
        if (d->state == S_REC && d->tmp_len == 0 && n >= PMAP__REC_SIZE) {
            size_t before = n;

            rc = whole_records(d, &p, &n);
            if (rc != 0)
                return rc;
            if (n != before)
                continue;
        }
        need = d->state == S_HDR ? PMAP__HDR_SIZE
               : d->state == S_REC ? PMAP__REC_SIZE
                                   : PMAP__TRL_SIZE;
        if (d->tmp_len == 0 && n >= need) {
            /* The common case: the whole piece is in the input; parse it
             * where it is instead of gathering it byte by byte. */
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
                break;
            d->tmp_len = 0;
            h = d->tmp;
        }
        if (d->state == S_HDR)
            rc = parse_hdr(d, h);
        else if (d->state == S_REC)
            rc = parse_rec(d, h);
        else
            rc = parse_trl(d, h);
        if (rc != 0)
            return rc;
        /* A zero-length payload completes at once. */
        if (d->state == S_DATA && d->data_left == 0 && (rc = end_rec(d)) != 0)
            return rc;
    }
    return d->state == S_ERR ? d->rc : 0;
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
