"""`run --target emulated`: the firmware image (firmware.py) on an emulated Cortex-M (Unicorn, PyPI `unicorn`).

    mcu = EmulatedMCU(Path("runs/fw"))           # maps ONLY the profile's flash (r-x) and SRAM (rw-), boots
    loss, applied = mcu.step(x_int8, io)           # through the mailbox (firmware/mailbox.h)
    tr = EmulatedTrainer(bundle, optim, mcu)       # a ProgramTrainer whose program runs on the chip

Any other access (an unmapped address, a write to flash, an instruction fetched from SRAM, the stack running
off the start of SRAM) stops the run with EmulatorFault: the address, the PC and the C function it was in.
Instructions are counted with a block hook on the steps asked for (count=True): each translated block's
Thumb instructions are decoded once (16- or 32-bit by their first halfword), so the count is exact; a
per-instruction hook would be ~250x slower. Time at the profile's clock is a lower-bound estimate: one
instruction per cycle, no flash wait states, no cache model (a Cortex-M7 can also issue two per cycle).
"""
from __future__ import annotations

import bisect
import json
import struct
from pathlib import Path

import numpy as np

from device import ProgramTrainer

# tt_mailbox_t (firmware/mailbox.h): field -> (byte offset, struct format)
MB = {"magic": (0, "<I"), "ready": (4, "<I"), "cmd": (8, "<I"), "status": (12, "<i"), "where": (16, "<i"),
      "done": (20, "<I"), "x_addr": (24, "<I"), "x_bytes": (28, "<I"), "logits_addr": (32, "<I"), "classes": (36, "<I"),
      "pred": (40, "<i"), "arena_addr": (44, "<I"), "first": (48, "<i"), "last": (52, "<i"), "label": (56, "<i"),
      "io_first": (60, "<i"), "lr": (64, "<f"), "sqrt_c2": (68, "<f"), "loss": (72, "<f"), "applied": (76, "<i"),
      "ck_seq": (80, "<I"), "ck_steps": (84, "<i")}
MB_MAGIC, MB_READY = 0x424D5454, 0x52454459
CMD_STEP, CMD_PREDICT, CMD_CHECKPOINT = 1, 2, 4
BKPT_WAIT, BKPT_FAULT, BKPT_FLASH = 1, 2, 3      # fw_main.c: the host's turn, a fault handler, a flash write
PAGE = 4096
STACK_PAINT = 0xC5
UC_MODELS = {"cortex-m4f": "UC_CPU_ARM_CORTEX_M4", "cortex-m7f": "UC_CPU_ARM_CORTEX_M7", "cortex-m33f": "UC_CPU_ARM_CORTEX_M33"}
CORE_ERRORS = {1: "bad program header", 2: "an op the core lacks", 3: "arena smaller than the plan",
               4: "model size differs from the program's", 5: "bad arguments", 6: "a reference out of its memory"}


class EmulatorFault(RuntimeError):
    """The firmware did something the chip would fault on, or the core returned an error."""


class EmulatorPowerCut(RuntimeError):
    """The power was cut during a flash write (arm it with EmulatedMCU.cut_flash_after)."""


