/*
 * Shared memory for large records: the arena of one worker (see arena.h
 * for the layout and the hand-over rule) and the writer's allocator.
 *
 * Regions are handed back in the order they were taken (results come back
 * in the order their parameters went out, and are read in that order), so
 * the allocator is a ring of regions, oldest first. It goes back to the
 * start of the half as soon as the record there is done with, rather than
 * on to the end, so that the pages in use are those of the bytes in
 * flight: records of 1 MiB, three in flight, stay within 3-4 MiB of a
 * half of hundreds.
 */
#ifdef __linux__
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS */
#endif
#define _POSIX_C_SOURCE 200809L

#include "arena.h"

#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__linux__) && defined(MFD_CLOEXEC) && defined(F_ADD_SEALS)
#define HAVE_ARENA 1
#else
#define HAVE_ARENA 0
#endif

#define ALIGN 64u

/* The caller's arena mappings, which children must not have: every child
 * unmaps them at once, in an atfork handler (workers map their own).
 * Not MADV_DONTFORK: valgrind does not know it, and its leak check in a
 * child would scan gigabytes that are not there, one fault per word;
 * and a child's own unmapping can only ever hit the inherited mapping
 * (nothing else can be at those addresses), where an unmapping of a range
 * the kernel left out could hit what another atfork handler mapped first.
 * Inherited until then, a shared mapping costs the fork no page copies. */
struct listed {
    void *base;
    size_t size;
    int blocks; /* a pool's shared parameter blocks (pmap__blocks) */
};
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t list_once = PTHREAD_ONCE_INIT;
static struct listed *list;
static size_t list_n, list_cap;
static int list_hooked;
/* The blocks the child of this thread's next fork keeps (read-only). */
static _Thread_local const void *keep_base;

static void list_prepare(void)
{
    pthread_mutex_lock(&list_lock);
}

static void list_parent(void)
{
    pthread_mutex_unlock(&list_lock);
}

static void list_child(void)
{
    size_t i;

    for (i = 0; i < list_n; i++) {
        if (list[i].blocks && list[i].base == keep_base)
            (void)mprotect(list[i].base, list[i].size, PROT_READ);
        else
            (void)munmap(list[i].base, list[i].size);
    }
    list_n = 0;
    keep_base = NULL;
    /* The forking thread held the lock; the child has that thread only. */
    pthread_mutex_init(&list_lock, NULL);
}

static void list_hook(void)
{
    list_hooked = pthread_atfork(list_prepare, list_parent, list_child) == 0;
}

static int list_add(void *base, size_t size, int blocks)
{
    int rc = 0;

    (void)pthread_once(&list_once, list_hook);
    if (!list_hooked)
        return PMAP_ESYS; /* no arena then: the record takes the pipe */
    pthread_mutex_lock(&list_lock);
    if (list_n == list_cap) {
        size_t ncap = list_cap ? list_cap * 2 : 16;
        struct listed *n = realloc(list, ncap * sizeof *n);

        if (n == NULL) {
            rc = PMAP_ENOMEM;
        } else {
            list = n;
            list_cap = ncap;
        }
    }
    if (rc == 0) {
        list[list_n].base = base;
        list[list_n].size = size;
        list[list_n].blocks = blocks;
        list_n++;
    }
    pthread_mutex_unlock(&list_lock);
    return rc;
}

static void list_remove(void *base)
{
    size_t i;

    pthread_mutex_lock(&list_lock);
    for (i = 0; i < list_n; i++)
        if (list[i].base == base) {
            list[i] = list[--list_n];
            break;
        }
    pthread_mutex_unlock(&list_lock);
}

