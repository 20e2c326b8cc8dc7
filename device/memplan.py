"""The update step's memory: its buffers with lifetimes from the step's op schedule, and the arena it runs in.

Schedule of one step (step numbers are the planner's time axis):
  0 .. T-1         the .tflite ops, in order (forward, int8 with float islands)
  T                loss: float classifier head on the pooled features, cross entropy, d logits
  T+1 .. T+B       backward of the graph ops that need a gradient, last op first
  T+B+1            optimizer update of every trainable parameter
Buffers (kinds as in device/planner.py): the forward activations (.tflite tensors, engine dtype, from their
producing op to their last reader), saved tensors (a trainable weight's input, a GroupNorm's input; kept
in their engine dtype, int8 where the graph is int8) and 1-bit ReLU masks (ceil(n/8) bytes) from their
forward producer to the backward op that reads them; activation gradients (float32) from the first
backward op that writes them to the one that consumes them (so they die as soon as the op's bias
gradient and input gradient are taken); parameter gradients until the update; parameters and optimizer
state for the whole step; im2col columns of a backward conv for its one step.
The Arena is one preallocated byte array per region; every buffer is an ndarray view at its planned offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .planner import Buffer, Plan, check, plan_greedy


@dataclass(frozen=True)
class Spec:
    """A planned array: its buffer plus the dtype and shape of the view made of it."""
    buffer: Buffer
    dtype: str
    shape: tuple[int, ...]


def spec(name: str, dtype, shape, first: int, last: int, kind: str, layer: str = "", region: str = "sram") -> Spec:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) if shape else 1
    size = -(-n // 8) if kind == "mask" else n * dtype.itemsize  # bytes; a mask holds one bit per element
    return Spec(Buffer(name, size, first, last, region, kind, layer), dtype.name, tuple(int(d) for d in shape))


class Arena:
    """One np.uint8 array per region of the plan's peak size; view(name) is the buffer's typed window."""

    def __init__(self, plan: Plan, specs: dict[str, Spec], *, verify: bool = True, capacity: dict[str, int] | None = None):
        """capacity: bytes per region (>= the plan's peak; default the peak), e.g. a target's whole budget."""
        if verify:  # tests turn it off to show that a wrong plan really corrupts results
            check(plan)
        self.plan, self.specs = plan, specs
        size = {r: max(peak, (capacity or {}).get(r, peak)) for r, peak in plan.peak.items()}
        self.memory = {r: np.zeros(max(n, 1) + 64, np.uint8) for r, n in size.items()}
        self.base = {r: (-m.ctypes.data) % 64 for r, m in self.memory.items()}  # 64-byte aligned start
        self.views = {n: self._view(s) for n, s in specs.items()}

    def _view(self, s: Spec) -> np.ndarray:
        b = s.buffer
        mem = self.memory[b.region]
        start = self.base[b.region] + self.plan.offsets[b.name]
        raw = mem[start:start + b.size]
        if s.buffer.kind == "mask":
            return raw
        return raw.view(s.dtype).reshape(s.shape)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    @property
    def bytes(self) -> dict[str, int]:
        return dict(self.plan.peak)


def make_plan(specs: dict[str, Spec], planner=plan_greedy) -> Plan:
    plan = planner([s.buffer for s in specs.values()])
    check(plan)
    return plan


def per_layer(plan: Plan, region: str = "sram") -> list[tuple[str, dict[str, int]]]:
    """Bytes per layer and kind (the `device plan` table)."""
    rows: dict[str, dict[str, int]] = {}
    for b in plan.buffers:
        if b.region == region:
            r = rows.setdefault(b.layer or "-", {})
            r[b.kind] = r.get(b.kind, 0) + b.size
    return list(rows.items())
