/*
 * The fork server (DESIGN §8). pmap_pool_create() in server mode forks
 * this one process, before any worker; from then on the server forks
 * every worker of the pool, the first ones and every replacement, from
 * its single-threaded copy of the caller's memory as it was at create.
 * So locks that other threads of the host take later are never copied
 * locked into a worker, every worker sees one snapshot, and a replacement
 * costs the caller no fork (no page-table copy of a big heap on its
 * thread).
 *
 * Mechanism: the server makes each worker's pipes itself, exactly as fork
 * mode does (pmap__worker_spawn), and passes the caller's two ends over a
 * Unix stream socket with SCM_RIGHTS. From then on the caller talks to
 * the worker directly, through the same non-blocking pipes as in fork
 * mode: no record is copied through the server, so throughput and latency
 * of a map are fork mode's, and the server is on the path only of starts,
 * signals and exits, which are rare. (A server that owned the pipes and
 * relayed the bytes would cost every record two more copies and a context
 * switch.)
 *
 * Requests come from the caller's one thread at a time:
 *   SPAWN slot -> err, pid, and the worker's tx and rx descriptors
 *   KILL  pid sig
 *   QUIT       (the server kills and reaps what it has left, exits)
 * and the server tells of every exit, unasked, as soon as it has reaped
 * the worker (a pidfd per worker wakes it; without pidfds it looks every
 * EXIT_POLL_MS):
 *   EXIT  pid code (signal number or exit status)
 * The caller keeps those notes until pool.c asks about the pid, and polls
 * the socket with the pipes, so that waiting for an exit costs it no
 * wakeups and no round trip.
 *
 * Pid reuse: only the server can reap its workers, so only the server can
 * signal them safely. It keeps the pids it has forked and not yet reaped,
 * and signals a pid only while it is in that set: a KILL that comes after
 * the worker was reaped is dropped instead of hitting a recycled pid.
 *
 * Caller death: the server watches the caller with a pidfd (Linux; else
 * getppid() ten times a second) instead of PR_SET_PDEATHSIG, which follows
 * the thread that forked the server, whereas a pool outlives the thread
 * that created it. Once the caller is gone, or its socket is at EOF, the
 * server SIGKILLs and reaps its workers and exits. A worker watches the
 * server as a fork-mode worker watches the caller (worker.c), so even a
 * SIGKILLed server takes its workers along within a second.
 */
#define _POSIX_C_SOURCE 200809L

#include "forkserver.h"

#include "io.h"
#include "spawner.h"
#include "worker.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Without a pidfd, how often the server looks at getppid(), and at its
 * workers' exits. */
#define WATCH_MS 100
#define EXIT_POLL_MS 2
/* At stop: how long the server may take to exit before SIGKILL. */
#define QUIT_WAIT_MS 2000

enum { OP_SPAWN = 1, OP_EXIT, OP_KILL, OP_QUIT };

/* Requests and answers alike: op, then two arguments or results. */
struct fs_msg {
    int32_t op;
    int32_t a;
    int32_t b;
    int32_t pad;
};

/* ------------------------------------------------------------------------ */
/* The server process                                                       */
/* ------------------------------------------------------------------------ */

struct child {
    pid_t pid;
    int pidfd; /* -1: none, look with WNOHANG */
};

struct srv {
    struct pmap__spawner *sp; /* fork mode, this process's copy */
    int nslots;
    int sock;
    struct child *kids; /* forked and not yet reaped */
    size_t nkids, cap;
    struct pollfd *pfd; /* cap + 2 */
};

static long srv_find(const struct srv *s, pid_t pid)
{
    size_t i;

    for (i = 0; i < s->nkids; i++)
        if (s->kids[i].pid == pid)
            return (long)i;
    return -1;
}

/* Nothing is left behind, not even for a host that is a child subreaper:
 * every worker is killed and reaped before the server exits. */
static _Noreturn void srv_exit(struct srv *s)
{
    size_t i;
    int code;

    for (i = 0; i < s->nkids; i++)
        (void)kill(s->kids[i].pid, SIGKILL);
    for (i = 0; i < s->nkids; i++)
        (void)pmap__wait_pid(s->kids[i].pid, 1, &code);
    _exit(0);
}

static void srv_send(struct srv *s, struct fs_msg *r, const int *fds, int nfds)
{
    if (pmap__msg_send(s->sock, r, sizeof *r, fds, nfds) != 0)
        srv_exit(s); /* the caller is gone */
}

