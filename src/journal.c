/*
 * The journal (DESIGN §9): the items of a map, kept in a file so that a
 * later run over the same input hands them out again instead of running
 * their records.
 *
 * File format, version 1. All integers are little-endian.
 *
 *   Header, 32 bytes, written once when the file is created:
 *      0  8  magic  89 'P' 'M' 'A' 'P' 'J' '\r' '\n'
 *      8  4  format version (1)
 *     12  4  header size (32)
 *     16  4  entry header size (32)
 *     20  8  reserved, zero
 *     28  4  check: low 32 bits of hash64(bytes 0..27, HDR_SEED)
 *   The first byte is not ASCII and the magic holds "\r\n", so no text
 *   file is taken for a journal, and a file mangled by a newline
 *   conversion is not either. A later format changes the version; this
 *   code refuses any version but its own (EBADMSG).
 *
 *   Then entries, appended one after the other, never rewritten:
 *      0  4  check: low 32 bits of hash64(bytes 4 .. 32 + len, ENTRY_SEED),
 *            i.e. of the rest of the entry
 *      4  4  len: bytes of the result that follow the entry header
 *      8  8  index of the record
 *     16  8  hash64(parameter bytes, PARAM_SEED)
 *     24  4  code (two's complement): the task's return value for
 *            PMAP_ETASK, 0 for PMAP_OK
 *     28  4  kind: 0 PMAP_OK, 1 PMAP_ETASK; nothing else is stored
 *     32  len result bytes
 *   So an item costs 32 bytes plus its result.
 *
 * Opening reads every entry and checks it. The first entry that is
 * incomplete, claims more bytes than the file has, has an unknown kind or
 * a wrong check ends the journal: the file is cut there (the torn tail of
 * a writer that died, or a scribbled end) and everything before it is
 * kept. An index stored twice keeps its first entry.
 *
 * In memory a journal keeps, per index, where its entry starts: a dense
 * array of offsets (4 bytes per index up to the largest, each relative to
 * the first entry stored of its block of 4096 indexes, used while at least
 * half of those indexes are stored, plus a fixed slack), otherwise a
 * sorted array of (index, offset) pairs, 16 bytes per stored item. Result
 * bytes stay in the file and are read back (through one buffer, in large
 * reads) when replayed.
 *
 * Entries are buffered and written by pmap__jr_flush, which the iterator
 * calls after every pump, before any item of that pump is handed out: an
 * item handed out is in the file even if the caller is killed right after.
 * fdatasync runs at most a second after the first write it covers, and at
 * detach and close.
 *
 * One process at a time holds a journal: flock(LOCK_EX | LOCK_NB) on its
 * own open file description. The descriptor is close-on-exec and in
 * libpmap's registry, so workers forked later close it at once and never
 * hold the lock (and pmap_journal_close unlocks before it closes, for a
 * worker that has not got that far yet).
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* flock, sync_file_range */
#endif

#include "journal.h"
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define HDR_SIZE 32u
#define ENTRY_HDR 32u
#define FORMAT_VERSION 1u
#define HDR_SEED 0x6a6f75726e616c31ull   /* "journal1" */
#define ENTRY_SEED 0x656e747279636b31ull /* "entryck1" */
#define PARAM_SEED 0x706172616d686173ull /* "paramhas" */
#define KIND_OK 0u
#define KIND_TASK 1u
/* Field offsets in an entry. */
#define E_CHECK 0
#define E_LEN 4
#define E_INDEX 8
#define E_PHASH 16
#define E_CODE 24
#define E_KIND 28

/* Reads go through a buffer of this size; entries are written once this
 * many bytes are buffered (and after every pump). */
#define IO_BUF ((size_t)1 << 20)
/* Writeback is started once this many bytes are written and not synced. */
#define WB_START ((uint64_t)8 << 20)
/* The dense index may hold this many absent indexes beyond half of them:
 * maps store out of order by up to a window (at most 65536 records). */
