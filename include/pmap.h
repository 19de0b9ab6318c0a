/*
 * libpmap: parallel map over worker processes.
 *
 * The model
 * ---------
 * A program hands libpmap two callbacks:
 *
 *  - a *generator* (pmap_gen_fn) that produces parameter records one at a
 *    time, lazily, in the calling process, and
 *  - a *task* (pmap_task_fn) that turns one parameter record into one result
 *    record, in a worker process.
 *
 * pmap_pool_create() forks the workers; pmap_imap() starts a map over the
 * generator's records; pmap_next() returns the results in input order
 * (pmap_imap_unordered(): in completion order). Records are plain bytes that
 * libpmap never interprets. It is the C counterpart of Python's
 * multiprocessing.Pool.imap.
 *
 * The consumer loop
 * -----------------
 *
 *     pmap_item item;
 *     int rc;
 *     while ((rc = pmap_next(it, &item)) == PMAP_OK) {
 *         if (item.status != PMAP_OK) {
 *             report(item.index, item.status, item.code);
 *             continue;
 *         }
 *         if (item.len)
 *             use(item.data, item.len);
 *     }
 *     if (rc != PMAP_DONE)
 *         fprintf(stderr, "map failed: %s\n", pmap_strerror(rc));
 *     pmap_iter_free(it);
 *
 * A failure of one task (an error code, a crash, a timeout) is reported on
 * that item only; the rest of the map goes on.
 *
 * The fork snapshot rule
 * ----------------------
 * Workers are forked from the caller. A task sees the caller's memory as it
 * was when *its* worker was forked: at pmap_pool_create(), or later when a
 * worker is replaced (after a crash, a timeout, recycling, or an early
 * pmap_iter_free()). Data a task needs must therefore exist before
 * pmap_pool_create() and never change afterwards, or travel in the parameter
 * record. Results come back only through the task's `out` buffer. With
 * pmap_options.start_method = PMAP_START_FORKSERVER, every worker, the
 * replacements included, is forked by a server that holds the caller's
 * memory as it was at pmap_pool_create(): one snapshot for all.
 *
 * Threads: a pool may be used from one thread at a time (any thread); pools
 * used from different threads work side by side. Forking a multi-threaded
 * program copies only the forking thread: a task must not rely on locks that
 * other caller threads might hold (the usual fork caveat). A host that
 * starts threads after pmap_pool_create() should choose
 * PMAP_START_FORKSERVER: then no worker is forked from it after that.
 *
 * Processes: "caller process only" below means the process that created the
 * pool (or the iterator). A child the host forks inherits copies of them
 * that are inert there: pmap_imap() refuses such a pool (EINVAL), pmap_next()
 * returns PMAP_EINVAL, and pmap_iter_free() / pmap_pool_destroy() only free
 * the child's copies, touching none of the parent's workers. A task may
 * create a pool of its own inside its worker; that pool's workers are then
 * the worker's children.
 *
 * Inside every worker libpmap runs one small watchdog thread (64 KiB stack,
 * every signal blocked) that ends the worker within about 0.1 s once the
 * caller process is gone, even in the middle of a long task. The task runs
 * on the worker's main thread.
 *
 * Ending a worker: a task reports failure by returning non-zero; it must
 * not call exit(), which runs the host's atexit() handlers and flushes the
 * host's stdio copies inside the worker (_exit() skips them; either way the
 * item is PMAP_ECRASH with the exit status).
 */
#ifndef PMAP_H
#define PMAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PMAP_STATIC)
#define PMAP_API
#elif defined(__GNUC__)
#define PMAP_API __attribute__((visibility("default")))
#else
#define PMAP_API
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define PMAP_VERSION_MAJOR 1
#define PMAP_VERSION_MINOR 1
#define PMAP_VERSION_PATCH 0
/** The version as one number, e.g. 10000 for 1.0.0. */
#define PMAP_VERSION_NUMBER                                                                        \
    (PMAP_VERSION_MAJOR * 10000 + PMAP_VERSION_MINOR * 100 + PMAP_VERSION_PATCH)
#define PMAP_VERSION_STRING "1.1.0"

/**
 * Return the version of the library actually linked, as "MAJOR.MINOR.PATCH".
 * Compare with PMAP_VERSION_STRING to detect a header/library mismatch.
 * The string is static. Callable anywhere.
 */
PMAP_API const char *pmap_version(void);

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */

