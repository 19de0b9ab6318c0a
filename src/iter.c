/*
 * The iterator: the window of records, the lazy generator, batching,
 * reordering and per-item status. It drives workers only through the
 * backend operations (backend.h), so it does not know where they run.
 *
 * Every record generated and not yet returned owns one slot of `recs`. In
 * input order the slot of record i is i % window, which needs no lookup
 * because at most `window` consecutive records are alive; completion order
 * takes slots from a free list and queues finished ones.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* MAP_ANONYMOUS */
#endif
#define _POSIX_C_SOURCE 200809L

#include "api.h"
#include "backend.h"
#include "buf.h"
#include "io.h"
#include "iter.h"
#include "journal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(MAP_ANONYMOUS) && defined(MAP_ANON)
#define MAP_ANONYMOUS MAP_ANON
#endif

#define NONE UINT32_MAX
/* Batches are aimed at this much task time: long enough that the round
 * trip (tens of microseconds) is noise, short enough to balance well. */
#define TARGET_BATCH_NS 1000000.0
/* Batches queued per worker beyond the one it is running. */
#define DEPTH 2u
/* Largest batch the adaptive sizing builds; an explicit `chunk` may go higher. */
#define CHUNK_MAX 2048u
/* The automatic window: per place, its queue of DEPTH batches, the one it
 * runs and one being handed out, of the largest batch; capped so that the
 * slots of a map stay a few megabytes whatever the number of places. */
#define AUTO_WINDOW_BATCHES (DEPTH + 2u)
#define AUTO_WINDOW_MAX 65536u
/* Slot buffers that grew past this are released when the slot is reused,
 * so that one large record does not pin its memory in every slot. */
#define KEEP_BYTES ((size_t)1 << 20)
/* In automatic-window mode, stop generating while records alive hold more
 * than this many bytes (there is always at least one record in flight). */
#define AUTO_BYTES ((uint64_t)256 << 20)
/* Once records this large appear, the automatic window also holds at most
 * LIVE_PER_PLACE records' worth of the largest bytes per place (at least
 * LIVE_FLOOR each), and adaptive batches carry about BIG_BATCH bytes: the
 * count-based window, sized for tiny records, would otherwise let a few
 * workers' batches run to the full AUTO_BYTES, walking through hundreds of
 * megabytes of cold memory where a few blocks reused hot would do. */
#define BIG_RECORD ((size_t)16 << 10)
#define LIVE_PER_PLACE (DEPTH + 2u)
#define LIVE_FLOOR ((uint64_t)1 << 20)
#define BIG_BATCH ((size_t)1 << 20)
/* Heap bytes that slot buffers may keep between records, all slots
 * together: each buffer keeps at most KEEP_TOTAL / (2 * window) bytes
 * (and never more than KEEP_BYTES) when its record is released.
 * A per-slot allowance alone let a map of 1 MiB records keep 2 MiB in
 * every slot it ever used, i.e. up to 32 GiB with the automatic window. */
#define KEEP_TOTAL ((size_t)32 << 20)
/* Delivering buffered results, pump the backend every this many items, or
 * every quarter batch when batches are larger, so workers are fed while the
 * consumer drains: each holds DEPTH batches, so a quarter batch refills it
 * long before it runs dry, where a pump per 64 tiny records was a tenth of
 * the caller's time. */
#define PUMP_EVERY 64u
/* Stored items are generated at most this far ahead of the consumer: a
 * run that filled the whole window with them walked every record through
 * two megabytes of slots between generating and handing it out, where a
 * short lead hands it out while its slot is still in the cache. */
#define REPLAY_AHEAD 1024u
/* pmap_iter_timeout when the backend has no descriptor to watch: ask it again
 * this often instead. */
#define EVL_POLL_MS 1

enum rec_state { R_FREE, R_QUEUED, R_FLIGHT, R_DONE, R_LOST };

enum gen_state { G_RUNNING, G_ENDED, G_FAILED };

struct queue {
    uint32_t head, tail;
};

struct pmap_iter {
    pmap_pool *pool;
    /* Copied from the pool: read on every batch. */
    const struct pmap__backend_ops *ops;
    void *be;
    unsigned chunk;  /* explicit chunk, 0: adaptive */
    int window_auto; /* the window was chosen by the library */
    size_t max_record;
    uint32_t max_retries; /* per record, after its own crash or timeout */
    struct pmap__owner owner;
    pmap_gen_fn gen;
    void *gen_ctx;
    int in_gen; /* the generator is running: calls on this iterator are refused */
    int ordered;
    struct pmap__rec *recs;
    uint32_t window;
    uint64_t generated; /* records the generator produced */
    uint64_t returned;  /* records pmap_next handed out (and released); in input
                         * order also the index of the next record to return */
    uint32_t gen_slot;  /* input order: slot of record `generated` (no division per record) */
    uint32_t out_slot;  /* input order: slot of record `returned`, the next to hand out */
    uint32_t fresh;     /* slots [0, fresh) are initialised; the rest still calloc's zeroes */
    uint64_t live_bytes;
    uint64_t live_max;  /* the automatic window's byte bound; UINT64_MAX for a fixed window */
    size_t big;         /* the largest parameter so far */
    int blocks;         /* parameters are large: they go into the backend's shared blocks */
    uint32_t chunk_max; /* adaptive batches hold at most this many records */
    struct pmap__stash stash;
    uint32_t free_head; /* completion order: free slots */
    struct queue retry; /* records to run (again) before new ones */
    struct queue done;  /* completion order: finished records */
    enum gen_state gen_state;
    int fatal;   /* status to return once everything before it is out */
    int stopped; /* the backend failed: nothing more runs */
    struct pmap__rec *held;
    unsigned since_pump;
    size_t keep;         /* bytes a slot buffer keeps when its record is released */
    unsigned pump_every; /* items handed out between pumps (follows the batch size) */
    int next_worker;
    double ns_per_rec; /* moving average of task time per record; 0: unknown */
    struct pmap__rec **batch;
    uint32_t batch_cap;
    struct pmap__sink sink;
    /* Event loops (DESIGN §10). */
    uint64_t submits; /* batches handed to the backend */
    int in_step;      /* inside step() or try_round(): the generator may be running */
    int quiet;        /* the last pmap_try_next returned PMAP_EAGAIN, and nothing ran since */
    int ev_epfd;      /* pmap_iter_fd's epoll set, -1 until asked for */
    int ev_efd;       /* in it, an eventfd that holds a count exactly while !quiet */
    int ev_nofd;      /* the backend has no descriptor: pmap_iter_timeout polls */
    /* The journal (DESIGN §9), NULL if none. */
    struct pmap_journal *jr;
    int begun;  /* pmap_next or pmap_try_next was called: too late to attach one */
    int jr_hit; /* the last dispatch put stored items in place: do not wait */
    /* pmap_imap_array: the caller's array, read by array_gen. */
    const unsigned char *arr_base;
    size_t arr_size, arr_count, arr_next;
    /* pmap_param_set_user: one value per slot, allocated by the first
     * call, so a map that never sets one pays a test per record, no
     * memory (and the slots keep their two cache lines). */
    void **users;
    int gen_rc;         /* the generator's own negative return, 0 if none */
    int gen_buf_failed; /* the generator ended on a failed buffer, not its return */
};

