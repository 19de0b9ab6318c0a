/*
 * Soak: hundreds of create/map/destroy cycles with faults injected at
 * random (crashes, timeouts, task errors, early frees, generator errors),
 * each cycle's results checked, and at the end the same descriptors, no
 * children and flat memory. The PRNG seed is fixed (PMAP_SOAK_SEED
 * overrides it) so that a failure can be replayed.
 *
 * By default a few seconds (50-200 cycles), so that the suite stays
 * quick; PMAP_SOAK_FULL=1 runs 300-1000 cycles within about a minute
 * (.ci/run does, under ASan); PMAP_TEST_QUICK=1 runs 20-60.
 */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "faultops.h"
#include "testutil.h"

#include <signal.h>
#include <unistd.h>

#ifdef FO_SANITIZED
#define SOAK_ASAN 1
#endif

static uint64_t rng_state;
/* The task limit of cycles with a stuck record. Quick runs (valgrind, where
 * an abort takes long) use the suites' safe limit; the default run, with
 * ten or more such cycles, a shorter one that a crash on a loaded machine
 * still cannot reach. */
static unsigned limit_ms = FAULT_LIMIT_MS;

static uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static unsigned pick(unsigned n)
{
    return (unsigned)(rng() % n);
}

struct cycle_stats {
    unsigned cycles, crashes, timeouts, taskerrs, early, generr;
};

/* One cycle: a fresh pool, one or two maps with faults, checks, destroy. */
static void one_cycle(struct cycle_stats *st, struct fo_plan *pl, struct fo_got *got, uint64_t cap)
{
    static const unsigned chunks[] = {0, 1, 3, 16};
    static const unsigned windows[] = {0, 4, 64};
    static const unsigned long maxtasks[] = {0, 0, 5, 50};
    pmap_options opt;
    pmap_pool *pool;
    int maps = 1 + (int)pick(2), m;
    int with_timeout = pick(10) == 0;

    fo_opts(&opt, 1 + (int)pick(3), chunks[pick(4)]);
    opt.window = windows[pick(3)];
    opt.max_tasks_per_worker = maxtasks[pick(4)];
    opt.task_timeout_ms = with_timeout ? limit_ms : pick(2) ? 5000 : 0;
    pool = pmap_pool_create(fo_task, NULL, &opt);
    assert_non_null(pool);

    for (m = 0; m < maps; m++) {
        uint64_t n = 1 + pick((unsigned)cap), i, count, stop = UINT64_MAX;
        int ordered = (int)pick(2), rc;

        pl->n = n;
        pl->fail_at = UINT64_MAX;
        for (i = 0; i < n; i++) {
            pl->ops[i].kind = FO_ECHO;
            pl->ops[i].arg = 0;
        }
        if (pick(4) == 0) { /* crashes */
            unsigned k, c = 1 + pick(3);

            for (k = 0; k < c; k++) {
                i = pick((unsigned)n);
                pl->ops[i].kind = pick(2) ? FO_ABORT : FO_EXIT;
                pl->ops[i].arg = 1 + pick(100);
                st->crashes++;
            }
        }
        if (pick(5) == 0) { /* task errors */
            unsigned k, c = 1 + pick(5);

            for (k = 0; k < c; k++) {
                i = pick((unsigned)n);
                pl->ops[i].kind = FO_TASKERR;
                pl->ops[i].arg = 1 + pick(1000);
                st->taskerrs++;
            }
        }
        if (with_timeout && m == 0) {
            i = pick((unsigned)n);
            pl->ops[i].kind = FO_SLEEP;
            pl->ops[i].arg = 20000;
            st->timeouts++;
        }
        if (pick(6) == 0) { /* the generator fails */
            pl->fail_at = pick((unsigned)n);
            st->generr++;
        } else if (pick(6) == 0) { /* the consumer stops early */
            stop = pick((unsigned)n);
            st->early++;
        }

        rc = fo_run(pool, pl, ordered, got, stop, &count);
        if (stop != UINT64_MAX) {
            assert_int_equal(rc, PMAP_OK);
            assert_int_equal(count, stop);
        } else if (pl->fail_at != UINT64_MAX) {
            /* Every record generated before the failure comes back first. */
            assert_int_equal(rc, PMAP_EGEN);
            assert_int_equal(count, pl->fail_at);
        } else {
            assert_int_equal(rc, PMAP_DONE);
            assert_int_equal(count, n);
        }
        for (i = 0; i < n; i++) {
            const struct fo_got *g = &got[i];
            const struct fo_op *op = &pl->ops[i];

            if (!g->seen)
                continue;
            switch (op->kind) {
            case FO_ABORT:
                assert_int_equal(g->status, PMAP_ECRASH);
                assert_int_equal(g->code, SIGABRT);
                break;
            case FO_EXIT:
                assert_int_equal(g->status, PMAP_ECRASH);
                assert_true(fo_exit_code_ok(g->code, (int)op->arg));
                break;
            case FO_TASKERR:
                assert_int_equal(g->status, PMAP_ETASK);
                assert_int_equal(g->code, (int)op->arg);
                break;
            case FO_SLEEP:
                assert_int_equal(g->status, PMAP_ETIMEOUT);
                break;
            default:
                assert_true(fo_ok(g, i));
            }
        }
    }
    assert_int_equal(pmap_pool_destroy(pool), PMAP_OK);
    st->cycles++;
}

