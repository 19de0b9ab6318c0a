/*
 * Tests of the progress unit: formatting on fixed inputs, exact output to
 * regular files under an injected clock, in-place drawing on a pseudo-
 * terminal, and survival of a pipe whose reader has gone.
 */
#define _XOPEN_SOURCE 700 /* posix_openpt, grantpt, unlockpt, ptsname */
#define _DEFAULT_SOURCE   /* TIOCSWINSZ */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pmap_progress.h"
#include "progress_internal.h"

#define MS UINT64_C(1000000)
#define SEC UINT64_C(1000000000)

/* U+2588 FULL BLOCK and the one-eighth to seven-eighths blocks. */
#define FULL "\xe2\x96\x88"
#define E1 "\xe2\x96\x8f"
#define E2 "\xe2\x96\x8e"
#define E3 "\xe2\x96\x8d"
#define E4 "\xe2\x96\x8c"
#define E5 "\xe2\x96\x8b"
#define E6 "\xe2\x96\x8a"
#define E7 "\xe2\x96\x89"

/* ------------------------------------------------------------------------ */
/* Fixtures: fd count and the environment are the same after every test.   */
/* ------------------------------------------------------------------------ */

static const char *const env_names[] = {"LC_ALL", "LC_CTYPE", "LANG", "COLUMNS"};
#define ENV_COUNT (sizeof env_names / sizeof env_names[0])

struct fixture {
    int fds;
    char *env[ENV_COUNT];
};

static int count_fds(void)
{
    int fd, n = 0;

    for (fd = 0; fd < 1024; fd++)
        n += fcntl(fd, F_GETFD) != -1;
    return n;
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    size_t i;

    if (fx == NULL)
        return -1;
    fx->fds = count_fds();
    for (i = 0; i < ENV_COUNT; i++) {
        const char *v = getenv(env_names[i]);

        fx->env[i] = v != NULL ? strdup(v) : NULL;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    int fds_now = count_fds();
    size_t i;

    for (i = 0; i < ENV_COUNT; i++) {
        if (fx->env[i] != NULL)
            setenv(env_names[i], fx->env[i], 1);
        else
            unsetenv(env_names[i]);
        free(fx->env[i]);
    }
    assert_int_equal(fds_now, fx->fds);
    free(fx);
    return 0;
}

/* A clock the test drives: returns t, then adds step. Counts its reads. */
struct fake_clock {
    uint64_t t;
    uint64_t step;
    unsigned long reads;
};

static uint64_t fake_now(void *ctx)
{
    struct fake_clock *c = ctx;
    uint64_t t = c->t;

    c->t += c->step;
    c->reads++;
    return t;
}

/* The whole content of a stream opened for update, as a NUL-terminated string. */
static char *slurp(FILE *f)
{
    long size;
    char *buf;

    assert_int_equal(fflush(f), 0);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    size = ftell(f);
    assert_true(size >= 0);
    rewind(f);
    buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    buf[size] = '\0';
    return buf;
}

static size_t count_char(const char *s, size_t len, char c)
{
    size_t i, n = 0;

    for (i = 0; i < len; i++)
        n += s[i] == c;
    return n;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);

    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int sigpipe_blocked(void)
{
    sigset_t set;

    assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &set), 0);
    return sigismember(&set, SIGPIPE) == 1;
}

/* ------------------------------------------------------------------------ */
/* Formatting on fixed inputs                                               */
/* ------------------------------------------------------------------------ */

