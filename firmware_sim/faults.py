"""Power-loss injection: cut the run mid-step (forward, backward, optimizer update) or mid-checkpoint-write
(torn temp file, before fsync, before the atomic rename, after it but before old checkpoints are deleted).

On power loss everything in SRAM (the arena) is gone; only the checkpoint directory survives. The cut is a
BaseException so no `except Exception` on the way can swallow it. It goes in through the runtime's fault seam,
nothing is patched: `Trainer.on_phase(step, phase, done, total)` is called at every point the trainer (and each
checkpoint save the learning loop makes) can be stopped at, and raises PowerLoss at the chosen one; a step
program, which runs as one piece, is stopped at an instruction instead (`ProgramTrainer.cut_at`), armed when
the step begins.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy as np

STEP_PHASES = ("forward", "backward", "update")
CKPT_PHASES = ("ckpt-write", "ckpt-fsync", "ckpt-rename", "ckpt-cleanup")
PHASES = STEP_PHASES + CKPT_PHASES
WHERE = {  # phase -> what the power-loss message says happened (done, total: the seam's units)
    "forward": "in the forward, after op {done} of {total}",
    "backward": "in the backward, after {done} of {total} ops",
    "update": "in the optimizer update, after {done} of {total} parameters",
    "ckpt-write": "writing a checkpoint, after {done} of {total} bytes",
    "ckpt-fsync": "before fsync of a checkpoint",
    "ckpt-rename": "before the checkpoint rename",
    "ckpt-cleanup": "after the checkpoint rename, before cleanup",
}


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


@contextlib.contextmanager
def inject(cut: Cut | None, tr):
    """Arm `cut` on trainer `tr` for the block (its on_phase seam); disarmed on exit."""
    if cut is None:
        yield
        return
    tr.on_phase = _cutter(cut, tr)
    try:
        yield
    finally:
        tr.on_phase = None
        if hasattr(tr, "cut_at"):
            tr.cut_at = None


def _cutter(cut: Cut, tr):
    """The on_phase hook for `cut`: PowerLoss once `fraction` of the phase's units are done, at the first step
    (or checkpoint) at or after cut.step."""
    program = getattr(tr, "program", None)

    def on_phase(step: int, phase: str, done: int, total: int) -> None:
        if step < cut.step:
            return
        if phase == "step":   # a step program: stop at the instruction `fraction` into the phase's section
            if program is not None and cut.phase in STEP_PHASES:
                first, last = program.section(cut.phase)
                at = first + int(cut.fraction * (last - first))

                def lose() -> None:
                    raise PowerLoss(f"power lost in the {cut.phase}, before instruction {at} of the step program "
                                    f"({program.instrs[at].note}; {cut})")
                tr.cut_at = (at, lose)
        elif phase == cut.phase and done >= int(cut.fraction * total):
            raise PowerLoss(f"power lost {WHERE[phase].format(done=done, total=total)} ({cut})")
    return on_phase