/** Status codes: 0 success, PMAP_DONE end of iteration, negative errors. */
enum {
    PMAP_OK = 0,
    PMAP_DONE = 1,       /**< pmap_next: no more items */
    PMAP_EINVAL = -1,    /**< bad argument or misuse */
    PMAP_ENOMEM = -2,    /**< out of memory */
    PMAP_ESYS = -3,      /**< a system call failed; errno says which */
    PMAP_ETASK = -4,     /**< the task returned non-zero; item.code holds it */
    PMAP_ECRASH = -5,    /**< the worker died on this item; item.code: signal number
                          *   (killed) or exit status */
    PMAP_ETIMEOUT = -6,  /**< the item ran past task_timeout_ms; its worker was killed */
    PMAP_EGEN = -7,      /**< the generator returned an error; iteration ended */
    PMAP_ETOOBIG = -8,   /**< a record exceeded max_record_bytes */
    PMAP_EPROTO = -9,    /**< a worker broke the wire protocol */
    PMAP_EBUSY = -10,    /**< the pool already has an open iterator, or a call from
                          *   inside the generator on its own iterator or pool */
    PMAP_EWORKER = -11,  /**< workers cannot be started: worker_init keeps failing, or
                          *   fork does */
    PMAP_EJOURNAL = -12, /**< the journal cannot be used: I/O error, not a journal, or
                          *   another input (since 1.1) */
    PMAP_EAGAIN = -13    /**< pmap_try_next: nothing ready now (not an error of the map) */
};

/**
 * Return a short English description of a status code ("success",
 * "the task crashed", ...). Unknown values give "unknown status".
 * Never NULL; the string is static and must not be freed. Callable anywhere.
 */
PMAP_API const char *pmap_strerror(int status);

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

/** A pool of worker processes. Opaque; see pmap_pool_create(). */
typedef struct pmap_pool pmap_pool;
/** One map in progress over a pool. Opaque; see pmap_imap(). */
typedef struct pmap_iter pmap_iter;
/**
 * A byte buffer owned by the library, handed to the generator (to fill with
 * a parameter record) and to the task (to fill with a result record). Never
 * keep a pointer to it, or into it, past the callback that received it.
 */
typedef struct pmap_buf pmap_buf;

/**
 * Replace the contents of `buf` with a copy of `len` bytes from `data`
 * (`data` may be NULL when `len` is 0).
 *
 * Returns PMAP_OK; PMAP_ETOOBIG if `len` exceeds the pool's
 * max_record_bytes; PMAP_ENOMEM if memory ran out; PMAP_EINVAL if `buf` is
 * NULL or `data` is NULL with a non-zero `len`. On failure the buffer is left
 * empty (length 0) and *failed*: until a later pmap_buf_set() or
 * pmap_buf_reserve() on it succeeds, it is not a record. A failed result
 * buffer makes its item fail with the failed call's status (PMAP_ETOOBIG,
 * PMAP_ENOMEM or PMAP_EINVAL, item.code 0, no data) whatever the task
 * returns; a generator that returns 1 with a failed buffer ends the map
 * with that status, as a generator error would (after every earlier
 * record has been returned). So an ignored failure never passes as an
 * empty record. Use inside a generator or a task, on the buffer it was
 * given.
 */
PMAP_API int pmap_buf_set(pmap_buf *buf, const void *data, size_t len);

/**
 * Make the buffer exactly `len` bytes long and return a pointer to those
 * bytes for the caller to write, so a record can be built in place without
 * a copy. The first min(previous length, len) bytes are kept, whether the
 * buffer grows or not, so a record may be reserved generously, written,
 * then trimmed to its final length with a second call, or grown as it is
 * built.
 *
 * Returns NULL, with the buffer left empty and failed (as for
 * pmap_buf_set(): PMAP_ETOOBIG, PMAP_ENOMEM), if `len` exceeds
 * max_record_bytes (errno E2BIG), if memory ran out (ENOMEM); or if `buf` is
 * NULL (EINVAL). The pointer is valid until the callback returns or the next
 * call on the same buffer. Use inside a generator or a task.
 */
PMAP_API void *pmap_buf_reserve(pmap_buf *buf, size_t len);

/**
 * The task: runs in a worker process, once per parameter record.
 *
 * `ctx` is the pointer given to pmap_pool_create() (as it was in the caller
 * when the worker was forked: it must point to memory that exists at that
 * moment, and the caller may free it once the pool is destroyed).
 * `param`/`len` is the record: param is never NULL, even when len is 0, it
 * is aligned to at least 8 bytes (a record of fixed-size integers or doubles
 * may be read through a pointer of its type), and the bytes are valid during
 * the call only. They are read-only: a large parameter (see
 * max_record_bytes) may be in memory the worker can only read, where a
 * write kills the worker (PMAP_ECRASH); copy what the task must change.
 * Write the result into `out` with pmap_buf_set() or pmap_buf_reserve(); an
 * untouched `out` is an empty result (len 0).
 *
 * Return 0 on success. Any other value makes the item PMAP_ETASK with
 * item.code = that value, and what the task left in `out` (any bytes, e.g.
 * a message such as "cannot open x: No such file or directory", up to
 * max_record_bytes) arrives as item.data / item.len: leave `out` untouched
 * (or empty) for no message. A failed `out` (see pmap_buf_set()) overrides
 * the return value.
 */
typedef int (*pmap_task_fn)(void *ctx, const void *param, size_t len, pmap_buf *out);