static void check_time(double seconds, const char *want)
{
    char buf[64];
    size_t n = pmap__progress_format_time(buf, sizeof buf, seconds);

    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void test_format_time(void **state)
{
    char small[3];

    (void)state;
    check_time(0, "00:00");
    check_time(0.999, "00:00");
    check_time(59.9, "00:59");
    check_time(61, "01:01");
    check_time(3599, "59:59");
    check_time(3600, "1:00:00");
    check_time(3725, "1:02:05");
    check_time(360000, "100:00:00");
    check_time(-1, "?");
    check_time(NAN, "?");
    /* Truncation keeps size - 1 bytes and the NUL. */
    assert_int_equal(pmap__progress_format_time(small, sizeof small, 61), 2);
    assert_string_equal(small, "01");
    assert_int_equal(pmap__progress_format_time(small, 0, 61), 0);
}

static void check_rate(double rate, const char *unit, int scale, const char *want)
{
    char buf[128];
    size_t n = pmap__progress_format_rate(buf, sizeof buf, rate, unit, scale);

    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void test_format_rate(void **state)
{
    (void)state;
    check_rate(0.5, NULL, 0, "2.00s/it");
    check_rate(35.2, NULL, 0, "35.20it/s");
    check_rate(1.0, "", 0, "1.00it/s");
    check_rate(0.25, "file", 0, "4.00s/file");
    check_rate(1234567, "B", 1, "1.23MB/s");
    check_rate(1234567, "B", 0, "1234567.00B/s");
    check_rate(0, NULL, 0, "?it/s");
    check_rate(-3, NULL, 0, "?it/s");
    check_rate(NAN, NULL, 0, "?it/s");
    check_rate(INFINITY, NULL, 0, "?it/s");
    check_rate(1e-13, NULL, 0, "?it/s");
}

static void check_si(double v, const char *want)
{
    char buf[64];

    pmap__progress_format_si(buf, sizeof buf, v);
    assert_string_equal(buf, want);
}

static void test_format_si(void **state)
{
    (void)state;
    check_si(0, "0.00");
    check_si(9.994, "9.99");
    check_si(42, "42.0");
    check_si(999, "999");
    check_si(999.5, "1.00k");
    check_si(1234567, "1.23M");
    check_si(2e9, "2.00G");
    check_si(1e24, "1.0Y");
    check_si(-1, "?");
}

static void check_bar(uint64_t count, uint64_t total, unsigned width, int utf8, const char *want)
{
    char buf[256];
    size_t n = pmap__progress_format_bar(buf, sizeof buf, count, total, width, utf8);

    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
    assert_int_equal(pmap__progress_columns(buf, n), width);
}

static void test_format_bar(void **state)
{
    (void)state;
    /* 42% of 10 cells is 33.6 eighths: 4 full cells and one eighth. */
    check_bar(42, 100, 10, 1, FULL FULL FULL FULL E1 "     ");
    check_bar(42, 100, 10, 0, "####      ");
    check_bar(0, 100, 10, 1, "          ");
    check_bar(99, 100, 10, 1, FULL FULL FULL FULL FULL FULL FULL FULL FULL E7);
    check_bar(100, 100, 10, 1, FULL FULL FULL FULL FULL FULL FULL FULL FULL FULL);
    check_bar(150, 100, 4, 1, FULL FULL FULL FULL);
    check_bar(150, 100, 4, 0, "####");
    /* Every eighth of one cell. */
    check_bar(0, 8, 1, 1, " ");
    check_bar(1, 8, 1, 1, E1);
    check_bar(2, 8, 1, 1, E2);
    check_bar(3, 8, 1, 1, E3);
    check_bar(4, 8, 1, 1, E4);
    check_bar(5, 8, 1, 1, E5);
    check_bar(6, 8, 1, 1, E6);
    check_bar(7, 8, 1, 1, E7);
    check_bar(8, 8, 1, 1, FULL);
    /* Almost done is not done, even where doubles round to 1. */
    check_bar(UINT64_MAX - 1, UINT64_MAX, 10, 1, FULL FULL FULL FULL FULL FULL FULL FULL FULL E7);
    check_bar(UINT64_MAX - 1, UINT64_MAX, 3, 0, "## ");
    check_bar(5, 100, 0, 1, "");
}

static struct pmap__progress_view view(const char *desc, uint64_t count, uint64_t total,
                                       double elapsed, double rate, unsigned width)
{
    struct pmap__progress_view v;

    memset(&v, 0, sizeof v);
    v.desc = desc;
    v.count = count;
    v.total = total;
    v.elapsed = elapsed;
    v.rate = rate;
    v.width = width;
    v.utf8 = 1;
    return v;
}

static void check_render(const struct pmap__progress_view *v, const char *want)
{
    char buf[4096];
    size_t n = pmap__progress_render(buf, sizeof buf, v);

    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void test_render_known_total(void **state)
{
    struct pmap__progress_view v = view("desc", 42, 100, 1.5, 35.2, 0);

    (void)state;
    /* 58 left at 35.2/s is 1.6 s. */
    check_render(&v, "desc:  42%|" FULL FULL FULL FULL E1 "     | 42/100 [00:01<00:01, 35.20it/s]");
    v.utf8 = 0;
    check_render(&v, "desc:  42%|####      | 42/100 [00:01<00:01, 35.20it/s]");
    v.desc = NULL;
    check_render(&v, " 42%|####      | 42/100 [00:01<00:01, 35.20it/s]");
    v.desc = "";
    check_render(&v, " 42%|####      | 42/100 [00:01<00:01, 35.20it/s]");

    /* Start: rate and remaining time unknown. */
    v = view(NULL, 0, 100, 0, 0, 0);
    check_render(&v, "  0%|          | 0/100 [00:00<?, ?it/s]");

    /* Below one per second, and over an hour to go. */
    v = view("slow", 1, 5000, 2, 0.5, 0);
    v.utf8 = 0;
    check_render(&v, "slow:   0%|          | 1/5000 [00:02<2:46:38, 2.00s/it]");

    /* Almost done is 99%, even where the arithmetic goes through doubles. */
    v = view(NULL, UINT64_MAX - 1, UINT64_MAX, 0, 0, 0);
    v.utf8 = 0;
    check_render(&v, " 99%|######### | 18446744073709551614/18446744073709551615 [00:00<?, ?it/s]");

    /* Beyond the total: percentage and bar held at 100%, the real count shown. */
    v = view("x", 150, 100, 1.5, 35.2, 0);
    check_render(&v, "x: 100%|" FULL FULL FULL FULL FULL FULL FULL FULL FULL FULL
                     "| 150/100 [00:01<00:00, 35.20it/s]");

    /* SI prefixes. 1234567 of 2000000 is 61%, 49 eighths of 10 cells. */
    v = view(NULL, 1234567, 2000000, 1, 1234567, 0);
    v.unit_scale = 1;
    check_render(&v, " 61%|" FULL FULL FULL FULL FULL FULL E1
                     "   | 1.23M/2.00M [00:01<00:00, 1.23Mit/s]");
}

static void test_render_unknown_total(void **state)
{
    struct pmap__progress_view v = view("desc", 42, 0, 1.5, 35.2, 0);

    (void)state;
    check_render(&v, "desc: 42it [00:01, 35.20it/s]");
    v.desc = NULL;
    check_render(&v, "42it [00:01, 35.20it/s]");
    v.unit = "B";
    check_render(&v, "42B [00:01, 35.20B/s]");
    v.rate = 0;
    check_render(&v, "42B [00:01, ?B/s]");
    v = view(NULL, 1234567, 0, 3725, 1234567, 0);
    v.unit_scale = 1;
    check_render(&v, "1.23Mit [1:02:05, 1.23Mit/s]");
}

static void test_render_width(void **state)
{
    struct pmap__progress_view v = view("desc", 42, 100, 1.5, 35.2, 0);
    char buf[4096];
    unsigned w;
    size_t n;

    (void)state;
    /* The bar fills whatever the fixed fields leave. */
    v.width = 60;
    n = pmap__progress_render(buf, sizeof buf, &v);
    assert_int_equal(pmap__progress_columns(buf, n), 60);
    assert_memory_equal(buf, "desc:  42%|" FULL, strlen("desc:  42%|" FULL));
    assert_true(ends_with(buf, "| 42/100 [00:01<00:01, 35.20it/s]"));

    /* Too narrow for a bar: it goes, then the line is cut. */
    v.width = 30;
    check_render(&v, "desc:  42% 42/100 [00:01<00:01");

    /* A multi-byte description is cut between characters. */
    v.desc = "h\xc3\xa9llo";
    v.width = 2;
    check_render(&v, "h\xc3\xa9");

    /* Never wider than asked, for every width and both modes. */
    for (w = 1; w <= 200; w++) {
        v.desc = "d\xc3\xa9sc";
        v.width = w;
        v.utf8 = (int)(w & 1);
        n = pmap__progress_render(buf, sizeof buf, &v);
        assert_true(pmap__progress_columns(buf, n) <= w);
        if (w >= 50)
            assert_int_equal(pmap__progress_columns(buf, n), w);
        v.total = 0;
        n = pmap__progress_render(buf, sizeof buf, &v);
        assert_true(pmap__progress_columns(buf, n) <= w);
        v.total = 100;
    }
}

static void test_render_small_buffer(void **state)
{
    struct pmap__progress_view v = view("d", 42, 100, 1.5, 35.2, 0);
    char buf[12];
    size_t n;

    (void)state;
    /* "d:  42%|" is 8 bytes; one 3-byte block fits, the second would not. */
    n = pmap__progress_render(buf, sizeof buf, &v);
    assert_int_equal(n, 11);
    assert_string_equal(buf, "d:  42%|" FULL);
    assert_int_equal(pmap__progress_render(buf, 1, &v), 0);
    assert_string_equal(buf, "");
}

static void test_render_postfix(void **state)
{
    struct pmap__progress_view v = view("desc", 42, 100, 1.5, 35.2, 0);
    char buf[4096];
    size_t n;

    (void)state;
    v.postfix = "loss=0.31";
    check_render(&v, "desc:  42%|" FULL FULL FULL FULL E1
                     "     | 42/100 [00:01<00:01, 35.20it/s, loss=0.31]");
    v.total = 0;
    check_render(&v, "desc: 42it [00:01, 35.20it/s, loss=0.31]");
    v.postfix = "";
    check_render(&v, "desc: 42it [00:01, 35.20it/s]");

    /* On a terminal the bar makes room for the postfix, then the line is cut. */
    v.total = 100;
    v.postfix = "loss=0.31";
    v.width = 70;
    n = pmap__progress_render(buf, sizeof buf, &v);
    assert_int_equal(pmap__progress_columns(buf, n), 70);
    assert_true(starts_with(buf, "desc:  42%|" FULL));
    assert_true(ends_with(buf, "| 42/100 [00:01<00:01, 35.20it/s, loss=0.31]"));
    v.width = 45;
    check_render(&v, "desc:  42% 42/100 [00:01<00:01, 35.20it/s, lo");
}

static void test_columns(void **state)
{
    (void)state;
    assert_int_equal(pmap__progress_columns("a" FULL "b", strlen("a" FULL "b")), 3);
    assert_int_equal(pmap__progress_columns("", 0), 0);
}

static void test_locale_utf8(void **state)
{
    (void)state;
    /* Without setlocale() the codeset is ASCII and the variables decide. */
    unsetenv("LC_ALL");
    unsetenv("LC_CTYPE");
    unsetenv("LANG");
    assert_int_equal(pmap__progress_locale_utf8(), 0);
    setenv("LANG", "de_DE.Utf8", 1);
    assert_int_equal(pmap__progress_locale_utf8(), 1);
    setenv("LANG", "POSIX", 1);
    assert_int_equal(pmap__progress_locale_utf8(), 0);
    setenv("LC_CTYPE", "C.UTF-8", 1);
    assert_int_equal(pmap__progress_locale_utf8(), 1);
    setenv("LC_ALL", "", 1); /* empty means unset */
    assert_int_equal(pmap__progress_locale_utf8(), 1);
    setenv("LC_ALL", "C", 1); /* LC_ALL wins */
    assert_int_equal(pmap__progress_locale_utf8(), 0);
    setenv("LC_ALL", "en_US.UTF-16", 1);
    assert_int_equal(pmap__progress_locale_utf8(), 0);
    setenv("LC_ALL", "en_us.utf-8", 1);
    assert_int_equal(pmap__progress_locale_utf8(), 1);
}

/* ------------------------------------------------------------------------ */
/* Whole output to regular files                                            */
/* ------------------------------------------------------------------------ */

/* Run `adds` additions of `n`, the clock stepping `step` before each, then free. */
static char *run_file(const char *desc, uint64_t total, int utf8, unsigned adds, uint64_t n,
                      uint64_t step)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile();
    pmap_progress *bar;
    unsigned i;
    char *content;

    assert_non_null(f);
    bar = pmap__progress_new_with_clock(f, desc, total, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap__progress_is_tty(bar), 0);
    pmap__progress_set_utf8(bar, utf8);
    for (i = 0; i < adds; i++) {
        clk.t += step;
        pmap_progress_add(bar, n);
    }
    pmap_progress_free(bar);
    content = slurp(f);
    assert_int_equal(fclose(f), 0);
    return content;
}

static void test_file_known_total(void **state)
{
    char *s;

    (void)state;
    /* 42 in 4.2 s: 10/s on average, 58 left is 5.8 s. */
    s = run_file("desc", 100, 1, 42, 1, 100 * MS);
    assert_string_equal(s, "desc:  42%|" FULL FULL FULL FULL E1
                           "     | 42/100 [00:04<00:05, 10.00it/s]\n");
    free(s);

    s = run_file("done", 100, 1, 100, 1, 40 * MS);
    assert_string_equal(s, "done: 100%|" FULL FULL FULL FULL FULL FULL FULL FULL FULL FULL
                           "| 100/100 [00:04<00:00, 25.00it/s]\n");
    free(s);

    /* Beyond the total. */
    s = run_file("over", 100, 0, 3, 50, 500 * MS);
    assert_string_equal(s, "over: 100%|##########| 150/100 [00:01<00:00, 100.00it/s]\n");
    free(s);
}

static void test_file_unknown_total(void **state)
{
    char *s;

    (void)state;
    s = run_file("desc", 0, 1, 42, 1, 100 * MS);
    assert_string_equal(s, "desc: 42it [00:04, 10.00it/s]\n");
    free(s);
    s = run_file(NULL, 0, 1, 42, 1, 100 * MS);
    assert_string_equal(s, "42it [00:04, 10.00it/s]\n");
    free(s);
    s = run_file("", 0, 1, 42, 1, 100 * MS);
    assert_string_equal(s, "42it [00:04, 10.00it/s]\n");
    free(s);
    /* Nothing counted, no time passed. */
    s = run_file("idle", 0, 1, 0, 1, 0);
    assert_string_equal(s, "idle: 0it [00:00, ?it/s]\n");
    free(s);
    /* Control characters in the description cannot break the line. */
    s = run_file("a\nb\tc\r", 0, 1, 2, 1, 1 * SEC);
    assert_string_equal(s, "a b c : 2it [00:02, 1.00it/s]\n");
    free(s);
}

static void test_file_line_mode(void **state)
{
    char *s;

    (void)state;
    /* One a second for 35 s: a line at 10, 20, 30 s (rate exactly 1/s), then the final. */
    s = run_file("x", 100, 0, 35, 1, 1 * SEC);
    assert_string_equal(s, "x:  10%|#         | 10/100 [00:10<01:30, 1.00it/s]\n"
                           "x:  20%|##        | 20/100 [00:20<01:20, 1.00it/s]\n"
                           "x:  30%|###       | 30/100 [00:30<01:10, 1.00it/s]\n"
                           "x:  35%|###       | 35/100 [00:35<01:05, 1.00it/s]\n");
    assert_null(strchr(s, '\r'));
    free(s);
}

static void test_file_min_interval(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile();
    pmap_progress *bar;
    char *s;
    int i;

    (void)state;
    assert_non_null(f);
    bar = pmap__progress_new_with_clock(f, "m", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_min_interval(bar, 5.0);
    pmap_progress_set_min_interval(bar, -1.0); /* ignored */
    pmap_progress_set_min_interval(bar, NAN);  /* ignored */
    for (i = 0; i < 12; i++) {
        clk.t += SEC;
        pmap_progress_add(bar, 1);
    }
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "m: 5it [00:05, 1.00it/s]\n"
                           "m: 10it [00:10, 1.00it/s]\n"
                           "m: 12it [00:12, 1.00it/s]\n");
    free(s);
    assert_int_equal(fclose(f), 0);

    /* An absurd interval is clamped (no undefined conversion): only the final line. */
    f = tmpfile();
    assert_non_null(f);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(f, "m", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_min_interval(bar, 1e300);
    for (i = 0; i < 12; i++) {
        clk.t += 100 * SEC;
        pmap_progress_add(bar, 1);
    }
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "m: 12it [20:00, 100.00s/it]\n");
    free(s);
    assert_int_equal(fclose(f), 0);
}

static void test_rate_smoothing(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile();
    pmap_progress *bar;
    char *s, *last, *prev, *rate;
    double r;
    int i;

    (void)state;
    assert_non_null(f);
    bar = pmap__progress_new_with_clock(f, "s", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_min_interval(bar, 1.0);
    /* A minute at 10/s, then one second at 100/s. */
    for (i = 0; i < 60; i++) {
        clk.t += SEC;
        pmap_progress_add(bar, 10);
    }
    clk.t += SEC;
    pmap_progress_add(bar, 100);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_int_equal(count_char(s, strlen(s), '\n'), 62);

    /* The final line: the average of the whole run, 700 in 61 s. */
    last = strrchr(s, '\n');
    *last = '\0';
    last = strrchr(s, '\n');
    assert_string_equal(last + 1, "s: 700it [01:01, 11.48it/s]");
    /* The line before: the burst moves the average (3 s time constant), but only part way. */
    *last = '\0';
    prev = strrchr(s, '\n');
    assert_true(strncmp(prev + 1, "s: 700it [01:01, ", 17) == 0);
    rate = prev + 18;
    r = strtod(rate, NULL);
    assert_true(r > 30.0 && r < 40.0);
    /* Before the burst, the steady rate exactly. */
    *prev = '\0';
    assert_string_equal(strrchr(s, '\n') + 1, "s: 600it [01:00, 10.00it/s]");
    free(s);
    assert_int_equal(fclose(f), 0);
}

static void test_file_setters(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile();
    pmap_progress *bar;
    char *s;

    (void)state;
    assert_non_null(f);
    bar = pmap__progress_new_with_clock(f, "dl", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_unit(bar, "B");
    pmap_progress_set_unit_scale(bar, 1);
    clk.t = 2 * SEC;
    pmap_progress_add(bar, 2500000);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "dl: 2.50MB [00:02, 1.25MB/s]\n");
    free(s);
    assert_int_equal(fclose(f), 0);

    /* A total learned late; a long unit kept to 31 bytes; NULL unit is "it". */
    f = tmpfile();
    assert_non_null(f);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(f, NULL, 0, fake_now, &clk);
    assert_non_null(bar);
    pmap__progress_set_utf8(bar, 0);
    pmap_progress_set_total(bar, 4);
    pmap_progress_set_unit(bar, "0123456789abcdefghijklmnopqrstuvwxyz");
    clk.t = 1 * SEC;
    pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, " 25%|##        | 1/4 [00:01<00:03, 1.00"
                           "0123456789abcdefghijklmnopqrstu/s]\n");
    free(s);
    assert_int_equal(fclose(f), 0);

    f = tmpfile();
    assert_non_null(f);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(f, NULL, 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_unit(bar, "B");
    pmap_progress_set_unit(bar, NULL);
    clk.t = 1 * SEC;
    pmap_progress_add(bar, 3);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "3it [00:01, 3.00it/s]\n");
    free(s);
    assert_int_equal(fclose(f), 0);
}

static void test_file_description_postfix(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile();
    pmap_progress *bar;
    char *s;

    (void)state;
    assert_non_null(f);
    bar = pmap__progress_new_with_clock(f, "a", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_min_interval(bar, 1.0);
    errno = EDOM;
    assert_int_equal(pmap_progress_set_postfix(bar, "loss=%.2f", 0.5), 0);
    assert_int_equal(errno, EDOM);
    clk.t = SEC;
    pmap_progress_add(bar, 1);
    /* Both change while the bar runs; each line shows the values of its time. */
    assert_int_equal(pmap_progress_set_description(bar, "b"), 0);
    assert_int_equal(pmap_progress_set_postfix(bar, "loss=%.2f, acc=%d%%", 0.25, 90), 0);
    assert_int_equal(errno, EDOM);
    clk.t = 2 * SEC;
    pmap_progress_add(bar, 1);
    assert_int_equal(pmap_progress_set_description(bar, NULL), 0);
    assert_int_equal(pmap_progress_set_postfix(bar, NULL), 0);
    clk.t = 3 * SEC;
    pmap_progress_add(bar, 1);
    /* Control characters cannot break the line; "" removes as NULL does. */
    assert_int_equal(pmap_progress_set_description(bar, "c\nd"), 0);
    assert_int_equal(pmap_progress_set_postfix(bar, "%s", "x\ry"), 0);
    clk.t = 4 * SEC;
    pmap_progress_add(bar, 1);
    assert_int_equal(pmap_progress_set_description(bar, ""), 0);
    assert_int_equal(pmap_progress_set_postfix(bar, "%s", ""), 0);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "a: 1it [00:01, 1.00it/s, loss=0.50]\n"
                           "b: 2it [00:02, 1.00it/s, loss=0.25, acc=90%]\n"
                           "3it [00:03, 1.00it/s]\n"
                           "c d: 4it [00:04, 1.00it/s, x y]\n"
                           "4it [00:04, 1.00it/s]\n");
    free(s);
    assert_int_equal(fclose(f), 0);

    /* NULL bar: nothing to do, and success, so callers need no test. */
    assert_int_equal(pmap_progress_set_description(NULL, "x"), 0);
    assert_int_equal(pmap_progress_set_postfix(NULL, "%d", 1), 0);
}

/* A string of n copies of c (caller frees). */
static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);

    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_file_long_texts(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    char *desc = repeat('d', 5000), *post = repeat('p', 3000), *want, *s;
    FILE *f = tmpfile();
    pmap_progress *bar;
    int rc;

    (void)state;
    assert_non_null(f);
    /* Long texts, grown and shrunk and grown again while the bar lives, are shown whole. */
    bar = pmap__progress_new_with_clock(f, "short", 0, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap_progress_set_postfix(bar, "%s", post + 2000), 0);
    assert_int_equal(pmap_progress_set_description(bar, desc), 0);
    assert_int_equal(pmap_progress_set_postfix(bar, "p"), 0);
    assert_int_equal(pmap_progress_set_postfix(bar, "%s", post), 0);
    clk.t = SEC;
    pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    s = slurp(f);
    want = malloc(5000 + 3000 + 64);
    assert_non_null(want);
    rc = snprintf(want, 5000 + 3000 + 64, "%s: 1it [00:01, 1.00it/s, %s]\n", desc, post);
    assert_true(rc > 0);
    assert_string_equal(s, want);
    free(want);
    free(s);
    free(desc);
    free(post);
    assert_int_equal(fclose(f), 0);
}

static void test_file_saturates(void **state)
{
    char *s;

    (void)state;
    s = run_file(NULL, 0, 0, 3, UINT64_MAX / 2, SEC);
    assert_true(strncmp(s, "18446744073709551615it [00:03, ", 31) == 0);
    assert_true(ends_with(s, "it/s]\n"));
    free(s);
}

static void test_file_host_interleaving(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile();
    pmap_progress *bar;
    char *s;

    (void)state;
    assert_non_null(f);
    bar = pmap__progress_new_with_clock(f, "h", 0, fake_now, &clk);
    assert_non_null(bar);
    /* The host's own buffered output on the same FILE keeps its place. */
    fputs("host line\n", f);
    clk.t = SEC;
    pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    fputs("after\n", f);
    s = slurp(f);
    assert_string_equal(s, "host line\nh: 1it [00:01, 1.00it/s]\nafter\n");
    free(s);
    assert_int_equal(fclose(f), 0);
}

static void test_file_real_clock_subsecond(void **state)
{
    FILE *f = tmpfile();
    pmap_progress *bar;
    char *s;
    int i;

    (void)state;
    assert_non_null(f);
    bar = pmap_progress_new(f, "fast", 0);
    assert_non_null(bar);
    for (i = 0; i < 1000000; i++)
        pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    s = slurp(f);
    /* One line, the final one; a sub-second run writes nothing else. */
    assert_true(strncmp(s, "fast: 1000000it [00:00, ", 24) == 0);
    assert_int_equal(count_char(s, strlen(s), '\n'), 1);
    assert_true(ends_with(s, "it/s]\n"));
    assert_null(strchr(s, '\r'));
    free(s);
    assert_int_equal(fclose(f), 0);
}

/* ------------------------------------------------------------------------ */
/* The hot path reads the clock only now and then                           */
/* ------------------------------------------------------------------------ */

static void test_stride_adapts(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = fopen("/dev/null", "w");
    pmap_progress *bar;
    int i;

    (void)state;
    assert_non_null(f);

    /* A clock that moves 1 us per reading, however many calls: a tight loop. */
    clk.step = 1000;
    bar = pmap__progress_new_with_clock(f, NULL, 0, fake_now, &clk);
    assert_non_null(bar);
    for (i = 0; i < 1000000; i++)
        pmap_progress_add(bar, 1);
    assert_int_equal(pmap__progress_stride(bar), 1024);
    assert_true(clk.reads < 1000000 / 1024 + 20);

    /* Then calls 10 ms apart: noticed within 1024 calls, then one reading per call. */
    clk.step = 0;
    clk.reads = 0;
    for (i = 0; i < 1024; i++) {
        clk.t += 10 * MS;
        pmap_progress_add(bar, 1);
    }
    assert_int_equal(pmap__progress_stride(bar), 1);
    clk.reads = 0;
    for (i = 0; i < 20; i++) {
        clk.t += 10 * MS;
        pmap_progress_add(bar, 1);
    }
    assert_int_equal(clk.reads, 20);

    /* Calls 5 us apart: about 400 calls between readings (2 ms). */
    for (i = 0; i < 200000; i++) {
        clk.t += 5000;
        pmap_progress_add(bar, 1);
    }
    assert_in_range(pmap__progress_stride(bar), 300, 500);
    pmap_progress_free(bar);
    assert_int_equal(fclose(f), 0);
}

/* ------------------------------------------------------------------------ */
/* Pseudo-terminal                                                          */
/* ------------------------------------------------------------------------ */

#define SENTINEL "\x01<end-of-test>\x01"

struct pty {
    int master;
    int slave;
    FILE *out;
    pthread_t reader;
    char *buf;
    size_t len;
    size_t cap;
    int error; /* set by the reader: 1 timeout, 2 read error, 3 no memory */
};

/* Read the master side until the sentinel shows up, so the writer never blocks. */
static void *drain(void *arg)
{
    struct pty *p = arg;
    struct pollfd pfd;

    pfd.fd = p->master;
    pfd.events = POLLIN;
    for (;;) {
        ssize_t n;
        int rc;

        if (p->len >= strlen(SENTINEL) &&
            memcmp(p->buf + p->len - strlen(SENTINEL), SENTINEL, strlen(SENTINEL)) == 0)
            return NULL;
        rc = poll(&pfd, 1, 5000);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0) {
            p->error = 1;
            return NULL;
        }
        if (p->cap - p->len < 4096) {
            char *bigger = realloc(p->buf, p->cap * 2 + 4096);

            if (bigger == NULL) {
                p->error = 3;
                return NULL;
            }
            p->buf = bigger;
            p->cap = p->cap * 2 + 4096;
        }
        n = read(p->master, p->buf + p->len, p->cap - p->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            p->error = 2;
            return NULL;
        }
        p->len += (size_t)n;
        p->buf[p->len] = '\0';
    }
}

