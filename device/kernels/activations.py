"""int8 SOFTMAX, LOGISTIC and HARD_SWISH as LiteRT's reference resolver (BUILTIN_REF) computes them.

What kReference runs for int8 (tflite/kernels/activations.cc of LiteRT 2.x, checked against the wheel):
- SOFTMAX: reference_ops::Softmax, gemmlowp fixed point (not the float LUT of the optimized kernel).
  beta * in_scale * 2^26 becomes a multiplier >= 1 (PreprocessSoftmaxScaling, capped at 2^31 - 1, no
  shift clamp); along the last axis each difference d = x - max with d >= diff_min (CalculateInputRadius)
  is rescaled to Q5.26, exp'd by exp_on_negative_values (Q0.31), summed in Q12.19; the sum's reciprocal
  comes from one_over_one_plus_x_for_x_in_0_1 (3 Newton steps); y = RDBPOT(SRDHM(recip, e), exponent)
  - 128, saturated. Differences below diff_min give -128. The output scale/zero point (1/256, -128) are
  required, not used. e depends on the input byte difference only: a 256-entry table per op.
- LOGISTIC: a 256-entry lookup table filled at Prepare (LUTPopulate<int8_t>) in float32:
  q = round(1 / (1 + expf(-(s_in * (x - z_in)))) * (1 / s_out)) + z_out, saturated; s_out must be 1/256.
  expf is the C library's (called through ctypes when the table is built, as LiteRT's kernel calls it).
- HARD_SWISH: reference_ops::HardSwish<int8_t>, int16 fixed point (input << 7, two 16-bit multipliers
  from QuantizeMultiplier + DownScaleInt32ToInt16Multiplier, rounding and truncating doubling high
  multiplies). A function of the input byte: tabulated per op as well.
"""
from __future__ import annotations

import math

import numpy as np

from ..tflite_reader import OpInfo, TensorInfo
from ._common import KernelConfig, UnsupportedOpError, tensor_qparams
from ._fixed_point import INT32_MAX, INT32_MIN, _wrap32, rounding_divide_by_pot, srdhm

# ---------------------------------------------------------------- exact scalar helpers (Python ints)


def _srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul, int32."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    v = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return v >> 31 if v >= 0 else -((-v) >> 31)


def _rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    return (x >> e) + ((x & mask) > (mask >> 1) + (x < 0))


def _sat_shl(x: int, e: int) -> int:
    """gemmlowp SaturatingRoundingMultiplyByPOT<e>, e > 0, int32."""
    thr = (1 << (31 - e)) - 1
    return INT32_MAX if x > thr else INT32_MIN if x < -thr else x << e


def _wrap(x: int) -> int:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def quantize_multiplier_exact(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier (double rounding build: no clamp of shifts above 30)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(abs(q) * (1 << 31) + 0.5)) * (1 if q > 0 else -1)   # std::round, exact here
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


# ---------------------------------------------------------------- SOFTMAX

SOFTMAX_INTEGER_BITS = 5           # Q5.26 differences
SOFTMAX_ACCUM_BITS = 12            # Q12.19 sum of exps
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535),
               (3, 720401), (4, 242))                                    # exp(-2^k) in Q0.31


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: int) -> int:
    """Q0.31 in [-1/4, 0) -> exp(a) in Q0.31: Taylor series around -1/8."""
    c_exp_m1_8, c_1_3 = 1895147668, 715827883
    x = _wrap(a + (1 << 28))
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _rdbpot(x4, 2)
    poly = _rdbpot(_wrap(_srdhm(_wrap(x4_over_4 + x3), c_1_3) + x2), 1)
    return _wrap(c_exp_m1_8 + _srdhm(c_exp_m1_8, _wrap(x + poly)))


