"""Elementwise ops: ADD, SUB, MUL (int8 and float32), float DIV / SQUARED_DIFFERENCE / SQRT, RSQRT
(float32 and int8, the latter as TFLite's fixed-point Newton-Raphson, tabulated per input byte),
RELU / RELU6 / RELU_N1_TO_1, and the type changes QUANTIZE (float->int, int->int) and DEQUANTIZE.

int8 ADD/SUB use TFLite's rescale pipeline: both inputs are shifted left by 20 bits, scaled by
s_i / (2 max(s1, s2)) with fixed-point multipliers, summed, then scaled by 2 max(s1, s2) / (2^20 s_out).
Float kernels compute in float32 like the reference kernels (results may differ in the last bit where
the reference accumulates in a different order; only the int8 path is byte-exact by contract).
"""
from __future__ import annotations

import numpy as np

from ..tflite_reader import OpInfo, TensorInfo
from ._common import (KernelConfig, QRANGE, UnsupportedOpError, check_activation, float_activation,
                      quantized_activation_range, saturate, tensor_qparams)
from ._fixed_point import multiply_by_quantized_multiplier, quantize_multiplier, round_half_away

_FLOAT_BINARY = {
    "ADD": np.add, "SUB": np.subtract, "MUL": np.multiply, "DIV": np.divide,
    "SQUARED_DIFFERENCE": lambda a, b: np.square(a - b),
}
_INT_TYPES = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16}


def _types(op: OpInfo, tensors: list[TensorInfo]) -> list[str]:
    return [tensors[i].type for i in op.inputs if i >= 0] + [tensors[op.outputs[0]].type]


