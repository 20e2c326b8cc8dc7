"""The device engine against LiteRT's reference kernels (BUILTIN_REF) on int8 classifiers that end or pad with
ops other tools emit: SOFTMAX (beta 1 and others), LOGISTIC, HARD_SWISH, and the data-movement ops around
them (MAX_POOL_2D, PAD, MEAN, CONCATENATION, RESHAPE/SQUEEZE). Every int8 tensor, byte for byte.

Models are small TF graphs converted full-integer int8 (int8 input and output) by TensorFlow's converter,
once per module:
- softmax: conv -> ReLU -> MEAN -> FULLY_CONNECTED -> SOFTMAX. The converter folds `softmax(beta * z)`'s
  beta into the FC weights (it always writes beta = 1), so the beta variants are the same model with the
  SOFTMAX op's beta field rewritten in the flatbuffer (what other tools emit);
- logistic: conv -> LOGISTIC (a gate) -> MEAN -> FC -> LOGISTIC (a multi-label head);
- hard_swish: conv -> HARD_SWISH -> depthwise -> HARD_SWISH -> MEAN -> FC -> SOFTMAX (MobileNetV3-like);
- layout: PAD (asymmetric) -> conv -> MAX_POOL_2D (VALID, 3x3/2) -> two conv branches -> CONCATENATION -> MAX_POOL_2D
  (SAME, 2x2/2) -> MEAN (keep_dims) -> SQUEEZE/RESHAPE -> FC -> RESHAPE -> SOFTMAX.
"""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert.interpreter")

from device.engine import Engine  # noqa: E402
from device.tflite_reader import _Table, read_tflite  # noqa: E402
from test_engine import _conv, _dw, _w, convert, inputs, ref_run, reference  # noqa: E402


def build_softmax():
    r = np.random.default_rng(10)
    w, b, wf, bf = _w(r, 3, 3, 3, 8), _w(r, 8), _w(r, 8, 10, s=1.0), _w(r, 10)

    def f(x):
        g = tf.reduce_mean(tf.nn.relu(_conv(x, w, b)), axis=(1, 2))
        return tf.nn.softmax(tf.nn.bias_add(tf.matmul(g, wf), bf))
    return f, (1, 8, 8, 3)


def build_logistic():
    r = np.random.default_rng(11)
    w, b, wf, bf = _w(r, 3, 3, 3, 8), _w(r, 8), _w(r, 8, 6, s=1.0), _w(r, 6)

    def f(x):
        y = tf.math.sigmoid(_conv(x, w, b))
        g = tf.reduce_mean(y, axis=(1, 2))
        return tf.math.sigmoid(tf.nn.bias_add(tf.matmul(g, wf), bf))
    return f, (1, 8, 8, 3)


def _hard_swish(y):
    return y * tf.nn.relu6(y + 3.0) * (1.0 / 6.0)          # the converter fuses this into HARD_SWISH


def build_hard_swish():
    r = np.random.default_rng(12)
    w, b, wd, bd = _w(r, 3, 3, 3, 8, s=0.5), _w(r, 8), _w(r, 3, 3, 8, 1, s=0.5), _w(r, 8)
    wf, bf = _w(r, 8, 10, s=0.5), _w(r, 10)

    def f(x):
        y = _hard_swish(_conv(x, w, b, 2))
        y = _hard_swish(_dw(y, wd, bd))
        g = tf.reduce_mean(y, axis=(1, 2))
        return tf.nn.softmax(tf.nn.bias_add(tf.matmul(g, wf), bf))
    return f, (1, 12, 12, 3)


def build_layout():
    r = np.random.default_rng(13)
    c = dict(w1=_w(r, 3, 3, 3, 8), b1=_w(r, 8), wa=_w(r, 1, 1, 8, 6), ba=_w(r, 6), wb=_w(r, 3, 3, 8, 4, s=0.2),
             bb=_w(r, 4), wf=_w(r, 10, 7, s=0.5), bf=_w(r, 7))

    def f(x):
        y = tf.pad(x, [[0, 0], [2, 1], [1, 2], [0, 0]])                       # asymmetric: stays a PAD op
        y = tf.nn.relu(_conv(y, c["w1"], c["b1"], 1, "VALID"))               # (1, 15, 15, 8)
        y = tf.nn.max_pool2d(y, 3, 2, "VALID")                               # (1, 7, 7, 8)
        a = tf.nn.relu(_conv(y, c["wa"], c["ba"]))
        b = tf.nn.relu(_conv(y, c["wb"], c["bb"]))
        y = tf.concat([a, b], axis=3)                                         # (1, 7, 7, 10)
        y = tf.nn.max_pool2d(y, 2, 2, "SAME")                                 # (1, 4, 4, 10)
        g = tf.squeeze(tf.reduce_mean(y, axis=(1, 2), keepdims=True), axis=(1, 2))
        z = tf.nn.bias_add(tf.matmul(g, c["wf"]), c["bf"])
        return tf.nn.softmax(tf.reshape(z, (1, 1, 7)))
    return f, (1, 14, 14, 3)


