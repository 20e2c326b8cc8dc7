"""Step-program ops of device/step/fwd_extra.py (int8 SOFTMAX, LOGISTIC, HARD_SWISH): one instruction per program,
numpy and the C core byte for byte, and both equal to the device engine's kernel (device/kernels/activations.py,
byte-exact with LiteRT's reference kernels: tests/test_engine_builtins.py) on random int8 inputs of several
shapes and quantization parameters."""
from __future__ import annotations

import numpy as np
import pytest

from device.kernels import KERNELS, UnsupportedOpError
from device.kernels.activations import SoftmaxRangeError
from device.native import NativeError
from device.step import fwd_extra
from device.step.program import IO, OPS, Memory, Program, run_numpy
from device.tflite_reader import OpInfo, QuantParams, TensorInfo
from step_helpers import arena, model, native_core, run_both, view


def _tensor(i: int, shape, scale: float, zp: int) -> TensorInfo:
    q = QuantParams(scale=np.float32([scale]), zero_point=np.int64([zp]), axis=0)
    return TensorInfo(index=i, name=f"t{i}", shape=tuple(shape), type="INT8", dtype=np.int8, buffer=0, quant=q)


def _op(name: str, shape, in_q, out_q, **options):
    tensors = [_tensor(0, shape, *in_q), _tensor(1, shape, *out_q)]
    return OpInfo(index=3, code=0, name=name, inputs=(0,), outputs=(1,), options=options), tensors


class _At:
    """Tensor index -> Ref in a test arena (what the program compiler's `at` gives the encoders)."""

    def __init__(self, refs):
        self.refs = refs

    def ref(self, i):
        return self.refs[i]


def _inputs(shape, rng) -> list[np.ndarray]:
    """Random bytes, narrow random ranges (many ties at the row max), extremes and a ramp over every byte."""
    n = int(np.prod(shape))
    xs = [rng.integers(-128, 128, shape).astype(np.int8),
          rng.integers(-5, 6, shape).astype(np.int8),
          rng.integers(90, 128, shape).astype(np.int8),
          np.full(shape, -128, np.int8), np.full(shape, 127, np.int8),
          ((np.arange(n) * 37) % 256 - 128).astype(np.int8).reshape(shape)]
    return xs


def _check(name: str, shape, in_q, out_q, seed: int, **options) -> str:
    """Encode the op, run it by numpy and by C over several inputs; compare with each other and the engine."""
    op_, tensors = _op(name, shape, in_q, out_q, **options)
    kernel = KERNELS[name](op_, tensors)
    rng = np.random.default_rng(seed)
    for x in _inputs(shape, rng):
        a = arena()
        refs = {0: a.put(x), 1: a.empty(np.int8, shape)}
        instrs = fwd_extra.ENCODERS[(name, "INT8")](op_, tensors, _At(refs))
        assert len(instrs) == 1
        try:
            kernel(x)
        except SoftmaxRangeError:                   # LiteRT's reference aborts: numpy and C refuse the row
            _both_refuse(instrs, a)
            continue
        n_np, n_c, _, _ = run_both(instrs, a)
        assert np.array_equal(n_np, n_c), f"{name} {shape}: numpy and C arenas differ"
        np.testing.assert_array_equal(view(n_np, refs[1]), kernel(x), err_msg=f"{name} {shape} {in_q} {out_q}")
    return instrs[0].op


def _both_refuse(instrs, a) -> None:
    prog = Program(instrs, arena_bytes=a.size, model=model().bytes().tobytes())
    with pytest.raises(SoftmaxRangeError):
        run_numpy(prog, Memory(a.bytes(), model().bytes()))
    with pytest.raises(NativeError, match="malformed arguments"):
        native_core().run(prog.encode(), a.bytes(), model().bytes(), IO())