/*
 * A pseudo-terminal of 24 rows and `cols` columns from the POSIX calls alone
 * (openpty() is a BSD/glibc extension that needs libutil), with raw output:
 * '\n' must arrive as '\n', not "\r\n", so the bytes read are those written.
 */
static void pty_pair(int *master, int *slave, unsigned short cols)
{
    struct winsize ws;
    struct termios tio;
    const char *name;

    *master = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(*master >= 0);
    assert_int_equal(grantpt(*master), 0);
    assert_int_equal(unlockpt(*master), 0);
    name = ptsname(*master);
    assert_non_null(name);
    *slave = open(name, O_RDWR | O_NOCTTY);
    assert_true(*slave >= 0);
    memset(&ws, 0, sizeof ws);
    ws.ws_row = 24;
    ws.ws_col = cols;
    assert_int_equal(ioctl(*slave, TIOCSWINSZ, &ws), 0);
    assert_int_equal(tcgetattr(*slave, &tio), 0);
    tio.c_oflag &= ~(tcflag_t)OPOST;
    assert_int_equal(tcsetattr(*slave, TCSANOW, &tio), 0);
}

static void pty_open(struct pty *p, unsigned short cols)
{
    memset(p, 0, sizeof *p);
    pty_pair(&p->master, &p->slave, cols);
    p->out = fdopen(p->slave, "w");
    assert_non_null(p->out);
    assert_int_equal(pthread_create(&p->reader, NULL, drain, p), 0);
}

