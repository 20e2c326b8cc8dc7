"""The step program: a flat list of instructions over three memories, and its binary form for the C core.

    prog = Program(instrs, arena_bytes=plan_peak, model=tflite_bytes)
    words = prog.encode()                        # np.int32 array: what the C core (and the firmware) runs
    run_numpy(prog, Memory(arena, model, io))    # the numpy reference executes the same instructions

An instruction is an op name and its arguments, in the op's schema order (OpDef.fields): sizes first, then
references to memory, then parameters. A reference (Ref) is (base, byte offset) plus the dtype and shape the
numpy executor views it as: base ARENA is the planned arena (read-write), MODEL the .tflite bytes
(read-only: the flash), NONE an absent operand. The binary form (device/native/core/tt.h): a header
(magic, version, instruction count, arena bytes, model bytes), then per instruction its opcode, its word
count and its argument words (int32; float32 as bits; float64 as two words, low first; arrays with a length
word first; a reference as two words).

Ops register themselves (`op(...)` decorator) from device/step/core.py, fwd.py and bwd.py, each with its
opcode (1..99 core, 100..199 forward, 200..299 backward: the same numbers as the C core's dispatch).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

MAGIC, VERSION = 0x31505454, 1
ARENA, MODEL, NONE_BASE = 0, 1, -1
FIELD_TYPES = ("i32", "f32", "f64", "ref", "i32[]", "f32[]")


class ProgramError(ValueError):
    """A program that cannot be built or run here; the message names the op and the fix."""


@dataclass(frozen=True)
class Ref:
    base: int                     # ARENA, MODEL or NONE_BASE
    offset: int                   # bytes from the start of that memory
    dtype: str = "uint8"
    shape: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize if self.base != NONE_BASE else 0


NONE = Ref(NONE_BASE, 0, "uint8", (0,))


@dataclass(frozen=True)
class OpDef:
    name: str
    code: int
    fields: tuple[tuple[str, str], ...]   # (argument name, type in FIELD_TYPES), the encoding order
    run: object                           # numpy executor: run(mem: Memory, **args)


OPS: dict[str, OpDef] = {}


def op(name: str, code: int, fields: str):
    """Register a numpy kernel as op `name` with opcode `code`; fields: 'n:i32 x:ref scale:f32 m:i32[] ...'."""
    parsed = tuple(tuple(f.split(":")) for f in fields.split()) if fields else ()
    for fname, ftype in parsed:
        if ftype not in FIELD_TYPES:
            raise ValueError(f"op {name}: field {fname} has unknown type {ftype}")

    def deco(fn):
        if name in OPS or any(d.code == code for d in OPS.values()):
            raise ValueError(f"op {name} / opcode {code} registered twice")
        OPS[name] = OpDef(name, code, parsed, fn)
        return fn
    return deco


@dataclass
class Instr:
    op: str
    args: dict
    note: str = ""                # where it comes from (".tflite op #12 CONV_2D", "backward of blocks.3.project")
    hides: tuple = ()             # .tflite tensors a fused instruction computes inside and never writes

    def words(self) -> list[int]:
        d = OPS[self.op]
        missing = [f for f, _ in d.fields if f not in self.args]
        extra = set(self.args) - {f for f, _ in d.fields}
        if missing or extra:
            raise ProgramError(f"{self.note or self.op}: arguments missing {missing}, unexpected {sorted(extra)}")
        out: list[int] = []
        for fname, ftype in d.fields:
            v = self.args[fname]
            if ftype == "i32":
                out.append(_i32(v, fname, self))
            elif ftype == "f32":
                out.append(int(np.array(v, np.float32).view(np.int32)))
            elif ftype == "f64":
                lo, hi = np.array(v, np.float64).reshape(1).view(np.int32)
                out += [int(lo), int(hi)]
            elif ftype == "ref":
                out += [int(v.base), _i32(v.offset, fname, self)]
            elif ftype == "i32[]":
                a = np.asarray(v, np.int64).reshape(-1)
                out.append(a.size)
                out += [_i32(x, fname, self) for x in a]
            else:  # f32[]
                a = np.asarray(v, np.float32).reshape(-1)
                out.append(a.size)
                out += a.view(np.int32).tolist()
        return out


def _i32(v, fname: str, ins: Instr) -> int:
    v = int(v)
    if not -(1 << 31) <= v < (1 << 31):
        raise ProgramError(f"{ins.note or ins.op}: argument {fname} = {v} does not fit int32")
    return v


@dataclass
class Program:
    instrs: list[Instr]
    arena_bytes: int
    model: bytes                                  # the .tflite bytes the MODEL references point into
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> [first, last) instruction

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    def opcodes(self) -> set[int]:
        return {OPS[i.op].code for i in self.instrs}

    def encode(self) -> np.ndarray:
        words = [MAGIC, VERSION, len(self.instrs), int(self.arena_bytes), len(self.model)]
        for ins in self.instrs:
            w = ins.words()
            words += [OPS[ins.op].code, len(w)] + w
        return np.array(words, np.int64).astype(np.int32)

    def section(self, name: str) -> tuple[int, int]:
        return self.sections[name]


@dataclass
class IO:
    """What a step reads and returns besides the arena (tt_io in tt.h; the firmware's mailbox)."""
    label: int = 0
    first: int = 0                # 1 on the first applied update
    lr: float = 0.0               # SGD: lr of this step; Adam: lr / (1 - beta1^t)
    sqrt_c2: float = 1.0          # Adam: sqrt(1 - beta2^t)
    loss: float = 0.0
    applied: int = 0


class Memory:
    """The numpy executor's view of the three memories."""

    def __init__(self, arena: np.ndarray, model: np.ndarray, io: IO | None = None):
        if arena.dtype != np.uint8 or model.dtype != np.uint8:
            raise TypeError("arena and model must be uint8 arrays")
        self.arena, self.model, self.io, self.skip = arena, model, io or IO(), False

    def view(self, ref: Ref) -> np.ndarray | None:
        if ref.base == NONE_BASE:
            return None
        mem = self.arena if ref.base == ARENA else self.model
        n = ref.nbytes
        if ref.offset < 0 or ref.offset + n > mem.size:
            raise ProgramError(f"reference {ref} reaches past its memory ({mem.size:,} bytes)")
        return mem[ref.offset:ref.offset + n].view(ref.dtype).reshape(ref.shape)


def native_core_for(prog: Program):
    """(the host's C core, the program's words) for running `prog` natively; ProgramError, with the fix, when the
    core is not built or lacks an op the program uses (checked before any step)."""
    from ..native import library_path, load
    core = load()
    if core is None:
        raise ProgramError(f"--engine native: the C core is not built ({library_path()}): run "
                           "'python -m device build-native', or use --engine numpy")
    missing = sorted({i.op for i in prog.instrs if not core.has_op(OPS[i.op].code)})
    if missing:
        raise ProgramError(f"the C core {core.path} lacks op(s) {', '.join(missing)}: rebuild it "
                           "('python -m device build-native') or use --engine numpy")
    return core, prog.encode()


def run_numpy(prog: Program, mem: Memory, first: int = 0, last: int | None = None, profile: dict | None = None) -> None:
    """Execute instructions [first, last) with the numpy kernels. profile: op name -> seconds, accumulated."""
    import time
    mem.io.applied = 0
    mem.skip = False
    for ins in prog.instrs[first:last]:
        d = OPS[ins.op]
        t0 = time.perf_counter() if profile is not None else 0.0
        views = {k: (mem.view(v) if isinstance(v, Ref) else v) for k, v in ins.args.items()}
        d.run(mem, **views)
        if profile is not None:
            profile[ins.op] = profile.get(ins.op, 0.0) + time.perf_counter() - t0
        if mem.skip:
            return
