/* The learner's firmware: the C core (device/native/core) running the step program on the arena, the program
 * and the .tflite in flash, a mailbox for the host (mailbox.h). Generated next to it by firmware_sim/firmware.py:
 * -D flags FW_* (sizes, offsets, sections: firmware.json "config") and blobs.S (the program words, the model bytes and the initial
 * trainable state, included into .rodata). No libc, no allocator, no interrupts but the reset vector. */
#include "tt.h"
#include "mailbox.h"

int tt_run(const int32_t *prog, int64_t nwords, uint8_t *arena, int64_t arena_bytes, const uint8_t *model,
           int64_t model_bytes, tt_io *io, int32_t first, int32_t last, int32_t *where);

extern const int32_t tt_fw_program[], tt_fw_program_end[];
extern const uint8_t tt_fw_model[], tt_fw_model_end[];
extern const uint8_t tt_fw_init[], tt_fw_init_end[];        /* records: offset, length (u32), bytes padded to 4 */
extern const uint32_t tt_fw_state[], tt_fw_state_end[];     /* the trainable state: (arena offset, length) pairs */
extern const uint8_t tt_ckpt_slots[];                      /* 2 x FW_CK_SLOT bytes of flash (linker-reserved) */

uint8_t tt_arena[FW_ARENA_BYTES] __attribute__((aligned(16), section(".bss.tt_arena")));
volatile tt_mailbox_t tt_mailbox __attribute__((aligned(16), section(".bss.tt_mailbox")));

static void copy_bytes(uint8_t *d, const uint8_t *s, uint32_t n) {
    while (n--) *d++ = *s++;
}

/* the host's turn: a breakpoint the emulator catches; on a chip this is where a debugger or a UART poll sits */
__attribute__((noinline)) void tt_fw_wait(void) {
    __asm__ volatile("bkpt #1" ::: "memory");
}

static int32_t run(int32_t first, int32_t last, tt_io *io) {
    int32_t where = -1;
    int rc = tt_run(tt_fw_program, tt_fw_program_end - tt_fw_program, tt_arena, FW_ARENA_BYTES, tt_fw_model,
                    tt_fw_model_end - tt_fw_model, io, first, last, &where);
    tt_mailbox.where = where;
    return rc;
}

static void boot_state(void) {
    const uint8_t *p = tt_fw_init;
    while (p + 8 <= tt_fw_init_end) {
        uint32_t off = ((const uint32_t *)p)[0], len = ((const uint32_t *)p)[1];
        if (off > FW_ARENA_BYTES || len > FW_ARENA_BYTES - off) break;   /* a build error: never past the arena */
        copy_bytes(tt_arena + off, p + 8, len);
        p += 8 + ((len + 3u) & ~3u);
    }
}

#ifdef FW_SEMIHOST
/* ---- QEMU's MPS2 boards (the instruction-set gate): no host at a mailbox, so the samples and the step schedule
 * come in flash (script.bin: per step label, first, lr, sqrt_c2, then the x_bytes of the sample padded to 4), the
 * state goes out over semihosting (hex lines "offset:bytes" of each tt_fw_state region)
 * and SYS_EXIT ends the run with the first error (0: all steps ran). */
extern const uint8_t tt_fw_script[], tt_fw_script_end[];

static int32_t semihost(int32_t op, const void *arg) {
    register int32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt #0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void put_hex_line(uint32_t off, const uint8_t *p, uint32_t n) {
    static const char hex[] = "0123456789abcdef";
    char line[8 + 1 + 2 * 32 + 2];
    int k = 0;
    for (int s = 28; s >= 0; s -= 4) line[k++] = hex[(off >> s) & 15];
    line[k++] = ':';
    for (uint32_t i = 0; i < n; i++) { line[k++] = hex[p[i] >> 4]; line[k++] = hex[p[i] & 15]; }
    line[k++] = '\n';
    line[k] = 0;
    semihost(0x04, line);                                    /* SYS_WRITE0 */
}

