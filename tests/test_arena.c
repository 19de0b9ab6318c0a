/*
 * Large records through shared memory (src/arena.c): parameters and
 * results of PMAP__ARENA_MIN bytes or more travel through each worker's
 * arena, the rest through the pipes, with every guarantee of the pipes
 * kept: the bytes arrive intact in both directions, a worker that
 * scribbles on its arena after sending a result changes nothing handed
 * out, an arena record that points outside the arena is a protocol error
 * (never a read outside it), and no mapping or descriptor outlives the
 * pool.
 */
#define _GNU_SOURCE
#include "arena.h"
#include "testutil.h"
#include "wire.h"

#include <pmap.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define MIB ((size_t)1 << 20)

/* Payload j of record rec: a byte of the record's, with the block number
 * stamped at the start of every 4 KiB block, so that bytes of another
 * record or another place of this one do not pass (memset and memcmp keep
 * megabytes cheap in a debug build). */
#define BLOCK 4096u

static void fill(unsigned char *p, uint64_t rec, size_t len)
{
    size_t j;

    memset(p, (int)(rec * 131u + 17u) & 0xff, len);
    for (j = 0; j + 4 <= len; j += BLOCK) {
        uint32_t stamp = (uint32_t)(j / BLOCK) ^ (uint32_t)(rec << 20);

        memcpy(p + j, &stamp, 4);
    }
}

/* Whether p holds fill(rec, len), except its first byte. */
static int filled(const unsigned char *p, uint64_t rec, size_t len)
{
    static unsigned char want[BLOCK];
    size_t j;

    for (j = 0; j < len; j += BLOCK) {
        size_t n = len - j < BLOCK ? len - j : BLOCK;

        fill(want, rec, BLOCK);
        if (j + 4 <= len) {
            uint32_t stamp = (uint32_t)(j / BLOCK) ^ (uint32_t)(rec << 20);

            memcpy(want, &stamp, 4);
        }
        if (memcmp(p + j + (j == 0), want + (j == 0), n - (j == 0)) != 0)
            return 0;
    }
    return 1;
}

/* The shared mappings of this process, one line each (address range,
 * permissions, name), in a malloc'd string: what a pool must leave as it
 * found it. */
static char *shared_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], *all = NULL;
    size_t len = 0;

    assert_non_null(f);
    while (fgets(line, sizeof line, f) != NULL) {
        char perms[8] = "";
        size_t n;

        if (sscanf(line, "%*s %7s", perms) != 1 || perms[3] != 's')
            continue;
        n = strlen(line);
        all = realloc(all, len + n + 1);
        assert_non_null(all);
        memcpy(all + len, line, n + 1);
        len += n;
    }
    fclose(f);
    return all ? all : strdup("");
}

/* The mapping of /proc/self/maps that holds address p: 1 and its
 * permissions if it is an arena's, 2 if it is a pool's shared parameter
 * blocks, 0 if it is another, -1 if none. */
static int in_arena(const void *p, char perms[8])
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    uintptr_t a = (uintptr_t)p;
    int found = -1;

    if (f == NULL)
        return -1;
    while (found < 0 && fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;

        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
            continue;
        if (a >= lo && a < hi)
            found = strstr(line, "pmap-arena") != NULL    ? 1
                    : strstr(line, "pmap-blocks") != NULL ? 2
                                                          : 0;
    }
    fclose(f);
    return found;
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */
/* ------------------------------------------------------------------------ */

/* Payload sizes after the 8-byte index: parameters of PMAP__ARENA_MIN - 1
 * and PMAP__ARENA_MIN bytes among them. */
static const size_t sizes[] = {100, MIB - 9, MIB - 8, 3 * MIB + 5, 64 << 10, 2 * MIB, 0, MIB + 64};
#define NSIZES (sizeof sizes / sizeof sizes[0])

struct sgen {
    uint64_t next, n;
};

