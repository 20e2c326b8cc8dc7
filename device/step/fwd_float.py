"""Forward ops whose first input is float32 (the float islands of lite residual branches): the numpy twins of
device/native/core/fwd_float.c (opcodes 140..169) and their encoders (.tflite op -> instructions).

Every kernel computes in float32 in one fixed order that the C loop reproduces bit for bit: the order of the
engine's exact kernels (device/kernels, KernelConfig(exact_float=True)), which is LiteRT's BUILTIN_REF order
(the reference starts depthwise / pool sums at +0 and skips padding taps: the same bits except for a -0 sum
meeting a -0 bias, or an inf/NaN weight on a padding tap):
- CONV_2D, FULLY_CONNECTED: acc = +0, then + x * w one product at a time in (ky, kx, ci) order; taps in the
  padding count as x = 0 (the engine pads with zeros); then + bias (+0 when absent), then the activation.
- DEPTHWISE_CONV_2D, AVERAGE_POOL_2D: acc = the first tap's term, then the others in (ky, kx) order.
- MEAN: the reduced elements in row-major order, the first one, then + each next (np.cumsum), then / n.
- the fused activation is a clamp: y <= lo -> lo, then y >= hi -> hi (NaN stays NaN; -0 becomes +0 under
  RELU, as np.maximum(y, 0) does); NONE is the clamp to [-inf, inf].
Broadcast shapes are coalesced by the encoders to at most 4 dimensions with element strides (0 = broadcast).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..kernels import UnsupportedOpError
from ..kernels._common import check_activation, out_size_and_pad
from ..tflite_reader import OpInfo, TensorInfo
from . import core  # noqa: F401  (RESHAPE encodes as the core op `copy`)
from .core import round_away
from .program import NONE, Instr, Ref, op

F32 = np.float32
INF = float("inf")
ACT_RANGE = {"NONE": (-INF, INF), "RELU": (0.0, INF), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}
BINARY = {"ADD": 0, "SUB": 1, "MUL": 2, "DIV": 3, "SQUARED_DIFFERENCE": 4}
UNARY = {"IDENTITY": 0, "RSQRT": 1, "SQRT": 2, "ABS": 3, "NEG": 4}
MAXD = 4                                          # dimensions of a coalesced broadcast / reduction / pad


def clamp(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The fused activation (fwd_float.c: clampf): y <= lo -> lo, then y >= hi -> hi."""
    y = np.where(y <= F32(lo), F32(lo), y)
    return np.where(y >= F32(hi), F32(hi), y).astype(F32)


def _pad_zero(x: np.ndarray, pt: int, pl: int, hp: int, wp: int) -> np.ndarray:
    """x (H, W, C) placed at (pt, pl) in zeros of (hp, wp, C), cut to that size."""
    out = np.zeros((hp, wp, x.shape[2]), F32)
    h, w = min(x.shape[0], hp - pt), min(x.shape[1], wp - pl)
    out[pt:pt + h, pl:pl + w] = x[:h, :w]
    return out


def _taps(xp: np.ndarray, ky: int, kx: int, oh: int, ow: int, sh: int, sw: int, dh: int, dw: int) -> np.ndarray:
    """The (oh, ow, C) input pixels that filter tap (ky, kx) meets."""
    return xp[ky * dh: ky * dh + (oh - 1) * sh + 1: sh, kx * dw: kx * dw + (ow - 1) * sw + 1: sw]


def _extent(o: int, k: int, s: int, d: int) -> int:
    return (o - 1) * s + (k - 1) * d + 1


@op("conv2d_f32", 140, "h:i32 w:i32 cin:i32 oh:i32 ow:i32 cout:i32 kh:i32 kw:i32 cin_g:i32 x:ref f:ref b:ref y:ref "
    "sh:i32 sw:i32 dh:i32 dw:i32 pt:i32 pl:i32 lo:f32 hi:f32 wlayout:i32")