#define DENSE_SLACK ((uint64_t)1 << 17)

static const unsigned char MAGIC[8] = {0x89, 'P', 'M', 'A', 'P', 'J', '\r', '\n'};

struct pair {
    uint64_t index, off;
};

struct pmap_journal {
    int fd;
    struct pmap__owner owner;
    const void *iter;  /* the iterator using it, NULL if none */
    int err;           /* a write failed: nothing more is written */
    int dirty;         /* written since the last fdatasync */
    uint64_t sync_due; /* pmap__now_ns() by which to sync, while dirty */
    uint64_t end;      /* the file's length once the buffer is written */
    uint64_t hinted;   /* bytes before this are synced or their writeback started */
    uint64_t count;    /* items stored */
    /* The index: dense or pairs. Dense: index i's entry starts at
     * dbase[i >> DBLOCK_SHIFT] + dense[i] - 1; dense[i] 0: not stored;
     * dbase 0: no entry of that block stored yet. */
    uint32_t *dense;
    uint64_t *dbase;
    uint64_t dspan, dcap; /* stored indexes are below dspan; dcap slots allocated */
    struct pair *pairs;
    size_t npairs, pcap, psorted; /* pairs[0, psorted) are sorted, unique */
    int sparse;
    /* Entries not yet written. */
    unsigned char *wbuf;
    size_t wlen, wcap;
    /* Bytes [roff, roff + rlen) of the file, for reading entries. */
    unsigned char *rbuf;
    uint64_t roff;
    size_t rlen;
};

/* ------------------------------------------------------------------------ */
/* Bytes                                                                    */
/* ------------------------------------------------------------------------ */

/* Little-endian loads and stores: a plain move on little-endian hosts. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define PMAP_JR_LE 1
#else
#define PMAP_JR_LE 0
#endif

static uint64_t ld64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;

    if (PMAP_JR_LE) {
        memcpy(&v, p, sizeof v);
        return v;
    }
    for (i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint32_t ld32(const unsigned char *p)
{
    uint32_t v;

    if (PMAP_JR_LE) {
        memcpy(&v, p, sizeof v);
        return v;
    }
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void st64(unsigned char *p, uint64_t v)
{
    int i;

    if (PMAP_JR_LE) {
        memcpy(p, &v, sizeof v);
        return;
    }
    for (i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static void st32(unsigned char *p, uint32_t v)
{
    if (PMAP_JR_LE) {
        memcpy(p, &v, sizeof v);
        return;
    }
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* The 128-bit product of a and b, folded to 64 bits: one multiply mixes
 * every bit of both words into the result. */
static uint64_t fold_mul(uint64_t a, uint64_t b)
{
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 u128;
    u128 r = (u128)a * b;

    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    uint64_t lo = (ll & 0xffffffffu) | mid << 32;
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);

    return lo ^ hi;
#endif
}

/*
 * Sixteen bytes per step, one folded multiply each, so that an entry of a
 * tiny item (32 bytes) costs three multiplies in a chain: hashing was most
 * of the time of opening a large journal with an eight-byte step. The
 * last 1..16 bytes are read as two overlapping words (the length is mixed
 * in, so inputs that differ only in length still differ). Reads bytes in
 * little-endian order, so it is the same on every machine.
 */
#define HK0 0xa0761d6478bd642full
#define HK1 0xe7037ed1a0b428dbull
#define HK2 0x8ebc6af09c88c6e3ull
#define HK3 0x589965cc75374cc3ull

