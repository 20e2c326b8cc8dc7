"""Forward ops whose first input is int8, numpy twins of device/native/core/fwd_int8.c, and their encoders.

Each op's output is byte-equal to the device engine's kernel (device/kernels/, itself byte-exact with LiteRT's
reference kernels): int32 accumulators, TFLite's MultiplyByQuantizedMultiplier (tt_mbqm), the same clamps.
Everything static (fixed-point multipliers per channel, activation clamps, geometry, coordinate tables) is
computed here by the encoder and passed as arguments; the run functions compute from their arguments only.

    ENCODERS[("CONV_2D", "INT8")](op, tensors, at) -> [Instr("conv2d_s8", {...})]

`at.ref(i)` says where tensor #i lives (Ref); `at.bias(i)` -> (Ref, kind, scales): kind 0 = int32 values,
kind 1 = a float32 trainable bias in the arena, encoded per channel as device/requant.bias_int32 (tt_bias_i32).
RESHAPE / SQUEEZE / EXPAND_DIMS are the core `copy` op. Sums of int8 products are exact in float32 below
2^24 and in float64 below 2^53, so the numpy twins use float matmuls where the C core adds int32 one by one.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..kernels import UnsupportedOpError
from ..kernels._common import check_activation, out_size_and_pad, quantized_activation_range, tensor_qparams
from ..kernels._fixed_point import multiply_by_quantized_multiplier, quantize_multiplier
from ..kernels.spatial import _resize_coords_int
from ..requant import bias_int32
from . import core  # noqa: F401  (registers `copy`, which RESHAPE uses)
from .program import NONE, Instr, op

MAX_DIMS = 8          # rank limit of the broadcast / reduce / pad ops (TT_MAXD in fwd_int8.c)


# ---- shared numpy pieces --------------------------------------------------------------------------------

def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _bias_i32(b, kind: int, scale, n: int) -> np.ndarray:
    """tt_bias_i32 for channels 0..n-1: int32 values (kind 0) or a float32 bias encoded (kind 1); int64."""
    if b is None:
        return np.zeros(n, np.int64)
    if kind == 0:
        return b.reshape(-1)[:n].astype(np.int64)
    return bias_int32(b.reshape(-1)[:n], np.asarray(scale, np.float32)[:n]).astype(np.int64)


def _requant(acc: np.ndarray, m, shift, zout: int, lo: int, hi: int) -> np.ndarray:
    """int32 accumulator -> int8: MultiplyByQuantizedMultiplier per channel, + zero point, clamp."""
    y = multiply_by_quantized_multiplier(acc, np.asarray(m, np.int64), np.asarray(shift, np.int64)) + zout
    return np.clip(y, lo, hi).astype(np.int8)


def _exact_dtype(k: int):
    """float32 holds every partial sum of k int8 x (int8 - zp) products exactly while k * 255 * 128 < 2^24."""
    return np.float32 if k * 255 * 128 < (1 << 24) else np.float64


def _padded(x: np.ndarray, zin: int, pt: int, pl: int, ph: int, pw: int, dtype) -> np.ndarray:
    """(x - zin) inside a zero frame of at least (ph, pw): taps outside the input add nothing."""
    h, w, c = x.shape
    xp = np.zeros((max(ph, pt + h), max(pw, pl + w), c), dtype)
    xp[pt:pt + h, pl:pl + w] = x.astype(dtype) - dtype(zin)
    return xp


def _taps(xp: np.ndarray, kh, kw, sh, sw, dh, dw, oh, ow) -> list[np.ndarray]:
    """The KH*KW strided views xp[ky*dh + sh*oy, kx*dw + sw*ox, :], in (ky, kx) order."""
    return [xp[i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]


# ---- ops: opcodes 100..139 (the same numbers as fwd_int8.c's dispatch) -----------------------------------

@op("conv2d_s8", 100, "h:i32 w:i32 cin:i32 oh:i32 ow:i32 cout:i32 kh:i32 kw:i32 groups:i32 x:ref wt:ref b:ref y:ref "
    "bkind:i32 bscale:f32[] sh:i32 sw:i32 dh:i32 dw:i32 pt:i32 pl:i32 zin:i32 zout:i32 lo:i32 hi:i32 "
    "mult:i32[] shift:i32[]")
def conv2d_s8(mem, h, w, cin, oh, ow, cout, kh, kw, groups, x, wt, b, y, bkind, bscale, sh, sw, dh, dw, pt, pl,
              zin, zout, lo, hi, mult, shift):
    """CONV_2D (grouped when groups > 1): acc[oc] = sum over taps (ky, kx, ci) of (x - zin) * wt (OHWI)."""
    cin_g, cout_g = cin // groups, cout // groups
    dt = _exact_dtype(kh * kw * cin_g)
    xp = _padded(x.reshape(h, w, cin), zin, pt, pl, (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1, dt)
    cols = np.stack(_taps(xp, kh, kw, sh, sw, dh, dw, oh, ow), axis=2)          # (OH, OW, KH*KW, Cin)
    wt = wt.reshape(cout, kh * kw * cin_g)
    acc = np.concatenate([cols[..., g * cin_g:(g + 1) * cin_g].reshape(oh * ow, -1)
                          @ wt[g * cout_g:(g + 1) * cout_g].T.astype(dt) for g in range(groups)], axis=1)
    acc = _wrap32(acc.astype(np.int64) + _bias_i32(b, bkind, bscale, cout))
    y.reshape(oh * ow, cout)[...] = _requant(acc, mult, shift, zout, lo, hi)


@op("depthwise_s8", 101, "h:i32 w:i32 cin:i32 oh:i32 ow:i32 cout:i32 kh:i32 kw:i32 x:ref wt:ref b:ref y:ref "
    "bkind:i32 bscale:f32[] sh:i32 sw:i32 dh:i32 dw:i32 pt:i32 pl:i32 zin:i32 zout:i32 lo:i32 hi:i32 "
    "mult:i32[] shift:i32[]")
def depthwise_s8(mem, h, w, cin, oh, ow, cout, kh, kw, x, wt, b, y, bkind, bscale, sh, sw, dh, dw, pt, pl,
                 zin, zout, lo, hi, mult, shift):
    """DEPTHWISE_CONV_2D, depth multiplier cout / cin: output channel oc reads input channel oc / (cout / cin)."""
    xp = _padded(x.reshape(h, w, cin), zin, pt, pl, (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1, np.int32)
    if cout != cin:
        xp = np.repeat(xp, cout // cin, axis=2)
    wt = wt.reshape(kh * kw, cout).astype(np.int32)
    acc = np.zeros((oh, ow, cout), np.int32)
    for k, tap in enumerate(_taps(xp, kh, kw, sh, sw, dh, dw, oh, ow)):
        acc += tap * wt[k]
    acc = _wrap32(acc.astype(np.int64) + _bias_i32(b, bkind, bscale, cout))
    y.reshape(oh, ow, cout)[...] = _requant(acc, mult, shift, zout, lo, hi)


@op("fully_connected_s8", 102, "rows:i32 cin:i32 cout:i32 x:ref wt:ref b:ref y:ref bkind:i32 bscale:f32[] "
    "zin:i32 zout:i32 lo:i32 hi:i32 real:i32[]")
def fully_connected_s8(mem, rows, cin, cout, x, wt, b, y, bkind, bscale, zin, zout, lo, hi, real):
    """FULLY_CONNECTED: the reference's rescale round_half_away(double(acc + bias) * real[oc]), one rounding;
    real: the float64 effective scales as int32 word pairs (low word first)."""
    dt = _exact_dtype(cin)
    acc = (x.reshape(rows, cin).astype(dt) - dt(zin)) @ wt.reshape(cout, cin).T.astype(dt)
    acc = acc.astype(np.int64) + _bias_i32(b, bkind, bscale, cout)
    p = acc.astype(np.float64) * np.asarray(real, np.int64).astype(np.uint32).view(np.float64)
    a = np.abs(p)
    r = np.floor(a)
    q = np.copysign(r + (a - r >= 0.5), p)
    q = np.clip(q, -(1 << 30), 1 << 30).astype(np.int64) + zout          # as the C core (int8 clamps it anyway)
    y.reshape(rows, cout)[...] = np.clip(q, lo, hi).astype(np.int8)


@op("add_s8", 103, "n:i32 na:i32 nb:i32 a:ref b:ref y:ref shape:i32[] ashape:i32[] bshape:i32[] sign:i32 "
    "za:i32 zb:i32 zout:i32 ma:i32 sa:i32 mb:i32 sb:i32 mout:i32 sout:i32 lo:i32 hi:i32")
def add_s8(mem, n, na, nb, a, b, y, shape, ashape, bshape, sign, za, zb, zout, ma, sa, mb, sb, mout, sout, lo, hi):
    """ADD (sign 1) / SUB (sign -1), broadcasting: both inputs << 20, rescaled to twice the larger input scale,
    summed, rescaled to the output (TFLite's 20-bit pipeline)."""
    a1 = multiply_by_quantized_multiplier((a.reshape(ashape).astype(np.int64) - za) << 20, ma, sa)
    b1 = multiply_by_quantized_multiplier((b.reshape(bshape).astype(np.int64) - zb) << 20, mb, sb)
    s = np.broadcast_to(a1 + sign * b1, tuple(shape))
    y.reshape(-1)[...] = np.clip(multiply_by_quantized_multiplier(s, mout, sout) + zout, lo, hi).astype(np.int8).reshape(-1)


@op("mul_s8", 104, "n:i32 na:i32 nb:i32 a:ref b:ref y:ref shape:i32[] ashape:i32[] bshape:i32[] "
    "za:i32 zb:i32 zout:i32 m:i32 s:i32 lo:i32 hi:i32")
def mul_s8(mem, n, na, nb, a, b, y, shape, ashape, bshape, za, zb, zout, m, s, lo, hi):
    """MUL, broadcasting: (a - za) * (b - zb) rescaled by s_a s_b / s_out."""
    prod = (a.reshape(ashape).astype(np.int64) - za) * (b.reshape(bshape).astype(np.int64) - zb)
    prod = np.broadcast_to(prod, tuple(shape))
    y.reshape(-1)[...] = np.clip(multiply_by_quantized_multiplier(prod, m, s) + zout, lo, hi).astype(np.int8).reshape(-1)


@op("mean_s8", 105, "n:i32 nout:i32 x:ref y:ref shape:i32[] axes:i32[] zin:i32 zout:i32 m:i32 s:i32")
def mean_s8(mem, n, nout, x, y, shape, axes, zin, zout, m, s):
    """MEAN (QuantizedMeanOrSum): sum over the dimensions flagged in axes, - zin * count, times (m, s) which
    absorbs 1 / count, + zout; no activation. axes: one 0/1 flag per dimension of shape."""
    red = tuple(d for d, f in enumerate(axes) if f)
    cnt = int(np.prod([shape[d] for d in red], dtype=np.int64))
    total = x.reshape(shape).astype(np.int64).sum(axis=red) - zin * cnt
    y.reshape(-1)[...] = np.clip(multiply_by_quantized_multiplier(total, m, s) + zout, -128, 127).astype(np.int8).reshape(-1)


@op("pad_s8", 106, "n:i32 nout:i32 x:ref y:ref shape:i32[] before:i32[] after:i32[] value:i32")
def pad_s8(mem, n, nout, x, y, shape, before, after, value):
    """PAD / PADV2: the input inside a frame of `value`."""
    pads = [(int(p), int(q)) for p, q in zip(before, after)]
    y.reshape(-1)[...] = np.pad(x.reshape(shape), pads, constant_values=np.int8(value)).reshape(-1)


@op("dequantize_s8", 107, "outer:i32 ch:i32 inner:i32 x:ref y:ref zp:i32[] scale:f32[]")
def dequantize_s8(mem, outer, ch, inner, x, y, zp, scale):
    """DEQUANTIZE int8 -> float32: float(x - zp[c]) * scale[c], c the channel (ch = 1: per tensor)."""
    zp = np.asarray(zp, np.int64).reshape(1, ch, 1)
    scale = np.asarray(scale, np.float32).reshape(1, ch, 1)
    y.reshape(outer, ch, inner)[...] = (x.reshape(outer, ch, inner).astype(np.int64) - zp).astype(np.float32) * scale


@op("requant_s8", 108, "n:i32 x:ref y:ref zin:i32 zout:i32 m:i32 s:i32 lo:i32 hi:i32")
def requant_s8(mem, n, x, y, zin, zout, m, s, lo, hi):
    """QUANTIZE int8 -> int8 and RELU / RELU6 / RELU_N1_TO_1: mbqm(x - zin) + zout, clamped to [lo, hi]."""
    v = multiply_by_quantized_multiplier(x.reshape(-1).astype(np.int64) - zin, m, s) + zout
    y.reshape(-1)[...] = np.clip(v, lo, hi).astype(np.int8)


def _pool_windows(x, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, fill):
    xp = np.full((max((oh - 1) * sh + kh, pt + h), max((ow - 1) * sw + kw, pl + w), c), fill, np.int64)
    xp[pt:pt + h, pl:pl + w] = x.reshape(h, w, c)
    valid = np.zeros(xp.shape[:2] + (1,), np.int64)
    valid[pt:pt + h, pl:pl + w] = 1
    return _taps(xp, kh, kw, sh, sw, 1, 1, oh, ow), _taps(valid, kh, kw, sh, sw, 1, 1, oh, ow)


@op("avg_pool_s8", 109, "h:i32 w:i32 c:i32 oh:i32 ow:i32 x:ref y:ref kh:i32 kw:i32 sh:i32 sw:i32 pt:i32 pl:i32 "
    "lo:i32 hi:i32")
def avg_pool_s8(mem, h, w, c, oh, ow, x, y, kh, kw, sh, sw, pt, pl, lo, hi):
    """AVERAGE_POOL_2D: the sum over the window's pixels inside the input / their count, rounded half away."""
    taps, valid = _pool_windows(x, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, 0)
    acc, cnt = sum(taps), sum(valid)
    half = cnt // 2
    q = np.where(acc > 0, (acc + half) // cnt, -((-acc + half) // cnt))
    y.reshape(oh, ow, c)[...] = np.clip(q, lo, hi).astype(np.int8)


@op("max_pool_s8", 110, "h:i32 w:i32 c:i32 oh:i32 ow:i32 x:ref y:ref kh:i32 kw:i32 sh:i32 sw:i32 pt:i32 pl:i32 "
    "lo:i32 hi:i32")
def max_pool_s8(mem, h, w, c, oh, ow, x, y, kh, kw, sh, sw, pt, pl, lo, hi):
    """MAX_POOL_2D: the max over the window's pixels inside the input (-128 if none), clamped."""
    taps, _ = _pool_windows(x, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, -128)
    y.reshape(oh, ow, c)[...] = np.clip(np.maximum.reduce(taps), lo, hi).astype(np.int8)


@op("concat_s8", 111, "rows:i32 row:i32 stride:i32 x:ref y:ref col:i32")
def concat_s8(mem, rows, row, stride, x, y, col):
    """One CONCATENATION input: its rows of `row` bytes into y's rows of `stride` bytes, at byte column col."""
    y.reshape(rows, stride)[:, col:col + row] = x.reshape(rows, row)


@op("resize_bilinear_s8", 112, "h:i32 w:i32 c:i32 oh:i32 ow:i32 x:ref y:ref ypos:i32[] ylo:i32[] yhi:i32[] "
    "xpos:i32[] xlo:i32[] xhi:i32[]")
def resize_bilinear_s8(mem, h, w, c, oh, ow, x, y, ypos, ylo, yhi, xpos, xlo, xhi):
    """RESIZE_BILINEAR int8 (ResizeBilinearInteger): 10-bit fixed-point source coordinates (pos, lower, upper
    index per output row and column), the four-term blend in int64, / 2^20 rounded half away from zero."""
    ylo, yhi, xlo, xhi = (np.asarray(v, np.int64) for v in (ylo, yhi, xlo, xhi))
    dy = (np.asarray(ypos, np.int64) - 1024 * ylo)[:, None, None]
    dx = (np.asarray(xpos, np.int64) - 1024 * xlo)[None, :, None]
    xi = x.reshape(h, w, c).astype(np.int64)
    r0, r1 = xi[ylo], xi[yhi]
    out = (r0[:, xlo] * (1024 - dy) * (1024 - dx) + r1[:, xlo] * dy * (1024 - dx)
           + r0[:, xhi] * (1024 - dy) * dx + r1[:, xhi] * dy * dx)
    s = out + np.where(out > 0, 1 << 19, -(1 << 19))
    y.reshape(oh, ow, c)[...] = np.where(s >= 0, s >> 20, -((-s) >> 20)).astype(np.int8)


# ---- encoders: (op, tensors, at) -> [Instr] --------------------------------------------------------------

def _note(op_) -> str:
    return f".tflite op #{op_.index} {op_.name}"


def _need_int8(op_, tensors, *idx):
    for i in idx:
        if tensors[i].type != "INT8":
            raise UnsupportedOpError(op_, tensors, f"tensor '{tensors[i].name}' is {tensors[i].type}, int8 expected")


def _i32(a) -> np.ndarray:
    return np.asarray(a, np.int64).reshape(-1)


def _conv_common(op_, tensors, at, n_out: int):
    """Quantization of a conv/FC op: the static arguments shared by conv2d_s8, depthwise_s8, fully_connected_s8."""
    xi, wi, yi = op_.inputs[0], op_.inputs[1], op_.outputs[0]
    _need_int8(op_, tensors, xi, wi, yi)
    w_t = tensors[wi]
    if w_t.data is None:
        raise UnsupportedOpError(op_, tensors, f"filter '{w_t.name}' is not a constant")
    if w_t.quant is None:
        raise UnsupportedOpError(op_, tensors, f"filter '{w_t.name}' is not quantized")
    if np.any(w_t.quant.zero_point != 0):
        raise UnsupportedOpError(op_, tensors, "filter zero point != 0 (TFLite's int8 kernels require 0)")
    s_in, z_in = tensor_qparams(op_, tensors, tensors[xi])
    s_out, z_out = tensor_qparams(op_, tensors, tensors[yi])
    # double(in_scale) * double(filter_scale) / double(out_scale), as PopulateConvolutionQuantizationParams
    real = np.float64(s_in) * np.broadcast_to(w_t.quant.scale.astype(np.float64), (n_out,)) / np.float64(s_out)
    lo, hi = quantized_activation_range(check_activation(op_, tensors), s_out, z_out, np.int8)
    bi = op_.inputs[2] if len(op_.inputs) > 2 else -1
    if bi < 0:
        b, kind, scales = NONE, 0, np.zeros(0, np.float32)
    else:
        b, kind, scales = at.bias(bi)
        scales = np.zeros(0, np.float32) if scales is None else np.asarray(scales, np.float32).reshape(-1)
        if kind == 0 and tensors[bi].type != "INT32":
            raise UnsupportedOpError(op_, tensors, f"bias type {tensors[bi].type} (int32 expected)")
        if kind not in (0, 1) or (kind == 1 and scales.size != n_out):
            raise UnsupportedOpError(op_, tensors, f"bias kind {kind} with {scales.size} scales for {n_out} channels")
    args = dict(x=at.ref(xi), wt=at.ref(wi), b=b, y=at.ref(yi), bkind=kind, bscale=scales, zin=z_in, zout=z_out,
                lo=lo, hi=hi)
    return args, real


def _geometry(op_, tensors, kh, kw):
    o = op_.options
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    if len(x_t.shape) != 4 or x_t.shape[0] != 1:
        raise UnsupportedOpError(op_, tensors, f"input shape {x_t.shape} (batch 1 NHWC expected)")
    _, h, w, cin = x_t.shape
    oh, pt, _ = out_size_and_pad(h, kh, o["stride_h"], o.get("dilation_h_factor", 1), o["padding"])
    ow, pl, _ = out_size_and_pad(w, kw, o["stride_w"], o.get("dilation_w_factor", 1), o["padding"])
    if tuple(y_t.shape[1:3]) != (oh, ow):
        raise UnsupportedOpError(op_, tensors, f"output shape {y_t.shape} vs computed ({oh}, {ow})")
    return dict(h=h, w=w, oh=oh, ow=ow, sh=o["stride_h"], sw=o["stride_w"], pt=pt, pl=pl), cin


def encode_conv2d(op_, tensors, at) -> list[Instr]:
    cout, kh, kw, cin_g = tensors[op_.inputs[1]].shape
    geo, cin = _geometry(op_, tensors, kh, kw)
    if cin % cin_g or cout % (cin // cin_g):
        raise UnsupportedOpError(op_, tensors, f"input channels {cin} vs filter {tensors[op_.inputs[1]].shape}")
    args, real = _conv_common(op_, tensors, at, cout)
    m, s = quantize_multiplier(real)
    o = op_.options
    return [Instr("conv2d_s8", dict(geo, cin=cin, cout=cout, kh=kh, kw=kw, groups=cin // cin_g, **args,
                                    dh=o["dilation_h_factor"], dw=o["dilation_w_factor"], mult=m, shift=s), _note(op_))]


def encode_depthwise(op_, tensors, at) -> list[Instr]:
    _, kh, kw, cout = tensors[op_.inputs[1]].shape
    geo, cin = _geometry(op_, tensors, kh, kw)
    if cout % cin:
        raise UnsupportedOpError(op_, tensors, f"input channels {cin} vs filter {tensors[op_.inputs[1]].shape}")
    args, real = _conv_common(op_, tensors, at, cout)
    m, s = quantize_multiplier(real)
    o = op_.options
    return [Instr("depthwise_s8", dict(geo, cin=cin, cout=cout, kh=kh, kw=kw, **args, dh=o["dilation_h_factor"],
                                       dw=o["dilation_w_factor"], mult=m, shift=s), _note(op_))]


def encode_fully_connected(op_, tensors, at) -> list[Instr]:
    if op_.options.get("weights_format", 0) != 0:
        raise UnsupportedOpError(op_, tensors, "shuffled weights format")
    cout, cin = tensors[op_.inputs[1]].shape
    n = int(np.prod(tensors[op_.inputs[0]].shape))
    if n % cin:
        raise UnsupportedOpError(op_, tensors, f"input of {n} values for {cin} input channels")
    args, real = _conv_common(op_, tensors, at, cout)
    return [Instr("fully_connected_s8", dict(rows=n // cin, cin=cin, cout=cout, **args,
                                             real=np.ascontiguousarray(real, np.float64).view(np.int32)), _note(op_))]


def _broadcast(op_, tensors):
    """(out shape, a shape, b shape) at one rank, for the element loop of add_s8 / mul_s8."""
    a, b, y = (tensors[i].shape for i in (op_.inputs[0], op_.inputs[1], op_.outputs[0]))
    if tuple(a) == tuple(b):
        n = int(np.prod(a, dtype=np.int64))
        return [n], [n], [n]
    nd = max(len(a), len(b))
    a, b = (1,) * (nd - len(a)) + tuple(a), (1,) * (nd - len(b)) + tuple(b)
    try:
        shape = np.broadcast_shapes(a, b)
    except ValueError:
        raise UnsupportedOpError(op_, tensors, f"shapes {a} and {b} do not broadcast") from None
    if nd > MAX_DIMS or int(np.prod(shape)) != int(np.prod(y)):
        raise UnsupportedOpError(op_, tensors, f"broadcast of {a} and {b} to {y}")
    return list(shape), list(a), list(b)


def _binary_common(op_, tensors, at):
    _need_int8(op_, tensors, op_.inputs[0], op_.inputs[1], op_.outputs[0])
    (s1, z1), (s2, z2) = (tensor_qparams(op_, tensors, tensors[i]) for i in op_.inputs[:2])
    so, zo = tensor_qparams(op_, tensors, tensors[op_.outputs[0]])
    lo, hi = quantized_activation_range(check_activation(op_, tensors), so, zo, np.int8)
    shape, ash, bsh = _broadcast(op_, tensors)
    args = dict(n=int(np.prod(shape)), na=int(np.prod(ash)), nb=int(np.prod(bsh)), a=at.ref(op_.inputs[0]),
                b=at.ref(op_.inputs[1]), y=at.ref(op_.outputs[0]), shape=shape, ashape=ash, bshape=bsh, za=z1,
                zb=z2, zout=zo, lo=lo, hi=hi)
    return args, (s1, s2, so)


def _one(real) -> tuple[int, int]:
    m, s = quantize_multiplier(real)
    return int(m[0]), int(s[0])


def encode_add(op_, tensors, at) -> list[Instr]:
    args, (s1, s2, so) = _binary_common(op_, tensors, at)
    twice_max = 2 * np.float64(max(s1, s2))
    (ma, sa), (mb, sb) = _one(np.float64(s1) / twice_max), _one(np.float64(s2) / twice_max)
    mout, sout = _one(twice_max / ((1 << 20) * np.float64(so)))
    return [Instr("add_s8", dict(args, sign=1 if op_.name == "ADD" else -1, ma=ma, sa=sa, mb=mb, sb=sb, mout=mout,
                                 sout=sout), _note(op_))]


def encode_mul(op_, tensors, at) -> list[Instr]:
    args, (s1, s2, so) = _binary_common(op_, tensors, at)
    m, s = _one(np.float64(s1) * np.float64(s2) / np.float64(so))
    return [Instr("mul_s8", dict(args, m=m, s=s), _note(op_))]


def _const(op_, tensors, k: int, what: str) -> np.ndarray:
    i = op_.inputs[k] if len(op_.inputs) > k else -1
    if i < 0 or tensors[i].data is None:
        raise UnsupportedOpError(op_, tensors, f"{what} must be a constant tensor")
    return tensors[i].data


def encode_mean(op_, tensors, at) -> list[Instr]:
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    _need_int8(op_, tensors, x_t.index, y_t.index)
    shape = list(x_t.shape)
    if not 0 < len(shape) <= MAX_DIMS:
        raise UnsupportedOpError(op_, tensors, f"rank {len(shape)}")
    axes = {int(a) % len(shape) for a in _const(op_, tensors, 1, "axis").reshape(-1)}
    si, zi = tensor_qparams(op_, tensors, x_t)
    so, zo = tensor_qparams(op_, tensors, y_t)
    m0, sh0 = _one(np.float64(si) / np.float64(so))
    # QuantizedMeanOrSum: the multiplier absorbs 1 / n, shifted left by floor(log2 n) first (final shift >= -31)
    n = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    s = min(n.bit_length() - 1, 32, 31 + sh0)
    return [Instr("mean_s8", dict(n=int(np.prod(shape)), nout=int(np.prod(y_t.shape)), x=at.ref(x_t.index),
                                  y=at.ref(y_t.index), shape=shape, axes=[int(d in axes) for d in range(len(shape))],
                                  zin=zi, zout=zo, m=(m0 << s) // n, s=sh0 - s), _note(op_))]


def encode_pad(op_, tensors, at) -> list[Instr]:
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    _need_int8(op_, tensors, x_t.index, y_t.index)
    pads = _const(op_, tensors, 1, "paddings").astype(np.int64).reshape(-1, 2)
    if (pads < 0).any() or len(pads) != len(x_t.shape) or not 0 < len(pads) <= MAX_DIMS:
        raise UnsupportedOpError(op_, tensors, f"paddings {pads.tolist()} for shape {x_t.shape}")
    if op_.name == "PADV2" and len(op_.inputs) > 2 and op_.inputs[2] >= 0:
        value = int(_const(op_, tensors, 2, "constant_values").reshape(-1)[0])
    else:
        value = tensor_qparams(op_, tensors, y_t)[1]          # the output's zero point
    return [Instr("pad_s8", dict(n=int(np.prod(x_t.shape)), nout=int(np.prod(y_t.shape)), x=at.ref(x_t.index),
                                 y=at.ref(y_t.index), shape=list(x_t.shape), before=pads[:, 0], after=pads[:, 1],
                                 value=value), _note(op_))]


def encode_reshape(op_, tensors, at) -> list[Instr]:
    """RESHAPE / SQUEEZE / EXPAND_DIMS: the bytes unchanged, a core `copy` (nothing if the planner aliased them)."""
    x, y = at.ref(op_.inputs[0]), at.ref(op_.outputs[0])
    if x.nbytes != y.nbytes:
        raise UnsupportedOpError(op_, tensors, f"{x.nbytes} bytes in, {y.nbytes} out")
    if (x.base, x.offset) == (y.base, y.offset):
        return []
    return [Instr("copy", dict(n=x.nbytes, src=replace(x, dtype="uint8", shape=(x.nbytes,)),
                               dst=replace(y, dtype="uint8", shape=(y.nbytes,))), _note(op_))]


def encode_dequantize(op_, tensors, at) -> list[Instr]:
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    _need_int8(op_, tensors, x_t.index)
    if y_t.type != "FLOAT32" or x_t.quant is None:
        raise UnsupportedOpError(op_, tensors, f"{x_t.type} -> {y_t.type}")
    q, shape = x_t.quant, list(x_t.shape)
    if q.per_channel:
        ax = q.axis % len(shape)
        outer, ch, inner = int(np.prod(shape[:ax])), shape[ax], int(np.prod(shape[ax + 1:]))
    else:
        outer, ch, inner = 1, 1, int(np.prod(shape))
    return [Instr("dequantize_s8", dict(outer=outer, ch=ch, inner=inner, x=at.ref(x_t.index), y=at.ref(y_t.index),
                                        zp=_i32(q.zero_point), scale=q.scale.astype(np.float32)), _note(op_))]


def encode_requant(op_, tensors, at) -> list[Instr]:
    """QUANTIZE int8 -> int8 (Requantize) and the int8 RELU family (QuantizedReluX)."""
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    _need_int8(op_, tensors, x_t.index, y_t.index)
    si, zi = tensor_qparams(op_, tensors, x_t)
    so, zo = tensor_qparams(op_, tensors, y_t)
    if op_.name == "QUANTIZE":
        (m, s), (lo, hi) = _one(np.float64(si) / np.float64(so)), (-128, 127)
    else:   # the ratio in float32 first, as the reference ReluPrepare
        m, s = _one(np.float64(np.float32(si) / np.float32(so)))
        lo, hi = quantized_activation_range(op_.name, so, zo, np.int8)
    return [Instr("requant_s8", dict(n=int(np.prod(x_t.shape)), x=at.ref(x_t.index), y=at.ref(y_t.index), zin=zi,
                                     zout=zo, m=m, s=s, lo=lo, hi=hi), _note(op_))]


def encode_pool(op_, tensors, at) -> list[Instr]:
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    _need_int8(op_, tensors, x_t.index, y_t.index)
    if tensor_qparams(op_, tensors, x_t) != tensor_qparams(op_, tensors, y_t):
        raise UnsupportedOpError(op_, tensors, "input and output quantization differ")
    o = op_.options
    geo, c = _geometry(op_, tensors, o["filter_height"], o["filter_width"])
    so, zo = tensor_qparams(op_, tensors, y_t)
    lo, hi = quantized_activation_range(check_activation(op_, tensors), so, zo, np.int8)
    name = "max_pool_s8" if op_.name == "MAX_POOL_2D" else "avg_pool_s8"
    return [Instr(name, dict(geo, c=c, x=at.ref(x_t.index), y=at.ref(y_t.index), kh=o["filter_height"],
                             kw=o["filter_width"], lo=lo, hi=hi), _note(op_))]


def encode_concatenation(op_, tensors, at) -> list[Instr]:
    """One concat_s8 per input: rows = the product of the dimensions before the axis."""
    y_t = tensors[op_.outputs[0]]
    _need_int8(op_, tensors, y_t.index, *op_.inputs)
    if check_activation(op_, tensors) != "NONE":
        raise UnsupportedOpError(op_, tensors, "fused activation")
    qo = tensor_qparams(op_, tensors, y_t)
    if any(tensor_qparams(op_, tensors, tensors[i]) != qo for i in op_.inputs):
        raise UnsupportedOpError(op_, tensors, "inputs quantized differently from the output")
    axis = op_.options["axis"] % len(y_t.shape)
    rows = int(np.prod(y_t.shape[:axis]))
    stride = int(np.prod(y_t.shape[axis:]))
    out, col = [], 0
    for i in op_.inputs:
        row = int(np.prod(tensors[i].shape[axis:]))
        out.append(Instr("concat_s8", dict(rows=rows, row=row, stride=stride, x=at.ref(i), y=at.ref(y_t.index),
                                           col=col), _note(op_)))
        col += row
    if col != stride:
        raise UnsupportedOpError(op_, tensors, f"inputs fill {col} of {stride} bytes per row")
    return out


def encode_resize_bilinear(op_, tensors, at) -> list[Instr]:
    x_t, y_t = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    _need_int8(op_, tensors, x_t.index, y_t.index)
    if tensor_qparams(op_, tensors, x_t) != tensor_qparams(op_, tensors, y_t):
        raise UnsupportedOpError(op_, tensors, "input and output quantization differ")
    oh, ow = (int(v) for v in _const(op_, tensors, 1, "size").reshape(-1))
    if len(x_t.shape) != 4 or x_t.shape[0] != 1 or tuple(y_t.shape) != (1, oh, ow, x_t.shape[3]):
        raise UnsupportedOpError(op_, tensors, f"shapes {x_t.shape} -> {y_t.shape}")
    _, h, w, c = x_t.shape
    align, half = op_.options["align_corners"], op_.options["half_pixel_centers"]
    ypos, ylo, yhi = _resize_coords_int(oh, h, align, half)
    xpos, xlo, xhi = _resize_coords_int(ow, w, align, half)
    return [Instr("resize_bilinear_s8", dict(h=h, w=w, c=c, oh=oh, ow=ow, x=at.ref(x_t.index), y=at.ref(y_t.index),
                                             ypos=ypos, ylo=ylo, yhi=yhi, xpos=xpos, xlo=xlo, xhi=xhi), _note(op_))]


ENCODERS: dict[tuple[str, str], Callable] = {
    ("CONV_2D", "INT8"): encode_conv2d,
    ("DEPTHWISE_CONV_2D", "INT8"): encode_depthwise,
    ("FULLY_CONNECTED", "INT8"): encode_fully_connected,
    ("ADD", "INT8"): encode_add, ("SUB", "INT8"): encode_add,
    ("MUL", "INT8"): encode_mul,
    ("MEAN", "INT8"): encode_mean,
    ("PAD", "INT8"): encode_pad, ("PADV2", "INT8"): encode_pad,
    ("RESHAPE", "INT8"): encode_reshape, ("SQUEEZE", "INT8"): encode_reshape, ("EXPAND_DIMS", "INT8"): encode_reshape,
    ("DEQUANTIZE", "INT8"): encode_dequantize,
    ("QUANTIZE", "INT8"): encode_requant,
    ("RELU", "INT8"): encode_requant, ("RELU6", "INT8"): encode_requant, ("RELU_N1_TO_1", "INT8"): encode_requant,
    ("AVERAGE_POOL_2D", "INT8"): encode_pool, ("MAX_POOL_2D", "INT8"): encode_pool,
    ("CONCATENATION", "INT8"): encode_concatenation,
    ("RESIZE_BILINEAR", "INT8"): encode_resize_bilinear,
}
