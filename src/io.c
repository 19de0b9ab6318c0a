/*
 * System helpers: pipes that stay out of the host's way, I/O that survives
 * EINTR and short transfers, the SIGPIPE guard, the clock, and the registry
 * of libpmap's own descriptors.
 */
#ifdef __linux__
#define _GNU_SOURCE /* pipe2, F_SETPIPE_SZ */
#endif
#define _POSIX_C_SOURCE 200809L

#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Descriptor registry                                                      */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static int *reg_fds;
static size_t reg_len, reg_cap;

void pmap__fdreg_lock(void)
{
    pthread_mutex_lock(&reg_lock);
}

void pmap__fdreg_unlock(void)
{
    pthread_mutex_unlock(&reg_lock);
}

static int reg_add_locked(int fd)
{
    if (reg_len == reg_cap) {
        size_t ncap = reg_cap ? reg_cap * 2 : 32;
        int *p = realloc(reg_fds, ncap * sizeof *p);

        if (p == NULL)
            return PMAP_ENOMEM;
        reg_fds = p;
        reg_cap = ncap;
    }
    reg_fds[reg_len++] = fd;
    return 0;
}

static void reg_remove_locked(int fd)
{
    size_t i;

    for (i = 0; i < reg_len; i++) {
        if (reg_fds[i] == fd) {
            reg_fds[i] = reg_fds[--reg_len];
            return;
        }
    }
}

void pmap__fdreg_child(int keep1, int keep2)
{
    size_t i;

    for (i = 0; i < reg_len; i++) {
        if (reg_fds[i] != keep1 && reg_fds[i] != keep2)
            close(reg_fds[i]);
    }
    /* The worker's own registry starts empty: the parent's entries are not
     * its business, and a pool it creates registers afresh. */
    reg_len = 0;
    if (keep1 >= 0)
        reg_fds[reg_len++] = keep1;
    if (keep2 >= 0)
        reg_fds[reg_len++] = keep2;
    /* The forking thread held the lock; in the child it is the only thread. */
    pthread_mutex_init(&reg_lock, NULL);
}

/* ------------------------------------------------------------------------ */
/* Descriptors                                                              */
/* ------------------------------------------------------------------------ */

#ifndef __linux__
static int set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);

    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return -1;
    return 0;
}
#endif

/* Keep libpmap's descriptors above stdin/stdout/stderr, so that a task
 * writing to fd 1 when the host closed it cannot land in the protocol. */
static int lift_fd(int fd)
{
    int nfd;

    if (fd >= 3)
        return fd;
    nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (nfd < 0) {
        int saved = errno;

        close(fd);
        errno = saved;
        return -1;
    }
    close(fd);
    return nfd;
}