def prepare_binary(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    types = _types(op, tensors)
    if all(t == "FLOAT32" for t in types) and op.name in _FLOAT_BINARY:
        fn = _FLOAT_BINARY[op.name]
        act = float_activation(check_activation(op, tensors) if "fused_activation_function" in op.options else "NONE")
        return lambda a, b: act(fn(a.astype(np.float32), b.astype(np.float32)).astype(np.float32))
    if all(t == "INT8" for t in types) and op.name in ("ADD", "SUB"):
        return _prepare_add_int8(op, tensors, sign=1 if op.name == "ADD" else -1)
    if all(t == "INT8" for t in types) and op.name == "MUL":
        return _prepare_mul_int8(op, tensors)
    raise UnsupportedOpError(op, tensors, "types not implemented for this op")


def _prepare_add_int8(op: OpInfo, tensors: list[TensorInfo], sign: int):
    (s1, z1), (s2, z2) = (tensor_qparams(op, tensors, tensors[i]) for i in op.inputs[:2])
    so, zo = tensor_qparams(op, tensors, tensors[op.outputs[0]])
    left_shift = 20
    twice_max = 2 * np.float64(max(s1, s2))
    m1, sh1 = quantize_multiplier(np.float64(s1) / twice_max)
    m2, sh2 = quantize_multiplier(np.float64(s2) / twice_max)
    mo, sho = quantize_multiplier(twice_max / ((1 << left_shift) * np.float64(so)))
    lo, hi = quantized_activation_range(check_activation(op, tensors), so, zo, np.int8)

    def run(a: np.ndarray, b: np.ndarray):
        a1 = multiply_by_quantized_multiplier((a.astype(np.int64) - z1) << left_shift, m1, sh1)
        b1 = multiply_by_quantized_multiplier((b.astype(np.int64) - z2) << left_shift, m2, sh2)
        y = multiply_by_quantized_multiplier(a1 + sign * b1, mo, sho) + zo
        return saturate(y, lo, hi, np.int8)
    return run


def _prepare_mul_int8(op: OpInfo, tensors: list[TensorInfo]):
    (s1, z1), (s2, z2) = (tensor_qparams(op, tensors, tensors[i]) for i in op.inputs[:2])
    so, zo = tensor_qparams(op, tensors, tensors[op.outputs[0]])
    m, sh = quantize_multiplier(np.float64(s1) * np.float64(s2) / np.float64(so))
    lo, hi = quantized_activation_range(check_activation(op, tensors), so, zo, np.int8)

    def run(a: np.ndarray, b: np.ndarray):
        prod = (a.astype(np.int64) - z1) * (b.astype(np.int64) - z2)
        return saturate(multiply_by_quantized_multiplier(prod, m, sh) + zo, lo, hi, np.int8)
    return run


def prepare_unary_float(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    types = _types(op, tensors)
    if op.name == "RSQRT" and types == ["INT8", "INT8"]:
        return _prepare_rsqrt_int8(op, tensors)
    fns = {"RSQRT": lambda x: np.float32(1) / np.sqrt(x), "SQRT": np.sqrt, "ABS": np.abs, "NEG": np.negative}
    if all(t == "FLOAT32" for t in types) and op.name in fns:
        fn = fns[op.name]
        return lambda x: fn(x.astype(np.float32)).astype(np.float32)
    raise UnsupportedOpError(op, tensors, "only float32 is implemented")


def prepare_relu(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    act = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}[op.name]
    x_t, y_t = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if x_t.type == y_t.type == "FLOAT32":
        return float_activation(act)
    if x_t.type == y_t.type == "INT8":
        # QuantizedReluX: requantize input -> output scale, then clamp to the activation's range
        si, zi = tensor_qparams(op, tensors, x_t)
        so, zo = tensor_qparams(op, tensors, y_t)
        m, sh = quantize_multiplier(np.float64(np.float32(si) / np.float32(so)))
        lo, hi = quantized_activation_range(act, so, zo, np.int8)

        def run(x: np.ndarray):
            y = multiply_by_quantized_multiplier(x.astype(np.int64) - zi, m, sh) + zo
            return saturate(y, lo, hi, np.int8)
        return run
    raise UnsupportedOpError(op, tensors, "only float32 and int8 are implemented")


def prepare_quantize(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    x_t, y_t = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if y_t.type not in _INT_TYPES:
        raise UnsupportedOpError(op, tensors, f"output type {y_t.type}")
    dt = _INT_TYPES[y_t.type]
    qmin, qmax = QRANGE[dt]
    so, zo = tensor_qparams(op, tensors, y_t)
    if x_t.type == "FLOAT32":
        def run(x: np.ndarray):  # AffineQuantize: round(x / scale) + zp, the division in float32
            q = round_half_away(x.astype(np.float32) / so).astype(np.int64) + zo
            return saturate(q, qmin, qmax, dt)
        return run
    if x_t.type in _INT_TYPES:
        si, zi = tensor_qparams(op, tensors, x_t)
        m, sh = quantize_multiplier(np.float64(si) / np.float64(so))

        def run(x: np.ndarray):  # Requantize
            y = multiply_by_quantized_multiplier(x.astype(np.int64) - zi, m, sh) + zo
            return saturate(y, qmin, qmax, dt)
        return run
    raise UnsupportedOpError(op, tensors, f"input type {x_t.type}")


def prepare_dequantize(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    x_t, y_t = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if y_t.type != "FLOAT32":
        raise UnsupportedOpError(op, tensors, f"output type {y_t.type}")
    if x_t.type == "FLOAT16":
        return lambda x: x.astype(np.float32)
    if x_t.type in _INT_TYPES and x_t.quant is not None:
        q = x_t.quant
        shape = [1] * len(x_t.shape)
        if q.per_channel:
            shape[q.axis] = -1
        scale, zp = q.scale.astype(np.float32).reshape(shape), q.zero_point.reshape(shape)
        # float(scale * (q - zp)): the product of a float32 scale and a small integer, rounded once
        return lambda x: ((x.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)
    raise UnsupportedOpError(op, tensors, f"input type {x_t.type}")


# ---- int8 RSQRT: TFLite's RsqrtEvalQuantized, a function of the input byte only, so a 256-entry table
# computed with exact Python integers (gemmlowp fixed point: FixedPoint<int32, k> raw values).

_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _wrap(x: int) -> int:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _srdhm(a: int, b: int) -> int:
    if a == b == _I32_MIN:
        return _I32_MAX
    v = a * b + ((1 << 30) if a * b >= 0 else 1 - (1 << 30))
    return v >> 31 if v >= 0 else -((-v) >> 31)


def _rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    return (x >> e) + ((x & mask) > (mask >> 1) + (x < 0))


def _mbqm(x: int, m: int, shift: int) -> int:
    return _rdbpot(_srdhm(_wrap(x << max(shift, 0)), m), max(-shift, 0))


def _sat_shl(x: int, e: int) -> int:
    """gemmlowp SaturatingRoundingMultiplyByPOT<e> for e > 0."""
    thr = (1 << (31 - e)) - 1
    return _I32_MAX if x > thr else _I32_MIN if x < -thr else x << e


def _inv_sqrt_multiplier_exp(x: int) -> tuple[int, int]:
    """GetInvSqrtQuantizedMultiplierExp(x, reverse_shift=-1): 1/sqrt(x) as (multiplier, shift), found by
    five Newton-Raphson steps in Q3.28 fixed point after normalising x into [2^27, 2^29)."""
    if x <= 1:
        return _I32_MAX, 0
    shift = 11
    while x >= (1 << 29):
        x //= 4
        shift += 1
    pairs = (32 - x.bit_length() - 1) // 2 - 1             # (count of leading zeros - 1) // 2 - 1
    shift -= pairs
    x <<= 2 * pairs
    half_x = _rdbpot(x >> 1, 1)
    half_three = (1 << 28) + (1 << 27)                     # 1.5 in Q3.28
    y = 1 << 28                                            # 1.0 in Q3.28
    for _ in range(5):
        y3 = _sat_shl(_srdhm(_srdhm(y, y), y), 6)          # Q9 -> Q3
        y = _sat_shl(_wrap(_srdhm(half_three, y) - _srdhm(half_x, y3)), 3)
    y = _srdhm(y, 1518500250)                              # * sqrt(2) / 2
    if shift < 0:
        y, shift = _wrap(y << -shift), 0
    return y, -shift


def rsqrt_table(op: OpInfo, tensors: list[TensorInfo]) -> tuple[np.ndarray, int]:
    """int8 RSQRT as a 256-entry table (output per input byte + 128) and the input zero point."""
    x_t, y_t = tensors[op.inputs[0]], tensors[op.outputs[0]]
    si, zi = tensor_qparams(op, tensors, x_t)
    so, zo = tensor_qparams(op, tensors, y_t)
    # 1 / (sqrt(in_scale) * out_scale): sqrt and product in float32, the reciprocal in double
    m, sh = (int(v[0]) for v in quantize_multiplier(1.0 / np.float64(np.float32(np.sqrt(si)) * so)))
    k_shift = 20
    table = np.zeros(256, np.int8)
    for q in range(-128, 128):
        v = q - zi
        if v <= 0:
            out = 127                                      # v == 0: the max; v < 0 is rejected by the kernel
        else:
            im, ish = _inv_sqrt_multiplier_exp(v)
            data = _mbqm(1, im, ish + k_shift)
            out = min(max(_mbqm(data, m, sh - k_shift) + zo, -128), 127)
        table[q + 128] = out
    return table, zi


def _prepare_rsqrt_int8(op: OpInfo, tensors: list[TensorInfo]):
    table, zi = rsqrt_table(op, tensors)
    y_t = tensors[op.outputs[0]]

    def run(x: np.ndarray):
        if x.size and int(x.min()) < zi:
            raise ValueError(f"op #{op.index} RSQRT ('{y_t.name}'): negative input (the reference rejects it too)")
        return table[x.astype(np.int64) + 128]
    return run