/* The iterator whose generator this thread is running (NULL: none), so
 * that pmap_param_set_user can find the record behind its buffer. Saved
 * and restored around each run: a generator may draw from another map. */
static _Thread_local struct pmap_iter *gen_iter;

static uint32_t slot_of(const struct pmap_iter *it, const struct pmap__rec *r)
{
    return (uint32_t)(r - it->recs);
}

static void q_push(struct pmap_iter *it, struct queue *q, struct pmap__rec *r)
{
    uint32_t s = slot_of(it, r);

    r->next = NONE;
    if (q->tail == NONE)
        q->head = s;
    else
        it->recs[q->tail].next = s;
    q->tail = s;
}

static struct pmap__rec *q_pop(struct pmap_iter *it, struct queue *q)
{
    struct pmap__rec *r;

    if (q->head == NONE)
        return NULL;
    r = &it->recs[q->head];
    q->head = r->next;
    if (q->head == NONE)
        q->tail = NONE;
    r->next = NONE;
    return r;
}

unsigned pmap__iter_auto_window(int nworkers, unsigned chunk)
{
    uint64_t batch = chunk > CHUNK_MAX ? chunk : CHUNK_MAX;
    uint64_t w = (uint64_t)(nworkers > 0 ? nworkers : 1) * AUTO_WINDOW_BATCHES * batch;

    return w > AUTO_WINDOW_MAX ? AUTO_WINDOW_MAX : (unsigned)w;
}

/* ------------------------------------------------------------------------ */
/* Sink: what the backend reports                                           */
/* ------------------------------------------------------------------------ */

/* A slot buffer grew past the keep bound: its block goes to the stash. */
static PMAP__RARE PMAP__NOINLINE void shelve(struct pmap_iter *it, struct pmap_buf *b)
{
    pmap__stash_put(&it->stash, b);
}

/* shelve() for a parameter, which may be in a shared block of the
 * backend's: that goes back to the backend (never to the stash, whose
 * blocks become results). Every record is done with its parameter when
 * this runs (backend.h). */
static PMAP__RARE PMAP__NOINLINE void shelve_param(struct pmap_iter *it, struct pmap_buf *b)
{
    if (it->ops->block_put != NULL && b->data != b->small && it->ops->block_put(it->be, b->data)) {
        pmap__buf_init(b, b->max);
        return;
    }
    pmap__stash_put(&it->stash, b);
}

/* A record is finished. Inlined in both sinks below, so that a frame of
 * tiny results costs no call per record; the byte count of live records
 * and the trim bound are passed in and out so that a run of records keeps
 * them in registers (stores to a record would otherwise reload them). */
/* The record's worker crashed or timed out on it: 1 when it goes back to
 * the retry queue instead of being finished (its parameter kept, its
 * outcome forgotten). Out of line: finish() is the per-record path. */
static PMAP__RARE int retry_own(struct pmap_iter *it, struct pmap__rec *r)
{
    if ((r->status != PMAP_ECRASH && r->status != PMAP_ETIMEOUT) ||
        r->retries >= it->max_retries)
        return 0;
    r->retries++;
    r->status = PMAP_OK;
    r->code = 0;
    /* Its next run writes a fresh result: a large block goes back to the
     * stash now rather than wait there through the retry. */
    r->result.len = 0;
    if (r->result.cap > it->keep)
        shelve(it, &r->result);
    r->state = R_QUEUED;
    q_push(it, &it->retry, r);
    return 1;
}

/* A record finished for good with a journal attached: its item is stored
 * (the parameter is still there to be hashed). */
static PMAP__NOINLINE void store(struct pmap_iter *it, const struct pmap__rec *r)
{
    if (r->status == PMAP_OK || r->status == PMAP_ETASK)
        pmap__jr_store(it->jr, r->index, r->param.data, r->param.len, r->status, r->code,
                       r->result.data, r->result.len);
}

static inline uint64_t finish(struct pmap_iter *it, struct pmap__rec *r, uint64_t live, size_t keep,
                              int ordered)
{
    if (r->state != R_FLIGHT)
        return live;
    /* A task error keeps its payload: the task's message. */
    if (r->status != PMAP_OK && r->status != PMAP_ETASK) {
        if (it->max_retries != 0 && retry_own(it, r))
            return live;
        r->result.len = 0;
    }
    r->state = R_DONE;
    if (it->jr != NULL)
        store(it, r);
    /* A finished record never runs again: its parameter is of no use any
     * more. Letting go of it now (rather than in release) also keeps
     * delivery to the record's first cache line. */
    live += (uint64_t)r->result.len - (uint64_t)r->param.len;
    r->param.len = 0;
    if (r->param.cap > keep)
        shelve_param(it, &r->param);
    if (!ordered)
        q_push(it, &it->done, r);
    return live;
}

static void on_done(void *ud, struct pmap__rec *r)
{
    struct pmap_iter *it = ud;

    it->live_bytes = finish(it, r, it->live_bytes, it->keep, it->ordered);
}

static void on_done_many(void *ud, struct pmap__rec *const *recs, uint32_t n)
{
    struct pmap_iter *it = ud;
    const size_t keep = it->keep;
    uint64_t live = it->live_bytes;
    uint32_t i;

    /* One loop per order, so that each has the order as a constant. */
    if (it->ordered)
        for (i = 0; i < n; i++)
            live = finish(it, recs[i], live, keep, 1);
    else
        for (i = 0; i < n; i++)
            live = finish(it, recs[i], live, keep, 0);
    it->live_bytes = live;
}

static void on_retry(void *ud, struct pmap__rec *r)
{
    struct pmap_iter *it = ud;

    if (r->state != R_FLIGHT)
        return;
    r->state = R_QUEUED;
    q_push(it, &it->retry, r);
}

static void on_timing(void *ud, uint32_t count, uint32_t task_us)
{
    struct pmap_iter *it = ud;
    double ns;

    if (count == 0)
        return;
    ns = (double)task_us * 1000.0 / count;
    /* Task time under a microsecond rounds to 0 in the frame: count it as
     * cheap rather than unknown. */
    if (ns < 20.0)
        ns = 20.0;
    it->ns_per_rec = it->ns_per_rec == 0.0 ? ns : 0.7 * it->ns_per_rec + 0.3 * ns;
}

/* ------------------------------------------------------------------------ */
/* Generating and dispatching                                               */
/* ------------------------------------------------------------------------ */

static uint32_t chunk_size(const struct pmap_iter *it)
{
    uint32_t chunk, fair;
    int nw = it->ops->nworkers(it->be);

    if (it->chunk)
        return it->chunk;
    if (it->ns_per_rec == 0.0) {
        chunk = 1; /* nothing measured yet: one record tells the cost */
    } else {
        double c = TARGET_BATCH_NS / it->ns_per_rec;

        chunk = c >= it->chunk_max ? it->chunk_max : c < 1.0 ? 1u : (uint32_t)c;
    }
    /* Leave enough of the window for every worker to have work. */
    fair = it->window / ((uint32_t)nw * (DEPTH + 1u));
    if (fair < 1)
        fair = 1;
    return chunk < fair ? chunk : fair;
}

