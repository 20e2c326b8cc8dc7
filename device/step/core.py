"""Core ops of every step program, numpy twins of device/native/core/interp.c (same operations, same order):
copies, ReLU masks, the float classifier head, softmax cross entropy, the non-finite check, SGD and Adam.

Float32 throughout; sums run one term at a time in a stated order (never a BLAS or pairwise reduction), and
exp/log are our own (no libm), so the C core reproduces every bit.
"""
from __future__ import annotations

import numpy as np

from .program import op

F32 = np.float32


def round_away(x: np.ndarray) -> np.ndarray:
    """float32 round half away from zero (tt_round_away)."""
    a = np.abs(x)
    r = np.trunc(a)
    r = r + (a - r >= F32(0.5)).astype(F32)
    r = np.where(a >= F32(8388608.0), a, r)
    return np.copysign(r, x).astype(F32)


def expf(x: np.ndarray) -> np.ndarray:
    """e^x in float32 (tt_expf): x = n ln2 + r, a degree-6 polynomial in r, times 2^n built from bits."""
    x = np.clip(np.asarray(x, F32), F32(-87.0), F32(88.0))
    n = round_away(x * F32(1.44269504))
    r = x - n * F32(0.693145752)
    r = r - n * F32(1.42860677e-06)
    p = F32(1) + r * (F32(1) + r * (F32(0.5) + r * (F32(0.166666672) + r * (F32(0.0416666679) + r * (F32(0.00833333377) + r * F32(0.00138888892))))))
    return (p * ((n.astype(np.int32) + 127) << 23).astype(np.uint32).view(F32)).astype(F32)


def logf(x: np.ndarray) -> np.ndarray:
    """log(x) in float32 for x >= 1 (tt_logf): exponent * ln2 + 2 atanh((m - 1) / (m + 1))."""
    u = np.asarray(x, F32).view(np.uint32)
    k = (((u >> 23) & 0xFF).astype(np.int32) - 127).astype(F32)
    mant = ((u & 0x007FFFFF) | 0x3F800000).astype(np.uint32).view(F32)
    t = (mant - F32(1)) / (mant + F32(1))
    t2 = t * t
    s = F32(2) * t * (F32(1) + t2 * (F32(0.333333343) + t2 * (F32(0.2) + t2 * (F32(0.142857149) + t2 * (F32(0.111111112) + t2 * (F32(0.0909090936) + t2 * F32(0.0769230798)))))))
    return (k * F32(0.693147182) + s).astype(F32)


def seq_sum(x: np.ndarray) -> np.float32:
    """x[0] + x[1] + ... in float32, in order (np.cumsum adds sequentially)."""
    return np.cumsum(x, dtype=F32)[-1] if x.size else F32(0)


@op("copy", 1, "n:i32 src:ref dst:ref")
def copy(mem, n, src, dst):
    dst[...] = src


@op("mask_s8", 2, "n:i32 src:ref dst:ref lo:i32 hi:i32")
def mask_s8(mem, n, src, dst, lo, hi):
    """1-bit ReLU/ReLU6 derivative from the int8 output: lo < y < hi, packed most significant bit first."""
    dst[...] = np.packbits((src > lo) & (src < hi))


@op("mask_f32", 3, "n:i32 src:ref dst:ref lo:f32 hi:f32")
def mask_f32(mem, n, src, dst, lo, hi):
    dst[...] = np.packbits((src > F32(lo)) & (src < F32(hi)))


@op("head", 4, "cin:i32 cout:i32 x:ref w:ref b:ref y:ref scale:f32 zp:i32")
def head(mem, cin, cout, x, w, b, y, scale, zp):
    """Float classifier on the saved int8 features: y[o] = sum_i (float(x_i - zp) * scale) * w[o, i] + b[o]."""
    xf = (x.reshape(-1).astype(np.int32) - zp).astype(F32) * F32(scale)
    acc = np.zeros(cout, F32)
    for i in range(cin):
        acc += xf[i] * w[:, i]
    y.reshape(-1)[...] = acc + b


@op("softmax_ce", 5, "n:i32 z:ref d:ref")
def softmax_ce(mem, n, z, d):
    """loss = log(sum e^(z - max)) - (z_label - max); d = softmax - onehot. A non-finite loss ends the step."""
    z, d = z.reshape(-1), d.reshape(-1)
    label = mem.io.label
    if not 0 <= label < n:
        raise ValueError(f"label {label} out of range for {n} classes")
    mx = z.max()
    d[...] = expf(z - mx)
    s = seq_sum(d)
    loss = logf(np.array([s], F32))[0] - (z[label] - mx)
    mem.io.loss = float(loss)
    if not (np.isfinite(loss) and np.isfinite(mx)):
        mem.skip = True
        return
    d /= s
    d[label] -= F32(1)


@op("check_finite", 6, "n:i32 g:ref")
def check_finite(mem, n, g):
    if not np.isfinite(g).all():
        mem.skip = True


@op("sgd", 7, "n:i32 p:ref g:ref buf:ref momentum:f32")
def sgd(mem, n, p, g, buf, momentum):
    """torch.optim.SGD with momentum: buf = g on the first update, else buf * mu + g; p -= lr * buf."""
    if mem.io.first:
        buf[...] = g
    else:
        buf *= F32(momentum)
        buf += g
    p -= F32(mem.io.lr) * buf


@op("adam", 8, "n:i32 p:ref g:ref m1:ref m2:ref beta1:f32 beta2:f32 a1:f32 a2:f32 eps:f32")
def adam(mem, n, p, g, m1, m2, beta1, beta2, a1, a2, eps):
    """torch.optim.Adam; io.lr = lr / (1 - beta1^t), io.sqrt_c2 = sqrt(1 - beta2^t); a1, a2 = 1 - beta."""
    m1 *= F32(beta1)
    m1 += F32(a1) * g
    t = F32(a2) * g
    t *= g
    m2 *= F32(beta2)
    m2 += t
    den = np.sqrt(m2)
    den /= F32(mem.io.sqrt_c2)
    den += F32(eps)
    num = F32(mem.io.lr) * m1
    num /= den
    p -= num


@op("applied", 9, "")
def applied(mem):
    mem.io.applied = 1
