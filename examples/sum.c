/*
 * sum: the Python original, ported line for line.
 *
 *     from multiprocessing import Pool, cpu_count
 *     from tqdm import tqdm
 *
 *     def work(params):
 *         x, param2 = params
 *         return x + param2
 *
 *     X_values = [10, 22, 35, 4, 532, 12, 42, 53, 23]
 *     param2 = 15
 *
 *     def gen():
 *         for x in X_values:
 *             yield (x, param2)
 *
 *     with Pool(max(1, cpu_count() - 2)) as pool:
 *         for result in tqdm(pool.imap(work, gen()), total=len(X_values)):
 *             print(result)
 *
 * Results go to stdout in input order; the progress bar goes to stderr.
 */
#include <pmap.h>
#include <pmap_progress.h>

#include <stdio.h>
#include <string.h>

/* A parameter record: the tuple (x, param2). Records are bytes; a plain
 * struct is fine because workers are forks of this very program. */
struct params {
    int x;
    int param2;
};

/* def work(params): x, param2 = params; return x + param2 */
static int work(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    struct params p;
    int result;

    (void)ctx;
    if (len != sizeof p)
        return 1; /* not one of ours: the item reports PMAP_ETASK, code 1 */
    memcpy(&p, param, sizeof p);
    result = p.x + p.param2;
    return pmap_buf_set(out, &result, sizeof result);
}

/* X_values = [...]; param2 = 15 */
static const int X_values[] = {10, 22, 35, 4, 532, 12, 42, 53, 23};
static const int param2 = 15;
#define N_VALUES (sizeof X_values / sizeof X_values[0])

/* def gen(): for x in X_values: yield (x, param2) */
struct gen_state {
    size_t i;
};

static int gen(void *gen_ctx, pmap_buf *param)
{
    struct gen_state *g = gen_ctx;
    struct params p;

    if (g->i == N_VALUES)
        return 0; /* StopIteration */
    p.x = X_values[g->i++];
    p.param2 = param2;
    return pmap_buf_set(param, &p, sizeof p) == PMAP_OK ? 1 : -1;
}

int main(void)
{
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen_state g = {0};
    int rc, failed = 0;
    pmap_progress *bar;

    /* with Pool(max(1, cpu_count() - 2)) as pool: */
    pmap_options_init(&opt);
    opt.workers = pmap_cpu_count() - 2;
    if (opt.workers < 1)
        opt.workers = 1;
    pool = pmap_pool_create(work, NULL, &opt);
    if (pool == NULL) {
        perror("pmap_pool_create");
        return 1;
    }

    /* for result in tqdm(pool.imap(work, gen()), total=len(X_values)): */
    it = pmap_imap(pool, gen, &g);
    if (it == NULL) {
        perror("pmap_imap");
        pmap_pool_destroy(pool);
        return 1;
    }
    bar = pmap_progress_new(stderr, NULL, N_VALUES);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        int result;

        pmap_progress_add(bar, 1);
        if (item.status != PMAP_OK) {
            pmap_progress_printf(bar, stderr, "item %llu: %s (code %d)\n",
                                 (unsigned long long)item.index, pmap_strerror(item.status),
                                 item.code);
            failed = 1;
            continue;
        }
        memcpy(&result, item.data, sizeof result);
        pmap_progress_printf(bar, stdout, "%d\n", result); /* tqdm.write(str(result)) */
    }
    pmap_progress_free(bar);
    if (rc != PMAP_DONE) {
        fprintf(stderr, "map failed: %s\n", pmap_strerror(rc));
        failed = 1;
    }
    pmap_iter_free(it);
    pmap_pool_destroy(pool);
    return failed;
}
