/* A test driver for the C core on another architecture (built static, run under qemu-aarch64-static):
 * runs a step program that the numpy reference already ran, then compares the arena byte for byte.
 *   driver PROGRAM MODEL ARENA_IN ARENA_EXPECTED LABEL LR SQRT_C2 FIRST STEPS
 * Exit 0 when every byte matches, 1 with the first differing offset otherwise, 2 on bad input.
 * Like the core, the driver allocates nothing: the files go into fixed static buffers (.bss). */
#include <stdio.h>
#include <stdlib.h>
#include "../core/tt.h"

#define CAP (16L << 20)   /* bytes per file: the test bundles' programs, models and arenas are far smaller */
static int32_t prog_buf[CAP / 4];
static uint8_t model_buf[CAP], arena_buf[CAP], expect_buf[CAP];

int tt_run(const int32_t *prog, int64_t nwords, uint8_t *arena, int64_t arena_bytes, const uint8_t *model,
           int64_t model_bytes, tt_io *io, int32_t first, int32_t last, int32_t *where);

static void *slurp(const char *path, void *buf, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (*n > CAP) { fprintf(stderr, "%s: %ld bytes, more than the driver's %ld\n", path, *n, CAP); exit(2); }
    if (fread(buf, 1, *n, f) != (size_t)*n) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 10) { fprintf(stderr, "usage: driver PROGRAM MODEL ARENA_IN ARENA_EXPECTED LABEL LR SQRT_C2 FIRST STEPS\n"); return 2; }
    long np, nm, na, ne;
    int32_t *prog = slurp(argv[1], prog_buf, &np);
    uint8_t *model = slurp(argv[2], model_buf, &nm), *arena = slurp(argv[3], arena_buf, &na);
    uint8_t *expect = slurp(argv[4], expect_buf, &ne);
    if (na != ne) { fprintf(stderr, "arena sizes differ\n"); return 2; }
    tt_io io = { atoi(argv[5]), atoi(argv[8]), (float)atof(argv[6]), (float)atof(argv[7]), 0, 0 };
    int32_t where;
    for (int s = 0; s < atoi(argv[9]); s++) {
        int rc = tt_run(prog, np / 4, arena, na, model, nm, &io, 0, -1, &where);
        if (rc) { fprintf(stderr, "tt_run failed: %d at instruction %d\n", rc, where); return 2; }
    }
    for (long i = 0; i < na; i++)
        if (arena[i] != expect[i]) { printf("arena differs at byte %ld\n", i); return 1; }
    printf("ok: %ld arena bytes equal, loss %.6f, applied %d\n", na, io.loss, io.applied);
    return 0;
}