/* The generator returned a record whose buffer's last set failed: the map
 * ends there with that status (PMAP_ETOOBIG, ...) once the records before
 * it are out, as after a generator error. Returns the generator's error. */
static PMAP__RARE int gen_failed_buf(struct pmap_iter *it, struct pmap_buf *param)
{
    if (it->fatal == 0)
        it->fatal = pmap__buf_failed(param);
    pmap__buf_unfail(param);
    it->gen_buf_failed = 1;
    return -1;
}

/* The generator returned 0 or an error: it is not called again. */
static PMAP__RARE void gen_end(struct pmap_iter *it, int rc)
{
    it->gen_state = rc == 0 ? G_ENDED : G_FAILED;
    if (rc < 0 && !it->gen_buf_failed)
        it->gen_rc = rc;
    if (rc < 0 && it->fatal == 0)
        it->fatal = PMAP_EGEN;
}

/* A parameter larger than any before: bound the window's bytes and the
 * batches by it (see BIG_RECORD). */
static PMAP__RARE PMAP__NOINLINE void grew_big(struct pmap_iter *it, size_t len)
{
    uint64_t per, bound;
    size_t chunk;

    it->big = len;
    if (len < BIG_RECORD)
        return;
    if (len >= PMAP__BLOCK_MIN && it->ops->block_get != NULL)
        it->blocks = 1;
    chunk = BIG_BATCH / len;
    it->chunk_max = chunk < 1 ? 1u : chunk < CHUNK_MAX ? (uint32_t)chunk : CHUNK_MAX;
    if (!it->window_auto)
        return;
    per = len > LIVE_FLOOR ? (uint64_t)len : LIVE_FLOOR;
    bound = per * LIVE_PER_PLACE * (uint64_t)it->ops->nworkers(it->be);
    it->live_max = bound < AUTO_BYTES ? bound : AUTO_BYTES;
}

/* Before the generator runs on an empty slot: a stashed block, so that a
 * large parameter is written into pages already mapped. */
static PMAP__RARE PMAP__NOINLINE void param_from_stash(struct pmap_iter *it, struct pmap_buf *b)
{
    if (it->blocks) {
        /* The generator writes straight into shared memory, and sending
         * the record copies nothing. */
        size_t cap;
        unsigned char *p = it->ops->block_get(it->be, &cap);

        if (p != NULL) {
            b->data = p;
            b->cap = cap;
            return;
        }
    }
    (void)pmap__stash_reserve(&it->stash, b, it->big);
}

/* A record just generated as index `index` may be stored in the journal:
 * 1 when its stored item is now in r->result and *st (status, code), 0
 * when it is to run, or the status that ends the map (PMAP_EJOURNAL:
 * another input; PMAP_ENOMEM). */
static PMAP__NOINLINE int replay(struct pmap_iter *it, struct pmap__rec *r, uint64_t index,
                                 int st[2])
{
    return pmap__jr_replay(it->jr, index, r->param.data, r->param.len, &st[0], &st[1],
                           &r->result);
}

/* The generator's record is a stored item: the map ends there (the
 * records before it still come out), as after a generator error. */
static PMAP__RARE void replay_failed(struct pmap_iter *it, struct pmap__rec *r, int rc)
{
    r->param.len = 0;
    r->result.len = 0;
    if (it->fatal == 0)
        it->fatal = rc;
}

/* A generated record was replayed: it is finished without running. */
static void replayed(struct pmap_iter *it, struct pmap__rec *r, const int st[2])
{
    r->state = R_DONE;
    r->status = st[0];
    r->code = st[1];
    r->param.len = 0;
    if (r->param.cap > it->keep)
        shelve_param(it, &r->param);
    it->jr_hit = 1;
}

static struct pmap__rec *generate_one(struct pmap_iter *it)
{
    struct pmap__rec *r;
    uint32_t slot;
    int rc, hit = 0, st[2];

    if (it->gen_state != G_RUNNING || it->generated - it->returned >= it->window)
        return NULL;
    if (it->live_bytes > it->live_max && it->generated > it->returned)
        return NULL;
    if (it->ordered) {
        slot = it->gen_slot;
    } else {
        slot = it->free_head;
        if (slot == NONE && it->fresh == it->window)
            return NULL;
        if (slot == NONE)
            slot = it->fresh; /* never used yet: not on the free list */
    }
    r = &it->recs[slot];
    if (slot >= it->fresh) {
        /* Slots are set up on first use, so that starting a map costs the
         * same whatever the window: a one-record map touches one slot. */
        pmap__buf_init(&r->param, it->max_record);
        pmap__buf_init(&r->result, it->max_record);
        r->next = NONE;
        it->fresh = slot + 1;
    }
    r->param.len = 0;
    if ((it->stash.n != 0 || it->blocks) && r->param.data == r->param.small)
        param_from_stash(it, &r->param);
    if (it->users != NULL)
        it->users[slot] = NULL;
    rc = it->gen(it->gen_ctx, &r->param);
    if (rc > 0 && r->param.cap == 0)
        rc = gen_failed_buf(it, &r->param);
    if (rc <= 0) {
        r->param.len = 0;
        gen_end(it, rc);
        return NULL;
    }
    if (it->jr != NULL) {
        hit = replay(it, r, it->generated, st);
        if (hit < 0) {
            replay_failed(it, r, hit);
            it->gen_state = G_FAILED;
            return NULL;
        }
    }
    if (!it->ordered)
        it->free_head = r->next;
    else if (++it->gen_slot == it->window)
        it->gen_slot = 0;
    r->next = NONE;
    r->index = it->generated++;
    r->state = R_FLIGHT;
    r->status = PMAP_OK;
    r->code = 0;
    r->tries = 0;
    r->lost = 0;
    r->retries = 0;
    if (r->param.len > it->big)
        grew_big(it, r->param.len);
    if (hit) {
        it->live_bytes += r->result.len;
        replayed(it, r, st);
        if (!it->ordered)
            q_push(it, &it->done, r);
        return r;
    }
    r->result.len = 0;
    it->live_bytes += r->param.len;
    return r;
}

/* The next record to send, generating as many as the window allows:
 * records replayed from the journal are finished at once and skipped. */
static struct pmap__rec *generate(struct pmap_iter *it)
{
    for (;;) {
        struct pmap__rec *r = generate_one(it);

        if (r == NULL || r->state != R_DONE)
            return r;
        if (it->generated - it->returned >= REPLAY_AHEAD)
            return NULL;
    }
}

/* Up to `want` new records for a batch, into out[]; how many. In input
 * order this is generate() unrolled for a run of records: the window, the
 * counters and the slot stay in registers across the generator calls, and
 * the checks that cannot change within a run are made once. Two stores of
 * generate() are left out because they are already true here: a slot is
 * generated into only when fresh (buf_init) or released (release), both
 * of which leave result.len 0, and `next` is set by q_push, the only
 * place that links a slot in input order. */
