/*
 * Unit tests of the frame encoder and the incremental decoder (src/wire.c):
 * round trips fed in every split, the in-place payload path, and a table
 * of malformed frames that must all end in a sticky PMAP_EPROTO without a
 * record callback ever seeing a length above the limit.
 */
#define _POSIX_C_SOURCE 200809L

#include "wire.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* A growable byte string                                                   */
/* ------------------------------------------------------------------------ */

struct bytes {
    unsigned char *p;
    size_t len, cap;
};

static void b_put(struct bytes *b, const void *data, size_t len)
{
    if (b->len + len > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;

        while (ncap < b->len + len)
            ncap *= 2;
        b->p = realloc(b->p, ncap);
        assert_non_null(b->p);
        b->cap = ncap;
    }
    if (len)
        memcpy(b->p + b->len, data, len);
    b->len += len;
}

static void b_free(struct bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Deterministic pseudo-random numbers (xorshift64*), so that every run
 * feeds the same splits and a failure can be replayed. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static unsigned char pattern(uint64_t frame, uint64_t rec, uint64_t j)
{
    return (unsigned char)((frame * 31u + rec * 131u + j * 7u + (j >> 8)) & 0xffu);
}

/* ------------------------------------------------------------------------ */
/* Building frames                                                          */
/* ------------------------------------------------------------------------ */

struct trec {
    unsigned status;
    int code;
    size_t len;
};

/* Append a well-formed frame (records filled with pattern(fid, i, j));
 * where each payload starts goes to offs[i] unless offs is NULL. `kind`
 * may carry PMAP__F_UNIFORM: bare records (all successes of one length). */
static void put_frame(struct bytes *b, unsigned kind, uint32_t seq, uint32_t aux, uint64_t fid,
                      const struct trec *recs, uint32_t n, size_t *offs)
{
    struct pmap__frame f;
    unsigned char h[PMAP__HDR_SIZE], r[PMAP__REC_XSIZE], t[PMAP__TRL_SIZE];
    uint32_t i;
    size_t j;

    f.kind = kind & 0xffu;
    f.flags = kind & 0xff00u;
    f.count = n;
    f.seq = seq;
    f.aux = aux;
    f.bytes = 0;
    for (i = 0; i < n; i++) {
        if (f.flags & PMAP__F_UNIFORM) {
            assert_int_equal(recs[i].code, 0);
            assert_int_equal(recs[i].len, recs[0].len);
        } else {
            f.bytes += pmap__rec_hdr_size(recs[i].len);
        }
        f.bytes += recs[i].len;
    }
    pmap__frame_hdr(h, &f);
    b_put(b, h, sizeof h);
    for (i = 0; i < n; i++) {
        /* The status is implied by the code. */
        assert_int_equal(recs[i].status, recs[i].code ? PMAP__R_TASKERR : PMAP__R_OK);
        if (!(f.flags & PMAP__F_UNIFORM))
            b_put(b, r, pmap__rec_hdr(r, recs[i].code, recs[i].len));
        if (offs != NULL)
            offs[i] = b->len;
        for (j = 0; j < recs[i].len; j++) {
            unsigned char c = pattern(fid, i, j);

            b_put(b, &c, 1);
        }
    }
    pmap__frame_trl(t, &f);
    b_put(b, t, sizeof t);
}

/*
 * The test's own copy of the header check, so that headers whose fields
 * are wrong can still carry a valid check (otherwise every bad field would
 * only ever be caught as a bad check). test_encoder_matches_copy proves the
 * copy agrees with pmap__frame_hdr().
 */
static uint32_t t_mix(uint64_t a, uint64_t b)
{
    uint64_t x = a * 0x9e3779b97f4a7c15u ^ (b + 0x632be59bd9b4e019u);

    x ^= x >> 31;
    x *= 0xd6e8feb86659fd93u;
    x ^= x >> 32;
    return (uint32_t)x;
}

static uint64_t t_get64(const unsigned char *p)
{
    uint64_t v;

    memcpy(&v, p, 8);
    return v;
}

static uint32_t t_get32(const unsigned char *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return v;
}

#define T_MAGIC 0x50414d50u
#define T_VERSION 4u

static void raw_hdr(unsigned char h[PMAP__HDR_SIZE], uint32_t magic, unsigned kind,
                    unsigned version, uint32_t count, uint32_t seq, uint64_t bytes, uint32_t aux)
{
    uint32_t kv = (uint32_t)kind | ((uint32_t)version << 16);
    uint32_t check;

    memcpy(h, &magic, 4);
    memcpy(h + 4, &kv, 4);
    memcpy(h + 8, &count, 4);
    memcpy(h + 12, &seq, 4);
    memcpy(h + 16, &bytes, 8);
    memcpy(h + 24, &aux, 4);
    check = t_mix(t_get64(h) ^ t_get64(h + 16), t_get64(h + 8) ^ ((uint64_t)t_get32(h + 24) << 7));
    memcpy(h + 28, &check, 4);
}

static void test_encoder_matches_copy(void **state)
{
    static const struct pmap__frame fs[] = {
        {PMAP__K_TASKS, 0, 0, 0, 0, 0},
        {PMAP__K_RESULTS, 3, 77, 3 * 16 + 100, 12345, 0},
        {PMAP__K_READY, 0, 0, 0, 0, 0},
        {PMAP__K_RETIRE, 0, 0xffffffffu, 0, 0, 0},
        {PMAP__K_TASKS, 1u << 24, 5, UINT64_MAX, 0xffffffffu, 0},
        {PMAP__K_RESULTS, 4, 9, 4 * 12, 3, PMAP__F_UNIFORM},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        unsigned char a[PMAP__HDR_SIZE], b[PMAP__HDR_SIZE];

        pmap__frame_hdr(a, &fs[i]);
        raw_hdr(b, T_MAGIC, fs[i].kind | fs[i].flags, T_VERSION, fs[i].count, fs[i].seq,
                fs[i].bytes, fs[i].aux);
        assert_memory_equal(a, b, PMAP__HDR_SIZE);
    }
}

/* ------------------------------------------------------------------------ */
/* A decoder sink that records everything                                   */
/* ------------------------------------------------------------------------ */

struct seen_rec {
    unsigned status;
    int code;
    uint64_t len;
    unsigned char *data;
    int ended;
    int arena;    /* an arena record: its bytes are at `off` */
    uint64_t off;
};

struct sink {
    uint64_t max;
    struct pmap__frame frames[64];
    unsigned nframes, nends;
    struct seen_rec recs[256];
    unsigned nrecs;
    int over_max;   /* record() was called with len > max */
    int calls_late; /* a callback came after the decoder had failed */
    int failed;
    /* Fault injection. */
    int frame_rc;
    int record_null;
    int record_end_rc;
    int frame_end_rc;
    int arena_rc;
    unsigned char dummy;
};

static int s_frame(void *ud, const struct pmap__frame *f)
{
    struct sink *s = ud;

    if (s->failed)
        s->calls_late++;
    assert_true(s->nframes < 64);
    s->frames[s->nframes++] = *f;
    return s->frame_rc;
}

static unsigned char *s_record(void *ud, unsigned status, int code, uint64_t len)
{
    struct sink *s = ud;
    struct seen_rec *r;

    if (s->failed)
        s->calls_late++;
    if (len > s->max) {
        s->over_max = 1;
        return NULL;
    }
    if (s->record_null)
        return NULL;
    assert_true(s->nrecs < 256);
    r = &s->recs[s->nrecs++];
    r->status = status;
    r->code = code;
    r->len = len;
    r->ended = 0;
    r->data = len ? malloc((size_t)len) : NULL;
    if (len)
        assert_non_null(r->data);
    return len ? r->data : &s->dummy;
}

static int s_record_end(void *ud)
{
    struct sink *s = ud;

    if (s->failed)
        s->calls_late++;
    assert_true(s->nrecs > 0);
    s->recs[s->nrecs - 1].ended = 1;
    return s->record_end_rc;
}

static int s_frame_end(void *ud, const struct pmap__frame *f)
{
    struct sink *s = ud;

    if (s->failed)
        s->calls_late++;
    assert_true(s->nframes > 0);
    assert_int_equal(f->kind, s->frames[s->nframes - 1].kind);
    assert_int_equal(f->count, s->frames[s->nframes - 1].count);
    assert_int_equal(f->seq, s->frames[s->nframes - 1].seq);
    assert_int_equal(f->bytes, s->frames[s->nframes - 1].bytes);
    assert_int_equal(f->aux, s->frames[s->nframes - 1].aux);
    assert_int_equal(f->flags, s->frames[s->nframes - 1].flags);
    s->nends++;
    return s->frame_end_rc;
}

static int s_arena(void *ud, unsigned status, int code, uint64_t off, uint64_t len)
{
    struct sink *s = ud;
    struct seen_rec *r;

    if (s->failed)
        s->calls_late++;
    if (len > s->max || len == 0)
        s->over_max = 1;
    assert_true(s->nrecs < 256);
    r = &s->recs[s->nrecs++];
    memset(r, 0, sizeof *r);
    r->status = status;
    r->code = code;
    r->len = len;
    r->off = off;
    r->arena = 1;
    r->ended = 1;
    return s->arena_rc;
}

static const struct pmap__decoder_ops sink_ops = {s_frame, s_record, s_record_end, s_frame_end,
                                                  s_arena};
/* A receiver without an arena. */
static const struct pmap__decoder_ops plain_ops = {s_frame, s_record, s_record_end, s_frame_end,
                                                   NULL};

static void sink_init(struct sink *s, uint64_t max)
{
    memset(s, 0, sizeof *s);
    s->max = max;
}

static void sink_free(struct sink *s)
{
    unsigned i;

    for (i = 0; i < s->nrecs; i++)
        free(s->recs[i].data);
    s->nrecs = 0;
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */
/* ------------------------------------------------------------------------ */

struct tframe {
    unsigned kind; /* with PMAP__F_UNIFORM for a uniform frame */
    uint32_t seq, aux;
    uint32_t n;
    struct trec recs[12];
    size_t off[12]; /* where each payload is in the encoded stream */
};

static const size_t some_lens[] = {0, 1, 2, 7, 15, 16, 17, 31, 32, 33, 100, 255, 256, 1000, 4096};
#define NLENS (sizeof some_lens / sizeof some_lens[0])

/* Frames with 0..10 records of mixed kinds, statuses and lengths. */
static unsigned make_frames(struct tframe *fr, unsigned max_frames, int big)
{
    unsigned nf = 0, k;
    uint32_t i;

    fr[nf].kind = PMAP__K_READY;
    fr[nf].seq = 0;
    fr[nf].aux = 0;
    fr[nf++].n = 0;
    for (k = 0; k <= 10 && nf < max_frames; k++, nf++) {
        struct tframe *f = &fr[nf];

        f->kind = k % 2 ? PMAP__K_RESULTS : PMAP__K_TASKS;
        if (k % 4 == 2)
            f->kind |= PMAP__F_EACH; /* re-runs of lost records */
        f->seq = 1000u * k + 0xfffff000u; /* wraps: the sequence is 32-bit */
        f->aux = k * 77u;
        f->n = k;
        for (i = 0; i < k; i++) {
            struct trec *r = &f->recs[i];

            if (f->kind == PMAP__K_RESULTS && (i + k) % 3 == 0) {
                r->status = PMAP__R_TASKERR;
                r->code = (i % 2) ? -(int)(i + 1) : (int)(i + 100);
                r->len = 0;
            } else {
                r->status = PMAP__R_OK;
                r->code = 0;
                r->len = some_lens[(i * 5 + k) % NLENS];
                if (big && i == 1)
                    r->len = 300000 + k;
            }
        }
    }
    /* Uniform frames: parameters, empty results, results. */
    for (k = 0; k < 3 && nf < max_frames; k++, nf++) {
        struct tframe *f = &fr[nf];

        f->kind = k ? PMAP__K_RESULTS | PMAP__F_UNIFORM
                    : PMAP__K_TASKS | PMAP__F_UNIFORM | PMAP__F_EACH;
        f->seq = 5000u + k;
        f->aux = k;
        f->n = 5 - k;
        for (i = 0; i < f->n; i++) {
            f->recs[i].status = PMAP__R_OK;
            f->recs[i].code = 0;
            f->recs[i].len = k == 0 ? 8 : k == 1 ? 0 : big ? 300001 : 33;
        }
    }
    if (nf < max_frames) {
        fr[nf].kind = PMAP__K_RETIRE;
        fr[nf].seq = 99;
        fr[nf].aux = 0;
        fr[nf++].n = 0;
    }
    return nf;
}

static void encode_frames(struct bytes *b, struct tframe *fr, unsigned nf)
{
    unsigned k;
    uint32_t i;
    uint64_t j;

    for (k = 0; k < nf; k++)
        put_frame(b, fr[k].kind, fr[k].seq, fr[k].aux, k, fr[k].recs, fr[k].n, fr[k].off);
    /* The encoder wrote the pattern where it says. */
    for (k = 0; k < nf; k++)
        for (i = 0; i < fr[k].n; i++)
            for (j = 0; j < fr[k].recs[i].len; j++)
                assert_int_equal(b->p[fr[k].off[i] + j], pattern(k, i, j));
}

/* The sink saw exactly the frames and records that were encoded in `b`. */
static void check_seen(const struct sink *s, const struct tframe *fr, unsigned nf,
                       const struct bytes *b)
{
    unsigned k, ri = 0;
    uint32_t i;

    assert_int_equal(s->nframes, nf);
    assert_int_equal(s->nends, nf);
    assert_false(s->over_max);
    for (k = 0; k < nf; k++) {
        uint64_t bytes = 0;

        assert_int_equal(s->frames[k].kind, fr[k].kind & 0xffu);
        assert_int_equal(s->frames[k].flags, fr[k].kind & 0xff00u);
        assert_int_equal(s->frames[k].count, fr[k].n);
        assert_int_equal(s->frames[k].seq, fr[k].seq);
        assert_int_equal(s->frames[k].aux, fr[k].aux);
        for (i = 0; i < fr[k].n; i++) {
            const struct seen_rec *r = &s->recs[ri++];

            bytes += fr[k].recs[i].len;
            if (!(fr[k].kind & PMAP__F_UNIFORM))
                bytes += pmap__rec_hdr_size(fr[k].recs[i].len);
            assert_true(ri <= s->nrecs);
            assert_int_equal(r->status, fr[k].recs[i].status);
            assert_int_equal(r->code, fr[k].recs[i].code);
            assert_int_equal(r->len, fr[k].recs[i].len);
            assert_true(r->ended);
            if (r->len && memcmp(r->data, b->p + fr[k].off[i], (size_t)r->len) != 0)
                fail_msg("frame %u record %u: payload differs", k, (unsigned)i);
        }
        assert_int_equal(s->frames[k].bytes, bytes);
    }
    assert_int_equal(s->nrecs, ri);
}

/* Feed `b` in pieces whose sizes come from `next_piece`. */
static void feed(struct pmap__decoder *d, const struct bytes *b, size_t (*next_piece)(void *),
                 void *arg)
{
    size_t off = 0;

    while (off < b->len) {
        size_t n = next_piece(arg);

        if (n > b->len - off)
            n = b->len - off;
        assert_int_equal(pmap__decode(d, b->p + off, n), 0);
        off += n;
    }
}

static size_t piece_one(void *arg)
{
    (void)arg;
    return 1;
}

static size_t piece_all(void *arg)
{
    (void)arg;
    return SIZE_MAX;
}

static size_t piece_random(void *arg)
{
    uint64_t *s = arg;
    uint64_t r = rng_next(s);

    /* Mostly small pieces, sometimes large ones, sometimes empty. */
    switch (r % 4) {
    case 0:
        return (size_t)(r >> 8) % 4;
    case 1:
        return (size_t)(r >> 8) % 40;
    case 2:
        return (size_t)(r >> 8) % 700;
    default:
        return (size_t)(r >> 8) % 70000;
    }
}

static void roundtrip(const struct tframe *fr, unsigned nf, const struct bytes *b,
                      size_t (*next_piece)(void *), void *arg)
{
    struct pmap__decoder d;
    struct sink s;

    sink_init(&s, 1u << 20);
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    assert_true(pmap__decoder_idle(&d));
    feed(&d, b, next_piece, arg);
    assert_true(pmap__decoder_idle(&d));
    check_seen(&s, fr, nf, b);
    sink_free(&s);
}

static void test_roundtrip_whole_and_bytewise(void **state)
{
    struct tframe fr[16];
    struct bytes b = {0};
    unsigned nf = make_frames(fr, 16, 0);

    (void)state;
    encode_frames(&b, fr, nf);
    roundtrip(fr, nf, &b, piece_all, NULL);
    roundtrip(fr, nf, &b, piece_one, NULL);
    b_free(&b);
}

static void random_splits(int big, uint64_t seeds)
{
    struct tframe fr[16];
    struct bytes b = {0};
    unsigned nf = make_frames(fr, 16, big);
    uint64_t seed;

    encode_frames(&b, fr, nf);
    for (seed = 1; seed <= seeds; seed++) {
        uint64_t s = seed * 0x9e3779b97f4a7c15ull + (uint64_t)big;

        roundtrip(fr, nf, &b, piece_random, &s);
    }
    b_free(&b);
}

static void test_roundtrip_random_splits(void **state)
{
    (void)state;
    random_splits(0, 300);
    /* With payloads of ~300 KB, so pieces both cut them and span them. */
    random_splits(1, 30);
}

static size_t next_cut(size_t cut, size_t cut2, size_t len, size_t step)
{
    if (cut2 == len)
        return len + 1; /* done */
    if (step > 1 && cut2 == cut)
        return len;
    return cut2 + step;
}

/* Every frame on its own, cut once and twice at every position. */
static void test_roundtrip_every_cut(void **state)
{
    struct tframe fr[16];
    unsigned nf = make_frames(fr, 16, 0), k;

    (void)state;
    for (k = 0; k < nf; k++) {
        struct bytes b = {0};
        size_t cut, cut2, step;

        put_frame(&b, fr[k].kind, fr[k].seq, fr[k].aux, 0, fr[k].recs, fr[k].n, fr[k].off);
        /* Small frames: every pair of cuts; larger ones: every single cut
         * (and the second cut at the same place). */
        step = b.len > 400 ? b.len : 1;
        for (cut = 0; cut <= b.len; cut++) {
            for (cut2 = cut; cut2 <= b.len; cut2 = next_cut(cut, cut2, b.len, step)) {
                struct pmap__decoder d;
                struct sink s;

                sink_init(&s, 1u << 20);
                pmap__decoder_init(&d, &sink_ops, &s, s.max);
                assert_int_equal(pmap__decode(&d, b.p, cut), 0);
                assert_int_equal(pmap__decode(&d, b.p + cut, cut2 - cut), 0);
                assert_int_equal(s.nends, 0 + (cut2 == b.len));
                assert_int_equal(pmap__decode(&d, b.p + cut2, b.len - cut2), 0);
                assert_true(pmap__decoder_idle(&d));
                check_seen(&s, &fr[k], 1, &b);
                sink_free(&s);
            }
        }
        b_free(&b);
    }
}

/* The decoder is idle exactly between frames. */
static void test_idle_between_frames(void **state)
{
    struct trec r[2] = {{PMAP__R_OK, 0, 5}, {PMAP__R_OK, 0, 0}};
    struct bytes b = {0};
    struct pmap__decoder d;
    struct sink s;
    size_t i;

    (void)state;
    put_frame(&b, PMAP__K_TASKS, 0, 0, 0, r, 2, NULL);
    sink_init(&s, 100);
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    for (i = 0; i < b.len; i++) {
        assert_int_equal(pmap__decoder_idle(&d), i == 0);
        assert_int_equal(pmap__decode(&d, b.p + i, 1), 0);
    }
    assert_true(pmap__decoder_idle(&d));
    assert_int_equal(s.nends, 1);
    /* Empty input changes nothing. */
    assert_int_equal(pmap__decode(&d, b.p, 0), 0);
    assert_true(pmap__decoder_idle(&d));
    sink_free(&s);
    b_free(&b);
}

/* ------------------------------------------------------------------------ */
/* The direct (in-place) payload path                                       */
/* ------------------------------------------------------------------------ */

static void direct_run(const struct tframe *fr, unsigned nf, const struct bytes *b, uint64_t seed)
{
    struct pmap__decoder d;
    struct sink s;
    size_t off = 0;
    unsigned direct_calls = 0;
    uint64_t rs = seed;

    sink_init(&s, 1u << 20);
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    while (off < b->len) {
        uint64_t want = 0;
        unsigned char *dst = pmap__decoder_direct(&d, &want);
        size_t n = piece_random(&rs);

        if (n == 0)
            n = 1;
        if (n > b->len - off)
            n = b->len - off;
        if (dst != NULL && (rng_next(&rs) & 3) != 0) {
            const struct seen_rec *cur = &s.recs[s.nrecs - 1];

            /* In place: inside the buffer record() handed out, at the
             * position the bytes so far have filled. */
            assert_true(want > 0 && want <= cur->len);
            assert_ptr_equal(dst, cur->data + (cur->len - want));
            if (n > want)
                n = (size_t)want;
            memcpy(dst, b->p + off, n);
            assert_int_equal(pmap__decode_direct(&d, n), 0);
            direct_calls++;
        } else {
            assert_int_equal(pmap__decode(&d, b->p + off, n), 0);
        }
        off += n;
    }
    assert_true(pmap__decoder_idle(&d));
    assert_true(direct_calls > 0);
    check_seen(&s, fr, nf, b);
    sink_free(&s);
}

static void test_direct_path(void **state)
{
    struct tframe fr[16];
    struct bytes b = {0};
    unsigned nf = make_frames(fr, 16, 1);
    uint64_t seed;

    (void)state;
    encode_frames(&b, fr, nf);
    for (seed = 1; seed <= 40; seed++)
        direct_run(fr, nf, &b, seed * 0x2545f4914f6cdd1dull);
    b_free(&b);
}

/* Outside a payload (and for a zero-length one) there is no direct target. */
static void test_direct_none_outside_payload(void **state)
{
    struct trec r[2] = {{PMAP__R_OK, 0, 0}, {PMAP__R_OK, 0, 3}};
    struct bytes b = {0};
    struct pmap__decoder d;
    struct sink s;
    uint64_t want = 12345;
    size_t hdr_and_rec0 = PMAP__HDR_SIZE + PMAP__REC_SIZE;

    (void)state;
    put_frame(&b, PMAP__K_TASKS, 0, 0, 0, r, 2, NULL);
    sink_init(&s, 100);
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    assert_null(pmap__decoder_direct(&d, &want));
    assert_int_equal(pmap__decode(&d, b.p, PMAP__HDR_SIZE + 5), 0);
    assert_null(pmap__decoder_direct(&d, &want)); /* inside a record header */
    assert_int_equal(pmap__decode(&d, b.p + PMAP__HDR_SIZE + 5, hdr_and_rec0 - PMAP__HDR_SIZE - 5),
                     0);
    /* Record 0 is empty: complete already, no payload to read. */
    assert_null(pmap__decoder_direct(&d, &want));
    assert_int_equal(pmap__decode(&d, b.p + hdr_and_rec0, PMAP__REC_SIZE + 1), 0);
    assert_non_null(pmap__decoder_direct(&d, &want));
    assert_int_equal(want, 2);
    assert_int_equal(pmap__decode(&d, b.p + hdr_and_rec0 + PMAP__REC_SIZE + 1, 2), 0);
    assert_null(pmap__decoder_direct(&d, &want)); /* now in the trailer */
    assert_int_equal(pmap__decode(&d, b.p + b.len - PMAP__TRL_SIZE, PMAP__TRL_SIZE), 0);
    assert_null(pmap__decoder_direct(&d, &want));
    assert_int_equal(s.nends, 1);
    assert_int_equal(s.nrecs, 2);
    assert_memory_equal(s.recs[1].data, b.p + hdr_and_rec0 + PMAP__REC_SIZE, 3);
    sink_free(&s);
    b_free(&b);
}

/* ------------------------------------------------------------------------ */
/* Malformed frames                                                         */
/* ------------------------------------------------------------------------ */

#define BAD_MAX 64u

static void put_rec(struct bytes *b, int code, uint64_t len)
{
    unsigned char r[PMAP__REC_XSIZE];

    b_put(b, r, pmap__rec_hdr(r, code, len));
}

/* A record header in the long form whatever the length (the encoder uses
 * it only for lengths that need it). */
static void put_xrec(struct bytes *b, int code, uint64_t len)
{
    unsigned char r[PMAP__REC_XSIZE];
    uint32_t esc = PMAP__REC_XLEN;

    memcpy(r, &esc, 4);
    memcpy(r + 4, &code, 4);
    memcpy(r + 8, &len, 8);
    b_put(b, r, sizeof r);
}

/* An arena record header whatever its fields. */
static void put_arec(struct bytes *b, int code, uint64_t len, uint64_t off)
{
    unsigned char r[PMAP__REC_ASIZE];
    uint32_t esc = PMAP__REC_XLEN;
    uint64_t flen = len | PMAP__REC_AFLAG;

    memcpy(r, &esc, 4);
    memcpy(r + 4, &code, 4);
    memcpy(r + 8, &flen, 8);
    memcpy(r + 16, &off, 8);
    b_put(b, r, sizeof r);
}

static void put_fill(struct bytes *b, size_t n, unsigned char c)
{
    while (n--)
        b_put(b, &c, 1);
}

static void put_trl_for(struct bytes *b, unsigned kind, uint32_t count, uint32_t seq,
                        uint64_t bytes, uint32_t aux)
{
    struct pmap__frame f;
    unsigned char t[PMAP__TRL_SIZE];

    f.kind = kind & 0xffu;
    f.flags = kind & 0xff00u;
    f.count = count;
    f.seq = seq;
    f.bytes = bytes;
    f.aux = aux;
    pmap__frame_trl(t, &f);
    b_put(b, t, sizeof t);
}

/* A frame header with consistent fields but built by the real encoder. */
/* `kind` may carry flags. */
static void put_hdr(struct bytes *b, unsigned kind, uint32_t count, uint32_t seq, uint64_t bytes)
{
    struct pmap__frame f;
    unsigned char h[PMAP__HDR_SIZE];

    f.kind = kind & 0xffu;
    f.flags = kind & 0xff00u;
    f.count = count;
    f.seq = seq;
    f.bytes = bytes;
    f.aux = 0;
    pmap__frame_hdr(h, &f);
    b_put(b, h, sizeof h);
}

/* A good frame of two records (lengths 10 and 20), optionally damaged by
 * flipping byte `flip` (>= 0) or inserting `ins` garbage bytes at `at`. */
static void good_frame(struct bytes *b)
{
    struct trec r[2] = {{PMAP__R_OK, 0, 10}, {PMAP__R_OK, 0, 20}};

    put_frame(b, PMAP__K_RESULTS, 3, 0, 9, r, 2, NULL);
}

enum bad_id {
    B_MAGIC,
    B_VERSION_NEXT,
    B_VERSION_OLD,
    B_VERSION0,
    B_CHECK_FIELD,
    B_CHECK_SEQ,
    B_CHECK_BYTES,
    B_KIND0,
    B_KIND5,
    B_COUNT_MAX,
    B_BYTES_SMALL,
    B_BYTES_LARGE,
    B_BYTES_HUGE,
    B_BYTES_NO_RECORDS,
    B_READY_COUNT,
    B_RETIRE_BYTES,
    B_REC_OVER_MAX,
    B_REC_HUGE,
    B_REC_OVERRUN,
    B_REC2_OVERRUN,
    B_BYTES_LEFT,
    B_XLEN_SMALL,
    B_XLEN_ZERO,
    B_XLEN_OVER_MAX,
    B_XLEN_TASKERR,
    B_TASKERR_WITH_LEN,
    B_ARENA_ZERO,
    B_ARENA_OVER_MAX,
    B_ARENA_HUGE,
    B_ARENA_BYTES_LEFT,
    B_ARENA_OVERRUN,
    B_UNI_NO_RECORDS,
    B_UNI_REMAINDER,
    B_UNI_OVER_MAX,
    B_UNI_READY,
    B_FLAG_UNKNOWN,
    B_FLAG_TASKS_UNKNOWN,
    B_UNI_SHORT,
    B_TRL_MAGIC,
    B_TRL_CHECK,
    B_TRL_OTHER_FRAME,
    B_GARBAGE_LAST,
    B_GARBAGE_FIRST,
    B_COUNT
};

static const char *const bad_names[B_COUNT] = {
    "bad magic",
    "next version",
    "previous version",
    "version 0",
    "bad header check field",
    "seq changed after the check",
    "bytes changed after the check",
    "kind 0",
    "kind 5",
    "count too large",
    "bytes too small for count",
    "bytes too large for count",
    "bytes UINT64_MAX",
    "bytes without records",
    "READY with a record",
    "RETIRE with bytes",
    "record len over max",
    "record len UINT64_MAX",
    "record overruns the frame",
    "second record overruns the frame",
    "bytes left after the last record",
    "long-form length that fits 32 bits",
    "long-form length 0",
    "long-form length over max",
    "task error with a long-form length",
    "status record with a positive status",
    "arena record of length 0",
    "arena record over max",
    "arena record of length 2^63 - 1",
    "bytes left after an arena record",
    "arena record overruns the frame",
    "uniform frame without records",
    "uniform bytes not a multiple of count",
    "uniform records over max",
    "uniform READY",
    "unknown frame flag",
    "unknown task frame flag",
    "uniform frame cut short by the next header",
    "bad trailer magic",
    "bad trailer check",
    "trailer of another frame",
    "garbage in the last payload",
    "garbage in the first payload",
};

static void make_bad(struct bytes *b, enum bad_id id)
{
    unsigned char h[PMAP__HDR_SIZE];
    size_t start = b->len;

    switch (id) {
    case B_MAGIC:
        good_frame(b);
        b->p[start] ^= 0x01;
        break;
    case B_VERSION_NEXT:
    case B_VERSION_OLD:
    case B_VERSION0:
        raw_hdr(h, T_MAGIC, PMAP__K_RESULTS,
                id == B_VERSION_NEXT  ? T_VERSION + 1
                : id == B_VERSION_OLD ? T_VERSION - 1
                                      : 0,
                1, 0, PMAP__REC_SIZE + 1, 0);
        b_put(b, h, sizeof h);
        put_rec(b, 0, 1);
        put_fill(b, 1, 'x');
        put_trl_for(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_SIZE + 1, 0);
        break;
    case B_CHECK_FIELD:
        good_frame(b);
        b->p[start + 28] ^= 0x80;
        break;
    case B_CHECK_SEQ:
        good_frame(b);
        b->p[start + 12] ^= 0x01;
        break;
    case B_CHECK_BYTES:
        good_frame(b);
        b->p[start + 16] ^= 0x10;
        break;
    case B_KIND0:
    case B_KIND5:
        raw_hdr(h, T_MAGIC, id == B_KIND0 ? 0 : 5, 1, 0, 0, 0, 0);
        b_put(b, h, sizeof h);
        put_trl_for(b, id == B_KIND0 ? 0 : 5, 0, 0, 0, 0);
        break;
    case B_COUNT_MAX:
        put_hdr(b, PMAP__K_RESULTS, PMAP__FRAME_MAX_COUNT + 1, 0,
                (uint64_t)(PMAP__FRAME_MAX_COUNT + 1) * PMAP__REC_SIZE);
        put_rec(b, 0, 0);
        break;
    case B_BYTES_SMALL:
        put_hdr(b, PMAP__K_RESULTS, 2, 0, 2 * PMAP__REC_SIZE - 1);
        put_rec(b, 0, 0);
        put_rec(b, 0, 0);
        break;
    case B_BYTES_LARGE:
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_SIZE + BAD_MAX + 1);
        put_rec(b, 0, BAD_MAX + 1);
        put_fill(b, BAD_MAX + 1, 'y');
        break;
    case B_BYTES_HUGE:
        put_hdr(b, PMAP__K_TASKS, 1, 0, UINT64_MAX);
        put_rec(b, 0, UINT64_MAX - PMAP__REC_SIZE);
        break;
    case B_BYTES_NO_RECORDS:
        put_hdr(b, PMAP__K_RESULTS, 0, 0, PMAP__REC_SIZE);
        put_rec(b, 0, 0);
        break;
    case B_READY_COUNT:
        put_hdr(b, PMAP__K_READY, 1, 0, PMAP__REC_SIZE);
        put_rec(b, 0, 0);
        put_trl_for(b, PMAP__K_READY, 1, 0, PMAP__REC_SIZE, 0);
        break;
    case B_RETIRE_BYTES:
        put_hdr(b, PMAP__K_RETIRE, 0, 0, 8);
        put_fill(b, 8, 0);
        break;
    case B_REC_OVER_MAX:
        /* The frame's total fits two records of max; the first claims more. */
        put_hdr(b, PMAP__K_RESULTS, 2, 0, 2 * PMAP__REC_SIZE + BAD_MAX + 10);
        put_rec(b, 0, BAD_MAX + 10);
        put_fill(b, BAD_MAX + 10, 'z');
        put_rec(b, 0, 0);
        break;
    case B_REC_HUGE:
        put_hdr(b, PMAP__K_RESULTS, 2, 0, 2 * PMAP__REC_SIZE + 10);
        put_rec(b, 0, UINT64_MAX);
        put_fill(b, 64, 'z');
        break;
    case B_REC_OVERRUN:
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_SIZE + 10);
        put_rec(b, 0, 30);
        put_fill(b, 30, 'o');
        break;
    case B_REC2_OVERRUN:
        put_hdr(b, PMAP__K_RESULTS, 2, 0, 2 * PMAP__REC_SIZE + 10);
        put_rec(b, 0, 10);
        put_fill(b, 10, 'o');
        put_rec(b, 0, 1);
        put_fill(b, 1, 'o');
        break;
    case B_BYTES_LEFT:
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_SIZE + 15);
        put_rec(b, 0, 10);
        put_fill(b, 15, 'l');
        break;
    case B_XLEN_SMALL:
    case B_XLEN_ZERO: {
        /* Well-formed but for the non-canonical length encoding. */
        uint64_t len = id == B_XLEN_SMALL ? 4 : 0;

        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE + len);
        put_xrec(b, 0, len);
        put_fill(b, (size_t)len, 'x');
        put_trl_for(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE + len, 0);
        break;
    }
    case B_XLEN_OVER_MAX:
    case B_XLEN_TASKERR: /* a long length, over the limit or with an error */
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE + 10);
        if (id == B_XLEN_TASKERR)
            put_xrec(b, 7, PMAP__REC_XLEN);
        else
            put_xrec(b, 0, (uint64_t)PMAP__REC_XLEN + 1);
        put_fill(b, 64, 'x');
        break;
    case B_TASKERR_WITH_LEN:
        /* The status record's status is a library status: negative. */
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE);
        put_xrec(b, 7, 0);
        put_trl_for(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE, 0);
        break;
    case B_ARENA_ZERO:
    case B_ARENA_OVER_MAX:
    case B_ARENA_HUGE:
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_ASIZE);
        put_arec(b, 0,
                 id == B_ARENA_ZERO       ? 0
                 : id == B_ARENA_OVER_MAX ? BAD_MAX + 1
                                          : ~PMAP__REC_AFLAG,
                 0);
        put_trl_for(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_ASIZE, 0);
        break;
    case B_ARENA_BYTES_LEFT:
        /* The record says its bytes are elsewhere; the frame counts 5 here. */
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_ASIZE + 5);
        put_arec(b, 0, 5, 64);
        put_fill(b, 5, 'a');
        put_trl_for(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_ASIZE + 5, 0);
        break;
    case B_ARENA_OVERRUN:
        /* The frame has room for a long record header, not an arena one. */
        put_hdr(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE);
        put_arec(b, 0, 5, 64);
        put_trl_for(b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE, 0);
        break;
    case B_UNI_NO_RECORDS:
        put_hdr(b, PMAP__K_RESULTS | PMAP__F_UNIFORM, 0, 0, 0);
        put_trl_for(b, PMAP__K_RESULTS | PMAP__F_UNIFORM, 0, 0, 0, 0);
        break;
    case B_UNI_REMAINDER:
        put_hdr(b, PMAP__K_TASKS | PMAP__F_UNIFORM, 3, 0, 10);
        put_fill(b, 10, 'u');
        put_trl_for(b, PMAP__K_TASKS | PMAP__F_UNIFORM, 3, 0, 10, 0);
        break;
    case B_UNI_OVER_MAX:
        put_hdr(b, PMAP__K_RESULTS | PMAP__F_UNIFORM, 2, 0, 2 * (BAD_MAX + 1));
        put_fill(b, 2 * (BAD_MAX + 1), 'u');
        put_trl_for(b, PMAP__K_RESULTS | PMAP__F_UNIFORM, 2, 0, 2 * (BAD_MAX + 1), 0);
        break;
    case B_UNI_READY:
        put_hdr(b, PMAP__K_READY | PMAP__F_UNIFORM, 0, 0, 0);
        put_trl_for(b, PMAP__K_READY | PMAP__F_UNIFORM, 0, 0, 0, 0);
        break;
    case B_FLAG_UNKNOWN: /* PMAP__F_EACH is for task frames only */
        put_hdr(b, PMAP__K_RESULTS | PMAP__F_EACH, 1, 0, PMAP__REC_SIZE);
        put_rec(b, 0, 0);
        put_trl_for(b, PMAP__K_RESULTS | PMAP__F_EACH, 1, 0, PMAP__REC_SIZE, 0);
        break;
    case B_FLAG_TASKS_UNKNOWN:
        put_hdr(b, PMAP__K_TASKS | 0x400u, 1, 0, PMAP__REC_SIZE);
        put_rec(b, 0, 0);
        put_trl_for(b, PMAP__K_TASKS | 0x400u, 1, 0, PMAP__REC_SIZE, 0);
        break;
    case B_UNI_SHORT: {
        /* Says 4 records of 10 bytes, holds 3: the next frame's header is
         * taken as the last record, and its trailer does not match. */
        struct trec r[3] = {{PMAP__R_OK, 0, 10}, {PMAP__R_OK, 0, 10}, {PMAP__R_OK, 0, 10}};

        put_hdr(b, PMAP__K_TASKS | PMAP__F_UNIFORM, 4, 0, 40);
        put_fill(b, 30, 'u');
        put_frame(b, PMAP__K_TASKS | PMAP__F_UNIFORM, 1, 0, 3, r, 3, NULL);
        break;
    }
    case B_TRL_MAGIC:
        good_frame(b);
        b->p[b->len - PMAP__TRL_SIZE] ^= 0x04;
        break;
    case B_TRL_CHECK:
        good_frame(b);
        b->p[b->len - 1] ^= 0x40;
        break;
    case B_TRL_OTHER_FRAME:
        good_frame(b);
        b->len -= PMAP__TRL_SIZE;
        put_trl_for(b, PMAP__K_RESULTS, 2, 4, 2 * PMAP__REC_SIZE + 30, 0);
        break;
    case B_GARBAGE_LAST:
    case B_GARBAGE_FIRST: {
        /* Three stray bytes (as a task's stray write would put there) in a
         * payload: everything after them is shifted. */
        struct bytes g = {0};
        size_t at = id == B_GARBAGE_LAST ? PMAP__HDR_SIZE + 2 * PMAP__REC_SIZE + 10 + 5
                                         : PMAP__HDR_SIZE + PMAP__REC_SIZE + 5;

        good_frame(&g);
        b_put(b, g.p, at);
        b_put(b, "\x01\x00\x00", 3);
        b_put(b, g.p + at, g.len - at);
        b_free(&g);
        break;
    }
    case B_COUNT:
        break;
    }
}

