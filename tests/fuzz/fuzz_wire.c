/*
 * libFuzzer target for the frame decoder (src/wire.c), the code that reads
 * what workers write and so must survive anything.
 *
 * Input: byte 0 picks the record limit, bytes 1-4 seed the way the rest is
 * split into pieces; the rest is the stream. The stream is decoded twice:
 * in one piece, and in pieces of random size, some of them through the
 * in-place payload path (pmap__decoder_direct). Both runs must see the
 * same callbacks and end with the same status; every record announced must
 * be within the limit (so nothing is ever allocated beyond it), and every
 * payload must land exactly in the room the callback gave (ASan checks the
 * bounds of each exact-size allocation). Arena records (wire version 4)
 * are announced within the limit too, never with length 0.
 */
#include "wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const uint64_t limits[8] = {0, 1, 7, 16, 4096, (uint64_t)1 << 30, UINT64_MAX / 2, UINT64_MAX};

struct sink {
    uint64_t max;
    uint64_t hash;        /* of every callback and every payload byte */
    unsigned char *room;  /* the current record's payload, exactly len bytes */
    uint64_t room_len;
    uint64_t input_len;   /* no payload can be longer than the input */
    int in_frame, in_record;
    uint32_t frame_count, records;
    uint32_t reject_kind; /* frame() refuses this kind (0: none) */
};

static void mixin(struct sink *s, uint64_t v)
{
    s->hash = (s->hash ^ v) * 0x100000001b3ull;
}

static int on_frame(void *ud, const struct pmap__frame *f)
{
    struct sink *s = ud;

    CHECK(!s->in_frame && !s->in_record);
    CHECK(f->kind >= PMAP__K_TASKS && f->kind <= PMAP__K_USE);
    CHECK(f->count <= PMAP__FRAME_MAX_COUNT);
    /* EACH is a task frame's flag only; UNIFORM may go with it. */
    CHECK((f->flags & ~(PMAP__F_UNIFORM | PMAP__F_EACH)) == 0);
    CHECK(!(f->flags & PMAP__F_EACH) || f->kind == PMAP__K_TASKS);
    if (f->flags & PMAP__F_UNIFORM) /* bare records of bytes / count each */
        CHECK(f->count > 0 && f->bytes % f->count == 0 && f->bytes / f->count <= s->max);
    else
        CHECK(f->bytes >= (uint64_t)f->count * PMAP__REC_SIZE);
    mixin(s, 1);
    mixin(s, f->kind);
    mixin(s, f->count);
    mixin(s, f->seq);
    mixin(s, f->bytes);
    mixin(s, f->aux);
    if (f->kind == s->reject_kind)
        return PMAP_EPROTO;
    s->in_frame = 1;
    s->frame_count = f->count;
    s->records = 0;
    return 0;
}

static unsigned char *on_record(void *ud, unsigned status, int code, uint64_t len)
{
    struct sink *s = ud;

    CHECK(s->in_frame && !s->in_record);
    CHECK(len <= s->max);           /* never more than max_record_bytes */
    CHECK(s->records < s->frame_count);
    CHECK(status == PMAP__R_OK || status == PMAP__R_TASKERR || status == PMAP__R_STATUS);
    CHECK((status == PMAP__R_OK) == (code == 0)); /* a failure has a code */
    /* A task error may carry its message; a status record is a library
     * status (negative) and carries nothing. */
    CHECK(status != PMAP__R_STATUS || (code < 0 && len == 0));
    mixin(s, 2);
    mixin(s, status);
    mixin(s, (uint64_t)(uint32_t)code);
    mixin(s, len);
    /* Exactly len bytes, so that ASan sees a write past the room. A record
     * longer than the whole input can never complete: its room is capped at
     * the input's length, which is all that could ever be written. */
    s->room = malloc(len == 0 ? 1 : len > s->input_len ? (size_t)s->input_len + 1 : (size_t)len);
    CHECK(s->room != NULL);
    s->room_len = len;
    s->in_record = 1;
    return s->room;
}

