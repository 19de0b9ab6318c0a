/*
 * The progress unit: a counter on the hot path, a slow path that reads the
 * clock now and then and decides whether to draw, tqdm's layout rendered into
 * a buffer, and a write that can fail without touching the host.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE /* struct winsize and TIOCGWINSZ next to POSIX */
#endif

#include "progress_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <langinfo.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define PMAP__COLD __attribute__((cold, noinline))
#else
#define PMAP__COLD
#endif

#define NS_PER_S 1000000000.0

/*
 * Read the clock about every 2 ms, and at least once per STRIDE_MAX calls: a
 * loop that suddenly slows down is noticed within that many calls, and in a
 * tight loop a clock reading (~20 ns) per 1024 calls costs 0.02 ns a call.
 */
#define CHECK_NS UINT64_C(2000000)
#define STRIDE_MAX 1024u

/* Rate samples are at least 50 ms apart, averaged with a 3 s time constant. */
#define SAMPLE_NS UINT64_C(50000000)
#define TAU_NS 3e9

#define TTY_INTERVAL_NS UINT64_C(100000000)
#define LINE_INTERVAL_NS UINT64_C(10000000000)

/* Bar cells when there is no terminal width to fill. */
#define PLAIN_BAR_CELLS 10u

/* A remaining time beyond a million hours is no estimate: show "?". */
#define REMAINING_MAX_S 3.6e9
#define TIME_MAX_S 3.6e12

#define UNIT_SIZE 32u

/* EINTR in a row without a byte written before the bar gives up. */
#define WRITE_RETRIES 10000

/*
 * Bytes beyond the description and the postfix that one frame may need: '\r',
 * the rendered line (at most 4 bytes per column, plus the fixed fields),
 * padding over the previous frame, '\n' and the NUL.
 */
#define LINE_SLACK (6u * PMAP__PROGRESS_MAX_COLUMNS + 1024u)

/* How text written to another stream must be placed around the bar's output. */
enum share { SHARE_NONE, SHARE_FILE, SHARE_TERMINAL };

/* A string the caller may replace while the bar runs: grows, never shrinks. */
struct text {
    char *s; /* NUL-terminated; NULL until first set */
    size_t len;
    size_t cap;
};

struct pmap_progress {
    /* pmap_progress_add() touches only these two. */
    uint64_t count;
    uint32_t countdown; /* calls left before the next clock reading */

    uint32_t armed;  /* calls in the current window between readings */
    uint32_t stride; /* calls per window, adapted to the call rate */
    uint64_t total;
    FILE *out;
    int fd;
    int tty;
    int utf8;
    int unit_scale;
    int failed;
    int done_drawn;
    int visible; /* a frame stands on the terminal line, to be redrawn or erased */
    uint64_t interval_ns;
    uint64_t start_ns;
    uint64_t last_check_ns;
    uint64_t last_sample_ns;
    uint64_t last_draw_ns;
    uint64_t last_sample_count;
    double ema_n; /* decayed units counted */
    double ema_t; /* decayed seconds elapsed */
    size_t last_cols;
    pmap__progress_clock_fn now;
    void *now_ctx;
    struct text desc;
    struct text postfix;
    char *line;
    size_t line_size; /* LINE_SLACK beyond the capacities of desc and postfix */
    int have_id;      /* dev and ino identify the file behind fd */
    dev_t dev;
    ino_t ino;
    FILE *seen_out; /* the last other stream of pmap_progress_printf(); NULL: none */
    int seen_fd;    /* its descriptor then */
    enum share seen_share;
    char unit[UNIT_SIZE];
};

/* ------------------------------------------------------------------------ */
/* Bounded string building                                                  */
/* ------------------------------------------------------------------------ */

struct sink {
    char *buf;
    size_t size;
    size_t len;
    int full;
};

static void sink_init(struct sink *s, char *buf, size_t size)
{
    s->buf = buf;
    s->size = size;
    s->len = 0;
    s->full = size == 0;
    if (size > 0)
        buf[0] = '\0';
}

static void sink_put(struct sink *s, const char *p, size_t n)
{
    size_t room;

    if (s->full)
        return;
    room = s->size - 1 - s->len;
    if (n > room) {
        /* Keep whole characters only, and nothing after the cut. */
        n = room;
        while (n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80)
            n--;
        s->full = 1;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
}

static void sink_str(struct sink *s, const char *p)
{
    sink_put(s, p, strlen(p));
}

size_t pmap__progress_columns(const char *s, size_t len)
{
    size_t i, cols = 0;

    for (i = 0; i < len; i++)
        cols += ((unsigned char)s[i] & 0xC0) != 0x80;
    return cols;
}

/* Cut s (length len) after `max` columns; returns the new length. */
static size_t cut_columns(char *s, size_t len, size_t max)
{
    size_t i, cols = 0;

    for (i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (cols == max)
                break;
            cols++;
        }
    }
    s[i] = '\0';
    return i;
}

