/*
 * The spawner of the process backend: workers forked by the caller
 * itself (fork mode), or by the pool's fork server (forkserver.c).
 */
#define _POSIX_C_SOURCE 200809L

#include "spawner.h"

#include "forkserver.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

struct pmap__spawner {
    struct pmap__worker_args tmpl; /* id and shm of place 0 */
    int nslots;
    struct pmap__fsrv *srv; /* server mode; NULL: fork mode (also in the server) */
};

int pmap__spawner_new(struct pmap__spawner **out, int start_method,
                      const struct pmap__worker_args *tmpl, int nslots)
{
    struct pmap__spawner *s;
    int rc, saved;

    s = calloc(1, sizeof *s);
    if (s == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    s->tmpl = *tmpl;
    s->nslots = nslots;
    if (start_method == PMAP_START_FORKSERVER) {
        /* The server's copy of `s` is taken by the fork inside, while
         * s->srv is still NULL: there it forks workers directly. */
        rc = pmap__fsrv_start(&s->srv, s, nslots);
        if (rc != 0) {
            saved = errno;
            free(s);
            errno = saved;
            return rc;
        }
    }
    *out = s;
    return 0;
}

void pmap__spawner_sigchld_ignored(struct pmap__spawner *s)
{
    s->tmpl.sigchld_ignored = 1;
}

int pmap__spawner_start(struct pmap__spawner *s, int slot, int arena_fd, pid_t *pid, int *tx,
                        int *rx)
{
    struct pmap__worker_args a = s->tmpl;

    if (s->srv != NULL)
        return pmap__fsrv_spawn(s->srv, slot, pid, tx, rx);
    a.id += slot;
    a.shm += slot;
    a.arena_fd = arena_fd;
    return pmap__worker_spawn(&a, pid, tx, rx);
}

int pmap__wait_pid(pid_t pid, int block, int *code)
{
    int st;
    pid_t r;

    do {
        r = waitpid(pid, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return 0;
    if (r < 0)
        *code = -1;
    else if (WIFSIGNALED(st))
        *code = WTERMSIG(st);
    else if (WIFEXITED(st))
        *code = WEXITSTATUS(st);
    else
        return 0; /* stopped or continued: not gone */
    return 1;
}

int pmap__spawner_reap(struct pmap__spawner *s, pid_t pid, int block, int *code)
{
    if (s->srv != NULL)
        return pmap__fsrv_reap(s->srv, pid, block, code);
    return pmap__wait_pid(pid, block, code);
}

void pmap__spawner_kill(struct pmap__spawner *s, pid_t pid, int sig)
{
    if (s->srv != NULL)
        pmap__fsrv_kill(s->srv, pid, sig);
    else
        (void)kill(pid, sig); /* our unreaped child: its pid cannot have been reused */
}

int pmap__spawner_fd(const struct pmap__spawner *s)
{
    return s->srv != NULL ? pmap__fsrv_fd(s->srv) : -1;
}

void pmap__spawner_poll(struct pmap__spawner *s)
{
    if (s->srv != NULL)
        pmap__fsrv_poll(s->srv);
}

void pmap__spawner_free(struct pmap__spawner *s)
{
    if (s == NULL)
        return;
    pmap__fsrv_stop(s->srv);
    free(s);
}

void pmap__spawner_release(struct pmap__spawner *s)
{
    if (s == NULL)
        return;
    pmap__fsrv_release(s->srv);
    free(s);
}