/**
 * The generator: runs in the calling process, lazily, inside pmap_next().
 * Fill `param` and return 1 for one more record; return 0 at the end of the
 * input; return a negative value on error (the map then ends with
 * PMAP_EGEN once every earlier record has been returned). An untouched
 * `param` is an empty record. After it has returned 0 or an error, the
 * generator is not called again by the same iterator. `gen_ctx` is the
 * pointer given to pmap_imap(); it must stay valid until pmap_iter_free().
 *
 * Inside the generator, its own iterator and pool are in use: pmap_next()
 * and pmap_iter_free() on that iterator return PMAP_EBUSY, pmap_imap() and
 * pmap_imap_unordered() on that pool fail with EBUSY, pmap_pool_destroy()
 * on it returns PMAP_EBUSY, and each does nothing else. Other pools and
 * their iterators may be used (a generator may draw its records from
 * another map).
 */
typedef int (*pmap_gen_fn)(void *gen_ctx, pmap_buf *param);

/**
 * Inside a generator: attach a caller-side value to the record being
 * generated, `param` being the buffer the generator was given. The value
 * never travels to the worker; it comes back with the record's item, in
 * either order, through pmap_item_user() (e.g. the name of the file whose
 * hash the item holds, or the record's own struct). An integer travels as
 * `(void *)(uintptr_t)n`. The library never dereferences it; the caller
 * owns what it points to (free it when its item has been handled, or
 * after pmap_iter_free() for items never handed out). A record without a
 * value gives NULL; calling it again for the same record replaces the
 * value (NULL clears it). A value set by a call of the generator that then
 * returns 0 or an error belongs to no record and is dropped.
 *
 * Returns PMAP_OK; PMAP_EINVAL when `param` is not the buffer of a record
 * this thread's generator is producing (a task's `out`, a call outside a
 * generator); PMAP_ENOMEM (the first call of a map allocates a pointer per
 * slot of its window). Caller process only. Since 1.1.
 */
PMAP_API int pmap_param_set_user(pmap_buf *param, void *user);

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

/** The most workers one pool may have. */
#define PMAP_WORKERS_MAX 16384

/**
 * Pool options. Always initialise with pmap_options_init() and then set the
 * fields you need: fields may be appended in later versions.
 */
