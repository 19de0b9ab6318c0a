/*
 * The iterator on its own, driven by a fake in-process backend: no fork,
 * no pipe, no clock. The fake runs the task itself, on records it picks
 * with a seeded generator, so every completion order, loss and failure
 * is reproducible. That the iterator works here with nothing but the ops
 * of backend.h is the proof that the seam is real.
 */
#define _POSIX_C_SOURCE 200809L

#include "api.h"
#include "backend.h"
#include "buf.h"
#include "iter.h"

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* The fake backend                                                         */
/* ------------------------------------------------------------------------ */

#define FAKE_MAX_PLACES 8
#define FAKE_MAX_INFLIGHT 65536

/* What the test scripts, and what the fake saw. */
struct fake_script {
    int places;
    uint64_t seed;
    unsigned per_pump;   /* most records finished per pump (0: all in flight) */
    unsigned lose_every; /* every n-th finish is a loss instead (retry), 0: never */
    unsigned fail_after; /* pump number that returns fatal_status (0: never) */
    int fatal_status;
    int use_done_many; /* report a pump's finishes through done_many */
    uint32_t room;     /* room() per place; 0: unlimited */
    unsigned auto_window; /* what fake_wide_ops' auto_window() asks for */
    int hold_first;       /* record 0 finishes only once it is alone in flight */
    /* Seen. */
    unsigned pumps, cancels, begins, creates, destroys;
    uint64_t submitted, batches, max_batch, reported, retried;
    uint32_t max_inflight;
    int created_ok;
};

struct fake {
    struct fake_script *s;
    pmap_task_fn fn;
    void *ctx;
    int nplaces;
    /* Records in flight per place, in submission order. */
    struct pmap__rec *q[FAKE_MAX_PLACES][FAKE_MAX_INFLIGHT];
    uint32_t n[FAKE_MAX_PLACES];
    uint64_t rng;
    unsigned finishes;
};

static uint64_t rnd(struct fake *f)
{
    /* xorshift64*: only reproducibility matters here. */
    f->rng ^= f->rng >> 12;
    f->rng ^= f->rng << 25;
    f->rng ^= f->rng >> 27;
    return f->rng * 2685821657736338717ull;
}