/* Stop the reader and close both sides; p->buf keeps what the bar wrote. */
static void pty_close(struct pty *p)
{
    const char *s = SENTINEL;
    size_t off = 0, len = strlen(SENTINEL);

    assert_int_equal(fflush(p->out), 0);
    while (off < len) {
        ssize_t n = write(p->slave, s + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        off += (size_t)n;
    }
    assert_int_equal(pthread_join(p->reader, NULL), 0);
    assert_int_equal(p->error, 0);
    assert_int_equal(fclose(p->out), 0);
    assert_int_equal(close(p->master), 0);
    p->len -= len;
    p->buf[p->len] = '\0';
}

struct frames {
    size_t returns;   /* '\r' */
    size_t newlines;  /* '\n' */
    size_t widest;    /* display columns of the widest run between them */
    const char *last; /* the last frame: after the last '\r' */
};

static struct frames scan(const char *s, size_t len)
{
    struct frames fr;
    size_t i, cols = 0;

    memset(&fr, 0, sizeof fr);
    fr.last = s;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '\r' || c == '\n') {
            fr.returns += c == '\r';
            fr.newlines += c == '\n';
            if (c == '\r')
                fr.last = s + i + 1;
            cols = 0;
            continue;
        }
        if ((c & 0xC0) != 0x80)
            cols++;
        if (cols > fr.widest)
            fr.widest = cols;
    }
    return fr;
}

static size_t line_columns(const char *s)
{
    const char *nl = strchr(s, '\n');

    return pmap__progress_columns(s, nl != NULL ? (size_t)(nl - s) : strlen(s));
}

static void test_tty_two_million(void **state)
{
    struct pty p;
    struct frames fr;
    pmap_progress *bar;
    int i;

    (void)state;
    setenv("LC_ALL", "C.UTF-8", 1);
    pty_open(&p, 100);
    bar = pmap_progress_new(p.out, "pty", 2000000);
    assert_non_null(bar);
    assert_int_equal(pmap__progress_is_tty(bar), 1);
    for (i = 0; i < 2000000; i++)
        pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    pty_close(&p);

    fr = scan(p.buf, p.len);
    assert_true(fr.returns >= 2); /* the first frame, redrawn in place */
    assert_true(fr.widest <= 100);
    assert_true(p.len < 100 * 1024);
    /* Exactly one newline, at the very end. */
    assert_int_equal(fr.newlines, 1);
    assert_int_equal(p.buf[p.len - 1], '\n');
    assert_true(strncmp(fr.last, "pty: 100%|" FULL, strlen("pty: 100%|" FULL)) == 0);
    assert_non_null(strstr(fr.last, "| 2000000/2000000 [00:"));
    assert_int_equal(line_columns(fr.last), 99);
    free(p.buf);
}

static void test_tty_throttled(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct pty p;
    struct frames fr;
    pmap_progress *bar;
    int i;

    (void)state;
    pty_open(&p, 100);
    bar = pmap__progress_new_with_clock(p.out, "thr", 2000000, fake_now, &clk);
    assert_non_null(bar);
    pmap__progress_set_utf8(bar, 1);
    /* 2 s of simulated time, one call per microsecond: ~10 redraws a second. */
    for (i = 0; i < 2000000; i++) {
        clk.t += 1000;
        pmap_progress_add(bar, 1);
    }
    pmap_progress_free(bar);
    pty_close(&p);

    fr = scan(p.buf, p.len);
    assert_in_range(fr.returns, 18, 26);
    assert_true(fr.widest <= 100);
    assert_int_equal(fr.newlines, 1);
    assert_int_equal(line_columns(fr.last), 99);
    assert_true(strncmp(fr.last, "thr: 100%|" FULL, strlen("thr: 100%|" FULL)) == 0);
    assert_true(ends_with(fr.last, FULL "| 2000000/2000000 [00:02<00:00, 1000000.00it/s]\n"));
    free(p.buf);
}