enum split { SP_WHOLE, SP_BYTES, SP_RANDOM };

/* Feed a good frame, then the bad one, then another good frame; the
 * decoder must fail with PMAP_EPROTO on the bad one and stay failed. */
static void bad_run(enum bad_id id, enum split sp, uint64_t seed)
{
    struct bytes b = {0};
    struct pmap__decoder d;
    struct sink s;
    size_t off = 0, good_len, bad_end;
    int rc = 0, saw_err = 0;
    unsigned late;
    uint64_t want;

    good_frame(&b);
    good_len = b.len;
    make_bad(&b, id);
    bad_end = b.len;
    good_frame(&b);

    sink_init(&s, BAD_MAX);
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    while (off < b.len) {
        size_t n = sp == SP_WHOLE ? b.len : sp == SP_BYTES ? 1 : piece_random(&seed);

        if (n > b.len - off)
            n = b.len - off;
        rc = pmap__decode(&d, b.p + off, n);
        if (rc != 0) {
            if (!saw_err && off + n <= good_len && sp != SP_WHOLE)
                fail_msg("%s: error inside the good frame", bad_names[id]);
            if (!saw_err && off >= bad_end)
                fail_msg("%s: error only in the frame after it", bad_names[id]);
            saw_err = 1;
            s.failed = 1;
            assert_int_equal(rc, PMAP_EPROTO);
        } else if (saw_err) {
            fail_msg("%s: error not sticky", bad_names[id]);
        }
        off += n;
    }
    if (!saw_err)
        fail_msg("%s: accepted (split %d)", bad_names[id], (int)sp);
    assert_int_equal(rc, PMAP_EPROTO);
    assert_false(s.over_max);
    /* The good frame before it came through whole, the bad one did not. */
    assert_int_equal(s.nends, 1);
    assert_true(s.nrecs >= 2);
    assert_int_equal(s.recs[0].len, 10);
    assert_int_equal(s.recs[1].len, 20);
    /* Sticky: more input, even a good frame or nothing, changes nothing. */
    late = s.calls_late;
    assert_int_equal(late, 0);
    assert_int_equal(pmap__decode(&d, b.p, good_len), PMAP_EPROTO);
    assert_int_equal(pmap__decode(&d, b.p, 0), PMAP_EPROTO);
    assert_null(pmap__decoder_direct(&d, &want));
    assert_false(pmap__decoder_idle(&d));
    assert_int_equal(s.calls_late, 0);
    assert_int_equal(s.nends, 1);
    sink_free(&s);
    b_free(&b);
}