typedef struct pmap_options {
    /** Worker processes; 0: pmap_cpu_count(). Negative, or more than
     *  PMAP_WORKERS_MAX, is EINVAL at pmap_pool_create(). Each worker is a
     *  process and holds two descriptors in the caller (mind
     *  RLIMIT_NOFILE: EMFILE otherwise); creating n workers costs time
     *  linear in n (about a millisecond each on a small machine). */
    int workers;
    /** Records per batch sent to a worker; 0: adaptive (batches sized by
     *  measured task time, so tiny tasks travel in large batches and slow
     *  ones one at a time). A worker has up to two batches queued; idle
     *  workers come first: every worker gets a batch before any gets a
     *  second, so n records on n idle workers run at the same time. */
    unsigned chunk;
    /** Most records generated but not yet returned by pmap_next() (a record
     *  counts as returned once pmap_next() has handed it out). This is what
     *  bounds the caller's memory, however long the input. Any value from
     *  1 (one record at a time) up; a window below workers (times chunk,
     *  when chunk is set) leaves workers idle, and pmap_imap() may fail
     *  with ENOMEM for a huge one (each record of the window takes about a
     *  hundred bytes of address space, touched only when used).
     *  0: automatic, workers * 4 * 2048 records, or workers * 4 * chunk
     *  when chunk is set and larger than 2048, and at most 65536; the
     *  automatic window also pauses the generator while the records alive
     *  hold more than 256 MiB, or, once a parameter of 16 KiB or more has
     *  been seen, more than workers * 4 times the largest parameter (at
     *  least 1 MiB each), when that is less (at least one record is
     *  always in flight). */
    unsigned window;
    /** Replace a worker after it has run this many records; 0: never. */
    unsigned long max_tasks_per_worker;
    /** Per-record time limit in milliseconds, counted from the moment the
     *  record's task starts; an item over it is PMAP_ETIMEOUT and its
     *  worker is killed and replaced. A worker found already dead when
     *  the limit is checked (the caller was busy elsewhere) was not
     *  killed for it: its record is PMAP_ECRASH. 0: no limit. */
    unsigned task_timeout_ms;
    /** Largest parameter or result record in bytes; 0: 1 GiB. Set
     *  between 1 MiB and 128 MiB with the fork start method on Linux,
     *  records of 1 MiB or more travel through shared memory (each
     *  worker's arena and the pool's parameter blocks are sized from
     *  it: since 1.1 a generator writes a large parameter straight into
     *  a shared block, which the workers map read-only); otherwise
     *  through the pipes. */
    size_t max_record_bytes;
    /** Run once in every new worker before its first record; a non-zero
     *  return is a failed start (see pmap_pool_create() and PMAP_EWORKER).
     *  NULL: nothing. Receives the pool's `ctx`; pmap_worker_id() already
     *  gives the worker's number inside it. */
    int (*worker_init)(void *ctx);
    /** Replace a worker once its resident memory exceeds this many bytes,
     *  checked after each record (Linux; ignored elsewhere). 0: no limit. */
    size_t max_worker_rss;
    /** Since 1.1. A record whose worker crashed (PMAP_ECRASH) or was killed
     *  for its time limit (PMAP_ETIMEOUT) runs again, on another worker
     *  (the one it killed is replaced), up to this many times; only its
     *  last outcome is reported, so with 1 a record that fails once and
     *  then succeeds arrives as PMAP_OK. Retries count per record: a record
     *  sent again only because it shared a batch with another record's
     *  crash or timeout keeps all of its own. PMAP_ETASK (the task's own
     *  answer), PMAP_EPROTO and the buffer statuses are outcomes and never
     *  retried. Each retry of a crash or timeout costs the fork of a
     *  replacement worker. 0 (the default): no retries. */
    unsigned max_retries;
    /** Since 1.1. Run once in a worker that ends normally, after its last
     *  record, so per-worker state set up by worker_init can be flushed
     *  and freed: when pmap_pool_destroy() ends it, when it is recycled
     *  (max_tasks_per_worker, max_worker_rss). Not run for a worker that
     *  crashed, was
     *  killed (time limit, pmap_iter_free() while it was busy), or whose
     *  worker_init failed. Receives the pool's `ctx`, on the thread that
     *  runs the tasks; pmap_worker_id() still gives its number. Keep it
     *  short: pmap_pool_destroy() kills a worker that has not exited half
     *  a second after being told to. What it writes to stdio is flushed.
     *  NULL (the default): nothing. */
    void (*worker_exit)(void *ctx);
    /** How workers are started (since 1.1): PMAP_START_FORK (0, the
     *  default) forks each worker, first ones and replacements, from the
     *  caller at that moment; PMAP_START_FORKSERVER makes
     *  pmap_pool_create() fork one server process that forks every worker
     *  of the pool, so the caller may start threads and take locks after
     *  pmap_pool_create() and replacements still start cleanly, every
     *  worker sees the caller's memory as it was at pmap_pool_create()
     *  (also for replacements, and for worker_init), and a replacement
     *  costs the caller no fork of its own. Everything else is the same in
     *  both modes; the server is a child of the caller for the pool's
     *  life, reaped by pmap_pool_destroy(), and dies with the caller. Any
     *  other value is EINVAL at pmap_pool_create(). */
    int start_method;
} pmap_options;

/** Values of pmap_options.start_method (since 1.1). */
enum { PMAP_START_FORK = 0, PMAP_START_FORKSERVER = 1 };

/**
 * Fill `opt` with the defaults (all zero: automatic worker count, adaptive
 * chunk, automatic window, no recycling, no timeout, 1 GiB records).
 * NULL is a no-op.
 */
PMAP_API void pmap_options_init(pmap_options *opt);

/* ------------------------------------------------------------------------ */
/* Pool                                                                     */
/* ------------------------------------------------------------------------ */

/**
 * Create a pool: fork the workers now and wait until each has run
 * worker_init. `fn` is the task; `ctx` is passed to it and to worker_init
 * (the library never dereferences it). `opt` may be NULL for defaults; it
 * is copied.
 *
 * Returns the pool, or NULL with errno set: EINVAL (NULL fn, negative
 * workers, unknown start_method), ENOMEM, ECHILD (worker_init failed, or a
 * worker died while starting), or the errno of a failed system call (EAGAIN
 * from fork, EMFILE, ...). On failure no child process or descriptor is left behind.
 *
 * `ctx` must stay valid for the life of the pool when the task or
 * worker_init reads it: replacement workers fork later and see it then
 * (with PMAP_START_FORKSERVER they see it as it was at this call).
 * The caller's buffered stdio is flushed before forking. May be called in
 * any process, a worker included (see "Processes" above).
 */
PMAP_API pmap_pool *pmap_pool_create(pmap_task_fn fn, void *ctx, const pmap_options *opt);

/*
 * Binary compatibility (how pmap_options grows). pmap_options_init() and
 * pmap_pool_create() are macros that pass the size of the pmap_options
 * this program was compiled with, so a program built against an older
 * pmap.h keeps working, unrebuilt, with a newer library: the library never
 * reads or writes past the caller's struct, and fields the caller's header
 * did not have take their defaults. The functions of the same names (what
 * programs built against the 1.0 header call, or `(pmap_pool_create)(...)`)
 * take the 1.0 layout. Call the macros; the *_sized functions are their plumbing.
 */
PMAP_API void pmap_options_init_sized(pmap_options *opt, size_t size);
PMAP_API pmap_pool *pmap_pool_create_sized(pmap_task_fn fn, void *ctx, const pmap_options *opt,
                                            size_t size);
