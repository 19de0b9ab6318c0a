/*
 * Library-owned byte buffers (the public opaque pmap_buf) and the small
 * copy every per-record path uses.
 */
#ifndef PMAP_BUF_H
#define PMAP_BUF_H

#include "internal.h"

#include <stddef.h>
#include <string.h>

/* Records up to this size live inside the buffer itself: a slot of the
 * window then holds a tiny record without a heap block of its own, which
 * halves the memory a map of tiny records walks through per record. */
#define PMAP__BUF_SMALL 16u

/* A buffer must not be moved or copied once initialised (data may point
 * into it). */
struct pmap_buf {
    unsigned char *data; /* `small` until more is needed; never NULL once initialised */
    size_t len;
    size_t cap;
    size_t max; /* max_record_bytes: the most len may be */
    /* Aligned like malloc's blocks are (at least 8), so that records are
     * aligned the same wherever they live (pmap.h promises 8). */
    _Alignas(8) unsigned char small[PMAP__BUF_SMALL];
};

void pmap__buf_init(struct pmap_buf *b, size_t max);
/* Make room for `cap` bytes, keeping the contents. 0 or PMAP_ENOMEM. */
int pmap__buf_reserve(struct pmap_buf *b, size_t cap);
/* Release the storage if it grew past `keep` bytes; empty the buffer. */
void pmap__buf_trim(struct pmap_buf *b, size_t keep);
void pmap__buf_free(struct pmap_buf *b);
/* Bytes [from, to) of b's storage are about to be written whole: when
 * they are many (1 MiB or more), fault their pages in with one call
 * rather than one fault per page (a page fault per 4 KiB cost the caller
 * a seventh of its cycles copying 8 MiB results out of shared memory,
 * more on virtual machines, where each fault exits to the hypervisor).
 * Advice only: nothing changes when the kernel cannot. */
void pmap__buf_populate(struct pmap_buf *b, size_t from, size_t to);
/* The status of the failed pmap_buf_set/pmap_buf_reserve that was the
 * buffer's last call (PMAP_ETOOBIG, PMAP_ENOMEM, PMAP_EINVAL), or 0. A
 * failed buffer has cap 0: `cap == 0` is the cheap test. */
int pmap__buf_failed(const struct pmap_buf *b);
/* Clear the failed mark (the buffer stays empty). */
void pmap__buf_unfail(struct pmap_buf *b);

/*
 * Large blocks kept between records. Without it every record above the
 * slots' keep bound got a fresh block from malloc, which for a large one
 * is a fresh mmap: the copy into it then faulted in every page (a quarter
 * of the caller's cycles echoing 1 MiB records). Blocks that records let
 * go of wait here, few and bounded in bytes, for the next record of a
 * similar size, so their pages stay mapped and warm in the cache.
 */
#define PMAP__STASH_SLOTS 16u
#define PMAP__STASH_MIN ((size_t)16 << 10)
#define PMAP__STASH_BYTES ((size_t)256 << 20)

struct pmap__stash {
    unsigned n;
    size_t bytes; /* sum of cap[] */
    unsigned char *block[PMAP__STASH_SLOTS];
    size_t cap[PMAP__STASH_SLOTS];
};

void pmap__stash_init(struct pmap__stash *s);
/* Empty b (as pmap__buf_trim(b, 0)), keeping its heap block in the stash
 * when it is worth keeping and there is room. s may be NULL. */
void pmap__stash_put(struct pmap__stash *s, struct pmap_buf *b);
/* pmap__buf_reserve for an empty buffer, from the stash's smallest block
 * that holds `cap` bytes when there is one. s may be NULL. */
int pmap__stash_reserve(struct pmap__stash *s, struct pmap_buf *b, size_t cap);
/* Free every block the stash holds. */
void pmap__stash_free(struct pmap__stash *s);

/* memcpy for records that are usually a few bytes: fixed-size moves the
 * compiler inlines, instead of a library call per record. No overlap. */
static inline void pmap__copy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (n >= 8 && n <= 16) {
        memcpy(d, s, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4 && n < 8) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else if (n < 4) {
        if (n > 0)
            d[0] = s[0];
        if (n > 1)
            d[1] = s[1];
        if (n > 2)
            d[2] = s[2];
    } else {
        memcpy(d, s, n);
    }
}

#endif /* PMAP_BUF_H */
