"""TFLite's fixed-point requantization, vectorized over numpy int64 arrays (exact int32 semantics).

A real multiplier M > 0 is stored as an int32 `m` in [2^30, 2^31) and an exponent `shift` with
M ~= m * 2^(shift - 31) (QuantizeMultiplier). Applying it to an int32 x (MultiplyByQuantizedMultiplier):
1. x <<= max(shift, 0)                        (int32, wraps like C on overflow)
2. SaturatingRoundingDoublingHighMul(x, m):    (x * m + nudge) / 2^31, nudge = +-2^30, C truncation
3. RoundingDivideByPOT(., max(-shift, 0)):     arithmetic shift right, ties away from zero
"""
from __future__ import annotations

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """C's std::round (ties away from zero) in float64; exact for float32 inputs."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    r = np.floor(a)
    return np.sign(x) * (r + (a - r >= 0.5))          # a - r is exact, unlike a + 0.5


def quantize_multiplier(real: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """double multiplier(s) -> (int32 multiplier, shift) as int64 arrays (TFLite's QuantizeMultiplier)."""
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    q, shift = np.frexp(real)                        # real = q * 2^shift, q in [0.5, 1)
    shift = shift.astype(np.int64)
    q_fixed = round_half_away(q * float(1 << 31)).astype(np.int64)
    full = q_fixed == (1 << 31)                      # q rounded up to 1.0
    q_fixed = np.where(full, q_fixed // 2, q_fixed)
    shift = np.where(full, shift + 1, shift)
    tiny = shift < -31                               # flushes to zero
    q_fixed, shift = np.where(tiny, 0, q_fixed), np.where(tiny, 0, shift)
    big = shift > 30                                 # saturates (never seen with sane scales)
    q_fixed, shift = np.where(big, INT32_MAX, q_fixed), np.where(big, 30, shift)
    return q_fixed, shift


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul of int32 values held in int64."""
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    hi = np.where(s >= 0, s >> 31, -((-s) >> 31))    # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, hi)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """int32 x (int64 array) times the fixed-point multiplier (m, shift); broadcasts per channel.

    Same results as srdhm + rounding_divide_by_pot (tests check it) in fewer passes, using for m >= 0:
    SaturatingRoundingDoublingHighMul(x, m) == floor((x * m + 2^30) / 2^31), and for RoundingDivideByPOT
    by r > 0: floor((v + 2^(r-1) - [v < 0]) / 2^r).
    """
    x = np.asarray(x, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if (m < 0).any():
        raise ValueError("negative quantized multiplier")
    if (shift > 0).any():
        x = _wrap32(x << np.maximum(shift, 0))
    v = x * m
    v += 1 << 30
    v >>= 31
    right = np.maximum(-shift, 0)
    if not right.any():
        return v
    neg = v >> 63                                       # -1 where negative, else 0
    neg *= (right > 0)
    v += neg
    v += np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    v >>= right
    return v


def multiply_by_quantized_multiplier_reference(x: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The step-by-step transcription (for tests): left shift, high multiply, rounding right shift."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(srdhm(_wrap32(x << left), np.asarray(m, dtype=np.int64)), right)


def multiply_smaller_than_one(x: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """MultiplyByQuantizedMultiplierSmallerThanOneExp: shift <= 0, no left shift."""
    return rounding_divide_by_pot(srdhm(np.asarray(x, dtype=np.int64), np.asarray(m, dtype=np.int64)),
                                  -np.asarray(shift, dtype=np.int64))


def requantize_exact_f64(acc: np.ndarray, m: np.ndarray, shift: np.ndarray, bound: float | None = None) -> np.ndarray:
    """multiply_by_quantized_multiplier for integer-valued float `acc`, computed in float64 when exact.

    For m >= 0, SaturatingRoundingDoublingHighMul(x, m) == floor(x * m / 2^31 + 1/2) and
    RoundingDivideByPOT rounds half away from zero. Both are exact in float64 while |x * m| < 2^52 (the
    other steps scale by powers of two); larger accumulators take the int64 route. Returns float64.
    bound: a known bound on |acc| (e.g. from the weights), saves scanning acc for its range.
    """
    m = np.asarray(m, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    max_left = 2.0 ** int(np.maximum(shift, 0).max())
    if bound is None:
        bound = max(float(acc.max()), -float(acc.min())) if acc.size else 0.0
    amax = bound * max_left
    if amax >= 2.0 ** 31 or amax * float(m.max()) >= 2.0 ** 52:
        return multiply_by_quantized_multiplier(acc.astype(np.int64), m, shift).astype(np.float64)
    # x << left and the 2^-31 of the high multiply folded into one exact float64 factor per channel
    t = np.multiply(acc, m * np.exp2(np.maximum(shift, 0) - 31.0), dtype=np.float64)
    t += 0.5
    np.floor(t, out=t)
    if (shift >= 0).all():
        return t
    t *= np.exp2(-np.maximum(-shift, 0).astype(np.float64))
    a = np.abs(t)
    a += 0.5
    np.floor(a, out=a)
    return np.copysign(a, t, out=a)