static void test_bad_frames(void **state)
{
    int id;
    uint64_t seed;

    (void)state;
    for (id = 0; id < B_COUNT; id++) {
        bad_run((enum bad_id)id, SP_WHOLE, 0);
        bad_run((enum bad_id)id, SP_BYTES, 0);
        for (seed = 1; seed <= 20; seed++)
            bad_run((enum bad_id)id, SP_RANDOM, seed * 0x9e3779b97f4a7c15ull + (uint64_t)id);
    }
}

/* Through the direct path a bad trailer is still caught. */
static void test_bad_trailer_after_direct(void **state)
{
    struct bytes b = {0};
    struct pmap__decoder d;
    struct sink s;
    uint64_t want;
    unsigned char *dst;
    size_t payload = PMAP__HDR_SIZE + PMAP__REC_SIZE;

    (void)state;
    {
        struct trec r[1] = {{PMAP__R_OK, 0, 40}};

        put_frame(&b, PMAP__K_RESULTS, 0, 0, 0, r, 1, NULL);
    }
    b.p[b.len - 3] ^= 0xff;
    sink_init(&s, BAD_MAX);
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    assert_int_equal(pmap__decode(&d, b.p, payload), 0);
    dst = pmap__decoder_direct(&d, &want);
    assert_non_null(dst);
    assert_int_equal(want, 40);
    memcpy(dst, b.p + payload, 40);
    assert_int_equal(pmap__decode_direct(&d, 40), 0);
    assert_int_equal(pmap__decode(&d, b.p + payload + 40, PMAP__TRL_SIZE), PMAP_EPROTO);
    assert_int_equal(s.nends, 0);
    assert_int_equal(pmap__decode(&d, b.p, 1), PMAP_EPROTO);
    sink_free(&s);
    b_free(&b);
}

