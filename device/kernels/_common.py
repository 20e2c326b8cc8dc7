"""Shared helpers of the kernels: errors, quantization parameters, activation ranges, conv geometry."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tflite_reader import OpInfo, TensorInfo
from ._fixed_point import round_half_away

QRANGE = {np.int8: (-128, 127), np.uint8: (0, 255), np.int16: (-32768, 32767)}


@dataclass(frozen=True)
class KernelConfig:
    # float CONV_2D / DEPTHWISE / FULLY_CONNECTED: add the products one at a time in the reference
    # kernel's order (bit-exact with LiteRT's BUILTIN_REF, slower) instead of a BLAS matmul (differs
    # from it by float32 rounding only)
    exact_float: bool = False


class UnsupportedOpError(NotImplementedError):
    """The engine has no kernel for this op (or for this op with these tensor types)."""

    def __init__(self, op: OpInfo, tensors: list[TensorInfo], why: str = ""):
        out = tensors[op.outputs[0]] if op.outputs else None
        types = ", ".join(tensors[i].type for i in op.inputs if i >= 0)
        where = f"output tensor '{out.name}' (#{out.index}, {out.type})" if out else "no output"
        msg = f"op #{op.index} {op.name} ({where}; input types {types}) is not supported by the device engine"
        super().__init__(msg + (f": {why}" if why else ""))
        self.op_name, self.tensor_name = op.name, out.name if out else ""


def tensor_qparams(op: OpInfo, tensors: list[TensorInfo], t: TensorInfo) -> tuple[np.float32, int]:
    """Per-tensor (scale, zero point) of a quantized tensor."""
    if t.quant is None:
        raise UnsupportedOpError(op, tensors, f"tensor '{t.name}' ({t.type}) has no quantization parameters")
    if t.quant.per_channel:
        raise UnsupportedOpError(op, tensors, f"tensor '{t.name}' is per-channel quantized where per-tensor is expected")
    return np.float32(t.quant.scale[0]), int(t.quant.zero_point[0])


def quantized_activation_range(act: str, scale: np.float32, zp: int, dtype) -> tuple[int, int]:
    """CalculateActivationRangeQuantized: fused activation bounds in the output's integer domain."""
    qmin, qmax = QRANGE[dtype]

    def q(f: float) -> int:  # zero_point + round(f / scale), the division in float32
        return zp + int(round_half_away(np.float32(f) / np.float32(scale)))

    if act == "NONE":
        return qmin, qmax
    if act == "RELU":
        return max(qmin, q(0.0)), qmax
    if act == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ValueError(act)


def float_activation(act: str):
    """Fused activation for float kernels: a function float32 array -> float32 array."""
    if act == "NONE":
        return lambda y: y
    if act == "RELU":
        return lambda y: np.maximum(y, np.float32(0))
    if act == "RELU6":
        return lambda y: np.minimum(np.maximum(y, np.float32(0)), np.float32(6))
    if act == "RELU_N1_TO_1":
        return lambda y: np.minimum(np.maximum(y, np.float32(-1)), np.float32(1))
    raise ValueError(act)


def check_activation(op: OpInfo, tensors: list[TensorInfo]) -> str:
    act = op.options.get("fused_activation_function", "NONE")
    if act not in ("NONE", "RELU", "RELU6", "RELU_N1_TO_1"):
        raise UnsupportedOpError(op, tensors, f"fused activation {act}")
    return act


def out_size_and_pad(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) as TFLite computes them (SAME puts the odd pixel after)."""
    eff = (k - 1) * dilation + 1
    if padding == "SAME":
        out = (size + stride - 1) // stride
    else:
        out = (size - eff + stride) // stride
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


def saturate(y: np.ndarray, lo: int, hi: int, dtype) -> np.ndarray:
    return np.clip(y, lo, hi).astype(dtype)