/* The n-th frame (0-based): the text after the n-th '\r', up to the next one. */
static size_t frame(const char *s, size_t len, size_t n, char *out, size_t size)
{
    size_t i, seen = 0, k = 0;

    for (i = 0; i < len; i++) {
        if (s[i] == '\r') {
            seen++;
            continue;
        }
        if (seen == n + 1 && k + 1 < size)
            out[k++] = s[i];
    }
    out[k] = '\0';
    return k;
}

static void test_tty_done_frame(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct pty p;
    char f[256];
    pmap_progress *bar;
    int i;

    (void)state;
    pty_open(&p, 100);
    bar = pmap__progress_new_with_clock(p.out, "d", 10, fake_now, &clk);
    assert_non_null(bar);
    pmap__progress_set_utf8(bar, 0);
    /* Ten calls within 10 ms: no periodic redraw is due, but 100% is drawn at once. */
    for (i = 0; i < 10; i++) {
        clk.t += MS;
        pmap_progress_add(bar, 1);
    }
    pmap_progress_free(bar);
    pty_close(&p);

    /* The first add's frame, the 100% frame, the final frame. */
    assert_int_equal(scan(p.buf, p.len).returns, 3);
    assert_int_equal(p.buf[0], '\r');
    frame(p.buf, p.len, 0, f, sizeof f);
    assert_true(starts_with(f, "d:  10%|#"));
    assert_true(ends_with(f, "| 1/10 [00:00<00:00, 1000.00it/s]"));
    assert_int_equal(pmap__progress_columns(f, strlen(f)), 99);
    /* Before the rate average has a sample, the rate so far: never "?it/s" at 100%. */
    frame(p.buf, p.len, 1, f, sizeof f);
    assert_true(strncmp(f, "d: 100%|####", 12) == 0);
    assert_true(ends_with(f, "#| 10/10 [00:00<00:00, 1000.00it/s]"));
    assert_int_equal(pmap__progress_columns(f, strlen(f)), 99);
    frame(p.buf, p.len, 2, f, sizeof f);
    assert_true(ends_with(f, "#| 10/10 [00:00<00:00, 1000.00it/s]\n"));
    free(p.buf);
}

