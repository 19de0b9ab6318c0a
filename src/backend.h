/*
 * The seam between the iterator (iter.c: window, dispatch, reorder,
 * per-item status) and the places where tasks run. The iterator knows
 * nothing else about them: a backend may run its workers as local
 * processes (pool.c), through a fork server, or on other machines.
 *
 * A backend offers `nworkers` worker places, numbered from 0. The
 * iterator hands each place batches of records (submit), and the backend
 * reports every record back through the sink exactly once per submission:
 * finished (done), or to be run again elsewhere through no fault of its
 * own (retry). A place may be unable to take records for a while (room 0:
 * its worker is starting, stopping or being replaced); the backend brings
 * it back by itself inside pump().
 */
#ifndef PMAP_BACKEND_H
#define PMAP_BACKEND_H

#include "buf.h"
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

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
    unsigned state; /* the iterator's; a backend never reads it */
    struct pmap_buf param;
    int code;
    uint16_t tries; /* re-runs caused by failures that no record could be blamed for */
    /* 1: the record ran to the end once and its result was lost with its
     * worker. It runs again only in a batch whose records all have it set,
     * and the backend then returns each result as soon as it is ready, so
     * that no crash of a later batch-mate can lose it a second time. */
    uint16_t lost;
    uint32_t next;  /* the iterator's intrusive queue link */
    uint32_t retries; /* the iterator's: re-runs after this record's own crash or timeout */
};

/* How a backend reports to the iterator. Called only from within pump()
 * (never from cancel()). */
struct pmap__sink {
    void *it;
    /* The record is finished: r->status, r->code and r->result are set. */
    void (*done)(void *it, struct pmap__rec *r);
    /* done() for n records at once (a frame's worth of tiny results costs
     * one indirect call instead of n). May be NULL: then done() each. */
    void (*done_many)(void *it, struct pmap__rec *const *recs, uint32_t n);
    /* The record did not finish on its worker through no fault of its own:
     * queue it to run again (r->lost set if it had run to the end). */
    void (*retry)(void *it, struct pmap__rec *r);
    /* A worker ran `count` records in `task_us` microseconds (sizes the
     * adaptive batches). May be NULL. */
    void (*timing)(void *it, uint32_t count, uint32_t task_us);
    /* Blocks for results larger than their slot's buffer. May be NULL. */
    struct pmap__stash *stash;
};

/* What a backend is created from: the pool's settings, resolved. */
struct pmap__backend_cfg {
    pmap_task_fn fn;
    void *ctx;
    const pmap_options *opt; /* this library's size; lives as long as the pool */
    int nworkers;            /* >= 1 */
    size_t max_record;
    int id_base;    /* pmap_worker_id() of place 0 (places are id_base + w) */
    void *arg;      /* backend-specific (e.g. a communicator); NULL for most */
};

/*
 * Records handed to submit() stay owned by the caller of the operations
 * (the iterator); the backend references them until it reports them
 * through the sink or cancel() returns. Every operation but create runs in
 * the process that created the backend, one thread at a time.
 */
struct pmap__backend_ops {
    /* Start the workers and wait until they are ready. 0 and *be, or a
     * status with errno set (ECHILD: a worker failed to start); nothing
     * is left behind on failure. */
    int (*create)(const struct pmap__backend_cfg *cfg, void **be);
    /* Stop every worker, wait for them, free everything. */
    void (*destroy)(void *be);
    /* In a process that inherited the backend through the host's fork():
     * free this process's copies (memory, descriptors) and touch no
     * worker, which belongs to the parent. */
    void (*release)(void *be);
    /* Number of worker places (fixed for the backend's life). */
    int (*nworkers)(void *be);
    /* Records place w may take now: 0 when it cannot; otherwise the rest
     * of its allowance (a worker may be recycled after a number of
     * records), or UINT32_MAX. */
    uint32_t (*room)(void *be, int w);
    /* Records submitted to place w and not yet reported. */
    uint32_t (*inflight)(void *be, int w);
    /* Queue a batch for place w (room() permitting). 0 or a fatal status.
     * Either every record of the batch is lost or none is (recs[0] says). */
    int (*submit)(void *be, int w, struct pmap__rec **recs, uint32_t n);
    /* Bring places back, move bytes, wait up to timeout_ms (-1: until
     * something happens) for results and faults, report them to the sink.
     * 0 or a fatal status (PMAP_ESYS, PMAP_EWORKER: workers cannot be
     * started, PMAP_ENOMEM). */
    int (*pump)(void *be, int timeout_ms, const struct pmap__sink *sink);
    /* Forget every record in flight, reporting none of them: busy workers
     * are stopped (and replaced later); returns once they are gone. */
    void (*cancel)(void *be);
    /* A map starts: failures counted for earlier maps are forgotten. */
    void (*begin)(void *be);
    /* Event-loop support (DESIGN §10); either may be NULL: not offered.
     * fd: a descriptor of the backend's (it closes it at destroy) that
     * polls readable, level-triggered, whenever pump(0) would have
     * something to read, a blocked write that can go on, or a worker's
     * end to notice; -1 + errno when it has none (the iterator then polls
     * on a short interval). The first call may create it. */
    int (*fd)(void *be);
    /* Milliseconds until pump() must run even if fd stays quiet (time
     * limits, grace periods, exits to reap, workers to start), as the last
     * pump() left them: 0 when due, -1 when there is none. */
    int (*timeout)(void *be);
    /* The task of the next map's records, fn NULL: the pool's own (with
     * its ctx). Called by every map start; a backend whose workers cannot
     * run a function pointer of this process leaves it NULL, and maps with
     * a task of their own are refused (EINVAL). */
    void (*set_task)(void *be, pmap_task_fn fn, void *ctx);
    /* The automatic window (opt.window 0) this backend needs, in records,
     * when it needs more than the iterator's own: a backend whose batches
     * take a long round trip (another machine) keeps more of them in
     * flight. May be NULL or return 0: the iterator's own. */
    unsigned (*auto_window)(void *be);
    /* Shared parameter blocks; both NULL: not offered. block_get: memory
     * for a parameter of up to *cap bytes (at least max_record) that
     * submit() then sends without copying it, or NULL (none free). The
     * block is the caller's until it gives it back with block_put, once
     * the record's result is reported or the record is dropped after
     * cancel(); workers only read it. block_put: 1 when `data` is such a
     * block (now given back), 0 when it is not (heap memory). */
    void *(*block_get)(void *be, size_t *cap);
    int (*block_put)(void *be, void *data);
};

/* Parameters this large make block_get worth a call (the process
 * backend's threshold for shared memory, arena.h). */
#define PMAP__BLOCK_MIN ((size_t)1 << 20)

/* The process backend (pool.c): forked workers behind pipes. */
extern const struct pmap__backend_ops pmap__process_ops;

#endif /* PMAP_BACKEND_H */