static void test_soak(void **state)
{
    const char *full_env = getenv("PMAP_SOAK_FULL");
    int full = full_env != NULL && *full_env != '\0' && *full_env != '0';
    int quick = !full && fo_quick();
    unsigned max_cycles = full    ? 1000
                          : quick ? 60
                                  : 200,
             min_cycles = full    ? 300
                          : quick ? 20
                                  : 50;
    uint64_t budget_ns = (full ? 50ull : quick ? 40ull : 3ull) * 1000000000ull;
    uint64_t cap = quick ? 120 : 400;

    limit_ms = full || quick ? FAULT_LIMIT_MS : 400u;
    struct fo_plan *pl = fo_plan_new(cap, FO_ECHO, 0);
    struct fo_got *got = calloc(cap, sizeof *got);
    struct cycle_stats st;
    struct tu_snap snap;
    uint64_t t0;
    long rss_warm = 0, rss_end;
    const char *seed = getenv("PMAP_SOAK_SEED");

    (void)state;
    assert_non_null(got);
    memset(&st, 0, sizeof st);
    rng_state = seed != NULL ? strtoull(seed, NULL, 0) : 0x9e3779b97f4a7c15ull;
    if (rng_state == 0)
        rng_state = 1;
    tu_snap_take(&snap);
    t0 = pmap__now_ns();
    while (st.cycles < max_cycles && (st.cycles < min_cycles || pmap__now_ns() - t0 < budget_ns)) {
        one_cycle(&st, pl, got, cap);
        /* The allocator's high-water mark settles within the first cycles
         * (pools of the largest window seen so far); measure from there. */
        if (st.cycles == min_cycles / 2)
            rss_warm = tu_rss_kib();
        if (getenv("PMAP_SOAK_TRACE") != NULL && st.cycles % 20 == 0)
            print_message("cycle %u: RSS %ld KiB\n", st.cycles, tu_rss_kib());
        /* Nothing may pile up between cycles. */
        assert_int_equal(tu_fd_count(), snap.fds);
        assert_int_equal(tu_child_count(), snap.children);
    }
    rss_end = tu_rss_kib();
    print_message("%u cycles in %.1f s: %u crashes, %u timeouts, %u task errors, "
                  "%u early frees, %u generator errors; RSS %ld KiB after warm-up, %ld KiB "
                  "at the end\n",
                  st.cycles, (double)(pmap__now_ns() - t0) / 1e9, st.crashes, st.timeouts,
                  st.taskerrs, st.early, st.generr, rss_warm, rss_end);
    assert_true(st.cycles >= min_cycles);
    assert_true(st.crashes > 0 && st.timeouts > 0 && st.taskerrs > 0 && st.early > 0 &&
                st.generr > 0);
#ifndef SOAK_ASAN
    /* ASan's quarantine holds freed memory on purpose: no flat RSS there. */
    assert_true(rss_end - rss_warm < (quick ? 16384 : 3072));
#endif
    fo_plan_free(pl);
    free(got);
    tu_snap_check(&snap);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soak),
    };
    const char *full = getenv("PMAP_SOAK_FULL");

    /* A guard against hangs only: the full soak runs at least 300 cycles,
     * which under ASan beside other work can take minutes. */
    alarm(full != NULL && *full != '\0' && *full != '0' ? 1500 : 280);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
