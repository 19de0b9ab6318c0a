/*
 * libpmap progress unit: a tqdm-style progress bar for any loop.
 *
 * This library stands alone: it neither includes nor links the pool, and the
 * pool does not use it. Wrap any loop, and print results through the bar so
 * that they appear above it, never inside it (tqdm.write):
 *
 *     pmap_progress *bar = pmap_progress_new(stderr, "sum", n);
 *     while (... next result ...) {
 *         pmap_progress_add(bar, 1);
 *         pmap_progress_printf(bar, stdout, "%d\n", result);
 *     }
 *     pmap_progress_free(bar);
 *
 * A NULL bar is a valid "no bar": every function accepts it, and
 * pmap_progress_printf() still prints, so a quiet mode is
 * `bar = quiet ? NULL : pmap_progress_new(...)`, and a failed
 * pmap_progress_new() needs no special handling.
 *
 * What it shows
 * -------------
 * tqdm's layout. With a known total:
 *
 *     desc:  42%|████▏     | 42/100 [00:04<00:05, 10.00it/s, loss=0.31]
 *
 * percentage (three columns, rounded down, so 100% means done), a bar with
 * 1/8-cell resolution, count/total, elapsed<remaining, rate, and the postfix
 * if one is set (pmap_progress_set_postfix()). With an unknown total (0):
 *
 *     desc: 42it [00:04, 10.00it/s, loss=0.31]
 *
 * Without a description (NULL or "") the line starts at the percentage or the
 * count. Times are MM:SS, or H:MM:SS from one hour on; an unknown remaining
 * time is `?`, an unknown rate `?it/s` (only while nothing is counted or no
 * time has passed). A rate below 1 per second is shown inverted, `2.00s/it`.
 * While running, the rate is an exponential moving average (time constant
 * about 3 s; before its first sample, 50 ms in, the average so far); the
 * final line shows the average over the whole run. A count beyond the total
 * is shown as it is (`150/100`) with the percentage and the bar held at 100%.
 *
 * The bar uses the Unicode blocks ▏▎▍▌▋▊▉█ when the locale is UTF-8 (the
 * codeset of the current locale, or LC_ALL / LC_CTYPE / LANG, whichever is
 * the first set, naming UTF-8 or utf8 in any case: the host need not call
 * setlocale), and `#` otherwise. Control characters in the description, the
 * unit and the postfix are shown as spaces.
 *
 * Where it shows it
 * -----------------
 * The mode is chosen once, in pmap_progress_new(), from isatty() on the
 * descriptor behind the FILE.
 *
 * On a terminal, the first frame is drawn by the first pmap_progress_add()
 * (pmap_progress_add(bar, 0) shows 0% at once), never by pmap_progress_new(),
 * so settings made right after creation (unit, description, postfix) hold for
 * every frame. From then on the bar is redrawn in place: each frame starts
 * with '\r' and is padded with spaces over the rest of the previous frame. A
 * frame is at most (terminal columns - 1) wide, the last column left free so
 * no terminal ever wraps it; the width is read at each redraw (TIOCGWINSZ on
 * that descriptor, else the COLUMNS environment variable, else 80), and the
 * bar shrinks, then disappears, then the line is cut, to fit. Redraws happen
 * at most every 0.1 s (see pmap_progress_set_min_interval()) plus once when
 * the count first reaches the total, so a tight loop of millions of updates
 * writes a few kilobytes; pmap_progress_printf() adds one frame per call,
 * below its text.
 *
 * Anywhere else (a file, a pipe, a CI log), nothing is written until 10 s
 * have passed; from then on one whole line, ending in '\n' and never holding
 * a '\r', every 10 s of wall time (checked when pmap_progress_add() is
 * called; there is no timer). A run shorter than 10 s therefore writes
 * exactly one line: the final one, written by pmap_progress_free(). These
 * lines use a bar of 10 cells.
 *
 * Cost and safety
 * ---------------
 * pmap_progress_add() is a counter increment: it reads the clock only every
 * N calls, N adapting to the call rate so the clock is read about every 2 ms
 * but at least once per 1024 calls (a loop that suddenly slows down from
 * millions of calls a second is noticed within 1024 calls), and writes only
 * when a redraw is due. Output is rendered into the bar's own buffer and
 * handed to the FILE as one fwrite() followed by fflush(), so it interleaves
 * sanely with the host's own use of that FILE.
 *
 * The bar never harms its host: it installs no signal handler and changes no
 * signal disposition; SIGPIPE is blocked in the calling thread around each
 * write, and a SIGPIPE that the write itself raised is consumed before the
 * mask is restored (one the host already had pending is left alone). If a
 * write fails (a pipe whose reader has gone, a full disk), the bar disables
 * itself silently and keeps counting (a full non-blocking descriptor only
 * costs that one frame); the FILE's error indicator is cleared again if it
 * was clear before. errno is preserved by every function that succeeds; the
 * ones that can fail set it when they do. The text of pmap_progress_printf()
 * is the host's own output, not the bar's: it is written as fprintf() would
 * write it, SIGPIPE included.
 *
 * Threads: a bar may be used from one thread at a time (any thread). Writes
 * to the FILE take stdio's own lock, so other threads may keep using it.
 */
