"""The float-island forward ops (device/step/fwd_float.py, device/native/core/fwd_float.c): every float op of a
real lite-residual model, and hand-built ops the bundle lacks, run as one-instruction programs with numpy and
with C. Numpy == C over the whole arena, byte for byte, and both == the engine's exact float kernels
(KernelConfig(exact_float=True), bit-exact with LiteRT's BUILTIN_REF) byte for byte."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from device.kernels import KERNELS, KernelConfig, UnsupportedOpError
from device.step.fwd_float import ENCODERS, fuse_group_norm
from device.step.program import MODEL, NONE, Ref
from device.tflite_reader import OpInfo, QuantParams, TensorInfo
from device_helpers import animal_npz, new_task_bundle
from step_helpers import arena, model, native_core, run_both, view

EXACT = KernelConfig(exact_float=True)


class At:
    """Where each tensor lives for an encoder: activations (and constants named in `in_arena`, as trainable
    parameters are) in the arena; other constants in the MODEL memory, at TensorInfo.offset when the model
    file's bytes are that memory, else placed in it."""

    def __init__(self, tensors: list[TensorInfo], values: dict, m=None, in_arena=()):
        self.tensors, self.values, self.in_arena = tensors, values, set(in_arena)
        self.a, self.m, self.refs = arena(), m or model(), {}

    def ref(self, i: int) -> Ref:
        if i < 0:
            return NONE
        if i not in self.refs:
            t = self.tensors[i]
            if t.data is not None and i not in self.in_arena:
                self.refs[i] = (Ref(MODEL, t.offset, np.dtype(t.dtype).name, tuple(t.shape)) if t.offset is not None
                                else self.m.put(np.asarray(t.data)))
            elif t.data is not None:
                self.refs[i] = self.a.put(np.asarray(t.data))
            elif i in self.values:
                self.refs[i] = self.a.put(np.asarray(self.values[i], t.dtype).reshape(t.shape))
            else:
                self.refs[i] = self.a.empty(t.dtype, t.shape)
        return self.refs[i]


def model_file_layout(raw: bytes):
    """The MODEL memory holding a .tflite file's bytes at offset 0 (constants sit at TensorInfo.offset)."""
    m = model()
    m.put(np.frombuffer(raw, np.uint8))
    return m


def check_op(op: OpInfo, tensors: list[TensorInfo], values: dict, m=None, in_arena=(), want=None) -> np.ndarray:
    """Encode op, run it with numpy and C: equal arenas, and the output == the engine kernel's (or `want`),
    byte for byte."""
    at = At(tensors, values, m, in_arena)
    x_type = tensors[op.inputs[0]].type
    instrs = ENCODERS[(op.name, x_type)](op, tensors, at)
    out = at.ref(op.outputs[0])
    n_np, n_c, _, _ = run_both(instrs, at.a, at.m)
    where = f"op #{op.index} {op.name}"
    assert np.array_equal(n_np, n_c), f"{where}: numpy and C arenas differ"
    args = [None if i < 0 else (tensors[i].data if tensors[i].data is not None else values[i]) for i in op.inputs]
    if want is None:
        with np.errstate(all="ignore"):
            want = KERNELS[op.name](op, tensors, EXACT)(*args)
    want = np.asarray(want).astype(tensors[op.outputs[0]].dtype)
    got = view(n_np, out)
    assert got.shape == tuple(tensors[op.outputs[0]].shape)
    if got.tobytes() != want.reshape(got.shape).tobytes():
        bad = np.flatnonzero(got.reshape(-1).view(np.uint8) != want.reshape(-1).view(np.uint8))
        raise AssertionError(f"{where}: differs from the engine at {bad.size} bytes, e.g. {got.reshape(-1)[:4]} vs "
                             f"{want.reshape(-1)[:4]}")
    return got


# ---- every float op of a real model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def island(tmp_path_factory):
    from device.data import to_model_input
    from device.engine import Engine
    path = new_task_bundle(tmp_path_factory, "tinytl-lb")
    raw = (path / "inference.tflite").read_bytes()
    manifest = json.loads((path / "manifest.json").read_text())
    z = np.load(animal_npz(tmp_path_factory, "train", 4))
    eng = Engine(raw, exact_float=True)
    _, env = eng.run(to_model_input(z["x"][:1], manifest), intermediates=True)
    return raw, eng.tensors, eng.ops, env