void tt_fw_main(void) {
    boot_state();
    int32_t rc = 0;
    for (const uint8_t *p = tt_fw_script; !rc && p + 16 + FW_X_BYTES <= tt_fw_script_end;
         p += 16 + ((FW_X_BYTES + 3u) & ~3u)) {
        tt_io io = { 0 };
        io.label = ((const int32_t *)p)[0];
        io.first = ((const int32_t *)p)[1];
        io.lr = ((const float *)p)[2];
        io.sqrt_c2 = ((const float *)p)[3];
        copy_bytes(tt_arena + FW_X_OFFSET, p + 16, FW_X_BYTES);
        rc = run(FW_STEP_FIRST, FW_STEP_LAST, &io);
    }
    for (const uint32_t *d = tt_fw_state; d + 2 <= tt_fw_state_end; d += 2)
        for (uint32_t i = 0; i < d[1]; i += 32)
            put_hex_line(d[0] + i, tt_arena + d[0] + i, d[1] - i < 32 ? d[1] - i : 32);
    if (rc) put_hex_line(0xFFFFFFFFu, (const uint8_t *)&rc, 4);      /* the core's error code */
    /* SYS_EXIT: on 32-bit ARM the reason itself is in r1; QEMU exits 0 for ApplicationExit, 1 otherwise */
    semihost(0x18, (const void *)(uintptr_t)(rc ? 0x20023u : 0x20026u));
    for (;;) {}
}
#else
/* ---- checkpoints in flash: two slots written alternately; header { magic, seq, steps, length, crc32 } ---- */
#define CK_MAGIC 0x4B435454u   /* "TTCK" */
#define CK_HEADER 32u
typedef struct { uint32_t magic, seq, steps, len, crc; } ck_header;

