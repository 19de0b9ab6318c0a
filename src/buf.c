/*
 * Library-owned byte buffers. They grow geometrically and are reused from
 * record to record, so the hot path allocates only when a record is larger
 * than any before it in the same buffer.
 */
#define _POSIX_C_SOURCE 200809L

#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    if (b->data == b->small) {
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