def exp_on_negative_values(a: int) -> int:
    """gemmlowp exp_on_negative_values: Q5.26 raw a <= 0 -> exp(a) as Q0.31 raw."""
    frac = 31 - SOFTMAX_INTEGER_BITS
    quarter = 1 << (frac - 2)
    a_mod = _wrap((a & (quarter - 1)) - quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(_sat_shl(a_mod, SOFTMAX_INTEGER_BITS))
    remainder = _wrap(a_mod - a)
    for k, mult in _EXP_BARREL:
        if remainder & (1 << (frac + k)):
            result = _srdhm(result, mult)
    return INT32_MAX if a == 0 else result


def softmax_params(beta: float, in_scale: float) -> tuple[int, int, int]:
    """PreprocessSoftmaxScaling + CalculateInputRadius: (multiplier, left shift, diff_min)."""
    real = min(float(beta) * float(in_scale) * float(1 << (31 - SOFTMAX_INTEGER_BITS)), float((1 << 31) - 1))
    m, shift = quantize_multiplier_exact(real)
    if shift < 0:
        raise ValueError(f"beta * input scale = {beta * in_scale:g} is too small for the reference softmax")
    radius = math.floor(((1 << SOFTMAX_INTEGER_BITS) - 1) * float(1 << (31 - SOFTMAX_INTEGER_BITS)) / float(1 << shift))
    return m, shift, -int(radius)


def softmax_exp_table(beta: float, in_scale: float) -> np.ndarray:
    """exp of each input difference d = 0, -1, ..., -255 (entry k holds d = -k) as Q0.31, 0 where d < diff_min
    (the reference skips those: they add nothing to the sum and come out as -128, as a zero exp does)."""
    m, shift, diff_min = softmax_params(beta, in_scale)
    table = np.zeros(256, np.int64)
    for k in range(256):
        d = -k
        if d >= diff_min:
            table[k] = exp_on_negative_values(_srdhm(_wrap(d << shift), m))
    return table


def _sat_shl_v(x: np.ndarray, e: int) -> np.ndarray:
    thr = (1 << (31 - e)) - 1
    return np.where(x > thr, INT32_MAX, np.where(x < -thr, INT32_MIN, x << e))


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1: Q0.31 a in [0, 1) -> 1 / (1 + a) in Q0.31 (Newton-Raphson
    in Q2.29 from 48/17 - 32/17 d, d = (1 + a) / 2)."""
    a = np.asarray(a, np.int64)
    s = a + INT32_MAX                                        # RoundingHalfSum(a, One), C division
    half_den = np.where(s >= 0, (s + 1) // 2, -((-s + 1) // 2))
    x = _wrap32(1515870810 + srdhm(half_den, np.int64(-1010580540)))
    for _ in range(3):
        one_minus = _wrap32((1 << 29) - srdhm(half_den, x))
        x = _wrap32(x + _sat_shl_v(srdhm(x, one_minus), 2))
    return _sat_shl_v(x, 1)


class SoftmaxRangeError(ValueError):
    """A row the reference int8 softmax cannot compute (it aborts the process there)."""


def softmax_rows(x: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """int8 (rows, depth) -> int8 (rows, depth): the reference's per-row computation given the exp table."""
    xi = x.astype(np.int64)
    e = exp_table[xi.max(axis=1, keepdims=True) - xi]                       # Q0.31
    total = _wrap32(rounding_divide_by_pot(e, SOFTMAX_ACCUM_BITS).sum(axis=1))   # Q12.19
    if (total <= 0).any():
        raise ValueError("softmax: sum of exps not positive (malformed exp table, or a row beyond 4095 values)")
    headroom = 32 - np.frexp(total.astype(np.float64))[1].astype(np.int64)  # count of leading zeros
    recip = one_over_one_plus_x((total << headroom) - (1 << 31))
    exponent = (SOFTMAX_ACCUM_BITS - headroom) + 31 - 8
    if (exponent > 31).any():
        raise SoftmaxRangeError("softmax: a row's sum of exps reaches 512 times its largest (near-uniform rows of 512+ "
                                "values); LiteRT's reference kernel aborts there (TFLITE_CHECK on the output shift)")
    y = rounding_divide_by_pot(srdhm(recip[:, None], e), exponent[:, None]) - 128
    return np.clip(y, -128, 127).astype(np.int8)


def _check_int8(op: OpInfo, tensors: list[TensorInfo]) -> tuple[TensorInfo, TensorInfo]:
    x_t, y_t = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if x_t.type != "INT8" or y_t.type != "INT8":
        raise UnsupportedOpError(op, tensors, f"{x_t.type} -> {y_t.type}: only int8 -> int8 is implemented")
    return x_t, y_t


def softmax_check(op: OpInfo, tensors: list[TensorInfo]) -> np.ndarray:
    """Checks what the reference's Prepare checks; returns the op's exp table."""
    x_t, y_t = _check_int8(op, tensors)
    si, _zi = tensor_qparams(op, tensors, x_t)
    so, zo = tensor_qparams(op, tensors, y_t)
    if zo != -128 or abs(float(so) - 1 / 256) > 0.001 / 256:
        raise UnsupportedOpError(op, tensors, f"int8 softmax needs output scale 1/256 and zero point -128, "
                                              f"got {float(so):g}, {zo}")
    try:
        return softmax_exp_table(np.float32(op.options.get("beta", 1.0)), si)
    except ValueError as e:
        raise UnsupportedOpError(op, tensors, str(e)) from None


def prepare_softmax(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    table = softmax_check(op, tensors)

    def run(x: np.ndarray, *_):
        try:
            return softmax_rows(x.reshape(-1, x.shape[-1]), table).reshape(x.shape)
        except SoftmaxRangeError as e:
            out = tensors[op.outputs[0]]
            raise SoftmaxRangeError(f"op #{op.index} SOFTMAX ('{out.name}'): {e}") from None
    return run


# ---------------------------------------------------------------- LOGISTIC


_LIBM: list = []


def _libm_expf():
    """The C library's expf (what LiteRT's kernel calls through std::exp(float)), or None."""
    if not _LIBM:
        fn = None
        try:
            import ctypes
            import ctypes.util
            lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
            fn = lib.expf
            fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
        except (OSError, AttributeError):
            fn = None
        _LIBM.append(fn)
    return _LIBM[0]


def expf(x: np.ndarray) -> np.ndarray:
    """float32 exp as the reference's LUT computes it: the C library's expf (glibc's is within 0.502 ULP, not
    always correctly rounded: it differs from the correctly rounded value on ~0.06% of inputs); without a C
    library, exp in float64 rounded to float32."""
    x = np.asarray(x, np.float32)
    fn = _libm_expf()
    if fn is None:
        with np.errstate(over="ignore"):
            return np.exp(x.astype(np.float64)).astype(np.float32)
    return np.array([fn(float(v)) for v in x.reshape(-1)], np.float32).reshape(x.shape)


def logistic_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> np.ndarray:
    """LUTPopulate<int8_t> of 1 / (1 + exp(-x)): entry k is the output for the input byte k - 128."""
    f32 = np.float32
    val = np.arange(-128, 128, dtype=np.int64)
    deq = f32(in_scale) * (val - in_zp).astype(f32)
    with np.errstate(over="ignore"):
        transformed = f32(1) / (f32(1) + expf(-deq))
    inverse_scale = f32(1) / f32(out_scale)
    t = (transformed * inverse_scale).astype(f32)
    rescaled = np.sign(t) * np.floor(np.abs(t).astype(np.float64) + 0.5)  # roundf (exact for float32)
    q = (rescaled.astype(f32) + f32(out_zp)).astype(np.int64)
    return np.clip(q, -128, 127).astype(np.int64)


def logistic_check(op: OpInfo, tensors: list[TensorInfo]) -> np.ndarray:
    x_t, y_t = _check_int8(op, tensors)
    si, zi = tensor_qparams(op, tensors, x_t)
    so, zo = tensor_qparams(op, tensors, y_t)
    if float(so) != 1 / 256:
        raise UnsupportedOpError(op, tensors, f"int8 logistic needs output scale 1/256, got {float(so):g}")
    return logistic_table(si, zi, so, zo)


def prepare_logistic(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    table = logistic_check(op, tensors).astype(np.int8)
    return lambda x, *_: table[x.astype(np.int64) + 128]


# ---------------------------------------------------------------- HARD_SWISH


def _downscale_to_int16(m: int) -> int:
    """DownScaleInt32ToInt16Multiplier."""
    return 32767 if m >= INT32_MAX - (1 << 15) else (m + (1 << 15)) >> 16


def hard_swish_params(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> dict:
    """HardSwishPrepare: the two int16 multipliers and their exponents (scales divided in float32)."""
    f32 = np.float32
    hires = f32(1.0 / 128.0) * f32(in_scale)
    out_m, out_e = quantize_multiplier_exact(float(f32(hires / f32(out_scale))))
    relu_m, relu_e = quantize_multiplier_exact(float(f32(hires / f32(3.0 / 32768.0))))
    return dict(zi=int(in_zp), zo=int(out_zp), out_m16=_downscale_to_int16(out_m), out_e=out_e,
                relu_m16=_downscale_to_int16(relu_m), relu_e=relu_e)


def _wrap16(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 15)) & 0xFFFF) - (1 << 15)


def srdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul for int16 (values in int64 arrays)."""
    ab = a * b
    s = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    hi = np.where(s >= 0, s >> 15, -((-s) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, _wrap16(hi))


def sdhm16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingDoublingHighMul (truncating: ab / 2^15 toward zero)."""
    ab = a * b
    hi = np.where(ab >= 0, ab >> 15, -((-ab) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, _wrap16(hi))


def rdbpot16(x: np.ndarray, e: int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT on int16 (the mask is an int16, as in the template)."""
    mask = int(_wrap16(np.int64((1 << e) - 1)))
    return _wrap16((x >> e) + ((x & mask) > (mask >> 1) + (x < 0)))


def sat_shl16(x: np.ndarray, e: int) -> np.ndarray:
    """SaturatingLeftShift: x * 2^e saturated to int16 (e capped at 40: the same saturation)."""
    return np.clip(x * (1 << min(e, 40)), -32768, 32767)


def hard_swish_int8(x: np.ndarray, zi: int, zo: int, out_m16: int, out_e: int, relu_m16: int,
                    relu_e: int) -> np.ndarray:
    """reference_ops::HardSwish<int8_t>, elementwise over an int8 array."""
    v = x.astype(np.int64) - zi
    hires = _wrap16(v * 128)                                              # |v| <= 255: no wrap in practice
    pre_out = srdhm16(hires, np.int64(out_m16))
    r = hires
    if relu_e > 0:
        r = sat_shl16(r, relu_e - 1)
    r = srdhm16(r, np.int64(relu_m16))
    if relu_e > 0:
        r = sat_shl16(r, 1)
    if relu_e < 0:
        r = rdbpot16(r, -relu_e)
    r = (r + (1 << 15)) >> 1                                              # [-1, 1] -> [0, 1]
    y = _wrap16(rdbpot16(sdhm16(r, pre_out), -out_e) + zo)               # int16 += zero point
    return np.clip(y, -128, 127).astype(np.int8)


def hard_swish_check(op: OpInfo, tensors: list[TensorInfo]) -> dict:
    x_t, y_t = _check_int8(op, tensors)
    p = hard_swish_params(*tensor_qparams(op, tensors, x_t), *tensor_qparams(op, tensors, y_t))
    if p["out_e"] > 0:
        raise UnsupportedOpError(op, tensors, "output multiplier above 1 (the reference rejects it)")
    return p


def prepare_hard_swish(op: OpInfo, tensors: list[TensorInfo], cfg: KernelConfig = KernelConfig()):
    p = hard_swish_check(op, tensors)
    table = hard_swish_int8(np.arange(-128, 128, dtype=np.int64), **p)
    return lambda x, *_: table[x.astype(np.int64) + 128]