static int fake_create(const struct pmap__backend_cfg *cfg, void **be)
{
    struct fake_script *s = cfg->arg;
    struct fake *f = calloc(1, sizeof *f);

    if (f == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    f->s = s;
    f->fn = cfg->fn;
    f->ctx = cfg->ctx;
    f->nplaces = s->places;
    f->rng = s->seed ? s->seed : 1;
    s->creates++;
    *be = f;
    return 0;
}

static void fake_destroy(void *be)
{
    struct fake *f = be;

    f->s->destroys++;
    free(f);
}

static int fake_nworkers(void *be)
{
    return ((struct fake *)be)->nplaces;
}

static uint32_t fake_room(void *be, int w)
{
    struct fake *f = be;

    (void)w;
    return f->s->room ? f->s->room : UINT32_MAX;
}

static uint32_t fake_inflight(void *be, int w)
{
    return ((struct fake *)be)->n[w];
}

static int fake_submit(void *be, int w, struct pmap__rec **recs, uint32_t n)
{
    struct fake *f = be;
    uint32_t i;

    if (f->n[w] + n > FAKE_MAX_INFLIGHT)
        return PMAP_ENOMEM;
    for (i = 0; i < n; i++)
        f->q[w][f->n[w]++] = recs[i];
    f->s->submitted += n;
    f->s->batches++;
    if (n > f->s->max_batch)
        f->s->max_batch = n;
    if (f->n[w] > f->s->max_inflight)
        f->s->max_inflight = f->n[w];
    return 0;
}

/* Run the task on r, as a worker would. */
static void fake_run(struct fake *f, struct pmap__rec *r)
{
    int rc;

    r->result.len = 0;
    rc = f->fn(f->ctx, r->param.data, r->param.len, &r->result);
    r->status = rc == 0 ? PMAP_OK : PMAP_ETASK;
    r->code = rc;
}

static int fake_pump(void *be, int timeout_ms, const struct pmap__sink *sink)
{
    struct fake *f = be;
    struct pmap__rec *fin[256];
    uint32_t nfin = 0, total = 0;
    unsigned budget;
    int w;

    (void)timeout_ms;
    f->s->pumps++;
    if (f->s->fail_after && f->s->pumps >= f->s->fail_after)
        return f->s->fatal_status;
    for (w = 0; w < f->nplaces; w++)
        total += f->n[w];
    budget = f->s->per_pump ? f->s->per_pump : total;
    /* A blocking pump with something in flight returns with progress, as
     * a real backend would once a result is in. */
    while (budget-- > 0 && total > 0) {
        uint64_t pick = rnd(f) % total;
        struct pmap__rec *r;

        for (w = 0; pick >= f->n[w]; w++)
            pick -= f->n[w];
        if (f->s->hold_first && f->q[w][pick]->index == 0 && total > 1) {
            /* Any other: the next one, on this place or the next. */
            if (++pick == f->n[w]) {
                pick = 0;
                do
                    w = (w + 1) % f->nplaces;
                while (f->n[w] == 0);
            }
        }
        /* Any record of any place may finish first: the worst case for
         * the reorder buffer. */
        r = f->q[w][pick];
        memmove(&f->q[w][pick], &f->q[w][pick + 1], (f->n[w] - pick - 1) * sizeof r);
        f->n[w]--;
        total--;
        f->finishes++;
        if (f->s->lose_every && f->finishes % f->s->lose_every == 0) {
            f->s->retried++;
            sink->retry(sink->it, r);
            continue;
        }
        fake_run(f, r);
        f->s->reported++;
        if (f->s->use_done_many && sink->done_many != NULL) {
            fin[nfin++] = r;
            if (nfin == sizeof fin / sizeof fin[0]) {
                sink->done_many(sink->it, fin, nfin);
                nfin = 0;
            }
        } else {
            sink->done(sink->it, r);
        }
    }
    if (nfin > 0)
        sink->done_many(sink->it, fin, nfin);
    if (sink->timing != NULL)
        sink->timing(sink->it, 1, 1);
    return 0;
}

static void fake_cancel(void *be)
{
    struct fake *f = be;
    int w;

    f->s->cancels++;
    for (w = 0; w < f->nplaces; w++)
        f->n[w] = 0;
}

static void fake_begin(void *be)
{
    ((struct fake *)be)->s->begins++;
}

static const struct pmap__backend_ops fake_ops = {
    fake_create, fake_destroy, fake_destroy, fake_nworkers, fake_room, fake_inflight,
    fake_submit, fake_pump,    fake_cancel,  fake_begin,    NULL,      NULL,
    NULL, /* set_task: no task per map (pmap_imap_task is refused) */
    NULL, /* auto_window: the iterator's own */
    NULL, NULL, /* no shared blocks */
};

/* A backend that asks for a wider automatic window (as the MPI root does). */
static unsigned fake_auto_window(void *be)
{
    return ((struct fake *)be)->s->auto_window;
}

static const struct pmap__backend_ops fake_wide_ops = {
    fake_create, fake_destroy, fake_destroy, fake_nworkers, fake_room, fake_inflight,
    fake_submit, fake_pump,    fake_cancel,  fake_begin,    NULL,      NULL,
    NULL,        fake_auto_window,
    NULL,        NULL, /* no shared blocks */
};

/* ------------------------------------------------------------------------ */
/* Records, generator, task                                                 */
/* ------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Parameter: the index; result: mix64(index), or a task error for every
 * index that is a multiple of `fail_every` (code = index % 1000 + 1). */
struct task_ctx {
    uint64_t fail_every;
};

static int task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const struct task_ctx *c = ctx;
    uint64_t v;

    if (len != sizeof v)
        return 9999;
    memcpy(&v, param, sizeof v);
    if (c != NULL && c->fail_every && v % c->fail_every == 0)
        return (int)(v % 1000u) + 1;
    v = mix64(v);
    return pmap_buf_set(out, &v, sizeof v);
}

struct gen {
    uint64_t next, n;
    uint64_t consumed; /* items the consumer has taken */
    uint64_t max_lead; /* most records generated ahead of the consumer */
    int fail_at;       /* return -1 when next reaches it (-1: never) */
};

static int gen(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    uint64_t lead;

    if (g->fail_at >= 0 && g->next == (uint64_t)g->fail_at)
        return -1;
    if (g->next >= g->n)
        return 0;
    lead = g->next + 1 - g->consumed;
    if (lead > g->max_lead)
        g->max_lead = lead;
    if (pmap_buf_set(param, &g->next, sizeof g->next) != PMAP_OK)
        return -1;
    g->next++;
    return 1;
}