int pmap__pipe(int fds[2])
{
    int rc;
    int p[2];

    pmap__fdreg_lock();
#ifdef __linux__
    rc = pipe2(p, O_CLOEXEC);
#else
    rc = pipe(p);
    if (rc == 0 && (set_cloexec(p[0]) != 0 || set_cloexec(p[1]) != 0)) {
        int saved = errno;

        close(p[0]);
        close(p[1]);
        errno = saved;
        rc = -1;
    }
#endif
    if (rc != 0) {
        pmap__fdreg_unlock();
        return PMAP_ESYS;
    }
    p[0] = lift_fd(p[0]);
    p[1] = p[0] < 0 ? p[1] : lift_fd(p[1]);
    if (p[0] < 0 || p[1] < 0) {
        int saved = errno;

        if (p[0] >= 0)
            close(p[0]);
        else
            close(p[1]);
        pmap__fdreg_unlock();
        errno = saved;
        return PMAP_ESYS;
    }
    if (reg_add_locked(p[0]) != 0 || reg_add_locked(p[1]) != 0) {
        reg_remove_locked(p[0]);
        close(p[0]);
        close(p[1]);
        pmap__fdreg_unlock();
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    pmap__fdreg_unlock();
    fds[0] = p[0];
    fds[1] = p[1];
    return 0;
}

void pmap__close(int *fd)
{
    int saved = errno;

    if (*fd >= 0) {
        pmap__fdreg_lock();
        reg_remove_locked(*fd);
        /* Never retry close(): the descriptor is gone whatever it says. */
        close(*fd);
        pmap__fdreg_unlock();
        *fd = -1;
    }
    errno = saved;
}

int pmap__set_nonblock(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return PMAP_ESYS;
    return 0;
}

void pmap__pipe_grow(int fd, int bytes)
{
#if defined(__linux__) && defined(F_SETPIPE_SZ)
    int saved = errno;

    (void)fcntl(fd, F_SETPIPE_SZ, bytes);
    errno = saved;
#else
    (void)fd;
    (void)bytes;
#endif
}

/* ------------------------------------------------------------------------ */
/* I/O                                                                      */
/* ------------------------------------------------------------------------ */

int pmap__writev_all(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t n;

        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        n = writev(fd, iov, iovcnt > IOV_MAX ? IOV_MAX : iovcnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return PMAP_ESYS;
        }
        if (n == 0) {
            errno = EIO;
            return PMAP_ESYS;
        }
        while (n > 0 && iovcnt > 0) {
            if ((size_t)n >= iov->iov_len) {
                n -= (ssize_t)iov->iov_len;
                iov->iov_len = 0;
                iov++;
                iovcnt--;
            } else {
                iov->iov_base = (unsigned char *)iov->iov_base + n;
                iov->iov_len -= (size_t)n;
                n = 0;
            }
        }
    }
    return 0;
}

long pmap__read_once(int fd, void *buf, size_t cap)
{
    for (;;) {
        ssize_t n = read(fd, buf, cap);

        if (n >= 0)
            return (long)n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -1;
        return PMAP_ESYS;
    }
}

/* ------------------------------------------------------------------------ */
/* SIGPIPE guard                                                            */
/* ------------------------------------------------------------------------ */

void pmap__sigpipe_enter(struct pmap__sigpipe_guard *g)
{
    sigset_t set, old, pending;

    g->was_pending = 0;
    g->blocked = 0;
    g->epipe = 0;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &set, &old) != 0)
        return;
    g->blocked = !sigismember(&old, SIGPIPE);
    if (sigpending(&pending) == 0)
        g->was_pending = sigismember(&pending, SIGPIPE);
}

void pmap__sigpipe_leave(struct pmap__sigpipe_guard *g)
{
    int saved = errno;

    if (g->epipe && !g->was_pending) {
        /* Our write raised it (unless SIGPIPE is ignored): take it back
         * before unblocking, so that the host never sees it. */
        sigset_t set;
        struct timespec zero = {0, 0};

        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    if (g->blocked) {
        sigset_t set;

        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    }
    errno = saved;
}

/* ------------------------------------------------------------------------ */
/* Clock                                                                    */
/* ------------------------------------------------------------------------ */

uint64_t pmap__now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Fork generation                                                          */
/* ------------------------------------------------------------------------ */

/* Starts at 1 so that 0 can mean "no handler"; only ever grows, and only in
 * a child, where the forking thread is the only one. */
volatile unsigned pmap__fork_gen_value = 1;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static int fork_hooked;

static void fork_child(void)
{
    unsigned v = pmap__fork_gen_value + 1u;

    pmap__fork_gen_value = v ? v : 1u;
}

static void fork_hook(void)
{
    fork_hooked = pthread_atfork(NULL, NULL, fork_child) == 0;
}

unsigned pmap__fork_gen(void)
{
    (void)pthread_once(&fork_once, fork_hook);
    return fork_hooked ? pmap__fork_gen_value : 0u;
}

void pmap__owner_init(struct pmap__owner *o)
{
    o->fork_gen = pmap__fork_gen();
    o->pid = getpid();
}