def test_every_float_op_of_the_lite_branch_model_matches_c_and_the_engine(island):
    raw, tensors, ops, env = island
    m = model_file_layout(raw)
    rng = np.random.default_rng(0)
    seen = Counter()
    for op in ops:
        if tensors[op.inputs[0]].type != "FLOAT32":
            continue
        acts = [i for i in op.inputs if i >= 0 and tensors[i].data is None]
        check_op(op, tensors, {i: env[i] for i in acts}, m)
        # the same op on random activations (a fresh bundle's zero-started GroupNorm gammas make later ones 0)
        check_op(op, tensors, {i: rng.normal(0, 2, tensors[i].shape).astype(np.float32) for i in acts}, m)
        seen[op.name] += 1
    assert set(seen) >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL", "MEAN", "RSQRT", "RESHAPE",
                         "RESIZE_BILINEAR", "PAD", "QUANTIZE"}, seen


def test_trainable_island_weights_in_the_arena(island):
    """Lite-branch weights are trained: the same conv with its filter and bias in the arena."""
    raw, tensors, ops, env = island
    conv = max((op for op in ops if op.name == "CONV_2D" and tensors[op.inputs[0]].type == "FLOAT32"),
               key=lambda op: tensors[op.inputs[1]].data.size * np.prod(tensors[op.outputs[0]].shape))
    check_op(conv, tensors, {conv.inputs[0]: env[conv.inputs[0]]}, model_file_layout(raw), in_arena=conv.inputs[1:])


def _chain_value(chain: list[OpInfo], tensors, x: int, value: np.ndarray) -> np.ndarray:
    """The GroupNorm chain op by op with the engine's exact kernels (LiteRT BUILTIN_REF bits)."""
    env = {x: value}
    with np.errstate(all="ignore"):
        for op in chain:
            args = [None if i < 0 else (tensors[i].data if tensors[i].data is not None else env[i]) for i in op.inputs]
            env[op.outputs[0]] = np.asarray(KERNELS[op.name](op, tensors, EXACT)(*args)).astype(np.float32)
    return env[chain[-1].outputs[0]]


def _check_fused(ops, k, tensors, m, value, alias=False):
    at = At(tensors, {ops[k].inputs[0]: value}, m)
    if alias:                                        # the planner put the norm's output over its input
        n = fuse_group_norm(ops, k, tensors, at, lambda *_: True)[0]
        at.refs[ops[k + n - 1].outputs[0]] = at.ref(ops[k].inputs[0])
    n, instrs = fuse_group_norm(ops, k, tensors, at, lambda *_: True)
    assert [i.op for i in instrs] == ["group_norm_f32"]
    chain = list(ops[k:k + n])
    n_np, n_c, _, _ = run_both(instrs, at.a, at.m)
    assert np.array_equal(n_np, n_c), f"GroupNorm at op #{ops[k].index}: numpy and C arenas differ"
    got = view(n_np, at.ref(chain[-1].outputs[0]))
    want = _chain_value(chain, tensors, ops[k].inputs[0], value)
    assert got.tobytes() == want.reshape(got.shape).tobytes(), f"GroupNorm at op #{ops[k].index} differs from the chain"
    return chain


def test_group_norm_chains_fuse_into_one_kernel_with_the_chains_bits(island):
    """Each GroupNorm chain of the lite-branch model (RESHAPE .. RSQRT .. ADD beta, 11 ops) as one instruction:
    numpy == C == the chain op by op, byte for byte, on its real input and on random ones, also when the
    output overwrites the input; with gamma's MUL gone (the converter drops a MUL by ones) too."""
    raw, tensors, ops, env = island
    m = model_file_layout(raw)
    rng = np.random.default_rng(1)
    starts = [k for k in range(len(ops)) if fuse_group_norm(ops, k, tensors, At(tensors, {}, m), lambda *_: True)]
    assert len(starts) >= 4 and {len(fuse_group_norm(ops, k, tensors, At(tensors, {}, m), lambda *_: True)[1]) for k in starts} == {1}
    for k in starts:
        x = ops[k].inputs[0]
        chain = _check_fused(ops, k, tensors, m, env[x])
        assert [op.name for op in chain][-2:] == ["MUL", "ADD"] and len(chain) == 11
        _check_fused(ops, k, tensors, m, (rng.normal(0, 3, tensors[x].shape) + 1.5).astype(np.float32), alias=True)
    # no gamma: the ADD of beta reads the RESHAPE's output
    k = starts[0]
    chain = list(ops[k:k + 11])
    add = dataclasses.replace(chain[10], inputs=(chain[8].outputs[0], chain[10].inputs[1]))
    short = list(ops[:k]) + chain[:9] + [add]
    got = _check_fused(short, k, tensors, m, env[ops[k].inputs[0]])
    assert len(got) == 10


