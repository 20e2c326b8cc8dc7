"""Power-loss injection: cut the run mid-step (forward, backward, optimizer update) or mid-checkpoint-write
(torn temp file, before fsync, before the atomic rename, after it but before old checkpoints are deleted).

On power loss everything in SRAM (the arena) is gone; only the checkpoint directory survives. The cut is a
BaseException so no `except Exception` on the way can swallow it. Checkpoint cuts patch only the names
device/checkpoint.py looks up (`open`, `os`) for the duration of the `inject` block.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import numpy as np

import device.checkpoint as ck
import device.trainer as dtrainer

STEP_PHASES = ("forward", "backward", "update")
CKPT_PHASES = ("ckpt-write", "ckpt-fsync", "ckpt-rename", "ckpt-cleanup")
PHASES = STEP_PHASES + CKPT_PHASES


class PowerLoss(BaseException):
    """The power failed; the message says where."""


@dataclass(frozen=True)
class Cut:
    step: int                 # 0-based step index (the sample position) at or after which the power fails
    phase: str = "backward"   # one of PHASES; checkpoint phases hit the first checkpoint written at >= step
    fraction: float = 0.5     # how far into the phase (ops, parameters, or bytes of the file)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"power-loss phase '{self.phase}': choose one of {', '.join(PHASES)}")
        if self.step < 0 or not 0 <= self.fraction < 1:
            raise ValueError(f"power-loss cut {self}: step must be >= 0 and fraction in [0, 1)")

    def __str__(self) -> str:
        return f"step {self.step} {self.phase} at {self.fraction:.0%}"


def parse_cut(text: str, steps: int, rng: np.random.Generator) -> Cut:
    """'STEP', 'STEP:PHASE' or 'random' (a random step in [1, steps) and phase, from `rng`)."""
    if text == "random":
        return Cut(int(rng.integers(1, max(2, steps))), PHASES[int(rng.integers(len(PHASES)))], float(rng.uniform(0, 0.95)))
    m = re.fullmatch(r"(\d+)(?::([a-z-]+))?", text)
    if not m:
        raise ValueError(f"--power-loss-at {text!r}: expected STEP, STEP:PHASE ({', '.join(PHASES)}) or random")
    return Cut(int(m.group(1)), m.group(2) or "backward")


class _TornFile:
    """A file that accepts `limit` bytes, then the power goes."""

    def __init__(self, f, limit: int, cut: Cut):
        self._f, self._left, self._cut = f, limit, cut

    def write(self, b) -> int:
        b = memoryview(b).cast("B")
        if len(b) > self._left:
            self._f.write(b[:self._left])
            self._f.flush()
            os.fsync(self._f.fileno())  # what reached the card before the cut is really there
            raise PowerLoss(f"power lost writing a checkpoint ({self._cut})")
        self._left -= len(b)
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


class _FaultyOS:
    """device.checkpoint's view of `os`: fails at the chosen call."""

    def __init__(self, cut: Cut):
        self._cut = cut
        self._fsyncs = 0

    def fsync(self, fd) -> None:
        if self._cut.phase == "ckpt-fsync":
            raise PowerLoss(f"power lost before fsync of a checkpoint ({self._cut})")
        os.fsync(fd)

    def replace(self, src, dst) -> None:
        if self._cut.phase == "ckpt-rename":
            raise PowerLoss(f"power lost before the checkpoint rename ({self._cut})")
        os.replace(src, dst)
        if self._cut.phase == "ckpt-cleanup":
            raise PowerLoss(f"power lost after the checkpoint rename, before cleanup ({self._cut})")

    def __getattr__(self, name):
        return getattr(os, name)


@contextlib.contextmanager
def inject(cut: Cut | None, tr):
    """Arm `cut` on trainer `tr` (and on device.checkpoint) for the block; everything is restored on exit."""
    if cut is None:
        yield
        return
    restore = []
    if cut.phase in STEP_PHASES:
        orig_step = tr.step

        def step(x, label, *, step_index=None):
            if step_index is not None and step_index >= cut.step:
                _arm_step(tr, cut, restore)
            return orig_step(x, label, step_index=step_index)
        tr.step = step
        restore.append(lambda: tr.__dict__.pop("step", None))
    else:
        orig_save = ck.save

        def save(directory, state, meta):
            if int(meta["step"]) < cut.step:
                return orig_save(directory, state, meta)
            if cut.phase == "ckpt-write":
                real_open = open

                def torn_open(path, mode="r", *a, **k):
                    f = real_open(path, mode, *a, **k)
                    return _TornFile(f, int(cut.fraction * _npz_size(state, meta)), cut) if "w" in mode else f
                ck.open = torn_open
            else:
                ck.os = _FaultyOS(cut)
            try:
                return orig_save(directory, state, meta)
            finally:
                ck.__dict__.pop("open", None)
                ck.os = os
        ck.save = save
        restore.append(lambda: setattr(ck, "save", orig_save))
    try:
        yield
    finally:
        for r in reversed(restore):
            r()


def _npz_size(state: dict, meta: dict) -> int:
    import io
    import json
    buf = io.BytesIO()
    np.savez(buf, **state, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8))
    return buf.tell()


def _arm_step(tr, cut: Cut, restore: list) -> None:
    """Make this step fail partway through its phase."""
    if hasattr(tr, "program"):  # the step program: stop at the instruction `fraction` into the phase's section
        first, last = tr.program.section(cut.phase)
        at = first + int(cut.fraction * (last - first))

        def lose() -> None:
            raise PowerLoss(f"power lost in the {cut.phase}, before instruction {at} of the step program "
                            f"({tr.program.instrs[at].note}; {cut})")
        tr.cut_at = (at, lose)
        return
    if cut.phase == "forward":
        ops = len(tr.engine.ops)
        at = int(cut.fraction * ops)
        base = tr._hook or tr._saver()

        def hook(k, o, y):
            base(k, o, y)
            if k >= at:
                raise PowerLoss(f"power lost in the forward, op {k} of {ops} ({cut})")
        tr._hook = hook
    elif cut.phase == "backward":
        full = tr.bwd
        keep = int(cut.fraction * len(full))
        orig = tr.backward

        def backward(dlogits):
            tr.bwd = full[:keep]
            try:
                orig(dlogits)
            finally:
                tr.bwd = full
            raise PowerLoss(f"power lost in the backward, after {keep} of {len(full)} ops ({cut})")
        tr.backward = backward
    else:
        orig_update = dtrainer.update

        def update(cfg, params, grads, state, lr, t):
            names = list(params)
            n = int(cut.fraction * len(names))
            orig_update(cfg, {k: params[k] for k in names[:n]}, grads, state, lr, t)
            raise PowerLoss(f"power lost in the optimizer update, after {n} of {len(names)} parameters ({cut})")
        dtrainer.update = update
        restore.append(lambda: setattr(dtrainer, "update", orig_update))