#define pmap_options_init(opt) pmap_options_init_sized((opt), sizeof(pmap_options))
#define pmap_pool_create(fn, ctx, opt)                                                             \
    pmap_pool_create_sized((fn), (ctx), (opt), sizeof(pmap_options))

/**
 * Stop and reap every worker and free the pool. Idle workers exit at once;
 * a worker still busy is killed after a short grace period, so this never
 * hangs. Afterwards the process has the descriptors and children it had
 * before the pool was created. NULL is a no-op (returns PMAP_OK).
 *
 * Returns PMAP_OK, or PMAP_EBUSY (and does nothing) while an iterator is
 * open on the pool. In a child process that inherited the pool through the
 * host's fork(), the pool is inert: this releases the child's copies of its
 * memory and descriptors and touches none of the parent's workers.
 */
PMAP_API int pmap_pool_destroy(pmap_pool *pool);

/* ------------------------------------------------------------------------ */
/* Iterator                                                                 */
/* ------------------------------------------------------------------------ */

/**
 * Start a map over the records produced by `gen`, results in input order.
 * Nothing runs until the first pmap_next(); the generator is called only
 * from pmap_next(), and only while fewer than `window` records are
 * generated but not yet returned.
 *
 * Returns the iterator, or NULL with errno set: EINVAL (NULL pool or gen, or
 * a pool inherited through fork), EBUSY (the pool already has an open
 * iterator), ENOMEM. Free it with pmap_iter_free(): an iterator holds its
 * pool until then, even after pmap_next() returned PMAP_DONE (another
 * pmap_imap() on the pool fails with EBUSY, pmap_pool_destroy() with
 * PMAP_EBUSY). Caller process only.
 */
PMAP_API pmap_iter *pmap_imap(pmap_pool *pool, pmap_gen_fn gen, void *gen_ctx);

/**
 * As pmap_imap(), but results are returned as soon as they are back, in no
 * particular order; item.index tells which record each one is.
 */
PMAP_API pmap_iter *pmap_imap_unordered(pmap_pool *pool, pmap_gen_fn gen, void *gen_ctx);

/**
 * As pmap_imap(), but the records run through task `fn` with `ctx` instead
 * of the task and ctx given to pmap_pool_create(), which stay the pool's
 * default for later maps: one pool serves maps of different tasks without
 * forking its workers again (Python's pool.imap(f, ...) with any f).
 * Each worker switches to `fn` before its first record of this map;
 * worker_init and worker_exit keep the pool's ctx. Everything else is as
 * for pmap_imap(): item statuses and codes (a crash or timeout in `fn` is
 * reported on its record), retries, recycling, replacement workers (which
 * run `fn` too).
 *
 * `fn` is called in the workers, which are forks of this program: the
 * function pointer is valid there, but `ctx` is read with the fork
 * snapshot rule like any memory of the caller's, so it must point to data
 * that existed, as the task needs it, when the workers were forked (before
 * pmap_pool_create(), or static), or be a plain value such as
 * `(void *)(uintptr_t)n`. Data made for this map travels in the records.
 *
 * Returns the iterator, or NULL with errno set: as pmap_imap(), and EINVAL
 * for a NULL `fn`, or for a pool whose workers are not forks of this
 * program and so cannot call its function pointers (a pool made by any
 * other constructor than pmap_pool_create(), e.g. across machines).
 * Caller process only. Since 1.1.
 */
PMAP_API pmap_iter *pmap_imap_task(pmap_pool *pool, pmap_task_fn fn, void *ctx, pmap_gen_fn gen,
                                   void *gen_ctx);

/** pmap_imap_task() with results in no particular order. Since 1.1. */
PMAP_API pmap_iter *pmap_imap_task_unordered(pmap_pool *pool, pmap_task_fn fn, void *ctx,
                                             pmap_gen_fn gen, void *gen_ctx);

/**
 * As pmap_imap(), over an array instead of a generator: record i is the
 * `size` bytes at `(const char *)base + i * size`, for i in [0, count).
 * item.index is i. The array is read by pmap_next() while the map runs
 * (one record at a time, as a generator would), so it must stay valid and
 * unchanged until the last item is returned or the iterator is freed.
 * `size` may be 0 (empty records); `base` may be NULL when count or size
 * is 0.
 *
 * Returns the iterator, or NULL with errno set: as pmap_imap(), and EINVAL
 * (NULL base with records to read), E2BIG (`size` exceeds the pool's
 * max_record_bytes). Since 1.1.
 */
PMAP_API pmap_iter *pmap_imap_array(pmap_pool *pool, const void *base, size_t count, size_t size);

/** pmap_imap_array() with results in no particular order. Since 1.1. */
PMAP_API pmap_iter *pmap_imap_array_unordered(pmap_pool *pool, const void *base, size_t count,
                                              size_t size);