def test_group_norm_stays_op_by_op_when_its_insides_are_needed(island):
    """Not fused (so the chain's own instructions run) when an intermediate is read elsewhere, or when the
    output would partly overlap the input."""
    raw, tensors, ops, env = island
    m = model_file_layout(raw)
    k = next(k for k in range(len(ops)) if fuse_group_norm(ops, k, tensors, At(tensors, {}, m), lambda *_: True))
    assert fuse_group_norm(ops, k, tensors, At(tensors, {}, m), lambda inner, pos: False) is None
    at = At(tensors, {}, m)
    x = at.ref(ops[k].inputs[0])
    at.refs[ops[k + 10].outputs[0]] = Ref(x.base, x.offset + 4, "float32", x.shape)
    assert fuse_group_norm(ops, k, tensors, at, lambda *_: True) is None


# ---- hand-built ops: what the bundle lacks --------------------------------------------------------------

def _t(i: int, shape, data=None, type_: str = "FLOAT32", quant=None) -> TensorInfo:
    dt = {"FLOAT32": np.float32, "INT32": np.int32, "INT8": np.int8}[type_]
    return TensorInfo(i, f"t{i}", tuple(shape), type_, dt, 0, None if data is None else np.asarray(data, dt), quant)


def _rand(rng, shape, s=1.0):
    return rng.normal(0, s, shape).astype(np.float32)


def _window_opts(padding, stride, dil=1, act="NONE", **kw):
    return dict(padding=padding, stride_h=stride, stride_w=stride, dilation_h_factor=dil, dilation_w_factor=dil,
                fused_activation_function=act, **kw)


