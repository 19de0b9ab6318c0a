/*
 * The journal (DESIGN §9) on tiny records (two 32-bit integers in, their
 * sum out, as bench_tiny): what it costs a map that computes, and how fast
 * a map that only replays runs.
 *
 *   bench_journal [records [replay_records]]
 *   env BENCH_WORKERS: workers (default: pmap_cpu_count())
 *       BENCH_REPEAT: rounds of the side-by-side figures (default 3), best
 *                     printed, and medians where said
 *       BENCH_DIR: where the journal files go (default: TMPDIR, else /tmp)
 *
 * Figures:
 *   tiny_ordered_nojournal / tiny_ordered_journal   records/s, computed,
 *       run alternately (A B A B) in one process, a fresh journal each time
 *   journal_bytes_per_item   file size / items
 *   replay_ordered / replay_unordered   records/s, every item stored (best)
 *   replay_compute_ordered   records/s computing the replay's records
 *       without a journal, in the same rounds as the replays (compute,
 *       replay ordered, replay unordered, ...); the median of each, and
 *   replay_vs_compute_ordered / _unordered   the median of the rounds'
 *       ratios replay / compute
 *   replay_peak_rss_delta    KiB the caller's peak RSS grew during a replay
 *                            (journal opened and replayed), and per item
 *   kill_to_first_new_ms     SIGKILL of a caller half-way through a map to
 *                            the first result computed by the rerun (open,
 *                            pool creation, replay of the stored part)
 */
#define _POSIX_C_SOURCE 200809L

#include "bench_util.h"

#include <pmap.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct gen {
    uint64_t next, n;
};

/* Workers forked after this is set compute results marked as new. */
static int32_t generation;

static int gen_pairs(void *ctx, pmap_buf *param)
{
    struct gen *g = ctx;
    int32_t *v;

    if (g->next == g->n)
        return 0;
    v = pmap_buf_reserve(param, 2 * sizeof *v);
    if (v == NULL)
        return -1;
    v[0] = (int32_t)(g->next & 0xffff);
    v[1] = (int32_t)(g->next >> 16);
    g->next++;
    return 1;
}

static int task_add(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    int32_t v[2], r[2];

    (void)ctx;
    if (len != sizeof v)
        return 1;
    memcpy(v, param, sizeof v);
    r[0] = v[0] + v[1];
    r[1] = generation;
    return pmap_buf_set(out, r, generation ? sizeof r : sizeof r[0]);
}

/* The caller's CPU time per record of the last run(), in ns: on a
 * machine shared with other work, wall-clock rates move by a factor of
 * two from run to run, the caller's own CPU time much less. */
static double last_cpu_ns;

static double cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

static pmap_pool *make_pool(void)
{
    pmap_options opt;
    pmap_pool *pool;

    pmap_options_init(&opt);
    opt.workers = (int)bu_env_long("BENCH_WORKERS", 0);
    pool = pmap_pool_create(task_add, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        exit(1);
    }
    return pool;
}

/* One map over n records, with journal `path` (NULL: none): records/s,
 * or -1 if an item was wrong. */
static double run(pmap_pool *pool, const char *path, int ordered, uint64_t n)
{
    struct gen g = {0, n};
    pmap_journal *j = NULL;
    pmap_iter *it;
    pmap_item item;
    uint64_t got = 0, bad = 0;
    double t0, t1, c0 = cpu_s();
    int rc;

    t0 = bu_now();
    if (path != NULL) {
        j = pmap_journal_open(path);
        if (j == NULL) {
            perror(path);
            exit(1);
        }
    }
    it = ordered ? pmap_imap(pool, gen_pairs, &g) : pmap_imap_unordered(pool, gen_pairs, &g);
    if (it == NULL || (j != NULL && pmap_iter_journal(it, j) != PMAP_OK)) {
        perror("pmap_imap");
        exit(1);
    }
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int32_t sum;

        if (item.status != PMAP_OK || item.len < sizeof sum || (ordered && item.index != got)) {
            bad++;
        } else {
            memcpy(&sum, item.data, sizeof sum);
            if (sum != (int32_t)((item.index & 0xffff) + (item.index >> 16)))
                bad++;
        }
        got++;
    }
    if (pmap_iter_free(it) != PMAP_OK || pmap_journal_close(j) != PMAP_OK)
        bad++;
    t1 = bu_now();
    last_cpu_ns = (cpu_s() - c0) * 1e9 / (double)n;
    if (rc != PMAP_DONE || got != n || bad != 0) {
        fprintf(stderr, "bench_journal: %s, %llu of %llu records, %llu wrong\n", pmap_strerror(rc),
                (unsigned long long)got, (unsigned long long)n, (unsigned long long)bad);
        return -1.0;
    }
    return (double)n / (t1 - t0);
}

