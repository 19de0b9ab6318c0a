/*
 * Library-owned byte buffers. They grow geometrically and are reused from
 * record to record, so the hot path allocates only when a record is larger
 * than any before it in the same buffer.
 */
#ifdef __linux__
#define _DEFAULT_SOURCE /* madvise */
#endif
#define _POSIX_C_SOURCE 200809L

#include "buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#define POPULATE_MIN ((size_t)1 << 20)

void pmap__buf_populate(struct pmap_buf *b, size_t from, size_t to)
{
    unsigned char *p = b->data;

#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
    size_t page;
    uintptr_t lo, hi;

    if (to - from < POPULATE_MIN)
        return;
    page = (size_t)sysconf(_SC_PAGESIZE);
    lo = ((uintptr_t)p + from + page - 1) & ~(uintptr_t)(page - 1);
    hi = ((uintptr_t)p + to) & ~(uintptr_t)(page - 1);
    /* Advice only: an old kernel (EINVAL) or no memory now (the copy
     * then faults as it would have) changes nothing. */
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
#else
    (void)p;
    (void)from;
    (void)to;
#endif
}

void pmap__buf_init(struct pmap_buf *b, size_t max)
{
    b->data = b->small;
    b->len = 0;
    b->cap = sizeof b->small;
    b->max = max;
}

int pmap__buf_reserve(struct pmap_buf *b, size_t cap)
{
    size_t ncap;
    unsigned char *p;

    if (cap <= b->cap)
        return 0;
    ncap = b->cap ? b->cap : 64;
    while (ncap < cap) {
        if (ncap > SIZE_MAX / 2) {
            ncap = cap;
            break;
        }
        ncap *= 2;
    }
    if (b->data == b->small || b->len == 0) {
        /* Nothing to keep: realloc would copy the old block's bytes. */
        if (b->data != b->small) {
            free(b->data);
            b->data = b->small;
            b->cap = sizeof b->small;
        }
        p = malloc(ncap);
        if (p == NULL) {
            ncap = cap;
            p = malloc(ncap);
        }
        if (p != NULL && b->len)
            memcpy(p, b->small, b->len);
    } else {
        p = realloc(b->data, ncap);
        if (p == NULL) {
            /* Doubling may overshoot what memory allows; the exact size may not. */
            ncap = cap;
            p = realloc(b->data, ncap);
        }
    }
    if (p == NULL)
        return PMAP_ENOMEM;
    b->data = p;
    b->cap = ncap;
    return 0;
}

/*
 * A failed pmap_buf_set/pmap_buf_reserve marks the buffer failed: cap 0
 * (so that every later call takes the slow path, which clears the mark)
 * and the status in `small`, with the real capacity of a heap block
 * beside it (`small` holds no record then: the length is 0).
 */
static PMAP__RARE void buf_fail(struct pmap_buf *b, int status)
{
    b->len = 0;
    if (b->cap != 0 && b->data != b->small)
        memcpy(b->small, &b->cap, sizeof b->cap);
    b->cap = 0;
    memcpy(b->small + sizeof(size_t), &status, sizeof status);
}

int pmap__buf_failed(const struct pmap_buf *b)
{
    int status = 0;

    if (b->cap == 0)
        memcpy(&status, b->small + sizeof(size_t), sizeof status);
    return status;
}

void pmap__buf_unfail(struct pmap_buf *b)
{
    if (b->cap != 0)
        return;
    if (b->data == b->small)
        b->cap = sizeof b->small;
    else
        memcpy(&b->cap, b->small, sizeof b->cap);
}

void pmap__buf_trim(struct pmap_buf *b, size_t keep)
{
    pmap__buf_unfail(b);
    b->len = 0;
    if (b->cap > keep && b->data != b->small) {
        free(b->data);
        b->data = b->small;
        b->cap = sizeof b->small;
    }
}

void pmap__buf_free(struct pmap_buf *b)
{
    if (b->data != b->small)
        free(b->data);
    b->data = b->small;
    b->len = 0;
    b->cap = sizeof b->small;
}

void pmap__stash_init(struct pmap__stash *s)
{
    s->n = 0;
    s->bytes = 0;
}

static void stash_drop(struct pmap__stash *s, unsigned i)
{
    s->bytes -= s->cap[i];
    s->n--;
    s->block[i] = s->block[s->n];
    s->cap[i] = s->cap[s->n];
}

