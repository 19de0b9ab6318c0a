/*
 * Writes the seed corpus of fuzz_wire into the directory argv[1]: valid
 * streams of every frame kind built with the real encoder, and a few
 * broken ones. Each file starts with the fuzz target's 5-byte prefix
 * (record limit selector, split seed).
 */
#include "wire.h"

#include <stdio.h>
#include <string.h>

static unsigned char buf[1 << 16];
static size_t len;

static void put(const void *p, size_t n)
{
    if (len + n <= sizeof buf) {
        memcpy(buf + len, p, n);
        len += n;
    }
}

static void start(unsigned limit_sel, unsigned seed)
{
    unsigned char pre[5];

    len = 0;
    pre[0] = (unsigned char)limit_sel;
    memcpy(pre + 1, &seed, 4);
    put(pre, 5);
}

static void control(unsigned kind, uint32_t seq)
{
    struct pmap__frame f = {kind, 0, seq, 0, 0, 0};
    unsigned char h[PMAP__HDR_SIZE], t[PMAP__TRL_SIZE];

    pmap__frame_hdr(h, &f);
    pmap__frame_trl(t, &f);
    put(h, sizeof h);
    put(t, sizeof t);
}

/* A frame of n records with payload lengths lens[] (status from errs[]). */
static void records(unsigned kind, uint32_t seq, uint32_t n, const size_t *lens, const int *errs)
{
    struct pmap__frame f = {kind, n, seq, 0, 1234, 0};
    unsigned char h[PMAP__HDR_SIZE], r[PMAP__REC_XSIZE], t[PMAP__TRL_SIZE];
    uint32_t i;
    size_t k;

    for (i = 0; i < n; i++)
        f.bytes +=
            pmap__rec_hdr_size(errs && errs[i] ? 0 : lens[i]) + (errs && errs[i] ? 0 : lens[i]);
    pmap__frame_hdr(h, &f);
    pmap__frame_trl(t, &f);
    put(h, sizeof h);
    for (i = 0; i < n; i++) {
        int err = errs ? errs[i] : 0;

        put(r, pmap__rec_hdr(r, err, err ? 0 : lens[i]));
        for (k = 0; !err && k < lens[i]; k++) {
            unsigned char b = (unsigned char)(k * 7 + i);

            put(&b, 1);
        }
    }
    put(t, sizeof t);
}

