/*
 * The fork server (forkserver.c, DESIGN §8): one process, forked by the
 * caller at pmap_pool_create(), that forks every worker of the pool. The
 * spawner (spawner.c) is its only user: pool.c never sees it.
 */
#ifndef PMAP_FORKSERVER_H
#define PMAP_FORKSERVER_H

#include <sys/types.h>

struct pmap__spawner;
struct pmap__fsrv;

/*
 * Fork the server. It starts workers with `direct`, a fork-mode spawner
 * for `nslots` places, as this process's memory holds it now (the
 * server's copy must stay in fork mode: do not turn this one into a
 * server spawner before the call returns). 0 and *out, or PMAP_ESYS /
 * PMAP_ENOMEM with errno set and nothing left behind.
 */
int pmap__fsrv_start(struct pmap__fsrv **out, struct pmap__spawner *direct, int nslots);

/* As pmap__spawner_start / _reap / _kill / _fd / _poll, done by the
 * server. When the server is gone, starting fails (ECHILD) and every
 * worker counts as gone (code -1): the server's workers die with it. */
int pmap__fsrv_spawn(struct pmap__fsrv *f, int slot, pid_t *pid, int *tx, int *rx);
int pmap__fsrv_reap(struct pmap__fsrv *f, pid_t pid, int block, int *code);
void pmap__fsrv_kill(struct pmap__fsrv *f, pid_t pid, int sig);
int pmap__fsrv_fd(const struct pmap__fsrv *f);
void pmap__fsrv_poll(struct pmap__fsrv *f);

/* End the server (it reaps whatever workers it still has), reap it and
 * free everything. NULL is a no-op. */
void pmap__fsrv_stop(struct pmap__fsrv *f);
/* In a child of the host that inherited it: close this process's copy of
 * the socket, free the memory; the server is the parent's. */
void pmap__fsrv_release(struct pmap__fsrv *f);

#endif /* PMAP_FORKSERVER_H */
