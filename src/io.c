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
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#endif
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Descriptor registry                                                      */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
/*
 * A bitmap of descriptor numbers: adding and removing cost O(1) whatever
 * the number of pools and workers, and a new worker closes the set in runs
 * of consecutive numbers (libpmap's pipes are made in bursts, so the runs
 * are long) with one close_range() each. A list closed one by one cost
 * every new worker one system call per descriptor of every other worker:
 * creating n workers was quadratic.
 */
#define REG_BITS 64u
static uint64_t *reg_map;
static size_t reg_words; /* reg_map covers descriptors [0, 64 * reg_words) */

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
    size_t w = (size_t)fd / REG_BITS;

    if (w >= reg_words) {
        size_t nwords = reg_words ? reg_words : 4;
        uint64_t *p;

        while (nwords <= w)
            nwords *= 2;
        p = realloc(reg_map, nwords * sizeof *p);
        if (p == NULL)
            return PMAP_ENOMEM;
        memset(p + reg_words, 0, (nwords - reg_words) * sizeof *p);
        reg_map = p;
        reg_words = nwords;
    }
    reg_map[w] |= (uint64_t)1 << ((unsigned)fd % REG_BITS);
    return 0;
}

static void reg_remove_locked(int fd)
{
    size_t w = (size_t)fd / REG_BITS;

    if (fd >= 0 && w < reg_words)
        reg_map[w] &= ~((uint64_t)1 << ((unsigned)fd % REG_BITS));
}

static int reg_has(int fd)
{
    size_t w = (size_t)fd / REG_BITS;

    return fd >= 0 && w < reg_words && (reg_map[w] >> ((unsigned)fd % REG_BITS) & 1u);
}

int pmap__fdreg_add(int fd)
{
    int rc;

    pmap__fdreg_lock();
    rc = reg_add_locked(fd);
    pmap__fdreg_unlock();
    return rc;
}

void pmap__fdreg_remove(int fd)
{
    pmap__fdreg_lock();
    reg_remove_locked(fd);
    pmap__fdreg_unlock();
}

/* Close descriptors [lo, hi]: one system call where the kernel has
 * close_range(), else one per descriptor. */
static void close_run(int lo, int hi)
{
#if defined(__linux__) && defined(SYS_close_range)
    if (syscall(SYS_close_range, (unsigned)lo, (unsigned)hi, 0u) == 0)
        return;
#endif
    for (; lo <= hi; lo++)
        (void)close(lo);
}