static pmap_pool *fake_pool(struct fake_script *s, struct task_ctx *tc, unsigned window,
                            unsigned chunk)
{
    pmap_options opt;
    pmap_pool *pool;

    pmap_options_init(&opt);
    opt.window = window;
    opt.chunk = chunk;
    pool = pmap__pool_new(&fake_ops, task, tc, &opt, sizeof opt, s);
    assert_non_null(pool);
    assert_int_equal(s->creates, 1);
    return pool;
}

/* Run a map over n records and check every item against the serial
 * reference: in order, or (unordered) each index exactly once. Returns
 * what pmap_next ended with. */
static int run_map(pmap_pool *pool, int ordered, struct gen *g, const struct task_ctx *tc)
{
    pmap_iter *it = ordered ? pmap_imap(pool, gen, g) : pmap_imap_unordered(pool, gen, g);
    unsigned char *seen = calloc(g->n + 1, 1);
    pmap_item item;
    int rc;

    assert_non_null(it);
    assert_non_null(seen);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t v;

        if (ordered)
            assert_int_equal(item.index, g->consumed);
        assert_true(item.index < g->n);
        assert_false(seen[item.index]);
        seen[item.index] = 1;
        if (tc->fail_every && item.index % tc->fail_every == 0) {
            assert_int_equal(item.status, PMAP_ETASK);
            assert_int_equal(item.code, (int)(item.index % 1000u) + 1);
            assert_int_equal(item.len, 0);
        } else {
            assert_int_equal(item.status, PMAP_OK);
            assert_int_equal(item.code, 0);
            assert_int_equal(item.len, sizeof v);
            memcpy(&v, item.data, sizeof v);
            assert_true(v == mix64(item.index));
        }
        g->consumed++;
    }
    free(seen);
    assert_int_equal(pmap_iter_free(it), rc == PMAP_DONE ? PMAP_OK : rc);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* Any completion order, either order mode, several window sizes and batch
 * sizes: the stream is the serial one. */
static void test_any_completion_order(void **state)
{
    static const unsigned windows[] = {1, 2, 3, 7, 64, 0};
    static const unsigned chunks[] = {1, 3, 0};
    size_t wi, ci;
    int ordered;

    (void)state;
    for (wi = 0; wi < sizeof windows / sizeof windows[0]; wi++)
        for (ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++)
            for (ordered = 0; ordered <= 1; ordered++) {
                struct fake_script s = {0};
                struct task_ctx tc = {13};
                struct gen g = {0, 5000, 0, 0, -1};
                pmap_pool *pool;

                s.places = 3;
                s.seed = 1000 + wi * 10 + ci * 2 + (uint64_t)ordered;
                s.per_pump = 5;
                pool = fake_pool(&s, &tc, windows[wi], chunks[ci]);
                assert_int_equal(run_map(pool, ordered, &g, &tc), PMAP_DONE);
                assert_int_equal(g.consumed, g.n);
                assert_int_equal(s.reported, g.n);
                assert_int_equal(s.submitted, g.n);
                if (windows[wi] != 0)
                    assert_true(g.max_lead <= windows[wi]);
                assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
                assert_int_equal(s.destroys, 1);
            }
}

/* The generator never runs more than `window` records ahead of the
 * consumer, and is called lazily: a map that is dropped early has
 * generated at most a window's worth. */
static void test_window_bound(void **state)
{
    struct fake_script s = {0};
    struct task_ctx tc = {0};
    struct gen g = {0, 100000, 0, 0, -1};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int i;

    (void)state;
    s.places = 4;
    s.per_pump = 1000;
    pool = fake_pool(&s, &tc, 64, 0);
    assert_int_equal(run_map(pool, 1, &g, &tc), PMAP_DONE);
    assert_true(g.max_lead <= 64);
    assert_true(g.max_lead >= 32); /* and the window is used */
    assert_true(s.max_inflight <= 64);

    memset(&g, 0, sizeof g);
    g.n = 100000;
    g.fail_at = -1;
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    for (i = 0; i < 10; i++) {
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        g.consumed++;
    }
    assert_true(g.next <= 10 + 64);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
}