/* Replace control characters, which would break the line, by spaces. */
static void sanitize(char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c == 0x7f)
            *s = ' ';
    }
}

/*
 * Replace t's string with src[0 .. len), control characters blanked. The line
 * buffer grows with it, so a frame always fits. Returns 0, or -1 (out of
 * memory, or a length beyond any allocation) with bar and t unchanged; a
 * shorter string never allocates.
 */
static int text_set(struct pmap_progress *bar, struct text *t, const char *src, size_t len)
{
    const struct text *other = t == &bar->desc ? &bar->postfix : &bar->desc;

    if (len == 0 && t->s == NULL)
        return 0;
    if (len >= t->cap) {
        size_t cap = t->cap > 0 ? t->cap : 64;
        char *p;

        while (cap <= len) {
            if (cap > SIZE_MAX / 2)
                return -1;
            cap *= 2;
        }
        if (cap > SIZE_MAX - LINE_SLACK - other->cap)
            return -1;
        if (cap + other->cap + LINE_SLACK > bar->line_size) {
            p = realloc(bar->line, cap + other->cap + LINE_SLACK);
            if (p == NULL)
                return -1;
            bar->line = p;
            bar->line_size = cap + other->cap + LINE_SLACK;
        }
        p = realloc(t->s, cap);
        if (p == NULL)
            return -1;
        t->s = p;
        t->cap = cap;
    }
    if (len > 0)
        memcpy(t->s, src, len);
    t->s[len] = '\0';
    t->len = len;
    sanitize(t->s);
    return 0;
}

/*
 * Format into stack[0 .. size) when it fits, else into a new allocation (the
 * caller frees it when it is not `stack`). Returns the text with its length
 * in *len, or NULL with errno set (EOVERFLOW from vsnprintf, ENOMEM).
 */