/* A decoder whose limit is the maximum possible still rejects a frame
 * whose record overruns it (no overflow in the bound). */
static void test_unbounded_limit(void **state)
{
    struct bytes b = {0};
    struct pmap__decoder d;
    struct sink s;

    (void)state;
    put_hdr(&b, PMAP__K_RESULTS, 1, 0, PMAP__REC_SIZE + 10);
    put_rec(&b, 0, UINT64_MAX);
    sink_init(&s, UINT64_MAX);
    pmap__decoder_init(&d, &sink_ops, &s, UINT64_MAX);
    assert_int_equal(pmap__decode(&d, b.p, b.len), PMAP_EPROTO);
    assert_int_equal(s.nrecs, 0);
    sink_free(&s);
    b_free(&b);
}

/* Records of 4 GiB or more carry the long header. Nothing that large is
 * allocated here: the test sink hands out one byte and only the headers
 * are fed, after which the decoder must want the whole payload. */
static uint64_t long_seen = 1;
static unsigned char long_byte;

static int l_frame(void *ud, const struct pmap__frame *f)
{
    (void)ud;
    (void)f;
    return 0;
}

static unsigned char *l_record(void *ud, unsigned status, int code, uint64_t len)
{
    (void)ud;
    assert_int_equal(status, PMAP__R_OK);
    assert_int_equal(code, 0);
    long_seen = len;
    return &long_byte;
}

