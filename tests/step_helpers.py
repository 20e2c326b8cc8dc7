"""Shared by the step-program tests: run the same instructions on the numpy executor and on the C core."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from device.step import core  # noqa: F401  (registers the core ops)
from device.step.program import ARENA, IO, MODEL, Instr, Memory, Program, Ref, run_numpy


def native_core():
    """The host's C core, built from the current sources (skips, saying why, where ziglang is missing)."""
    from device.native import load
    from device.native.build import BuildError, build
    try:
        path = build()
    except BuildError as e:
        pytest.skip(f"the C core cannot be built here: {e}")
    core_ = load(path)
    assert core_ is not None, f"{path} was built but does not load"
    return core_


class Layout:
    """Places arrays one after another in an arena (64-byte aligned) or a model buffer, returning Refs."""

    def __init__(self, base: int):
        self.base, self.parts, self.size = base, [], 0

    def put(self, a: np.ndarray) -> Ref:
        a = np.ascontiguousarray(a)
        off = -(-self.size // 64) * 64
        self.parts.append((off, a))
        self.size = off + a.nbytes
        return Ref(self.base, off, a.dtype.name, tuple(a.shape))

    def empty(self, dtype, shape) -> Ref:
        return self.put(np.zeros(shape, dtype))

    def bytes(self) -> np.ndarray:
        buf = np.zeros(max(self.size, 1), np.uint8)
        for off, a in self.parts:
            buf[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
        return buf


def arena() -> Layout:
    return Layout(ARENA)


def model() -> Layout:
    return Layout(MODEL)


def run_both(instrs: list[Instr], a: Layout, m: Layout | None = None, io: IO | None = None):
    """Run `instrs` over copies of the same arena with numpy and with C. Returns (numpy arena, C arena,
    numpy io, C io): callers compare them byte for byte."""
    c = native_core()
    mb = (m or model()).bytes()
    prog = Program(instrs, arena_bytes=a.size, model=mb.tobytes())
    io_np, io_c = copy.copy(io or IO()), copy.copy(io or IO())
    mem = Memory(a.bytes(), mb, io_np)
    run_numpy(prog, mem)
    arena_c = a.bytes()
    c.run(prog.encode(), arena_c, mb, io_c, notes=[i.note for i in instrs])
    return mem.arena, arena_c, io_np, io_c


def view(buf: np.ndarray, ref: Ref) -> np.ndarray:
    return buf[ref.offset:ref.offset + ref.nbytes].view(ref.dtype).reshape(ref.shape)
