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


def every_tensor_equal(tflite: bytes, xs: np.ndarray) -> int:
    """Compile `tflite` into an inference program with nothing overlapping (plan_naive), run each input with numpy
    and with the C core, and compare every int8 tensor the program writes with LiteRT's reference kernels
    (preserve_all_tensors) and the numpy engine, byte for byte. Returns how many tensors were compared per input."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from device.engine import Engine
    from device.planner import plan_naive
    from device.step.infer import _Operands, compile_inference
    c = native_core()
    prog, offsets, m = compile_inference(tflite, planner=plan_naive)
    at = _Operands(m.tensors, offsets)
    hidden = {t for ins in prog.instrs for t in ins.hides}
    it = Interpreter(model_content=tflite, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    eng = Engine(tflite, exact_float=True)
    mb = np.frombuffer(prog.model, np.uint8)
    words, notes = prog.encode(), [i.note for i in prog.instrs]
    x_ref = at.ref(m.inputs[0])
    checked = 0
    for x in xs:
        x = x[None]
        arenas = [np.zeros(max(prog.arena_bytes, 1), np.uint8) for _ in range(2)]
        for a in arenas:
            view(a, x_ref)[...] = x
        run_numpy(prog, Memory(arenas[0], mb, IO()))
        c.run(words, arenas[1], mb, IO(), notes=notes)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        _, env = eng.run(x, intermediates=True)
        checked = 0
        for i in [int(k[4:]) for k in offsets if k.startswith("act:")]:
            if i in hidden or m.tensors[i].dtype != np.int8:
                continue
            ref = it.get_tensor(i)
            got_np, got_c = view(arenas[0], at.ref(i)), view(arenas[1], at.ref(i))
            name = f"tensor #{i} '{m.tensors[i].name}'"
            assert np.array_equal(got_np, ref.reshape(got_np.shape)), f"{name}: numpy program != LiteRT reference"
            assert np.array_equal(got_c, got_np), f"{name}: C core != numpy program"
            assert np.array_equal(env[i].reshape(got_np.shape), got_np), f"{name}: engine != program"
            checked += 1
    return checked
