/*
 * System helpers (io.c): descriptors that stay out of the host's way, I/O
 * that survives EINTR and short transfers, the SIGPIPE guard, the clock,
 * the fork generation and the registry of libpmap's own descriptors.
 */
#ifndef PMAP_IO_H
#define PMAP_IO_H

#include "internal.h"

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* A pipe whose ends are close-on-exec, numbered >= 3 and registered as
 * libpmap's own (so every worker closes them). 0 or PMAP_ESYS/ENOMEM. */
int pmap__pipe(int fds[2]);
/* open(path, flags | O_CLOEXEC, mode) as libpmap's own descriptor:
 * numbered >= 3 and registered under the registry lock, so no worker
 * forked meanwhile by another thread inherits it unregistered. 0 and *fd,
 * or PMAP_ESYS (errno from open) / PMAP_ENOMEM. */
int pmap__open(const char *path, int flags, unsigned mode, int *fd);
/* Unregister and close *fd (if >= 0), then set it to -1. errno preserved. */
void pmap__close(int *fd);
/* An epoll instance (close-on-exec) and a non-blocking, close-on-exec
 * eventfd holding `initval`, numbered >= 3 and registered like pmap__pipe's
 * ends, into *fd. 0, or PMAP_ESYS (ENOSYS where Linux's calls are missing)
 * or PMAP_ENOMEM. */
int pmap__epoll_open(int *fd);
int pmap__eventfd_open(int *fd, unsigned initval);
/* A memfd (close-on-exec, sealable), numbered >= 3 and registered like
 * pmap__pipe's; ENOSYS where there is none. 0, PMAP_ESYS or PMAP_ENOMEM. */
int pmap__memfd_open(const char *name, int *fd);
/* Watch fd in the epoll set ep, level-triggered, for input (writable 0)
 * or for room to write. 0 or PMAP_ESYS. */
int pmap__epoll_add(int ep, int fd, int writable);
/* Stop watching fd (before closing it). errno preserved. */
void pmap__epoll_del(int ep, int fd);
/* Make the eventfd readable (0 or PMAP_ESYS), or empty it again. */
int pmap__eventfd_signal(int fd);
void pmap__eventfd_drain(int fd);
int pmap__set_nonblock(int fd);
/* Ask for a larger pipe buffer where the kernel allows; failure is harmless. */
void pmap__pipe_grow(int fd, int bytes);

/* Blocking write of everything, iovecs included (worker side). 0 or ESYS. */
int pmap__writev_all(int fd, struct iovec *iov, int iovcnt);
/* One read, retried on EINTR: >0 bytes, 0 EOF, -1 would block, PMAP_ESYS. */
long pmap__read_once(int fd, void *buf, size_t cap);
/* pmap__read_once into a, then b (readv): one call for a payload read in
 * place and the headers after it. */
long pmap__read2_once(int fd, void *a, size_t alen, void *b, size_t blen);

/* Guard against SIGPIPE around writes to pipes whose reader may be gone:
 * blocks SIGPIPE in this thread and, on leaving, discards a SIGPIPE that our
 * writes raised (never one that was pending before). */
struct pmap__sigpipe_guard {
    int was_pending;
    int blocked; /* the guard blocked it (it was not blocked already) */
    int epipe;   /* set by the writer when a write failed with EPIPE */
};
void pmap__sigpipe_enter(struct pmap__sigpipe_guard *g);
void pmap__sigpipe_leave(struct pmap__sigpipe_guard *g);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t pmap__now_ns(void);
#define PMAP__NS_PER_MS 1000000u
#define PMAP__NS_PER_S 1000000000u

/* A number that changes in every child forked after the first call (a
 * pthread_atfork child handler bumps it), so that "am I still the process
 * that made this?" costs a load instead of a getpid() system call on the
 * hot path. Returns 0 when the handler could not be installed: then the
 * caller must ask getpid() every time. */
unsigned pmap__fork_gen(void);
extern volatile unsigned pmap__fork_gen_value;

/* Who made an object, to tell later whether this process is still that
 * one (an object inherited through the host's fork() is inert). */
struct pmap__owner {
    pid_t pid;
    unsigned fork_gen; /* pmap__fork_gen() then; 0 (never a generation): ask getpid() */
};
void pmap__owner_init(struct pmap__owner *o);
/* The hot path's half of pmap__is_owner: a load, no system call. False
 * also when it cannot tell (fork_gen 0 never matches: the value is never
 * 0); the caller then takes its general path, which asks pmap__is_owner. */
static inline int pmap__owner_surely(const struct pmap__owner *o)
{
    return o->fork_gen == pmap__fork_gen_value;
}
/* True in the process that made it. No system call while no fork has
 * happened since. */
static inline int pmap__is_owner(const struct pmap__owner *o)
{
    if (pmap__owner_surely(o))
        return 1;
    return o->pid == getpid();
}

/* The registry of libpmap's descriptors, so that a new worker can close
 * every descriptor of every pool but its own. */
void pmap__fdreg_lock(void);
void pmap__fdreg_unlock(void);
/* Register (or forget) a descriptor libpmap opened by other means than
 * pmap__pipe, so that new workers close it too. 0 or PMAP_ENOMEM. */
int pmap__fdreg_add(int fd);
void pmap__fdreg_remove(int fd);
/* In a freshly forked worker, with the registry lock held by the fork:
 * close every registered descriptor except keep1, keep2 and keep3 (-1:
 * none), and leave the worker with an unlocked registry of those alone. */
void pmap__fdreg_child(int keep1, int keep2, int keep3);

/* fork() for libpmap's own children (workers, a fork server): stdio
 * flushed first, every signal blocked across it (*old: the mask before),
 * the registry locked so no descriptor is made half-registered meanwhile.
 * In the child (0) every registered descriptor but keep1, keep2 and
 * keep3 (-1: none) is closed and every signal is still blocked; in the parent (the pid, or -1
 * with errno) the mask is back to *old. */
pid_t pmap__fork(int keep1, int keep2, int keep3, sigset_t *old);

/* A descriptor that polls readable once process `pid` has exited (a
 * Linux pidfd, registered), or -1 where there is none. */
int pmap__pidfd_open(pid_t pid);

/* A descriptor that polls readable once our parent `parent` has exited
 * (a Linux pidfd, registered), -1 where there is none, or -2 when we have
 * already been reparented (then `parent` itself may have been reused). */
int pmap__parent_pidfd(pid_t parent);

/* A connected pair of blocking stream sockets (AF_UNIX), close-on-exec,
 * >= 3 and registered. 0 or PMAP_ESYS/ENOMEM. */
int pmap__socketpair(int fds[2]);
/* Send len bytes and nfds (<= 2) descriptors in one message, retried on
 * EINTR and short writes; never raises SIGPIPE. 0 or PMAP_ESYS. */
int pmap__msg_send(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* Receive exactly len bytes (with `wait` 0: -1 at once when no message
 * has begun to arrive; else as long as it takes), with up to
 * maxfds (<= 2) descriptors sent with them into fds[0 .. *nfds): made
 * close-on-exec, >= 3 and registered; fewer than were sent when this
 * process ran out of descriptors (the kernel drops the rest). Returns 1,
 * 0 at EOF, or PMAP_ESYS (EPROTO: a message cut short or more
 * descriptors than maxfds). */
int pmap__msg_recv(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int wait);

#endif /* PMAP_IO_H */