static void test_tty_first_frame(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct pty p;
    struct frames fr;
    char f[256];
    pmap_progress *bar;
    size_t i;

    (void)state;
    setenv("LC_ALL", "C", 1);

    /* No add at all: pmap_progress_new() drew nothing, free() draws the one frame. */
    pty_open(&p, 80);
    bar = pmap__progress_new_with_clock(p.out, "f", 10, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_unit(bar, "file");
    clk.t = 3 * SEC;
    pmap_progress_free(bar);
    pty_close(&p);
    fr = scan(p.buf, p.len);
    assert_int_equal(fr.returns, 1);
    assert_int_equal(fr.newlines, 1);
    assert_true(starts_with(p.buf, "\rf:   0%|    "));
    assert_true(ends_with(p.buf, "| 0/10 [00:03<?, ?file/s]\n"));
    free(p.buf);

    /* A unit set right after creation is in every frame, the first one included. */
    pty_open(&p, 80);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(p.out, "f", 10, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_set_unit(bar, "file");
    for (i = 0; i < 10; i++) {
        clk.t += 300 * MS;
        pmap_progress_add(bar, 1);
    }
    pmap_progress_free(bar);
    pty_close(&p);
    fr = scan(p.buf, p.len);
    assert_int_equal(fr.returns, 11);
    for (i = 0; i < fr.returns; i++) {
        frame(p.buf, p.len, i, f, sizeof f);
        assert_non_null(strstr(f, "file/s]"));
    }
    /* add(bar, 0) is the way to show 0% at once. */
    free(p.buf);
    pty_open(&p, 80);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(p.out, NULL, 4, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_add(bar, 0);
    pmap_progress_free(bar);
    pty_close(&p);
    assert_int_equal(scan(p.buf, p.len).returns, 2);
    frame(p.buf, p.len, 0, f, sizeof f);
    assert_true(starts_with(f, "  0%|    "));
    assert_true(ends_with(f, "| 0/4 [00:00<?, ?it/s]"));
    free(p.buf);
}

/* The final frame's width for a terminal of `cols` columns (0: none reported). */
static size_t final_width(unsigned short cols)
{
    struct fake_clock clk = {0, 0, 0};
    struct pty p;
    struct frames fr;
    pmap_progress *bar;
    size_t w;

    pty_open(&p, cols);
    bar = pmap__progress_new_with_clock(p.out, "w", 10, fake_now, &clk);
    assert_non_null(bar);
    clk.t = SEC;
    pmap_progress_add(bar, 5);
    pmap_progress_free(bar);
    pty_close(&p);
    fr = scan(p.buf, p.len);
    assert_true(fr.widest <= (cols > 0 ? cols : 80));
    w = line_columns(fr.last);
    free(p.buf);
    return w;
}

static void test_tty_width_sources(void **state)
{
    (void)state;
    setenv("COLUMNS", "50", 1);
    assert_int_equal(final_width(40), 39); /* the terminal wins */
    assert_int_equal(final_width(0), 49);  /* then COLUMNS */
    setenv("COLUMNS", "junk", 1);
    assert_int_equal(final_width(0), 79); /* then 80 */
    setenv("COLUMNS", "50x", 1);
    assert_int_equal(final_width(0), 79);
    unsetenv("COLUMNS");
    assert_int_equal(final_width(0), 79);
    assert_int_equal(final_width(20), 19); /* narrower than the fields: cut */
}

static void test_tty_ascii_and_padding(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct pty p;
    const char *f2, *f3;
    size_t i, c2, c3;
    pmap_progress *bar;

    (void)state;
    setenv("LC_ALL", "C", 1);
    pty_open(&p, 100);
    bar = pmap__progress_new_with_clock(p.out, "pad", 0, fake_now, &clk);
    assert_non_null(bar);
    /* A long frame, then a shorter one: the rest of the long one is blanked. */
    pmap_progress_set_unit(bar, "longer-unit-name");
    clk.t += 200 * MS;
    pmap_progress_add(bar, 1);
    pmap_progress_set_unit(bar, "it");
    clk.t += 200 * MS;
    pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    pty_close(&p);

    for (i = 0; i < p.len; i++)
        assert_true((unsigned char)p.buf[i] < 0x80);
    assert_int_equal(scan(p.buf, p.len).returns, 3);
    f2 = p.buf;
    assert_int_equal(*f2, '\r');
    f3 = strchr(f2 + 1, '\r');
    assert_non_null(f3);
    c2 = (size_t)(f3 - f2 - 1);
    c3 = (size_t)(strchr(f3 + 1, '\r') - f3 - 1);
    assert_true(strncmp(f2 + 1, "pad: 1longer-unit-name [00:00, ", 31) == 0);
    assert_true(strncmp(f3 + 1, "pad: 2it [00:00, ", 17) == 0);
    assert_int_equal(c3, c2);
    assert_int_equal(f3[c3], ' ');
    free(p.buf);
}

static void test_tty_ascii_bar(void **state)
{
    struct pty p;
    pmap_progress *bar;

    (void)state;
    setenv("LC_ALL", "POSIX", 1);
    pty_open(&p, 60);
    bar = pmap_progress_new(p.out, "a", 4);
    assert_non_null(bar);
    pmap_progress_add(bar, 2);
    pmap_progress_free(bar);
    pty_close(&p);
    assert_non_null(strstr(p.buf, "a:  50%|#"));
    assert_null(strstr(p.buf, FULL));
    free(p.buf);
}

/* ------------------------------------------------------------------------ */
/* Text above the bar                                                       */
/* ------------------------------------------------------------------------ */

/*
 * What a terminal shows after `s`: '\r' returns to column 0, '\n' starts a
 * new line, any other byte (ASCII only) overwrites the cell under the cursor.
 * Rows are kept without trailing blanks; `rows` counts up to the cursor's.
 */
#define SCREEN_ROWS 64
#define SCREEN_COLS 256

struct screen {
    char row[SCREEN_ROWS][SCREEN_COLS + 1];
    size_t rows;
};

static void replay(struct screen *sc, const char *s, size_t len, size_t width)
{
    size_t r = 0, c = 0, i, n;

    assert_true(width <= SCREEN_COLS);
    memset(sc, 0, sizeof *sc);
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch == '\r') {
            c = 0;
        } else if (ch == '\n') {
            c = 0;
            r++;
            assert_true(r < SCREEN_ROWS);
        } else {
            assert_true(ch >= 0x20 && ch < 0x7f);
            /* The bar never reaches the last column: a terminal would wrap. */
            assert_true(c < width);
            while (strlen(sc->row[r]) < c)
                sc->row[r][strlen(sc->row[r])] = ' ';
            sc->row[r][c++] = (char)ch;
        }
    }
    sc->rows = r + 1;
    for (r = 0; r < sc->rows; r++) {
        n = strlen(sc->row[r]);
        while (n > 0 && sc->row[r][n - 1] == ' ')
            sc->row[r][--n] = '\0';
    }
}

/* A second FILE on the pseudo-terminal, as stdout beside stderr; fully buffered. */
static FILE *pty_second(struct pty *p)
{
    int fd = dup(p->slave);
    FILE *f;

    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(setvbuf(f, NULL, _IOFBF, 1 << 16), 0);
    return f;
}

static void test_write_null_bar(void **state)
{
    FILE *f = tmpfile();
    char *big = repeat('b', 3000), *s, *want;
    int rc;

    (void)state;
    assert_non_null(f);
    /* Without a bar the text is still written, as whole lines. */
    errno = EDOM;
    assert_int_equal(pmap_progress_printf(NULL, f, "%d\n", 25), 3);
    assert_int_equal(pmap_progress_printf(NULL, f, "%d", 37), 3);
    assert_int_equal(pmap_progress_printf(NULL, f, "%s", ""), 1);
    assert_int_equal(pmap_progress_write(NULL, f, "a\nb"), 4);
    assert_int_equal(pmap_progress_write(NULL, f, "c\n\n"), 3);
    /* Longer than any stack buffer. */
    assert_int_equal(pmap_progress_printf(NULL, f, "<%s>", big), 3003);
    assert_int_equal(errno, EDOM);
    s = slurp(f);
    want = malloc(4000);
    assert_non_null(want);
    rc = snprintf(want, 4000, "25\n37\n\na\nb\nc\n\n<%s>\n", big);
    assert_true(rc > 0);
    assert_string_equal(s, want);
    free(want);
    free(s);
    free(big);

    /* Misuse. */
    errno = 0;
    assert_int_equal(pmap_progress_write(NULL, NULL, "x"), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(pmap_progress_write(NULL, f, NULL), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(pmap_progress_printf(NULL, NULL, "x"), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(fclose(f), 0);
}

/* A wrapper of the caller's own, as a logging function would be. */
static int log_line(pmap_progress *bar, FILE *out, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = pmap_progress_vprintf(bar, out, fmt, ap);
    va_end(ap);
    return rc;
}

static void test_write_line_mode(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = tmpfile(), *res = tmpfile();
    struct stat st;
    pmap_progress *bar;
    char *s;

    (void)state;
    assert_non_null(f);
    assert_non_null(res);
    /* The bar's own FILE: text and bar lines in the order they were made. */
    bar = pmap__progress_new_with_clock(f, "w", 0, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap_progress_printf(bar, f, "first %s", "line"), 11);
    clk.t = 11 * SEC;
    pmap_progress_add(bar, 11);
    assert_int_equal(log_line(bar, f, "second %d\n", 2), 9);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "first line\n"
                           "w: 11it [00:11, 1.00it/s]\n"
                           "second 2\n"
                           "w: 11it [00:11, 1.00it/s]\n");
    free(s);

    /* Another file: written as fprintf() would, buffered, never flushed per line. */
    assert_int_equal(setvbuf(res, NULL, _IOFBF, 1 << 16), 0);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(f, "w", 0, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap_progress_printf(bar, res, "%d", 1), 2);
    assert_int_equal(fstat(fileno(res), &st), 0);
    assert_int_equal(st.st_size, 0);
    pmap_progress_free(bar);
    s = slurp(res);
    assert_string_equal(s, "1\n");
    free(s);
    assert_int_equal(fclose(res), 0);
    assert_int_equal(fclose(f), 0);
}

/* Everything left in the pipe once every writer is closed. */
static void read_pipe(int fd, char *buf, size_t size)
{
    size_t len = 0;

    for (;;) {
        ssize_t n = read(fd, buf + len, size - 1 - len);

        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n >= 0);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
}

static void test_write_same_file(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    int fds[2];
    FILE *err, *out, *tmp;
    pmap_progress *bar;
    char buf[512], *s;

    (void)state;
    /* Two FILEs on one pipe, as `prog 2>&1 | tee log`: results fully buffered. */
    assert_int_equal(pipe(fds), 0);
    err = fdopen(fds[1], "w");
    assert_non_null(err);
    out = fdopen(dup(fds[1]), "w");
    assert_non_null(out);
    assert_int_equal(setvbuf(out, NULL, _IOFBF, 1 << 16), 0);
    bar = pmap__progress_new_with_clock(err, "s", 0, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap_progress_printf(bar, out, "one"), 4);
    clk.t = 11 * SEC;
    pmap_progress_add(bar, 11);
    assert_int_equal(pmap_progress_printf(bar, out, "two\n"), 4);
    pmap_progress_free(bar);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(fclose(err), 0);
    read_pipe(fds[0], buf, sizeof buf);
    assert_int_equal(close(fds[0]), 0);
    /* Each text reached the pipe before the next bar line: whole lines, in order. */
    assert_string_equal(buf, "one\n"
                             "s: 11it [00:11, 1.00it/s]\n"
                             "two\n"
                             "s: 11it [00:11, 1.00it/s]\n");

    /* A stream redirected onto the bar's file is seen as such after the next frame. */
    assert_int_equal(pipe(fds), 0);
    err = fdopen(fds[1], "w");
    assert_non_null(err);
    tmp = tmpfile();
    assert_non_null(tmp);
    out = fdopen(dup(fileno(tmp)), "w");
    assert_non_null(out);
    assert_int_equal(setvbuf(out, NULL, _IOFBF, 1 << 16), 0);
    clk.t = 0;
    bar = pmap__progress_new_with_clock(err, "r", 0, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap_progress_printf(bar, out, "a"), 2);
    assert_int_equal(fflush(out), 0);
    assert_true(dup2(fds[1], fileno(out)) >= 0);
    clk.t = 11 * SEC;
    pmap_progress_add(bar, 11);
    assert_int_equal(pmap_progress_printf(bar, out, "b"), 2);
    pmap_progress_free(bar);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(fclose(err), 0);
    read_pipe(fds[0], buf, sizeof buf);
    assert_int_equal(close(fds[0]), 0);
    assert_string_equal(buf, "r: 11it [00:11, 1.00it/s]\n"
                             "b\n"
                             "r: 11it [00:11, 1.00it/s]\n");
    s = slurp(tmp);
    assert_string_equal(s, "a\n");
    free(s);
    assert_int_equal(fclose(tmp), 0);
}

static void test_write_tty(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct screen sc;
    struct pty p;
    char *erase;
    FILE *out;
    pmap_progress *bar;
    char frame1[128];
    const char *r1;

    (void)state;
    setenv("LC_ALL", "C", 1);
    pty_open(&p, 80);
    out = pty_second(&p);
    bar = pmap__progress_new_with_clock(p.out, NULL, 2, fake_now, &clk);
    assert_non_null(bar);
    /* Before the first frame: just the text, and no frame drawn for it. */
    assert_int_equal(pmap_progress_printf(bar, out, "before"), 7);
    clk.t = SEC;
    pmap_progress_add(bar, 1);
    /* Fully buffered, yet on the terminal before the bar comes back. */
    errno = EDOM;
    assert_int_equal(pmap_progress_printf(bar, out, "r%d\n", 1), 3);
    assert_int_equal(errno, EDOM);
    /* The bar's own stream works the same way. */
    assert_int_equal(pmap_progress_write(bar, p.out, "r2"), 3);
    pmap_progress_free(bar);
    assert_int_equal(fclose(out), 0);
    pty_close(&p);

    /* The exact bytes: the frame, blanked, the text, the frame again. */
    assert_true(starts_with(p.buf, "before\n\r 50%|"));
    /* 79 columns in an 80-column terminal, after the '\r'. */
    assert_ptr_equal(strchr(p.buf + 8, '\r'), p.buf + 87);
    memcpy(frame1, p.buf + 7, 80);
    r1 = strstr(p.buf, "r1\n");
    assert_non_null(r1);
    assert_ptr_equal(r1, p.buf + 87 + 81);
    erase = repeat(' ', 81);
    erase[0] = '\r';
    erase[80] = '\r';
    assert_memory_equal(r1 - 81, erase, 81);
    assert_memory_equal(r1 - 81 - 80, frame1, 80);
    assert_memory_equal(r1 + 3, frame1, 80);
    assert_true(starts_with(r1 + 3 + 80, erase));
    free(erase);

    /* What the terminal shows: every text on its own line, the bar last. */
    replay(&sc, p.buf, p.len, 80);
    assert_int_equal(sc.rows, 5);
    assert_string_equal(sc.row[0], "before");
    assert_string_equal(sc.row[1], "r1");
    assert_string_equal(sc.row[2], "r2");
    assert_true(starts_with(sc.row[3], " 50%|####"));
    assert_true(ends_with(sc.row[3], "| 1/2 [00:01<00:01, 1.00it/s]"));
    assert_int_equal(strlen(sc.row[3]), 79);
    assert_string_equal(sc.row[4], "");
    free(p.buf);
}

static void test_write_tty_other_file(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct pty p;
    struct stat st;
    FILE *res = tmpfile();
    pmap_progress *bar;
    char *s;

    (void)state;
    assert_non_null(res);
    assert_int_equal(setvbuf(res, NULL, _IOFBF, 1 << 16), 0);
    setenv("LC_ALL", "C", 1);
    pty_open(&p, 80);
    bar = pmap__progress_new_with_clock(p.out, "t", 0, fake_now, &clk);
    assert_non_null(bar);
    clk.t = SEC;
    pmap_progress_add(bar, 1);
    /* Results into a file while the bar is on the terminal: the bar is left alone. */
    assert_int_equal(pmap_progress_printf(bar, res, "%d", 42), 3);
    assert_int_equal(fstat(fileno(res), &st), 0);
    assert_int_equal(st.st_size, 0);
    pmap_progress_free(bar);
    pty_close(&p);
    assert_int_equal(scan(p.buf, p.len).returns, 2);
    s = slurp(res);
    assert_string_equal(s, "42\n");
    free(s);
    free(p.buf);
    assert_int_equal(fclose(res), 0);
}

static void test_write_tty_postfix(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct screen sc;
    struct pty p;
    char f[256];
    pmap_progress *bar;

    (void)state;
    setenv("LC_ALL", "C", 1);
    pty_open(&p, 100);
    bar = pmap__progress_new_with_clock(p.out, "train", 100, fake_now, &clk);
    assert_non_null(bar);
    assert_int_equal(pmap_progress_set_postfix(bar, "loss=%.2f", 1.0), 0);
    clk.t = SEC;
    pmap_progress_add(bar, 42);
    /* A setter draws nothing; the next frame has the new values, padded over the old. */
    assert_int_equal(pmap_progress_set_postfix(bar, "l=%d", 3), 0);
    assert_int_equal(pmap_progress_set_description(bar, "t"), 0);
    clk.t = 2 * SEC;
    pmap_progress_add(bar, 0);
    pmap_progress_free(bar);
    pty_close(&p);
    assert_int_equal(scan(p.buf, p.len).returns, 3);
    frame(p.buf, p.len, 0, f, sizeof f);
    assert_true(starts_with(f, "train:  42%|####"));
    assert_true(ends_with(f, "| 42/100 [00:01<00:01, 42.00it/s, loss=1.00]"));
    frame(p.buf, p.len, 1, f, sizeof f);
    assert_true(starts_with(f, "t:  42%|####"));
    assert_non_null(strstr(f, "| 42/100 [00:02<"));
    assert_true(ends_with(f, "it/s, l=3]"));
    assert_int_equal(strlen(f), 99);
    replay(&sc, p.buf, p.len, 100);
    assert_int_equal(sc.rows, 2);
    assert_int_equal(strlen(sc.row[0]), 99);
    free(p.buf);
}

/* ------------------------------------------------------------------------ */
/* NULL safety, errno                                                       */
/* ------------------------------------------------------------------------ */

static void test_null_safety(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    FILE *f = fopen("/dev/null", "w");

    (void)state;
    assert_non_null(f);
    errno = 0;
    assert_null(pmap_progress_new(NULL, "x", 10));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap__progress_new_with_clock(f, "x", 10, NULL, &clk));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(pmap__progress_new_with_clock(NULL, "x", 10, fake_now, &clk));
    assert_int_equal(errno, EINVAL);

    pmap_progress_add(NULL, 1);
    pmap_progress_free(NULL);
    pmap_progress_set_total(NULL, 5);
    pmap_progress_set_unit(NULL, "B");
    pmap_progress_set_unit_scale(NULL, 1);
    pmap_progress_set_min_interval(NULL, 1.0);
    pmap__progress_set_utf8(NULL, 1);
    assert_int_equal(pmap__progress_failed(NULL), 0);
    assert_int_equal(pmap__progress_is_tty(NULL), 0);
    assert_int_equal(pmap__progress_stride(NULL), 0);
    assert_int_equal(fclose(f), 0);
}

static void test_errno_preserved(void **state)
{
    FILE *f = tmpfile();
    pmap_progress *bar;
    int i;

    (void)state;
    assert_non_null(f);
    errno = EDOM;
    bar = pmap_progress_new(f, "e", 100);
    assert_non_null(bar);
    assert_int_equal(errno, EDOM);
    for (i = 0; i < 100000; i++)
        pmap_progress_add(bar, 1);
    assert_int_equal(errno, EDOM);
    pmap_progress_free(bar);
    assert_int_equal(errno, EDOM);
    /* The signal mask is as it was, after writes that succeeded. */
    assert_int_equal(sigpipe_blocked(), 0);
    assert_int_equal(fclose(f), 0);
}

/* ------------------------------------------------------------------------ */
/* A pipe whose reader has gone                                             */
/* ------------------------------------------------------------------------ */

static int sigpipe_pending(void)
{
    sigset_t set;

    assert_int_equal(sigpending(&set), 0);
    return sigismember(&set, SIGPIPE) == 1;
}

/* A write end whose read end is already closed. */
static FILE *broken_pipe(void)
{
    int fds[2];
    FILE *f;

    assert_int_equal(pipe(fds), 0);
    assert_int_equal(close(fds[0]), 0);
    f = fdopen(fds[1], "w");
    assert_non_null(f);
    return f;
}

static void set_sigpipe(void (*handler)(int), struct sigaction *old)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &sa, old), 0);
}

