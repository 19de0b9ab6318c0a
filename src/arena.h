/*
 * Shared memory for large records (arena.c). Each worker process of the
 * process backend has an arena of its own: one memfd, made by the caller
 * just before it forks that worker (so a replacement gets a fresh one),
 * mapped by both and closed by both once mapped. Its first half carries
 * parameters (the caller writes; a task may change its own parameter in
 * place, which the caller never reads back), its second half results (the
 * worker writes, the caller maps it read-only). A record
 * of PMAP__ARENA_MIN bytes or more is copied into a region of the
 * writer's half, and the pipe carries only an arena record (wire.h:
 * offset and length) in its place.
 *
 * Hand-over rule. A region belongs to the side that reads it from the
 * moment its arena record is sent until the caller has read the result of
 * that record:
 * - a parameter region is the worker's from the send of its parameter
 *   until the caller has read that record's result (then the caller may
 *   reuse it);
 * - a result region is the caller's from the send of the result until the
 *   caller has copied it out; the caller then publishes the number of
 *   results it has read (pmap__shm_slot.consumed) and the worker may reuse
 *   the region.
 * The caller never hands out a pointer into an arena: it copies each
 * result into the record's own buffer (or a stash block) while it decodes
 * the frame, so a worker that scribbles on its half afterwards, or at any
 * time, changes nothing the caller has handed out, only bytes that record
 * had not yet been copied from (its result is then garbage, as if its
 * task had computed garbage). Every offset a worker sends is checked
 * against the caller's own mapping before a byte is read
 * (pmap__arena_at): a lie makes the worker's records PMAP_EPROTO.
 *
 * The file has a fixed size, sealed against shrinking or growing, so no
 * access within a mapping can fault with SIGBUS; it is sparse, and pages
 * are allocated only where records are written (regions are reused from
 * the start of a half first, so the memory used follows the bytes in
 * flight, not the size of the half). A record that does not fit takes
 * the pipe, as do all records on systems without memfd_create.
 */
#ifndef PMAP_ARENA_H
#define PMAP_ARENA_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* Records of at least this many bytes go through the arena. */
#define PMAP__ARENA_MIN ((size_t)1 << 20)
/* A half holds this many records of the largest size allowed ... */
#define PMAP__ARENA_SPAN 4u
/* ... but never more than this many bytes (address space, not memory). */
#define PMAP__ARENA_HALF_MAX ((size_t)512 << 20)
/* pmap__arena_alloc: no room. */
#define PMAP__ARENA_NONE UINT64_MAX

struct pmap__region {
    uint64_t seq; /* the record's sequence number on its worker */
    size_t off, end;
};

/* One half of an arena as one process maps it. */
struct pmap__arena {
    unsigned char *base; /* NULL: none */
    size_t size;
    size_t hwm; /* the writer's: pages of [0, hwm) are populated */
    int populate; /* the writer's: MADV_POPULATE_WRITE works here */
    /* The writer's regions in use, oldest first: a ring of reg_cap. */
    struct pmap__region *reg;
    uint32_t reg_cap, reg_first, reg_n;
    int listed; /* in the list of mappings children unmap (dontfork) */
};

/* The writer's i-th region in use, oldest first (i < reg_n). */
static inline const struct pmap__region *pmap__arena_reg(const struct pmap__arena *a, uint32_t i)
{
    return &a->reg[(a->reg_first + i) & (a->reg_cap - 1)];
}

/* The size of each half for records of at most max_record bytes; 0 when
 * no record can be large enough to use it, or the system has no memfd. */
size_t pmap__arena_half(size_t max_record);
/* A sealed memfd of two halves of `half` bytes: 0 and *fd (>= 3,
 * registered), or PMAP_ESYS / PMAP_ENOMEM with errno. */
int pmap__arena_open(size_t half, int *fd);
/* Map half `which` (0: parameters, 1: results) of the arena in fd. A
 * writable mapping is the writer's. `dontfork`: children do not inherit
 * it (the caller's mappings: a worker maps only its own arena). 0 or
 * PMAP_ESYS; on failure *a is empty. */
int pmap__arena_map(struct pmap__arena *a, int fd, size_t half, int which, int writable,
                    int dontfork);
/* Unmap and empty. An empty arena is a no-op. */
void pmap__arena_unmap(struct pmap__arena *a);
/* Free the bookkeeping only: the mapping is not this process's (a child
 * of the host that inherited a pool: the mapping was not inherited). */