static int size_gen(void *ctx, pmap_buf *param)
{
    struct sgen *g = ctx;
    size_t len = sizes[g->next % NSIZES];
    unsigned char *p;

    if (g->next == g->n)
        return 0;
    p = pmap_buf_reserve(param, len + sizeof g->next);
    if (p == NULL)
        return -1;
    memcpy(p, &g->next, sizeof g->next);
    fill(p + sizeof g->next, g->next, len);
    g->next++;
    return 1;
}

/*
 * Echo, and say where the parameter was: the result is the parameter with
 * its first byte after the index replaced by 'A' (in an arena, writable),
 * 'B' (in the pool's shared blocks, read-only: written by the generator
 * and sent without a copy) or 'P' (elsewhere). Where the parameter is
 * writable, the task writes into it first, as a task working in place
 * would.
 */
static int where_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    unsigned char *p;
    char perms[8] = "";
    int where;

    (void)ctx;
    if (len < 9)
        return pmap_buf_set(out, param, len);
    where = in_arena(param, perms);
    if (where != 2) {
        volatile unsigned char *w = (volatile unsigned char *)(uintptr_t)param;

        w[8] = w[8]; /* in place: must not fault */
    }
    p = pmap_buf_reserve(out, len);
    if (p == NULL)
        return 1;
    memcpy(p, param, len);
    p[8] = where == 1 && perms[1] == 'w'   ? 'A'
           : where == 2 && perms[1] == '-' ? 'B'
                                           : 'P';
    return 0;
}

/* Large parameters that reached their task in a shared block. */
static unsigned shared_seen;

static void check_item(const pmap_item *item)
{
    size_t len = sizes[item->index % NSIZES];
    const unsigned char *d = item->data;
    uint64_t idx;
    char perms[8] = "";

    assert_int_equal(item->status, PMAP_OK);
    assert_int_equal(item->len, len + 8);
    memcpy(&idx, d, 8);
    assert_int_equal(idx, item->index);
    if (len > 0 && len + 8 < PMAP__ARENA_MIN)
        assert_int_equal(d[8], 'P');
    else if (len > 0 && d[8] != 'A')
        assert_int_equal(d[8], 'B');
    if (len + 8 >= PMAP__ARENA_MIN && d[8] == 'B')
        shared_seen++;
    if (!filled(d + 8, item->index, len))
        fail_msg("record %llu: wrong bytes", (unsigned long long)item->index);
    /* Handed out from the caller's own memory, never from an arena. */
    if (item->len)
        assert_int_equal(in_arena(item->data, perms), 0);
}

static void run_sizes(pmap_pool *pool, int ordered, uint64_t n)
{
    struct sgen g = {0, n};
    pmap_iter *it = ordered ? pmap_imap(pool, size_gen, &g) : pmap_imap_unordered(pool, size_gen, &g);
    pmap_item item;
    uint64_t got = 0, next = 0;
    int rc;

    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        if (ordered)
            assert_int_equal(item.index, next++);
        check_item(&item);
        got++;
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, n);
    assert_int_equal(pmap_iter_free(it), 0);
}