static const struct pmap__decoder_ops long_ops = {l_frame, l_record, NULL, l_frame, NULL};

/* A task error carries its message; a status record carries a library
 * status and nothing else; both decode in any split. */
static void test_error_payload_and_status_record(void **state)
{
    struct bytes b = {0};
    unsigned char r[PMAP__REC_XSIZE];
    const uint64_t bytes = 3 * PMAP__REC_SIZE + 5 + PMAP__REC_XSIZE + 3;
    size_t cut;

    (void)state;
    put_hdr(&b, PMAP__K_RESULTS, 4, 0, bytes);
    put_rec(&b, 3, 5);
    put_fill(&b, 5, 'm');
    b_put(&b, r, pmap__rec_status(r, PMAP_ETOOBIG));
    put_rec(&b, -2, 0);
    put_rec(&b, 0, 3);
    put_fill(&b, 3, 'k');
    put_trl_for(&b, PMAP__K_RESULTS, 4, 0, bytes, 0);
    for (cut = 0; cut <= b.len; cut++) {
        struct sink s;
        struct pmap__decoder d;

        sink_init(&s, 64);
        pmap__decoder_init(&d, &sink_ops, &s, 64);
        assert_int_equal(pmap__decode(&d, b.p, cut), 0);
        assert_int_equal(pmap__decode(&d, b.p + cut, b.len - cut), 0);
        assert_int_equal(s.nrecs, 4);
        assert_int_equal(s.recs[0].status, PMAP__R_TASKERR);
        assert_int_equal(s.recs[0].code, 3);
        assert_int_equal(s.recs[0].len, 5);
        assert_memory_equal(s.recs[0].data, "mmmmm", 5);
        assert_int_equal(s.recs[1].status, PMAP__R_STATUS);
        assert_int_equal(s.recs[1].code, PMAP_ETOOBIG);
        assert_int_equal(s.recs[1].len, 0);
        assert_int_equal(s.recs[2].status, PMAP__R_TASKERR);
        assert_int_equal(s.recs[2].code, -2);
        assert_int_equal(s.recs[2].len, 0);
        assert_int_equal(s.recs[3].status, PMAP__R_OK);
        assert_int_equal(s.recs[3].len, 3);
        assert_int_equal(s.nends, 1);
        sink_free(&s);
    }
    b_free(&b);
}

