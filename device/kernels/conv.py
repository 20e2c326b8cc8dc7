"""CONV_2D (incl. grouped), DEPTHWISE_CONV_2D and FULLY_CONNECTED, int8 and float32.

int8 follows TFLite's reference integer kernels: acc = sum (x - x_zp) * (w - w_zp) + bias (int32), then
per-channel MultiplyByQuantizedMultiplier with in_scale * w_scale[c] / out_scale, + out_zp, clamp to the
fused activation range. The sums are done as float BLAS matmuls: every product is an integer below 2^15,
so float32 is exact while a dot product has at most 514 terms (|sum| < 2^24) and float64 beyond that
(|sum| < 2^53); the fixed-point rescale then runs in float64 too, where that is exact (_fixed_point).
FULLY_CONNECTED's reference kernel differs: it rescales with round(double(acc) * double scale), no
fixed-point multiplier (one rounding instead of two; they disagree by 1 LSB near ties).
Float kernels sum with a float64 BLAS matmul by default; with KernelConfig(exact_float=True) they add in
float32 one product at a time in the reference's order ((ky, kx, ci)) and reproduce it bit for bit.
"""
from __future__ import annotations

import numpy as np

from ..tflite_reader import OpInfo, TensorInfo
from ._common import (KernelConfig, UnsupportedOpError, check_activation, float_activation, out_size_and_pad,
                      quantized_activation_range, saturate, tensor_qparams)
from ._fixed_point import quantize_multiplier, requantize_exact_f64, round_half_away


def _const(op: OpInfo, tensors: list[TensorInfo], idx: int, what: str) -> np.ndarray:
    t = tensors[idx]
    if t.data is None:
        raise UnsupportedOpError(op, tensors, f"{what} '{t.name}' is not a constant")
    return t.data


class _Requant:
    """int32 accumulator (+ bias) -> int8 output: per-channel multipliers, zero point, activation clamp."""

    def __init__(self, op: OpInfo, tensors: list[TensorInfo], w: TensorInfo, n_out: int):
        x, y = tensors[op.inputs[0]], tensors[op.outputs[0]]
        s_in, self.z_in = tensor_qparams(op, tensors, x)
        s_out, self.z_out = tensor_qparams(op, tensors, y)
        if w.quant is None:
            raise UnsupportedOpError(op, tensors, f"filter '{w.name}' ({w.type}) is not quantized")
        s_w = np.broadcast_to(w.quant.scale.astype(np.float64), (n_out,))
        self.z_w = np.broadcast_to(w.quant.zero_point, (n_out,)).astype(np.float64)
        # double(in_scale) * double(filter_scale) / double(out_scale), as PopulateConvolutionQuantizationParams
        self.real = np.float64(s_in) * s_w / np.float64(s_out)
        self.m, self.shift = quantize_multiplier(self.real)
        self.lo, self.hi = quantized_activation_range(check_activation(op, tensors), s_out, self.z_out, np.int8)
        b = op.inputs[2] if len(op.inputs) > 2 else -1
        self.bias = np.zeros(n_out, np.int64) if b < 0 else _const(op, tensors, b, "bias").astype(np.int64)
        # |acc + bias| <= 255 * sum |w| + |bias| per channel: lets the rescale skip a range scan
        wq = w.data.reshape(-1, n_out) if w.data.shape[-1] == n_out and w.data.shape[0] == 1 else w.data.reshape(n_out, -1).T
        self.wsum = 255.0 * np.abs(wq.astype(np.float64) - self.z_w).sum(axis=0)
        if b >= 0 and tensors[b].type != "INT32":
            raise UnsupportedOpError(op, tensors, f"bias type {tensors[b].type} (int32 expected)")
        self.set_bias(self.bias)

    def set_bias(self, bias: np.ndarray) -> None:
        """A new int32 bias (the filter and every scale unchanged): what a bias-only update re-encodes."""
        self.bias = np.asarray(bias).astype(np.int64).reshape(-1)
        self.bias_f = self.bias.astype(np.float64)
        self.bound = float(np.max(self.wsum + np.abs(self.bias_f)))

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        """acc: exact integer sums held in float64."""
        acc = acc.astype(np.float64)                           # a fresh copy (or acc itself if float64)
        acc += self.bias_f
        y = requantize_exact_f64(acc, self.m, self.shift, self.bound)
        y += self.z_out
        np.clip(y, self.lo, self.hi, out=y)
        return y.astype(np.int8)

    def float_scale(self, acc: np.ndarray) -> np.ndarray:
        """FULLY_CONNECTED's reference rescale: round(double(acc) * double(effective scale))."""
        acc = acc.astype(np.int64) + self.bias
        y = round_half_away(acc.astype(np.float64) * self.real).astype(np.int64) + self.z_out
        return saturate(y, self.lo, self.hi, np.int8)


