"""The int8 forward ops of the step program (device/step/fwd_int8.py, device/native/core/fwd_int8.c): for every
op, one instruction run by numpy and by C gives the same arena byte for byte, and its output equals the device
engine's kernel (device/kernels/, byte-exact with LiteRT's reference kernels) byte for byte.

Real ops come from the quick bundle's inference.tflite (its bytes are the MODEL memory, so constants are read
at their file offsets); ops it lacks are built by hand with random int8 data and constants in a model Layout.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from device.engine import Engine
from device.kernels import KERNELS, KernelConfig, UnsupportedOpError
from device.requant import bias_int32, bias_scale
from device.step.fwd_int8 import ENCODERS
from device.step.program import MODEL, Ref
from device.tflite_reader import OpInfo, QuantParams, TensorInfo
from device_helpers import new_task_bundle
from step_helpers import Layout, arena, model, run_both, view

DTYPES = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32}


class At:
    """What the compiler gives an encoder: constants at their MODEL offsets, activations placed in the arena
    (inputs filled with `values`, outputs zero). float_bias: bias tensor -> (float32 values, scales) given
    as trainable float biases (kind 1) instead of the int32 constant."""

    def __init__(self, tensors: list[TensorInfo], a: Layout, values: dict[int, np.ndarray], float_bias=None):
        self.tensors, self.a, self.values, self.refs = tensors, a, values, {}
        self.float_bias = float_bias or {}

    def ref(self, i: int) -> Ref:
        t = self.tensors[i]
        if t.data is not None:
            return Ref(MODEL, t.offset, np.dtype(t.dtype).name, tuple(t.shape))
        if i not in self.refs:
            self.refs[i] = self.a.put(self.values[i].reshape(t.shape)) if i in self.values else self.a.empty(t.dtype, t.shape)
        return self.refs[i]

    def bias(self, i: int):
        if i in self.float_bias:
            v, scales = self.float_bias[i]
            self.refs[i] = self.a.put(v.astype(np.float32))
            return self.refs[i], 1, scales
        return self.ref(i), 0, None


class RawModel:
    """A .tflite file as the MODEL memory (run_both takes anything with .bytes())."""

    def __init__(self, data: bytes):
        self.data = np.frombuffer(data, np.uint8).copy()

    def bytes(self) -> np.ndarray:
        return self.data


def check_op(op: OpInfo, tensors: list[TensorInfo], values: dict[int, np.ndarray], m, float_bias=None,
             want: np.ndarray | None = None) -> np.ndarray:
    """Encode op, run it with numpy and C over the same memories; both equal, and equal to the engine kernel's
    output (or `want`). Returns the output."""
    a = arena()
    at = At(tensors, a, values, float_bias)
    instrs = ENCODERS[(op.name, tensors[op.inputs[0]].type)](op, tensors, at)
    y = at.ref(op.outputs[0])
    n_np, n_c, _, _ = run_both(instrs, a, m)
    assert np.array_equal(n_np, n_c), f"{op.name}: numpy and C arenas differ"
    if want is None:
        inputs = [None if i < 0 else tensors[i].data if tensors[i].data is not None else values[i] for i in op.inputs]
        want = KERNELS[op.name](op, tensors, KernelConfig())(*inputs)
    got = view(n_np, y)
    assert got.dtype == want.dtype and np.array_equal(got.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8)), \
        f"{op.name}: differs from the engine kernel at {np.flatnonzero(got.reshape(-1) != want.reshape(-1))[:10]}"
    return got


# ---- the real model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory):
    path = new_task_bundle(tmp_path_factory, "tinytl-lb") / "inference.tflite"
    eng = Engine(path)
    x = np.random.default_rng(0).integers(-128, 128, (1, 32, 32, 1)).astype(np.int8)
    _, env = eng.run(x, intermediates=True)
    return eng, env, RawModel(path.read_bytes())


def _int8_ops(eng):
    return [op for op in eng.ops if eng.tensors[op.inputs[0]].type == "INT8"]


def test_every_int8_op_of_the_bundle_matches_the_engine(bundle_run):
    eng, env, raw = bundle_run
    ops = _int8_ops(eng)
    assert {op.name for op in ops} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "PAD", "FULLY_CONNECTED", "DEQUANTIZE"}
    for op in ops:
        values = {i: env[i] for i in op.inputs if i >= 0 and eng.tensors[i].data is None}
        got = check_op(op, eng.tensors, values, raw, want=env[op.outputs[0]])
        if got.dtype == np.int8 and got.size > 64:
            assert len(np.unique(got)) > 4, f"op #{op.index} {op.name}: a degenerate output tests little"


def test_trainable_float_bias_equals_its_int32_encoding(bundle_run):
    """kind 1: the kernel encodes the float32 bias per channel (tt_bias_i32) exactly as bias_int32 does."""
    eng, env, raw = bundle_run
    rng = np.random.default_rng(1)
    convs = [op for op in _int8_ops(eng) if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    for op in convs[:4] + convs[-2:]:
        xi, wi, bi = op.inputs[:3]
        scales = bias_scale(eng.tensors[xi].quant.scale[0], eng.tensors[wi].quant.scale)
        b_int = eng.tensors[bi].data
        v = (b_int * scales.astype(np.float64) + rng.normal(0, 2, b_int.shape) * scales).astype(np.float32)
        v[:2] = (np.float64(b_int[:2]) + 0.5) * scales[:2]      # near ties
        tensors = list(eng.tensors)
        tensors[bi] = dataclasses.replace(tensors[bi], data=bias_int32(v, scales))   # what `convert merge` writes
        values = {xi: env[xi]}
        inputs = [values[xi], tensors[wi].data, tensors[bi].data]
        want = KERNELS[op.name](op, tensors, KernelConfig())(*inputs)
        check_op(op, eng.tensors, values, raw, float_bias={bi: (v, scales)}, want=want)


# ---- hand-built ops ------------------------------------------------------------------------------------

class Graph:
    """A few tensors and one op, TFLiteModel-like; constants go to a model Layout (their file offsets)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.tensors: list[TensorInfo] = []
        self.m = model()
        self.values: dict[int, np.ndarray] = {}

    def _add(self, shape, type_, scale, zp, data=None, axis=0) -> int:
        q = None
        if scale is not None:
            q = QuantParams(np.atleast_1d(np.asarray(scale, np.float32)), np.atleast_1d(np.asarray(zp, np.int64)), axis)
        i = len(self.tensors)
        offset = self.m.put(data).offset if data is not None else None
        self.tensors.append(TensorInfo(i, f"t{i}", tuple(shape), type_, DTYPES[type_], i, data, q, offset=offset))
        return i

    def act(self, shape, scale=0.05, zp=None, fill=True) -> int:
        """An int8 activation (random values when fill)."""
        zp = int(self.rng.integers(-20, 20)) if zp is None else zp
        i = self._add(shape, "INT8", scale, zp)
        if fill:
            self.values[i] = self.rng.integers(-128, 128, shape).astype(np.int8)
        return i

    def const(self, data, scale=None, zp=0, axis=0) -> int:
        data = np.asarray(data)
        name = {np.dtype(v).name: k for k, v in DTYPES.items()}[data.dtype.name]
        return self._add(data.shape, name, scale, zp if scale is None else np.broadcast_to(zp, np.shape(scale)), data, axis)

    def op(self, name, inputs, outputs, **options) -> OpInfo:
        return OpInfo(0, 0, name, tuple(inputs), tuple(outputs), options)

    def check(self, op: OpInfo) -> np.ndarray:
        return check_op(op, self.tensors, self.values, self.m)