static uint32_t crc32(uint32_t c, const uint8_t *p, uint32_t n) {
    c = ~c;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

/* the flash driver's one call: program n bytes at dst (in a checkpoint slot) from src. On a chip this is the
 * flash controller (erase the slot's sectors when dst is its first byte, then program); in the emulator a
 * breakpoint the host services (and counts). */
__attribute__((noinline)) void tt_fw_flash_write(uint32_t dst, const void *src, uint32_t n) {
    register uint32_t r0 __asm__("r0") = dst;
    register const void *r1 __asm__("r1") = src;
    register uint32_t r2 __asm__("r2") = n;
    __asm__ volatile("bkpt #3" : : "r"(r0), "r"(r1), "r"(r2) : "memory");
}

static uint32_t state_bytes(void) {
    uint32_t n = 0;
    for (const uint32_t *d = tt_fw_state; d + 2 <= tt_fw_state_end; d += 2) n += d[1];
    return n;
}

static int ck_valid(const uint8_t *slot, const ck_header **h) {
    const ck_header *c = (const ck_header *)slot;
    *h = c;
    return c->magic == CK_MAGIC && c->len == state_bytes() && c->len <= FW_CK_SLOT - CK_HEADER &&
           crc32(0, slot + CK_HEADER, c->len) == c->crc;
}

static uint32_t ck_seq;

static void checkpoint(int32_t steps) {
    const uint8_t *slot = tt_ckpt_slots + ((ck_seq + 1u) & 1u) * FW_CK_SLOT;
    uint32_t pos = CK_HEADER, crc = 0;
    for (const uint32_t *d = tt_fw_state; d + 2 <= tt_fw_state_end; d += 2) {
        tt_fw_flash_write((uint32_t)(uintptr_t)(slot + pos), tt_arena + d[0], d[1]);
        crc = crc32(crc, tt_arena + d[0], d[1]);
        pos += d[1];
    }
    ck_header h = { CK_MAGIC, ck_seq + 1u, (uint32_t)steps, pos - CK_HEADER, crc };
    tt_fw_flash_write((uint32_t)(uintptr_t)slot, &h, sizeof h);      /* the header last */
    ck_seq = h.seq;
}

/* the newest valid checkpoint into the arena; returns its steps, -1 when there is none */
static int32_t restore(void) {
    const ck_header *a, *b, *best = 0;
    const uint8_t *sa = tt_ckpt_slots, *sb = tt_ckpt_slots + FW_CK_SLOT, *slot = 0;
    int va = ck_valid(sa, &a), vb = ck_valid(sb, &b);
    if (va && (!vb || a->seq > b->seq)) { best = a; slot = sa; }
    else if (vb) { best = b; slot = sb; }
    if (!best) return -1;
    uint32_t pos = CK_HEADER;
    for (const uint32_t *d = tt_fw_state; d + 2 <= tt_fw_state_end; d += 2) {
        copy_bytes(tt_arena + d[0], slot + pos, d[1]);
        pos += d[1];
    }
    ck_seq = best->seq;
    return (int32_t)best->steps;
}

void tt_fw_main(void) {
    volatile tt_mailbox_t *mb = &tt_mailbox;
    boot_state();
    mb->ck_steps = restore();
    mb->ck_seq = ck_seq;
    mb->magic = TT_MB_MAGIC;
    mb->x_addr = (uint32_t)(uintptr_t)(tt_arena + FW_X_OFFSET);
    mb->x_bytes = FW_X_BYTES;
    mb->logits_addr = (uint32_t)(uintptr_t)(tt_arena + FW_LOGITS_OFFSET);
    mb->classes = FW_CLASSES;
    mb->arena_addr = (uint32_t)(uintptr_t)tt_arena;
    mb->where = -1;
    mb->ready = TT_MB_READY;
    for (;;) {
        tt_fw_wait();
        uint32_t cmd = mb->cmd;
        tt_io io = *(tt_io *)&mb->io;
        int32_t rc = 0;
        if (cmd == TT_CMD_STEP) {
            int32_t last = mb->last < 0 || mb->last > FW_STEP_LAST ? FW_STEP_LAST : mb->last;
            rc = run(mb->first > FW_STEP_FIRST ? mb->first : FW_STEP_FIRST, last, &io);
        } else if (cmd == TT_CMD_PREDICT) {
            rc = run(FW_FORWARD_FIRST, FW_FORWARD_LAST, &io);
            if (!rc) rc = run(FW_HEAD_FIRST, FW_HEAD_LAST, &io);
            const float *z = (const float *)(tt_arena + FW_LOGITS_OFFSET);
            int32_t best = 0;
            for (int32_t k = 1; k < FW_CLASSES; k++)
                if (z[k] > z[best]) best = k;
            mb->pred = best;
        }
        else if (cmd == TT_CMD_CHECKPOINT) {
            checkpoint(mb->ck_steps);
            mb->ck_seq = ck_seq;
        }
        *(tt_io *)&mb->io = io;
        mb->status = rc;
        mb->cmd = TT_CMD_NONE;
        mb->done = mb->done + 1;
    }
}

#endif

/* ---- reset: .data from flash, .bss zeroed, then the learner; the vector table's first two words ---- */
extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];

void Reset_Handler(void) {
#ifdef FW_ENABLE_FPU   /* a real chip / QEMU: CP10 and CP11 full access (Unicorn runs VFP without it) */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n isb" ::: "memory");
#endif
    for (uint32_t *s = _sidata, *d = _sdata; d < _edata;) *d++ = *s++;
    for (uint32_t *d = _sbss; d < _ebss;) *d++ = 0;
    tt_fw_main();
    for (;;) tt_fw_wait();
}

static void fault(void) {
    for (;;) __asm__ volatile("bkpt #2");
}
void NMI_Handler(void) __attribute__((alias("fault")));
void HardFault_Handler(void) __attribute__((alias("fault")));

__attribute__((section(".isr_vector"), used)) const void *const tt_vectors[16] = {
    (const void *)_estack, (const void *)Reset_Handler, (const void *)NMI_Handler, (const void *)HardFault_Handler,
    (const void *)fault, (const void *)fault, (const void *)fault, 0, 0, 0, 0,
    (const void *)fault, (const void *)fault, 0, (const void *)fault, (const void *)fault,
};
