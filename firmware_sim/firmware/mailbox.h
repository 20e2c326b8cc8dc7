/* The firmware's mailbox: the one place the host (a debugger, a UART bridge, the emulator) and the learner meet.
 * 88 bytes at the symbol `tt_mailbox`, in SRAM (counted in the budget like everything else).
 *
 * Protocol: the firmware boots, copies the initial trainable state into the arena, sets `ready` to
 * TT_MB_READY and waits (`tt_fw_wait`: a breakpoint the host catches; on a chip, an interrupt or a poll).
 * The host then writes the sample's int8 bytes at `x_addr` (x_bytes of them: the model input's buffer inside
 * the arena, no copy), fills `io` (label, learning rate: tt_io in device/native/core/tt.h) and sets `cmd`:
 *   TT_CMD_STEP     forward, loss, backward, update on the sample: io.loss and io.applied come back
 *                   (instructions [first, last) of the step; 0, -1 for all of it)
 *   TT_CMD_PREDICT  forward and classifier only: the float logits are at `logits_addr` (classes of them),
 *                   their argmax in `pred`
 *   TT_CMD_ARENA    nothing runs: the host reads or writes the trainable state in the arena at the offsets
 *                   the build's manifest lists (checkpoints, restore)
 *   TT_CMD_CHECKPOINT  the trainable state (parameters, optimizer state) into the older of the two flash slots,
 *                   with ck_steps, a sequence number and a CRC-32, header last: a cut during the write loses at
 *                   most this checkpoint. At boot the valid slot with the highest sequence number is restored
 *                   (ck_seq, ck_steps tell which; 0 and -1: none, the build's initial state)
 * The firmware answers with `status` (0 or the core's error code, `where` the instruction), bumps `done`
 * and waits again. Addresses are the chip's (32-bit). */
#ifndef TT_MAILBOX_H
#define TT_MAILBOX_H
#include <stdint.h>
#include "tt.h"

#define TT_MB_MAGIC 0x424D5454u  /* "TTMB" */
#define TT_MB_READY 0x52454459u  /* "YDER" */
enum { TT_CMD_NONE = 0, TT_CMD_STEP = 1, TT_CMD_PREDICT = 2, TT_CMD_ARENA = 3, TT_CMD_CHECKPOINT = 4 };

typedef struct {
    uint32_t magic;        /* TT_MB_MAGIC */
    uint32_t ready;        /* TT_MB_READY once booted */
    uint32_t cmd;          /* in: TT_CMD_* */
    int32_t status;        /* out: 0 ok, else the core's TT_ERR_* */
    int32_t where;         /* out: the failing instruction, -1 none */
    uint32_t done;         /* out: commands answered since boot */
    uint32_t x_addr;       /* the model input's buffer (inside the arena) */
    uint32_t x_bytes;
    uint32_t logits_addr;  /* the float logits (inside the arena) */
    uint32_t classes;
    int32_t pred;          /* out: argmax of the logits after TT_CMD_PREDICT */
    uint32_t arena_addr;   /* the arena's first byte: the manifest's offsets start here */
    int32_t first, last;   /* in: TT_CMD_STEP runs program instructions [first, last) (0, -1: the whole step;
                              the host's power-cut tests stop a step part-way) */
    tt_io io;              /* in: label, first, lr, sqrt_c2; out: loss, applied (24 bytes) */
    uint32_t ck_seq;       /* out: the sequence number of the last checkpoint written or restored (0: none) */
    int32_t ck_steps;      /* in: TT_CMD_CHECKPOINT's step count; out at boot: the restored one (-1: none) */
} tt_mailbox_t;

#endif