static void test_long_record_header(void **state)
{
    static const uint64_t lens[] = {PMAP__REC_XLEN, (uint64_t)PMAP__REC_XLEN + 1,
                                    (uint64_t)5 << 30};
    unsigned char r[PMAP__REC_XSIZE];
    size_t i, cut;

    (void)state;
    /* The short form up to the escape value, the long one from it on. */
    assert_int_equal(pmap__rec_hdr_size(PMAP__REC_XLEN - 1), PMAP__REC_SIZE);
    assert_int_equal(pmap__rec_hdr(r, 0, PMAP__REC_XLEN - 1), PMAP__REC_SIZE);
    for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        struct bytes b = {0}, x = {0};

        assert_int_equal(pmap__rec_hdr_size(lens[i]), PMAP__REC_XSIZE);
        put_hdr(&b, PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE + lens[i]);
        put_rec(&b, 0, lens[i]);
        put_xrec(&x, 0, lens[i]);
        assert_int_equal(b.len, PMAP__HDR_SIZE + PMAP__REC_XSIZE);
        assert_memory_equal(b.p + PMAP__HDR_SIZE, x.p, PMAP__REC_XSIZE);
        for (cut = 0; cut <= b.len; cut++) {
            struct pmap__decoder d;
            uint64_t want = 0;

            long_seen = 1;
            pmap__decoder_init(&d, &long_ops, NULL, lens[i]);
            assert_int_equal(pmap__decode(&d, b.p, cut), 0);
            assert_int_equal(pmap__decode(&d, b.p + cut, b.len - cut), 0);
            assert_int_equal(long_seen, lens[i]);
            assert_ptr_equal(pmap__decoder_direct(&d, &want), &long_byte);
            assert_int_equal(want, lens[i]);
        }
        /* One byte under the limit: refused before the record starts. */
        {
            struct pmap__decoder d;

            long_seen = 1;
            pmap__decoder_init(&d, &long_ops, NULL, lens[i] - 1);
            assert_int_equal(pmap__decode(&d, b.p, b.len), PMAP_EPROTO);
            assert_int_equal(long_seen, 1);
        }
        b_free(&b);
        b_free(&x);
    }
}