static void test_roundtrip_mixed_sizes(void **state)
{
    struct tu_snap snap;
    char *before, *after;
    pmap_options opt;
    pmap_pool *pool;

    (void)state;
    tu_snap_take(&snap);
    before = shared_maps();
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_record_bytes = 4 * MIB; /* bounded: the pool uses arenas */
    pool = pmap_pool_create(where_task, NULL, &opt);
    assert_non_null(pool);
    shared_seen = 0;
    run_sizes(pool, 1, 2 * NSIZES);
    run_sizes(pool, 0, NSIZES);
    /* Once large records appear, their parameters are written into the
     * shared blocks (the first ones may not be). */
    assert_true(shared_seen > 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    after = shared_maps();
    assert_string_equal(before, after);
    free(before);
    free(after);
    tu_snap_check(&snap);
}

/* A record limit below the threshold: no arena at all, records of the
 * limit still go through. */
static void test_small_limit_no_arena(void **state)
{
    struct tu_snap snap;
    char *before, *during, *after;
    pmap_options opt;
    pmap_pool *pool;

    (void)state;
    tu_snap_take(&snap);
    before = shared_maps();
    pmap_options_init(&opt);
    opt.workers = 1;
    opt.max_record_bytes = PMAP__ARENA_MIN - 1;
    pool = pmap_pool_create(where_task, NULL, &opt);
    assert_non_null(pool);
    during = shared_maps();
    assert_null(strstr(during, "pmap-arena"));
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    after = shared_maps();
    assert_string_equal(before, after);
    free(before);
    free(during);
    free(after);
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* A worker scribbling on its arena after it sent a result                 */
/* ------------------------------------------------------------------------ */

static int go_pipe[2] = {-1, -1}, done_pipe[2] = {-1, -1};

/* Every writable arena mapping of this process, filled with 'X'. */
static void scribble_arenas(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];

    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        char perms[8];

        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && perms[1] == 'w' &&
            strstr(line, "pmap-arena") != NULL)
            memset((void *)lo, 'X', hi - lo);
    }
    fclose(f);
}

/* Record 0: 2 MiB of 'R'. Record 1: once the caller has record 0 in its
 * hands, overwrite both halves of this worker's arena, then say so. */
static int scribble_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t idx;
    char c;

    (void)ctx;
    (void)len;
    memcpy(&idx, param, sizeof idx);
    if (idx == 0) {
        unsigned char *p = pmap_buf_reserve(out, 2 * MIB);

        if (p == NULL)
            return 1;
        memset(p, 'R', 2 * MIB);
        return 0;
    }
    if (read(go_pipe[0], &c, 1) != 1)
        return 2;
    scribble_arenas();
    if (write(done_pipe[1], "d", 1) != 1)
        return 3;
    return pmap_buf_set(out, "ok", 2);
}

static int two_gen(void *ctx, pmap_buf *param)
{
    uint64_t *i = ctx;
    unsigned char *p;

    if (*i == 2)
        return 0;
    /* Record 1's parameter is large too: it sits in the arena the task
     * overwrites. */
    p = pmap_buf_reserve(param, *i == 1 ? 2 * MIB : 8);
    if (p == NULL)
        return -1;
    memcpy(p, i, sizeof *i);
    (*i)++;
    return 1;
}

static void all_bytes(const pmap_item *item, unsigned char c, size_t len)
{
    const unsigned char *d = item->data;
    size_t j;

    assert_int_equal(item->len, len);
    for (j = 0; j < len; j++)
        if (d[j] != c)
            fail_msg("byte %zu is %#x, not %#x", j, d[j], c);
}

static void test_scribble_after_send(void **state)
{
    struct tu_snap snap;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t i = 0;
    struct pollfd pfd;
    char c;
    int round;

    (void)state;
    assert_int_equal(pipe(go_pipe), 0);
    assert_int_equal(pipe(done_pipe), 0);
    tu_snap_take(&snap);
    pmap_options_init(&opt);
    opt.workers = 1;
    opt.chunk = 2; /* both records on the worker at once */
    opt.max_record_bytes = 4 * MIB; /* halves of 16 MiB to overwrite */
    pool = pmap_pool_create(scribble_task, NULL, &opt);
    assert_non_null(pool);
    for (round = 0; round < 2; round++) {
        i = 0;
        it = pmap_imap(pool, two_gen, &i);
        assert_non_null(it);
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        assert_int_equal(item.index, 0);
        assert_int_equal(item.status, PMAP_OK);
        all_bytes(&item, 'R', 2 * MIB);
        /* Record 0 is handed out: now let record 1 overwrite the arena. */
        assert_int_equal(write(go_pipe[1], "g", 1), 1);
        pfd.fd = done_pipe[0];
        pfd.events = POLLIN;
        assert_int_equal(poll(&pfd, 1, 60000), 1);
        assert_int_equal(read(done_pipe[0], &c, 1), 1);
        all_bytes(&item, 'R', 2 * MIB); /* untouched */
        assert_int_equal(pmap_next(it, &item), PMAP_OK);
        assert_int_equal(item.index, 1);
        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, 2);
        assert_memory_equal(item.data, "ok", 2);
        assert_int_equal(pmap_next(it, &item), PMAP_DONE);
        assert_int_equal(pmap_iter_free(it), 0);
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    tu_snap_check(&snap);
    close(go_pipe[0]);
    close(go_pipe[1]);
    close(done_pipe[0]);
    close(done_pipe[1]);
}