def _page(n: int) -> int:
    return -(-n // PAGE) * PAGE


class EmulatedMCU:
    def __init__(self, fw_dir: Path, max_instructions: int = 2_000_000_000, keep_flash: bytes | None = None):
        """keep_flash: the checkpoint slots' bytes from an earlier power-on (ckpt_region()): flash keeps them."""
        import unicorn as uc
        from unicorn import arm_const
        from elftools.elf.elffile import ELFFile
        self.dir = Path(fw_dir)
        self.meta = json.loads((self.dir / "firmware.json").read_text())
        s = self.meta["sizes"]
        self.flash_origin, self.sram_origin = s["flash_origin"], s["sram_origin"]
        self.flash_len, self.sram_len = s["flash"]["budget"], s["sram"]["budget"]
        with open(self.dir / "firmware.elf", "rb") as f:
            e = ELFFile(f)
            funcs = sorted((sym["st_value"] & ~1, sym["st_size"], sym.name) for sym in e.get_section_by_name(".symtab").iter_symbols()
                           if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"])
        self._funcs, self._starts = funcs, [a for a, _, _ in funcs]
        self.uc, self.arm = uc, arm_const
        self.emu = uc.Uc(uc.UC_ARCH_ARM, uc.UC_MODE_THUMB | uc.UC_MODE_MCLASS)
        self.emu.ctl_set_cpu_model(getattr(arm_const, UC_MODELS[self.meta["cpu"]]))   # before any mem_map
        image = (self.dir / "firmware.bin").read_bytes()
        if len(image) > self.flash_len:
            raise EmulatorFault(f"{self.dir / 'firmware.bin'}: {len(image):,} bytes, more than the {self.flash_len:,} of flash")
        # only the profile's regions (page-rounded: Unicorn maps 4 KB pages)
        self.emu.mem_map(self.flash_origin, _page(self.flash_len), uc.UC_PROT_READ | uc.UC_PROT_EXEC)
        self.emu.mem_map(self.sram_origin, _page(self.sram_len), uc.UC_PROT_READ | uc.UC_PROT_WRITE)
        self.emu.mem_write(self.flash_origin, image)
        self.flash_image = image
        self.ckpt = s["symbols"]["tt_ckpt_slots"]
        self.ckpt_len = 2 * int(self.meta["checkpoint_slot_bytes"])
        self.emu.mem_write(self.ckpt, keep_flash if keep_flash is not None else b"\xff" * self.ckpt_len)  # erased: 0xFF
        self.flash_writes = self.flash_bytes = 0
        self.cut_flash_after: int | None = None     # bytes of flash writes before the power is cut (tests)
        self.fault: str | None = None
        self.stopped_at_bkpt: int | None = None
        self.emu.hook_add(uc.UC_HOOK_MEM_UNMAPPED | uc.UC_HOOK_MEM_WRITE_PROT | uc.UC_HOOK_MEM_FETCH_PROT, self._on_bad)
        self.emu.hook_add(uc.UC_HOOK_INTR, self._on_intr)
        self._blocks: dict[tuple[int, int], int] = {}
        self.instructions = 0
        self.max_instructions = max_instructions
        self.mailbox = s["symbols"]["tt_mailbox"]
        self.arena = s["symbols"]["tt_arena"]
        self.stack_bytes = int(self.meta["stack_bytes"])
        self.emu.mem_write(self.sram_origin, bytes([STACK_PAINT]) * self.stack_bytes)   # to measure its high-water mark
        sp, pc = struct.unpack_from("<II", image, 0)
        self.emu.reg_write(arm_const.UC_ARM_REG_SP, sp)
        self._resume(pc)
        if self._mb("magic") != MB_MAGIC or self._mb("ready") != MB_READY:
            raise EmulatorFault(f"{self.dir}: the firmware did not boot (mailbox magic {self._mb('magic'):#x})")

    # ---- memory and mailbox ----------------------------------------------------------------------------
    def _mb(self, field: str):
        off, fmt = MB[field]
        return struct.unpack(fmt, self.emu.mem_read(self.mailbox + off, struct.calcsize(fmt)))[0]

    def _set(self, field: str, v) -> None:
        off, fmt = MB[field]
        self.emu.mem_write(self.mailbox + off, struct.pack(fmt, v))

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.emu.mem_read(addr, n))

    def write(self, addr: int, data: bytes) -> None:
        self.emu.mem_write(addr, bytes(data))

    # ---- running --------------------------------------------------------------------------------------
    def where(self, pc: int) -> str:
        k = bisect.bisect_right(self._starts, pc & ~1) - 1
        if k >= 0:
            a, n, name = self._funcs[k]
            if a <= pc & ~1 < a + n:
                return f"{name}+{(pc & ~1) - a:#x}"
        return "?"

    def _on_bad(self, emu, access, address, size, value, _):
        pc = emu.reg_read(self.arm.UC_ARM_REG_PC)
        u = self.uc
        kind = {u.UC_MEM_WRITE_PROT: "write to flash (read-only)", u.UC_MEM_FETCH_PROT: "instruction fetch from SRAM",
                u.UC_MEM_READ_UNMAPPED: "read of unmapped memory", u.UC_MEM_WRITE_UNMAPPED: "write to unmapped memory",
                u.UC_MEM_FETCH_UNMAPPED: "fetch from unmapped memory"}.get(access, f"access {access}")
        if access == u.UC_MEM_WRITE_UNMAPPED and self.sram_origin - 4096 <= address < self.sram_origin:
            kind += " (the stack ran off the start of SRAM: a stack overflow)"
        self.fault = f"{kind} at {address:#010x} ({size} bytes), PC {pc:#010x} in {self.where(pc)}"
        return False

    def _on_intr(self, emu, intno, _):
        pc = emu.reg_read(self.arm.UC_ARM_REG_PC)
        self.stopped_at_bkpt = pc
        emu.emu_stop()

    def _flash_write(self) -> None:
        """Service fw_main.c's tt_fw_flash_write (bkpt #3: r0 destination, r1 source, r2 bytes): the flash
        controller's job, only inside the checkpoint slots."""
        a = self.arm
        dst, src, n = (self.emu.reg_read(r) for r in (a.UC_ARM_REG_R0, a.UC_ARM_REG_R1, a.UC_ARM_REG_R2))
        if not (self.ckpt <= dst and dst + n <= self.ckpt + self.ckpt_len):
            raise EmulatorFault(f"emulated {self.meta['cpu']}: a flash write of {n} bytes at {dst:#010x}, outside the "
                                f"checkpoint slots [{self.ckpt:#010x}, {self.ckpt + self.ckpt_len:#010x})")
        data = self.read(src, n)
        if self.cut_flash_after is not None and self.cut_flash_after < n:
            self.write(dst, data[:self.cut_flash_after])
            self.cut_flash_after = None
            raise EmulatorPowerCut(f"power cut during a flash write at {dst:#010x} ({n} bytes)")
        if self.cut_flash_after is not None:
            self.cut_flash_after -= n
        self.write(dst, data)
        self.flash_writes += 1
        self.flash_bytes += n

    def _on_block(self, emu, address, size, _):
        n = self._blocks.get((address, size))
        if n is None:
            code = bytes(emu.mem_read(address, size))
            n = k = 0
            while k < size:
                hw = code[k] | code[k + 1] << 8
                k += 4 if hw >> 11 in (0b11101, 0b11110, 0b11111) else 2
                n += 1
            self._blocks[(address, size)] = n
        self.instructions += n

    def _resume(self, pc: int) -> None:
        self.stopped_at_bkpt, self.fault = None, None
        try:
            self.emu.emu_start(pc | 1, 0xFFFFFFFF, count=self.max_instructions)
        except self.uc.UcError as e:
            pc_now = self.emu.reg_read(self.arm.UC_ARM_REG_PC)
            raise EmulatorFault(f"emulated {self.meta['cpu']} ({self.dir.name}): "
                                f"{self.fault or e} (PC {pc_now:#010x} in {self.where(pc_now)})") from None
        if self.fault:
            raise EmulatorFault(f"emulated {self.meta['cpu']}: {self.fault}")
        if self.stopped_at_bkpt is None:
            pc_now = self.emu.reg_read(self.arm.UC_ARM_REG_PC)
            raise EmulatorFault(f"emulated {self.meta['cpu']}: no answer within {self.max_instructions:,} instructions "
                                f"(PC {pc_now:#010x} in {self.where(pc_now)})")
        imm = self.read(self.stopped_at_bkpt, 2)[0]       # bkpt #imm is 0xBEii
        if imm == BKPT_FLASH:
            self._flash_write()
            return self._resume(self.stopped_at_bkpt + 2)
        if imm != BKPT_WAIT:
            raise EmulatorFault(f"emulated {self.meta['cpu']}: the firmware stopped in "
                                f"{self.where(self.stopped_at_bkpt)} (a fault handler)")

    def command(self, cmd: int, count: bool = False) -> int:
        """Run one mailbox command; returns the instructions it took when count (else 0)."""
        h = None
        if count:   # block hooks are compiled into translated code: drop the cached translations both ways
            h = self.emu.hook_add(self.uc.UC_HOOK_BLOCK, self._on_block)
            self.emu.ctl_flush_tb()
        before = self.instructions
        self._set("cmd", cmd)
        done = self._mb("done")
        try:
            self._resume(self.stopped_at_bkpt_next())
        finally:
            if h is not None:
                self.emu.hook_del(h)
                self.emu.ctl_flush_tb()
        if self._mb("done") != done + 1:
            raise EmulatorFault("the firmware did not answer the command")
        rc = self._mb("status")
        if rc:
            raise EmulatorFault(f"the C core on the emulated {self.meta['cpu']} stopped at step instruction "
                                f"{self._mb('where')}: {CORE_ERRORS.get(rc, f'error {rc}')}")
        return self.instructions - before if count else 0

    def stopped_at_bkpt_next(self) -> int:
        """Where to resume: the instruction after the breakpoint tt_fw_wait stopped on."""
        return self.emu.reg_read(self.arm.UC_ARM_REG_PC) + 2

    # ---- the learner ----------------------------------------------------------------------------------
    def step(self, x: np.ndarray, io, first: int = 0, last: int = -1, count: bool = False) -> int:
        self.write(self._mb("x_addr"), np.ascontiguousarray(x).tobytes())
        for f, v in (("label", io.label), ("io_first", io.first), ("lr", io.lr), ("sqrt_c2", io.sqrt_c2),
                     ("first", first), ("last", last)):
            self._set(f, v)
        n = self.command(CMD_STEP, count)
        io.loss, io.applied = self._mb("loss"), self._mb("applied")
        return n

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.write(self._mb("x_addr"), np.ascontiguousarray(x).tobytes())
        self.command(CMD_PREDICT)
        k = self._mb("classes")
        return np.frombuffer(self.read(self._mb("logits_addr"), 4 * k), "<f4").copy()

    def checkpoint(self, steps: int) -> int:
        """The firmware writes its trainable state into the older flash slot; returns the sequence number."""
        self._set("ck_steps", int(steps))
        self.command(CMD_CHECKPOINT)
        return self._mb("ck_seq")

    def restored(self) -> tuple[int, int]:
        """(sequence number, steps) of the checkpoint the firmware restored at boot; (0, -1): none."""
        return self._mb("ck_seq"), self._mb("ck_steps")

    def ckpt_region(self) -> bytes:
        return self.read(self.ckpt, self.ckpt_len)

    def arena_bytes(self, offset: int, n: int) -> bytes:
        return self.read(self.arena + offset, n)

    def set_arena_bytes(self, offset: int, data: bytes) -> None:
        self.write(self.arena + offset, data)

    def stack_used(self) -> int:
        """The stack's high-water mark in bytes: how much of the painted stack region was ever written."""
        region = self.read(self.sram_origin, self.stack_bytes)
        untouched = len(region) - len(region.lstrip(bytes([STACK_PAINT])))
        return self.stack_bytes - untouched

    def flash_unchanged(self) -> bool:
        """The image's bytes (code, program, model, initial state) are as built: only the checkpoint slots change."""
        return self.read(self.flash_origin, len(self.flash_image)) == self.flash_image


class EmulatedTrainer(ProgramTrainer):
    """The step program on the emulated chip: the host keeps the schedule and the data; the chip holds the
    arena (parameters, optimizer state, activations). state()/load_state() go through the chip's memory."""

    def __init__(self, bundle, optim, fw_dir: Path, keep_flash: bytes | None = None, **kw):
        super().__init__(bundle, optim, engine="numpy", **kw)
        self.mcu = EmulatedMCU(fw_dir, keep_flash=keep_flash)
        import hashlib
        mine = hashlib.sha256(self.program.encode().tobytes()).hexdigest()
        if mine != self.mcu.meta["program_sha256"]:
            raise EmulatorFault(f"{fw_dir}: the image runs another step program (built for other trainables or "
                                "another optimizer?): rebuild it with `python -m firmware_sim build`")
        self.count_next = False
        self.step_instructions: list[int] = []

    def _run(self, section: str, io, profile=None) -> None:
        first, last = self.program.section(section)
        cut = None
        if self.cut_at is not None and first <= self.cut_at[0] < last:
            (last, cut), self.cut_at = self.cut_at, None
        x = self.x_view
        if section == "step":
            n = self.mcu.step(x, io, first, last, count=self.count_next)
            if self.count_next:
                self.step_instructions.append(n)
                self.count_next = False
        elif section == "forward":
            self.arena["logits"].reshape(-1)[...] = self.mcu.predict(x)
        elif section != "head":
            raise ValueError(f"section {section}: the firmware runs step, forward and head")
        if cut is not None:
            cut()

    def _pull(self) -> None:
        for name in self._state_buffers():
            v = self.arena[name]
            v.reshape(-1).view(np.uint8)[...] = np.frombuffer(self.mcu.arena_bytes(self.plan.offsets[name], v.nbytes), np.uint8)

    def _push(self) -> None:
        for name in self._state_buffers():
            self.mcu.set_arena_bytes(self.plan.offsets[name], np.ascontiguousarray(self.arena[name]).tobytes())

    def _state_buffers(self) -> list[str]:
        return [n for n in self.specs if n.split(":")[0] in ("param", "opt0", "opt1")]

    @property
    def params(self):
        self._pull()
        return super().params

    def state(self):
        """The chip checkpoints itself into flash (two slots), then the host reads the same state from the arena."""
        self.mcu.checkpoint(self.updates)
        self._pull()
        return super().state()

    def load_state(self, st) -> None:
        super().load_state(st)
        if hasattr(self, "mcu"):
            self._push()


# ---- QEMU's MPS2 boards: the second gate (QEMU enforces the CPU model, Unicorn does not) ---------------------
MPS2 = {"cortex-m7f": "mps2-an500", "cortex-m4f": "mps2-an386"}


def run_mps2(fw_dir: Path, timeout: float = 600) -> dict[int, bytes]:
    """Run a self-running image (build_firmware(..., flash_origin=0, script=...)) on QEMU's MPS2 board for its
    cpu; returns the state it printed over semihosting, arena offset -> bytes. EmulatorFault if QEMU stops
    otherwise (an instruction the CPU lacks is a UsageFault: the image hangs in its fault handler until timeout)."""
    import shutil
    import subprocess
    meta = json.loads((Path(fw_dir) / "firmware.json").read_text())
    machine = MPS2.get(meta["cpu"])
    if machine is None:
        raise EmulatorFault(f"no QEMU MPS2 board for {meta['cpu']} (boards: {', '.join(f'{c}: {m}' for c, m in MPS2.items())})")
    qemu = shutil.which("qemu-system-arm")
    if qemu is None:
        raise EmulatorFault("qemu-system-arm is not installed (Debian package qemu-system-arm; `make emulators` as root)")
    try:
        r = subprocess.run([qemu, "-M", machine, "-nographic", "-semihosting", "-kernel", str(Path(fw_dir) / "firmware.elf")],
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EmulatorFault(f"{machine}: no exit within {timeout:g} s (a fault handler loops: an instruction "
                            f"{meta['cpu']} lacks?)") from None
    state = {}
    for line in r.stderr.splitlines():
        off, sep, hx = line.partition(":")
        if sep and len(off) == 8:
            state[int(off, 16)] = bytes.fromhex(hx)
    if r.returncode != 0:
        code = state.get(0xFFFFFFFF)
        raise EmulatorFault(f"{machine}: exit {r.returncode}" + (f", the C core's error {int.from_bytes(code, 'little')}"
                                                                 if code else "") + f"; {r.stderr[-300:]}")
    return state


def state_bytes(printed: dict[int, bytes], offset: int, n: int) -> bytes:
    """The n bytes at arena `offset` from run_mps2's 32-byte lines."""
    return b"".join(printed[o] for o in range(offset, offset + n, 32))[:n]