@pytest.mark.parametrize("h,cin,cout,k,groups,padding,stride,dil,act,bias", [
    (9, 6, 4, 3, 1, "SAME", 1, 1, "RELU", True),
    (10, 8, 6, 5, 2, "SAME", 2, 1, "NONE", True),
    (11, 4, 8, 3, 4, "VALID", 2, 2, "RELU6", False),
    (7, 3, 5, 1, 1, "VALID", 1, 1, "RELU_N1_TO_1", True),
    (6, 4, 9, 2, 1, "SAME", 2, 1, "NONE", False),
])
def test_conv2d(h, cin, cout, k, groups, padding, stride, dil, act, bias):
    rng = np.random.default_rng(h)
    from device.kernels._common import out_size_and_pad
    oh = out_size_and_pad(h, k, stride, dil, padding)[0]
    w = _rand(rng, (cout, k, k, cin // groups), 0.5)
    w[0, 0, 0, :] = -w[0, 0, 0, :]                                 # signs of zero products vary
    tensors = [_t(0, (1, h, h, cin)), _t(1, w.shape, w), _t(2, (cout,), _rand(rng, cout)), _t(3, (1, oh, oh, cout))]
    op = OpInfo(0, 3, "CONV_2D", (0, 1, 2 if bias else -1), (3,), _window_opts(padding, stride, dil, act))
    x = _rand(rng, (1, h, h, cin))
    x[0, 0] = 0.0
    x[0, 1] = -0.0
    check_op(op, tensors, {0: x})
    check_op(op, tensors, {0: x}, in_arena=(1, 2))


@pytest.mark.parametrize("h,cin,mult,k,padding,stride,dil,act", [
    (9, 5, 1, 3, "SAME", 1, 1, "RELU6"), (10, 3, 2, 3, "SAME", 2, 1, "NONE"), (12, 4, 3, 2, "VALID", 2, 2, "RELU")])
def test_depthwise(h, cin, mult, k, padding, stride, dil, act):
    rng = np.random.default_rng(k)
    from device.kernels._common import out_size_and_pad
    oh = out_size_and_pad(h, k, stride, dil, padding)[0]
    tensors = [_t(0, (1, h, h, cin)), _t(1, (1, k, k, cin * mult), _rand(rng, (1, k, k, cin * mult))),
               _t(2, (cin * mult,), _rand(rng, cin * mult)), _t(3, (1, oh, oh, cin * mult))]
    op = OpInfo(0, 4, "DEPTHWISE_CONV_2D", (0, 1, 2), (3,), _window_opts(padding, stride, dil, act, depth_multiplier=mult))
    check_op(op, tensors, {0: _rand(rng, (1, h, h, cin), 2)})


@pytest.mark.parametrize("rows,cin,cout,bias,act", [(1, 40, 10, True, "NONE"), (3, 17, 5, False, "RELU")])
def test_fully_connected(rows, cin, cout, bias, act):
    rng = np.random.default_rng(cin)
    tensors = [_t(0, (rows, cin)), _t(1, (cout, cin), _rand(rng, (cout, cin))), _t(2, (cout,), _rand(rng, cout)),
               _t(3, (rows, cout))]
    op = OpInfo(0, 9, "FULLY_CONNECTED", (0, 1, 2 if bias else -1), (3,), dict(fused_activation_function=act))
    check_op(op, tensors, {0: _rand(rng, (rows, cin))})


@pytest.mark.parametrize("name", ["ADD", "SUB", "MUL", "DIV", "SQUARED_DIFFERENCE"])
@pytest.mark.parametrize("sa,sb,act", [
    ((1, 8, 8, 2, 8), (1, 1, 1, 2, 1), "NONE"), ((1, 5, 5, 6), (6,), "RELU"), ((2, 3, 4), (), "RELU6"),
    ((1, 4, 1, 3), (1, 1, 5, 1), "RELU_N1_TO_1"), ((2, 1, 4, 3, 2, 5), (1, 3, 1, 3, 2, 5), "NONE"),
    ((7,), (7,), "NONE")])
def test_binary_broadcasting(name, sa, sb, act):
    rng = np.random.default_rng(len(sa) * 10 + len(sb))
    out = np.broadcast_shapes(sa, sb)
    tensors = [_t(0, sa), _t(1, sb), _t(2, out)]
    op = OpInfo(0, 0, name, (0, 1), (2,), dict(fused_activation_function=act))
    a, b = _rand(rng, sa, 2), _rand(rng, sb, 2)
    a.reshape(-1)[:2] = [-0.0, 0.0]
    check_op(op, tensors, {0: a, 1: b})
    if name != "DIV":                                              # the second input a constant in the model
        tensors[1] = _t(1, sb, b)
        check_op(op, tensors, {0: a})


def test_binary_more_than_four_dimensions_after_merging_is_unsupported():
    s = (2, 1, 2, 1, 2, 1, 2, 1, 2)
    tensors = [_t(0, s), _t(1, tuple(3 - v for v in s)), _t(2, (2,) * 9)]
    with pytest.raises(UnsupportedOpError):
        ENCODERS[("ADD", "FLOAT32")](OpInfo(0, 0, "ADD", (0, 1), (2,), {}), tensors, At(tensors, {}))


@pytest.mark.parametrize("name", ["RSQRT", "SQRT", "ABS", "NEG", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE"])
def test_unary(name):
    rng = np.random.default_rng(1)
    x = np.concatenate([_rand(rng, 200, 4), np.float32([0.0, -0.0, 6.0, -1.0, 1.0, np.inf, -np.inf, np.nan])])
    if name in ("RSQRT", "SQRT"):
        x = np.abs(x) if name == "SQRT" else np.concatenate([np.abs(x), np.float32([-1.0])])
    tensors = [_t(0, (1, x.size)), _t(1, (x.size,) if name == "RESHAPE" else (1, x.size))]
    check_op(OpInfo(0, 0, name, (0,), (1,), {}), tensors, {0: x[None]})


@pytest.mark.parametrize("shape,axes,keep", [((1, 6, 7, 5), (1, 2), False), ((1, 6, 7, 5), (1, 2), True),
                                             ((1, 4, 4, 3, 8), (1, 2, 4), True), ((2, 3, 4), (0, 2), False),
                                             ((3, 50), (-1,), False), ((5, 4), (0, 1), True)])
def test_mean(shape, axes, keep):
    rng = np.random.default_rng(len(shape))
    nd = len(shape)
    out = tuple(1 if a in {x % nd for x in axes} else d for a, d in enumerate(shape) if keep or a not in {x % nd for x in axes})
    tensors = [_t(0, shape), _t(1, (len(axes),), np.int32(axes), "INT32"), _t(2, out)]
    x = _rand(rng, shape, 3) + np.float32(1.5)
    check_op(OpInfo(0, 40, "MEAN", (0, 1), (2,), dict(keep_dims=keep)), tensors, {0: x})


@pytest.mark.parametrize("scale,zp", [(0.02, -5), (0.5, 0), (1 / 3, 127)])
def test_quantize(scale, zp):
    rng = np.random.default_rng(2)
    s = np.float32(scale)
    halves = (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * s   # ties (where representable)
    x = np.concatenate([_rand(rng, 500, 3), halves, np.float32([0, -0.0, 1e9, -1e9, 3e15, -3e15])])
    q = QuantParams(np.float32([scale]), np.int64([zp]), 0)
    tensors = [_t(0, (x.size,)), _t(1, (x.size,), type_="INT8", quant=q)]
    op = OpInfo(0, 114, "QUANTIZE", (0,), (1,), {})
    check_op(op, tensors, {0: x})
    # beyond 2^63 the engine's float -> int64 cast overflows (LiteRT's float -> int32 cast is undefined there):
    # ours saturates, and a NaN gives -128
    ext = np.float32([1e30, np.inf, -1e30, -np.inf, np.nan, -np.nan])
    tensors = [_t(0, (6,)), _t(1, (6,), type_="INT8", quant=q)]
    check_op(op, tensors, {0: ext}, want=np.int8([127, 127, -128, -128, -128, -128]))


@pytest.mark.parametrize("h,w,oh,ow,align,half", [(4, 4, 8, 8, False, True), (5, 3, 9, 7, True, False),
                                                  (3, 6, 7, 4, False, False), (2, 2, 4, 4, False, True)])
def test_resize_bilinear(h, w, oh, ow, align, half):
    rng = np.random.default_rng(oh)
    tensors = [_t(0, (1, h, w, 5)), _t(1, (2,), np.int32([oh, ow]), "INT32"), _t(2, (1, oh, ow, 5))]
    op = OpInfo(0, 23, "RESIZE_BILINEAR", (0, 1), (2,), dict(align_corners=align, half_pixel_centers=half))
    check_op(op, tensors, {0: _rand(rng, (1, h, w, 5))})


@pytest.mark.parametrize("name,shape,pads,value", [("PAD", (1, 4, 4, 3), [[0, 0], [2, 2], [1, 3], [0, 0]], None),
                                                   ("PADV2", (1, 3, 5, 2), [[0, 0], [0, 1], [2, 0], [1, 1]], -1.5),
                                                   ("PAD", (3, 4), [[1, 0], [0, 2]], None)])
def test_pad(name, shape, pads, value):
    rng = np.random.default_rng(3)
    out = tuple(s + a + b for s, (a, b) in zip(shape, pads))
    tensors = [_t(0, shape), _t(1, (len(shape), 2), np.int32(pads), "INT32"), _t(2, out)]
    inputs = (0, 1)
    if value is not None:
        tensors.append(_t(3, (1,), [value]))
        inputs = (0, 1, 3)
    check_op(OpInfo(0, 34, name, inputs, (2,), {}), tensors, {0: _rand(rng, shape)})


@pytest.mark.parametrize("h,k,stride,padding,act", [(8, 2, 2, "VALID", "NONE"), (7, 3, 2, "SAME", "RELU6"),
                                                    (5, 5, 1, "SAME", "RELU")])
def test_average_pool(h, k, stride, padding, act):
    rng = np.random.default_rng(h)
    from device.kernels._common import out_size_and_pad
    oh = out_size_and_pad(h, k, stride, 1, padding)[0]
    tensors = [_t(0, (1, h, h, 4)), _t(1, (1, oh, oh, 4))]
    opts = dict(padding=padding, stride_h=stride, stride_w=stride, filter_height=k, filter_width=k,
                fused_activation_function=act)
    check_op(OpInfo(0, 1, "AVERAGE_POOL_2D", (0,), (1,), opts), tensors, {0: _rand(rng, (1, h, h, 4), 3)})


def test_the_core_has_every_float_op():
    from device.step.program import OPS
    c = native_core()
    codes = [d.code for d in OPS.values() if 140 <= d.code < 170]
    assert len(codes) >= 10 and all(c.has_op(k) for k in codes)