/* ------------------------------------------------------------------------ */
/* Shared parameter blocks                                                  */
/* ------------------------------------------------------------------------ */

#define BLK_N 24u
#define BLK_LEN (2 * MIB)
#define BLK_CRASH 5u

/* Set (in memory shared with the workers) once record BLK_CRASH crashed. */
static volatile unsigned char *blk_crashed;

static int blk_gen(void *ctx, pmap_buf *param)
{
    uint64_t *next = ctx;
    unsigned char *p;

    if (*next == BLK_N)
        return 0;
    p = pmap_buf_reserve(param, BLK_LEN);
    if (p == NULL)
        return -1;
    memcpy(p, next, sizeof *next);
    fill(p + sizeof *next, *next, BLK_LEN - sizeof *next);
    (*next)++;
    return 1;
}

/* Result: the index, then 'B' when the parameter was in a read-only
 * shared block, 'P' elsewhere, then '1' when it held the generator's
 * bytes. Record BLK_CRASH kills its worker on its first run. */
static int blk_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    const unsigned char *p = param;
    unsigned char *r;
    uint64_t idx;
    char perms[8] = "";
    int where;

    (void)ctx;
    memcpy(&idx, p, sizeof idx);
    where = in_arena(param, perms);
    if (idx == BLK_CRASH && !*blk_crashed) {
        *blk_crashed = 1;
        _exit(7);
    }
    r = pmap_buf_reserve(out, 10);
    if (r == NULL)
        return 1;
    memcpy(r, &idx, sizeof idx);
    r[8] = where == 2 && perms[1] == '-' ? 'B' : 'P';
    r[9] = len == BLK_LEN && filled(p + 8, idx, len - 8) ? '1' : '0';
    return 0;
}

/* What a child of the host sees of the pool's shared memory: none. */
static int child_sees_none(void)
{
    pid_t pid;
    int st;

    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        FILE *f = fopen("/proc/self/maps", "r");
        char line[512];
        int bad = f == NULL;

        while (f != NULL && fgets(line, sizeof line, f) != NULL)
            bad |= strstr(line, "pmap-blocks") != NULL || strstr(line, "pmap-arena") != NULL;
        _exit(bad);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* Large parameters are written by the generator into shared blocks that
 * the workers can only read: a record that runs again after a crash reads
 * the generator's bytes, blocks are reused as records finish (more
 * records than blocks), a child of the host has none of it, and nothing
 * is left after destroy. */
