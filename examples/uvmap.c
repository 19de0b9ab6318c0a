/*
 * uvmap: the `sum` example driven from a libuv event loop.
 *
 * A server or a GUI cannot sit in pmap_next(): its loop must stay free for
 * everything else. Here the map is one more event source of the loop: a
 * uv_poll_t watches pmap_iter_fd() (readable whenever pmap_try_next() has
 * something to do) and a uv_timer_t fires after pmap_iter_timeout()
 * milliseconds (time limits and worker restarts need a call even when
 * nothing arrives). Each callback takes what is ready with pmap_try_next()
 * until PMAP_EAGAIN and goes back to the loop, which never blocks in
 * libpmap. A second timer ticks meanwhile, to show the loop is free.
 *
 * Prints the same lines as `sum` (results to stdout in input order; the
 * progress bar to stderr), then how often the loop ticked.
 */
#define _POSIX_C_SOURCE 200809L /* uv.h uses POSIX types */

#include <pmap.h>
#include <pmap_progress.h>

#include <stdio.h>
#include <string.h>
#include <uv.h>

/* The task and the generator of `sum`: x + param2 for each x. */
struct params {
    int x;
    int param2;
};

static int work(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct params p;
    int result;

    (void)ctx;
    if (len != sizeof p)
        return 1;
    memcpy(&p, param, sizeof p);
    result = p.x + p.param2;
    return pmap_buf_set(out, &result, sizeof result);
}

static const int X_values[] = {10, 22, 35, 4, 532, 12, 42, 53, 23};
static const int param2 = 15;
#define N_VALUES (sizeof X_values / sizeof X_values[0])

struct gen_state {
    size_t i;
};

static int gen(void *gen_ctx, pmap_buf *param)
{
    struct gen_state *g = gen_ctx;
    struct params p;

    if (g->i == N_VALUES)
        return 0;
    p.x = X_values[g->i++];
    p.param2 = param2;
    return pmap_buf_set(param, &p, sizeof p) == PMAP_OK ? 1 : -1;
}

/* The map as an event source of the loop. */
struct map_source {
    pmap_iter *it;
    uv_poll_t poll;   /* on pmap_iter_fd() */
    uv_timer_t timer; /* after pmap_iter_timeout() */
    uv_timer_t tick;  /* the rest of the program, standing in for a server's work */
    unsigned ticks;
    pmap_progress *bar;
    int rc;     /* how the map ended; PMAP_EAGAIN while it runs */
    int failed; /* some item failed */
};

static void on_timer(uv_timer_t *t);

/* Take everything that is ready, then tell the loop when to call again. */
static void take_ready(struct map_source *m)
{
    pmap_item item;
    int rc, timeout;

    while ((rc = pmap_try_next(m->it, &item)) == PMAP_OK) {
        int result;

        pmap_progress_add(m->bar, 1);
        if (item.status != PMAP_OK) {
            fprintf(stderr, "item %llu: %s (code %d)\n", (unsigned long long)item.index,
                    pmap_strerror(item.status), item.code);
            m->failed = 1;
            continue;
        }
        memcpy(&result, item.data, sizeof result);
        printf("%d\n", result);
    }
    if (rc != PMAP_EAGAIN) {
        /* PMAP_DONE, or the map failed as a whole: this source is done. */
        m->rc = rc;
        uv_poll_stop(&m->poll);
        uv_timer_stop(&m->timer);
        uv_timer_stop(&m->tick);
        return;
    }
    timeout = pmap_iter_timeout(m->it);
    if (timeout >= 0)
        uv_timer_start(&m->timer, on_timer, (uint64_t)timeout, 0);
    else
        uv_timer_stop(&m->timer);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct map_source *m = h->data;

    (void)events;
    if (status < 0) {
        fprintf(stderr, "uv_poll: %s\n", uv_strerror(status));
        m->rc = PMAP_ESYS;
        uv_poll_stop(&m->poll);
        uv_timer_stop(&m->timer);
        uv_timer_stop(&m->tick);
        return;
    }
    take_ready(m);
}

static void on_timer(uv_timer_t *t)
{
    take_ready(t->data);
}

static void on_tick(uv_timer_t *t)
{
    ((struct map_source *)t->data)->ticks++;
}

int main(void)
{
    pmap_options opt;
    pmap_pool *pool;
    struct gen_state g = {0};
    struct map_source m;
    uv_loop_t *loop = uv_default_loop();
    int fd, rc;

    pmap_options_init(&opt);
    opt.workers = pmap_cpu_count() - 2;
    if (opt.workers < 1)
        opt.workers = 1;
    /* Before the loop starts: workers are forks of this process. */
    pool = pmap_pool_create(work, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        return 1;
    }
    memset(&m, 0, sizeof m);
    m.rc = PMAP_EAGAIN;
    m.it = pmap_imap(pool, gen, &g);
    if (m.it == NULL) {
        perror("pmap_imap");
        pmap_pool_destroy(pool);
        return 1;
    }
    fd = pmap_iter_fd(m.it);
    if (fd < 0) {
        perror("pmap_iter_fd");
        pmap_iter_free(m.it);
        pmap_pool_destroy(pool);
        return 1;
    }
    m.bar = pmap_progress_new(stderr, NULL, N_VALUES);
    uv_poll_init(loop, &m.poll, fd);
    uv_timer_init(loop, &m.timer);
    uv_timer_init(loop, &m.tick);
    m.poll.data = m.timer.data = m.tick.data = &m;
    /* The descriptor is readable from the start (records to generate). */
    uv_poll_start(&m.poll, UV_READABLE, on_poll);
    uv_timer_start(&m.tick, on_tick, 1, 1);
    uv_run(loop, UV_RUN_DEFAULT); /* returns once no handle is active: the map ended */

    /* Handles are closed before the descriptor goes with the iterator. */
    uv_close((uv_handle_t *)&m.poll, NULL);
    uv_close((uv_handle_t *)&m.timer, NULL);
    uv_close((uv_handle_t *)&m.tick, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(loop);
    pmap_progress_free(m.bar);
    if (m.rc != PMAP_DONE) {
        fprintf(stderr, "map failed: %s\n", pmap_strerror(m.rc));
        m.failed = 1;
    }
    fprintf(stderr, "the loop stayed free: %u ticks while the map ran\n", m.ticks);
    pmap_iter_free(m.it);
    pmap_pool_destroy(pool);
    return m.failed || rc != 0;
}
