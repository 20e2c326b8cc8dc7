"""The device engine against LiteRT's reference kernels (BUILTIN_REF): int8 outputs equal byte for byte.

Test models are small TF graphs converted full-integer int8 here (module-scoped, converted once):
- main: PAD + 3x3/s2 VALID conv, 3x3 SAME conv, depthwise, grouped conv (groups=2), 1x1 conv, ReLU6
  fused, residual ADD, depthwise with depth multiplier 2 and stride 2, global MEAN, FULLY_CONNECTED;
- resize: int8 RESIZE_BILINEAR (half-pixel centres, 2x and 5->8), AVERAGE_POOL_2D, MAX_POOL_2D, MUL, PAD;
- island: an int8 graph with a float island (DEQUANTIZE -> avg-as-depthwise, 1x1 conv, GroupNorm with
  MEAN/SUB/MUL/RSQRT/ADD, ReLU, RESIZE_BILINEAR -> QUANTIZE) added back with an int8 ADD. The int8 ops
  are byte-exact; the island's float ops agree with the reference to FLOAT_TOL and the final int8
  output to ISLAND_LSB (Engine(exact_float=True): every tensor identical);
- int8_norm: the island graph quantized entirely (int8 GroupNorm: SUB, MUL, MEAN, int8 RSQRT);
- a float graph whose constants the converter stores after the flatbuffer (Buffer.offset/size).
The default LiteRT path (XNNPACK) is compared too; it may differ by a few LSB and is only reported.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from device.engine import Engine  # noqa: E402
from device.kernels import UnsupportedOpError, multiply_by_quantized_multiplier, quantize_multiplier  # noqa: E402
from device.kernels._fixed_point import multiply_by_quantized_multiplier_reference as mbqm_reference  # noqa: E402
from device.kernels._fixed_point import requantize_exact_f64, rounding_divide_by_pot  # noqa: E402
from device.tflite_reader import read_tflite  # noqa: E402

FLOAT_TOL = 1e-5      # relative, float island tensors vs the reference (summation order may differ)
ISLAND_LSB = 1        # int8 outputs downstream of a float island: at most 1 LSB apart


# ---------------------------------------------------------------- model building (TensorFlow, tests only)

def _w(rng, *shape, s=0.3):
    return tf.constant(rng.normal(0, s, shape).astype(np.float32))


def _conv(x, w, b, stride=1, pad="SAME"):
    return tf.nn.bias_add(tf.nn.conv2d(x, w, stride, pad), b)


def _dw(x, w, b, stride=1, pad="SAME"):
    return tf.nn.bias_add(tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], pad), b)


def build_main():
    r = np.random.default_rng(0)
    c = dict(w1=_w(r, 3, 3, 3, 16), b1=_w(r, 16), w2=_w(r, 3, 3, 16, 16, s=0.1), b2=_w(r, 16),
             wd=_w(r, 3, 3, 16, 1), bd=_w(r, 16), wg=_w(r, 3, 3, 8, 16, s=0.15), bg=_w(r, 16),
             w11=_w(r, 1, 1, 16, 16, s=0.2), b11=_w(r, 16), wm=_w(r, 3, 3, 16, 2), bm=_w(r, 32),
             wf=_w(r, 32, 10, s=0.2), bf=_w(r, 10))

    def f(x):
        y = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        y = tf.nn.relu6(_conv(y, c["w1"], c["b1"], 2, "VALID"))         # PAD + VALID stride 2
        y = tf.nn.relu6(_conv(y, c["w2"], c["b2"]))
        z = tf.nn.relu6(_dw(y, c["wd"], c["bd"]))
        z = _conv(z, c["wg"], c["bg"])                                   # grouped, groups=2
        z = _conv(z, c["w11"], c["b11"], 1, "VALID")                     # 1x1
        y = tf.nn.relu6(y + z)                                           # residual ADD + ReLU6
        y = tf.nn.relu6(_dw(y, c["wm"], c["bm"], 2))                     # depth multiplier 2, stride 2
        g = tf.reduce_mean(y, axis=(1, 2))
        return tf.nn.bias_add(tf.matmul(g, c["wf"]), c["bf"])
    return f, (1, 16, 16, 3)


def build_resize():
    r = np.random.default_rng(1)
    c = dict(w1=_w(r, 1, 1, 4, 6), b1=_w(r, 6), w2=_w(r, 1, 1, 6, 6), b2=_w(r, 6))

    def f(x):
        y = _conv(x, c["w1"], c["b1"])                                   # (1, 5, 5, 6)
        u = tf.compat.v1.image.resize_bilinear(y, (8, 8), half_pixel_centers=True)
        v = tf.compat.v1.image.resize_bilinear(y, (10, 10), half_pixel_centers=True)
        v = tf.nn.avg_pool2d(v, 2, 2, "VALID") * tf.nn.max_pool2d(v, 3, 2, "SAME")   # (1, 5, 5, 6), MUL
        v = tf.compat.v1.image.resize_bilinear(v, (8, 8), half_pixel_centers=True)
        u = tf.pad(u, [[0, 0], [1, 0], [0, 1], [0, 0]])
        v = tf.pad(v, [[0, 0], [1, 0], [0, 1], [0, 0]])
        return _conv(u + v, c["w2"], c["b2"])
    return f, (1, 5, 5, 4)


def build_island():
    r = np.random.default_rng(2)
    c = dict(w1=_w(r, 3, 3, 4, 8), b1=_w(r, 8), wl=_w(r, 1, 1, 8, 8), bl=_w(r, 8),
             gamma=_w(r, 8), beta=_w(r, 8), wf=_w(r, 8, 5), bf=_w(r, 5))

    def f(x):
        y = tf.nn.relu6(_conv(x, c["w1"], c["b1"]))                       # (1, 8, 8, 8) int8
        with tf.name_scope("island"):
            b = tf.nn.depthwise_conv2d(y, tf.fill((2, 2, 8, 1), 0.25), [1, 2, 2, 1], "VALID")
            b = _conv(b, c["wl"], c["bl"])                               # (1, 4, 4, 8)
            z = tf.reshape(b, (1, 4, 4, 2, 4))                           # GroupNorm, 2 groups
            mean = tf.reduce_mean(z, axis=(1, 2, 4), keepdims=True)
            d = z - mean
            var = tf.reduce_mean(d * d, axis=(1, 2, 4), keepdims=True)
            z = tf.reshape(d * tf.math.rsqrt(var + 1e-5), (1, 4, 4, 8))
            b = tf.nn.relu(z * c["gamma"] + c["beta"])
            b = tf.compat.v1.image.resize_bilinear(b, (8, 8), half_pixel_centers=True, name="up")
        y = y + b
        g = tf.reduce_mean(y, axis=(1, 2))
        return tf.nn.bias_add(tf.matmul(g, c["wf"]), c["bf"])
    return f, (1, 8, 8, 4)


def build_unsupported():
    r = np.random.default_rng(3)
    w, b = _w(r, 3, 3, 3, 4), _w(r, 4)

    def f(x):
        return tf.math.tanh(_conv(x, w, b))                              # int8 TANH: no kernel
    return f, (1, 6, 6, 3)


def convert(builder, *, island: bool = False, n_calib: int = 64) -> bytes:
    fn, shape = builder()
    cf = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    rng = np.random.default_rng(7)
    calib = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(n_calib)]
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], cf)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    if not island:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        return conv.convert()
    # as convert/ does: calibrate, then quantize with the island's ops denylisted (kept float)
    conv._experimental_calibrate_only = True  # noqa: SLF001
    calibrated = conv.convert()
    it = litert.Interpreter(model_content=calibrated)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    deny = [names[o] for op in it._get_ops_details() for o in op["outputs"] if "island" in names.get(o, "")]  # noqa: SLF001
    from tensorflow.lite.python.convert import mlir_quantize
    return mlir_quantize(calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8,
                         denylisted_nodes=deny)


# ---------------------------------------------------------------- reference runs

def reference(model: bytes, *, xnnpack: bool = False):
    kind = litert.OpResolverType.AUTO if xnnpack else litert.OpResolverType.BUILTIN_REF
    it = litert.Interpreter(model_content=model, experimental_op_resolver_type=kind,
                            experimental_preserve_all_tensors=not xnnpack)
    it.allocate_tensors()
    return it


def ref_run(it, x: np.ndarray) -> np.ndarray:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def inputs(eng: Engine, n: int, seed: int) -> list[np.ndarray]:
    """Random int8 images plus structured ones: extremes, constants, ramps, checkerboards, real-ish
    (float normal data quantized by the model's input parameters)."""
    shape = tuple(eng.input_details[0]["shape"])
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-128, 128, shape, dtype=np.int8) for _ in range(n)]
    xs += [np.full(shape, v, np.int8) for v in (-128, 127, 0, eng.input_details[0]["quantization"][1])]
    ramp = (np.arange(np.prod(shape)) % 256 - 128).astype(np.int8).reshape(shape)
    xs += [ramp, -ramp - 1, np.where(np.indices(shape).sum(0) % 2 == 0, 127, -128).astype(np.int8)]
    xs += [eng.quantize_input(rng.normal(0, s, shape)) for s in (0.5, 1.0, 2.0) for _ in range(n // 4)]
    return xs


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return {"main": convert(build_main), "resize": convert(build_resize), "island": convert(build_island, island=True),
            "int8_norm": convert(build_island)}    # the same graph fully int8: GroupNorm in int8 (RSQRT, SUB, MEAN)


# ---------------------------------------------------------------- tests

def test_fixed_point_helpers():
    m, s = quantize_multiplier(np.array([0.5, 0.75, 1.0, 3.0, 1e-12, 0.0]))
    assert list(m[:4]) == [1 << 30, 3 << 29, 1 << 30, 3 << 29] and list(s[:4]) == [0, 0, 1, 2]
    assert m[4] == 0 and s[4] == 0 and m[5] == 0                        # below 2^-31: flushed
    rng = np.random.default_rng(0)
    for _ in range(20):                                                # the fast forms == the transcription
        m, s = quantize_multiplier(np.exp(rng.uniform(np.log(1e-9), np.log(50), 32)))
        x = np.concatenate([rng.integers(-2**31, 2**31, (50, 32)), rng.integers(-3000, 3000, (50, 32))])
        np.testing.assert_array_equal(multiply_by_quantized_multiplier(x, m, s), mbqm_reference(x, m, s))
        small = rng.integers(-2**20, 2**20, (50, 32))
        np.testing.assert_array_equal(requantize_exact_f64(small.astype(np.float64), m, s), mbqm_reference(small, m, s))
    x = np.array([1, 2, 3, -1, -2, -3, 5, -5, 0])
    # 0.5 = 2^30 * 2^-31: SaturatingRoundingDoublingHighMul alone, its nudge rounds ties up (+inf)
    assert list(multiply_by_quantized_multiplier(x, *quantize_multiplier(0.5))) == [1, 1, 2, 0, -1, -1, 3, -2, 0]
    # 0.25 = 0.5 * 2^-1: the final RoundingDivideByPOT rounds ties away from zero
    assert list(rounding_divide_by_pot(x, 1)) == [1, 1, 2, -1, -1, -2, 3, -3, 0]
    assert list(multiply_by_quantized_multiplier(np.array([6, -6, 10, -10]), *quantize_multiplier(0.25))) == [2, -2, 3, -3]


def test_reader_matches_interpreter(models):
    for name, model in models.items():
        m = read_tflite(model)
        it = reference(model)
        details = {d["index"]: d for d in it.get_tensor_details()}
        assert len(m.tensors) <= len(details), name                    # the interpreter adds scratch tensors
        for t in m.tensors:
            d = details[t.index]
            assert t.name == d["name"] and tuple(t.shape) == tuple(d["shape"]) and np.dtype(t.dtype) == d["dtype"]
            qp = d["quantization_parameters"]
            if t.quant is not None:
                np.testing.assert_array_equal(t.quant.scale, qp["scales"])
                np.testing.assert_array_equal(t.quant.zero_point, qp["zero_points"])
                assert t.quant.axis == qp["quantized_dimension"]
            if t.data is not None:
                np.testing.assert_array_equal(t.data, it.get_tensor(t.index))
        ops = it._get_ops_details()  # noqa: SLF001
        assert [o.name for o in m.ops] == [o["op_name"] for o in ops]
        assert [list(o.inputs) for o in m.ops] == [list(o["inputs"]) for o in ops]


@pytest.mark.parametrize("name", ["main", "resize", "int8_norm"])
def test_int8_bit_exact(models, name):
    model = models[name]
    eng, ref = Engine(model), reference(model)
    ops = {o.name for o in eng.ops}
    expected = {"main": {"PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"},
                "resize": {"RESIZE_BILINEAR", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MUL", "PAD", "ADD", "CONV_2D"},
                "int8_norm": {"RSQRT", "SUB", "MUL", "MEAN", "RESHAPE", "RESIZE_BILINEAR"}}[name]
    assert expected <= ops, ops
    if name == "main":
        groups = [eng.tensors[o.inputs[0]].shape[3] // eng.tensors[o.inputs[1]].shape[3] for o in eng.ops if o.name == "CONV_2D"]
        assert 2 in groups, "the grouped conv must stay one CONV_2D"
    for x in inputs(eng, 24, seed=len(name)):
        y, acts = eng.run(x, intermediates=True)
        ref_y = ref_run(ref, x)
        assert y.dtype == ref_y.dtype and y.shape == ref_y.shape
        for i, a in acts.items():                                       # every intermediate, byte for byte
            np.testing.assert_array_equal(a, ref.get_tensor(i), err_msg=f"{name}: tensor {eng.tensors[i].name}")
        np.testing.assert_array_equal(y, ref_y)


def test_float_model_with_buffers_outside_the_flatbuffer():
    """The converter's large-model layout (Buffer.offset/size past the flatbuffer; it applies it to float
    models) reads the same; the all-float graph with exact_float=True equals the reference bit for bit."""
    fn, shape = build_main()
    cf = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], cf)
    conv._experimental_use_buffer_offset = True  # noqa: SLF001
    model = conv.convert()
    assert read_tflite(model).external_buffers > 0
    eng, ref = Engine(model, exact_float=True), reference(model)
    rng = np.random.default_rng(4)
    for _ in range(8):
        x = rng.normal(0, 1, shape).astype(np.float32)
        np.testing.assert_array_equal(eng.run(x), ref_run(ref, x))


def test_batch_equals_single(models):
    eng = Engine(models["main"])
    xs = np.concatenate(inputs(eng, 8, seed=5))
    ys = eng.run(xs)
    assert ys.shape[0] == len(xs)
    np.testing.assert_array_equal(ys, np.concatenate([eng.run(x[None]) for x in xs]))


def test_float_island(models):
    """Default engine: float tensors within FLOAT_TOL, int8 within ISLAND_LSB (measured: exact, 0 LSB).
    exact_float=True: every tensor, float ones included, identical to the reference."""
    model = models["island"]
    eng, exact, ref = Engine(model), Engine(model, exact_float=True), reference(model)
    ops = [o.name for o in eng.ops]
    assert {"DEQUANTIZE", "QUANTIZE", "RSQRT", "RESIZE_BILINEAR"} <= set(ops), ops
    worst_float, worst_lsb = 0.0, 0
    for x in inputs(eng, 16, seed=9):
        y, acts = eng.run(x, intermediates=True)
        _, acts_exact = exact.run(x, intermediates=True)
        ref_y = ref_run(ref, x)
        for i, a in acts.items():
            r = ref.get_tensor(i)
            np.testing.assert_array_equal(acts_exact[i], r, err_msg=eng.tensors[i].name)
            if a.dtype == np.float32:
                worst_float = max(worst_float, float(np.max(np.abs(a - r)) / (np.max(np.abs(r)) + 1e-12)))
            else:
                worst_lsb = max(worst_lsb, int(np.max(np.abs(a.astype(int) - r.astype(int)))))
        assert np.max(np.abs(y.astype(int) - ref_y.astype(int))) <= ISLAND_LSB
    print(f"float island (default engine): max relative float error {worst_float:.2e}, max int8 difference {worst_lsb} LSB")
    assert worst_float <= FLOAT_TOL and worst_lsb <= ISLAND_LSB


def test_xnnpack_difference_is_small(models):
    """LiteRT's default (XNNPACK) kernels may round differently by an LSB: report, bound loosely."""
    for name, model in models.items():
        eng, xnn = Engine(model), reference(model, xnnpack=True)
        diff = max(int(np.max(np.abs(eng.run(x).astype(int) - ref_run(xnn, x).astype(int))))
                   for x in inputs(eng, 16, seed=11))
        print(f"{name}: max |engine - XNNPACK| = {diff} LSB")
        assert diff <= 4                                                # measured: 2, 3, 1 LSB


def test_unsupported_op_is_named():
    model = convert(build_unsupported, n_calib=8)
    with pytest.raises(UnsupportedOpError, match="TANH") as e:
        Engine(model)
    assert e.value.op_name == "TANH" and e.value.tensor_name


def test_input_checks(models):
    eng = Engine(models["main"])
    x = np.zeros(tuple(eng.input_details[0]["shape"]), np.float32)
    with pytest.raises(TypeError, match="quantize_input"):
        eng.run(x)
    with pytest.raises(ValueError, match="shape"):
        eng.run(np.zeros((1, 3, 3, 3), np.int8))


@pytest.mark.parametrize("name", ["main", "resize", "int8_norm", "island"])
@pytest.mark.parametrize("engine", ["native", "numpy"])
def test_inference_program_equals_the_reference_kernels(models, name, engine):
    """Any int8 .tflite compiled into an inference program (device/step/infer.py): its outputs on the C core and
    on numpy equal LiteRT's reference kernels byte for byte (int8 outputs; the float island's ops are compared
    inside, so a different float rounding would show in the int8 output)."""
    from device.step.infer import InferenceProgram
    if engine == "native":
        from step_helpers import native_core
        native_core()
    model = models[name]
    net, ref = InferenceProgram(model, engine=engine), reference(model)
    eng = Engine(model)
    xs = inputs(eng, 8, seed=len(name))
    if name == "int8_norm":   # RSQRT's input must not go below its zero point (the reference rejects it)
        xs = [x for x in xs if _rsqrt_ok(eng, x)]
    y = net.run(np.concatenate(xs))
    ref_y = np.concatenate([ref_run(ref, x) for x in xs])
    assert y.dtype == ref_y.dtype and len(xs) > 4
    np.testing.assert_array_equal(y, ref_y)


def _rsqrt_ok(eng, x) -> bool:
    try:
        eng.run(x)
        return True
    except ValueError:
        return False