/* Room for one more child (and its pollfd). 0 or ENOMEM. */
static int srv_room(struct srv *s)
{
    size_t cap = s->cap ? 2 * s->cap : (size_t)s->nslots + 1u;
    struct child *k;
    struct pollfd *p;

    if (s->nkids < s->cap)
        return 0;
    k = realloc(s->kids, cap * sizeof *k);
    if (k == NULL)
        return ENOMEM;
    s->kids = k;
    p = realloc(s->pfd, (cap + 2) * sizeof *p);
    if (p == NULL)
        return ENOMEM;
    s->pfd = p;
    s->cap = cap;
    return 0;
}

static void srv_spawn(struct srv *s, const struct fs_msg *m)
{
    struct fs_msg r = {OP_SPAWN, 0, 0, 0};
    int fds[2] = {-1, -1};
    pid_t pid;

    if (m->a < 0 || m->a >= s->nslots)
        r.a = EINVAL;
    else
        r.a = srv_room(s);
    if (r.a == 0) {
        errno = 0;
        if (pmap__spawner_start(s->sp, m->a, -1, &pid, &fds[0], &fds[1]) != 0) {
            r.a = errno ? errno : EIO;
        } else {
            s->kids[s->nkids].pid = pid;
            s->kids[s->nkids].pidfd = pmap__pidfd_open(pid);
            s->nkids++;
            r.b = (int32_t)pid;
        }
    }
    srv_send(s, &r, fds, r.a == 0 ? 2 : 0);
    /* The worker holds its own ends; the caller now holds these. */
    pmap__close(&fds[0]);
    pmap__close(&fds[1]);
}

/* Reap child i if it is gone, and tell the caller. 1 if it was. */
static int srv_reap(struct srv *s, size_t i)
{
    struct fs_msg r = {OP_EXIT, 0, 0, 0};
    int code;

    if (!pmap__wait_pid(s->kids[i].pid, 0, &code))
        return 0;
    r.a = (int32_t)s->kids[i].pid;
    r.b = code;
    pmap__close(&s->kids[i].pidfd);
    s->kids[i] = s->kids[--s->nkids];
    srv_send(s, &r, NULL, 0);
    return 1;
}

/* SIGCHLD ignored by the host would make the kernel reap the workers at
 * once and lose their statuses: the server takes the default for itself
 * and has its workers ignore it again, as they would in fork mode. */
static void srv_sigchld(struct pmap__spawner *sp)
{
    struct sigaction sa;

    if (sigaction(SIGCHLD, NULL, &sa) != 0)
        return;
    if (sa.sa_handler == SIG_IGN && !(sa.sa_flags & SA_SIGINFO))
        pmap__spawner_sigchld_ignored(sp);
    else if (!(sa.sa_flags & SA_NOCLDWAIT))
        return;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    (void)sigaction(SIGCHLD, &sa, NULL);
}

/* The server's life; never returns. `mask`: the signal mask of the
 * thread that created the pool (the fork ran with every signal blocked),
 * which the workers inherit as in fork mode. */