#ifndef PMAP_PROGRESS_H
#define PMAP_PROGRESS_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PMAP_STATIC)
#define PMAP_PROGRESS_API
#elif defined(__GNUC__)
#define PMAP_PROGRESS_API __attribute__((visibility("default")))
#else
#define PMAP_PROGRESS_API
#endif

#if defined(__GNUC__)
#define PMAP_PROGRESS_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define PMAP_PROGRESS_PRINTF(fmt, args)
#endif

/** An opaque progress bar, created by pmap_progress_new(). */
typedef struct pmap_progress pmap_progress;

/**
 * Create a bar that draws on `out`.
 *
 * `desc` is a label shown before the bar (NULL or "" for none); it is copied,
 * so the caller's string need not outlive the call. `total` is the count that
 * means done, or 0 when unknown. `out` is borrowed: it must stay open until
 * pmap_progress_free(), which does not close it. Nothing is written yet, on a
 * terminal or elsewhere: the first frame waits for pmap_progress_add().
 *
 * Returns the bar, or NULL with errno set: EINVAL when `out` is NULL, ENOMEM
 * when out of memory.
 */
PMAP_PROGRESS_API pmap_progress *pmap_progress_new(FILE *out, const char *desc, uint64_t total);

/**
 * Count `n` more units of work done (n may be 0, and the count may go beyond
 * the total). Redraws when one is due, see the introduction (on a terminal,
 * the first call always draws); otherwise costs a few nanoseconds and makes
 * no system call. The count saturates at UINT64_MAX. A NULL bar does nothing.
 */
PMAP_PROGRESS_API void pmap_progress_add(pmap_progress *bar, uint64_t n);

/**
 * Draw the final state, end the line with exactly one '\n', and free the bar.
 *
 * On a terminal this is a last in-place frame followed by '\n'; elsewhere it
 * is one more whole line. A bar disabled by a write error writes nothing. The
 * final line shows the average rate of the whole run. `out` is flushed, not
 * closed. A NULL bar does nothing.
 */
PMAP_PROGRESS_API void pmap_progress_free(pmap_progress *bar);

/**
 * Change the total (0: unknown), e.g. once it becomes known. Takes effect at
 * the next redraw. A NULL bar does nothing.
 */
PMAP_PROGRESS_API void pmap_progress_set_total(pmap_progress *bar, uint64_t total);

/**
 * Set the name of one unit of work, shown in the count and the rate: "B"
 * gives `42B [00:01, 35.20B/s]`. The string is copied (at most 31 bytes are
 * kept). NULL or "" restores the default, "it". A NULL bar does nothing.
 */
PMAP_PROGRESS_API void pmap_progress_set_unit(pmap_progress *bar, const char *unit);

/**
 * With `enable` non-zero, show count, total and rate with SI prefixes (k, M,
 * G, ... powers of 1000) and three significant digits, as tqdm's unit_scale
 * does: `1.23M/2.00M [00:01<00:01, 1.23Mit/s]`. Off by default. A NULL bar
 * does nothing.
 */
PMAP_PROGRESS_API void pmap_progress_set_unit_scale(pmap_progress *bar, int enable);

/**
 * Set the minimum time between two draws, in seconds: redraws on a terminal
 * (default 0.1), or whole lines elsewhere (default 10). 0 draws at every
 * clock reading (about every 2 ms in a tight loop). A negative or NaN value
 * is ignored; values above 1e9 are taken as 1e9. A NULL bar does nothing.
 */