void pmap__arena_forget(struct pmap__arena *a);
/* The writer: a region of len bytes for record `seq` (seqs increase);
 * its offset, or PMAP__ARENA_NONE when there is no room (the record goes
 * through the pipe). Offsets are multiples of 64. */
uint64_t pmap__arena_alloc(struct pmap__arena *a, uint64_t seq, size_t len);
/* The writer: forget the regions of records `seq` and later (a batch
 * that was never sent). */
void pmap__arena_unalloc(struct pmap__arena *a, uint64_t seq);
/* The writer: the records before `seq` are done with; their regions are
 * free. */
void pmap__arena_release_slow(struct pmap__arena *a, uint64_t seq);
static inline void pmap__arena_release(struct pmap__arena *a, uint64_t seq)
{
    if (a->reg_n != 0 && a->reg[a->reg_first].seq < seq)
        pmap__arena_release_slow(a, seq);
}
/* The reader: where [off, off + len) of the peer's half is, or NULL when
 * that is not inside it (the peer lied). */
static inline const unsigned char *pmap__arena_at(const struct pmap__arena *a, uint64_t off,
                                                  uint64_t len)
{
    if (a->base == NULL || len > a->size || off > a->size - len)
        return NULL;
    return a->base + off;
}

/*
 * Shared parameter blocks (one set per pool). A generator writes a large
 * parameter straight into one, so that sending it copies nothing: the
 * pipe carries an arena record with code PMAP__AREC_SHARED and the
 * block's offset. The memory is one sealed memfd, mapped writable by the
 * caller only; every worker inherits the mapping at its fork, read-only
 * (the atfork handler of the forking thread protects it there; every
 * other child of the host unmaps it), so no worker can change a
 * parameter: a record that runs again, on another worker, reads the
 * bytes the generator wrote, and a worker still running on a record the
 * caller gave up on (a time limit, a crash of a batch-mate) can read only.
 *
 * Hand-over rule: a block belongs to the record whose parameter it holds
 * from the generator's call until the iterator lets go of the parameter
 * (the result is back, or the record is dropped once its workers are
 * stopped); then it may hold the next record's parameter. Workers only
 * ever read it, so no worker needs to say when it is done with it.
 *
 * Blocks are of one size (max_record_bytes, rounded up to a page) and are
 * reused last in, first out, so that a map keeps writing the same few
 * blocks, whose pages stay mapped and warm; the file is sparse, so a
 * block holds memory only for the bytes records wrote into it.
 */
#define PMAP__AREC_SHARED 1
/* The most address space one pool's blocks take. */
#define PMAP__BLOCKS_MAX ((size_t)1 << 30)

struct pmap__blocks {
    unsigned char *base; /* NULL: none */
    size_t size, block;
    uint32_t n, nfree;
    uint32_t *free; /* indexes of the free blocks; the last is taken first */
};

/* n blocks (at least one; fewer when n of them would pass
 * PMAP__BLOCKS_MAX) of at least `block` bytes each, mapped writable
 * here. 0, or PMAP_ESYS / PMAP_ENOMEM with errno and *b empty. */
int pmap__blocks_open(struct pmap__blocks *b, size_t block, uint32_t n);
/* Unmap and empty. An empty set is a no-op. */
void pmap__blocks_close(struct pmap__blocks *b);
/* Free the bookkeeping only (a child of the host: not mapped here). */
void pmap__blocks_forget(struct pmap__blocks *b);
/* A free block, or NULL. */
static inline unsigned char *pmap__blocks_get(struct pmap__blocks *b)
{
    if (b->nfree == 0)
        return NULL;
    return b->base + (size_t)b->free[--b->nfree] * b->block;
}
/* Whether p is where one of the blocks starts... */
static inline int pmap__blocks_own(const struct pmap__blocks *b, const void *p)
{
    uintptr_t at = (uintptr_t)p, lo = (uintptr_t)b->base;

    return b->base != NULL && at >= lo && at - lo < b->size;
}
/* ... and giving it back (p must be one, taken and not yet given back). */
static inline void pmap__blocks_put(struct pmap__blocks *b, const void *p)
{
    b->free[b->nfree++] = (uint32_t)(((uintptr_t)p - (uintptr_t)b->base) / b->block);
}
/* The calling thread is about to fork a worker: in that child the blocks
 * at `base` stay mapped, read-only (NULL: none stay). */
void pmap__blocks_keep(const void *base);

#endif /* PMAP_ARENA_H */
