"""Inference of any int8 .tflite as a program: the activations planned into one arena (the same planner as the
update step), every op an instruction, run by the C core or numpy, one sample at a time (batch 1).

    net = InferenceProgram("model.tflite", engine="native")
    y = net.run(x_int8)            # (N, ...) in the model's output dtype, byte-equal to LiteRT's reference kernels
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..kernels import UnsupportedOpError
from ..planner import Buffer, plan_greedy
from ..tflite_reader import read_tflite
from .compile import encode_ops
from .program import ARENA, IO, MODEL, NONE, Memory, Program, ProgramError, Ref, native_core_for, run_numpy


class _Operands:
    def __init__(self, tensors, offsets):
        self.tensors, self.offsets = tensors, offsets

    def ref(self, i: int) -> Ref:
        if i < 0:
            return NONE
        t = self.tensors[i]
        if t.data is None:
            return Ref(ARENA, self.offsets[f"act:{i}"], np.dtype(t.dtype).name, tuple(t.shape))
        return Ref(MODEL, int(t.offset), np.dtype(t.dtype).name, tuple(t.shape))

    def bias(self, i: int):
        return self.ref(i), 0, None


def compile_inference(model: bytes, planner=plan_greedy) -> tuple[Program, dict[str, int], object]:
    """(program, activation offsets, parsed model): each non-constant tensor lives from the op producing it
    (the inputs from step 0) to its last reader (the outputs to the end)."""
    m = read_tflite(model)
    if m.num_subgraphs > 1:
        raise UnsupportedOpError(m.ops[0], m.tensors, "models with several subgraphs (control flow)")
    n = len(m.ops)
    first = {i: 0 for i in m.inputs}
    last: dict[int, int] = {}
    for k, op in enumerate(m.ops):
        for o in op.outputs:
            first.setdefault(o, k)
        for i in op.inputs:
            if i >= 0 and m.tensors[i].data is None:
                last[i] = k
    for o in m.outputs:
        last[o] = n
    bufs = []
    for i, k0 in first.items():
        t = m.tensors[i]
        if t.dtype is None:
            raise UnsupportedOpError(m.ops[k0], m.tensors, f"tensor '{t.name}' of type {t.type}")
        size = int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
        bufs.append(Buffer(f"act:{i}", size, k0, max(k0, last.get(i, k0)), "sram", "activation", t.name))
    plan = planner(bufs)
    at = _Operands(m.tensors, plan.offsets)
    instrs = []
    for _, ins in encode_ops(m, at, set(m.outputs)):
        instrs += ins
    prog = Program(instrs, arena_bytes=plan.peak.get("sram", 0), model=bytes(model), sections={"forward": (0, len(instrs))})
    return prog, plan.offsets, m


class InferenceProgram:
    def __init__(self, model: bytes | str | Path, engine: str = "native"):
        data = Path(model).read_bytes() if isinstance(model, (str, Path)) else bytes(model)
        self.program, offsets, self.tflite = compile_inference(data)
        self.engine = engine
        self.model = np.frombuffer(self.program.model, np.uint8)
        self.arena = np.zeros(max(self.program.arena_bytes, 1), np.uint8)
        t = self.tflite.tensors
        if len(self.tflite.inputs) != 1 or len(self.tflite.outputs) != 1:
            raise ProgramError("inference programs take models with one input and one output")
        i, o = self.tflite.inputs[0], self.tflite.outputs[0]
        self.input = _Operands(t, offsets).ref(i)
        self.output = _Operands(t, offsets).ref(o)
        self.core = None
        if engine == "native":
            self.core, self.words = native_core_for(self.program)
        self.notes = [ins.note for ins in self.program.instrs]

    def _view(self, ref: Ref) -> np.ndarray:
        return self.arena[ref.offset:ref.offset + ref.nbytes].view(ref.dtype).reshape(ref.shape)

    def run(self, x: np.ndarray, profile: dict | None = None) -> np.ndarray:
        x = np.asarray(x)
        xin, yout = self._view(self.input), self._view(self.output)
        if x.dtype != xin.dtype or x.shape[1:] != xin.shape[1:]:
            raise ValueError(f"input must be {xin.dtype} (N, {', '.join(map(str, xin.shape[1:]))}), got {x.dtype} {x.shape}")
        out = np.zeros((len(x),) + yout.shape[1:], yout.dtype)
        io = IO()
        for k in range(len(x)):
            xin[...] = x[k:k + 1]
            if self.core is not None:
                self.core.run(self.words, self.arena, self.model, io, notes=self.notes)
            else:
                run_numpy(self.program, Memory(self.arena, self.model, io), profile=profile)
            out[k] = yout[0]
        return out