void pmap__fdreg_child(int keep1, int keep2, int keep3)
{
    int fd, lo = -1, end = (int)(reg_words * REG_BITS);

    /* The keepers leave the set first, so they break the runs. */
    reg_remove_locked(keep1);
    reg_remove_locked(keep2);
    reg_remove_locked(keep3);
    for (fd = 0; fd < end; fd++) {
        int in = reg_has(fd);

        if (in && lo < 0) {
            lo = fd;
        } else if (!in && lo >= 0) {
            close_run(lo, fd - 1);
            lo = -1;
        }
        /* Skip a word without descriptors (no run is open here). */
        if (!in && fd % (int)REG_BITS == 0 && reg_map[(size_t)fd / REG_BITS] == 0)
            fd += (int)REG_BITS - 1;
    }
    if (lo >= 0)
        close_run(lo, end - 1);
    /* The worker's own registry holds its two descriptors only: the
     * parent's entries are not its business, and a pool it creates
     * registers afresh. */
    if (reg_words > 0)
        memset(reg_map, 0, reg_words * sizeof *reg_map);
    if (keep1 >= 0)
        (void)reg_add_locked(keep1);
    if (keep2 >= 0)
        (void)reg_add_locked(keep2);
    if (keep3 >= 0)
        (void)reg_add_locked(keep3);
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

/* Both ends of a new pipe or socket pair close-on-exec, or both closed:
 * 0 or -1 with errno. */
static int set_cloexec_pair(int p[2])
{
    if (set_cloexec(p[0]) != 0 || set_cloexec(p[1]) != 0) {
        int saved = errno;

        close(p[0]);
        close(p[1]);
        errno = saved;
        return -1;
    }
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
    if (rc == 0)
        rc = set_cloexec_pair(p);
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

int pmap__open(const char *path, int flags, unsigned mode, int *out)
{
    int fd, rc = 0;

    pmap__fdreg_lock();
    do
        fd = open(path, flags | O_CLOEXEC, (mode_t)mode);
    while (fd < 0 && errno == EINTR);
    if (fd >= 0)
        fd = lift_fd(fd);
    if (fd < 0) {
        rc = PMAP_ESYS;
    } else if (reg_add_locked(fd) != 0) {
        close(fd);
        errno = ENOMEM;
        rc = PMAP_ENOMEM;
    }
    pmap__fdreg_unlock();
    if (rc == 0)
        *out = fd;
    return rc;
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

/* A descriptor just made (or -1 with errno) becomes libpmap's own: lifted
 * to 3 or above and registered. Runs with the registry lock held from
 * before the descriptor existed, so that no worker forked by another
 * thread meanwhile inherits it unregistered. */
static int adopt_locked(int fd, int *out)
{
    if (fd >= 0)
        fd = lift_fd(fd);
    if (fd < 0)
        return PMAP_ESYS;
    if (reg_add_locked(fd) != 0) {
        close(fd);
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    *out = fd;
    return 0;
}

int pmap__memfd_open(const char *name, int *fd)
{
#if defined(__linux__) && defined(MFD_CLOEXEC)
    int rc;

    pmap__fdreg_lock();
    rc = adopt_locked(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), fd);
    pmap__fdreg_unlock();
    return rc;
#else
    (void)name;
    (void)fd;
    errno = ENOSYS;
    return PMAP_ESYS;
#endif
}

int pmap__epoll_open(int *fd)
{
#ifdef __linux__
    int rc;

    pmap__fdreg_lock();
    rc = adopt_locked(epoll_create1(EPOLL_CLOEXEC), fd);
    pmap__fdreg_unlock();
    return rc;
#else
    (void)fd;
    errno = ENOSYS;
    return PMAP_ESYS;
#endif
}

int pmap__eventfd_open(int *fd, unsigned initval)
{
#ifdef __linux__
    int rc;

    pmap__fdreg_lock();
    rc = adopt_locked(eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK), fd);
    pmap__fdreg_unlock();
    return rc;
#else
    (void)fd;
    (void)initval;
    errno = ENOSYS;
    return PMAP_ESYS;
#endif
}

int pmap__epoll_add(int ep, int fd, int writable)
{
#ifdef __linux__
    struct epoll_event ev;

    memset(&ev, 0, sizeof ev);
    ev.events = writable ? EPOLLOUT : EPOLLIN;
    ev.data.fd = fd;
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : PMAP_ESYS;
#else
    (void)ep;
    (void)fd;
    (void)writable;
    errno = ENOSYS;
    return PMAP_ESYS;
#endif
}

void pmap__epoll_del(int ep, int fd)
{
#ifdef __linux__
    struct epoll_event ev; /* kernels before 2.6.9 want one even here */
    int saved = errno;

    memset(&ev, 0, sizeof ev);
    /* Fails only for a descriptor that is not in the set: nothing to do. */
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, fd, &ev);
    errno = saved;
#else
    (void)ep;
    (void)fd;
#endif
}

int pmap__eventfd_signal(int fd)
{
    uint64_t one = 1;

    for (;;) {
        ssize_t n = write(fd, &one, sizeof one);

        if (n == (ssize_t)sizeof one)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n >= 0)
            errno = EIO;
        return PMAP_ESYS;
    }
}