def with_softmax_beta(model: bytes, beta: float) -> bytes:
    """The same .tflite with every SOFTMAX's beta (SoftmaxOptions field 0, a float32) rewritten in place."""
    buf = bytearray(model)
    mv = memoryview(bytes(buf))
    root = _Table(mv, struct.unpack_from("<I", mv, 0)[0])
    codes = [max(int(oc.scalar(0, "b", 0)), int(oc.scalar(3, "i", 0))) for oc in root.tables(1)]
    n = 0
    for op_t in root.tables(2)[0].tables(3):
        if codes[int(op_t.scalar(0, "I", 0))] == 25:                          # SOFTMAX
            pos = op_t.table(4)._field(0)                                     # noqa: SLF001
            assert pos, "SOFTMAX without a stored beta"
            struct.pack_into("<f", buf, pos, beta)
            n += 1
    assert n, "no SOFTMAX op"
    return bytes(buf)


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    m = {"softmax": convert(build_softmax, n_calib=32), "logistic": convert(build_logistic, n_calib=32),
         "hard_swish": convert(build_hard_swish, n_calib=32), "layout": convert(build_layout, n_calib=32)}
    m["softmax_beta_0.5"] = with_softmax_beta(m["softmax"], 0.5)
    m["softmax_beta_2.5"] = with_softmax_beta(m["softmax"], 2.5)
    m["hard_swish_beta_1.7"] = with_softmax_beta(m["hard_swish"], 1.7)
    return m


EXPECTED = {
    "softmax": {"CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX"},
    "softmax_beta_0.5": {"SOFTMAX"}, "softmax_beta_2.5": {"SOFTMAX"}, "hard_swish_beta_1.7": {"HARD_SWISH", "SOFTMAX"},
    "logistic": {"CONV_2D", "LOGISTIC", "MEAN", "FULLY_CONNECTED"},
    "hard_swish": {"CONV_2D", "HARD_SWISH", "DEPTHWISE_CONV_2D", "MEAN", "SOFTMAX"},
    "layout": {"PAD", "MAX_POOL_2D", "CONCATENATION", "MEAN", "FULLY_CONNECTED", "SOFTMAX"},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_int8_bit_exact(models, name):
    model = models[name]
    eng, ref = Engine(model), reference(model)
    ops = [o.name for o in eng.ops]
    assert EXPECTED[name] <= set(ops), ops
    if name == "layout":
        assert {"RESHAPE", "SQUEEZE"} & set(ops), ops
    if "beta" in name:
        beta = float(name.rsplit("_", 1)[1])
        assert [o.options["beta"] for o in eng.ops if o.name == "SOFTMAX"] == [np.float32(beta)]
    checked = 0
    for x in inputs(eng, 24, seed=len(name)):
        y, acts = eng.run(x, intermediates=True)
        ref_y = ref_run(ref, x)
        assert y.dtype == ref_y.dtype == np.int8 and y.shape == ref_y.shape
        for i, a in acts.items():                                          # every tensor, byte for byte
            np.testing.assert_array_equal(a, ref.get_tensor(i), err_msg=f"{name}: tensor {eng.tensors[i].name}")
            checked += 1
        np.testing.assert_array_equal(y, ref_y)
    assert checked > 0


def test_outputs_are_informative(models):
    """Guard against a vacuous comparison: the heads' outputs vary with the input and use their range."""
    for name in ("softmax", "softmax_beta_2.5", "logistic", "hard_swish", "layout"):
        eng = Engine(models[name])
        ys = np.stack([eng.run(x) for x in inputs(eng, 24, seed=3)])
        assert len(np.unique(ys)) > 8, (name, np.unique(ys))


def test_softmax_beta_changes_the_output(models):
    eng1, eng2 = Engine(models["softmax"]), Engine(models["softmax_beta_2.5"])
    xs = inputs(eng1, 8, seed=4)
    assert any(not np.array_equal(eng1.run(x), eng2.run(x)) for x in xs)


def test_reader_sees_the_patched_beta(models):
    m = read_tflite(models["softmax_beta_0.5"])
    assert [o.options["beta"] for o in m.ops if o.name == "SOFTMAX"] == [0.5]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_inference_program_on_the_c_core_equals_litert_reference(models, name):
    """The same classifiers compiled into inference programs (device/step/infer.py) on the C core: outputs byte-equal
    to LiteRT's reference kernels."""
    from device.step.infer import InferenceProgram
    from step_helpers import native_core
    native_core()
    model = models[name]
    eng, ref = Engine(model), reference(model)
    xs = inputs(eng, 12, seed=len(name) + 1)
    y = InferenceProgram(model, engine="native").run(np.concatenate(xs))
    np.testing.assert_array_equal(y, np.concatenate([ref_run(ref, x) for x in xs]))