PMAP_PROGRESS_API void pmap_progress_set_min_interval(pmap_progress *bar, double seconds);

/**
 * Show `desc` before the bar from the next frame on (NULL or "": none), e.g.
 * the name of the file being worked on; the string is copied. Like every
 * setter, it draws nothing itself: the change shows at the next redraw, so a
 * loop may call it for each unit of work. Returns 0, or -1 with errno ENOMEM
 * (the old description kept). A NULL bar does nothing and returns 0.
 */
PMAP_PROGRESS_API int pmap_progress_set_description(pmap_progress *bar, const char *desc);

/**
 * Show a postfix after the rate, formatted at once as printf() does, from the
 * next frame on: pmap_progress_set_postfix(bar, "loss=%.2f", loss) gives
 * `... [00:01<00:02, 35.20it/s, loss=0.31]`. A NULL `fmt` (or a format that
 * yields "") removes it. Draws nothing itself, see
 * pmap_progress_set_description(). Returns 0, or -1 with errno set (ENOMEM,
 * or EOVERFLOW from the formatting), the old postfix kept. A NULL bar does
 * nothing and returns 0.
 */
PMAP_PROGRESS_API int pmap_progress_set_postfix(pmap_progress *bar, const char *fmt, ...)
    PMAP_PROGRESS_PRINTF(2, 3);

/**
 * Print to `out` above the bar, as tqdm.write() does: the bar's line is
 * erased, the text written, and the bar drawn again below it, so results and
 * bar never mix on a terminal.
 *
 * The text is formatted as fprintf() does and written as whole lines: a '\n'
 * is added when it does not end in one (so "%d" and "%d\n" print the same
 * line). `out` may be the bar's own stream or another one, typically results
 * on stdout while the bar is on stderr:
 *
 * - The bar is on a terminal and so is `out` (any terminal counts: stdout and
 *   stderr of a shell are one): (1) the bar's frame is blanked with '\r' and
 *   spaces and the bar's stream flushed, (2) the text is written to `out` and
 *   `out` flushed, (3) the bar is redrawn (with the current count) and its
 *   stream flushed. Each step is on the terminal before the next starts, so
 *   the bytes never interleave. A bar not yet drawn is not drawn by this call.
 * - The bar is not on a terminal and `out` is another FILE on the same file
 *   (`>log 2>&1`): the text is written and `out` flushed, so the bar's
 *   occasional whole lines fall between whole lines of text.
 * - Otherwise (`out` a file or a pipe while the bar is on the terminal, or
 *   the bar's own FILE in line mode, or a NULL or disabled bar): the text is
 *   just written, buffered by `out` as fprintf() would.
 *
 * Which case applies is found with isatty() or fstat() on `out`, once for a
 * stream and again after each frame the bar draws by itself (not at every
 * call, which would cost a system call per line): a stream redirected in the
 * meantime (freopen(), dup2()) is placed by its new kind from the next frame
 * on. The call costs about what fprintf() costs, plus the three steps above
 * when they apply.
 *
 * Returns the number of bytes written to `out` (the added '\n' included), or
 * -1 with errno set: EINVAL when `out` or `fmt` is NULL, ENOMEM, EOVERFLOW,
 * or the error of the failed write or flush (the stream's error indicator
 * then set, as fprintf() leaves it). The bar itself is affected only by
 * failures of its own stream, as always. errno is preserved on success.
 */
PMAP_PROGRESS_API int pmap_progress_printf(pmap_progress *bar, FILE *out, const char *fmt, ...)
    PMAP_PROGRESS_PRINTF(3, 4);

/** pmap_progress_printf() with a va_list, for wrappers of their own. `ap` is consumed. */
PMAP_PROGRESS_API int pmap_progress_vprintf(pmap_progress *bar, FILE *out, const char *fmt,
                                            va_list ap) PMAP_PROGRESS_PRINTF(3, 0);

/**
 * pmap_progress_printf(bar, out, "%s", text): `text` written as it is (no
 * format), completed to whole lines. Same placement, return and errors
 * (EINVAL when `out` or `text` is NULL).
 */
PMAP_PROGRESS_API int pmap_progress_write(pmap_progress *bar, FILE *out, const char *text);

#ifdef __cplusplus
}
#endif

#endif /* PMAP_PROGRESS_H */