/* Records the backend hands back for a re-run come out once, in place. */
static void test_retry_of_lost_records(void **state)
{
    int ordered;

    (void)state;
    for (ordered = 0; ordered <= 1; ordered++) {
        struct fake_script s = {0};
        struct task_ctx tc = {0};
        struct gen g = {0, 20000, 0, 0, -1};
        pmap_pool *pool;

        s.places = 2;
        s.seed = 77 + (uint64_t)ordered;
        s.per_pump = 7;
        s.lose_every = 3; /* a third of all attempts are lost */
        pool = fake_pool(&s, &tc, 256, 4);
        assert_int_equal(run_map(pool, ordered, &g, &tc), PMAP_DONE);
        assert_int_equal(g.consumed, g.n);
        assert_true(s.retried > g.n / 4);
        /* Every record ran once more for each loss, and no more. */
        assert_int_equal(s.submitted, g.n + s.retried);
        assert_int_equal(s.reported, g.n);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
}

/* A frame's worth of results through done_many, in either order. */
static void test_done_many(void **state)
{
    int ordered;

    (void)state;
    for (ordered = 0; ordered <= 1; ordered++) {
        struct fake_script s = {0};
        struct task_ctx tc = {101};
        struct gen g = {0, 30000, 0, 0, -1};
        pmap_pool *pool;

        s.places = 2;
        s.seed = 5;
        s.per_pump = 500;
        s.use_done_many = 1;
        pool = fake_pool(&s, &tc, 0, 0);
        assert_int_equal(run_map(pool, ordered, &g, &tc), PMAP_DONE);
        assert_int_equal(g.consumed, g.n);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
}

/* Freeing the iterator in the middle of batches cancels what is in flight
 * (the backend is told once), and the next map on the pool is whole. */
static void test_cancel_mid_batch(void **state)
{
    struct fake_script s = {0};
    struct task_ctx tc = {0};
    struct gen g = {0, 10000, 0, 0, -1};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    int i;

    (void)state;
    s.places = 2;
    s.seed = 9;
    s.per_pump = 3;
    pool = fake_pool(&s, &tc, 100, 8);
    it = pmap_imap_unordered(pool, gen, &g);
    assert_non_null(it);
    for (i = 0; i < 25; i++)
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
    assert_true(s.submitted > s.reported); /* batches are in flight */
    assert_int_equal(s.cancels, 0);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(s.cancels, 1);
    /* The pool is free again and the next map runs whole. */
    assert_int_equal(s.begins, 1);
    memset(&g, 0, sizeof g);
    g.n = 1000;
    g.fail_at = -1;
    assert_int_equal(run_map(pool, 1, &g, &tc), PMAP_DONE);
    assert_int_equal(g.consumed, 1000);
    assert_int_equal(s.begins, 2);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
}

/* A fatal status from pump ends the map: the items finished before it
 * still come out, in order, then the status, again on every call and
 * from pmap_iter_free; the pool stays usable. */
static void test_fatal_from_pump(void **state)
{
    int ordered;

    (void)state;
    for (ordered = 0; ordered <= 1; ordered++) {
        struct fake_script s = {0};
        struct task_ctx tc = {0};
        struct gen g = {0, 100000, 0, 0, -1};
        pmap_pool *pool;
        pmap_iter *it;
        pmap_item item;
        uint64_t got = 0, last = 0;
        int rc;

        s.places = 2;
        s.seed = 3;
        s.per_pump = 10;
        s.fail_after = 20;
        s.fatal_status = PMAP_ESYS;
        pool = fake_pool(&s, &tc, 128, 0);
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            /* In input order, the records lost with the failure are
             * skipped. */
            if (ordered && got > 0)
                assert_true(item.index > last);
            last = item.index;
            assert_int_equal(item.status, PMAP_OK);
            got++;
        }
        assert_int_equal(rc, PMAP_ESYS);
        /* Everything the backend finished before failing came out. */
        assert_int_equal(got, s.reported);
        assert_true(got > 0);
        assert_int_equal(pmap_next(it, &item), PMAP_ESYS);
        assert_int_equal(pmap_next(it, &item), PMAP_ESYS);
        assert_int_equal(pmap_iter_free(it), PMAP_ESYS);
        s.fail_after = 0;
        memset(&g, 0, sizeof g);
        g.n = 500;
        g.fail_at = -1;
        assert_int_equal(run_map(pool, ordered, &g, &tc), PMAP_DONE);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
}

/* A generator error: every record before it, then PMAP_EGEN. */
static void test_generator_error(void **state)
{
    int ordered;

    (void)state;
    for (ordered = 0; ordered <= 1; ordered++) {
        struct fake_script s = {0};
        struct task_ctx tc = {0};
        struct gen g = {0, 100000, 0, 0, 4321};
        pmap_pool *pool;

        s.places = 3;
        s.seed = 11;
        s.per_pump = 50;
        pool = fake_pool(&s, &tc, 0, 0);
        assert_int_equal(run_map(pool, ordered, &g, &tc), PMAP_EGEN);
        assert_int_equal(g.consumed, 4321);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
}

/* A place's allowance (room) is honoured: no batch beyond it. */
static void test_room_honoured(void **state)
{
    struct fake_script s = {0};
    struct task_ctx tc = {0};
    struct gen g = {0, 3000, 0, 0, -1};
    pmap_pool *pool;

    (void)state;
    s.places = 2;
    s.seed = 21;
    s.per_pump = 2;
    s.room = 5;
    pool = fake_pool(&s, &tc, 0, 64);
    assert_int_equal(run_map(pool, 1, &g, &tc), PMAP_DONE);
    assert_true(s.max_batch <= 5);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
}

/* The window pmap.h documents: what was asked for, else workers * 4 *
 * 2048 records (workers * 4 * chunk for a larger explicit chunk), at most
 * 65536. */
static void test_window_values(void **state)
{
    static const struct {
        int places;
        unsigned chunk, expect;
    } cases[] = {
        {1, 0, 8192},     {2, 0, 16384},        {3, 0, 24576},      {8, 0, 65536},
        {7, 0, 57344},    {2, 1, 16384},        {1, 2048, 8192},    {1, 4096, 16384},
        {1, 8192, 32768}, {3, 5000, 60000},     {1, 100000, 65536},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned got = pmap__iter_auto_window(cases[i].places, cases[i].chunk);

        if (got != cases[i].expect)
            fail_msg("%d places, chunk %u: window %u, documented %u", cases[i].places,
                     cases[i].chunk, got, cases[i].expect);
    }
}

/* The automatic window is the backend's when it asks for more, and the
 * iterator's own otherwise; an explicit window is the caller's. Record 0
 * is held until it is alone in flight, so the ordered map's lead grows to
 * the window. */
static void test_backend_auto_window(void **state)
{
    static const struct {
        unsigned asked, window, expect;
    } cases[] = {{40000, 0, 40000}, {100, 0, 8192}, {0, 0, 8192}, {40000, 64, 64}};
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct fake_script s = {0};
        struct task_ctx tc = {0};
        struct gen g = {0, 50000, 0, 0, -1};
        pmap_options opt;
        pmap_pool *pool;

        s.places = 1;
        s.per_pump = 4096;
        s.hold_first = 1;
        s.auto_window = cases[i].asked;
        pmap_options_init(&opt);
        opt.window = cases[i].window;
        pool = pmap__pool_new(&fake_wide_ops, task, &tc, &opt, sizeof opt, &s);
        assert_non_null(pool);
        assert_int_equal(run_map(pool, 1, &g, &tc), PMAP_DONE);
        /* Whole batches only while records are alive: the window's last
         * records may stay unused. */
        if (g.max_lead > cases[i].expect || g.max_lead <= cases[i].expect / 2)
            fail_msg("asked %u, window %u: lead %llu, expected %u", cases[i].asked,
                     cases[i].window, (unsigned long long)g.max_lead, cases[i].expect);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
}

/* Idle places come first: k * places records land on every place alike
 * (at most two batches each are queued at a time), never more on one
 * while another has fewer. Dispatch once filled the queue of each place in turn,
 * so two long records on two idle workers ran one after the other. */
static void test_idle_places_first(void **state)
{
    unsigned chunk, k;
    int places;

    (void)state;
    for (places = 1; places <= 4; places++)
        for (chunk = 0; chunk <= 1; chunk++)
            /* Past two records a place, adaptive batches grow with the
             * time measured (the fake reports tiny tasks): only batches of
             * one still come one by one. */
            for (k = 1; k <= (chunk == 1 ? 4u : 2u); k++) {
                int ordered;

                for (ordered = 0; ordered <= 1; ordered++) {
                    struct fake_script s = {0};
                    struct task_ctx tc = {0};
                    struct gen g = {0, 0, 0, 0, -1};
                    pmap_pool *pool;

                    s.places = places;
                    pool = fake_pool(&s, &tc, 0, chunk);
                    g.n = k * (unsigned)places;
                    /* The fake finishes nothing before the first pump, and
                     * the iterator hands out every record it can before
                     * pumping: max_inflight is the fullest place then. */
                    assert_int_equal(run_map(pool, ordered, &g, &tc), PMAP_DONE);
                    assert_int_equal(g.consumed, g.n);
                    if (s.max_inflight != (k < 2 ? k : 2))
                        fail_msg("%d places, chunk %u, %llu records: %u on one place", places,
                                 chunk, (unsigned long long)g.n, s.max_inflight);
                    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
                }
            }
}

/* One open iterator per pool; destroy refuses while one is open. */
static void test_busy(void **state)
{
    struct fake_script s = {0};
    struct task_ctx tc = {0};
    struct gen g = {0, 10, 0, 0, -1};
    pmap_pool *pool;
    pmap_iter *it;

    (void)state;
    s.places = 1;
    pool = fake_pool(&s, &tc, 0, 0);
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    errno = 0;
    assert_null(pmap_imap(pool, gen, &g));
    assert_int_equal(errno, EBUSY);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_EBUSY);
    assert_int_equal(s.destroys, 0);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    assert_int_equal(s.destroys, 1);
}

/* A backend that cannot run another function (no set_task, as here)
 * refuses a map with a task of its own, and still runs the pool's. */
static void test_task_per_map_refused(void **state)
{
    struct fake_script s = {0};
    struct task_ctx tc = {0};
    struct gen g = {0, 10, 0, 0, -1};
    pmap_pool *pool;
    pmap_iter *it;

    (void)state;
    s.places = 1;
    pool = fake_pool(&s, &tc, 0, 0);
    errno = 0;
    assert_null(pmap_imap_task(pool, task, &tc, gen, &g));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap_imap_task_unordered(pool, task, &tc, gen, &g));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(s.begins, 0); /* refused before anything started */
    it = pmap_imap(pool, gen, &g);
    assert_non_null(it);
    assert_int_equal(pmap_iter_free(it), PMAP_OK);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
}

/* A backend without a descriptor of its own (fd and timeout NULL, as
 * here): pmap_try_next still delivers the serial stream, pmap_iter_fd
 * still gives a descriptor (readable while items wait, quiet after
 * PMAP_EAGAIN), and pmap_iter_timeout tells the loop to poll back soon. */
static void test_try_next_without_backend_fd(void **state)
{
    struct task_ctx tc = {5};
    int ordered, eagain = 0;

    (void)state;
    for (ordered = 0; ordered < 2; ordered++) {
        struct fake_script s = {0};
        struct gen g = {0, 5000, 0, 0, -1};
        pmap_pool *pool;
        pmap_iter *it;
        pmap_item item;
        int rc, fd;

        s.places = 3;
        s.seed = 7 + (uint64_t)ordered;
        s.per_pump = 5;
        s.lose_every = 11;
        pool = fake_pool(&s, &tc, 64, 0);
        it = ordered ? pmap_imap(pool, gen, &g) : pmap_imap_unordered(pool, gen, &g);
        assert_non_null(it);
        fd = pmap_iter_fd(it);
        assert_true(fd >= 0);
        for (;;) {
            struct pollfd p = {fd, POLLIN, 0};

            rc = pmap_try_next(it, &item);
            if (rc == PMAP_EAGAIN) {
                eagain++;
                assert_int_equal(poll(&p, 1, 0), 0);
                assert_true(pmap_iter_timeout(it) > 0);
                continue;
            }
            assert_int_equal(poll(&p, 1, 0), 1);
            assert_int_equal(pmap_iter_timeout(it), 0);
            if (rc != PMAP_OK)
                break;
            if (ordered)
                assert_int_equal(item.index, g.consumed);
            if (item.index % tc.fail_every == 0) {
                assert_int_equal(item.status, PMAP_ETASK);
            } else {
                uint64_t v;

                assert_int_equal(item.status, PMAP_OK);
                assert_int_equal(item.len, sizeof v);
                memcpy(&v, item.data, sizeof v);
                assert_true(v == mix64(item.index));
            }
            g.consumed++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(g.consumed, 5000);
        assert_true(g.max_lead <= 64);
        assert_int_equal(pmap_iter_free(it), PMAP_OK);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    /* Each pump finishes 5 records only: some call must have found none. */
    assert_true(eagain > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_any_completion_order),
        cmocka_unit_test(test_window_bound),
        cmocka_unit_test(test_retry_of_lost_records),
        cmocka_unit_test(test_done_many),
        cmocka_unit_test(test_cancel_mid_batch),
        cmocka_unit_test(test_fatal_from_pump),
        cmocka_unit_test(test_generator_error),
        cmocka_unit_test(test_room_honoured),
        cmocka_unit_test(test_window_values),
        cmocka_unit_test(test_backend_auto_window),
        cmocka_unit_test(test_idle_places_first),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_task_per_map_refused),
        cmocka_unit_test(test_try_next_without_backend_fd),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