size_t pmap__arena_half(size_t max_record)
{
#if HAVE_ARENA
    size_t half, page = (size_t)sysconf(_SC_PAGESIZE);

    /* Only a bounded max_record_bytes gets an arena: the default (1 GiB)
     * would map gigabytes per worker, and whatever scans a worker's
     * memory at its exit (valgrind's leak check: minutes per test suite)
     * pays for every byte of it. */
    if (max_record < PMAP__ARENA_MIN || max_record > PMAP__ARENA_HALF_MAX / PMAP__ARENA_SPAN)
        return 0;
    half = max_record * PMAP__ARENA_SPAN;
    return (half + page - 1) / page * page;
#else
    (void)max_record;
    return 0;
#endif
}

int pmap__arena_open(size_t half, int *fd)
{
#if HAVE_ARENA
    int rc = pmap__memfd_open("pmap-arena", fd);

    if (rc != 0)
        return rc;
    /* Fixed for good: no one, not even a worker with the descriptor,
     * can shrink the file under a mapping of the other side. */
    if (ftruncate(*fd, (off_t)(2 * half)) != 0 ||
        fcntl(*fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        pmap__close(fd); /* keeps errno */
        return PMAP_ESYS;
    }
    return 0;
#else
    (void)half;
    *fd = -1;
    errno = ENOSYS;
    return PMAP_ESYS;
#endif
}

int pmap__arena_map(struct pmap__arena *a, int fd, size_t half, int which, int writable,
                    int dontfork)
{
    void *p;

    memset(a, 0, sizeof *a);
    p = mmap(NULL, half, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd,
             which ? (off_t)half : 0);
    if (p == MAP_FAILED)
        return PMAP_ESYS;
#if HAVE_ARENA
    if (dontfork && list_add(p, half, 0) != 0) {
        munmap(p, half);
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    a->listed = dontfork;
#else
    (void)dontfork;
#endif
    a->base = p;
    a->size = half;
    a->populate = 1;
    return 0;
}

void pmap__arena_forget(struct pmap__arena *a)
{
    free(a->reg);
    memset(a, 0, sizeof *a);
}

void pmap__arena_unmap(struct pmap__arena *a)
{
    if (a->base != NULL) {
        if (a->listed)
            list_remove(a->base);
        munmap(a->base, a->size);
    }
    pmap__arena_forget(a);
}

static struct pmap__region *reg_at(const struct pmap__arena *a, uint32_t i)
{
    return (struct pmap__region *)pmap__arena_reg(a, i);
}

static int reg_push(struct pmap__arena *a, uint64_t seq, size_t off, size_t end)
{
    struct pmap__region *r;

    if (a->reg_n == a->reg_cap) {
        uint32_t ncap = a->reg_cap ? a->reg_cap * 2 : 8, i;
        struct pmap__region *n;

        if (ncap == 0)
            return PMAP_ENOMEM;
        n = malloc((size_t)ncap * sizeof *n);
        if (n == NULL)
            return PMAP_ENOMEM;
        for (i = 0; i < a->reg_n; i++)
            n[i] = *reg_at(a, i);
        free(a->reg);
        a->reg = n;
        a->reg_cap = ncap;
        a->reg_first = 0;
    }
    r = reg_at(a, a->reg_n);
    r->seq = seq;
    r->off = off;
    r->end = end;
    a->reg_n++;
    return 0;
}

/* Fault in [hwm, end) ahead of the copy, so that memory running out is
 * an error here (the record takes the pipe) rather than a SIGBUS in the
 * middle of a copy. 0, or -1: no room. */
static int populate(struct pmap__arena *a, size_t end)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    end = (end + page - 1) / page * page;
    if (end > a->size)
        end = a->size;
#ifdef MADV_POPULATE_WRITE
    if (a->populate && madvise(a->base + a->hwm, end - a->hwm, MADV_POPULATE_WRITE) != 0) {
        if (errno != EINVAL)
            return -1;
        a->populate = 0; /* a kernel before 5.14: take the chance */
    }
#endif
    a->hwm = end;
    return 0;
}

uint64_t pmap__arena_alloc(struct pmap__arena *a, uint64_t seq, size_t len)
{
    size_t need, off;

    if (a->base == NULL || len == 0 || len > a->size - ALIGN)
        return PMAP__ARENA_NONE;
    need = (len + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (a->reg_n == 0) {
        off = 0;
    } else {
        const struct pmap__region *old = reg_at(a, 0), *last = reg_at(a, a->reg_n - 1);

        if (last->off >= old->off) {
            /* In use: [old->off, last->end). Back to the start first. */
            if (need <= old->off)
                off = 0;
            else if (need <= a->size - last->end)
                off = last->end;
            else
                return PMAP__ARENA_NONE;
        } else {
            /* In use: [old->off, size) and [0, last->end). */
            if (need > old->off - last->end)
                return PMAP__ARENA_NONE;
            off = last->end;
        }
    }
    if (off + need > a->hwm && populate(a, off + need) != 0)
        return PMAP__ARENA_NONE;
    if (reg_push(a, seq, off, off + need) != 0)
        return PMAP__ARENA_NONE;
    return off;
}

void pmap__arena_unalloc(struct pmap__arena *a, uint64_t seq)
{
    while (a->reg_n != 0 && reg_at(a, a->reg_n - 1)->seq >= seq)
        a->reg_n--;
}

void pmap__arena_release_slow(struct pmap__arena *a, uint64_t seq)
{
    while (a->reg_n != 0 && a->reg[a->reg_first].seq < seq) {
        a->reg_first = (a->reg_first + 1) & (a->reg_cap - 1);
        a->reg_n--;
    }
}

void pmap__blocks_keep(const void *base)
{
    keep_base = base;
}

int pmap__blocks_open(struct pmap__blocks *b, size_t block, uint32_t n)
{
#if HAVE_ARENA
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint32_t i;
    void *p;
    int fd = -1, rc;

    memset(b, 0, sizeof *b);
    block = (block + page - 1) / page * page;
    if (block == 0 || block > PMAP__BLOCKS_MAX) {
        errno = EINVAL;
        return PMAP_ESYS;
    }
    if (n == 0)
        n = 1;
    if ((size_t)n > PMAP__BLOCKS_MAX / block)
        n = (uint32_t)(PMAP__BLOCKS_MAX / block);
    b->free = malloc((size_t)n * sizeof *b->free);
    if (b->free == NULL) {
        errno = ENOMEM;
        return PMAP_ENOMEM;
    }
    rc = pmap__memfd_open("pmap-blocks", &fd);
    if (rc != 0)
        goto fail;
    /* Sealed at its size, so that no access within the mapping can fault
     * with SIGBUS; the descriptor is closed once mapped, so no one can map
     * it writable again (workers only inherit the caller's mapping). */
    rc = PMAP_ESYS;
    if (ftruncate(fd, (off_t)((size_t)n * block)) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
        goto fail;
    p = mmap(NULL, (size_t)n * block, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        goto fail;
    pmap__close(&fd);
    rc = list_add(p, (size_t)n * block, 1);
    if (rc != 0) {
        munmap(p, (size_t)n * block);
        errno = ENOMEM;
        goto fail;
    }
    b->base = p;
    b->size = (size_t)n * block;
    b->block = block;
    b->n = n;
    /* Block 0 is taken first. */
    for (i = 0; i < n; i++)
        b->free[i] = n - 1 - i;
    b->nfree = n;
    return 0;
fail:
    {
        int saved = errno;

        pmap__close(&fd);
        free(b->free);
        memset(b, 0, sizeof *b);
        errno = saved;
    }
    return rc;
#else
    (void)block;
    (void)n;
    memset(b, 0, sizeof *b);
    errno = ENOSYS;
    return PMAP_ESYS;
#endif
}

void pmap__blocks_forget(struct pmap__blocks *b)
{
    free(b->free);
    memset(b, 0, sizeof *b);
}

void pmap__blocks_close(struct pmap__blocks *b)
{
    if (b->base != NULL) {
        list_remove(b->base);
        munmap(b->base, b->size);
    }
    pmap__blocks_forget(b);
}