def conv2d_f32(mem, h, w, cin, oh, ow, cout, kh, kw, cin_g, x, f, b, y, sh, sw, dh, dw, pt, pl, lo, hi, wlayout):
    """CONV_2D (grouped when cin_g < cin): x (1, h, w, cin), y (1, oh, ow, cout); f (cout, kh, kw, cin_g) OHWI as
    in the .tflite (wlayout 0) or (kh, kw, cin_g, cout) HWIO, a trainable weight in the arena (wlayout 1)."""
    if wlayout == 1:
        f = f.reshape(kh, kw, cin_g, cout).transpose(3, 0, 1, 2)
    groups = cin // cin_g
    cg = cout // groups
    xp = _pad_zero(x.reshape(h, w, cin), pt, pl, max(pt + h, _extent(oh, kh, sh, dh)), max(pl + w, _extent(ow, kw, sw, dw)))
    out = y.reshape(oh * ow, cout)
    for g in range(groups):
        acc = np.zeros((oh * ow, cg), F32)
        fg = f[g * cg:(g + 1) * cg]
        for ky in range(kh):
            for kx in range(kw):
                t = _taps(xp, ky, kx, oh, ow, sh, sw, dh, dw)[..., g * cin_g:(g + 1) * cin_g].reshape(oh * ow, cin_g)
                for ci in range(cin_g):
                    acc += t[:, ci:ci + 1] * fg[:, ky, kx, ci]
        out[:, g * cg:(g + 1) * cg] = clamp(acc + (b[g * cg:(g + 1) * cg] if b is not None else F32(0)), lo, hi)


@op("dwconv_f32", 141, "h:i32 w:i32 cin:i32 oh:i32 ow:i32 cout:i32 kh:i32 kw:i32 x:ref f:ref b:ref y:ref "
    "sh:i32 sw:i32 dh:i32 dw:i32 pt:i32 pl:i32 lo:f32 hi:f32")