static uint32_t generate_run(struct pmap_iter *it, struct pmap__rec **out, uint32_t want)
{
    struct pmap__rec *recs = it->recs;
    const uint32_t window = it->window;
    const uint64_t returned = it->returned;
    const uint64_t live_max = it->live_max;
    /* Blocks are stashed only once records are large. */
    int stashing = it->stash.n != 0 || it->blocks;
    size_t big = it->big;
    const pmap_gen_fn gen = it->gen;
    void *const gen_ctx = it->gen_ctx;
    uint64_t idx = it->generated, live = it->live_bytes;
    uint32_t slot = it->gen_slot, fresh = it->fresh, n = 0;
    struct pmap_iter *outer = gen_iter;
    int rc = 1;

    /* Every call of the generator is made from here, and never while a
     * record is held (next_general releases it before it pumps): a call
     * from inside the generator misses the fast path of pmap_next, and the
     * general way refuses it. Set once per run, not per record. */
    if (!it->ordered) {
        it->in_gen = 1;
        gen_iter = it;
        while (n < want) {
            struct pmap__rec *r = generate(it);

            if (r == NULL)
                break;
            out[n++] = r;
        }
        gen_iter = outer;
        it->in_gen = 0;
        return n;
    }
    if (it->gen_state != G_RUNNING || idx - returned >= window)
        return 0;
    if (want > window - (idx - returned))
        want = (uint32_t)(window - (idx - returned));
    it->in_gen = 1;
    gen_iter = it;
    /* Replayed records take room in the window but not in the batch. */
    while (n < want && idx - returned < window) {
        struct pmap__rec *r = &recs[slot];
        int hit = 0, st[2];

        if (live > live_max && idx > returned)
            break;
        if (slot >= fresh) {
            pmap__buf_init(&r->param, it->max_record);
            pmap__buf_init(&r->result, it->max_record);
            r->next = NONE;
            fresh = slot + 1;
        }
        r->param.len = 0;
        if (stashing && (it->stash.n != 0 || it->blocks) && r->param.data == r->param.small)
            param_from_stash(it, &r->param);
        /* Read each time: the generator's first pmap_param_set_user
         * allocates the array. */
        if (it->users != NULL)
            it->users[slot] = NULL;
        rc = gen(gen_ctx, &r->param);
        if (rc > 0 && r->param.cap == 0)
            rc = gen_failed_buf(it, &r->param);
        if (rc <= 0) {
            r->param.len = 0;
            break;
        }
        if (r->param.len > big) {
            grew_big(it, r->param.len);
            big = it->big;
            /* The rest of this run into shared blocks already: a map
             * of a few huge records may be only a run or two. */
            stashing |= it->blocks;
        }
        if (it->jr != NULL) {
            hit = replay(it, r, idx, st);
            if (hit < 0) {
                /* The map ends with the journal's error, not the generator's. */
                replay_failed(it, r, hit);
                it->gen_state = G_FAILED;
                rc = -1;
                break;
            }
        }
        if (++slot == window)
            slot = 0;
        r->index = idx++;
        r->state = R_FLIGHT;
        r->status = PMAP_OK;
        r->code = 0;
        r->tries = 0;
        r->lost = 0;
        r->retries = 0;
        if (hit) {
            live += r->result.len;
            replayed(it, r, st);
            if (idx - returned >= REPLAY_AHEAD)
                break;
            continue;
        }
        live += r->param.len;
        out[n++] = r;
    }
    gen_iter = outer;
    it->in_gen = 0;
    it->generated = idx;
    it->live_bytes = live;
    it->gen_slot = slot;
    it->fresh = fresh;
    if (rc <= 0 && it->gen_state == G_RUNNING)
        gen_end(it, rc);
    return n;
}

/* True when fewer than `n` records could be put in a batch now: no records
 * to re-run and the window (or the generator) cannot supply n new ones. */
static int batch_short(const struct pmap_iter *it, uint32_t n)
{
    if (it->retry.head != NONE)
        return 0;
    if (it->gen_state != G_RUNNING)
        return 1;
    return it->window - (it->generated - it->returned) < n;
}

/* Fill it->batch with up to `limit` records of the retry queue, all lost
 * or all not (the backend's submit contract): a lost record's result is
 * returned on its own as soon as it is ready, which a batch of other
 * records would pay for too. Returns how many. */
static PMAP__RARE uint32_t take_retries(struct pmap_iter *it, uint32_t limit)
{
    uint32_t n = 0;

    while (n < limit && it->retry.head != NONE) {
        struct pmap__rec *r = &it->recs[it->retry.head];

        if (n > 0 && r->lost != it->batch[0]->lost)
            break;
        (void)q_pop(it, &it->retry);
        r->state = R_FLIGHT;
        it->batch[n++] = r;
    }
    return n;
}

/* Give place w whole batches of `chunk` until it has `target` records in
 * flight. 0; 1 when no record could be had (the window is full or the
 * generator is dry); or a fatal status. */
static int fill_worker(struct pmap_iter *it, int w, uint32_t chunk, uint32_t target, uint32_t whole)
{
    const struct pmap__backend_ops *ops = it->ops;
    uint32_t room = ops->room(it->be, w);
    uint32_t infl = ops->inflight(it->be, w);

    while (room > 0 && infl < target) {
        uint32_t limit = chunk, n = 0;
        int rc;

        if (limit > room)
            limit = room;
        /* A worker that still has work gets whole batches only: topping
         * it up with the few records just freed would turn one batch of
         * `chunk` into many small ones, each paying a frame, a write, a
         * read and a wakeup. Likewise no worker gets a short batch while
         * records are alive (in flight, or results the consumer has not
         * taken yet: it is the bottleneck then, and small batches would
         * only add to its work). With nothing alive the window is empty
         * and a whole batch always fits, so the map always moves. */
        if (infl > 0 && limit > target - infl)
            break;
        if (it->generated > it->returned && batch_short(it, limit < whole ? limit : whole))
            break;
        /* Records to run again first; the retry queue changes only
         * in pump(), so once it is empty the rest are new ones. */
        if (it->retry.head != NONE)
            n = take_retries(it, limit);
        if (n < limit && (n == 0 || !it->batch[0]->lost))
            n += generate_run(it, it->batch + n, limit - n);
        if (n == 0)
            return 1;
        rc = ops->submit(it->be, w, it->batch, n);
        if (rc != 0)
            return rc;
        it->submits++;
        room -= n;
        infl += n;
    }
    return 0;
}

/* Hand work to every worker that has room for it. While several workers
 * are idle, one batch of each queue at a time: every idle worker gets its
 * first batch before any gets a second, so records go to idle workers
 * first. (Filling each worker's queue in turn put n long records on n idle
 * workers two by two on half of them, doubling the time of the map's
 * tail.) Batch sizes are the same either way: only the order of the
 * workers changes. */