static inline uint64_t hash64(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *s = p;
    uint64_t h = fold_mul(seed ^ HK0, (uint64_t)n ^ HK1), a, b;

    /* The state goes into the product and is kept beside it, so no
     * fixed input word can wipe out what came before. */
    while (n > 16) {
        h ^= fold_mul(ld64(s) ^ h ^ HK1, ld64(s + 8) ^ HK2);
        s += 16;
        n -= 16;
    }
    if (n >= 8) {
        a = ld64(s);
        b = ld64(s + n - 8);
    } else if (n >= 4) {
        a = (uint64_t)ld32(s) << 32 | ld32(s + n - 4);
        b = 0;
    } else {
        a = n > 0 ? (uint64_t)s[0] << 16 | (uint64_t)s[n / 2] << 8 | s[n - 1] : 0;
        b = 0;
    }
    h ^= fold_mul(a ^ h ^ HK2, b ^ HK3);
    return fold_mul(h ^ HK3, (uint64_t)n ^ HK0);
}

/* The same, out of line, for the tests; the journal's own calls are
 * inlined (they were a fifth of a replay). */
uint64_t pmap__hash64(const void *p, size_t n, uint64_t seed)
{
    return hash64(p, n, seed);
}

/* The check of the entry at e whose result is len bytes (e + 4 .. end). */
static uint32_t entry_check(const unsigned char *e, size_t len)
{
    return (uint32_t)hash64(e + 4, ENTRY_HDR - 4 + len, ENTRY_SEED);
}

static void make_header(unsigned char *h)
{
    memset(h, 0, HDR_SIZE);
    memcpy(h, MAGIC, sizeof MAGIC);
    st32(h + 8, FORMAT_VERSION);
    st32(h + 12, HDR_SIZE);
    st32(h + 16, ENTRY_HDR);
    st32(h + 28, (uint32_t)hash64(h, 28, HDR_SEED));
}

/* ------------------------------------------------------------------------ */
/* File I/O                                                                 */
/* ------------------------------------------------------------------------ */

/* Read up to n bytes at off, retrying short reads and EINTR: the count
 * read (less than n only at the end of the file), or -1 with errno. */
static long pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    size_t got = 0;

    if (n > LONG_MAX)
        n = LONG_MAX;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));

        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0)
            break;
        if (errno == EINTR)
            continue;
        return -1;
    }
    return (long)got;
}

static int write_full(int fd, const void *buf, size_t n)
{
    struct iovec iov;

    iov.iov_base = (void *)buf;
    iov.iov_len = n;
    return pmap__writev_all(fd, &iov, 1);
}

static int sync_fd(int fd)
{
    int rc;

#if defined(_POSIX_SYNCHRONIZED_IO) && _POSIX_SYNCHRONIZED_IO > 0
    do
        rc = fdatasync(fd);
    while (rc != 0 && errno == EINTR);
#else
    do
        rc = fsync(fd);
    while (rc != 0 && errno == EINTR);
#endif
    return rc;
}

/* Make file bytes [off, off + n) readable in rbuf (n <= IO_BUF): a pointer
 * to them, or NULL when the file is shorter (errno 0) or a read failed. */
static PMAP__NOINLINE const unsigned char *refill(struct pmap_journal *j, uint64_t off, size_t n)
{
    long got;

    if (j->rbuf == NULL) {
        j->rbuf = malloc(IO_BUF);
        if (j->rbuf == NULL) {
            errno = ENOMEM;
            return NULL;
        }
    }
    j->rlen = 0;
    got = pread_full(j->fd, j->rbuf, IO_BUF, off);
    if (got < 0)
        return NULL;
    j->roff = off;
    j->rlen = (size_t)got;
    if ((size_t)got < n) {
        errno = 0;
        return NULL;
    }
    return j->rbuf;
}

static inline const unsigned char *cached(struct pmap_journal *j, uint64_t off, size_t n)
{
    if (off >= j->roff && off + n <= j->roff + j->rlen)
        return j->rbuf + (off - j->roff);
    return refill(j, off, n);
}

/* ------------------------------------------------------------------------ */
/* Index                                                                    */
/* ------------------------------------------------------------------------ */