static long file_size(const char *p)
{
    struct stat st;

    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* Kill a caller half-way through a map over n records, rerun it, and time
 * from the kill to the rerun's first computed result. */
static double kill_to_first_new(const char *path, uint64_t n)
{
    int rep[2];
    pid_t pid;
    double t0, t1 = -1.0;
    pmap_journal *j;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen g = {0, n};
    uint64_t seen = 0;
    int rc, st;

    unlink(path);
    if (pipe(rep) != 0)
        return -1.0;
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        return -1.0;
    if (pid == 0) {
        char c = 1;

        close(rep[0]);
        pool = make_pool();
        j = pmap_journal_open(path);
        it = pmap_imap(pool, gen_pairs, &g);
        if (j == NULL || it == NULL || pmap_iter_journal(it, j) != PMAP_OK)
            _exit(1);
        while (pmap_next(it, &item) == PMAP_OK)
            if (item.index == n / 2 && write(rep[1], &c, 1) != 1)
                _exit(1);
        _exit(0);
    }
    close(rep[1]);
    {
        char c;
        ssize_t r;

        do
            r = read(rep[0], &c, 1);
        while (r < 0 && errno == EINTR);
        close(rep[0]);
        if (r != 1)
            return -1.0;
    }
    kill(pid, SIGKILL);
    t0 = bu_now();
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    /* The rerun: its workers mark what they compute. */
    generation = 1;
    j = pmap_journal_open(path);
    pool = make_pool();
    it = pmap_imap(pool, gen_pairs, &g);
    if (j == NULL || it == NULL || pmap_iter_journal(it, j) != PMAP_OK)
        return -1.0;
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        seen++;
        if (t1 < 0 && item.len == 2 * sizeof(int32_t))
            t1 = bu_now();
    }
    generation = 0;
    if (rc != PMAP_DONE || seen != n)
        t1 = -1.0;
    pmap_iter_free(it);
    pmap_journal_close(j);
    pmap_pool_destroy(pool);
    return t1 < 0 ? -1.0 : (t1 - t0) * 1e3;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000u;
    uint64_t nr = argc > 2 ? strtoull(argv[2], NULL, 10) : n;
    long repeat = bu_env_long("BENCH_REPEAT", 3), r;
    const char *d = getenv("BENCH_DIR");
    char path[512];
    double plain = 0.0, jr = 0.0, one, rep_o = 0.0, rep_u = 0.0, ms;
    double cpu_plain = 1e30, cpu_jr = 1e30, cpu_rep = 1e30;
    double *v_c, *v_o, *v_u, *q_o, *q_u, c = 0.0;
    long rounds;
    long rss0;
    pmap_pool *pool;
    int ordered;

    if (d == NULL || *d == '\0')
        d = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/bench_journal.%ld.pmj", d && *d ? d : "/tmp", (long)getpid());
    pool = make_pool();
    /* Side by side: the machine's noise hits both alike. */
    for (r = 0; r < (repeat < 1 ? 1 : repeat); r++) {
        one = run(pool, NULL, 1, n);
        if (one < 0)
            return 1;
        if (one > plain)
            plain = one;
        if (last_cpu_ns < cpu_plain)
            cpu_plain = last_cpu_ns;
        unlink(path);
        one = run(pool, path, 1, n);
        if (one < 0)
            return 1;
        if (one > jr)
            jr = one;
        if (last_cpu_ns < cpu_jr)
            cpu_jr = last_cpu_ns;
    }
    bu_figure("tiny_ordered_nojournal", plain, "records/s");
    bu_figure("tiny_ordered_journal", jr, "records/s");
    bu_figure("tiny_ordered_nojournal_caller_cpu", cpu_plain, "ns/record");
    bu_figure("tiny_ordered_journal_caller_cpu", cpu_jr, "ns/record");
    bu_figure("journal_bytes_per_item", (double)file_size(path) / (double)n, "bytes");

    /* The replay journal: nr items, all stored. */
    if (nr != n) {
        unlink(path);
        if (run(pool, path, 1, nr) < 0)
            return 1;
    }
    rounds = repeat < 1 ? 1 : repeat;
    v_c = calloc((size_t)rounds * 5, sizeof *v_c);
    if (v_c == NULL)
        return 1;
    v_o = v_c + rounds;
    v_u = v_o + rounds;
    q_o = v_u + rounds;
    q_u = q_o + rounds;
    for (r = 0; r < rounds; r++) {
        /* Computing the same records in the same round: the yardstick. */
        c = run(pool, NULL, 1, nr);
        if (c < 0)
            return 1;
        v_c[r] = c;
        for (ordered = 1; ordered >= 0; ordered--) {
            rss0 = bu_rss_kib();
            bu_reset_peak();
            one = run(pool, path, ordered, nr);
            if (one < 0)
                return 1;
            if (ordered && one > rep_o)
                rep_o = one;
            if (ordered && last_cpu_ns < cpu_rep)
                cpu_rep = last_cpu_ns;
            if (!ordered && one > rep_u)
                rep_u = one;
            if (ordered) {
                v_o[r] = one;
                q_o[r] = one / c;
            } else {
                v_u[r] = one;
                q_u[r] = one / c;
            }
            if (r == 0 && ordered) {
                long grew = bu_peak_rss_kib() - rss0;

                bu_figure("replay_items", (double)nr, "items");
                bu_figure("replay_peak_rss_delta", (double)grew, "KiB");
                bu_figure("replay_peak_rss_per_item", (double)grew * 1024.0 / (double)nr, "bytes");
            }
        }
    }
    bu_figure("replay_ordered", rep_o, "records/s");
    bu_figure("replay_unordered", rep_u, "records/s");
    bu_figure("replay_rounds", (double)rounds, "rounds");
    bu_figure("replay_compute_ordered_median", bu_median(v_c, (size_t)rounds), "records/s");
    bu_figure("replay_ordered_median", bu_median(v_o, (size_t)rounds), "records/s");
    bu_figure("replay_unordered_median", bu_median(v_u, (size_t)rounds), "records/s");
    bu_figure("replay_vs_compute_ordered", bu_median(q_o, (size_t)rounds), "x");
    bu_figure("replay_vs_compute_unordered", bu_median(q_u, (size_t)rounds), "x");
    free(v_c);
    /* Open, replay, close: the whole cost, since no worker runs. */
    bu_figure("replay_ordered_caller_cpu", cpu_rep, "ns/record");
    unlink(path);
    pmap_pool_destroy(pool);

    ms = kill_to_first_new(path, n);
    unlink(path);
    if (ms < 0)
        return 1;
    bu_figure("kill_to_first_new", ms, "ms");
    return 0;
}