def dwconv_f32(mem, h, w, cin, oh, ow, cout, kh, kw, x, f, b, y, sh, sw, dh, dw, pt, pl, lo, hi):
    """DEPTHWISE_CONV_2D: f (1, kh, kw, cout), output channel c reads input channel c // (cout / cin)."""
    xp = _pad_zero(x.reshape(h, w, cin), pt, pl, max(pt + h, _extent(oh, kh, sh, dh)), max(pl + w, _extent(ow, kw, sw, dw)))
    if cout != cin:
        xp = np.repeat(xp, cout // cin, axis=2)
    acc = None
    for ky in range(kh):
        for kx in range(kw):
            p = _taps(xp, ky, kx, oh, ow, sh, sw, dh, dw) * f[0, ky, kx]
            acc = p if acc is None else acc + p
    y.reshape(oh, ow, cout)[...] = clamp(acc + (b if b is not None else F32(0)), lo, hi)


@op("fc_f32", 142, "rows:i32 cin:i32 cout:i32 x:ref f:ref b:ref y:ref lo:f32 hi:f32")
def fc_f32(mem, rows, cin, cout, x, f, b, y, lo, hi):
    """FULLY_CONNECTED: x (rows, cin), f (cout, cin), acc = +0 + x[i] * f[o, i] for i in order."""
    xr = x.reshape(rows, cin)
    acc = np.zeros((rows, cout), F32)
    for i in range(cin):
        acc += xr[:, i:i + 1] * f[:, i]
    y.reshape(rows, cout)[...] = clamp(acc + (b if b is not None else F32(0)), lo, hi)


def _strided(a: np.ndarray, shape, strides) -> np.ndarray:
    """a's elements as a view of `shape` with element `strides` (0 = broadcast)."""
    flat = np.ascontiguousarray(a).reshape(-1)
    return as_strided(flat, tuple(int(n) for n in shape), tuple(int(s) * flat.itemsize for s in strides), writeable=False)


def _binary(kind: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if kind == 0:
        return a + b
    if kind == 1:
        return a - b
    if kind == 2:
        return a * b
    if kind == 3:
        return a / b
    d = a - b
    return d * d


@op("binary_f32", 143, "n:i32 na:i32 nb:i32 a:ref b:ref y:ref kind:i32 shape:i32[] sa:i32[] sb:i32[] lo:f32 hi:f32")
def binary_f32(mem, n, na, nb, a, b, y, kind, shape, sa, sb, lo, hi):
    """ADD, SUB, MUL, DIV, SQUARED_DIFFERENCE ((a - b) * (a - b)) broadcast: y (row-major over shape)."""
    with np.errstate(all="ignore"):
        r = _binary(kind, _strided(a, shape, sa), _strided(b, shape, sb))
    y.reshape(-1)[...] = clamp(r, lo, hi).reshape(-1)


@op("unary_f32", 144, "n:i32 x:ref y:ref kind:i32 lo:f32 hi:f32")
def unary_f32(mem, n, x, y, kind, lo, hi):
    """IDENTITY (RELU, RELU6, RELU_N1_TO_1 are its clamp), RSQRT (1 / sqrt), SQRT, ABS, NEG; then the clamp."""
    with np.errstate(all="ignore"):
        v = [lambda t: t, lambda t: F32(1) / np.sqrt(t), np.sqrt, np.abs, np.negative][kind](x.astype(F32))
    y[...] = clamp(v, lo, hi).reshape(y.shape)


@op("mean_f32", 145, "nx:i32 n_out:i32 n_red:i32 x:ref y:ref keep:i32[] keep_s:i32[] red:i32[] red_s:i32[]")
def mean_f32(mem, nx, n_out, n_red, x, y, keep, keep_s, red, red_s):
    """MEAN: y[k] = (x[k, r0] + x[k, r1] + ...) / n_red, the reduced elements r in row-major order."""
    v = _strided(x, tuple(keep) + tuple(red), tuple(keep_s) + tuple(red_s)).reshape(n_out, n_red)
    s = np.cumsum(v, axis=1, dtype=F32)[:, -1]
    y.reshape(-1)[...] = s / F32(n_red)


@op("quantize_f32_s8", 146, "n:i32 x:ref y:ref scale:f32 zp:i32")
def quantize_f32_s8(mem, n, x, y, scale, zp):
    """QUANTIZE float32 -> int8: round half away from zero of x / scale, + zp, saturate; NaN -> -128."""
    with np.errstate(all="ignore"):
        q = round_away(x.astype(F32) / F32(scale))
    q = np.where(q >= F32(-512), q, F32(-512))            # NaN too (the C core never converts a NaN)
    q = np.where(q <= F32(512), q, F32(512))
    y[...] = np.clip(q.astype(np.int32) + zp, -128, 127).astype(np.int8)


@op("resize_bilinear_f32", 147, "h:i32 w:i32 c:i32 oh:i32 ow:i32 x:ref y:ref y0:i32[] y1:i32[] fy:f32[] "
    "x0:i32[] x1:i32[] fx:f32[]")
def resize_bilinear_f32(mem, h, w, c, oh, ow, x, y, y0, y1, fy, x0, x1, fx):
    """RESIZE_BILINEAR: the reference's expression, term by term, left to right:
    ((a (1 - fy)) (1 - fx) + (b fy) (1 - fx)) + (c (1 - fy)) fx + (d fy) fx."""
    one = F32(1)
    xv = x.reshape(h, w, c)
    fy, fx = np.asarray(fy, F32)[:, None, None], np.asarray(fx, F32)[None, :, None]
    r0, r1 = xv[np.asarray(y0)], xv[np.asarray(y1)]
    x0, x1 = np.asarray(x0), np.asarray(x1)
    out = r0[:, x0] * (one - fy) * (one - fx) + r1[:, x0] * fy * (one - fx)
    out = out + r0[:, x1] * (one - fy) * fx
    out = out + r1[:, x1] * fy * fx
    y.reshape(oh, ow, c)[...] = out


@op("pad_f32", 148, "nx:i32 ny:i32 x:ref y:ref shape:i32[] before:i32[] out:i32[] value:f32")
def pad_f32(mem, nx, ny, x, y, shape, before, out, value):
    """PAD / PADV2: y = value everywhere, x copied in at `before` (4 dimensions)."""
    yv = y.reshape(tuple(out))
    yv[...] = F32(value)
    yv[tuple(slice(b, b + s) for b, s in zip(before, shape))] = x.reshape(tuple(shape))


@op("avgpool_f32", 149, "h:i32 w:i32 c:i32 oh:i32 ow:i32 x:ref y:ref kh:i32 kw:i32 sh:i32 sw:i32 pt:i32 pl:i32 lo:f32 hi:f32")
def avgpool_f32(mem, h, w, c, oh, ow, x, y, kh, kw, sh, sw, pt, pl, lo, hi):
    """AVERAGE_POOL_2D: acc = the first tap, + the others in (ky, kx) order (padding taps add +0), / the count
    of taps inside the image, then the clamp."""
    hp, wp = max(pt + h, _extent(oh, kh, sh, 1)), max(pl + w, _extent(ow, kw, sw, 1))
    xp = _pad_zero(x.reshape(h, w, c), pt, pl, hp, wp)
    inside = _pad_zero(np.ones((h, w, 1), F32), pt, pl, hp, wp)
    acc, count = None, np.zeros((oh, ow, 1), F32)
    for ky in range(kh):
        for kx in range(kw):
            t = _taps(xp, ky, kx, oh, ow, sh, sw, 1, 1)
            count += _taps(inside, ky, kx, oh, ow, sh, sw, 1, 1)
            acc = t.copy() if acc is None else acc + t
    y.reshape(oh, ow, c)[...] = clamp(acc / count, lo, hi)


@op("group_norm_f32", 150, "hw:i32 c:i32 groups:i32 x:ref y:ref gamma:ref beta:ref eps:f32 lo:f32 hi:f32")
def group_norm_f32(mem, hw, c, groups, x, y, gamma, beta, eps, lo, hi):
    """The converter's GroupNorm chain (RESHAPE, MEAN, SUB, MUL, MEAN, ADD eps, RSQRT, MUL, RESHAPE[, MUL
    gamma][, ADD beta]) in one pass over its input, the same float32 operations in the same order: per group g
    (channels [g c/groups, (g + 1) c/groups)), over its elements in (pixel, channel) order, m = the MEAN's sum /
    n; v = the MEAN of (x - m) * (x - m); r = 1 / sqrt(v + eps); y = ((x - m) * r) * gamma + beta, clamped.
    Nothing else is written (the chain's intermediates are its own); y may be x itself."""
    cg = c // groups
    n = F32(hw * cg)
    v = x.reshape(hw, groups, cg)
    with np.errstate(all="ignore"):
        m = np.cumsum(v.transpose(1, 0, 2).reshape(groups, -1), axis=1, dtype=F32)[:, -1] / n
        d = v - m[None, :, None]
        var = np.cumsum((d * d).transpose(1, 0, 2).reshape(groups, -1), axis=1, dtype=F32)[:, -1] / n
        r = F32(1) / np.sqrt(var + F32(eps))
        out = (d * r[None, :, None]).reshape(hw, c)
        if gamma is not None:
            out = out * gamma.reshape(c)
        if beta is not None:
            out = out + beta.reshape(c)
    y.reshape(hw, c)[...] = clamp(out, lo, hi)


# ---- encoders: (.tflite op name, "FLOAT32") -> encode(op, tensors, at) -> [Instr] -------------------------

def _note(op_: OpInfo) -> str:
    return f".tflite op #{op_.index} {op_.name}"


def _types(op_: OpInfo, tensors: list[TensorInfo], want_out: str = "FLOAT32", n_float_in: int = 1) -> None:
    """The first n_float_in inputs float32, the output want_out; else UnsupportedOpError."""
    ins = [tensors[i].type for i in op_.inputs[:n_float_in] if i >= 0]
    if any(t != "FLOAT32" for t in ins) or tensors[op_.outputs[0]].type != want_out:
        raise UnsupportedOpError(op_, tensors, f"float island ops take float32 inputs and give {want_out}")


def _act(op_: OpInfo, tensors: list[TensorInfo]) -> tuple[float, float]:
    return ACT_RANGE[check_activation(op_, tensors)] if "fused_activation_function" in op_.options else ACT_RANGE["NONE"]


def _image(op_: OpInfo, tensors: list[TensorInfo], i: int) -> tuple[int, int, int]:
    s = tensors[i].shape
    if len(s) != 4 or s[0] != 1:
        raise UnsupportedOpError(op_, tensors, f"tensor '{tensors[i].name}' shape {s}: (1, H, W, C) expected")
    return s[1], s[2], s[3]


def _const_data(op_: OpInfo, tensors: list[TensorInfo], k: int, what: str) -> np.ndarray:
    i = op_.inputs[k] if k < len(op_.inputs) else -1
    if i < 0 or tensors[i].data is None:
        raise UnsupportedOpError(op_, tensors, f"{what} must be a constant tensor")
    return tensors[i].data


def _window(op_: OpInfo, h: int, w: int, kh: int, kw: int, dh: int = 1, dw: int = 1) -> dict:
    o = op_.options
    oh, pt, _ = out_size_and_pad(h, kh, o["stride_h"], dh, o["padding"])
    ow, pl, _ = out_size_and_pad(w, kw, o["stride_w"], dw, o["padding"])
    return dict(oh=oh, ow=ow, sh=o["stride_h"], sw=o["stride_w"], pt=pt, pl=pl)


def encode_conv(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors, n_float_in=3)
    h, w, cin = _image(op_, tensors, op_.inputs[0])
    cout, kh, kw, cin_g = tensors[op_.inputs[1]].shape
    if cin % cin_g or cout % (cin // cin_g):
        raise UnsupportedOpError(op_, tensors, f"input channels {cin} vs filter {(cout, kh, kw, cin_g)}")
    dh, dw = op_.options["dilation_h_factor"], op_.options["dilation_w_factor"]
    g = _window(op_, h, w, kh, kw, dh, dw)
    if (g["oh"], g["ow"], cout) != _image(op_, tensors, op_.outputs[0]):
        raise UnsupportedOpError(op_, tensors, "output shape differs from the geometry")
    b = op_.inputs[2] if len(op_.inputs) > 2 else -1
    lo, hi = _act(op_, tensors)
    f, wlayout = at.filter(op_.inputs[1]) if hasattr(at, "filter") else (at.ref(op_.inputs[1]), 0)
    return [Instr("conv2d_f32", dict(h=h, w=w, cin=cin, cout=cout, kh=kh, kw=kw, cin_g=cin_g, x=at.ref(op_.inputs[0]),
                                     f=f, b=at.ref(b), y=at.ref(op_.outputs[0]), dh=dh, dw=dw,
                                     lo=lo, hi=hi, wlayout=wlayout, **g), _note(op_))]


def encode_depthwise(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors, n_float_in=3)
    h, w, cin = _image(op_, tensors, op_.inputs[0])
    one, kh, kw, cout = tensors[op_.inputs[1]].shape
    if one != 1 or cout % cin:
        raise UnsupportedOpError(op_, tensors, f"input channels {cin} vs filter {(one, kh, kw, cout)}")
    dh, dw = op_.options["dilation_h_factor"], op_.options["dilation_w_factor"]
    g = _window(op_, h, w, kh, kw, dh, dw)
    if (g["oh"], g["ow"], cout) != _image(op_, tensors, op_.outputs[0]):
        raise UnsupportedOpError(op_, tensors, "output shape differs from the geometry")
    b = op_.inputs[2] if len(op_.inputs) > 2 else -1
    lo, hi = _act(op_, tensors)
    return [Instr("dwconv_f32", dict(h=h, w=w, cin=cin, cout=cout, kh=kh, kw=kw, x=at.ref(op_.inputs[0]),
                                     f=at.ref(op_.inputs[1]), b=at.ref(b), y=at.ref(op_.outputs[0]), dh=dh, dw=dw,
                                     lo=lo, hi=hi, **g), _note(op_))]


def encode_fully_connected(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors, n_float_in=3)
    if op_.options.get("weights_format", 0) != 0:
        raise UnsupportedOpError(op_, tensors, "shuffled weights format")
    cout, cin = tensors[op_.inputs[1]].shape
    n = int(np.prod(tensors[op_.inputs[0]].shape))
    if n % cin or int(np.prod(tensors[op_.outputs[0]].shape)) != n // cin * cout:
        raise UnsupportedOpError(op_, tensors, f"input of {n} values vs weights {(cout, cin)}")
    b = op_.inputs[2] if len(op_.inputs) > 2 else -1
    lo, hi = _act(op_, tensors)
    return [Instr("fc_f32", dict(rows=n // cin, cin=cin, cout=cout, x=at.ref(op_.inputs[0]), f=at.ref(op_.inputs[1]),
                                 b=at.ref(b), y=at.ref(op_.outputs[0]), lo=lo, hi=hi), _note(op_))]


def _coalesce(dims: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    """Drop size-1 dimensions and merge neighbours that every operand walks contiguously (stride_prev ==
    stride * n). dims: (size, [element stride per operand]) outermost first."""
    out: list[tuple[int, list[int]]] = []
    for n, st in dims:
        if n == 1:
            continue
        if out and all(p == s * n for p, s in zip(out[-1][1], st)):
            out[-1] = (out[-1][0] * n, list(st))
        else:
            out.append((n, list(st)))
    return out


def _pad4(op_, tensors, dims, k: int, what: str):
    if len(dims) > MAXD:
        raise UnsupportedOpError(op_, tensors, f"{what} needs {len(dims)} dimensions after merging (at most {MAXD})")
    dims = [(1, [0] * k)] * (MAXD - len(dims)) + dims
    return [n for n, _ in dims], [[st[j] for _, st in dims] for j in range(k)]


def _row_major(shape) -> list[int]:
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= n
    return st[::-1]


def encode_binary(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors, n_float_in=2)
    ia, ib = op_.inputs[:2]
    out = tuple(tensors[op_.outputs[0]].shape)
    r = len(out)
    strides = []
    for i in (ia, ib):
        s = tuple(tensors[i].shape)
        if len(s) > r:
            raise UnsupportedOpError(op_, tensors, f"input shape {s} vs output {out}")
        s = (1,) * (r - len(s)) + s
        if any(a not in (1, o) for a, o in zip(s, out)):
            raise UnsupportedOpError(op_, tensors, f"input shape {s} does not broadcast to {out}")
        strides.append([0 if a == 1 else st for a, st in zip(s, _row_major(s))])
    dims = _coalesce([(out[d], [strides[0][d], strides[1][d], _row_major(out)[d]]) for d in range(r)])
    shape, (sa, sb, _) = _pad4(op_, tensors, dims, 3, "the broadcast")
    lo, hi = _act(op_, tensors)
    size = lambda i: int(np.prod(tensors[i].shape))  # noqa: E731
    return [Instr("binary_f32", dict(n=size(op_.outputs[0]), na=size(ia), nb=size(ib), a=at.ref(ia), b=at.ref(ib),
                                     y=at.ref(op_.outputs[0]), kind=BINARY[op_.name], shape=shape, sa=sa, sb=sb,
                                     lo=lo, hi=hi), _note(op_))]


def encode_unary(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors)
    kind = UNARY.get(op_.name, 0)
    lo, hi = ACT_RANGE[op_.name] if op_.name in ACT_RANGE else ACT_RANGE["NONE"]
    return [Instr("unary_f32", dict(n=int(np.prod(tensors[op_.inputs[0]].shape)), x=at.ref(op_.inputs[0]),
                                    y=at.ref(op_.outputs[0]), kind=kind, lo=lo, hi=hi), _note(op_))]


def encode_reshape(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors)
    x, y = tensors[op_.inputs[0]], tensors[op_.outputs[0]]
    if int(np.prod(x.shape)) != int(np.prod(y.shape)):
        raise UnsupportedOpError(op_, tensors, f"{x.shape} -> {y.shape} changes the size")
    n = int(np.prod(x.shape)) * 4
    src, dst = (Ref(r.base, r.offset, "uint8", (n,)) for r in (at.ref(op_.inputs[0]), at.ref(op_.outputs[0])))
    return [Instr("copy", dict(n=n, src=src, dst=dst), _note(op_))]


def encode_mean(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors)
    shape = tuple(tensors[op_.inputs[0]].shape)
    axes = {int(a) % len(shape) for a in _const_data(op_, tensors, 1, "axis").reshape(-1)}
    st = _row_major(shape)
    keep = _coalesce([(shape[d], [st[d]]) for d in range(len(shape)) if d not in axes])
    red = _coalesce([(shape[d], [st[d]]) for d in range(len(shape)) if d in axes])
    n_red = int(np.prod([shape[d] for d in axes]))
    if n_red == 0:
        raise UnsupportedOpError(op_, tensors, "the mean of no elements")
    kn, (ks,) = _pad4(op_, tensors, keep, 1, "the kept axes")
    rn, (rs,) = _pad4(op_, tensors, red, 1, "the reduced axes")
    return [Instr("mean_f32", dict(nx=int(np.prod(shape)), n_out=int(np.prod(kn)), n_red=n_red, x=at.ref(op_.inputs[0]),
                                   y=at.ref(op_.outputs[0]), keep=kn, keep_s=ks, red=rn, red_s=rs), _note(op_))]


def encode_quantize(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors, want_out="INT8")
    q = tensors[op_.outputs[0]].quant
    if q is None or q.per_channel:
        raise UnsupportedOpError(op_, tensors, "per-tensor output quantization expected")
    return [Instr("quantize_f32_s8", dict(n=int(np.prod(tensors[op_.inputs[0]].shape)), x=at.ref(op_.inputs[0]),
                                          y=at.ref(op_.outputs[0]), scale=F32(q.scale[0]), zp=int(q.zero_point[0])),
                  _note(op_))]


def resize_coords(out_size: int, in_size: int, align: bool, half: bool):
    """(lower index, upper index, fraction pos - lower) per output coordinate, in float32 as the reference."""
    scale = F32(in_size) / F32(out_size)
    if align and out_size > 1:
        scale = F32(in_size - 1) / F32(out_size - 1)
    v = np.arange(out_size, dtype=F32)
    pos = ((v + F32(0.5)) * scale - F32(0.5)).astype(F32) if half else (v * scale).astype(F32)
    lo = np.maximum(np.floor(pos).astype(np.int64), 0)
    hi = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    return lo, hi, (pos - lo.astype(F32)).astype(F32)


def encode_resize_bilinear(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors)
    h, w, c = _image(op_, tensors, op_.inputs[0])
    oh, ow = (int(v) for v in _const_data(op_, tensors, 1, "size").reshape(-1))
    if (oh, ow, c) != _image(op_, tensors, op_.outputs[0]):
        raise UnsupportedOpError(op_, tensors, "output shape differs from the size input")
    align, half = op_.options["align_corners"], op_.options["half_pixel_centers"]
    y0, y1, fy = resize_coords(oh, h, align, half)
    x0, x1, fx = resize_coords(ow, w, align, half)
    return [Instr("resize_bilinear_f32", dict(h=h, w=w, c=c, oh=oh, ow=ow, x=at.ref(op_.inputs[0]),
                                              y=at.ref(op_.outputs[0]), y0=y0, y1=y1, fy=fy, x0=x0, x1=x1, fx=fx),
                  _note(op_))]


def encode_pad(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors)
    shape, out = tuple(tensors[op_.inputs[0]].shape), tuple(tensors[op_.outputs[0]].shape)
    pads = _const_data(op_, tensors, 1, "paddings").astype(np.int64).reshape(-1, 2)
    if (pads < 0).any() or len(pads) != len(shape) or len(shape) > MAXD or \
            tuple(int(s + a + b) for s, (a, b) in zip(shape, pads)) != out:
        raise UnsupportedOpError(op_, tensors, f"paddings {pads.tolist()} of {shape} -> {out}")
    value = 0.0
    if op_.name == "PADV2" and len(op_.inputs) > 2 and op_.inputs[2] >= 0:
        value = float(_const_data(op_, tensors, 2, "constant_values").reshape(-1)[0])
    k = MAXD - len(shape)
    return [Instr("pad_f32", dict(nx=int(np.prod(shape)), ny=int(np.prod(out)), x=at.ref(op_.inputs[0]),
                                  y=at.ref(op_.outputs[0]), shape=[1] * k + list(shape),
                                  before=[0] * k + [int(a) for a, _ in pads], out=[1] * k + list(out), value=value),
                  _note(op_))]


def encode_avgpool(op_: OpInfo, tensors: list[TensorInfo], at) -> list[Instr]:
    _types(op_, tensors)
    h, w, c = _image(op_, tensors, op_.inputs[0])
    kh, kw = op_.options["filter_height"], op_.options["filter_width"]
    g = _window(op_, h, w, kh, kw)
    if (g["oh"], g["ow"], c) != _image(op_, tensors, op_.outputs[0]):
        raise UnsupportedOpError(op_, tensors, "output shape differs from the geometry")
    lo, hi = _act(op_, tensors)
    return [Instr("avgpool_f32", dict(h=h, w=w, c=c, x=at.ref(op_.inputs[0]), y=at.ref(op_.outputs[0]), kh=kh, kw=kw,
                                      lo=lo, hi=hi, **g), _note(op_))]


def _overlap(a: Ref, b: Ref) -> bool:
    return a.base == b.base and a.base >= 0 and a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes


def fuse_group_norm(ops: list[OpInfo], k: int, tensors: list[TensorInfo], at, private) -> tuple[int, list[Instr]] | None:
    """If ops[k:] start the converter's GroupNorm chain (see group_norm_f32) whose intermediates nobody else
    reads (private(tensor, op positions) says so), (ops taken, [the fused instruction]); else None, and the
    chain runs op by op (same bits either way)."""
    def at_(j, name, n_in):
        return k + j < len(ops) and ops[k + j].name == name and len(ops[k + j].inputs) >= n_in and \
            all(tensors[i].type == "FLOAT32" for i in ops[k + j].inputs[:n_in] if i >= 0)

    if not all(at_(j, n, c) for j, (n, c) in enumerate([("RESHAPE", 1), ("MEAN", 1), ("SUB", 2), ("MUL", 2), ("MEAN", 1),
                                                         ("ADD", 2), ("RSQRT", 1), ("MUL", 2), ("RESHAPE", 1)])):
        return None
    o = [ops[k + j] for j in range(9)]
    x, r = o[0].inputs[0], o[0].outputs[0]
    xs, rs = tuple(tensors[x].shape), tuple(tensors[r].shape)
    if len(xs) != 4 or xs[0] != 1 or len(rs) < 3 or rs[0] != 1 or rs[-1] * rs[-2] != xs[3] or \
            tuple(tensors[o[8].outputs[0]].shape) != xs:
        return None
    hw, c, groups = xs[1] * xs[2], xs[3], rs[-2]
    axes = set(range(1, len(rs))) - {len(rs) - 2}
    for j in (1, 4):
        if o[j].inputs[1] < 0 or tensors[o[j].inputs[1]].data is None or \
                {int(a) % len(rs) for a in tensors[o[j].inputs[1]].data.reshape(-1)} != axes:
            return None
    m, d, sq, v, ve, rq, nrm = (o[j].outputs[0] for j in (1, 2, 3, 4, 5, 6, 7))
    eps = [i for i in o[5].inputs[:2] if i != v]
    if o[1].inputs[0] != r or tuple(o[2].inputs[:2]) != (r, m) or tuple(o[3].inputs[:2]) != (d, d) or o[4].inputs[0] != sq or \
            v not in o[5].inputs[:2] or len(eps) != 1 or tensors[eps[0]].data is None or tensors[eps[0]].data.size != 1 or \
            o[6].inputs[0] != ve or sorted(o[7].inputs[:2]) != sorted([d, rq]) or o[8].inputs[0] != nrm:
        return None
    if any(_act(op_, tensors) != ACT_RANGE["NONE"] for op_ in o[2:8]):
        return None
    chain, out, params = list(o), o[8].outputs[0], {}
    for name in ("MUL", "ADD"):       # gamma, beta: a (C,) operand, in either order
        op_ = ops[k + len(chain)] if k + len(chain) < len(ops) else None
        if op_ is None or op_.name != name or out not in op_.inputs[:2]:
            continue
        p = [i for i in op_.inputs[:2] if i != out]
        if len(p) != 1 or p[0] < 0 or tensors[p[0]].type != "FLOAT32" or int(np.prod(tensors[p[0]].shape)) != c or \
                tuple(tensors[p[0]].shape)[-1:] != (c,) or tuple(tensors[op_.outputs[0]].shape) != xs:
            break
        if name == "MUL" and _act(op_, tensors) != ACT_RANGE["NONE"]:
            break
        params[name] = p[0]
        chain.append(op_)
        out = op_.outputs[0]
    inner = [t for op_ in chain[:-1] for t in op_.outputs]
    if not private(inner, set(range(k, k + len(chain)))):
        return None
    xr, yr = at.ref(x), at.ref(out)
    gr = at.ref(params["MUL"]) if "MUL" in params else None
    br = at.ref(params["ADD"]) if "ADD" in params else None
    if xr != yr and _overlap(xr, yr) or any(p is not None and _overlap(p, yr) for p in (gr, br)):
        return None
    lo, hi = _act(chain[-1], tensors) if chain[-1].name in ("MUL", "ADD") else ACT_RANGE["NONE"]
    note = f".tflite ops #{chain[0].index}-{chain[-1].index} GroupNorm ({len(chain)} ops fused)"
    return len(chain), [Instr("group_norm_f32", dict(hw=hw, c=c, groups=groups, x=xr, y=yr, gamma=gr or NONE,
                                                     beta=br or NONE, eps=F32(tensors[eps[0]].data.reshape(-1)[0]),
                                                     lo=lo, hi=hi), note, hides=tuple(inner))]


ENCODERS: dict[tuple[str, str], Callable] = {
    **{(k, "FLOAT32"): encode_binary for k in BINARY},
    **{(k, "FLOAT32"): encode_unary for k in ("RSQRT", "SQRT", "ABS", "NEG", "RELU", "RELU6", "RELU_N1_TO_1")},
    **{(k, "FLOAT32"): encode_reshape for k in ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")},
    **{(k, "FLOAT32"): encode_pad for k in ("PAD", "PADV2")},
    ("CONV_2D", "FLOAT32"): encode_conv,
    ("DEPTHWISE_CONV_2D", "FLOAT32"): encode_depthwise,
    ("FULLY_CONNECTED", "FLOAT32"): encode_fully_connected,
    ("MEAN", "FLOAT32"): encode_mean,
    ("QUANTIZE", "FLOAT32"): encode_quantize,
    ("RESIZE_BILINEAR", "FLOAT32"): encode_resize_bilinear,
    ("AVERAGE_POOL_2D", "FLOAT32"): encode_avgpool,
}
