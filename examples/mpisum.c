/*
 * mpisum: examples/sum.c over MPI (DESIGN §11). The one changed call:
 * pmap_pool_create(work, NULL, &opt) becomes
 * pmap_mpi_pool_create(MPI_COMM_WORLD, 0, work, NULL, &opt), between
 * MPI_Init and MPI_Finalize. Every rank runs this program; rank 0 drives the
 * map, the others serve it and return NULL with errno 0.
 *
 *     mpirun -np 3 ./mpisum
 */
#include <pmap.h>
#include <pmap_mpi.h>
#include <pmap_progress.h>

#include <errno.h>
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

int main(int argc, char **argv)
{
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    struct gen_state g = {0};
    int rc, failed = 0;
    pmap_progress *bar;

    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "MPI_Init failed\n");
        return 1;
    }
    /* with Pool(max(1, cpu_count() - 2)) as pool: (on each serving rank) */
    pmap_options_init(&opt);
    opt.workers = pmap_cpu_count() - 2;
    if (opt.workers < 1)
        opt.workers = 1;
    errno = 0;
    pool = pmap_mpi_pool_create(MPI_COMM_WORLD, 0, work, NULL, &opt);
    if (pool == NULL) {
        /* errno 0: a serving rank whose root has destroyed the pool. */
        int err = errno;

        if (err != 0)
            fprintf(stderr, "pmap_mpi_pool_create: %s\n", strerror(err));
        MPI_Finalize();
        return err != 0;
    }

    /* for result in tqdm(pool.imap(work, gen()), total=len(X_values)): */
    it = pmap_imap(pool, gen, &g);
    if (it == NULL) {
        perror("pmap_imap");
        pmap_pool_destroy(pool);
        MPI_Finalize();
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
    MPI_Finalize();
    return failed;
}