void pmap__stash_put(struct pmap__stash *s, struct pmap_buf *b)
{
    unsigned char *block;
    size_t cap;

    pmap__buf_unfail(b);
    b->len = 0;
    if (b->data == b->small)
        return;
    block = b->data;
    cap = b->cap;
    b->data = b->small;
    b->cap = sizeof b->small;
    if (s == NULL || cap < PMAP__STASH_MIN || cap > PMAP__STASH_BYTES) {
        free(block);
        return;
    }
    /* Full: the smallest blocks make way for a larger one, since the
     * large ones are the expensive ones to fault in again. */
    while (s->n == PMAP__STASH_SLOTS || s->bytes + cap > PMAP__STASH_BYTES) {
        unsigned i, min = 0;

        for (i = 1; i < s->n; i++)
            if (s->cap[i] < s->cap[min])
                min = i;
        if (s->cap[min] >= cap) {
            free(block);
            return;
        }
        free(s->block[min]);
        stash_drop(s, min);
    }
    s->block[s->n] = block;
    s->cap[s->n] = cap;
    s->n++;
    s->bytes += cap;
}

int pmap__stash_reserve(struct pmap__stash *s, struct pmap_buf *b, size_t cap)
{
    unsigned i, best = PMAP__STASH_SLOTS;

    if (cap <= b->cap)
        return 0;
    if (s != NULL && b->len == 0) {
        for (i = 0; i < s->n; i++)
            if (s->cap[i] >= cap && (best == PMAP__STASH_SLOTS || s->cap[i] < s->cap[best]))
                best = i;
        if (best != PMAP__STASH_SLOTS) {
            pmap__buf_unfail(b);
            if (b->data != b->small)
                free(b->data);
            b->data = s->block[best];
            b->cap = s->cap[best];
            stash_drop(s, best);
            return 0;
        }
    }
    return pmap__buf_reserve(b, cap);
}

void pmap__stash_free(struct pmap__stash *s)
{
    while (s->n) {
        s->n--;
        free(s->block[s->n]);
    }
    s->bytes = 0;
}

/* pmap_buf_reserve when the buffer must grow, or the call is wrong. */
static PMAP__RARE void *buf_reserve_slow(pmap_buf *buf, size_t len)
{
    if (buf == NULL) {
        errno = EINVAL;
        return NULL;
    }
    pmap__buf_unfail(buf);
    if (len > buf->max) {
        buf_fail(buf, PMAP_ETOOBIG);
        errno = E2BIG;
        return NULL;
    }
    /* The length must stay until the buffer has grown: leaving the inline
     * storage, pmap__buf_reserve copies only the bytes the length covers. */
    if (pmap__buf_reserve(buf, len ? len : 1) != 0) {
        buf_fail(buf, PMAP_ENOMEM);
        errno = ENOMEM;
        return NULL;
    }
    buf->len = len;
    return buf->data;
}

void *pmap_buf_reserve(pmap_buf *buf, size_t len)
{
    /* The common case, once per record in generators and tasks: the
     * buffer is already large enough (cap > 0 means data is not NULL). */
    if (buf != NULL && len <= buf->cap && len <= buf->max && buf->cap != 0) {
        buf->len = len;
        return buf->data;
    }
    return buf_reserve_slow(buf, len);
}

/* pmap_buf_set when the buffer must grow, or the call is wrong. */
static PMAP__RARE int buf_set_slow(pmap_buf *buf, const void *data, size_t len)
{
    void *p;

    if (buf == NULL || (data == NULL && len != 0)) {
        if (buf) {
            pmap__buf_unfail(buf);
            buf_fail(buf, PMAP_EINVAL);
        }
        return PMAP_EINVAL;
    }
    p = pmap_buf_reserve(buf, len);
    if (p == NULL)
        return errno == E2BIG ? PMAP_ETOOBIG : PMAP_ENOMEM;
    /* Every byte is written now (unlike pmap_buf_reserve's, which the
     * caller may fill only in part). */
    pmap__buf_populate(buf, 0, len);
    if (len)
        pmap__copy(p, data, len);
    return PMAP_OK;
}

int pmap_buf_set(pmap_buf *buf, const void *data, size_t len)
{
    /* The common case, once per record in tasks: it fits (cap > 0 means
     * data is not NULL). */
    if (buf != NULL && data != NULL && len <= buf->cap && len <= buf->max && buf->cap != 0) {
        buf->len = len;
        pmap__copy(buf->data, data, len);
        return PMAP_OK;
    }
    return buf_set_slow(buf, data, len);
}