static int pair_cmp(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;

    if (x->index != y->index)
        return x->index < y->index ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int pairs_push(struct pmap_journal *j, uint64_t index, uint64_t off)
{
    if (j->npairs == j->pcap) {
        size_t ncap = j->pcap ? j->pcap * 2 : 1024;
        struct pair *p;

        if (ncap > SIZE_MAX / sizeof *p)
            return PMAP_ENOMEM;
        p = realloc(j->pairs, ncap * sizeof *p);
        if (p == NULL)
            return PMAP_ENOMEM;
        j->pairs = p;
        j->pcap = ncap;
    }
    j->pairs[j->npairs].index = index;
    j->pairs[j->npairs].off = off;
    j->npairs++;
    return 0;
}

/*
 * The dense array grows by doubling, zero-filled. On Linux it is an
 * anonymous mapping that mremap moves without copying and that may use
 * transparent huge pages: faulting in a fresh page per 512 items was most
 * of the cost of opening a large journal in a virtual machine.
 */
#define DENSE_MIN ((uint64_t)1 << 16)
/* Indexes per block of the dense array sharing a base offset. Entries are
 * only ever appended, so every later entry of a block lies past its base;
 * one 4 GiB past it does not fit in the 32-bit offset, and the index goes
 * sparse (results of megabytes, where 16 bytes per item are nothing). Four
 * bytes per item instead of eight: zeroing the fresh pages of the index
 * was a third of the cost of opening a journal of tiny items. */
#define DBLOCK_SHIFT 12

static void dense_free(struct pmap_journal *j)
{
#ifdef __linux__
    if (j->dense != NULL)
        (void)munmap(j->dense, (size_t)j->dcap * sizeof *j->dense);
#else
    free(j->dense);
#endif
    free(j->dbase);
    j->dense = NULL;
    j->dbase = NULL;
    j->dspan = j->dcap = 0;
}

static int dense_grow(struct pmap_journal *j, uint64_t need)
{
    uint64_t ncap = j->dcap ? j->dcap : DENSE_MIN;
    size_t bytes, nb = (size_t)(j->dcap >> DBLOCK_SHIFT), nnb;
    uint64_t *base;
    void *p;

    while (ncap < need)
        ncap *= 2;
    if (ncap > SIZE_MAX / sizeof *j->dense)
        return PMAP_ENOMEM;
    bytes = (size_t)ncap * sizeof *j->dense;
    /* The bases first: should the array fail to grow, they are only
     * longer than needed. */
    nnb = (size_t)(ncap >> DBLOCK_SHIFT);
    base = realloc(j->dbase, nnb * sizeof *base);
    if (base == NULL)
        return PMAP_ENOMEM;
    memset(base + nb, 0, (nnb - nb) * sizeof *base);
    j->dbase = base;
#ifdef __linux__
    if (j->dense == NULL)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    else
        p = mremap(j->dense, (size_t)j->dcap * sizeof *j->dense, bytes, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        return PMAP_ENOMEM;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
#else
    p = realloc(j->dense, bytes);
    if (p == NULL)
        return PMAP_ENOMEM;
    memset((uint32_t *)p + j->dcap, 0, (size_t)(ncap - j->dcap) * sizeof *j->dense);
#endif
    j->dense = p;
    j->dcap = ncap;
    return 0;
}

static inline uint64_t dense_off(const struct pmap_journal *j, uint64_t index)
{
    return j->dbase[index >> DBLOCK_SHIFT] + j->dense[index] - 1u;
}

/* Store index's offset in the dense array (index < dcap): 0, or 1 when it
 * does not fit (nothing stored). */
static inline int dense_put(struct pmap_journal *j, uint64_t index, uint64_t off)
{
    uint64_t *b = &j->dbase[index >> DBLOCK_SHIFT];

    if (*b == 0)
        *b = off;
    if (off < *b || off - *b >= UINT32_MAX)
        return 1;
    j->dense[index] = (uint32_t)(off - *b + 1u);
    return 0;
}

/* Give up the dense array for pairs: too few of its indexes are stored,
 * or an offset does not fit. */
static PMAP__RARE int go_sparse(struct pmap_journal *j)
{
    uint64_t i;

    for (i = 0; i < j->dspan; i++)
        if (j->dense[i] != 0 && pairs_push(j, i, dense_off(j, i)) != 0)
            return PMAP_ENOMEM;
    dense_free(j);
    j->psorted = j->npairs;
    j->sparse = 1;
    return 0;
}

static int pairs_find(const struct pmap_journal *j, uint64_t index, uint64_t *off)
{
    size_t lo = 0, hi = j->psorted;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (j->pairs[mid].index < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < j->psorted && j->pairs[lo].index == index) {
        *off = j->pairs[lo].off;
        return 1;
    }
    return 0;
}

/* Sort pairs added since the last time, keeping the first of an index. */
static void pairs_settle(struct pmap_journal *j)
{
    size_t i, n = 0;

    if (j->psorted == j->npairs)
        return;
    qsort(j->pairs, j->npairs, sizeof *j->pairs, pair_cmp);
    for (i = 0; i < j->npairs; i++)
        if (n == 0 || j->pairs[i].index != j->pairs[n - 1].index)
            j->pairs[n++] = j->pairs[i];
    j->npairs = n;
    j->psorted = n;
    j->count = n;
}

static int index_find(const struct pmap_journal *j, uint64_t index, uint64_t *off)
{
    if (!j->sparse) {
        if (index >= j->dspan || j->dense[index] == 0)
            return 0;
        *off = dense_off(j, index);
        return 1;
    }
    return pairs_find(j, index, off);
}

/* Remember that index's entry starts at off (never 0: the header is
 * there). An index already there keeps its entry. 0 or PMAP_ENOMEM. */
static int index_add(struct pmap_journal *j, uint64_t index, uint64_t off)
{
    uint64_t dummy;

    if (!j->sparse) {
        if (index == j->dspan && index < j->dcap) {
            /* The common case: the next index in order. */
            if (dense_put(j, index, off) == 0) {
                j->dspan++;
                j->count++;
                return 0;
            }
        } else if (index < j->dspan) {
            if (j->dense[index] != 0)
                return 0;
            if (dense_put(j, index, off) == 0) {
                j->count++;
                return 0;
            }
        } else if (index / 2 <= j->count + DENSE_SLACK / 2) {
            /* Slots past dspan are zero (dense_grow). */
            if (index >= j->dcap && dense_grow(j, index + 1) != 0)
                return PMAP_ENOMEM;
            if (dense_put(j, index, off) == 0) {
                j->dspan = index + 1;
                j->count++;
                return 0;
            }
        }
        if (go_sparse(j) != 0)
            return PMAP_ENOMEM;
    }
    /* Pairs added during a map are looked up only by later maps (the
     * map itself never generates an index twice): they are sorted in at
     * the next attach. */
    if (pairs_find(j, index, &dummy))
        return 0;
    if (pairs_push(j, index, off) != 0)
        return PMAP_ENOMEM;
    j->count++;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Opening                                                                  */
/* ------------------------------------------------------------------------ */

/* Read the entries from HDR_SIZE on into the index and cut the file after
 * the last good one. 0, or -1 with errno. */
static int scan(struct pmap_journal *j, uint64_t size)
{
    uint64_t off = HDR_SIZE;
    int rc = 0;

    while (size - off >= ENTRY_HDR) {
        const unsigned char *e = cached(j, off, ENTRY_HDR);
        uint64_t index;
        uint32_t len, kind;
        int ok;

        if (e == NULL) {
            if (errno != 0)
                return -1;
            break;
        }
        index = ld64(e + E_INDEX);
        len = ld32(e + E_LEN);
        kind = ld32(e + E_KIND);
        if (kind > KIND_TASK || (kind == KIND_OK && ld32(e + E_CODE) != 0))
            break;
        if (len > size - off - ENTRY_HDR)
            break;
        if (ENTRY_HDR + (size_t)len <= IO_BUF) {
            e = cached(j, off, ENTRY_HDR + (size_t)len);
            if (e == NULL) {
                if (errno != 0)
                    return -1;
                break;
            }
            ok = entry_check(e, len) == ld32(e + E_CHECK);
        } else {
            /* Bounded by the file's size, checked above. */
            unsigned char *whole = malloc(ENTRY_HDR + (size_t)len);
            long got;

            if (whole == NULL) {
                errno = ENOMEM;
                return -1;
            }
            got = pread_full(j->fd, whole, ENTRY_HDR + (size_t)len, off);
            ok = got == (long)(ENTRY_HDR + len) && entry_check(whole, len) == ld32(whole);
            free(whole);
            if (got < 0)
                return -1;
        }
        if (!ok)
            break;
        if (index_add(j, index, off) != 0) {
            errno = ENOMEM;
            return -1;
        }
        off += ENTRY_HDR + (uint64_t)len;
    }
    if (j->sparse)
        pairs_settle(j);
    if (off < size) {
        do
            rc = ftruncate(j->fd, (off_t)off);
        while (rc != 0 && errno == EINTR);
        if (rc != 0)
            return -1;
        if (sync_fd(j->fd) != 0)
            return -1;
    }
    j->end = off;
    return 0;
}

static void journal_free(struct pmap_journal *j)
{
    pmap__close(&j->fd);
    dense_free(j);
    free(j->pairs);
    free(j->wbuf);
    free(j->rbuf);
    free(j);
}

pmap_journal *pmap_journal_open(const char *path)
{
    struct pmap_journal *j;
    unsigned char hdr[HDR_SIZE], want[HDR_SIZE];
    struct stat st;
    long got;
    int rc, saved;

    if (path == NULL) {
        errno = EINVAL;
        return NULL;
    }
    j = calloc(1, sizeof *j);
    if (j == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    pmap__owner_init(&j->owner);
    j->fd = -1;
    if (pmap__open(path, O_RDWR | O_CREAT, 0666, &j->fd) != 0)
        goto fail;
    do
        rc = flock(j->fd, LOCK_EX | LOCK_NB);
    while (rc != 0 && errno == EINTR);
    if (rc != 0)
        goto fail; /* EWOULDBLOCK: another process holds it */
    if (fstat(j->fd, &st) != 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = EBADMSG;
        goto fail;
    }
    make_header(want);
    got = pread_full(j->fd, hdr, HDR_SIZE, 0);
    if (got < 0)
        goto fail;
    if ((size_t)got < HDR_SIZE) {
        /* Empty, or the header of a journal whose creator died while
         * writing it: a new journal. Anything else is somebody's file. */
        if (memcmp(hdr, want, (size_t)got) != 0) {
            errno = EBADMSG;
            goto fail;
        }
        if (got > 0) {
            do
                rc = ftruncate(j->fd, 0);
            while (rc != 0 && errno == EINTR);
            if (rc != 0)
                goto fail;
        }
        /* The file offset is still 0: nothing has moved it. */
        if (write_full(j->fd, want, HDR_SIZE) != 0)
            goto fail;
        if (sync_fd(j->fd) != 0)
            goto fail;
        j->end = HDR_SIZE;
    } else {
        if (memcmp(hdr, want, HDR_SIZE) != 0) {
            errno = EBADMSG;
            goto fail;
        }
        if (scan(j, (uint64_t)st.st_size) != 0)
            goto fail;
    }
    j->hinted = j->end;
    if (lseek(j->fd, (off_t)j->end, SEEK_SET) < 0)
        goto fail;
    return j;

fail:
    saved = errno;
    journal_free(j);
    errno = saved;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

static int write_out(struct pmap_journal *j)
{
    if (j->err)
        return PMAP_EJOURNAL;
    if (j->wlen == 0)
        return 0;
    if (write_full(j->fd, j->wbuf, j->wlen) != 0) {
        j->err = errno ? errno : EIO;
        return PMAP_EJOURNAL;
    }
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    /* Start the writeback now, so that the next fdatasync finds most of
     * it done instead of stalling the map for a second's worth of data.
     * A hint: its failure changes nothing. Once 8 MiB wait, not after
     * every write (one a pump): the caller itself submits the I/O (and,
     * in a virtual machine, exits to the host to do it), which was a
     * seventh of a journaling map's caller time. */
    if (j->end - j->hinted >= WB_START) {
        (void)sync_file_range(j->fd, (off_t)j->hinted, (off_t)(j->end - j->hinted),
                              SYNC_FILE_RANGE_WRITE);
        j->hinted = j->end;
    }
#endif
    j->wlen = 0;
    if (!j->dirty) {
        j->dirty = 1;
        j->sync_due = pmap__now_ns() + PMAP__NS_PER_S;
    }
    return 0;
}

static int sync_out(struct pmap_journal *j)
{
    if (write_out(j) != 0)
        return PMAP_EJOURNAL;
    if (j->dirty && sync_fd(j->fd) != 0) {
        j->err = errno;
        return PMAP_EJOURNAL;
    }
    j->dirty = 0;
    j->hinted = j->end;
    return 0;
}

void pmap__jr_store(struct pmap_journal *j, uint64_t index, const void *p, size_t n, int status,
                    int code, const void *data, size_t len)
{
    unsigned char *e;
    uint64_t off = j->end;

    if (j->err)
        return;
    if (len > UINT32_MAX) {
        /* Not representable in this format: the record runs again next
         * time, as if it had not been stored. */
        return;
    }
    if (j->wlen + ENTRY_HDR + len > j->wcap && j->wlen > 0 && write_out(j) != 0)
        return;
    if (ENTRY_HDR + len > j->wcap) {
        size_t ncap = ENTRY_HDR + len < IO_BUF ? IO_BUF : ENTRY_HDR + len;
        unsigned char *b = realloc(j->wbuf, ncap);

        if (b == NULL) {
            j->err = ENOMEM;
            return;
        }
        j->wbuf = b;
        j->wcap = ncap;
    }
    e = j->wbuf + j->wlen;
    st32(e + E_LEN, (uint32_t)len);
    st64(e + E_INDEX, index);
    st64(e + E_PHASH, hash64(p, n, PARAM_SEED));
    st32(e + E_CODE, status == PMAP_OK ? 0u : (uint32_t)code);
    st32(e + E_KIND, status == PMAP_OK ? KIND_OK : KIND_TASK);
    if (len > 0)
        pmap__copy(e + ENTRY_HDR, data, len);
    st32(e + E_CHECK, entry_check(e, len));
    j->wlen += ENTRY_HDR + len;
    j->end += ENTRY_HDR + len;
    if (index_add(j, index, off) != 0) {
        j->err = ENOMEM;
        return;
    }
    /* A large result leaves no room for the next: write it now rather
     * than keep a block of its size. */
    if (j->wlen >= IO_BUF && write_out(j) == 0 && j->wcap > IO_BUF) {
        unsigned char *b = realloc(j->wbuf, IO_BUF);

        if (b != NULL) {
            j->wbuf = b;
            j->wcap = IO_BUF;
        }
    }
}

int pmap__jr_flush(struct pmap_journal *j)
{
    if (write_out(j) != 0)
        return PMAP_EJOURNAL;
    if (j->dirty && pmap__now_ns() >= j->sync_due)
        return sync_out(j);
    return 0;
}

int pmap__jr_timeout_ms(const struct pmap_journal *j)
{
    uint64_t now;

    if (j->err || (!j->dirty && j->wlen == 0))
        return -1;
    if (!j->dirty)
        return 0; /* buffered: the next flush writes it */
    now = pmap__now_ns();
    if (now >= j->sync_due)
        return 0;
    return (int)((j->sync_due - now + PMAP__NS_PER_MS - 1) / PMAP__NS_PER_MS);
}

/* ------------------------------------------------------------------------ */
/* Replaying                                                                */
/* ------------------------------------------------------------------------ */

int pmap__jr_replay(struct pmap_journal *j, uint64_t index, const void *p, size_t n, int *status,
                    int *code, struct pmap_buf *result)
{
    const unsigned char *e;
    uint64_t off;
    uint32_t len;

    if (!index_find(j, index, &off))
        return 0;
    e = cached(j, off, ENTRY_HDR);
    if (e == NULL)
        return errno == ENOMEM ? PMAP_ENOMEM : PMAP_EJOURNAL;
    if (ld64(e + E_INDEX) != index || ld64(e + E_PHASH) != hash64(p, n, PARAM_SEED))
        return PMAP_EJOURNAL;
    /* The check was verified when the journal was opened (or the entry
     * written by this process): the bytes are not hashed again here. */
    len = ld32(e + E_LEN);
    *status = ld32(e + E_KIND) == KIND_OK ? PMAP_OK : PMAP_ETASK;
    *code = (int)ld32(e + E_CODE);
    result->len = 0;
    if (len > result->max) {
        /* Stored by a map that allowed larger results than this one. */
        *status = PMAP_ETOOBIG;
        *code = 0;
        return 1;
    }
    if (len > result->cap && pmap__buf_reserve(result, len) != 0)
        return PMAP_ENOMEM;
    if (ENTRY_HDR + (size_t)len <= IO_BUF) {
        e = cached(j, off, ENTRY_HDR + (size_t)len);
        if (e == NULL)
            return errno == ENOMEM ? PMAP_ENOMEM : PMAP_EJOURNAL;
        if (len > 0)
            pmap__copy(result->data, e + ENTRY_HDR, len);
    } else if (pread_full(j->fd, result->data, len, off + ENTRY_HDR) != (long)len) {
        return PMAP_EJOURNAL;
    }
    result->len = len;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Attaching, closing                                                       */
/* ------------------------------------------------------------------------ */

int pmap__jr_attach(struct pmap_journal *j, const void *iter)
{
    if (!pmap__is_owner(&j->owner))
        return PMAP_EINVAL;
    if (j->iter != NULL && j->iter != iter)
        return PMAP_EBUSY;
    if (j->err)
        return PMAP_EJOURNAL;
    if (j->sparse)
        pairs_settle(j);
    j->iter = iter;
    return 0;
}

int pmap__jr_detach(struct pmap_journal *j)
{
    j->iter = NULL;
    /* The read buffer is of use only while a map replays. */
    free(j->rbuf);
    j->rbuf = NULL;
    j->rlen = 0;
    return sync_out(j);
}

int pmap_journal_close(pmap_journal *j)
{
    int rc;

    if (j == NULL)
        return PMAP_OK;
    if (!pmap__is_owner(&j->owner)) {
        /* Inherited through the host's fork(): the lock and the file are
         * the parent's; only this process's copies go. */
        journal_free(j);
        return PMAP_OK;
    }
    if (j->iter != NULL)
        return PMAP_EBUSY;
    rc = sync_out(j);
    /* Unlocked explicitly, not by the close: a worker forked a moment ago
     * may not have closed its copy of the descriptor yet, and the lock
     * belongs to the open file description they share, so a reopen right
     * after this call would meet EWOULDBLOCK. */
    (void)flock(j->fd, LOCK_UN);
    journal_free(j);
    return rc;
}

uint64_t pmap_journal_count(const pmap_journal *j)
{
    return j == NULL ? 0 : j->count;
}