static int on_record_end(void *ud)
{
    struct sink *s = ud;
    uint64_t i;

    CHECK(s->in_record);
    CHECK(s->room_len <= s->input_len);
    mixin(s, 3);
    for (i = 0; i < s->room_len; i++)
        mixin(s, s->room[i]);
    free(s->room);
    s->room = NULL;
    s->in_record = 0;
    s->records++;
    return 0;
}

static int on_frame_end(void *ud, const struct pmap__frame *f)
{
    struct sink *s = ud;

    CHECK(s->in_frame && !s->in_record);
    CHECK(s->records == f->count);
    mixin(s, 4);
    s->in_frame = 0;
    return 0;
}

/* An arena record: announced within the limit and never 0 bytes long; the
 * offset is the receiver's to check (pool.c, worker.c), so it is only
 * hashed here. */
static int on_arena(void *ud, unsigned status, int code, uint64_t off, uint64_t len)
{
    struct sink *s = ud;

    CHECK(s->in_frame && !s->in_record);
    CHECK(len > 0 && len <= s->max);
    CHECK(s->records < s->frame_count);
    CHECK(status == PMAP__R_OK || status == PMAP__R_TASKERR);
    CHECK((status == PMAP__R_OK) == (code == 0));
    mixin(s, 5);
    mixin(s, (uint64_t)(uint32_t)code);
    mixin(s, off);
    mixin(s, len);
    s->records++;
    return 0;
}

static const struct pmap__decoder_ops ops = {on_frame, on_record, on_record_end, on_frame_end,
                                             on_arena};

static uint64_t rng_next(uint64_t *st)
{
    uint64_t x = *st;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *st = x;
    return x;
}

static void release(struct sink *s)
{
    free(s->room);
    s->room = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pmap__decoder d1, d2;
    struct sink s1, s2;
    uint64_t st;
    const uint8_t *p;
    size_t n, off;
    int rc1, rc2 = 0;
    uint32_t seed;

    if (size < 5)
        return 0;
    memcpy(&seed, data + 1, 4);
    p = data + 5;
    n = size - 5;

    memset(&s1, 0, sizeof s1);
    s1.max = limits[data[0] & 7];
    s1.input_len = n;
    s1.reject_kind = (data[0] >> 3) & 7; /* 1..4 exercise a refusing callback */
    s2 = s1;

    /* Whole. */
    pmap__decoder_init(&d1, &ops, &s1, s1.max);
    rc1 = pmap__decode(&d1, p, n);
    CHECK(rc1 <= 0);
    if (rc1 != 0) /* sticky */
        CHECK(pmap__decode(&d1, p, n) == rc1);

    /* In pieces. */
    st = seed | ((uint64_t)seed << 32) | 1u;
    pmap__decoder_init(&d2, &ops, &s2, s2.max);
    off = 0;
    while (off < n && rc2 == 0) {
        uint64_t r = rng_next(&st), want;
        size_t take = (r & 3) == 0 ? 1 + (size_t)((r >> 8) % 64) : 1 + (size_t)((r >> 8) % 8);
        unsigned char *direct = pmap__decoder_direct(&d2, &want);

        if (take > n - off)
            take = n - off;
        if (direct != NULL && (r & 16)) {
            CHECK(want > 0 && want <= d2.max_record);
            if (take > want)
                take = (size_t)want;
            memcpy(direct, p + off, take);
            rc2 = pmap__decode_direct(&d2, take);
        } else {
            rc2 = pmap__decode(&d2, p + off, take);
        }
        off += take;
    }
    CHECK(rc2 <= 0);
    /* Same verdict and the same callbacks, however the bytes came. */
    CHECK(rc1 == rc2);
    CHECK(s1.hash == s2.hash);
    CHECK(pmap__decoder_idle(&d1) == pmap__decoder_idle(&d2));
    release(&s1);
    release(&s2);
    return 0;
}
