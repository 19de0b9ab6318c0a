/*
 * What every module of libpmap shares: the public API, the default record
 * limit and the compiler hints of the per-record paths. Each module's own
 * declarations are in its header (buf.h, io.h, wire.h, backend.h, api.h,
 * worker.h, iter.h). Nothing here is part of the public API; names with a
 * double underscore are hidden in the shared library (C_VISIBILITY_PRESET
 * hidden) but reachable by the unit tests, which link the static library.
 */
#ifndef PMAP_INTERNAL_H
#define PMAP_INTERNAL_H

#include "pmap.h"

#include <stddef.h>

/* max_record_bytes when the options say 0. */
#define PMAP__DEFAULT_MAX_RECORD ((size_t)1 << 30)

/* For the rare branch of a per-record function (a buffer that must grow):
 * kept out of line so that the common path is a leaf that saves no
 * registers, and laid out away from the hot code. */
#if defined(__GNUC__)
#define PMAP__RARE __attribute__((cold, noinline))
#define PMAP__NOINLINE __attribute__((noinline))
#else
#define PMAP__RARE
#define PMAP__NOINLINE
#endif

#endif /* PMAP_INTERNAL_H */