static _Noreturn void srv_main(struct pmap__spawner *sp, int nslots, int sock, pid_t caller,
                               const sigset_t *mask)
{
    struct srv s;
    int pidfd;

    memset(&s, 0, sizeof s);
    s.sp = sp;
    s.nslots = nslots;
    s.sock = sock;
    pmap__child_signals();
    srv_sigchld(sp);
    pidfd = pmap__parent_pidfd(caller);
    if (pidfd == -2)
        srv_exit(&s);
    pthread_sigmask(SIG_SETMASK, mask, NULL);
    if (srv_room(&s) != 0)
        srv_exit(&s);
    for (;;) {
        struct fs_msg m;
        size_t i, n = 0;
        int rc, timeout = pidfd >= 0 ? -1 : WATCH_MS;

        s.pfd[n++] = (struct pollfd){sock, POLLIN, 0};
        s.pfd[n++] = (struct pollfd){pidfd, POLLIN, 0};
        for (i = 0; i < s.nkids; i++) {
            s.pfd[n++] = (struct pollfd){s.kids[i].pidfd, POLLIN, 0};
            if (s.kids[i].pidfd < 0)
                timeout = EXIT_POLL_MS;
        }
        /* (Entries of -1 are ignored by poll.) */
        rc = poll(s.pfd, (nfds_t)n, timeout);
        if (rc < 0 && errno != EINTR)
            srv_exit(&s);
        if (getppid() != caller || (pidfd >= 0 && s.pfd[1].revents != 0))
            srv_exit(&s);
        /* Exits first, so that a KILL below never meets a reaped pid. The
         * pollfds are by index of before; a reaped child's place is taken
         * by the last one, so walk from the end. */
        for (i = s.nkids; i-- > 0;)
            if (s.kids[i].pidfd < 0 || s.pfd[2 + i].revents != 0)
                (void)srv_reap(&s, i);
        if (rc <= 0 || s.pfd[0].revents == 0)
            continue;
        if (pmap__msg_recv(sock, &m, sizeof m, NULL, 0, NULL, 1) != 1)
            srv_exit(&s); /* EOF: the caller is gone */
        switch (m.op) {
        case OP_SPAWN:
            srv_spawn(&s, &m);
            break;
        case OP_KILL:
            if (srv_find(&s, (pid_t)m.a) >= 0)
                (void)kill((pid_t)m.a, m.b);
            break;
        default: /* OP_QUIT, or nonsense */
            srv_exit(&s);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The caller's side                                                        */
/* ------------------------------------------------------------------------ */

struct exit_note {
    pid_t pid;
    int code;
};

struct pmap__fsrv {
    int sock;
    pid_t pid;
    int broken; /* the server is gone or garbled: no more requests */
    /* Exits the server told of that pool.c has not asked about yet:
     * about one per place at most, since a place starts a new worker only
     * once its last one was reaped (asked about). */
    struct exit_note *notes;
    size_t nnotes, cap;
};

int pmap__fsrv_start(struct pmap__fsrv **out, struct pmap__spawner *direct, int nslots)
{
    struct pmap__fsrv *f;
    int sv[2], rc, saved;
    sigset_t old;
    pid_t pid, caller = getpid();

    f = calloc(1, sizeof *f);
    if (f != NULL) {
        f->cap = (size_t)nslots + 1u;
        f->notes = calloc(f->cap, sizeof *f->notes);
    }
    if (f == NULL || f->notes == NULL) {
        free(f);
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    rc = pmap__socketpair(sv);
    if (rc != 0) {
        saved = errno;
        free(f->notes);
        free(f);
        errno = saved;
        return rc;
    }
    pid = pmap__fork(sv[1], -1, -1, &old);
    if (pid == 0)
        srv_main(direct, nslots, sv[1], caller, &old);
    saved = errno;
    pmap__close(&sv[1]);
    if (pid < 0) {
        pmap__close(&sv[0]);
        free(f->notes);
        free(f);
        errno = saved;
        return PMAP_ESYS;
    }
    f->sock = sv[0];
    f->pid = pid;
    *out = f;
    return 0;
}

static void fs_broken(struct pmap__fsrv *f)
{
    f->broken = 1;
    errno = ECHILD;
}

static int fs_send(struct pmap__fsrv *f, int op, int a, int b)
{
    struct fs_msg m = {op, a, b, 0};

    if (f->broken || pmap__msg_send(f->sock, &m, sizeof m, NULL, 0) != 0) {
        fs_broken(f);
        return PMAP_ESYS;
    }
    return 0;
}

/* Read one message from the server (wait: until there is one). An exit
 * note is kept in f->notes. 1 with *r (fds: up to two descriptors came
 * with it), -1 when there was none, PMAP_ESYS (ECHILD) once the server is
 * gone. */
static int fs_read(struct pmap__fsrv *f, int wait, struct fs_msg *r, int *fds, int *nfds)
{
    int rc, n = 0, i, spare[2];

    if (f->broken) {
        fs_broken(f);
        return PMAP_ESYS;
    }
    if (fds == NULL)
        fds = spare;
    rc = pmap__msg_recv(f->sock, r, sizeof *r, fds, 2, &n, wait);
    if (rc == -1)
        return -1;
    if (rc == 1 && r->op == OP_EXIT && f->nnotes == f->cap) {
        struct exit_note *p = realloc(f->notes, 2 * f->cap * sizeof *p);

        if (p != NULL) {
            f->notes = p;
            f->cap *= 2;
        }
    }
    if (rc != 1 || (r->op == OP_EXIT && n != 0) || (r->op != OP_EXIT && r->op != OP_SPAWN) ||
        (r->op == OP_EXIT && f->nnotes == f->cap)) {
        for (i = 0; rc == 1 && i < n; i++)
            pmap__close(&fds[i]);
        fs_broken(f);
        return PMAP_ESYS;
    }
    if (r->op == OP_EXIT) {
        f->notes[f->nnotes].pid = (pid_t)r->a;
        f->notes[f->nnotes].code = r->b;
        f->nnotes++;
    }
    if (nfds != NULL)
        *nfds = n;
    else
        for (i = 0; i < n; i++)
            pmap__close(&fds[i]);
    return 1;
}

int pmap__fsrv_spawn(struct pmap__fsrv *f, int slot, pid_t *pid, int *tx, int *rx)
{
    struct fs_msg r;
    int fds[2] = {-1, -1}, n = 0;

    if (fs_send(f, OP_SPAWN, slot, 0) != 0)
        return PMAP_ESYS;
    do {
        if (fs_read(f, 1, &r, fds, &n) != 1)
            return PMAP_ESYS;
    } while (r.op != OP_SPAWN);
    if (r.a == 0 && r.b <= 0) {
        fs_broken(f); /* nonsense: nothing more it says is believed */
        r.a = ECHILD;
    } else if (r.a == 0 && n != 2) {
        /* Started, but the kernel dropped its descriptors on the way in:
         * this process has none left. The worker is ended at once. */
        int code;

        pmap__fsrv_kill(f, (pid_t)r.b, SIGKILL);
        (void)pmap__fsrv_reap(f, (pid_t)r.b, 1, &code);
        r.a = EMFILE;
    }
    if (r.a != 0) {
        pmap__close(&fds[0]);
        pmap__close(&fds[1]);
        errno = r.a;
        return r.a == ENOMEM ? PMAP_ENOMEM : PMAP_ESYS;
    }
    *pid = (pid_t)r.b;
    *tx = fds[0];
    *rx = fds[1];
    return 0;
}

int pmap__fsrv_reap(struct pmap__fsrv *f, pid_t pid, int block, int *code)
{
    struct fs_msg r;

    for (;;) {
        size_t i;
        int rc;

        for (i = 0; i < f->nnotes; i++) {
            if (f->notes[i].pid == pid) {
                *code = f->notes[i].code;
                f->notes[i] = f->notes[--f->nnotes];
                return 1;
            }
        }
        rc = fs_read(f, block, &r, NULL, NULL);
        if (rc == -1)
            return 0;
        if (rc != 1) {
            /* The server is gone, and its workers with it. */
            *code = -1;
            return 1;
        }
    }
}

void pmap__fsrv_poll(struct pmap__fsrv *f)
{
    struct fs_msg r;

    while (fs_read(f, 0, &r, NULL, NULL) == 1)
        ;
}

int pmap__fsrv_fd(const struct pmap__fsrv *f)
{
    /* A dead server's socket polls readable for ever (EOF): not to be
     * polled then; every worker counts as gone anyway. */
    return f->broken ? -1 : f->sock;
}

void pmap__fsrv_kill(struct pmap__fsrv *f, pid_t pid, int sig)
{
    (void)fs_send(f, OP_KILL, (int)pid, sig);
}

/* After QUIT: wait until the server's end of the socket closes (it has
 * exited), up to QUIT_WAIT_MS. 1 if it did. */
static int fs_wait_eof(struct pmap__fsrv *f)
{
    uint64_t deadline = pmap__now_ns() + (uint64_t)QUIT_WAIT_MS * PMAP__NS_PER_MS;

    for (;;) {
        struct pollfd pfd = {f->sock, POLLIN, 0};
        uint64_t now = pmap__now_ns();
        unsigned char junk[64];
        int rc;

        if (now >= deadline)
            return 0;
        rc = poll(&pfd, 1, (int)((deadline - now) / PMAP__NS_PER_MS) + 1);
        if (rc < 0 && errno != EINTR)
            return 0;
        if (rc <= 0)
            continue;
        if (pmap__read_once(f->sock, junk, sizeof junk) <= 0)
            return 1; /* EOF (or an error: the socket is dead either way) */
    }
}

void pmap__fsrv_stop(struct pmap__fsrv *f)
{
    int code;

    if (f == NULL)
        return;
    /* QUIT rather than only closing: a child the host forked meanwhile
     * may hold a copy of our end, and then no EOF would come. */
    (void)fs_send(f, OP_QUIT, 0, 0);
    /* Our child, not yet reaped: its pid cannot have been reused. */
    if (!fs_wait_eof(f))
        (void)kill(f->pid, SIGKILL);
    pmap__close(&f->sock);
    (void)pmap__wait_pid(f->pid, 1, &code);
    free(f->notes);
    free(f);
}

void pmap__fsrv_release(struct pmap__fsrv *f)
{
    if (f == NULL)
        return;
    pmap__close(&f->sock);
    free(f->notes);
    free(f);
}