static void test_pipe_reader_gone(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct sigaction old;
    pmap_progress *bar;
    int i, good[2];
    FILE *f;
    char c;

    (void)state;
    /* A hang would be killed by the alarm and fail the test. */
    alarm(10);
    set_sigpipe(SIG_DFL, &old);

    /* A periodic line fails mid-run: the bar disables itself and keeps quiet. */
    f = broken_pipe();
    bar = pmap__progress_new_with_clock(f, "p", 100, fake_now, &clk);
    assert_non_null(bar);
    clk.t = 11 * SEC;
    errno = EDOM;
    pmap_progress_add(bar, 1);
    assert_int_equal(errno, EDOM);
    assert_int_equal(pmap__progress_failed(bar), 1);
    /* Swap a working pipe in under the FILE: a disabled bar writes nothing to it. */
    assert_int_equal(pipe(good), 0);
    assert_int_equal(fcntl(good[0], F_SETFL, O_NONBLOCK), 0);
    assert_true(dup2(good[1], fileno(f)) >= 0);
    for (i = 0; i < 100; i++) {
        clk.t += 11 * SEC;
        pmap_progress_add(bar, 1);
    }
    pmap_progress_free(bar);
    assert_int_equal(read(good[0], &c, 1), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(close(good[0]), 0);
    assert_int_equal(close(good[1]), 0);
    assert_int_equal(sigpipe_pending(), 0);
    assert_int_equal(sigpipe_blocked(), 0);
    /* The error was the bar's: the FILE's indicator is as the host left it. */
    assert_int_equal(ferror(f), 0);
    assert_int_equal(fclose(f), 0);

    /* The final line fails, with the real clock and a buffered FILE. */
    f = broken_pipe();
    bar = pmap_progress_new(f, "q", 0);
    assert_non_null(bar);
    for (i = 0; i < 1000; i++)
        pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    assert_int_equal(sigpipe_pending(), 0);
    assert_int_equal(fclose(f), 0);

    /* SIGPIPE ignored: plain EPIPE, same outcome. */
    set_sigpipe(SIG_IGN, NULL);
    f = broken_pipe();
    bar = pmap__progress_new_with_clock(f, "r", 0, fake_now, &clk);
    assert_non_null(bar);
    clk.t += 11 * SEC;
    pmap_progress_add(bar, 1);
    assert_int_equal(pmap__progress_failed(bar), 1);
    pmap_progress_free(bar);
    assert_int_equal(fclose(f), 0);

    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
    alarm(0);
}

static void test_pipe_host_mask(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct sigaction old;
    sigset_t pipe_set, saved, now;
    struct timespec zero = {0, 0};
    pmap_progress *bar;
    FILE *f;

    (void)state;
    alarm(10);
    set_sigpipe(SIG_DFL, &old);
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &pipe_set, &saved), 0);

    /* The host blocks SIGPIPE: the bar's own SIGPIPE is consumed, the mask kept. */
    f = broken_pipe();
    bar = pmap__progress_new_with_clock(f, "b", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_free(bar);
    assert_int_equal(sigpipe_pending(), 0);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, NULL, &now), 0);
    assert_int_equal(sigismember(&now, SIGPIPE), 1);
    assert_int_equal(fclose(f), 0);

    /* A SIGPIPE the host already had pending is not the bar's to take. */
    assert_int_equal(raise(SIGPIPE), 0);
    assert_int_equal(sigpipe_pending(), 1);
    f = broken_pipe();
    bar = pmap__progress_new_with_clock(f, "c", 0, fake_now, &clk);
    assert_non_null(bar);
    pmap_progress_free(bar);
    assert_int_equal(sigpipe_pending(), 1);
    assert_int_equal(sigtimedwait(&pipe_set, NULL, &zero), SIGPIPE);
    assert_int_equal(sigpipe_pending(), 0);
    assert_int_equal(fclose(f), 0);

    assert_int_equal(pthread_sigmask(SIG_SETMASK, &saved, NULL), 0);
    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
    alarm(0);
}