/**
 * Map an array and collect every result, as Python's pool.map: record i is
 * as in pmap_imap_array(); its result, which must be exactly `result_size`
 * bytes, is copied to `(char *)results + i * result_size`, and its status
 * to `status[i]` (`status` may be NULL). Results are copied once, from the
 * iterator straight into `results`, as they come back in any order.
 *
 * An item that failed (PMAP_ETASK, PMAP_ECRASH, PMAP_ETIMEOUT, PMAP_EPROTO)
 * or whose result is not `result_size` bytes (status PMAP_ETOOBIG) has its
 * slot of `results` zeroed; the other items still run. If the map itself
 * fails (e.g. PMAP_EWORKER), the items not returned get that status.
 *
 * Returns PMAP_OK when every item succeeded; otherwise the status of the
 * failed item with the lowest index, or the map's own error; or, with
 * nothing run: PMAP_EINVAL (NULL pool, NULL base or results with records,
 * count * result_size overflows), PMAP_ETOOBIG (`size` exceeds
 * max_record_bytes), PMAP_EBUSY (an iterator is open on the pool),
 * PMAP_ENOMEM. Since 1.1.
 */
PMAP_API int pmap_map_array(pmap_pool *pool, const void *base, size_t count, size_t size,
                            void *results, size_t result_size, int *status);

/** One result of a map, filled by pmap_next(). */
typedef struct pmap_item {
    /** 0-based position of the record in the generator's sequence. */
    uint64_t index;
    /** PMAP_OK, PMAP_ETASK, PMAP_ECRASH, PMAP_ETIMEOUT, PMAP_EPROTO; or
     *  PMAP_ETOOBIG (PMAP_ENOMEM, PMAP_EINVAL) when the task's last
     *  pmap_buf_set() / pmap_buf_reserve() on `out` failed. */
    int status;
    /** PMAP_ETASK: the task's return value; PMAP_ECRASH: the signal number
     *  if the worker was killed by one, else its exit status, -1 if
     *  unknowable (the host reaped it, e.g. SIGCHLD set to SIG_IGN);
     *  otherwise 0. */
    int code;
    /** Result bytes (PMAP_OK), or the task's message (PMAP_ETASK);
     *  other statuses have none. NULL when len is 0; aligned to
     *  at least 8 bytes; valid until the next pmap_next() or
     *  pmap_iter_free() on this iterator. */
    const void *data;
    /** Length of the result in bytes. */
    size_t len;
} pmap_item;

/**
 * Return the next result of the map.
 *
 * Returns PMAP_OK with *item filled; PMAP_DONE when every record has been
 * returned; or a negative status when the map failed as a whole
 * (PMAP_EGEN, PMAP_ESYS, PMAP_EWORKER, PMAP_ENOMEM, PMAP_EJOURNAL; or the
 * status of a failed generator buffer, PMAP_ETOOBIG, see pmap_buf_set()), after every record
 * generated before the failure has been returned. After PMAP_DONE or a
 * failure, further calls return the same value. PMAP_EINVAL for NULL
 * arguments, and in a process that inherited the iterator through fork().
 * PMAP_EBUSY, with nothing done and *item untouched, when called from
 * inside this iterator's generator. The pool stays usable after a failure.
 * When the failure is the backend's (PMAP_ESYS, PMAP_ENOMEM, PMAP_EWORKER),
 * records that were running are lost with it: in input order the items
 * after them still come out, with gaps.
 *
 * When a worker crashes (or is killed for a timeout), the records of its
 * batches whose results had not come back run on a fresh worker: those
 * that had not started yet, and those that had finished but whose results
 * were still waiting to be sent with the rest of the batch. A record of the
 * second kind runs once more, and then its result is sent as soon as it is
 * ready, so no later crash can make it run a third time: a task never runs
 * to the end more than twice on one record. Apart from retries, that is
 * the only case in which a record runs more than once; with chunk = 1
 * (batches of one record) it never does. The crashed record itself is not
 * run again, unless pmap_options.max_retries allows it: each retry is one
 * more run, on top of the bound above. Caller process only.
 */
PMAP_API int pmap_next(pmap_iter *it, pmap_item *item);

/**
 * The caller-side value the generator attached to the record of `item`
 * (pmap_param_set_user()), or NULL when it attached none. `item` must be
 * the one the latest pmap_next() or pmap_try_next() on `it` filled: for
 * any other (an older item, NULL arguments) it returns NULL. Costs a few
 * loads; never blocks. Caller process only. Since 1.1.
 */
PMAP_API void *pmap_item_user(const pmap_iter *it, const pmap_item *item);

/**
 * End the map and free the iterator, early if needed: workers still busy
 * with its records are stopped (killed) and replaced, so this returns
 * promptly however long the tasks are. The pool stays usable.
 *
 * Returns the fatal error that ended the map (as pmap_next() returned it),
 * else PMAP_OK. NULL is a no-op (returns PMAP_OK). In a process that
 * inherited the iterator through fork() it frees that process's copy only
 * and stops nothing. Called from inside this iterator's generator, returns
 * PMAP_EBUSY and frees nothing: call it again once the pmap_next() that
 * runs the generator has returned.
 */