static int dispatch(struct pmap_iter *it)
{
    int nw = it->ops->nworkers(it->be);
    uint32_t chunk = chunk_size(it);
    /* The smallest batch worth waiting for: a whole one, unless the window
     * is too small to give every worker whole batches. */
    uint32_t whole = it->window / ((uint32_t)nw * (DEPTH + 1u));
    uint32_t level;
    int k, rc, idle;

    if (whole < 1)
        whole = 1;
    it->pump_every = chunk / 4u > PUMP_EVERY ? chunk / 4u : PUMP_EVERY;
    if (chunk > it->batch_cap) {
        struct pmap__rec **b = realloc(it->batch, (size_t)chunk * sizeof *b);

        if (b == NULL)
            return PMAP_ENOMEM;
        it->batch = b;
        it->batch_cap = chunk;
    }
    /* Level by level only while two or more workers are idle: that is
     * when the order decides who starts (n long records on n idle
     * workers). Otherwise each worker is filled in turn, as before: the
     * level order there bought nothing and cost tiny records ~4 % on
     * maps of a few million (A/B in the issue 9 note). */
    level = DEPTH;
    for (k = 0, idle = 0; k < nw && idle < 2; k++)
        idle += it->ops->inflight(it->be, k) == 0;
    if (idle >= 2)
        level = 1;
    for (; level <= DEPTH; level++) {
        for (k = 0; k < nw; k++) {
            int w = (it->next_worker + k) % nw;

            rc = fill_worker(it, w, chunk, chunk * level, whole);
            if (rc == 1) {
                it->next_worker = (w + 1) % nw;
                return 0;
            }
            if (rc != 0)
                return rc;
        }
    }
    it->next_worker = (it->next_worker + 1) % nw;
    return 0;
}

/* The backend failed: nothing more will run. Records not finished are
 * dropped; finished ones are still returned, then the error. */
static void fail_all(struct pmap_iter *it, int rc)
{
    uint32_t i;

    it->ops->cancel(it->be);
    it->stopped = 1;
    if (it->fatal == 0)
        it->fatal = rc;
    if (it->gen_state == G_RUNNING)
        it->gen_state = G_ENDED;
    it->retry.head = it->retry.tail = NONE;
    for (i = 0; i < it->fresh; i++) {
        struct pmap__rec *r = &it->recs[i];

        if (r->state == R_FLIGHT || r->state == R_QUEUED)
            r->state = R_LOST;
    }
}

/* A write to the journal failed: the map ends with PMAP_EJOURNAL, and
 * finished items not handed out yet are dropped, since some of them are
 * not in the file (an item handed out always is). */
static PMAP__RARE void journal_failed(struct pmap_iter *it)
{
    uint32_t i;

    fail_all(it, PMAP_EJOURNAL);
    it->done.head = it->done.tail = NONE;
    for (i = 0; i < it->fresh; i++) {
        struct pmap__rec *r = &it->recs[i];

        if (r->state == R_DONE && r != it->held)
            r->state = R_LOST;
    }
}

/* After a pump: what it finished goes to the file before any of it is
 * handed out, and to the disk once a second. 0 or PMAP_EJOURNAL. */
static int journal_flush(struct pmap_iter *it)
{
    return pmap__jr_flush(it->jr) != 0 ? PMAP_EJOURNAL : 0;
}

/* The pump's wait, shortened so that the journal's sync is not late, and
 * to nothing when stored items were just put in place. */
static int journal_wait(struct pmap_iter *it, int timeout_ms)
{
    int t;

    if (it->jr_hit) {
        it->jr_hit = 0;
        return 0;
    }
    t = pmap__jr_timeout_ms(it->jr);
    if (t >= 0 && (timeout_ms < 0 || t < timeout_ms))
        return t;
    return timeout_ms;
}

/* True when no worker has records of this map. */
static int none_in_flight(struct pmap_iter *it)
{
    int k, nw = it->ops->nworkers(it->be);

    for (k = 0; k < nw; k++)
        if (it->ops->inflight(it->be, k) != 0)
            return 0;
    return 1;
}

