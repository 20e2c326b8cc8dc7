"""Ops that move or reduce data: PAD / PADV2, RESHAPE / SQUEEZE / EXPAND_DIMS, CONCATENATION, MEAN,
AVERAGE_POOL_2D / MAX_POOL_2D, RESIZE_BILINEAR. int8 follows TFLite's reference kernels exactly; float
kernels sum in the reference's order (sequential float32) so they match it too, up to libm details.
"""
from __future__ import annotations

import numpy as np

from ..tflite_reader import OpInfo, TensorInfo
from ._common import (KernelConfig, UnsupportedOpError, check_activation, float_activation, out_size_and_pad,
                      quantized_activation_range, saturate, tensor_qparams)
from ._fixed_point import multiply_by_quantized_multiplier, quantize_multiplier


def _const(op: OpInfo, tensors: list[TensorInfo], k: int, what: str) -> np.ndarray:
    idx = op.inputs[k]
    if idx < 0 or tensors[idx].data is None:
        raise UnsupportedOpError(op, tensors, f"{what} must be a constant tensor")
    return tensors[idx].data


def _same_type(op: OpInfo, tensors: list[TensorInfo], allowed=("INT8", "FLOAT32")) -> str:
    x_t, y_t = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if x_t.type != y_t.type or x_t.type not in allowed:
        raise UnsupportedOpError(op, tensors, f"{x_t.type} -> {y_t.type} not implemented")
    return x_t.type


def _same_quant(op: OpInfo, tensors: list[TensorInfo]) -> None:
    """int8 ops that copy values require identical input/output quantization."""
    a, b = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if a.type == "INT8" and tensor_qparams(op, tensors, a) != tensor_qparams(op, tensors, b):
        raise UnsupportedOpError(op, tensors, "input and output quantization differ")


