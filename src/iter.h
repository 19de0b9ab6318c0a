/*
 * The iterator's policy as the pool object needs it (iter.c).
 */
#ifndef PMAP_ITER_H
#define PMAP_ITER_H

/* The automatic window for `nworkers` places and an explicit chunk (0:
 * adaptive): enough records for every place to hold its queue of whole
 * batches, capped so that the slots stay a few megabytes. */
unsigned pmap__iter_auto_window(int nworkers, unsigned chunk);

#endif /* PMAP_ITER_H */