static void test_shared_blocks(void **state)
{
    struct tu_snap snap;
    char *before, *after;
    pmap_options opt;
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    uint64_t next = 0, got = 0, shared = 0;
    int rc;

    (void)state;
    blk_crashed = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(blk_crashed != MAP_FAILED);
    *blk_crashed = 0;
    tu_snap_take(&snap);
    before = shared_maps();
    pmap_options_init(&opt);
    opt.workers = 2;
    opt.max_record_bytes = BLK_LEN;
    opt.max_retries = 1;
    pool = pmap_pool_create(blk_task, NULL, &opt);
    assert_non_null(pool);
    it = pmap_imap(pool, blk_gen, &next);
    assert_non_null(it);
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        uint64_t idx;

        assert_int_equal(item.status, PMAP_OK);
        assert_int_equal(item.len, 10);
        memcpy(&idx, item.data, sizeof idx);
        assert_int_equal(idx, item.index);
        assert_int_equal(((const char *)item.data)[9], '1');
        shared += ((const char *)item.data)[8] == 'B';
        if (got++ == BLK_N / 2)
            assert_true(child_sees_none());
    }
    assert_int_equal(rc, PMAP_DONE);
    assert_int_equal(got, BLK_N);
    assert_int_equal(*blk_crashed, 1);
    /* All but the records generated before the first large one was seen. */
    assert_true(shared >= BLK_N / 2);
    assert_int_equal(pmap_iter_free(it), 0);
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    after = shared_maps();
    assert_string_equal(before, after);
    free(before);
    free(after);
    tu_snap_check(&snap);
    munmap((void *)(uintptr_t)blk_crashed, 4096);
}

/* ------------------------------------------------------------------------ */
/* A worker that lies about where its result is                             */
/* ------------------------------------------------------------------------ */

#define LIE_MAX MIB

/* The worker's result pipe: its only write-only pipe. */
static int result_fd(void)
{
    int fd;

    for (fd = 3; fd < 1024; fd++) {
        struct stat st;
        int fl;

        if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode))
            continue;
        fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_ACCMODE) == O_WRONLY)
            return fd;
    }
    return -1;
}

/* Record 0, the first its worker runs (seq 0), writes a well-formed
 * results frame whose arena record points outside the arena (variant in
 * the parameter); the others echo. */
static int lie_task(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    uint64_t v[2], half = pmap__arena_half(LIE_MAX), off, rlen = LIE_MAX;
    unsigned char buf[PMAP__HDR_SIZE + PMAP__REC_ASIZE + PMAP__TRL_SIZE];
    struct pmap__frame f;
    int fd;

    (void)ctx;
    memcpy(v, param, sizeof v);
    if (v[0] != 0)
        return pmap_buf_set(out, param, len);
    switch (v[1]) {
    case 0:
        off = half; /* just past the end */
        break;
    case 1:
        off = half - 64; /* starts inside, ends outside */
        break;
    case 2:
        off = UINT64_MAX - 100; /* wraps around */
        break;
    default:
        off = 0;
        rlen = half + 1; /* longer than the arena (and the record limit) */
        break;
    }
    memset(&f, 0, sizeof f);
    f.kind = PMAP__K_RESULTS;
    f.count = 1;
    f.seq = 0;
    f.bytes = PMAP__REC_ASIZE;
    pmap__frame_hdr(buf, &f);
    pmap__rec_arena(buf + PMAP__HDR_SIZE, 0, rlen, off);
    pmap__frame_trl(buf + PMAP__HDR_SIZE + PMAP__REC_ASIZE, &f);
    fd = result_fd();
    if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
        return 5;
    return pmap_buf_set(out, param, len);
}

struct lgen {
    uint64_t next, n, variant;
};

static int lie_gen(void *ctx, pmap_buf *param)
{
    struct lgen *g = ctx;
    uint64_t v[2] = {g->next, g->variant};

    if (g->next == g->n)
        return 0;
    g->next++;
    return pmap_buf_set(param, v, sizeof v) == PMAP_OK ? 1 : -1;
}