/* ------------------------------------------------------------------------ */
/* Errors from the callbacks                                                */
/* ------------------------------------------------------------------------ */

/* A frame mixing bytes in the stream with arena records (a success and a
 * task error): the encoder's form is the test's, and the decoder reports
 * each arena record once, with its fields, whatever the split. */
static void arena_frame(struct bytes *b)
{
    unsigned char r[PMAP__REC_ASIZE];
    uint64_t bytes = 2 * PMAP__REC_SIZE + 10 + 3 + 2 * PMAP__REC_ASIZE;

    put_hdr(b, PMAP__K_RESULTS, 4, 5, bytes);
    put_rec(b, 0, 10);
    put_fill(b, 10, 'p');
    assert_int_equal(pmap__rec_arena(r, 0, 1000, 4096), PMAP__REC_ASIZE);
    b_put(b, r, sizeof r);
    assert_int_equal(pmap__rec_arena(r, 7, BAD_MAX, 64), PMAP__REC_ASIZE);
    b_put(b, r, sizeof r);
    put_rec(b, 0, 3);
    put_fill(b, 3, 'q');
    put_trl_for(b, PMAP__K_RESULTS, 4, 5, bytes, 0);
}

static void test_arena_records(void **state)
{
    struct bytes b = {0}, a = {0};
    int sp;

    (void)state;
    arena_frame(&b);
    put_arec(&a, 0, 1, 0); /* the encoder writes what the test's copy does */
    {
        unsigned char r[PMAP__REC_ASIZE];

        pmap__rec_arena(r, 0, 1, 0);
        assert_memory_equal(r, a.p, PMAP__REC_ASIZE);
    }
    for (sp = 0; sp < 2; sp++) {
        struct pmap__decoder d;
        struct sink s;
        size_t off;

        sink_init(&s, 1000);
        pmap__decoder_init(&d, &sink_ops, &s, 1000);
        if (sp == 0)
            assert_int_equal(pmap__decode(&d, b.p, b.len), 0);
        for (off = 0; sp == 1 && off < b.len; off++)
            assert_int_equal(pmap__decode(&d, b.p + off, 1), 0);
        assert_true(pmap__decoder_idle(&d));
        assert_int_equal(s.nends, 1);
        assert_int_equal(s.nrecs, 4);
        assert_false(s.over_max);
        assert_false(s.recs[0].arena);
        assert_int_equal(s.recs[0].len, 10);
        assert_true(s.recs[1].arena);
        assert_int_equal(s.recs[1].status, PMAP__R_OK);
        assert_int_equal(s.recs[1].len, 1000);
        assert_int_equal(s.recs[1].off, 4096);
        assert_true(s.recs[2].arena);
        assert_int_equal(s.recs[2].status, PMAP__R_TASKERR);
        assert_int_equal(s.recs[2].code, 7);
        assert_int_equal(s.recs[2].len, BAD_MAX);
        assert_int_equal(s.recs[2].off, 64);
        assert_false(s.recs[3].arena);
        assert_int_equal(s.recs[3].len, 3);
        assert_memory_equal(s.recs[3].data, "qqq", 3);
        sink_free(&s);
    }
    /* A receiver without an arena refuses the record, and the
     * receiver's own verdict on a record (an offset outside its view of
     * the arena) stops the decoder. */
    {
        struct pmap__decoder d;
        struct sink s;

        sink_init(&s, 1u << 20);
        pmap__decoder_init(&d, &plain_ops, &s, 1000);
        assert_int_equal(pmap__decode(&d, b.p, b.len), PMAP_EPROTO);
        assert_int_equal(s.nends, 0);
        assert_int_equal(s.nrecs, 1);
        sink_free(&s);
        sink_init(&s, 1u << 20);
        s.arena_rc = PMAP_EPROTO;
        pmap__decoder_init(&d, &sink_ops, &s, 1000);
        assert_int_equal(pmap__decode(&d, b.p, b.len), PMAP_EPROTO);
        s.failed = 1;
        assert_int_equal(pmap__decode(&d, b.p, b.len), PMAP_EPROTO);
        assert_int_equal(s.nends, 0);
        assert_int_equal(s.nrecs, 2);
        assert_int_equal(s.calls_late, 0);
        sink_free(&s);
    }
    b_free(&b);
    b_free(&a);
}