SHAPES = [(1, 10), (1, 1000), (1, 4, 4, 7), (3, 2, 5), (2, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [1.0, 0.5, 2.5])
def test_softmax(shape, beta):
    rng = np.random.default_rng(len(shape))
    for k, scale in enumerate([0.02, 0.1, 0.3, float(rng.uniform(0.01, 0.5)), 4.0, 40.0]):
        zp = int(rng.integers(-20, 20))
        assert _check("SOFTMAX", shape, (scale, zp), (1 / 256, -128), seed=k, beta=beta) == "softmax_s8"


def test_softmax_in_place():
    """y may be x: the row's max and sum are taken before any element is written."""
    op_, tensors = _op("SOFTMAX", (4, 9), (0.07, 3), (1 / 256, -128), beta=1.0)
    x = np.random.default_rng(0).integers(-128, 128, (4, 9)).astype(np.int8)
    a = arena()
    r = a.put(x)
    instrs = fwd_extra.ENCODERS[("SOFTMAX", "INT8")](op_, tensors, _At({0: r, 1: r}))
    n_np, n_c, _, _ = run_both(instrs, a)
    assert np.array_equal(n_np, n_c)
    np.testing.assert_array_equal(view(n_np, r), KERNELS["SOFTMAX"](op_, tensors)(x))


@pytest.mark.parametrize("shape", SHAPES)
def test_logistic(shape):
    rng = np.random.default_rng(7)
    for k, scale in enumerate([0.01, 0.05, 0.2, float(rng.uniform(0.01, 0.5)), 1.5]):
        assert _check("LOGISTIC", shape, (scale, int(rng.integers(-128, 128))), (1 / 256, -128), seed=k) == "lut_s8"


@pytest.mark.parametrize("shape", SHAPES)
def test_hard_swish(shape):
    rng = np.random.default_rng(11)
    # input scales from tiny (the relu-ish multiplier shifts right) to large (it shifts left, saturating)
    for k, si in enumerate([0.0005, 0.004, 0.02, 0.05, 0.2, 1.0]):
        so = si * float(rng.uniform(0.3, 1.2))
        zi, zo = int(rng.integers(-128, 128)), int(rng.integers(-128, 0))
        assert _check("HARD_SWISH", shape, (si, zi), (so, zo), seed=k) == "hard_swish_s8"


def test_every_byte_matches_the_int16_reference_pipeline_in_c():
    """All 256 input bytes through C for many quantizations (the LUT-free HARD_SWISH path)."""
    rng = np.random.default_rng(5)
    x = np.arange(-128, 128, dtype=np.int8)
    for _ in range(40):
        si = float(np.exp(rng.uniform(np.log(1e-4), np.log(2.0))))
        so = si * float(np.exp(rng.uniform(np.log(0.2), np.log(1.0))))
        op_, tensors = _op("HARD_SWISH", (256,), (si, int(rng.integers(-128, 128))), (so, int(rng.integers(-128, 128))))
        try:
            kernel = KERNELS["HARD_SWISH"](op_, tensors)
        except UnsupportedOpError:
            continue
        a = arena()
        refs = {0: a.put(x), 1: a.empty(np.int8, (256,))}
        instrs = fwd_extra.ENCODERS[("HARD_SWISH", "INT8")](op_, tensors, _At(refs))
        n_np, n_c, _, _ = run_both(instrs, a)
        assert np.array_equal(n_np, n_c)
        np.testing.assert_array_equal(view(n_c, refs[1]), kernel(x))


def test_softmax_rows_the_reference_aborts_on_are_refused():
    """A row whose exps sum to 512+ times its largest (600 equal values): LiteRT's BUILTIN_REF softmax aborts
    the process (TFLITE_CHECK, measured); the engine raises, the numpy op raises, the C op returns an error."""
    op_, tensors = _op("SOFTMAX", (1, 600), (0.1, 0), (1 / 256, -128), beta=1.0)
    x = np.zeros((1, 600), np.int8)
    with pytest.raises(SoftmaxRangeError, match="SOFTMAX"):
        KERNELS["SOFTMAX"](op_, tensors)(x)
    a = arena()
    refs = {0: a.put(x), 1: a.empty(np.int8, (1, 600))}
    _both_refuse(fwd_extra.ENCODERS[("SOFTMAX", "INT8")](op_, tensors, _At(refs)), a)
    x[0, 0] = 127                                            # one clear winner: computable
    y = KERNELS["SOFTMAX"](op_, tensors)(x)
    assert y[0, 0] >= 125 and (y[0, 1:] == -128).all()


def test_reference_requirements_are_checked():
    with pytest.raises(UnsupportedOpError, match="1/256"):
        KERNELS["SOFTMAX"](*_op("SOFTMAX", (1, 10), (0.1, 0), (1 / 128, -128), beta=1.0))
    with pytest.raises(UnsupportedOpError, match="1/256"):
        fwd_extra.ENCODERS[("LOGISTIC", "INT8")](*_op("LOGISTIC", (1, 10), (0.1, 0), (1 / 255, -128)), None)


def test_the_core_has_every_extra_op():
    c = native_core()
    codes = [d.code for d in OPS.values() if 170 <= d.code < 200]
    assert sorted(codes) == [170, 171, 172]
    assert all(c.has_op(k) for k in codes) and not c.has_op(173)