def _check_types(op: OpInfo, tensors: list[TensorInfo]) -> bool:
    """True for the int8 path, False for float32; anything else is unsupported."""
    x, w, y = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.outputs[0]]
    if x.type == "INT8" and w.type == "INT8" and y.type == "INT8":
        return True
    if x.type == "FLOAT32" and w.type == "FLOAT32" and y.type == "FLOAT32":
        return False
    raise UnsupportedOpError(op, tensors, "only int8 x int8 -> int8 and float32 are implemented")


def _float_bias(op: OpInfo, tensors: list[TensorInfo], n: int) -> np.ndarray:
    b = op.inputs[2] if len(op.inputs) > 2 else -1
    return np.zeros(n, np.float32) if b < 0 else _const(op, tensors, b, "bias").astype(np.float32)


def _with_set_bias(run, rq: _Requant | None, bias: np.ndarray | None):
    """Give a kernel `run.set_bias(new)`: a bias-only change without re-preparing the filter (the trainer's
    per-step patch of TinyTL-B biases). int8: the Requant's int32 bias; float: the bias array in place."""
    if rq is not None:
        run.set_bias = rq.set_bias
    else:
        def set_bias(new: np.ndarray) -> None:
            bias[...] = np.asarray(new, np.float32).reshape(bias.shape)
        run.set_bias = set_bias
    return run


def pad_zeros(x: np.ndarray, pads) -> np.ndarray:
    """np.pad(x, pads) with zeros, without np.pad's per-call overhead (it dominates at batch 1)."""
    out = np.zeros(tuple(d + a + b for d, (a, b) in zip(x.shape, pads)), x.dtype)
    out[tuple(slice(a, a + d) for d, (a, _b) in zip(x.shape, pads))] = x
    return out


def _matmul_f32(a: np.ndarray, w: np.ndarray, exact: bool) -> np.ndarray:
    """a (M, K) @ w (K, N) -> float32. exact: add the K products one at a time in float32, in order, as
    the reference kernels do (bit-identical results); else a float64 BLAS matmul rounded to float32."""
    if not exact:
        return (a.astype(np.float64) @ w.astype(np.float64)).astype(np.float32)
    at, w = np.ascontiguousarray(a.T, dtype=np.float32), w.astype(np.float32)
    acc = np.zeros((a.shape[0], w.shape[1]), np.float32)
    tmp = np.empty_like(acc)
    for k in range(at.shape[0]):
        np.multiply(at[k][:, None], w[k], out=tmp)
        acc += tmp
    return acc


def _exact_dtype(k: int):
    """float32 holds every partial sum of k int8 x int8 products exactly (|sum| < 2^24) while k <= 514:
    sgemm is then exact in any summation order; beyond that use float64 (exact below 2^53)."""
    return np.float32 if k * 255 * 128 < (1 << 24) else np.float64


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, oh: int, ow: int) -> list:
    """The KH*KW strided views x[:, i*dh + sh*oy, j*dw + sw*ox, :] in (ky, kx) order."""
    return [x[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw, :]
            for i in range(kh) for j in range(kw)]


def _geometry(op: OpInfo, h: int, w: int, kh: int, kw: int):
    o = op.options
    oh, pt, pb = out_size_and_pad(h, kh, o["stride_h"], o["dilation_h_factor"], o["padding"])
    ow, pl, pr = out_size_and_pad(w, kw, o["stride_w"], o["dilation_w_factor"], o["padding"])
    return oh, ow, ((0, 0), (pt, pb), (pl, pr), (0, 0))


