/*
 * The spawner of the process backend: workers forked by the caller
 * itself (fork mode), or by the pool's fork server (forkserver.c).
 */
#define _POSIX_C_SOURCE 200809L

#include "spawner.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

struct pmap__spawner {
    struct pmap__worker_args tmpl; /* id and shm of place 0 */
    int nslots;
};

int pmap__spawner_new(struct pmap__spawner **out, int start_method,
                      const struct pmap__worker_args *tmpl, int nslots)
{
    struct pmap__spawner *s;

    (void)start_method;
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    s->tmpl = *tmpl;
    s->nslots = nslots;
    *out = s;
    return 0;
}

int pmap__spawner_start(struct pmap__spawner *s, int slot, pid_t *pid, int *tx, int *rx)
{
    struct pmap__worker_args a = s->tmpl;

    a.id += slot;
    a.shm += slot;
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
    (void)s;
    return pmap__wait_pid(pid, block, code);
}

void pmap__spawner_kill(struct pmap__spawner *s, pid_t pid, int sig)
{
    (void)s;
    /* Our unreaped child: its pid cannot have been reused. */
    (void)kill(pid, sig);
}

void pmap__spawner_free(struct pmap__spawner *s)
{
    free(s);
}

void pmap__spawner_release(struct pmap__spawner *s)
{
    free(s);
}