static char *vformat(char *stack, size_t size, size_t *len, const char *fmt, va_list ap)
{
    va_list again;
    char *heap;
    int n;

    va_copy(again, ap);
    errno = 0;
    n = vsnprintf(stack, size, fmt, again);
    va_end(again);
    if (n < 0) {
        if (errno == 0)
            errno = EOVERFLOW;
        return NULL;
    }
    *len = (size_t)n;
    if ((size_t)n < size)
        return stack;
    heap = malloc((size_t)n + 1);
    if (heap == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (vsnprintf(heap, (size_t)n + 1, fmt, ap) != n) {
        free(heap);
        errno = EOVERFLOW;
        return NULL;
    }
    return heap;
}

/* ------------------------------------------------------------------------ */
/* Formatting                                                               */
/* ------------------------------------------------------------------------ */

size_t pmap__progress_format_time(char *buf, size_t size, double seconds)
{
    struct sink out;
    char tmp[48];
    uint64_t s, h;
    unsigned m, sec;
    int rc;

    sink_init(&out, buf, size);
    if (!(seconds >= 0)) {
        sink_str(&out, "?");
        return out.len;
    }
    if (seconds > TIME_MAX_S)
        seconds = TIME_MAX_S;
    s = (uint64_t)seconds;
    h = s / 3600;
    m = (unsigned)(s / 60 % 60);
    sec = (unsigned)(s % 60);
    if (h > 0)
        rc = snprintf(tmp, sizeof tmp, "%" PRIu64 ":%02u:%02u", h, m, sec);
    else
        rc = snprintf(tmp, sizeof tmp, "%02u:%02u", m, sec);
    if (rc > 0)
        sink_str(&out, tmp);
    return out.len;
}

size_t pmap__progress_format_si(char *buf, size_t size, double value)
{
    static const char *const prefix[] = {"", "k", "M", "G", "T", "P", "E", "Z"};
    struct sink out;
    char tmp[64];
    size_t i;
    int rc = -1;

    sink_init(&out, buf, size);
    if (!(value >= 0)) {
        sink_str(&out, "?");
        return out.len;
    }
    for (i = 0; i < sizeof prefix / sizeof prefix[0]; i++) {
        if (value < 999.5) {
            /* Three significant digits, as tqdm's format_sizeof. */
            if (value < 9.995)
                rc = snprintf(tmp, sizeof tmp, "%.2f%s", value, prefix[i]);
            else if (value < 99.95)
                rc = snprintf(tmp, sizeof tmp, "%.1f%s", value, prefix[i]);
            else
                rc = snprintf(tmp, sizeof tmp, "%.0f%s", value, prefix[i]);
            break;
        }
        value /= 1000.0;
    }
    if (i == sizeof prefix / sizeof prefix[0])
        rc = snprintf(tmp, sizeof tmp, "%.1fY", value > 1e9 ? 1e9 : value);
    if (rc > 0)
        sink_str(&out, tmp);
    return out.len;
}

size_t pmap__progress_format_rate(char *buf, size_t size, double rate, const char *unit,
                                  int unit_scale)
{
    struct sink out;
    char num[64];
    int rc;

    if (unit == NULL || unit[0] == '\0')
        unit = "it";
    sink_init(&out, buf, size);
    if (!(rate > 0) || !isfinite(rate) || 1.0 / rate > 1e12) {
        sink_str(&out, "?");
        sink_str(&out, unit);
        sink_str(&out, "/s");
        return out.len;
    }
    if (rate < 1.0) {
        rc = snprintf(num, sizeof num, "%.2f", 1.0 / rate);
        if (rc > 0)
            sink_str(&out, num);
        sink_str(&out, "s/");
        sink_str(&out, unit);
        return out.len;
    }
    if (unit_scale) {
        pmap__progress_format_si(num, sizeof num, rate);
    } else {
        /* A rate is at most 2^64 units per nanosecond: 30 digits, 64 bytes. */
        rc = snprintf(num, sizeof num, "%.2f", rate > 1e30 ? 1e30 : rate);
        if (rc < 0)
            num[0] = '\0';
    }
    sink_str(&out, num);
    sink_str(&out, unit);
    sink_str(&out, "/s");
    return out.len;
}

static void put_bar(struct sink *out, uint64_t count, uint64_t total, unsigned width, int utf8)
{
    /* U+2588 FULL BLOCK, and U+258F .. U+2589: one to seven eighths. */
    static const char full_block[] = "\xe2\x96\x88";
    static const char *const eighths[8] = {
        "",
        "\xe2\x96\x8f",
        "\xe2\x96\x8e",
        "\xe2\x96\x8d",
        "\xe2\x96\x8c",
        "\xe2\x96\x8b",
        "\xe2\x96\x8a",
        "\xe2\x96\x89",
    };
    const uint64_t steps = utf8 ? 8 : 1;
    const uint64_t all = (uint64_t)width * steps;
    uint64_t filled, cells, i;

    if (count >= total) {
        filled = all;
    } else {
        if (all == 0 || count <= UINT64_MAX / all)
            filled = count * all / total;
        else
            filled = (uint64_t)((double)count / (double)total * (double)all);
        /* Rounding must never make an unfinished bar look finished. */
        if (all > 0 && filled >= all)
            filled = all - 1;
    }
    cells = filled / steps;
    for (i = 0; i < cells && !out->full; i++)
        sink_str(out, utf8 ? full_block : "#");
    if (filled % steps != 0) {
        sink_str(out, eighths[filled % steps]);
        cells++;
    }
    for (; cells < width && !out->full; cells++)
        sink_put(out, " ", 1);
}

size_t pmap__progress_format_bar(char *buf, size_t size, uint64_t count, uint64_t total,
                                 unsigned width, int utf8)
{
    struct sink out;

    sink_init(&out, buf, size);
    put_bar(&out, count, total, width, utf8);
    return out.len;
}

static void format_count(char *buf, size_t size, uint64_t n, int unit_scale)
{
    if (unit_scale)
        pmap__progress_format_si(buf, size, (double)n);
    else if (snprintf(buf, size, "%" PRIu64, n) < 0)
        buf[0] = '\0';
}

static unsigned percent(uint64_t count, uint64_t total)
{
    uint64_t p;

    if (count >= total)
        return 100;
    if (count <= UINT64_MAX / 100)
        p = count * 100 / total;
    else
        p = (uint64_t)((double)count / (double)total * 100.0);
    return p > 99 ? 99 : (unsigned)p;
}

static void format_remaining(char *buf, size_t size, const struct pmap__progress_view *v)
{
    double left;

    if (v->count >= v->total) {
        pmap__progress_format_time(buf, size, 0);
        return;
    }
    if (!(v->rate > 0) || !isfinite(v->rate)) {
        pmap__progress_format_time(buf, size, -1);
        return;
    }
    left = (double)(v->total - v->count) / v->rate;
    pmap__progress_format_time(buf, size, left <= REMAINING_MAX_S ? left : -1);
}

/* ", postfix" before the closing bracket, as tqdm places it; nothing without one. */
static void put_postfix(struct sink *out, const char *postfix)
{
    if (postfix != NULL && postfix[0] != '\0') {
        sink_str(out, ", ");
        sink_str(out, postfix);
    }
    sink_str(out, "]");
}

size_t pmap__progress_render(char *buf, size_t size, const struct pmap__progress_view *v)
{
    struct sink out;
    char count[32], total[32], elapsed[32], remaining[32], rate[128], pct[8], right[256];
    const char *unit = v->unit != NULL && v->unit[0] != '\0' ? v->unit : "it";
    size_t desc_len = v->desc != NULL ? strlen(v->desc) : 0;
    size_t post_len = v->postfix != NULL ? strlen(v->postfix) : 0;
    size_t left_cols, right_cols, cells = PLAIN_BAR_CELLS;

    sink_init(&out, buf, size);
    if (desc_len > 0) {
        sink_put(&out, v->desc, desc_len);
        sink_str(&out, ": ");
    }
    format_count(count, sizeof count, v->count, v->unit_scale);
    pmap__progress_format_time(elapsed, sizeof elapsed, v->elapsed);
    pmap__progress_format_rate(rate, sizeof rate, v->rate, unit, v->unit_scale);

    if (v->total == 0) {
        sink_str(&out, count);
        sink_str(&out, unit);
        sink_str(&out, " [");
        sink_str(&out, elapsed);
        sink_str(&out, ", ");
        sink_str(&out, rate);
        put_postfix(&out, v->postfix);
    } else {
        format_count(total, sizeof total, v->total, v->unit_scale);
        format_remaining(remaining, sizeof remaining, v);
        /* Three columns, as tqdm's "{percentage:3.0f}%": the bar does not move as it fills. */
        if (snprintf(pct, sizeof pct, "%3u%%", percent(v->count, v->total)) < 0)
            pct[0] = '\0';
        if (snprintf(right, sizeof right, " %s/%s [%s<%s, %s", count, total, elapsed, remaining,
                     rate) < 0)
            right[0] = '\0';

        /* The bar takes whatever the terminal has left, or goes. */
        left_cols =
            (desc_len > 0 ? pmap__progress_columns(v->desc, desc_len) + 2 : 0) + strlen(pct);
        right_cols = pmap__progress_columns(right, strlen(right)) + 1;
        if (post_len > 0)
            right_cols += 2 + pmap__progress_columns(v->postfix, post_len);
        if (v->width > 0) {
            if (left_cols + 2 + right_cols < v->width)
                cells = v->width - left_cols - 2 - right_cols;
            else
                cells = 0;
        }
        sink_str(&out, pct);
        if (cells > 0 && !out.full) {
            sink_str(&out, "|");
            put_bar(&out, v->count, v->total, (unsigned)cells, v->utf8);
            sink_str(&out, "|");
        }
        sink_str(&out, right);
        put_postfix(&out, v->postfix);
    }
    if (v->width > 0 && out.len > 0)
        out.len = cut_columns(out.buf, out.len, v->width);
    return out.len;
}

/* ------------------------------------------------------------------------ */
/* Environment                                                              */
/* ------------------------------------------------------------------------ */

static int ascii_lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Whether s names UTF-8: "UTF-8" or "utf8", in any case, anywhere in it. */
static int names_utf8(const char *s)
{
    for (; *s != '\0'; s++) {
        if (ascii_lower(s[0]) == 'u' && ascii_lower(s[1]) == 't' && ascii_lower(s[2]) == 'f') {
            const char *t = s + 3;

            if (*t == '-')
                t++;
            if (*t == '8')
                return 1;
        }
    }
    return 0;
}

int pmap__progress_locale_utf8(void)
{
    static const char *const vars[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    const char *codeset = nl_langinfo(CODESET);
    size_t i;

    /*
     * The codeset speaks only once the host has called setlocale(); until
     * then it is "ANSI_X3.4-1968" whatever the user's locale, so fall back
     * to the variables, in POSIX's order of precedence.
     */
    if (codeset != NULL && names_utf8(codeset))
        return 1;
    for (i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *value = getenv(vars[i]);

        if (value != NULL && value[0] != '\0')
            return names_utf8(value);
    }
    return 0;
}

/* Columns of the terminal behind the bar: TIOCGWINSZ, COLUMNS, then 80. */
static unsigned terminal_columns(const struct pmap_progress *bar)
{
    unsigned long cols = 0;
    const char *env;

#ifdef TIOCGWINSZ
    struct winsize ws;
    int rc;

    do {
        rc = ioctl(bar->fd, TIOCGWINSZ, &ws);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0 && ws.ws_col > 0)
        cols = ws.ws_col;
#else
    (void)bar;
#endif
    if (cols == 0) {
        env = getenv("COLUMNS");
        if (env != NULL && env[0] >= '0' && env[0] <= '9') {
            char *end = NULL;

            errno = 0;
            cols = strtoul(env, &end, 10);
            if (errno != 0 || *end != '\0')
                cols = 0;
        }
    }
    if (cols == 0)
        cols = 80;
    if (cols > PMAP__PROGRESS_MAX_COLUMNS)
        cols = PMAP__PROGRESS_MAX_COLUMNS;
    return (unsigned)cols;
}

static uint64_t monotonic_ns(void *ctx)
{
    struct timespec ts;

    (void)ctx;
    /* A failure reads as "no time passed": the caller keeps time monotonic. */
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * fwrite() p[0 .. len) to f, then fflush() f if `flush`, retrying after
 * EINTR (a host timer without SA_RESTART) as long as bytes keep moving.
 * Returns 0, or the errno value of the failure (EIO when stdio set none).
 */
static int put(FILE *f, const char *p, size_t len, int flush)
{
    size_t off = 0;
    int tries = 0;

    while (off < len) {
        size_t n;

        errno = 0;
        n = fwrite(p + off, 1, len - off, f);
        off += n;
        if (off < len) {
            if (n > 0)
                tries = 0;
            if (errno == EINTR && ++tries < WRITE_RETRIES)
                continue;
            return errno != 0 ? errno : EIO;
        }
    }
    while (flush) {
        errno = 0;
        if (fflush(f) == 0)
            break;
        if (errno == EINTR && ++tries < WRITE_RETRIES)
            continue;
        return errno != 0 ? errno : EIO;
    }
    return 0;
}

/*
 * Hand p[0 .. len) to the bar's FILE as one write and flush it, with SIGPIPE
 * blocked in this thread. A SIGPIPE raised by this write is consumed before
 * the mask is restored; one the host already had pending stays pending.
 * Returns 0, or -1 when the bar should give up (a slow non-blocking reader
 * only loses this frame).
 */
static int emit(struct pmap_progress *bar, const char *p, size_t len)
{
    static const struct timespec zero = {0, 0};
    sigset_t pipe_set, old, pending;
    int was_pending = 1, had_err, err;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0)
        return -1; /* unprotected, a write could kill the host */
    if (sigpending(&pending) == 0)
        was_pending = sigismember(&pending, SIGPIPE) == 1;
    had_err = ferror(bar->out);

    err = put(bar->out, p, len, 1);

    if (err == EPIPE && !was_pending) {
        int rc;

        /* Zero timeout: returns at once, EAGAIN when SIGPIPE is ignored. */
        do {
            rc = sigtimedwait(&pipe_set, NULL, &zero);
        } while (rc < 0 && errno == EINTR);
    }
    /* The error was the bar's, not the host's: leave the indicator as found. */
    if (!had_err && ferror(bar->out) && !feof(bar->out))
        clearerr(bar->out);
    /* Cannot fail: `old` came from the call above. */
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (err == 0 || err == EAGAIN || err == EWOULDBLOCK)
        return 0;
    return -1;
}

static void draw(struct pmap_progress *bar, uint64_t now, int final)
{
    struct pmap__progress_view v;
    size_t len = 0, n, cols, pad_to;
    double elapsed = (double)(now - bar->start_ns) / NS_PER_S;

    v.desc = bar->desc.s;
    v.postfix = bar->postfix.s;
    v.unit = bar->unit;
    v.count = bar->count;
    v.total = bar->total;
    v.elapsed = elapsed;
    /*
     * Until the average has its first sample (50 ms), the rate over the run so
     * far is the best estimate there is: a frame drawn early, such as the one
     * at 100% of a quick run, then shows a rate, not "?".
     */
    if (!final && bar->ema_t > 0)
        v.rate = bar->ema_n / bar->ema_t;
    else
        v.rate = elapsed > 0 ? (double)bar->count / elapsed : 0;
    v.utf8 = bar->utf8;
    v.unit_scale = bar->unit_scale;
    v.width = 0;
    if (bar->tty) {
        /* Leave the last column free: no terminal wraps a frame then. */
        unsigned term = terminal_columns(bar);

        v.width = term > 1 ? term - 1 : 1;
        bar->line[len++] = '\r';
    }

    n = pmap__progress_render(bar->line + len,
                              bar->line_size - len - PMAP__PROGRESS_MAX_COLUMNS - 2, &v);
    cols = pmap__progress_columns(bar->line + len, n);
    len += n;
    if (bar->tty) {
        /* Blank what is left of a longer previous frame. */
        pad_to = bar->last_cols < v.width ? bar->last_cols : v.width;
        if (cols < pad_to) {
            memset(bar->line + len, ' ', pad_to - cols);
            len += pad_to - cols;
        }
        bar->last_cols = cols;
        bar->visible = !final;
        if (bar->total > 0 && bar->count >= bar->total)
            bar->done_drawn = 1;
    }
    if (final || !bar->tty)
        bar->line[len++] = '\n';

    if (emit(bar, bar->line, len) != 0)
        bar->failed = 1;
    bar->last_draw_ns = now;
}

/* ------------------------------------------------------------------------ */
/* The slow path                                                            */
/* ------------------------------------------------------------------------ */

static uint64_t read_clock(const struct pmap_progress *bar)
{
    uint64_t t = bar->now(bar->now_ctx);

    return t < bar->last_check_ns ? bar->last_check_ns : t;
}

/* Aim the next window at CHECK_NS: shrink at once, grow at most twofold. */
static void adapt(struct pmap_progress *bar, uint64_t now)
{
    uint64_t dt = now - bar->last_check_ns;
    uint64_t limit = (uint64_t)bar->stride * 2;
    uint64_t want;

    if (limit > STRIDE_MAX)
        limit = STRIDE_MAX;
    want = dt == 0 ? limit : (uint64_t)bar->armed * CHECK_NS / dt;
    if (want > limit)
        want = limit;
    if (want < 1)
        want = 1;
    bar->stride = (uint32_t)want;
    bar->last_check_ns = now;
}

/*
 * Feed the rate average: units and seconds each decay by exp(-dt/tau), so
 * the ratio is an exponential moving average of the rate that needs no bias
 * correction at the start and copes with irregular sampling. The decay is
 * 1/(1 + x + x^2/2 + x^3/6), close enough to exp(-x) without libm.
 */
static void sample(struct pmap_progress *bar, uint64_t now)
{
    uint64_t dt = now - bar->last_sample_ns;
    double x, decay;

    if (dt < SAMPLE_NS)
        return;
    x = (double)dt / TAU_NS;
    decay = 1.0 / (1.0 + x + x * x / 2.0 + x * x * x / 6.0);
    bar->ema_n = bar->ema_n * decay + (double)(bar->count - bar->last_sample_count);
    bar->ema_t = bar->ema_t * decay + (double)dt / NS_PER_S;
    bar->last_sample_ns = now;
    bar->last_sample_count = bar->count;
}

/* Count down to the next reading, and to the total, so 100% is seen at once. */
static void arm(struct pmap_progress *bar)
{
    uint32_t n = bar->stride;

    if (bar->count < bar->total && bar->total - bar->count < n)
        n = (uint32_t)(bar->total - bar->count);
    bar->armed = n;
    bar->countdown = n;
}

static PMAP__COLD void tick(struct pmap_progress *bar)
{
    int saved = errno, due;
    uint64_t now;

    if (bar->failed) {
        bar->armed = UINT32_MAX;
        bar->countdown = UINT32_MAX;
        return;
    }
    now = read_clock(bar);
    adapt(bar, now);
    sample(bar, now);
    due = now - bar->last_draw_ns >= bar->interval_ns;
    if (bar->tty) {
        /* The first add draws at once: the bar appears with the first unit. */
        due = due || !bar->visible;
        due = due || (bar->total > 0 && bar->count >= bar->total && !bar->done_drawn);
    }
    if (due) {
        draw(bar, now, 0);
        bar->seen_out = NULL; /* look again: the stream may have been redirected */
    }
    arm(bar);
    errno = saved;
}

/* ------------------------------------------------------------------------ */
/* Text above the bar                                                       */
/* ------------------------------------------------------------------------ */

/* Blank the frame standing on the terminal line and return to its start. */
static void erase(struct pmap_progress *bar)
{
    unsigned term = terminal_columns(bar);
    size_t len = 0, n = bar->last_cols;

    /* A terminal narrowed since then: more blanks would wrap to a new line. */
    if (term > 1 && n > term - 1)
        n = term - 1;
    bar->line[len++] = '\r';
    memset(bar->line + len, ' ', n);
    len += n;
    bar->line[len++] = '\r';
    if (emit(bar, bar->line, len) != 0)
        bar->failed = 1;
    bar->visible = 0;
    bar->last_cols = 0;
}

static enum share sharing(struct pmap_progress *bar, FILE *out)
{
    enum share mode = SHARE_NONE;
    struct stat st;
    int fd;

    if (bar == NULL || bar->failed)
        return SHARE_NONE;
    /* One FILE keeps its own order; two FILEs on one file (2>&1) do not. */
    if (out == bar->out)
        return bar->tty ? SHARE_TERMINAL : SHARE_NONE;
    fd = fileno(out);
    if (fd < 0)
        return SHARE_NONE;
    /*
     * isatty() or fstat() is a system call, the cost of a whole line of
     * buffered output many times over: the answer for this stream holds until
     * the next periodic frame, which asks again.
     */
    if (out == bar->seen_out && fd == bar->seen_fd)
        return bar->seen_share;
    if (bar->tty) {
        /*
         * Any terminal counts as the bar's (as tqdm treats stdout and stderr):
         * a terminal reached by two names (/dev/tty, /dev/pts/N) has two
         * inodes, and one wrongly taken as shared costs one frame.
         */
        if (isatty(fd) == 1)
            mode = SHARE_TERMINAL;
    } else if (bar->have_id && fstat(fd, &st) == 0 && st.st_dev == bar->dev &&
               st.st_ino == bar->ino) {
        mode = SHARE_FILE;
    }
    bar->seen_out = out;
    bar->seen_fd = fd;
    bar->seen_share = mode;
    return mode;
}

/*
 * Write text[0 .. len) to out as whole lines (a '\n' added when it does not
 * end in one), above the bar when they share a terminal. Returns the bytes
 * written, or -1 with errno set.
 */
static int write_text(struct pmap_progress *bar, FILE *out, const char *text, size_t len)
{
    enum share mode = sharing(bar, out);
    int shown = mode == SHARE_TERMINAL && bar->visible;
    int add_nl = len == 0 || text[len - 1] != '\n';
    int had_err, err;

    if (len > (size_t)INT_MAX - 1) {
        errno = EOVERFLOW;
        return -1;
    }
    /* Each step is flushed before the next begins: the terminal gets them in order. */
    if (shown)
        erase(bar);
    had_err = ferror(out);
    err = put(out, text, len, 0);
    if (err == 0 && add_nl)
        err = put(out, "\n", 1, 0);
    if (err == 0 && mode != SHARE_NONE)
        err = put(out, NULL, 0, 1);
    /* An EINTR that was retried away is no error of the host's stream. */
    if (err == 0 && !had_err && ferror(out) && !feof(out))
        clearerr(out);
    if (shown && !bar->failed)
        draw(bar, read_clock(bar), 0);
    if (err != 0) {
        errno = err;
        return -1;
    }
    return (int)len + add_nl;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

pmap_progress *pmap__progress_new_with_clock(FILE *out, const char *desc, uint64_t total,
                                             pmap__progress_clock_fn now, void *ctx)
{
    struct pmap_progress *bar = NULL;
    struct stat st;
    int saved = errno;

    if (out == NULL || now == NULL) {
        errno = EINVAL;
        return NULL;
    }
    bar = calloc(1, sizeof *bar);
    if (bar == NULL)
        goto nomem;
    bar->line_size = LINE_SLACK;
    bar->line = malloc(bar->line_size);
    if (bar->line == NULL)
        goto nomem;
    if (desc != NULL && text_set(bar, &bar->desc, desc, strlen(desc)) != 0)
        goto nomem;
    memcpy(bar->unit, "it", 3);

    bar->out = out;
    bar->total = total;
    bar->fd = fileno(out);
    bar->tty = bar->fd >= 0 && isatty(bar->fd) == 1;
    if (bar->fd >= 0 && fstat(bar->fd, &st) == 0) {
        bar->have_id = 1;
        bar->dev = st.st_dev;
        bar->ino = st.st_ino;
    }
    bar->utf8 = pmap__progress_locale_utf8();
    bar->interval_ns = bar->tty ? TTY_INTERVAL_NS : LINE_INTERVAL_NS;
    bar->now = now;
    bar->now_ctx = ctx;
    bar->start_ns = now(ctx);
    bar->last_check_ns = bar->start_ns;
    bar->last_sample_ns = bar->start_ns;
    bar->last_draw_ns = bar->start_ns;
    bar->stride = 1;
    bar->armed = 1;
    /*
     * Nothing is drawn yet: the caller may still set the unit, the
     * description or the postfix, and every frame should show them. The first
     * pmap_progress_add() (countdown 1) draws.
     */
    bar->countdown = 1;
    errno = saved;
    return bar;

nomem:
    if (bar != NULL) {
        free(bar->desc.s);
        free(bar->line);
        free(bar);
    }
    errno = ENOMEM;
    return NULL;
}

pmap_progress *pmap_progress_new(FILE *out, const char *desc, uint64_t total)
{
    return pmap__progress_new_with_clock(out, desc, total, monotonic_ns, NULL);
}

void pmap_progress_add(pmap_progress *bar, uint64_t n)
{
    if (bar == NULL)
        return;
    bar->count += n;
    if (bar->count < n)
        bar->count = UINT64_MAX;
    if (--bar->countdown == 0)
        tick(bar);
}

void pmap_progress_free(pmap_progress *bar)
{
    int saved;

    if (bar == NULL)
        return;
    saved = errno;
    if (!bar->failed)
        draw(bar, read_clock(bar), 1);
    free(bar->desc.s);
    free(bar->postfix.s);
    free(bar->line);
    free(bar);
    errno = saved;
}

void pmap_progress_set_total(pmap_progress *bar, uint64_t total)
{
    if (bar == NULL)
        return;
    bar->total = total;
    if (bar->count < total)
        bar->done_drawn = 0;
}

void pmap_progress_set_unit(pmap_progress *bar, const char *unit)
{
    size_t len;

    if (bar == NULL)
        return;
    if (unit == NULL || unit[0] == '\0')
        unit = "it";
    len = strlen(unit);
    if (len > UNIT_SIZE - 1) {
        len = UNIT_SIZE - 1;
        while (len > 0 && ((unsigned char)unit[len] & 0xC0) == 0x80)
            len--;
    }
    memcpy(bar->unit, unit, len);
    bar->unit[len] = '\0';
    sanitize(bar->unit);
}

void pmap_progress_set_unit_scale(pmap_progress *bar, int enable)
{
    if (bar != NULL)
        bar->unit_scale = enable != 0;
}

void pmap_progress_set_min_interval(pmap_progress *bar, double seconds)
{
    if (bar == NULL || !(seconds >= 0))
        return;
    if (seconds > 1e9)
        seconds = 1e9;
    bar->interval_ns = (uint64_t)(seconds * NS_PER_S);
}

int pmap_progress_set_description(pmap_progress *bar, const char *desc)
{
    int saved;

    if (bar == NULL)
        return 0;
    saved = errno;
    if (desc == NULL)
        desc = "";
    if (text_set(bar, &bar->desc, desc, strlen(desc)) != 0) {
        errno = ENOMEM;
        return -1;
    }
    errno = saved;
    return 0;
}

int pmap_progress_set_postfix(pmap_progress *bar, const char *fmt, ...)
{
    char stack[256], *text;
    size_t len = 0;
    va_list ap;
    int saved, rc;

    if (bar == NULL)
        return 0;
    if (fmt == NULL)
        return text_set(bar, &bar->postfix, "", 0);
    saved = errno;
    va_start(ap, fmt);
    text = vformat(stack, sizeof stack, &len, fmt, ap);
    va_end(ap);
    if (text == NULL)
        return -1;
    rc = text_set(bar, &bar->postfix, text, len);
    if (text != stack)
        free(text);
    if (rc != 0) {
        errno = ENOMEM;
        return -1;
    }
    errno = saved;
    return 0;
}

int pmap_progress_write(pmap_progress *bar, FILE *out, const char *text)
{
    int saved = errno, rc;

    if (out == NULL || text == NULL) {
        errno = EINVAL;
        return -1;
    }
    rc = write_text(bar, out, text, strlen(text));
    if (rc >= 0)
        errno = saved;
    return rc;
}

int pmap_progress_vprintf(pmap_progress *bar, FILE *out, const char *fmt, va_list ap)
{
    char stack[512], *text;
    size_t len = 0;
    int saved = errno, rc;

    if (out == NULL || fmt == NULL) {
        errno = EINVAL;
        return -1;
    }
    text = vformat(stack, sizeof stack, &len, fmt, ap);
    if (text == NULL)
        return -1;
    rc = write_text(bar, out, text, len);
    if (text != stack)
        free(text);
    if (rc >= 0)
        errno = saved;
    return rc;
}

int pmap_progress_printf(pmap_progress *bar, FILE *out, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = pmap_progress_vprintf(bar, out, fmt, ap);
    va_end(ap);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Test hooks                                                               */
/* ------------------------------------------------------------------------ */

void pmap__progress_set_utf8(pmap_progress *bar, int utf8)
{
    if (bar != NULL)
        bar->utf8 = utf8 != 0;
}

int pmap__progress_failed(const pmap_progress *bar)
{
    return bar != NULL && bar->failed;
}

int pmap__progress_is_tty(const pmap_progress *bar)
{
    return bar != NULL && bar->tty;
}

uint32_t pmap__progress_stride(const pmap_progress *bar)
{
    return bar != NULL ? bar->stride : 0;
}