static int save(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, len, f) != len) {
        perror(path);
        return 1;
    }
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    static const size_t lens[] = {0, 1, 16, 100, 3, 4000};
    static const int errs[] = {0, 7, 0, -1, 0, 0};
    int rc = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    start(5, 1);
    control(PMAP__K_READY, 0);
    rc |= save(argv[1], "ready");

    start(5, 2);
    control(PMAP__K_READY, 0);
    records(PMAP__K_RESULTS, 0, 6, lens, errs);
    control(PMAP__K_RETIRE, 6);
    rc |= save(argv[1], "results");

    start(4, 3);
    records(PMAP__K_TASKS, 0, 4, lens, NULL);
    records(PMAP__K_TASKS, 4, 2, lens + 2, NULL);
    rc |= save(argv[1], "tasks");

    start(4, 3); /* a task switch between two batches (pmap_imap_task) */
    records(PMAP__K_TASKS, 0, 2, lens, NULL);
    {
        struct pmap__frame f;
        unsigned char h[PMAP__HDR_SIZE], t[PMAP__TRL_SIZE];

        pmap__frame_use(&f, NULL, &rc);
        f.bytes = 0x00005555deadbeefu; /* a task pointer's bits */
        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        put(h, sizeof h);
        put(t, sizeof t);
    }
    records(PMAP__K_TASKS, 2, 2, lens + 2, NULL);
    rc |= save(argv[1], "task_switch");

    start(2, 4); /* limit 7: the 16-byte record is over it */
    records(PMAP__K_RESULTS, 0, 3, lens, NULL);
    rc |= save(argv[1], "over_limit");

    start(5, 5); /* a frame cut short */
    records(PMAP__K_RESULTS, 9, 6, lens, errs);
    len -= 50;
    rc |= save(argv[1], "truncated");

    start(7, 6); /* junk between frames */
    control(PMAP__K_READY, 0);
    put("garbage!", 8);
    control(PMAP__K_RETIRE, 0);
    rc |= save(argv[1], "junk");

    start(6, 8); /* a 5 GiB record's long header, its payload cut short */
    {
        struct pmap__frame f = {PMAP__K_RESULTS, 1, 0, PMAP__REC_XSIZE + ((uint64_t)5 << 30), 0, 0};
        unsigned char h[PMAP__HDR_SIZE], r[PMAP__REC_XSIZE];

        pmap__frame_hdr(h, &f);
        put(h, sizeof h);
        put(r, pmap__rec_hdr(r, 0, (uint64_t)5 << 30));
        put("payload", 7);
    }
    rc |= save(argv[1], "long_header");

    start(4, 9); /* uniform frames: bare parameters, then bare results */
    {
        struct pmap__frame f = {PMAP__K_TASKS, 5, 0, 5 * 8, 0, PMAP__F_UNIFORM};
        unsigned char h[PMAP__HDR_SIZE], t[PMAP__TRL_SIZE];

        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        put(h, sizeof h);
        put("0123456789abcdefghijklmnopqrstuvwxyzABCD", 40);
        put(t, sizeof t);
        f.kind = PMAP__K_RESULTS;
        f.count = 3;
        f.bytes = 0;
        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        put(h, sizeof h);
        put(t, sizeof t);
    }
    rc |= save(argv[1], "uniform");

    start(5, 10); /* a task error with its message, then a status record */
    {
        struct pmap__frame f = {PMAP__K_RESULTS, 2, 0, 0, 0, 0};
        unsigned char h[PMAP__HDR_SIZE], r[PMAP__REC_XSIZE], st[PMAP__REC_XSIZE];
        unsigned char t[PMAP__TRL_SIZE];
        size_t rn = pmap__rec_hdr(r, 2, 11), sn = pmap__rec_status(st, PMAP_ENOMEM);

        f.bytes = rn + 11 + sn;
        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        put(h, sizeof h);
        put(r, rn);
        put("cannot open", 11);
        put(st, sn);
        put(t, sizeof t);
    }
    rc |= save(argv[1], "messages");

    start(4, 11); /* a task frame whose results go back one by one */
    {
        struct pmap__frame f = {PMAP__K_TASKS, 2, 0, 2 * 8, 0, PMAP__F_UNIFORM | PMAP__F_EACH};
        unsigned char h[PMAP__HDR_SIZE], t[PMAP__TRL_SIZE];

        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        put(h, sizeof h);
        put("0123456789abcdef", 16);
        put(t, sizeof t);
    }
    rc |= save(argv[1], "each");

    start(4, 12); /* arena records (a success, a task error) between bytes in the stream */
    {
        struct pmap__frame f = {PMAP__K_RESULTS, 3, 0, 0, 0, 0};
        unsigned char h[PMAP__HDR_SIZE], r[PMAP__REC_XSIZE], a1[PMAP__REC_ASIZE];
        unsigned char a2[PMAP__REC_ASIZE], t[PMAP__TRL_SIZE];
        size_t rn = pmap__rec_hdr(r, 0, 4);

        pmap__rec_arena(a1, 0, 4096, 0);
        pmap__rec_arena(a2, 3, 100, 4096);
        f.bytes = sizeof a1 + rn + 4 + sizeof a2;
        pmap__frame_hdr(h, &f);
        pmap__frame_trl(t, &f);
        put(h, sizeof h);
        put(a1, sizeof a1);
        put(r, rn);
        put("abcd", 4);
        put(a2, sizeof a2);
        put(t, sizeof t);
    }
    rc |= save(argv[1], "arena");

    start(8 | 2, 7); /* the frame callback refuses RESULTS frames */
    records(PMAP__K_RESULTS, 0, 2, lens + 1, NULL);
    rc |= save(argv[1], "refused");
    return rc;
}
