/*
 * wordfreq: count the words of many files, one task per file.
 *
 *     wordfreq FILE...
 *
 * Each worker reads one file and counts its words (runs of letters and
 * digits, lower-cased); the caller merges the per-file counts in input
 * order, prints one line per file, then the most frequent words overall.
 * A file that cannot be read is reported on its own line; the others go on.
 *
 * The parameter record is the file name; the result record is the file's
 * table, serialised as lines "count word\n" after a header line "total\n".
 */
#define _POSIX_C_SOURCE 200809L

#include <pmap.h>
#include <pmap_progress.h>

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOP_N 10
#define MAX_WORD 64

/* ---- a small open-addressing hash table of words ---- */

struct entry {
    char *word; /* NULL: empty slot */
    unsigned long count;
};

struct table {
    struct entry *e;
    size_t cap; /* a power of two */
    size_t len;
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */

    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211u;
    return h;
}

static int table_grow(struct table *t)
{
    size_t ncap = t->cap ? t->cap * 2 : 256, i;
    struct entry *n = calloc(ncap, sizeof *n);

    if (n == NULL)
        return -1;
    for (i = 0; i < t->cap; i++) {
        if (t->e[i].word != NULL) {
            size_t j = hash(t->e[i].word) & (ncap - 1);

            while (n[j].word != NULL)
                j = (j + 1) & (ncap - 1);
            n[j] = t->e[i];
        }
    }
    free(t->e);
    t->e = n;
    t->cap = ncap;
    return 0;
}

static int table_add(struct table *t, const char *word, unsigned long n)
{
    size_t j;

    if ((t->len + 1) * 4 > t->cap * 3 && table_grow(t) != 0)
        return -1;
    j = hash(word) & (t->cap - 1);
    while (t->e[j].word != NULL && strcmp(t->e[j].word, word) != 0)
        j = (j + 1) & (t->cap - 1);
    if (t->e[j].word == NULL) {
        size_t len = strlen(word) + 1;

        t->e[j].word = malloc(len);
        if (t->e[j].word == NULL)
            return -1;
        memcpy(t->e[j].word, word, len);
        t->len++;
    }
    t->e[j].count += n;
    return 0;
}

static void table_free(struct table *t)
{
    size_t i;

    for (i = 0; i < t->cap; i++)
        free(t->e[i].word);
    free(t->e);
    t->e = NULL;
    t->cap = t->len = 0;
}

/* ---- the task: runs in a worker ---- */

/* A failing task may leave a message in `out`: it arrives with the
 * PMAP_ETASK item (item.data / item.len). Returns `err`, the item's code. */
static int fail_with(pmap_buf *out, const char *what, const char *path, int err)
{
    char msg[4200];
    int n = snprintf(msg, sizeof msg, "cannot %s %s: %s", what, path, strerror(err));

    if (n > 0)
        (void)pmap_buf_set(out, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    return err;
}

static int count_file(void *ctx, const void *param, size_t len, pmap_buf *out)
{
    char path[4096], word[MAX_WORD + 1];
    struct table t = {NULL, 0, 0};
    unsigned long total = 0;
    size_t wl = 0, i, need;
    FILE *f;
    int c, rc = 0;
    char *p;

    (void)ctx;
    if (len == 0 || len >= sizeof path)
        return EINVAL;
    memcpy(path, param, len);
    path[len] = '\0';
    errno = 0;
    f = fopen(path, "r");
    if (f == NULL)
        return fail_with(out, "open", path, errno ? errno : EIO);
    do {
        errno = 0;
        c = getc(f);
        if (c == EOF && ferror(f)) {
            rc = errno ? errno : EIO; /* a directory: EISDIR, not EIO */
            break;
        }
        if (c != EOF && isalnum(c)) {
            if (wl < MAX_WORD)
                word[wl++] = (char)tolower(c);
            continue;
        }
        if (wl > 0) {
            word[wl] = '\0';
            wl = 0;
            total++;
            if (table_add(&t, word, 1) != 0) {
                rc = ENOMEM;
                break;
            }
        }
    } while (c != EOF);
    fclose(f);
    if (rc != 0) {
        table_free(&t);
        return fail_with(out, rc == ENOMEM ? "count" : "read", path, rc);
    }

    /* Serialise: "total\n" then "count word\n" per distinct word. */
    need = 32;
    for (i = 0; i < t.cap; i++)
        if (t.e[i].word != NULL)
            need += strlen(t.e[i].word) + 24;
    p = rc == 0 ? pmap_buf_reserve(out, need) : NULL;
    if (rc == 0 && p == NULL)
        rc = ENOMEM;
    if (rc == 0) {
        size_t used = (size_t)snprintf(p, need, "%lu\n", total);

        for (i = 0; i < t.cap; i++)
            if (t.e[i].word != NULL)
                used += (size_t)snprintf(p + used, need - used, "%lu %s\n", t.e[i].count,
                                         t.e[i].word);
        pmap_buf_reserve(out, used); /* trim to what was written; the bytes stay */
    }
    table_free(&t);
    return rc;
}

/* ---- the generator: file names from the command line ---- */

struct files {
    char **names;
    int n, next;
};

static int next_file(void *gen_ctx, pmap_buf *param)
{
    struct files *fs = gen_ctx;
    char *name;

    if (fs->next == fs->n)
        return 0;
    name = fs->names[fs->next++];
    /* The name comes back with the file's item (pmap_item_user), in
     * either order: the consumer keeps no list of its own. */
    if (pmap_param_set_user(param, name) != PMAP_OK)
        return -1;
    return pmap_buf_set(param, name, strlen(name)) == PMAP_OK ? 1 : -1;
}

/* ---- the caller: merge in input order ---- */

static int merge(struct table *all, const char *data, size_t len, unsigned long *total,
                 size_t *distinct)
{
    const char *p = data, *end = data + len;
    char word[MAX_WORD + 1];

    *total = strtoul(p, NULL, 10);
    *distinct = 0;
    p = memchr(p, '\n', (size_t)(end - p));
    while (p != NULL && ++p < end) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *nl = sp ? memchr(sp, '\n', (size_t)(end - sp)) : NULL;
        size_t wl;

        if (sp == NULL || nl == NULL)
            return -1;
        wl = (size_t)(nl - sp - 1);
        if (wl > MAX_WORD)
            return -1;
        memcpy(word, sp + 1, wl);
        word[wl] = '\0';
        if (table_add(all, word, strtoul(p, NULL, 10)) != 0)
            return -1;
        (*distinct)++;
        p = nl;
    }
    return 0;
}