static int step(struct pmap_iter *it, int timeout_ms)
{
    int rc, skip = 0;

    if (it->stopped)
        return 0;
    it->in_step = 1;
    rc = dispatch(it);
    if (it->jr != NULL) {
        /* Replaying with nothing out: there is nothing to read, and a
         * poll per pump was most of the cost of a replay. */
        skip = it->jr_hit && none_in_flight(it);
        timeout_ms = journal_wait(it, timeout_ms);
    }
    /* The generator may have just ended (or failed) with nothing left
     * alive: there is nothing to wait for then, and pump(-1) would block
     * forever (empty input, or an end found only after the last item). */
    if (rc == 0 && timeout_ms < 0 && it->returned == it->generated && it->retry.head == NONE &&
        it->gen_state != G_RUNNING)
        timeout_ms = 0;
    if (rc == 0 && !skip)
        rc = it->ops->pump(it->be, timeout_ms, &it->sink);
    if (rc == 0 && it->jr != NULL)
        rc = journal_flush(it);
    if (rc == 0 && timeout_ms != 0)
        rc = dispatch(it); /* refill at once what the pump freed */
    it->in_step = 0;
    if (rc == PMAP_EJOURNAL)
        journal_failed(it);
    else if (rc != 0)
        fail_all(it, rc);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Delivery                                                                 */
/* ------------------------------------------------------------------------ */

/* A record that never finished: its parameter was not let go of by
 * finish(). Out of line: release() is inlined into pmap_next. */
static void release_lost(struct pmap_iter *it, struct pmap__rec *r)
{
    it->live_bytes -= r->param.len;
    r->param.len = 0;
    if (r->param.cap > it->keep)
        shelve_param(it, &r->param);
}

static inline void release(struct pmap_iter *it, struct pmap__rec *r)
{
    if (r->state == R_LOST)
        release_lost(it, r);
    it->live_bytes -= r->result.len;
    r->state = R_FREE;
    r->result.len = 0;
    if (r->result.cap > it->keep)
        shelve(it, &r->result);
    it->returned++;
    if (it->ordered) {
        if (++it->out_slot == it->window)
            it->out_slot = 0;
    } else {
        r->next = it->free_head;
        it->free_head = slot_of(it, r);
    }
}

static struct pmap__rec *deliverable(struct pmap_iter *it)
{
    struct pmap__rec *r;

    if (it->ordered) {
        while (it->returned < it->generated) {
            r = &it->recs[it->out_slot];
            if (r->state == R_DONE)
                return r;
            if (r->state != R_LOST)
                return NULL;
            release(it, r);
        }
        return NULL;
    }
    r = q_pop(it, &it->done);
    if (r != NULL)
        return r;
    if (it->stopped) {
        uint32_t i;

        for (i = 0; i < it->fresh; i++)
            if (it->recs[i].state == R_LOST)
                release(it, &it->recs[i]);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

/* Slot arrays run to megabytes (16384 slots for two workers) of which a
 * short map touches a few: fresh anonymous pages cost nothing until used,
 * where calloc would often clear the whole array from a recycled heap
 * (malloc raises its mmap threshold after such a block is freed). */
#define SLOTS_MMAP_BYTES ((size_t)256 << 10)

static struct pmap__rec *slots_alloc(uint32_t n)
{
    size_t bytes = (size_t)n * sizeof(struct pmap__rec);
    void *p;

    if (bytes < SLOTS_MMAP_BYTES)
        return calloc(n, sizeof(struct pmap__rec));
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void slots_free(struct pmap__rec *recs, uint32_t n)
{
    size_t bytes = (size_t)n * sizeof(struct pmap__rec);

    if (bytes < SLOTS_MMAP_BYTES)
        free(recs);
    else if (recs != NULL)
        munmap(recs, bytes);
}

/* A map of `gen`'s records; fn NULL: with the pool's own task. */
static pmap_iter *iter_new(pmap_pool *pool, pmap_task_fn fn, void *ctx, pmap_gen_fn gen,
                           void *gen_ctx, int ordered)
{
    struct pmap_iter *it;

    if (gen == NULL || pmap__pool_usable(pool) != 0 ||
        (fn != NULL && pool->ops->set_task == NULL)) {
        errno = EINVAL;
        return NULL;
    }
    if (pool->iter != NULL) {
        errno = EBUSY;
        return NULL;
    }
    it = calloc(1, sizeof *it);
    if (it == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    /* The window is the iterator's policy (it depends on DEPTH); the pool
     * only keeps what the caller asked for. */
    it->window_auto = pool->opt.window == 0;
    it->window = it->window_auto ? pmap__iter_auto_window(pool->nworkers, pool->opt.chunk)
                                 : pool->opt.window;
    if (it->window_auto && pool->ops->auto_window != NULL) {
        unsigned want = pool->ops->auto_window(pool->be);

        if (want > it->window)
            it->window = want;
    }
    it->recs = slots_alloc(it->window);
    if (it->recs == NULL) {
        free(it);
        errno = ENOMEM;
        return NULL;
    }
    it->pool = pool;
    it->ops = pool->ops;
    it->be = pool->be;
    it->chunk = pool->opt.chunk;
    it->max_record = pool->max_record;
    it->max_retries = pool->opt.max_retries;
    pmap__owner_init(&it->owner);
    it->gen = gen;
    it->gen_ctx = gen_ctx;
    it->ordered = ordered;
    it->retry.head = it->retry.tail = NONE;
    it->done.head = it->done.tail = NONE;
    it->free_head = NONE;
    it->pump_every = PUMP_EVERY;
    it->keep = KEEP_TOTAL / 2u / it->window;
    if (it->keep > KEEP_BYTES)
        it->keep = KEEP_BYTES;
    it->sink.it = it;
    it->sink.done = on_done;
    it->sink.done_many = on_done_many;
    it->sink.retry = on_retry;
    it->sink.timing = on_timing;
    it->sink.stash = &it->stash;
    it->live_max = it->window_auto ? AUTO_BYTES : UINT64_MAX;
    it->chunk_max = CHUNK_MAX;
    pmap__stash_init(&it->stash);
    it->ev_epfd = -1;
    it->ev_efd = -1;
    pool->iter = it;
    it->ops->begin(it->be);
    if (it->ops->set_task != NULL)
        it->ops->set_task(it->be, fn, ctx);
    return it;
}

/* The generator of pmap_imap_array: the iterator is its own gen_ctx, so
 * the array map needs nothing beside the iterator to free. */
static int array_gen(void *gen_ctx, pmap_buf *param)
{
    struct pmap_iter *it = gen_ctx;
    const unsigned char *p;

    if (it->arr_next == it->arr_count)
        return 0;
    p = it->arr_base + it->arr_next * it->arr_size;
    it->arr_next++;
    /* The size was checked against max_record_bytes when the map began,
     * so this fails only with PMAP_ENOMEM, which ends the map with it. */
    (void)pmap_buf_set(param, it->arr_size ? p : NULL, it->arr_size);
    return 1;
}

static pmap_iter *array_new(pmap_pool *pool, const void *base, size_t count, size_t size,
                            int ordered)
{
    struct pmap_iter *it;

    if (base == NULL && count > 0 && size > 0) {
        errno = EINVAL;
        return NULL;
    }
    if (pool != NULL && size > pool->max_record) {
        errno = E2BIG;
        return NULL;
    }
    /* A placeholder context: array_gen's is the iterator itself. */
    it = iter_new(pool, NULL, NULL, array_gen, NULL, ordered);
    if (it == NULL)
        return NULL;
    it->gen_ctx = it;
    it->arr_base = base;
    it->arr_size = size;
    it->arr_count = count;
    it->arr_next = 0;
    return it;
}

pmap_iter *pmap_imap_array(pmap_pool *pool, const void *base, size_t count, size_t size)
{
    return array_new(pool, base, count, size, 1);
}

pmap_iter *pmap_imap_array_unordered(pmap_pool *pool, const void *base, size_t count,
                                     size_t size)
{
    return array_new(pool, base, count, size, 0);
}

int pmap_map_array(pmap_pool *pool, const void *base, size_t count, size_t size, void *results,
                   size_t result_size, int *status)
{
    unsigned char *out = results;
    pmap_iter *it;
    pmap_item item;
    uint64_t first_bad = UINT64_MAX;
    int rc, ret = PMAP_OK, st;
    size_t i;

    if (results == NULL && count > 0 && result_size > 0)
        return PMAP_EINVAL;
    if (result_size > 0 && count > SIZE_MAX / result_size)
        return PMAP_EINVAL;
    it = pmap_imap_array_unordered(pool, base, count, size);
    if (it == NULL)
        return errno == E2BIG ? PMAP_ETOOBIG
             : errno == EBUSY ? PMAP_EBUSY
             : errno == ENOMEM ? PMAP_ENOMEM : PMAP_EINVAL;
    /* A placeholder no item carries, for items that never come back
     * (the map failed); replaced by the map's error below. */
    if (status != NULL)
        for (i = 0; i < count; i++)
            status[i] = PMAP_DONE;
    /* Unordered: each result is copied once, straight into its slot. */
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        unsigned char *slot = out + (size_t)item.index * result_size;

        st = item.status;
        if (st == PMAP_OK && item.len != result_size)
            st = PMAP_ETOOBIG;
        if (st == PMAP_OK) {
            if (result_size > 0)
                memcpy(slot, item.data, result_size);
        } else {
            if (result_size > 0)
                memset(slot, 0, result_size);
            if (item.index < first_bad) {
                first_bad = item.index;
                ret = st;
            }
        }
        if (status != NULL)
            status[item.index] = st;
    }
    if (rc != PMAP_DONE) {
        ret = rc;
        if (status != NULL)
            for (i = 0; i < count; i++)
                if (status[i] == PMAP_DONE)
                    status[i] = rc;
    }
    st = pmap_iter_free(it);
    if (ret == PMAP_OK && st != PMAP_OK)
        ret = st;
    return ret;
}

pmap_iter *pmap_imap(pmap_pool *pool, pmap_gen_fn gen, void *gen_ctx)
{
    return iter_new(pool, NULL, NULL, gen, gen_ctx, 1);
}

pmap_iter *pmap_imap_unordered(pmap_pool *pool, pmap_gen_fn gen, void *gen_ctx)
{
    return iter_new(pool, NULL, NULL, gen, gen_ctx, 0);
}

pmap_iter *pmap_imap_task(pmap_pool *pool, pmap_task_fn fn, void *ctx, pmap_gen_fn gen,
                          void *gen_ctx)
{
    if (fn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    return iter_new(pool, fn, ctx, gen, gen_ctx, 1);
}

pmap_iter *pmap_imap_task_unordered(pmap_pool *pool, pmap_task_fn fn, void *ctx,
                                    pmap_gen_fn gen, void *gen_ctx)
{
    if (fn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    return iter_new(pool, fn, ctx, gen, gen_ctx, 0);
}

static void fill(pmap_item *item, const struct pmap__rec *r)
{
    item->index = r->index;
    item->status = r->status;
    item->code = r->status == PMAP_OK ? 0 : r->code;
    /* finish(), the only way to R_DONE, empties the result of a record
     * that failed, so len needs no test of the status. */
    item->len = r->result.len;
    item->data = item->len ? r->result.data : NULL;
}

/* pmap_next when the next item is not simply waiting: pumps due, results
 * to wait for, lost records to skip, the end. */
static int next_slow(struct pmap_iter *it, pmap_item *item)
{
    struct pmap__rec *r;

    for (;;) {
        r = deliverable(it);
        if (r != NULL) {
            /* Keep the workers fed while buffered results are handed out. */
            if (++it->since_pump >= it->pump_every) {
                it->since_pump = 0;
                (void)step(it, 0);
            }
            it->held = r;
            fill(item, r);
            return PMAP_OK;
        }
        if (it->returned == it->generated && it->retry.head == NONE &&
            (it->gen_state != G_RUNNING || it->stopped)) {
            /* Nothing will use the blocks again. */
            pmap__stash_free(&it->stash);
            return it->fatal ? it->fatal : PMAP_DONE;
        }
        it->since_pump = 0;
        (void)step(it, -1);
    }
}

/* pmap_next in general: the owner check that may ask getpid(), a call
 * from inside the generator, any kind of held record, either order. */
static void evl_wake(struct pmap_iter *it);

static PMAP__RARE int next_general(struct pmap_iter *it, pmap_item *item)
{
    if (!pmap__is_owner(&it->owner))
        return PMAP_EINVAL;
    /* The outer pmap_next is half-way through generating a run (counters
     * in registers, a slot being filled): nothing may move under it. */
    if (it->in_gen)
        return PMAP_EBUSY;
    it->begun = 1;
    /* What pmap_next does may leave items for pmap_try_next. */
    if (it->quiet)
        evl_wake(it);
    if (it->held != NULL) {
        release(it, it->held);
        it->held = NULL;
    }
    return next_slow(it, item);
}

int pmap_next(pmap_iter *it, pmap_item *item)
{
    struct pmap__rec *r;

    if (it == NULL || item == NULL)
        return PMAP_EINVAL;
    /* The common case is handled here with no call but tail calls, so
     * that it saves no registers: the owner is known without a system
     * call, the record held since the last call needs nothing but counting
     * (not lost, no buffer to trim), and the next record is back with no
     * pump due (the test next_slow makes, ++since_pump >= pump_every).
     * All tests come before any store: a miss leaves everything to the
     * general way, and so does a call from inside the generator, which
     * runs with no record held. */
    r = it->held;
    if (pmap__owner_surely(&it->owner) && r != NULL && r->state == R_DONE &&
        r->result.cap <= it->keep && it->since_pump + 1u < it->pump_every) {
        struct pmap__rec *nx;

        if (it->ordered) {
            uint32_t slot = it->out_slot + 1u == it->window ? 0u : it->out_slot + 1u;

            /* A slot is R_DONE only while its record is alive, so no test
             * of returned < generated is needed; but with a window of one
             * the next slot is the held record's own, R_DONE as well
             * (taking it handed the record out twice). */
            nx = &it->recs[slot];
            if (nx->state != R_DONE || nx == r)
                return next_general(it, item);
            it->out_slot = slot;
        } else {
            /* The done queue holds finished records only. */
            if (it->done.head == NONE)
                return next_general(it, item);
            nx = &it->recs[it->done.head];
            it->done.head = nx->next;
            if (it->done.head == NONE)
                it->done.tail = NONE;
            nx->next = NONE;
            r->next = it->free_head;
            it->free_head = slot_of(it, r);
        }
        it->live_bytes -= r->result.len;
        r->state = R_FREE;
        r->result.len = 0;
        it->returned++;
        it->since_pump++;
        it->held = nx;
        fill(item, nx);
        return PMAP_OK;
    }
    return next_general(it, item);
}

int pmap_iter_journal(pmap_iter *it, pmap_journal *j)
{
    int rc;

    if (it == NULL || j == NULL || !pmap__is_owner(&it->owner) || it->begun || it->in_gen)
        return PMAP_EINVAL;
    if (it->jr != NULL)
        return it->jr == j ? PMAP_OK : PMAP_EINVAL;
    rc = pmap__jr_attach(j, it);
    if (rc != 0)
        return rc;
    it->jr = j;
    return PMAP_OK;
}

int pmap_iter_free(pmap_iter *it)
{
    int rc;
    uint32_t i;

    if (it == NULL)
        return PMAP_OK;
    /* From inside the generator: the pmap_next that runs it uses the
     * iterator after the generator returns. */
    if (it->in_gen && pmap__is_owner(&it->owner))
        return PMAP_EBUSY;
    rc = it->fatal;
    if (pmap__is_owner(&it->owner)) {
        /* Whatever is still running for this map is of no use any more. */
        if (!it->stopped)
            it->ops->cancel(it->be);
        it->pool->iter = NULL;
        /* Written and synced: the journal may be closed or reused now. */
        if (it->jr != NULL && pmap__jr_detach(it->jr) != 0 && rc == 0)
            rc = PMAP_EJOURNAL;
    }
    for (i = 0; i < it->fresh; i++) {
        /* After cancel(): no worker runs on any record. */
        if (it->blocks && it->recs[i].param.data != it->recs[i].param.small)
            shelve_param(it, &it->recs[i].param);
        pmap__buf_free(&it->recs[i].param);
        pmap__buf_free(&it->recs[i].result);
    }
    slots_free(it->recs, it->window);
    pmap__stash_free(&it->stash);
    free(it->batch);
    free(it->users);
    /* Only closed (in an inherited copy too): the eventfd is in no other
     * set, and the backend's descriptor stays the backend's. */
    pmap__close(&it->ev_epfd);
    pmap__close(&it->ev_efd);
    free(it);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Caller-side values and the generator's error                             */
/* ------------------------------------------------------------------------ */

int pmap_param_set_user(pmap_buf *param, void *user)
{
    struct pmap_iter *it = gen_iter;
    uintptr_t at = (uintptr_t)param, lo, off;
    size_t slot;

    /* Only the buffer of the record being generated: slot arithmetic on
     * anything else (a task's `out`, another iterator's slot) is refused
     * before it could write anywhere. */
    if (it == NULL || param == NULL)
        return PMAP_EINVAL;
    lo = (uintptr_t)it->recs;
    if (at < lo || at >= lo + (uintptr_t)it->window * sizeof(struct pmap__rec))
        return PMAP_EINVAL;
    off = at - lo;
    if (off % sizeof(struct pmap__rec) != offsetof(struct pmap__rec, param))
        return PMAP_EINVAL;
    slot = off / sizeof(struct pmap__rec);
    if (it->recs[slot].state != R_FREE)
        return PMAP_EINVAL; /* a record generated earlier, not this one */
    if (it->users == NULL) {
        it->users = calloc(it->window, sizeof *it->users);
        if (it->users == NULL)
            return PMAP_ENOMEM;
    }
    it->users[slot] = user;
    return PMAP_OK;
}

void *pmap_item_user(const pmap_iter *it, const pmap_item *item)
{
    const struct pmap__rec *r;

    if (it == NULL || item == NULL || it->users == NULL)
        return NULL;
    r = it->held;
    if (r == NULL || r->index != item->index)
        return NULL;
    return it->users[slot_of(it, r)];
}

int pmap_iter_gen_error(const pmap_iter *it)
{
    return it == NULL ? 0 : it->gen_rc;
}

/* ------------------------------------------------------------------------ */
/* Event loops                                                              */
/* ------------------------------------------------------------------------ */

/*
 * pmap_iter_fd's descriptor is an epoll set of two: the backend's own
 * descriptor (its pipes), and an eventfd standing for what needs no I/O:
 * it holds a count from the moment pmap_try_next could make progress
 * without any (an item read ahead, the end, records to generate or send)
 * until pmap_try_next returns PMAP_EAGAIN, which it does only once a pump
 * came after the last batch sent and a dispatch after that sent nothing.
 * So the eventfd costs two system calls per burst of items, none per item.
 */

static void evl_wake(struct pmap_iter *it)
{
    it->quiet = 0;
    /* Should the write fail, pmap_iter_timeout (0 while not quiet) still
     * calls the loop back at once. */
    if (it->ev_efd >= 0)
        (void)pmap__eventfd_signal(it->ev_efd);
}

static void evl_sleep(struct pmap_iter *it)
{
    it->quiet = 1;
    if (it->ev_efd >= 0)
        pmap__eventfd_drain(it->ev_efd);
}

/* One round of pmap_try_next: hand out work, and move bytes without
 * waiting unless the dispatch sent nothing new since an earlier pump of
 * this call. 1 when nothing more can happen without I/O or a deadline. */
static int try_round(struct pmap_iter *it, int pumped)
{
    uint64_t before = it->submits;
    int rc;

    if (it->stopped)
        return 1;
    it->in_step = 1;
    rc = dispatch(it);
    if (rc == 0 && pumped && it->submits == before) {
        it->in_step = 0;
        return 1;
    }
    it->jr_hit = 0;
    if (rc == 0)
        rc = it->ops->pump(it->be, 0, &it->sink);
    if (rc == 0 && it->jr != NULL)
        rc = journal_flush(it);
    it->in_step = 0;
    if (rc == PMAP_EJOURNAL)
        journal_failed(it);
    else if (rc != 0)
        fail_all(it, rc);
    return 0;
}

/* pmap_try_next when it needs no more than pmap_next's fast path does:
 * the owner known without a system call, the record held since the last
 * call only to be counted out, the next one back, no pump due, and the
 * descriptor already readable. 1 and *item filled, or 0 (nothing done). */
static int try_fast(struct pmap_iter *it, pmap_item *item)
{
    struct pmap__rec *r = it->held, *nx;

    if (!pmap__owner_surely(&it->owner) || r == NULL || r->state != R_DONE ||
        r->result.cap > it->keep || it->since_pump + 1u >= it->pump_every || it->quiet ||
        it->in_step)
        return 0;
    if (it->ordered) {
        uint32_t slot = it->out_slot + 1u == it->window ? 0u : it->out_slot + 1u;

        nx = &it->recs[slot];
        /* With a window of 1 the next slot is the held record's own. */
        if (nx == r || nx->state != R_DONE)
            return 0;
        it->out_slot = slot;
    } else {
        if (it->done.head == NONE)
            return 0;
        nx = q_pop(it, &it->done);
        r->next = it->free_head;
        it->free_head = slot_of(it, r);
    }
    it->live_bytes -= r->result.len;
    r->state = R_FREE;
    r->result.len = 0;
    it->returned++;
    it->since_pump++;
    it->held = nx;
    fill(item, nx);
    return 1;
}

int pmap_try_next(pmap_iter *it, pmap_item *item)
{
    struct pmap__rec *r;
    int pumped = 0, idle = 0;

    if (it == NULL || item == NULL)
        return PMAP_EINVAL;
    if (try_fast(it, item))
        return PMAP_OK;
    if (!pmap__is_owner(&it->owner))
        return PMAP_EINVAL;
    if (it->in_step)
        return PMAP_EBUSY;
    it->begun = 1;
    if (it->held != NULL) {
        release(it, it->held);
        it->held = NULL;
    }
    for (;;) {
        r = deliverable(it);
        if (r != NULL) {
            /* Keep the workers fed while buffered results are handed out. */
            if (!pumped && ++it->since_pump >= it->pump_every) {
                it->since_pump = 0;
                (void)try_round(it, 0);
            }
            it->held = r;
            fill(item, r);
            if (it->quiet)
                evl_wake(it);
            return PMAP_OK;
        }
        if (it->returned == it->generated && it->retry.head == NONE &&
            (it->gen_state != G_RUNNING || it->stopped)) {
            if (it->quiet)
                evl_wake(it);
            return it->fatal ? it->fatal : PMAP_DONE;
        }
        if (idle)
            break;
        it->since_pump = 0;
        idle = try_round(it, pumped);
        pumped = 1;
    }
    if (!it->quiet)
        evl_sleep(it);
    return PMAP_EAGAIN;
}

int pmap_iter_fd(pmap_iter *it)
{
    int bfd = -1, ep = -1, efd = -1, saved;

    if (it == NULL || !pmap__is_owner(&it->owner)) {
        errno = EINVAL;
        return -1;
    }
    if (it->ev_epfd >= 0)
        return it->ev_epfd;
    if (it->ops->fd != NULL) {
        bfd = it->ops->fd(it->be);
        if (bfd < 0 && errno != ENOSYS)
            return -1;
    }
    if (pmap__epoll_open(&ep) != 0 || pmap__eventfd_open(&efd, it->quiet ? 0u : 1u) != 0 ||
        pmap__epoll_add(ep, efd, 0) != 0 || (bfd >= 0 && pmap__epoll_add(ep, bfd, 0) != 0)) {
        saved = errno;
        pmap__close(&ep);
        pmap__close(&efd);
        errno = saved;
        return -1;
    }
    it->ev_epfd = ep;
    it->ev_efd = efd;
    it->ev_nofd = bfd < 0 || it->ops->timeout == NULL;
    return ep;
}

int pmap_iter_timeout(pmap_iter *it)
{
    int t;

    if (it == NULL || !pmap__is_owner(&it->owner)) {
        errno = EINVAL;
        return -1;
    }
    if (!it->quiet)
        return 0;
    if (it->ev_nofd || it->ops->timeout == NULL)
        return EVL_POLL_MS;
    t = it->ops->timeout(it->be);
    if (it->jr != NULL) {
        int jt = pmap__jr_timeout_ms(it->jr);

        if (jt >= 0 && (t < 0 || jt < t))
            t = jt;
    }
    return t;
}