PMAP_API int pmap_iter_free(pmap_iter *it);

/**
 * The generator's own negative return value once it has ended the map
 * (pmap_next() returned or is to return PMAP_EGEN), so a generator can
 * say why it failed (e.g. -errno). 0 while the generator has not failed,
 * when the map ended another way (a generator that returned 1 with a
 * failed buffer ends it with that buffer's status, not PMAP_EGEN), and
 * for NULL. Valid until pmap_iter_free(). Caller process only. Since 1.1.
 */
PMAP_API int pmap_iter_gen_error(const pmap_iter *it);

/* ------------------------------------------------------------------------ */
/* Journal: maps that survive their caller (since 1.1)                      */
/* ------------------------------------------------------------------------ */

/*
 * A journal is a file that keeps the items of a map, so that running the
 * same map again (after Ctrl-C, a reboot, an OOM kill, a job's time limit)
 * hands out the stored items instead of running their records:
 *
 *     pmap_journal *j = pmap_journal_open("sweep.pmj");
 *     pmap_iter *it = pmap_imap(pool, gen, &g);
 *     pmap_iter_journal(it, j);           // before the first pmap_next
 *     while ((rc = pmap_next(it, &item)) == PMAP_OK)
 *         use(&item);                     // stored or computed: the same
 *     pmap_iter_free(it);
 *     pmap_journal_close(j);
 *
 * Every item that ends PMAP_OK or PMAP_ETASK is appended to the journal
 * (its index, status, code, result bytes and a 64-bit hash of its
 * parameter bytes) as soon as its result is back, and written to the file
 * before pmap_next() hands it out: a caller killed at any moment (even by
 * SIGKILL) loses no item it was given. The data reach the disk (fdatasync)
 * at least once a second while the map runs, when the iterator is freed,
 * and at pmap_journal_close(), so a power loss costs about a second of
 * results at most. PMAP_ECRASH, PMAP_ETIMEOUT, PMAP_EPROTO and the buffer
 * statuses are not stored: those records run again next time.
 *
 * On a later map with the journal attached, the generator is still called
 * for every record, in order (so whatever state it keeps is rebuilt), but
 * a record whose index is stored is not sent to any worker: the stored
 * item is handed out in its place, same index, status, code and bytes, in
 * either order mode (in completion order, stored items come first, as
 * soon as they are generated). A record whose parameter bytes hash
 * differently from the stored entry of its index ends the map with
 * PMAP_EJOURNAL, after the items before it: the journal belongs to
 * another input.
 *
 * The file holds 32 bytes per item plus its result, appended only. It is
 * locked (flock) while open: one process at a time. Its memory in the
 * caller is at most 16 bytes per stored item (the results stay in the
 * file), plus a fixed 2 MiB of buffers and up to 1 MiB of index slack.
 * Workers never hold its descriptor or its lock. A stored result larger
 * than the pool's max_record_bytes is handed out as PMAP_ETOOBIG.
 *
 * An item is known by its index and the hash of its parameter bytes only:
 * a map with another task or ctx (pmap_imap_task(), another pool) over the
 * same records would be handed the first one's results. Keep one journal
 * per task, or put what tells the tasks apart into the records.
 */

/** An open journal file. Opaque; see pmap_journal_open(). */
typedef struct pmap_journal pmap_journal;

/**
 * Open the journal at `path`, creating it (mode 0666 before the umask) if
 * it does not exist or is empty. An existing journal is read through: a
 * torn or corrupt tail (the half-written last entry of a writer that
 * died, a scribbled end) is cut off, and every entry before it kept.
 *
 * Returns the journal, or NULL with errno set: EINVAL (NULL path),
 * EWOULDBLOCK (another process has it open), EBADMSG (the file is not a
 * journal, or one of a format this version does not read; nothing is
 * written to it), ENOMEM, or the errno of open(), read(), ftruncate() or
 * fdatasync(). Caller process; the journal belongs to the process that
 * opened it.
 */
PMAP_API pmap_journal *pmap_journal_open(const char *path);

/**
 * Write out and fdatasync what is not on disk yet, release the lock and
 * free the journal. The same process (or another) may open the file again
 * at once, even while pool workers run.
 *
 * Returns PMAP_OK; PMAP_EJOURNAL when a write or the sync failed (now or
 * during a map: entries may be missing, they run again next time); the
 * journal is freed in both cases. PMAP_EBUSY, and nothing done, while an
 * iterator uses it (free the iterator first). NULL is a no-op (PMAP_OK).
 * In a process that inherited the journal through fork(), frees that
 * process's copy only.
 */
PMAP_API int pmap_journal_close(pmap_journal *j);

