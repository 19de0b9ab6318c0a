/*
 * The table of internals the separate units use (unit.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "unit.h"

static const struct pmap__unit unit = {
    sizeof(struct pmap__unit), pmap__pool_new_at, &pmap__process_ops, pmap__buf_init,
    pmap__buf_trim,            pmap__buf_free,    pmap__stash_reserve,
};

const struct pmap__unit *pmap_unit_internals(void)
{
    return &unit;
}