def prepare_conv2d(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    quant = _check_types(op, tensors)
    x_t = tensors[op.inputs[0]]
    w = _const(op, tensors, op.inputs[1], "filter")            # (Cout, KH, KW, Cin / groups)
    cout, kh, kw, cin_g = w.shape
    cin = x_t.shape[3]
    if cin % cin_g or cout % (cin // cin_g):
        raise UnsupportedOpError(op, tensors, f"input channels {cin} vs filter {w.shape}")
    groups = cin // cin_g
    cout_g = cout // groups
    o = op.options
    if quant:
        rq = _Requant(op, tensors, tensors[op.inputs[1]], cout)
        wf = w.astype(np.float64) - rq.z_w[:, None, None, None]
        z_in = rq.z_in
    else:
        wf, z_in = w.astype(np.float32), 0
        bias, act = _float_bias(op, tensors, cout), float_activation(check_activation(op, tensors))
    # per group: (KH*KW*Cin_g, Cout_g), rows in (ky, kx, ci) order like the patches below
    cdt = _exact_dtype(kh * kw * cin_g) if quant else np.float32
    wmats = [wf[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1).T.astype(cdt) for g in range(groups)]

    def run(x: np.ndarray, *_):
        n, h, wd, _c = x.shape
        oh, ow, pads = _geometry(op, h, wd, kh, kw)
        xf = x.astype(cdt)
        if z_in:
            xf -= z_in                                          # padding then adds true zeros
        if any(p for pair in pads for p in pair):
            xf = pad_zeros(xf, pads)
        if kh == kw == 1:
            cols = xf[:, :(oh - 1) * o["stride_h"] + 1:o["stride_h"], :(ow - 1) * o["stride_w"] + 1:o["stride_w"], :][:, :, :, None, :]
        else:
            cols = np.stack(_windows(xf, kh, kw, o["stride_h"], o["stride_w"], o["dilation_h_factor"],
                                     o["dilation_w_factor"], oh, ow), axis=3)   # (N, OH, OW, KH*KW, Cin)
        outs = []
        for g, wm in enumerate(wmats):
            p = (cols[..., g * cin_g:(g + 1) * cin_g] if groups > 1 else cols).reshape(n * oh * ow, -1)
            outs.append(p @ wm if quant else _matmul_f32(p, wm, cfg.exact_float))
        acc = (outs[0] if groups == 1 else np.concatenate(outs, axis=1)).reshape(n, oh, ow, cout)
        if quant:
            return rq(acc)
        return act(acc + bias)
    return _with_set_bias(run, rq if quant else None, None if quant else bias)


def prepare_depthwise(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    quant = _check_types(op, tensors)
    x_t = tensors[op.inputs[0]]
    w = _const(op, tensors, op.inputs[1], "filter")            # (1, KH, KW, Cin * M)
    _, kh, kw, cout = w.shape
    cin = x_t.shape[3]
    if cout % cin:
        raise UnsupportedOpError(op, tensors, f"input channels {cin} vs filter {w.shape}")
    mult = cout // cin                                         # output channel = in_channel * M + m
    o = op.options
    cdt = _exact_dtype(kh * kw) if quant else np.float32
    if quant:
        rq = _Requant(op, tensors, tensors[op.inputs[1]], cout)
        wf = (w[0].astype(np.float64) - rq.z_w).astype(cdt)
        z_in = rq.z_in
    else:
        wf, z_in = w[0].astype(np.float32), 0
        bias, act = _float_bias(op, tensors, cout), float_activation(check_activation(op, tensors))

    def run(x: np.ndarray, *_):
        _n, h, wd, _c = x.shape
        oh, ow, pads = _geometry(op, h, wd, kh, kw)
        xf = x.astype(cdt)
        if z_in:
            xf -= z_in
        if any(p for pair in pads for p in pair):
            xf = pad_zeros(xf, pads)
        if mult > 1:
            xf = np.repeat(xf, mult, axis=3)
        wins = _windows(xf, kh, kw, o["stride_h"], o["stride_w"], o["dilation_h_factor"], o["dilation_w_factor"], oh, ow)
        acc = wins[0] * wf[0, 0]
        tmp = np.empty_like(acc)
        for k in range(1, len(wins)):                          # (ky, kx) order, as the reference adds
            np.multiply(wins[k], wf[k // kw, k % kw], out=tmp)
            acc += tmp
        if quant:
            return rq(acc)
        return act(acc + bias)
    return _with_set_bias(run, rq if quant else None, None if quant else bias)


def prepare_fully_connected(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    quant = _check_types(op, tensors)
    if op.options.get("weights_format", 0) != 0:
        raise UnsupportedOpError(op, tensors, "shuffled weights format")
    w = _const(op, tensors, op.inputs[1], "weights")           # (Cout, Cin)
    cout, cin = w.shape
    keep = op.options.get("keep_num_dims", False)
    if quant:
        rq = _Requant(op, tensors, tensors[op.inputs[1]], cout)
        cdt = _exact_dtype(cin)
        wm = (w.astype(np.float64) - rq.z_w[:, None]).T.astype(cdt)
        z_in = rq.z_in
    else:
        cdt, wm, z_in = np.float32, w.astype(np.float32).T.copy(), 0
        bias, act = _float_bias(op, tensors, cout), float_activation(check_activation(op, tensors))

    def run(x: np.ndarray, *_):
        xf = x.reshape(-1, cin).astype(cdt)
        if z_in:
            xf -= z_in
        acc = xf @ wm if quant else _matmul_f32(xf, wm, cfg.exact_float)
        shape = x.shape[:-1] + (cout,) if keep else (acc.shape[0], cout)
        y = rq.float_scale(acc) if quant else act(acc + bias)
        return y.reshape(shape)
    return _with_set_bias(run, rq if quant else None, None if quant else bias)