static void test_write_errors(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct sigaction old;
    FILE *f = tmpfile(), *broken;
    pmap_progress *bar;
    char *s;

    (void)state;
    assert_non_null(f);
    alarm(10);
    set_sigpipe(SIG_IGN, &old);
    broken = broken_pipe();
    assert_int_equal(setvbuf(broken, NULL, _IONBF, 0), 0);
    bar = pmap__progress_new_with_clock(f, "e", 0, fake_now, &clk);
    assert_non_null(bar);
    /* The host's stream fails as with fprintf(); the bar, on its own stream, goes on. */
    errno = 0;
    assert_int_equal(pmap_progress_printf(bar, broken, "%d", 1), -1);
    assert_int_equal(errno, EPIPE);
    assert_true(ferror(broken) != 0);
    assert_int_equal(pmap__progress_failed(bar), 0);
    clk.t = SEC;
    pmap_progress_add(bar, 1);
    pmap_progress_free(bar);
    s = slurp(f);
    assert_string_equal(s, "e: 1it [00:01, 1.00it/s]\n");
    free(s);
    assert_int_equal(fclose(broken), 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
    alarm(0);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

struct slow_reader {
    int fd;
    char buf[1 << 17];
    size_t len;
};

/* Wait 30 ms, then read to EOF: meanwhile the writer is blocked on a full pipe. */
static void *slow_read(void *arg)
{
    struct slow_reader *r = arg;
    struct timespec pause = {0, 30 * 1000 * 1000};

    while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
        ;
    for (;;) {
        ssize_t n = read(r->fd, r->buf + r->len, sizeof r->buf - 1 - r->len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    r->buf[r->len] = '\0';
    return NULL;
}

static void test_write_eintr(void **state)
{
    struct fake_clock clk = {0, 0, 0};
    struct slow_reader *r = calloc(1, sizeof *r);
    struct sigaction sa, old;
    struct itimerval every_ms, off;
    struct timespec zero = {0, 0};
    sigset_t alrm, saved;
    pthread_t reader;
    pmap_progress *bar;
    char chunk[4096];
    int fds[2], flags;
    FILE *f;

    (void)state;
    assert_non_null(r);
    /* A full pipe, so the bar's write blocks until the reader wakes up. */
    assert_int_equal(pipe(fds), 0);
    flags = fcntl(fds[1], F_GETFL);
    assert_int_equal(fcntl(fds[1], F_SETFL, flags | O_NONBLOCK), 0);
    memset(chunk, 'x', sizeof chunk);
    while (write(fds[1], chunk, sizeof chunk) > 0)
        ;
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(fcntl(fds[1], F_SETFL, flags), 0);
    f = fdopen(fds[1], "w");
    assert_non_null(f);
    assert_int_equal(setvbuf(f, NULL, _IONBF, 0), 0);

    /* A host timer without SA_RESTART, aimed at this thread only. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &alrm, &saved), 0);
    r->fd = fds[0];
    assert_int_equal(pthread_create(&reader, NULL, slow_read, r), 0);
    assert_int_equal(pthread_sigmask(SIG_SETMASK, &saved, NULL), 0);
    memset(&every_ms, 0, sizeof every_ms);
    every_ms.it_interval.tv_usec = 1000;
    every_ms.it_value.tv_usec = 1000;
    alarms = 0;
    assert_int_equal(setitimer(ITIMER_REAL, &every_ms, NULL), 0);

    bar = pmap__progress_new_with_clock(f, "eintr", 0, fake_now, &clk);
    assert_non_null(bar);
    clk.t = SEC;
    pmap_progress_add(bar, 7);
    pmap_progress_free(bar);

    /* Disarm, and take a SIGALRM still in flight before the default action returns. */
    assert_int_equal(pthread_sigmask(SIG_BLOCK, &alrm, &saved), 0);
    memset(&off, 0, sizeof off);
    assert_int_equal(setitimer(ITIMER_REAL, &off, NULL), 0);
    while (sigtimedwait(&alrm, NULL, &zero) == SIGALRM)
        ;
    assert_int_equal(sigaction(SIGALRM, &old, NULL), 0);
    assert_int_equal(pthread_sigmask(SIG_SETMASK, &saved, NULL), 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(pthread_join(reader, NULL), 0);
    assert_int_equal(close(fds[0]), 0);

    /* The write was interrupted, resumed, and the line arrived whole. */
    assert_true(alarms >= 2);
    assert_true(ends_with(r->buf, "xeintr: 7it [00:01, 7.00it/s]\n"));
    free(r);
}

/* ------------------------------------------------------------------------ */
/* The sum example on a terminal                                            */
/* ------------------------------------------------------------------------ */

static const char *example_sum; /* the built examples/sum, from CMake */

/* Start `path` with stdout on out_fd and stderr on err_fd. The child asserts nothing. */
static pid_t spawn(const char *path, int out_fd, int err_fd)
{
    pid_t pid;

    assert_int_equal(fflush(NULL), 0); /* nothing of ours written twice */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd, in = open("/dev/null", O_RDONLY);

        if (in < 0 || dup2(in, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
            _exit(126);
        for (fd = 3; fd < 1024; fd++)
            (void)close(fd);
        if (setenv("LC_ALL", "C", 1) != 0)
            _exit(126);
        execl(path, path, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void wait_success(pid_t pid)
{
    int status;
    pid_t rc;

    do {
        rc = waitpid(pid, &status, 0);
    } while (rc < 0 && errno == EINTR);
    assert_int_equal(rc, pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Read fd until EOF, or EIO (a pseudo-terminal's master once the last slave is closed). */
static char *read_all(int fd, size_t *len)
{
    struct pollfd pfd;
    size_t cap = 4096;
    char *buf = malloc(cap);

    assert_non_null(buf);
    *len = 0;
    pfd.fd = fd;
    pfd.events = POLLIN;
    for (;;) {
        ssize_t n;
        int rc = poll(&pfd, 1, 30000);

        if (rc < 0 && errno == EINTR)
            continue;
        assert_true(rc > 0);
        if (cap - *len < 1024) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        n = read(fd, buf + *len, cap - *len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && errno == EIO))
            break;
        assert_true(n > 0);
        *len += (size_t)n;
    }
    buf[*len] = '\0';
    return buf;
}

static void test_example_sum_pty(void **state)
{
    struct screen sc;
    char *ref, *tty, *line, *nl, done[64];
    size_t ref_len, tty_len, rows = 0;
    int fds[2], null, master, slave;
    pid_t pid;

    (void)state;
    assert_non_null(example_sum);

    /* The results alone: stdout into a pipe, the bar (line mode) to /dev/null. */
    assert_int_equal(pipe(fds), 0);
    null = open("/dev/null", O_WRONLY);
    assert_true(null >= 0);
    pid = spawn(example_sum, fds[1], null);
    assert_int_equal(close(fds[1]), 0);
    assert_int_equal(close(null), 0);
    ref = read_all(fds[0], &ref_len);
    assert_int_equal(close(fds[0]), 0);
    wait_success(pid);

    /* Then stdout and stderr both on one terminal, as in a shell. */
    pty_pair(&master, &slave, 80);
    pid = spawn(example_sum, slave, slave);
    assert_int_equal(close(slave), 0);
    tty = read_all(master, &tty_len);
    assert_int_equal(close(master), 0);
    wait_success(pid);

    /* On the screen: each result alone on its line, in order, then the bar. */
    replay(&sc, tty, tty_len, 80);
    for (line = ref; line < ref + ref_len; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(ref + ref_len - line));
        assert_non_null(nl);
        *nl = '\0';
        assert_true(rows < sc.rows);
        assert_string_equal(sc.row[rows], line);
        rows++;
    }
    assert_true(rows > 0);
    assert_int_equal(sc.rows, rows + 2);
    assert_true(starts_with(sc.row[rows], "100%|#"));
    assert_true(snprintf(done, sizeof done, "#| %zu/%zu [", rows, rows) > 0);
    assert_non_null(strstr(sc.row[rows], done));
    /* The bar's final '\n' is the last byte: nothing after it. */
    assert_string_equal(sc.row[rows + 1], "");
    assert_int_equal(tty[tty_len - 1], '\n');
    /*
     * Every frame ever drawn, not only the one left on the screen: none
     * showing the full count has an unknown rate (the extra frame drawn when
     * the count reaches the total knows it), and the last text written is a
     * bar frame, not a result.
     */
    tty[tty_len - 1] = '\0';
    line = tty;
    for (;;) {
        size_t seg = strcspn(line, "\r\n");
        char saved = line[seg];

        line[seg] = '\0';
        if (strstr(line, done + 2) != NULL)
            assert_null(strstr(line, "?it/s"));
        if (saved == '\0') {
            assert_true(starts_with(line, "100%|#"));
            assert_non_null(strstr(line, done));
            break;
        }
        line += seg + 1;
    }
    free(ref);
    free(tty);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_format_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_rate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_si, setup, teardown),
        cmocka_unit_test_setup_teardown(test_format_bar, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_known_total, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_unknown_total, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_width, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_small_buffer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_postfix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_columns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locale_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_known_total, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_unknown_total, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_line_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_min_interval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_smoothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_setters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_description_postfix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_long_texts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_saturates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_host_interleaving, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_real_clock_subsecond, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stride_adapts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_two_million, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_throttled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_done_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_first_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_width_sources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_ascii_and_padding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tty_ascii_bar, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_null_bar, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_line_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_same_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_tty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_tty_other_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_tty_postfix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_safety, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errno_preserved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipe_reader_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipe_host_mask, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_eintr, setup, teardown),
    };

    const struct CMUnitTest example[] = {
        cmocka_unit_test_setup_teardown(test_example_sum_pty, setup, teardown),
    };

    /* CMake registers the example's test only when examples are built. */
    if (argc == 3 && strcmp(argv[1], "--example-sum") == 0) {
        example_sum = argv[2];
        return cmocka_run_group_tests_name("example_sum", example, NULL, NULL);
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--example-sum PATH]\n", argv[0]);
        return 2;
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
