/*
 * sweep: a parameter sweep that survives Ctrl-C, a kill or a reboot.
 *
 *     ./build/examples/sweep --journal sweep.pmj      # press Ctrl-C half-way
 *     ./build/examples/sweep --journal sweep.pmj      # picks up where it stopped
 *
 * Every point (x, y) of a grid over the complex plane is one record; the
 * task counts the iterations of z = z^2 + c before |z| > 2 (the
 * Mandelbrot set), a few milliseconds each. The results are drawn as a
 * picture at the end, the same whether the run was interrupted or not.
 *
 * With --journal FILE, every finished point is kept in FILE. A rerun with
 * the same options replays the stored points instead of computing them:
 * the progress bar jumps over them at once and goes on from there. Ctrl-C
 * stops the sweep cleanly (the journal is synced and closed); even a
 * SIGKILL loses no point that was shown. A journal made with other
 * options is refused ("another input"): delete it, or use another file.
 *
 *     sweep [--journal FILE] [--width W] [--height H] [--iters N]
 */
#define _POSIX_C_SOURCE 200809L

#include <pmap.h>
#include <pmap_progress.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One record: a point of the grid and the options that shape its result,
 * so that a journal of another sweep never passes for this one. */
struct point {
    int x, y, width, height;
    unsigned iters;
};

static int escape_time(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct point p;
    double cr, ci, zr = 0.0, zi = 0.0;
    unsigned n = 0;

    (void)ctx;
    if (len != sizeof p)
        return 1;
    memcpy(&p, param, sizeof p);
    cr = -2.2 + 3.0 * p.x / p.width;
    ci = -1.2 + 2.4 * p.y / p.height;
    while (n < p.iters && zr * zr + zi * zi <= 4.0) {
        double t = zr * zr - zi * zi + cr;

        zi = 2.0 * zr * zi + ci;
        zr = t;
        n++;
    }
    return pmap_buf_set(out, &n, sizeof n);
}

struct grid {
    int width, height;
    unsigned iters;
    int next;
};

static int gen(void *gen_ctx, pmap_buf *param)
{
    struct grid *g = gen_ctx;
    struct point p;

    if (g->next == g->width * g->height)
        return 0;
    p.x = g->next % g->width;
    p.y = g->next / g->width;
    p.width = g->width;
    p.height = g->height;
    p.iters = g->iters;
    g->next++;
    return pmap_buf_set(param, &p, sizeof p) == PMAP_OK ? 1 : -1;
}

/* Set by Ctrl-C; the loop below checks it after every point. The library
 * never touches signals: this handler is the program's own choice. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void draw(const unsigned *counts, const struct grid *g)
{
    static const char shades[] = " .:-=+*#%@";
    int x, y;

    for (y = 0; y < g->height; y++) {
        for (x = 0; x < g->width; x++) {
            unsigned n = counts[(size_t)y * (size_t)g->width + (size_t)x];
            size_t s = n >= g->iters ? sizeof shades - 2 : (size_t)(n % (sizeof shades - 2));

            putchar(shades[s]);
        }
        putchar('\n');
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: sweep [--journal FILE] [--width W] [--height H] [--iters N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct grid g = {78, 32, 400000, 0};
    const char *journal_path = NULL;
    pmap_journal *j = NULL;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    pmap_progress *bar;
    struct sigaction sa;
    unsigned *counts;
    uint64_t total, stored = 0, handed = 0;
    int i, rc, frc, failed = 0;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--journal") == 0 && i + 1 < argc)
            journal_path = argv[++i];
        else if (strcmp(argv[i], "--width") == 0 && i + 1 < argc)
            g.width = atoi(argv[++i]);
        else if (strcmp(argv[i], "--height") == 0 && i + 1 < argc)
            g.height = atoi(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            g.iters = (unsigned)strtoul(argv[++i], NULL, 10);
        else
            return usage();
    }
    if (g.width < 1 || g.height < 1 || g.width > 4096 || g.height > 4096 || g.iters < 1)
        return usage();
    total = (uint64_t)g.width * (uint64_t)g.height;
    counts = calloc((size_t)total, sizeof *counts);
    if (counts == NULL) {
        perror("calloc");
        return 1;
    }

    pmap_options_init(&opt);
    pool = pmap_pool_create(escape_time, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        return 1;
    }
    if (journal_path != NULL) {
        j = pmap_journal_open(journal_path);
        if (j == NULL) {
            perror(journal_path); /* EWOULDBLOCK: another sweep is using it */
            pmap_pool_destroy(pool);
            return 1;
        }
        stored = pmap_journal_count(j);
    }
    it = pmap_imap(pool, gen, &g);
    if (it == NULL || (j != NULL && pmap_iter_journal(it, j) != PMAP_OK)) {
        perror("pmap_imap");
        return 1;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    (void)sigaction(SIGINT, &sa, NULL);

    bar = pmap_progress_new(stderr, "sweep", total);
    if (stored > 0) {
        /* The stored points come back at once: show them at once, and
         * count each point only once the bar has passed them. */
        pmap_progress_add(bar, stored > total ? total : stored);
        pmap_progress_set_postfix(bar, "replayed=%llu", (unsigned long long)stored);
    }
    while (!interrupted && (rc = pmap_next(it, &item)) == PMAP_OK) {
        if (++handed > stored)
            pmap_progress_add(bar, 1);
        if (item.status != PMAP_OK || item.len != sizeof counts[0]) {
            pmap_progress_printf(bar, stderr, "point %llu: %s\n", (unsigned long long)item.index,
                                 pmap_strerror(item.status));
            failed = 1;
            continue;
        }
        memcpy(&counts[item.index], item.data, sizeof counts[0]);
    }
    pmap_progress_free(bar);
    /* Freeing the iterator stops the workers and syncs the journal. */
    frc = pmap_iter_free(it);
    if (pmap_journal_close(j) != PMAP_OK)
        fprintf(stderr, "sweep: the journal could not be written completely\n");
    pmap_pool_destroy(pool);
    if (interrupted) {
        fprintf(stderr, "interrupted after %llu of %llu points%s\n", (unsigned long long)handed,
                (unsigned long long)total,
                journal_path ? "; run the same command again to resume" : "");
        free(counts);
        return 130;
    }
    if (frc != PMAP_OK) {
        fprintf(stderr, "sweep failed: %s\n", pmap_strerror(frc));
        if (frc == PMAP_EJOURNAL)
            fprintf(stderr, "(%s belongs to another sweep, or cannot be written)\n", journal_path);
        free(counts);
        return 1;
    }
    draw(counts, &g);
    free(counts);
    return failed;
}
