/* Status strings and the version. */
#define _POSIX_C_SOURCE 200809L

#include "internal.h"


/* One list generates pmap_strerror, so a new code cannot lack a string. */
#define PMAP__STATUS_LIST(X)                                                                      \
    X(PMAP_OK, "success")                                                                          \
    X(PMAP_DONE, "no more items")                                                                  \
    X(PMAP_EINVAL, "invalid argument or misuse")                                                   \
    X(PMAP_ENOMEM, "out of memory")                                                                \
    X(PMAP_ESYS, "a system call failed")                                                           \
    X(PMAP_ETASK, "the task returned an error")                                                    \
    X(PMAP_ECRASH, "the worker died while running the task")                                       \
    X(PMAP_ETIMEOUT, "the task ran past its time limit")                                           \
    X(PMAP_EGEN, "the generator returned an error")                                                \
    X(PMAP_ETOOBIG, "a record exceeded max_record_bytes")                                          \
    X(PMAP_EPROTO, "a worker broke the wire protocol")                                             \
    X(PMAP_EBUSY, "busy: the pool has an open iterator, or its generator is running")              \
    X(PMAP_EWORKER, "workers cannot be started")                                                   \
    X(PMAP_EJOURNAL, "the journal cannot be used")                                                \
    X(PMAP_EAGAIN, "nothing ready yet")

const char *pmap_strerror(int status)
{
    switch (status) {
#define PMAP__CASE(code, text)                                                                     \
    case code:                                                                                     \
        return text;
        PMAP__STATUS_LIST(PMAP__CASE)
#undef PMAP__CASE
    default:
        return "unknown status";
    }
}

const char *pmap_version(void)
{
    return PMAP_VERSION_STRING;
}
