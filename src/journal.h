/*
 * The journal (journal.c, DESIGN §9) as the iterator uses it: look up a
 * stored item when its record is generated, store finished items, write
 * them out after every pump and reach the disk once a second.
 */
#ifndef PMAP_JOURNAL_H
#define PMAP_JOURNAL_H

#include "buf.h"
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

/* A 64-bit hash of n bytes: the parameter hash of the journal's entries
 * and their checksums. Not cryptographic; the same on every machine. */
uint64_t pmap__hash64(const void *p, size_t n, uint64_t seed);

/* An iterator starts using j (one at a time): 0; PMAP_EINVAL (another
 * process's journal), PMAP_EBUSY (another iterator uses it), PMAP_EJOURNAL
 * (an earlier write failed). */
int pmap__jr_attach(struct pmap_journal *j, const void *iter);
/* The iterator is done with j: everything written and synced. 0 or
 * PMAP_EJOURNAL. */
int pmap__jr_detach(struct pmap_journal *j);

/*
 * Record `index` with parameter p[0..n) was generated. 0: not stored (run
 * it). 1: stored: *status, *code and `result` hold its item. PMAP_EJOURNAL:
 * the stored entry has another parameter hash, or cannot be read;
 * PMAP_ENOMEM.
 */
int pmap__jr_replay(struct pmap_journal *j, uint64_t index, const void *p, size_t n, int *status,
                    int *code, struct pmap_buf *result);

/* A record finished with PMAP_OK or PMAP_ETASK: buffer its entry (written
 * by pmap__jr_flush at the latest, or as soon as the buffer is full).
 * Failures are remembered: pmap__jr_flush reports them. */
void pmap__jr_store(struct pmap_journal *j, uint64_t index, const void *p, size_t n, int status,
                    int code, const void *data, size_t len);

/* Write every buffered entry, and fdatasync when the last sync is a second
 * old. 0, or PMAP_EJOURNAL when a write failed (now or before). */
int pmap__jr_flush(struct pmap_journal *j);

/* Milliseconds until pmap__jr_flush must run to keep the once-a-second
 * promise; -1 when nothing waits for the disk. */
int pmap__jr_timeout_ms(const struct pmap_journal *j);

#endif /* PMAP_JOURNAL_H */