def prepare_pad(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    kind = _same_type(op, tensors)
    pads = _const(op, tensors, 1, "paddings").astype(np.int64).reshape(-1, 2)
    if (pads < 0).any():
        raise UnsupportedOpError(op, tensors, "negative padding")
    if op.name == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = _const(op, tensors, 2, "constant_values").reshape(-1)[0]
    elif kind == "INT8":
        value = tensor_qparams(op, tensors, tensors[op.outputs[0]])[1]   # the output's zero point
    else:
        value = 0.0
    pads_t = [tuple(int(v) for v in p) for p in pads]
    return lambda x, *_: np.pad(x, pads_t, constant_values=value)


def prepare_reshape(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    shape = tuple(tensors[op.outputs[0]].shape)
    n_static = int(np.prod(shape)) if shape else 1

    def run(x: np.ndarray, *_):
        # the static shape has batch 1; other batch sizes scale the leading dimension
        if x.size != n_static and shape and shape[0] == 1 and n_static and x.size % n_static == 0:
            return x.reshape((x.size // n_static,) + shape[1:])
        return x.reshape(shape)
    return run


def prepare_concatenation(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    kind = _same_type(op, tensors)
    if check_activation(op, tensors) != "NONE":
        raise UnsupportedOpError(op, tensors, "fused activation")
    if kind == "INT8":
        qo = tensor_qparams(op, tensors, tensors[op.outputs[0]])
        if any(tensor_qparams(op, tensors, tensors[i]) != qo for i in op.inputs):
            raise UnsupportedOpError(op, tensors, "inputs quantized differently from the output")
    axis = op.options["axis"]
    return lambda *xs: np.concatenate(xs, axis=axis)


def _float_sum_sequential(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Sum over `axes` adding elements one by one in row-major order, in float32 (the reference's order)."""
    keep = [a for a in range(x.ndim) if a not in axes]
    xt = np.transpose(x, keep + list(axes)).astype(np.float32)
    kept_shape = xt.shape[:len(keep)]
    flat = xt.reshape(int(np.prod(kept_shape)) if keep else 1, -1)
    return np.cumsum(flat, axis=1, dtype=np.float32)[:, -1].reshape(kept_shape)


def prepare_mean(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    kind = _same_type(op, tensors)
    x_t = tensors[op.inputs[0]]
    axes = tuple(sorted({int(a) % len(x_t.shape) for a in _const(op, tensors, 1, "axis").reshape(-1)}))
    keep_dims = op.options.get("keep_dims", False)

    def out_shape(x):
        return tuple(1 if a in axes else d for a, d in enumerate(x.shape)) if keep_dims else \
            tuple(d for a, d in enumerate(x.shape) if a not in axes)

    if kind == "FLOAT32":
        def run(x: np.ndarray, *_):
            n = int(np.prod([x.shape[a] for a in axes]))
            return (_float_sum_sequential(x, axes) / np.float32(n)).astype(np.float32).reshape(out_shape(x))
        return run

    # int8: QuantizedMeanOrSum. The multiplier in_scale / out_scale absorbs 1/n: it is shifted left by
    # floor(log2 n) (at most 32, and so that the final shift stays >= -31), then divided by n.
    si, zi = tensor_qparams(op, tensors, x_t)
    so, zo = tensor_qparams(op, tensors, tensors[op.outputs[0]])
    m0, sh0 = (int(v[0]) for v in quantize_multiplier(np.float64(si) / np.float64(so)))

    def run(x: np.ndarray, *_):
        n = int(np.prod([x.shape[a] for a in axes]))
        s = min(n.bit_length() - 1, 32, 31 + sh0)
        m, sh = int((m0 << s) // n), sh0 - s
        total = x.astype(np.int64).sum(axis=axes) - zi * n
        y = multiply_by_quantized_multiplier(total, m, sh) + zo
        return saturate(y, -128, 127, np.int8).reshape(out_shape(x))
    return run


def prepare_pool(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    kind = _same_type(op, tensors)
    if kind == "INT8":
        _same_quant(op, tensors)
    o = op.options
    kh, kw, sh, sw = o["filter_height"], o["filter_width"], o["stride_h"], o["stride_w"]
    act = check_activation(op, tensors)
    if kind == "INT8":
        so, zo = tensor_qparams(op, tensors, tensors[op.outputs[0]])
        lo, hi = quantized_activation_range(act, so, zo, np.int8)
    else:
        fact = float_activation(act)
    is_max = op.name == "MAX_POOL_2D"

    def run(x: np.ndarray, *_):
        n, h, w, c = x.shape
        oh, pt, pb = out_size_and_pad(h, kh, sh, 1, o["padding"])
        ow, pl, pr = out_size_and_pad(w, kw, sw, 1, o["padding"])
        pads = ((0, 0), (pt, pb), (pl, pr), (0, 0))
        valid = np.pad(np.ones((1, h, w, 1), bool), pads)
        if is_max:
            fill = np.iinfo(np.int8).min if kind == "INT8" else -np.inf
            xp = np.pad(x, pads, constant_values=fill)
        else:
            xp = np.pad(x.astype(np.int64) if kind == "INT8" else x.astype(np.float32), pads)
        acc, count = None, np.zeros((1, oh, ow, 1), np.int64)
        for i in range(kh):                 # filter_y then filter_x: the reference's summation order
            for j in range(kw):
                win = xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
                count += valid[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
                acc = win.copy() if acc is None else (np.maximum(acc, win) if is_max else acc + win)
        if is_max:
            return saturate(acc, lo, hi, np.int8) if kind == "INT8" else fact(acc).astype(np.float32)
        if kind == "FLOAT32":
            return fact((acc / count.astype(np.float32)).astype(np.float32))
        half = count // 2                   # round half away from zero, C division truncates
        q = np.where(acc > 0, (acc + half) // count, -((-acc + half) // count))
        return saturate(q, lo, hi, np.int8)
    return run


def _resize_coords_int(out_size: int, in_size: int, align: bool, half: bool):
    """ComputeInterpolationValuesInteger: (10-bit fixed-point source coordinate, lower, upper index)."""
    scale = ((1 << 10) * in_size + out_size // 2) // out_size
    if align and out_size > 1:
        scale = ((1 << 10) * (in_size - 1) + (out_size - 1) // 2) // (out_size - 1)
    v = np.arange(out_size, dtype=np.int64)
    pos = v * scale + scale // 2 - (1 << 9) if half else v * scale
    lo = np.maximum(np.where(pos >= 0, pos // 1024, -((-pos) // 1024)), 0)
    num = pos + 1023
    hi = np.minimum(np.where(num >= 0, num // 1024, -((-num) // 1024)), in_size - 1)
    return pos, lo, hi


def _resize_coords_float(out_size: int, in_size: int, align: bool, half: bool):
    scale = np.float32(in_size) / np.float32(out_size)
    if align and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    v = np.arange(out_size, dtype=np.float32)
    pos = ((v + np.float32(0.5)) * scale - np.float32(0.5)).astype(np.float32) if half else (v * scale).astype(np.float32)
    lo = np.maximum(np.floor(pos).astype(np.int64), 0)
    hi = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    return pos, lo, hi


def prepare_resize_bilinear(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    kind = _same_type(op, tensors)
    if kind == "INT8":
        _same_quant(op, tensors)
    oh, ow = (int(v) for v in _const(op, tensors, 1, "size").reshape(-1))
    align, half = op.options["align_corners"], op.options["half_pixel_centers"]

    def run(x: np.ndarray, *_):
        _n, h, w, _c = x.shape
        if kind == "INT8":
            py, y0, y1 = _resize_coords_int(oh, h, align, half)
            px, x0, x1 = _resize_coords_int(ow, w, align, half)
            dy, dx = (py - 1024 * y0)[:, None, None], (px - 1024 * x0)[None, :, None]
            xi = x.astype(np.int64)
            r0, r1 = xi[:, y0], xi[:, y1]
            out = (r0[:, :, x0] * (1024 - dy) * (1024 - dx) + r1[:, :, x0] * dy * (1024 - dx)
                   + r0[:, :, x1] * (1024 - dy) * dx + r1[:, :, x1] * dy * dx)
            rnd = np.where(out > 0, 1 << 19, -(1 << 19))
            s = out + rnd
            return np.where(s >= 0, s >> 20, -((-s) >> 20)).astype(np.int8)
        py, y0, y1 = _resize_coords_float(oh, h, align, half)
        px, x0, x1 = _resize_coords_float(ow, w, align, half)
        one = np.float32(1)
        fy = (py - y0.astype(np.float32))[:, None, None]
        fx = (px - x0.astype(np.float32))[None, :, None]
        xf = x.astype(np.float32)
        r0, r1 = xf[:, y0], xf[:, y1]
        # the reference's expression, term by term and left to right, in float32
        out = r0[:, :, x0] * (one - fy) * (one - fx) + r1[:, :, x0] * fy * (one - fx)
        out = out + r0[:, :, x1] * (one - fy) * fx
        out = out + r1[:, :, x1] * fy * fx
        return out.astype(np.float32)
    return run
