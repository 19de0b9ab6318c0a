/*
 * The worker program (worker.c): read batches of parameters, run the task
 * on each, frame the results, watch the caller. It knows nothing of the
 * pool that started it, so the process pool, a fork server and a serving
 * MPI rank all start the very same program with pmap__worker_spawn().
 */
#ifndef PMAP_WORKER_H
#define PMAP_WORKER_H

#include "internal.h"

#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Written by a worker, read by whoever started it, in memory they share
 * (one cache line per worker): which record runs and since when, so that
 * a crash or a timeout is pinned on the exact record. */
struct pmap__shm_slot {
    _Atomic uint64_t started;  /* records the current process has begun */
    _Atomic uint64_t start_ns; /* CLOCK_MONOTONIC at the current record's start; 0: idle */
    /* Written by the caller: results it has read, so the worker may reuse
     * their regions of its arena (arena.h). */
    _Atomic uint64_t consumed;
    _Atomic uint64_t pad[5];
};

/* Everything a worker runs with. */
struct pmap__worker_args {
    pmap_task_fn fn;
    void *ctx;
    int (*init)(void *ctx);   /* worker_init, or NULL */
    void (*fini)(void *ctx);  /* worker_exit, or NULL */
    unsigned task_timeout_ms; /* 0: none; else every start is timed */
    size_t max_worker_rss;    /* 0: none */
    size_t max_record;
    int id;                     /* what pmap_worker_id() returns in it */
    struct pmap__shm_slot *shm; /* its slot */
    /* Ignore SIGCHLD in the worker: the host did, but the fork server that
     * forks it cannot (it must collect exit statuses). */
    int sigchld_ignored;
    /* Its arena (arena.h): a memfd of two halves of arena_half bytes that
     * the worker maps and closes, or -1: records travel through the pipes
     * only. A starter that cannot make one before the fork (a fork server,
     * which has no way yet to receive one from the caller) passes -1. */
    int arena_fd;
    size_t arena_half;
    /* The pool's shared parameter blocks (arena.h), which the worker
     * inherits read-only at these addresses; NULL: none. */
    const unsigned char *blocks_base;
    size_t blocks_size;
};

/* Exit statuses of the library's own making. */
#define PMAP__EXIT_INIT 120   /* worker_init failed */
#define PMAP__EXIT_PROTO 121  /* the caller's stream was malformed */
#define PMAP__EXIT_ORPHAN 122 /* the caller died */
#define PMAP__EXIT_IO 123     /* the result pipe failed */

/*
 * Start a worker process: two pipes, fork(), and in the child the worker
 * program. Returns 0 with *pid, *tx (parameters in, the write end) and *rx
 * (results out, the read end), both non-blocking, registered and >= 3; or
 * PMAP_ESYS / PMAP_ENOMEM with errno set and nothing left behind. The new
 * process watches this one: it exits when this process is gone.
 */
int pmap__worker_spawn(const struct pmap__worker_args *a, pid_t *pid, int *tx, int *rx);

/* In a new child of libpmap's (a worker, a fork server): host signal
 * handlers reset to the default action, ignored signals kept ignored,
 * SIGINT ignored (Ctrl-C is the host's decision). */
void pmap__child_signals(void);

#endif /* PMAP_WORKER_H */