static void test_arena_record_out_of_bounds(void **state)
{
    enum { N = 8 };
    struct tu_snap snap;
    uint64_t variant;

    (void)state;
    tu_snap_take(&snap);
    for (variant = 0; variant < 4; variant++) {
        struct lgen g = {0, N, variant};
        pmap_options opt;
        pmap_pool *pool;
        pmap_iter *it;
        pmap_item item;
        int rc, proto = 0;
        uint64_t got = 0;

        pmap_options_init(&opt);
        opt.workers = 1;
        opt.chunk = 1;
        opt.max_record_bytes = LIE_MAX;
        pool = pmap_pool_create(lie_task, NULL, &opt);
        assert_non_null(pool);
        it = pmap_imap(pool, lie_gen, &g);
        assert_non_null(it);
        while ((rc = pmap_next(it, &item)) == PMAP_OK) {
            uint64_t v[2];

            if (item.index == 0)
                assert_int_equal(item.status, PMAP_EPROTO);
            if (item.status == PMAP_EPROTO) {
                proto++;
            } else {
                assert_int_equal(item.status, PMAP_OK);
                assert_int_equal(item.len, sizeof v);
                memcpy(v, item.data, sizeof v);
                assert_int_equal(v[0], item.index);
            }
            got++;
        }
        assert_int_equal(rc, PMAP_DONE);
        assert_int_equal(got, N);
        /* Only what was in flight on the lying worker (chunk 1, three deep). */
        assert_true(proto >= 1 && proto <= 3);
        assert_int_equal(pmap_iter_free(it), 0);
        assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    }
    tu_snap_check(&snap);
}

/* ------------------------------------------------------------------------ */
/* The allocator                                                            */
/* ------------------------------------------------------------------------ */

/* Regions come back in order; the allocator goes back to the start as soon
 * as it can, never hands out overlapping regions, and says no when full. */
static void test_allocator(void **state)
{
    struct pmap__arena a;
    size_t half = pmap__arena_half(MIB);
    uint64_t off[8], seq;
    int fd = -1;

    (void)state;
    assert_true(half >= 4 * MIB);
    assert_int_equal(pmap__arena_open(half, &fd), 0);
    assert_int_equal(pmap__arena_map(&a, fd, half, 0, 1, 1), 0);
    close(fd);
    assert_int_equal(pmap__arena_alloc(&a, 0, 0), PMAP__ARENA_NONE);
    assert_int_equal(pmap__arena_alloc(&a, 0, half), PMAP__ARENA_NONE);
    off[0] = pmap__arena_alloc(&a, 0, MIB);
    off[1] = pmap__arena_alloc(&a, 1, MIB);
    off[2] = pmap__arena_alloc(&a, 2, 100);
    assert_int_equal(off[0], 0);
    assert_int_equal(off[1], MIB);
    assert_int_equal(off[2], 2 * MIB);
    /* Record 0 done: its region is the first reused. */
    pmap__arena_release(&a, 1);
    off[3] = pmap__arena_alloc(&a, 3, MIB - 64);
    assert_int_equal(off[3], 0);
    /* Wrapped: room only up to record 1's region, 64 bytes. */
    assert_int_equal(pmap__arena_alloc(&a, 4, 65), PMAP__ARENA_NONE);
    pmap__arena_release(&a, 3);
    off[4] = pmap__arena_alloc(&a, 4, 2 * MIB);
    assert_int_equal(off[4], MIB - 64);
    /* A batch never sent gives its regions back. */
    pmap__arena_unalloc(&a, 4);
    off[4] = pmap__arena_alloc(&a, 4, 64);
    assert_int_equal(off[4], MIB - 64);
    pmap__arena_release(&a, 5);
    /* Empty: from the start again, and every region is writable. */
    for (seq = 5; seq < 8; seq++) {
        off[seq] = pmap__arena_alloc(&a, seq, MIB);
        assert_int_equal(off[seq], (seq - 5) * MIB);
        memset(a.base + off[seq], (int)seq, MIB);
    }
    pmap__arena_unmap(&a);
    assert_null(a.base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocator),
        cmocka_unit_test(test_roundtrip_mixed_sizes),
        cmocka_unit_test(test_small_limit_no_arena),
        cmocka_unit_test(test_scribble_after_send),
        cmocka_unit_test(test_shared_blocks),
        cmocka_unit_test(test_arena_record_out_of_bounds),
    };

    /* PMAP_TEST_FILTER=test_name (wildcards * and ?) runs only some tests. */
    if (getenv("PMAP_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("PMAP_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
