/*
 * Who starts, signals and reaps the worker processes of the process
 * backend (pool.c), chosen by pmap_options.start_method (DESIGN §8):
 * either the caller itself (fork mode), or a fork server that the caller
 * forked once at pmap_pool_create() (forkserver.c). pool.c asks the
 * spawner for these three things only and is otherwise the same in both
 * modes.
 */
#ifndef PMAP_SPAWNER_H
#define PMAP_SPAWNER_H

#include "worker.h"

#include <sys/types.h>

struct pmap__spawner;

/*
 * A spawner for `nslots` worker places. `tmpl` is what every worker runs
 * with; place `slot` gets id tmpl->id + slot and slot tmpl->shm[slot]
 * (memory mapped MAP_SHARED by the caller before this call, so that
 * workers forked by a server share it too). *tmpl is copied; what it
 * points to must outlive the spawner. In server mode this forks the
 * server. 0 and *out, or a status with errno set; nothing left behind.
 */
int pmap__spawner_new(struct pmap__spawner **out, int start_method,
                      const struct pmap__worker_args *tmpl, int nslots);

/* Start a worker at `slot`: as pmap__worker_spawn() (*pid, *tx, *rx), 0 or
 * a status with errno set. `arena_fd`: its arena (worker.h), or -1; fork
 * mode only (a server does not receive descriptors yet: pass -1). */
int pmap__spawner_start(struct pmap__spawner *s, int slot, int arena_fd, pid_t *pid, int *tx,
                        int *rx);

/* Wait for worker `pid` (block: until it is gone). 1: gone, *code its
 * signal number or exit status (-1 if unknowable: reaped behind our
 * back); 0: still running. Once it said 1, never ask again. */
int pmap__spawner_reap(struct pmap__spawner *s, pid_t pid, int block, int *code);

/* Send `sig` to worker `pid`, which reap() has not reported gone. */
void pmap__spawner_kill(struct pmap__spawner *s, pid_t pid, int sig);

/* A descriptor that polls readable when reap() may have news (the fork
 * server tells of exits as they happen), or -1: then exits must be looked
 * for now and then (fork mode). */
int pmap__spawner_fd(const struct pmap__spawner *s);
/* The descriptor polled readable: take the news in, so that it stops
 * being readable. */
void pmap__spawner_poll(struct pmap__spawner *s);

/* Every worker has been reaped: end the spawner (a server exits and is
 * reaped) and free it. NULL is a no-op. */
void pmap__spawner_free(struct pmap__spawner *s);

/* In a process that inherited the spawner through the host's fork():
 * free this process's copies only. NULL is a no-op. */
void pmap__spawner_release(struct pmap__spawner *s);

/* In the fork server, whose host ignored SIGCHLD: new workers ignore it
 * again (the server itself must not). */
void pmap__spawner_sigchld_ignored(struct pmap__spawner *s);

/* waitpid() for exactly `pid`, retried on EINTR: as pmap__spawner_reap.
 * ECHILD (the host ignores SIGCHLD, or reaped it) counts as gone, -1. */
int pmap__wait_pid(pid_t pid, int block, int *code);

#endif /* PMAP_SPAWNER_H */
