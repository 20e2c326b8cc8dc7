"""Forward ops image classifiers made by other tools end or pad with (opcodes 170..199): int8 SOFTMAX,
LOGISTIC, HARD_SWISH. Numpy twins of device/native/core/fwd_extra.c, and their encoders.

Each op's output is byte-equal to the device engine's kernel (device/kernels/activations.py, itself byte-exact
with LiteRT's reference kernels). The encoder computes everything static from the .tflite's quantization
parameters and passes it as arguments (tables live in the program, read-only memory):
- softmax_s8: the reference's exp of each input difference (256 Q0.31 values, 0 where the reference skips
  the difference); the op takes the row max, sums the exps in Q12.19, takes the reciprocal by gemmlowp's
  Newton-Raphson and scales each exp by it, as reference_ops::Softmax does.
- lut_s8: a 256-entry output per input byte (LOGISTIC: the reference itself runs such a table).
- hard_swish_s8: the reference's int16 fixed-point pipeline from its two 16-bit multipliers and exponents.

    ENCODERS[("SOFTMAX", "INT8")](op, tensors, at) -> [Instr("softmax_s8", {...})]
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..kernels.activations import (hard_swish_check, hard_swish_int8, logistic_check, softmax_check,
                                   softmax_rows)
from ..kernels import UnsupportedOpError
from .program import Instr, op


def _note(op_) -> str:
    return f".tflite op #{op_.index} {op_.name}"


# ---- ops --------------------------------------------------------------------------------------------------

@op("softmax_s8", 170, "rows:i32 depth:i32 x:ref y:ref exps:i32[]")
def softmax_s8(mem, rows, depth, x, y, exps):
    """int8 softmax along the last axis (rows x depth); exps[k]: exp of the input difference -k, Q0.31."""
    y.reshape(-1)[...] = softmax_rows(x.reshape(rows, depth), np.asarray(exps, np.int64)).reshape(-1)


@op("lut_s8", 171, "n:i32 x:ref y:ref table:i32[]")
def lut_s8(mem, n, x, y, table):
    """y = table[x + 128] elementwise (int8 -> int8)."""
    t = np.asarray(table, np.int64).astype(np.int8)
    y.reshape(-1)[...] = t[x.reshape(-1).astype(np.int64) + 128]


@op("hard_swish_s8", 172, "n:i32 x:ref y:ref zi:i32 zo:i32 out_m16:i32 out_e:i32 relu_m16:i32 relu_e:i32")
def hard_swish_s8(mem, n, x, y, zi, zo, out_m16, out_e, relu_m16, relu_e):
    """reference_ops::HardSwish<int8_t> elementwise, int16 fixed point."""
    y.reshape(-1)[...] = hard_swish_int8(x.reshape(-1), zi, zo, out_m16, out_e, relu_m16, relu_e)


# ---- encoders ---------------------------------------------------------------------------------------------

def _size(t) -> int:
    return int(np.prod(t.shape, dtype=np.int64))


def encode_softmax(op_, tensors, at) -> list[Instr]:
    exps = softmax_check(op_, tensors)
    x_t = tensors[op_.inputs[0]]
    depth = int(x_t.shape[-1])
    return [Instr("softmax_s8", dict(rows=_size(x_t) // depth, depth=depth, x=at.ref(op_.inputs[0]),
                                     y=at.ref(op_.outputs[0]), exps=exps), _note(op_))]


def encode_logistic(op_, tensors, at) -> list[Instr]:
    table = logistic_check(op_, tensors)
    return [Instr("lut_s8", dict(n=_size(tensors[op_.inputs[0]]), x=at.ref(op_.inputs[0]), y=at.ref(op_.outputs[0]),
                                 table=table), _note(op_))]


def encode_rsqrt(op_, tensors, at) -> list[Instr]:
    """int8 RSQRT: the engine's 256-entry table (an input below the zero point, which the reference rejects,
    maps to 127 here: a program cannot stop mid-step)."""
    from ..kernels.elementwise import rsqrt_table
    if tensors[op_.outputs[0]].type != "INT8":
        raise UnsupportedOpError(op_, tensors, "int8 -> int8 only")
    table, _ = rsqrt_table(op_, tensors)
    return [Instr("lut_s8", dict(n=_size(tensors[op_.inputs[0]]), x=at.ref(op_.inputs[0]), y=at.ref(op_.outputs[0]),
                                 table=table.astype(np.int64)), _note(op_))]


def encode_hard_swish(op_, tensors, at) -> list[Instr]:
    p = hard_swish_check(op_, tensors)
    return [Instr("hard_swish_s8", dict(n=_size(tensors[op_.inputs[0]]), x=at.ref(op_.inputs[0]),
                                        y=at.ref(op_.outputs[0]), **p), _note(op_))]


ENCODERS: dict[tuple[str, str], Callable] = {
    ("SOFTMAX", "INT8"): encode_softmax,
    ("LOGISTIC", "INT8"): encode_logistic,
    ("HARD_SWISH", "INT8"): encode_hard_swish,
    ("RSQRT", "INT8"): encode_rsqrt,
}