/** Items stored in the journal (those of earlier maps and of the one
 *  running). 0 for NULL. */
PMAP_API uint64_t pmap_journal_count(const pmap_journal *j);

/**
 * Attach journal `j` to map `it`: stored items are replayed, new ones
 * stored (see above). Call it before the first pmap_next() or
 * pmap_try_next() on `it`. The journal is in use until pmap_iter_free(it),
 * which writes and syncs it; one journal may serve several maps in turn.
 *
 * Returns PMAP_OK; PMAP_EINVAL (NULL argument, pmap_next() already
 * called, another journal already attached, an iterator or journal of
 * another process); PMAP_EBUSY (another iterator uses the journal);
 * PMAP_EJOURNAL (a write to the journal failed earlier). While the map
 * runs, a write that fails (disk full, I/O error) ends it with
 * PMAP_EJOURNAL; items not yet written are not handed out. Caller process
 * only.
 */
PMAP_API int pmap_iter_journal(pmap_iter *it, pmap_journal *j);

/* ------------------------------------------------------------------------ */
/* Inside an event loop (since 1.1)                                         */
/* ------------------------------------------------------------------------ */

/*
 * A program built on an event loop (libuv, libevent, GLib, its own epoll
 * loop) drives a map without ever blocking in it:
 *
 *     int fd = pmap_iter_fd(it);          // watch it for input
 *     for (;;) {
 *         struct pollfd p = {fd, POLLIN, 0};
 *         poll(&p, 1, pmap_iter_timeout(it));
 *         while ((rc = pmap_try_next(it, &item)) == PMAP_OK)
 *             use(&item);
 *         if (rc != PMAP_EAGAIN)
 *             break;                      // PMAP_DONE or the map's failure
 *     }
 *
 * The loop gets the same items as the pmap_next() loop and uses no CPU
 * while the tasks run. pmap_next() and pmap_try_next() may be mixed on one
 * iterator.
 */

/**
 * Do what pmap_next() does (generate, send, read, reap and replace
 * workers, enforce time limits) without waiting for anything.
 *
 * Returns PMAP_OK with *item filled, PMAP_DONE, or the map's fatal status
 * exactly as pmap_next() would; PMAP_EAGAIN when no item is ready now.
 * Every call, whatever it returns, ends the validity of the item.data of
 * the previous pmap_next() or pmap_try_next(). PMAP_EINVAL for NULL
 * arguments and in a process that inherited the iterator; PMAP_EBUSY
 * (nothing done) when called from the iterator's own generator. Runs the
 * generator like pmap_next(); it never sleeps, though starting a
 * replacement worker costs a fork(). Caller process only.
 */
PMAP_API int pmap_try_next(pmap_iter *it, pmap_item *item);

/**
 * A descriptor that polls readable whenever pmap_try_next() may make
 * progress (an item is ready, also one read ahead by an earlier call; the
 * map has ended; records can be generated or sent, as before the first
 * call) and stays quiet while the tasks run. Level-triggered: it stays
 * readable until pmap_try_next() returns PMAP_EAGAIN. Watch it for input
 * with poll(), select(), epoll or libuv's uv_poll_t; never read, write or
 * close it. The same descriptor on every call; it belongs to the iterator
 * and is closed by pmap_iter_free().
 *
 * Returns the descriptor, or -1 with errno set: EINVAL (NULL, or an
 * iterator inherited through fork()), ENOSYS where the system has no epoll
 * (not Linux), EMFILE, ENOMEM. Caller process only.
 */
PMAP_API int pmap_iter_fd(pmap_iter *it);

/**
 * Milliseconds until pmap_try_next() must be called even if the
 * descriptor stays quiet (a time limit to enforce, a killed worker to
 * reap, a worker to restart); 0 when it may make progress now; -1 when
 * there is no such deadline (wait for the descriptor alone). Use it as the
 * event loop's timeout; the value holds until the next pmap_try_next() or
 * pmap_next(). -1 with errno EINVAL for NULL or an inherited iterator.
 * Caller process only.
 */
PMAP_API int pmap_iter_timeout(pmap_iter *it);

/* ------------------------------------------------------------------------ */
/* Utilities                                                                */
/* ------------------------------------------------------------------------ */

/**
 * The number of CPUs this process may run on: its affinity mask (Linux), and
 * on Linux also a cgroup CPU quota (rounded up) when one is set. Always >= 1.
 * Callable anywhere.
 */
PMAP_API int pmap_cpu_count(void);

/**
 * Inside a worker: its number, 0 .. workers-1 (a replacement worker takes
 * the number of the one it replaces). In the caller: -1.
 */
PMAP_API int pmap_worker_id(void);

/*
 * Functions that return a pointer return NULL on failure and set errno
 * (EINVAL, ENOMEM, EBUSY for a second open iterator on one pool, ...).
 */

#ifdef __cplusplus
}
#endif

#endif /* PMAP_H */