enum inject { I_FRAME, I_RECORD_NULL, I_RECORD_END, I_FRAME_END };

static void inject_run(enum inject what, int expect)
{
    struct bytes b = {0};
    struct pmap__decoder d;
    struct sink s;

    good_frame(&b);
    sink_init(&s, BAD_MAX);
    if (what == I_FRAME)
        s.frame_rc = -42;
    else if (what == I_RECORD_NULL)
        s.record_null = 1;
    else if (what == I_RECORD_END)
        s.record_end_rc = -43;
    else
        s.frame_end_rc = -44;
    pmap__decoder_init(&d, &sink_ops, &s, s.max);
    assert_int_equal(pmap__decode(&d, b.p, b.len), expect);
    s.failed = 1;
    /* Sticky, and no more callbacks. */
    assert_int_equal(pmap__decode(&d, b.p, b.len), expect);
    assert_int_equal(s.calls_late, 0);
    sink_free(&s);
    b_free(&b);
}

static void test_callback_errors(void **state)
{
    (void)state;
    inject_run(I_FRAME, -42);
    inject_run(I_RECORD_NULL, PMAP_ENOMEM);
    inject_run(I_RECORD_END, -43);
    inject_run(I_FRAME_END, -44);
}

/* K_USE: a task and its ctx in a frame of no records, both ways exact;
 * with records, or with a NULL task, it is malformed. */
static int use_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    (void)ctx;
    (void)param;
    (void)len;
    (void)out;
    return 0;
}

static void test_use_frame(void **state)
{
    static int target;
    void *const ctxs[] = {NULL, &target, (void *)(uintptr_t)0xfedcba9876543210u};
    unsigned char h[PMAP__HDR_SIZE], t[PMAP__TRL_SIZE];
    struct pmap__decoder d;
    struct pmap__frame f;
    struct sink s;
    struct bytes b = {0};
    pmap_task_fn fn;
    void *ctx;
    size_t k;

    (void)state;
    for (k = 0; k < sizeof ctxs / sizeof ctxs[0]; k++) {
        if (sizeof(void *) < 8 && k == 2)
            continue;
        pmap__frame_use(&f, use_task, ctxs[k]);
        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        b.len = 0;
        b_put(&b, h, sizeof h);
        b_put(&b, t, sizeof t);
        sink_init(&s, 64);
        pmap__decoder_init(&d, &sink_ops, &s, 64);
        assert_int_equal(pmap__decode(&d, b.p, b.len), 0);
        assert_int_equal(s.nframes, 1);
        assert_int_equal(s.nends, 1);
        assert_int_equal(s.nrecs, 0);
        assert_int_equal(s.frames[0].kind, PMAP__K_USE);
        assert_true(pmap__decoder_idle(&d));
        assert_int_equal(pmap__frame_use_read(&s.frames[0], &fn, &ctx), 0);
        assert_true(fn == use_task);
        assert_ptr_equal(ctx, ctxs[k]);
        sink_free(&s);
    }
    /* With a record: malformed. */
    b.len = 0;
    put_hdr(&b, PMAP__K_USE, 1, 0, PMAP__REC_SIZE);
    put_rec(&b, 0, 0);
    put_trl_for(&b, PMAP__K_USE, 1, 0, PMAP__REC_SIZE, 0);
    sink_init(&s, 64);
    pmap__decoder_init(&d, &sink_ops, &s, 64);
    assert_int_equal(pmap__decode(&d, b.p, b.len), PMAP_EPROTO);
    assert_int_equal(s.nframes, 0);
    sink_free(&s);
    /* A NULL task is refused by the reader. */
    pmap__frame_use(&f, NULL, NULL);
    assert_int_equal(pmap__frame_use_read(&f, &fn, &ctx), PMAP_EPROTO);
    b_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoder_matches_copy),
        cmocka_unit_test(test_roundtrip_whole_and_bytewise),
        cmocka_unit_test(test_roundtrip_random_splits),
        cmocka_unit_test(test_roundtrip_every_cut),
        cmocka_unit_test(test_idle_between_frames),
        cmocka_unit_test(test_direct_path),
        cmocka_unit_test(test_direct_none_outside_payload),
        cmocka_unit_test(test_bad_frames),
        cmocka_unit_test(test_bad_trailer_after_direct),
        cmocka_unit_test(test_unbounded_limit),
        cmocka_unit_test(test_long_record_header),
        cmocka_unit_test(test_error_payload_and_status_record),
        cmocka_unit_test(test_callback_errors),
        cmocka_unit_test(test_arena_records),
        cmocka_unit_test(test_use_frame),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
