/*
 * libFuzzer target for the journal reader (src/journal.c): whatever a
 * file holds, pmap_journal_open never crashes, never allocates beyond what
 * the file can hold (ASan's allocation limit, -rss_limit_mb, catches it),
 * and either refuses the file with EBADMSG leaving it byte-identical, or
 * keeps a prefix of it: the count fits in the bytes kept, and the file is
 * never longer than before (a file shorter than a header becomes one).
 *
 * Input: the file's bytes. Half of the runs put a valid header in front,
 * so that the fuzzer reaches the entries without first guessing the magic
 * and its check.
 */
#define _POSIX_C_SOURCE 200809L

#include "pmap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

uint64_t pmap__hash64(const void *p, size_t n, uint64_t seed);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static char path[256];

static void spill(const unsigned char *b, size_t n)
{
    int fd;

    (void)unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    CHECK(n == 0 || write(fd, b, n) == (ssize_t)n);
    CHECK(close(fd) == 0);
}

static unsigned char *slurp(size_t *n)
{
    struct stat st;
    unsigned char *b;
    int fd = open(path, O_RDONLY);

    CHECK(fd >= 0 && fstat(fd, &st) == 0);
    b = malloc((size_t)st.st_size + 1);
    CHECK(b != NULL);
    CHECK(read(fd, b, (size_t)st.st_size) == (ssize_t)st.st_size);
    CHECK(close(fd) == 0);
    *n = (size_t)st.st_size;
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char magic[8] = {0x89, 'P', 'M', 'A', 'P', 'J', '\r', '\n'};
    unsigned char *file, *back;
    size_t n, got;
    pmap_journal *j;
    uint32_t u;

    if (path[0] == '\0') {
        const char *tmp = getenv("TMPDIR");

        snprintf(path, sizeof path, "%s/fuzz_journal.%ld.pmj", tmp && *tmp ? tmp : "/tmp",
                 (long)getpid());
    }
    file = malloc(size + 32);
    CHECK(file != NULL);
    n = 0;
    if (size > 0 && (data[0] & 1)) {
        memset(file, 0, 32);
        memcpy(file, magic, 8);
        u = 1;
        memcpy(file + 8, &u, 4);
        u = 32;
        memcpy(file + 12, &u, 4);
        memcpy(file + 16, &u, 4);
        u = (uint32_t)pmap__hash64(file, 28, 0x6a6f75726e616c31ull);
        memcpy(file + 28, &u, 4);
        n = 32;
        data++;
        size--;
    }
    if (size > 0)
        memcpy(file + n, data, size);
    n += size;
    spill(file, n);
    j = pmap_journal_open(path);
    back = slurp(&got);
    if (j == NULL) {
        CHECK(errno == EBADMSG);
        CHECK(got == n && memcmp(back, file, n) == 0);
    } else {
        CHECK(got >= 32 && (n < 32 || got <= n));
        CHECK(pmap_journal_count(j) <= (got - 32) / 32);
        CHECK(memcmp(back, file, got < n ? got : n) == 0 || n < 32);
        CHECK(pmap_journal_close(j) == PMAP_OK);
    }
    free(back);
    free(file);
    (void)unlink(path);
    return 0;
}