void pmap__eventfd_drain(int fd)
{
    uint64_t v;
    int saved = errno;

    /* Non-blocking: EAGAIN means it was empty already, and any other
     * failure leaves it readable, which costs a spurious wakeup only. */
    while (read(fd, &v, sizeof v) < 0 && errno == EINTR)
        ;
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

long pmap__read2_once(int fd, void *a, size_t alen, void *b, size_t blen)
{
    struct iovec iov[2];

    iov[0].iov_base = a;
    iov[0].iov_len = alen;
    iov[1].iov_base = b;
    iov[1].iov_len = blen;
    for (;;) {
        ssize_t n = readv(fd, iov, 2);

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

/* ------------------------------------------------------------------------ */
/* Children                                                                 */
/* ------------------------------------------------------------------------ */

pid_t pmap__fork(int keep1, int keep2, int keep3, sigset_t *old)
{
    sigset_t all;
    pid_t pid;
    int saved;

    /* Nothing buffered in this process's stdio may be written twice. */
    fflush(NULL);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, old);
    pmap__fdreg_lock();
    pid = fork();
    if (pid == 0) {
        pmap__fdreg_child(keep1, keep2, keep3);
        return 0;
    }
    saved = errno;
    pmap__fdreg_unlock();
    pthread_sigmask(SIG_SETMASK, old, NULL);
    errno = saved;
    return pid;
}

int pmap__pidfd_open(pid_t pid)
{
#if defined(__linux__) && defined(SYS_pidfd_open)
    long fd;
    int out = -1;

    /* Registered from birth: a worker forked meanwhile must not keep it. */
    pmap__fdreg_lock();
    fd = syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0 && adopt_locked((int)fd, &out) != 0)
        out = -1;
    pmap__fdreg_unlock();
    return out;
#else
    (void)pid;
    return -1;
#endif
}

int pmap__parent_pidfd(pid_t parent)
{
    int fd = pmap__pidfd_open(parent);

    /* Opened after the fork: still our parent only if we were not
     * reparented in between. */
    if (getppid() != parent) {
        pmap__close(&fd);
        return -2;
    }
    return fd;
}

/* ------------------------------------------------------------------------ */
/* Sockets with descriptors                                                 */
/* ------------------------------------------------------------------------ */

#define MSG_FDS_MAX 2

int pmap__socketpair(int fds[2])
{
    int sv[2], rc, type = SOCK_STREAM;

#ifdef __linux__
    type |= SOCK_CLOEXEC;
#endif
    pmap__fdreg_lock();
    rc = socketpair(AF_UNIX, type, 0, sv);
#ifndef __linux__
    if (rc == 0)
        rc = set_cloexec_pair(sv);
#endif
    if (rc != 0) {
        pmap__fdreg_unlock();
        return PMAP_ESYS;
    }
    rc = adopt_locked(sv[0], &fds[0]);
    if (rc != 0) {
        close(sv[1]);
    } else {
        rc = adopt_locked(sv[1], &fds[1]);
        if (rc != 0) {
            reg_remove_locked(fds[0]);
            close(fds[0]);
        }
    }
    pmap__fdreg_unlock();
    return rc;
}

int pmap__msg_send(int sock, const void *buf, size_t len, const int *fds, int nfds)
{
    union {
        struct cmsghdr h;
        unsigned char b[CMSG_SPACE(MSG_FDS_MAX * sizeof(int))];
    } ctl;
    const unsigned char *p = buf;
    size_t off = 0;

    while (off < len) {
        struct msghdr m;
        struct iovec iov;
        ssize_t n;

        memset(&m, 0, sizeof m);
        iov.iov_base = (void *)(p + off);
        iov.iov_len = len - off;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        if (off == 0 && nfds > 0) {
            struct cmsghdr *c;

            memset(&ctl, 0, sizeof ctl);
            m.msg_control = ctl.b;
            m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
            c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
            memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
        }
        n = sendmsg(sock, &m, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return PMAP_ESYS;
        }
        off += (size_t)n;
    }
    return 0;
}

/* The descriptors of a received control message become ours (lifted,
 * registered: the registry lock is held) up to maxfds; *bad when there
 * were more. (A set the kernel cut short, MSG_CTRUNC, because this
 * process had no descriptor left, is only shorter: the caller sees it in
 * the count.) */
static void take_fds_locked(struct msghdr *m, int *fds, int maxfds, int *nfds, int *bad)
{
    struct cmsghdr *c;

    for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
        size_t i, k;

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < k; i++) {
            int fd;

            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
#ifndef __linux__
            (void)set_cloexec(fd);
#endif
            if (*nfds >= maxfds) {
                close(fd);
                *bad = 1;
            } else if (adopt_locked(fd, &fds[*nfds]) == 0) {
                (*nfds)++;
            } else {
                *bad = 1;
            }
        }
    }
}

int pmap__msg_recv(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int wait)
{
    union {
        struct cmsghdr h;
        unsigned char b[CMSG_SPACE(MSG_FDS_MAX * sizeof(int))];
    } ctl;
    unsigned char *p = buf;
    size_t off = 0;
    int got = 0, bad = 0, flags = MSG_DONTWAIT, i;

#ifdef __linux__
    flags |= MSG_CMSG_CLOEXEC;
#endif
    if (maxfds > MSG_FDS_MAX)
        maxfds = MSG_FDS_MAX;
    while (off < len) {
        struct pollfd pfd = {sock, POLLIN, 0};
        struct msghdr m;
        struct iovec iov;
        ssize_t n;

        /* Wait outside the registry lock (a fork server may take a while
         * to answer); then receive under it, so that descriptors arrive
         * registered before any other thread can fork a worker. Once a
         * message has begun, the rest is waited for in any case. */
        int rc = poll(&pfd, 1, wait || off > 0 ? -1 : 0);

        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0)
            goto fail;
        if (rc == 0)
            return -1;
        memset(&m, 0, sizeof m);
        iov.iov_base = p + off;
        iov.iov_len = len - off;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl.b;
        m.msg_controllen = sizeof ctl.b;
        pmap__fdreg_lock();
        n = recvmsg(sock, &m, flags);
        if (n >= 0)
            take_fds_locked(&m, fds, maxfds, &got, &bad);
        pmap__fdreg_unlock();
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!wait && off == 0)
                return -1;
            continue;
        }
        if (n < 0)
            goto fail;
        if (n == 0) {
            if (off == 0 && got == 0)
                return 0;
            errno = EPROTO;
            goto fail;
        }
        off += (size_t)n;
    }
    if (bad) {
        errno = EPROTO;
        goto fail;
    }
    if (nfds != NULL)
        *nfds = got;
    return 1;
fail:
    for (i = 0; i < got; i++)
        pmap__close(&fds[i]);
    return PMAP_ESYS;
}