CONV_CASES = [  # (h, w, cin, cout, kh, kw, stride, padding, dilation, groups, act, per_channel)
    (9, 7, 3, 5, 3, 3, 1, "SAME", 1, 1, "RELU6", True),
    (8, 8, 4, 6, 3, 3, 2, "VALID", 1, 2, "NONE", True),
    (10, 10, 8, 16, 1, 1, 1, "SAME", 1, 1, "RELU", False),
    (11, 9, 2, 4, 3, 2, 2, "SAME", 2, 1, "NONE", True),
    (6, 6, 64, 7, 3, 3, 1, "SAME", 1, 1, "NONE", True),        # 576 taps: the float64 path of the numpy twin
    (7, 5, 6, 6, 5, 5, 1, "SAME", 1, 6, "RELU_N1_TO_1", True),   # groups == channels
    # the C core's GEMM path (no groups, <= 64 taps): blocks of 16 (or 8) output channels, taps in pairs
    (9, 7, 1, 16, 3, 3, 1, "SAME", 1, 1, "RELU6", True),       # 9 taps (odd), padding on all sides, one full block
    (5, 7, 24, 40, 1, 1, 1, "VALID", 1, 1, "NONE", True),      # 40 = 16 + 16 + a block of 8
    (4, 3, 64, 20, 1, 1, 1, "SAME", 1, 1, "RELU", True),       # 64 taps (the limit), 20 = 16 + 4
    (8, 7, 5, 9, 3, 3, 2, "SAME", 1, 1, "NONE", False),        # 45 taps, odd width, stride 2: padding on some sides
    (9, 9, 12, 17, 1, 1, 2, "VALID", 1, 1, "NONE", True),      # 17 = 16 + 1
    (6, 6, 13, 5, 5, 1, 1, "SAME", 1, 1, "RELU6", True),       # 65 taps: just past the GEMM path
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case):
    h, w, cin, cout, kh, kw, s, pad, d, groups, act, per_channel = case
    g = Graph(sum(case[:6]))
    k = kh * kw * cin // groups
    s_w = g.rng.uniform(0.002, 0.01, cout if per_channel else 1)
    x = g.act((1, h, w, cin), 0.03)
    wt = g.const(g.rng.integers(-127, 128, (cout, kh, kw, cin // groups)).astype(np.int8), s_w, 0, axis=0)
    bscale = np.float32(0.03) * np.broadcast_to(s_w, (cout,)).astype(np.float32)
    b = g.const(g.rng.integers(-3000, 3000, cout).astype(np.int32), bscale, 0)
    oh = (h + s - 1) // s if pad == "SAME" else (h - (kh - 1) * d - 1) // s + 1
    ow = (w + s - 1) // s if pad == "SAME" else (w - (kw - 1) * d - 1) // s + 1
    y = g.act((1, oh, ow, cout), float(0.03 * s_w.mean() * 4000 * np.sqrt(k) / 60), fill=False)
    out = g.check(g.op("CONV_2D", [x, wt, b], [y], padding=pad, stride_h=s, stride_w=s, dilation_h_factor=d,
                       dilation_w_factor=d, fused_activation_function=act))
    assert len(np.unique(out)) > 8
    g.check(g.op("CONV_2D", [x, wt, -1], [y], padding=pad, stride_h=s, stride_w=s, dilation_h_factor=d,
                 dilation_w_factor=d, fused_activation_function=act))                 # no bias


@pytest.mark.parametrize("name", ["CONV_2D", "DEPTHWISE_CONV_2D"])
def test_conv_rescale_above_one_and_large_bias(name):
    """Effective scales > 1 (a left shift in the fixed-point rescale) and biases near +-2^24."""
    g = Graph(5)
    s_w = g.rng.uniform(0.002, 0.01, 6)
    x = g.act((1, 5, 5, 6), 0.03, 0)
    wshape = (6, 3, 3, 6) if name == "CONV_2D" else (1, 3, 3, 6)
    wt = g.const(g.rng.integers(-3, 4, wshape).astype(np.int8), s_w, 0, axis=0 if name == "CONV_2D" else 3)
    b = g.const(np.int32([1 << 24, -(1 << 24), 5, -5, (1 << 24) - 1, 0]), np.float32(0.03) * s_w.astype(np.float32), 0)
    y = g.act((1, 5, 5, 6), float(0.03 * s_w.min() / 3), 0, fill=False)   # real = s_in s_w / s_out in (3, 15)
    opts = dict(padding="SAME", stride_h=1, stride_w=1, dilation_h_factor=1, dilation_w_factor=1, fused_activation_function="NONE")
    out = g.check(g.op(name, [x, wt, b], [y], **(opts if name == "CONV_2D" else dict(opts, depth_multiplier=1))))
    assert 0 < (np.abs(out.astype(int)) < 127).mean() < 1


@pytest.mark.parametrize("h,w,c,mult,k,s,pad,d,act", [
    (9, 9, 8, 1, 3, 1, "SAME", 1, "RELU6"), (10, 7, 70, 1, 3, 2, "VALID", 1, "NONE"),
    (8, 8, 5, 2, 3, 2, "SAME", 1, "RELU"), (12, 12, 3, 3, 5, 1, "SAME", 2, "NONE"), (6, 6, 130, 1, 2, 2, "VALID", 1, "NONE")])
def test_depthwise(h, w, c, mult, k, s, pad, d, act):
    g = Graph(h * w + c)
    cout = c * mult
    s_w = g.rng.uniform(0.005, 0.02, cout)
    x = g.act((1, h, w, c), 0.03)
    wt = g.const(g.rng.integers(-127, 128, (1, k, k, cout)).astype(np.int8), s_w, 0, axis=3)
    b = g.const(g.rng.integers(-500, 500, cout).astype(np.int32), np.float32(0.03) * s_w.astype(np.float32), 0)
    oh = (h + s - 1) // s if pad == "SAME" else (h - (k - 1) * d - 1) // s + 1
    ow = (w + s - 1) // s if pad == "SAME" else (w - (k - 1) * d - 1) // s + 1
    y = g.act((1, oh, ow, cout), float(0.03 * s_w.mean() * 4000 * k / 60), fill=False)
    out = g.check(g.op("DEPTHWISE_CONV_2D", [x, wt, b], [y], padding=pad, stride_h=s, stride_w=s, depth_multiplier=mult,
                       dilation_h_factor=d, dilation_w_factor=d, fused_activation_function=act))
    assert len(np.unique(out)) > 8


@pytest.mark.parametrize("rows,cin,cout,per_channel,act", [(1, 37, 10, True, "NONE"), (3, 160, 12, False, "RELU"),
                                                           (1, 600, 5, True, "NONE")])
def test_fully_connected(rows, cin, cout, per_channel, act):
    g = Graph(cin)
    s_w = g.rng.uniform(0.002, 0.01, cout if per_channel else 1)
    x = g.act((rows, cin), 0.04)
    wt = g.const(g.rng.integers(-127, 128, (cout, cin)).astype(np.int8), s_w, 0)
    b = g.const(g.rng.integers(-3000, 3000, cout).astype(np.int32))
    y = g.act((rows, cout), float(0.04 * s_w.mean() * 4000 * np.sqrt(cin) / 60), fill=False)
    out = g.check(g.op("FULLY_CONNECTED", [x, wt, b], [y], fused_activation_function=act, weights_format=0,
                       keep_num_dims=False))
    assert len(np.unique(out)) > 3


@pytest.mark.parametrize("name", ["ADD", "SUB", "MUL"])
@pytest.mark.parametrize("ashape,bshape,act", [((1, 5, 6, 7), (1, 5, 6, 7), "NONE"), ((1, 4, 5, 6), (1, 1, 1, 6), "RELU"),
                                               ((1, 4, 5, 6), (1, 4, 1, 1), "RELU6"), ((6,), (1, 3, 2, 6), "NONE")])
def test_binary(name, ashape, bshape, act):
    g = Graph(len(name) + sum(bshape))
    a, b = g.act(ashape, 0.05), g.act(bshape, 0.02)
    shape = np.broadcast_shapes(ashape, bshape)
    y = g.act(shape, 0.06 if name != "MUL" else 0.05 * 0.02 * 100, fill=False)
    out = g.check(g.op(name, [a, b], [y], fused_activation_function=act))
    assert len(np.unique(out)) > 8


@pytest.mark.parametrize("shape,axes,keep", [((1, 6, 5, 16), [1, 2], False), ((1, 6, 5, 16), [1, 2], True),
                                             ((1, 4, 4, 3, 8), [1, 2, 4], True), ((1, 7, 9), [-1], False),
                                             ((1, 2, 2, 160), [1, 2], False)])
def test_mean(shape, axes, keep):
    g = Graph(sum(shape))
    x = g.act(shape, 0.05)
    ax = g.const(np.int32(axes))
    out_shape = tuple(1 if (d in axes or d - len(shape) in axes) else n for d, n in enumerate(shape))
    if not keep:
        out_shape = tuple(n for d, n in enumerate(shape) if not (d in axes or d - len(shape) in axes))
    y = g.act(out_shape, 0.02, fill=False)
    g.check(g.op("MEAN", [x, ax], [y], keep_dims=keep))


@pytest.mark.parametrize("name,shape,pads", [("PAD", (1, 5, 6, 3), [[0, 0], [1, 1], [1, 2], [0, 0]]),
                                             ("PAD", (1, 4, 4, 8), [[0, 0], [0, 1], [0, 1], [2, 0]]),
                                             ("PADV2", (1, 3, 7), [[0, 0], [2, 1], [0, 3]])])
def test_pad(name, shape, pads):
    g = Graph(len(shape))
    x = g.act(shape, 0.05)
    p = g.const(np.int32(pads))
    inputs = [x, p] + ([g.const(np.int8([-7]))] if name == "PADV2" else [])
    y = g.act(tuple(n + a + b for n, (a, b) in zip(shape, pads)), 0.05, g.tensors[x].quant.zero_point[0], fill=False)
    g.check(g.op(name, inputs, [y]))


@pytest.mark.parametrize("name,shape,out", [("RESHAPE", (1, 4, 4, 6), (1, 96)), ("SQUEEZE", (1, 1, 1, 10), (1, 10)),
                                            ("EXPAND_DIMS", (1, 10), (1, 1, 10))])
def test_reshape_is_a_copy(name, shape, out):
    g = Graph(7)
    x = g.act(shape, 0.05, 3)
    inputs = [x] + ([g.const(np.int32(out))] if name == "RESHAPE" else [])
    y = g.act(out, 0.05, 3, fill=False)
    g.check(g.op(name, inputs, [y]))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dequantize(per_channel):
    g = Graph(3)
    x = g.act((1, 4, 5, 6), 0.05)
    if per_channel:
        g.tensors[x].quant = QuantParams(np.float32(g.rng.uniform(0.01, 0.1, 6)), np.int64(g.rng.integers(-5, 5, 6)), 3)
    y = g._add((1, 4, 5, 6), "FLOAT32", None, None)
    g.check(g.op("DEQUANTIZE", [x], [y]))


@pytest.mark.parametrize("name,s_in,s_out", [("QUANTIZE", 0.05, 0.03), ("QUANTIZE", 0.02, 0.09), ("RELU", 0.05, 0.05),
                                             ("RELU6", 0.05, 0.03), ("RELU_N1_TO_1", 0.02, 0.01)])
def test_requantize_and_relu(name, s_in, s_out):
    g = Graph(len(name))
    x = g.act((1, 7, 7, 9), s_in)
    y = g.act((1, 7, 7, 9), s_out, fill=False)
    out = g.check(g.op(name, [x], [y]))
    assert len(np.unique(out)) > 8


@pytest.mark.parametrize("name", ["AVERAGE_POOL_2D", "MAX_POOL_2D"])
@pytest.mark.parametrize("h,w,k,s,pad,act", [(8, 8, 2, 2, "VALID", "NONE"), (9, 7, 3, 2, "SAME", "RELU"),
                                             (5, 5, 5, 1, "VALID", "NONE"), (6, 10, 3, 1, "SAME", "RELU6")])
def test_pool(name, h, w, k, s, pad, act):
    g = Graph(h * w + k)
    x = g.act((1, h, w, 5), 0.05, -3)
    oh = (h + s - 1) // s if pad == "SAME" else (h - k) // s + 1
    ow = (w + s - 1) // s if pad == "SAME" else (w - k) // s + 1
    y = g.act((1, oh, ow, 5), 0.05, -3, fill=False)
    g.check(g.op(name, [x], [y], padding=pad, stride_h=s, stride_w=s, filter_height=k, filter_width=k,
                 fused_activation_function=act))


@pytest.mark.parametrize("axis", [3, 1, -1, 0])
def test_concatenation(axis):
    g = Graph(axis + 10)
    shapes = [(1, 3, 4, 5), (1, 3, 4, 2), (1, 3, 4, 7)] if axis in (3, -1) else \
        [(1, 2, 4, 5), (1, 3, 4, 5), (1, 1, 4, 5)] if axis == 1 else [(1, 2, 3), (1, 2, 3)]
    xs = [g.act(s, 0.05, 4) for s in shapes]
    ax = axis % len(shapes[0])
    out = list(shapes[0])
    out[ax] = sum(s[ax] for s in shapes)
    y = g.act(tuple(out), 0.05, 4, fill=False)
    g.check(g.op("CONCATENATION", xs, [y], axis=axis, fused_activation_function="NONE"))


@pytest.mark.parametrize("h,w,oh,ow,align,half", [(4, 4, 8, 8, False, True), (3, 5, 7, 4, False, False),
                                                  (4, 6, 9, 11, True, False), (8, 8, 4, 4, False, True),
                                                  (1, 1, 2, 2, False, True)])
def test_resize_bilinear(h, w, oh, ow, align, half):
    g = Graph(h * w + oh)
    x = g.act((1, h, w, 6), 0.05, 2)
    size = g.const(np.int32([oh, ow]))
    y = g.act((1, oh, ow, 6), 0.05, 2, fill=False)
    out = g.check(g.op("RESIZE_BILINEAR", [x, size], [y], align_corners=align, half_pixel_centers=half))
    assert out.shape == (1, oh, ow, 6)


def test_unsupported_combinations_name_the_op():
    g = Graph(0)
    x = g.act((1, 4, 4, 3), 0.05)
    wt = g.const(np.ones((2, 1, 1, 3), np.int8), [0.01, 0.01], [0, 1])          # filter zero point 1
    y = g.act((1, 4, 4, 2), 0.1, fill=False)
    op = g.op("CONV_2D", [x, wt, -1], [y], padding="SAME", stride_h=1, stride_w=1, dilation_h_factor=1,
              dilation_w_factor=1, fused_activation_function="NONE")
    with pytest.raises(UnsupportedOpError, match="CONV_2D"):
        ENCODERS[("CONV_2D", "INT8")](op, g.tensors, At(g.tensors, arena(), g.values))
    yq = g._add((1, 4, 4, 3), "INT32", 0.1, 0)
    with pytest.raises(UnsupportedOpError, match="QUANTIZE"):
        ENCODERS[("QUANTIZE", "INT8")](g.op("QUANTIZE", [x], [yq]), g.tensors, At(g.tensors, arena(), g.values))


def test_the_core_has_every_int8_op():
    from device.step.program import OPS
    from step_helpers import native_core
    c = native_core()
    codes = [d.code for d in OPS.values() if 100 <= d.code < 140]
    assert len(codes) >= 13 and all(c.has_op(k) for k in codes)