static int by_count(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;

    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->word, y->word);
}

int main(int argc, char **argv)
{
    struct files fs;
    struct table all = {NULL, 0, 0};
    pmap_pool *pool;
    pmap_iter *it;
    pmap_item item;
    pmap_progress *bar;
    unsigned long words = 0;
    size_t i, n;
    int rc, failed = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE...\n", argv[0]);
        return 2;
    }
    fs.names = argv + 1;
    fs.n = argc - 1;
    fs.next = 0;

    pool = pmap_pool_create(count_file, NULL, NULL); /* one worker per CPU */
    if (pool == NULL) {
        perror("pmap_pool_create");
        return 1;
    }
    it = pmap_imap(pool, next_file, &fs);
    if (it == NULL) {
        perror("pmap_imap");
        pmap_pool_destroy(pool);
        return 1;
    }
    bar = pmap_progress_new(stderr, "files", (uint64_t)fs.n);
    pmap_progress_set_unit(bar, "file");
    while ((rc = pmap_next(it, &item)) == PMAP_OK) {
        const char *name = pmap_item_user(it, &item);
        unsigned long total;
        size_t distinct;

        pmap_progress_add(bar, 1);
        if (item.status == PMAP_ETASK && item.len > 0) {
            /* The worker's own message, e.g. "cannot open x: No such file". */
            pmap_progress_printf(bar, stdout, "%s: error: %.*s\n", name, (int)item.len,
                                 (const char *)item.data);
            failed = 1;
        } else if (item.status == PMAP_ETASK) {
            pmap_progress_printf(bar, stdout, "%s: error: %s\n", name, strerror(item.code));
            failed = 1;
        } else if (item.status != PMAP_OK) {
            pmap_progress_printf(bar, stdout, "%s: error: %s (code %d)\n", name,
                                 pmap_strerror(item.status), item.code);
            failed = 1;
        } else if (merge(&all, item.data, item.len, &total, &distinct) != 0) {
            pmap_progress_printf(bar, stdout, "%s: error: malformed result\n", name);
            failed = 1;
        } else {
            pmap_progress_printf(bar, stdout, "%s: %lu words, %zu distinct\n", name, total,
                                 distinct);
            words += total;
        }
    }
    pmap_progress_free(bar);
    if (rc != PMAP_DONE) {
        fprintf(stderr, "map failed: %s\n", pmap_strerror(rc));
        failed = 1;
    }
    pmap_iter_free(it);
    pmap_pool_destroy(pool);

    /* The most frequent words overall. */
    n = 0;
    for (i = 0; i < all.cap; i++)
        if (all.e[i].word != NULL)
            all.e[n++] = all.e[i];
    qsort(all.e, n, sizeof *all.e, by_count);
    printf("total: %lu words, %zu distinct\n", words, n);
    for (i = 0; i < n && i < TOP_N; i++)
        printf("%8lu %s\n", all.e[i].count, all.e[i].word);
    for (i = n; i < all.cap; i++)
        all.e[i].word = NULL; /* moved to the front above */
    table_free(&all);
    return failed;
}
