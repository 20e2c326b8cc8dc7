"""The step program's core ops: the numpy reference and the C core agree bit for bit."""
from __future__ import annotations

import math

import numpy as np

from device.step import core
from device.step.program import IO, Instr
from step_helpers import arena, native_core, run_both, view


def test_exp_and_log_match_numpy_bit_for_bit_and_are_accurate():
    x = np.concatenate([np.linspace(-90, 0, 200001, dtype=np.float32), np.float32([0, -1e-8, -87, -88])])
    a = arena()
    src, dst = a.put(x), a.empty(np.float32, (len(x),))
    lx = np.linspace(1, 1000, 100001, dtype=np.float32)
    # softmax_ce computes exp of (z - max) and log of the sum; check the pieces through the op itself
    z = np.float32([0.5, -3.0, 2.25, 1.0])
    zr, dr = a.put(z), a.empty(np.float32, (4,))
    n_np, n_c, io_np, io_c = run_both([Instr("softmax_ce", dict(n=4, z=zr, d=dr))], a, io=IO(label=2))
    assert io_np.loss == io_c.loss and np.array_equal(view(n_np, dr), view(n_c, dr))
    p = np.exp(z.astype(np.float64) - z.max())
    p /= p.sum()
    assert abs(io_np.loss + math.log(p[2])) < 1e-6                       # float32 accuracy
    np.testing.assert_allclose(view(n_np, dr), p - np.eye(4)[2], atol=1e-7)
    # exp itself: relative error against float64, over the range the loss uses
    e = core.expf(x)
    assert np.max(np.abs(e.astype(np.float64) / np.exp(x.astype(np.float64)) - 1)[x > -80]) < 4e-7
    lg = core.logf(lx)
    assert np.max(np.abs(lg.astype(np.float64) - np.log(lx.astype(np.float64)))) < 1e-6
    del src, dst


def test_masks_head_and_optimizers_match_bit_for_bit():
    rng = np.random.default_rng(0)
    a = arena()
    y8 = rng.integers(-128, 128, 1001).astype(np.int8)
    yf = rng.normal(0, 4, 333).astype(np.float32)
    s8, m8 = a.put(y8), a.empty(np.uint8, (126,))
    sf, mf = a.put(yf), a.empty(np.uint8, (42,))
    x = rng.integers(-128, 128, 40).astype(np.int8)
    w, b = rng.normal(0, 0.3, (7, 40)).astype(np.float32), rng.normal(0, 0.1, 7).astype(np.float32)
    xr, wr, br, yr = a.put(x), a.put(w), a.put(b), a.empty(np.float32, (1, 7))
    n = 1000
    p0, g = rng.normal(0, 1, n).astype(np.float32), rng.normal(0, 1e-2, n).astype(np.float32)
    refs = {k: a.put(v) for k, v in dict(p_sgd=p0, buf=rng.normal(0, 1e-2, n).astype(np.float32), p_adam=p0,
                                           m1=rng.normal(0, 1e-3, n).astype(np.float32),
                                           m2=np.abs(rng.normal(0, 1e-4, n)).astype(np.float32), g=g).items()}
    instrs = [Instr("mask_s8", dict(n=1001, src=s8, dst=m8, lo=-3, hi=100)),
              Instr("mask_f32", dict(n=333, src=sf, dst=mf, lo=0.0, hi=6.0)),
              Instr("head", dict(cin=40, cout=7, x=xr, w=wr, b=br, y=yr, scale=0.02, zp=-5)),
              Instr("sgd", dict(n=n, p=refs["p_sgd"], g=refs["g"], buf=refs["buf"], momentum=0.9)),
              Instr("adam", dict(n=n, p=refs["p_adam"], g=refs["g"], m1=refs["m1"], m2=refs["m2"], beta1=0.9,
                                 beta2=0.999, a1=np.float32(1 - 0.9), a2=np.float32(1 - 0.999), eps=1e-8)),
              Instr("check_finite", dict(n=n, g=refs["g"])), Instr("applied", {})]
    n_np, n_c, io_np, io_c = run_both(instrs, a, io=IO(lr=np.float32(1e-3 / 0.1), sqrt_c2=np.float32(math.sqrt(0.001))))
    assert np.array_equal(n_np, n_c), "numpy and C arenas differ"
    assert io_np.applied == io_c.applied == 1
    # and the reference is right: masks, head, optimizer against plain numpy
    assert np.array_equal(np.unpackbits(view(n_np, m8), count=1001), (y8 > -3) & (y8 < 100))
    assert np.array_equal(np.unpackbits(view(n_np, mf), count=333), (yf > 0) & (yf < 6))
    np.testing.assert_allclose(view(n_np, yr)[0], ((x.astype(np.float64) + 5) * 0.02) @ w.T.astype(np.float64) + b, rtol=1e-5, atol=1e-6)


def test_non_finite_gradient_stops_before_the_update():
    a = arena()
    g = a.put(np.float32([0.1, np.nan]))
    p, buf = a.put(np.float32([1, 2])), a.empty(np.float32, (2,))
    instrs = [Instr("check_finite", dict(n=2, g=g)), Instr("sgd", dict(n=2, p=p, g=g, buf=buf, momentum=0.9)),
              Instr("applied", {})]
    n_np, n_c, io_np, io_c = run_both(instrs, a, io=IO(lr=0.1, first=1))
    assert io_np.applied == io_c.applied == 0
    assert np.array_equal(view(n_np, p), [1, 2]) and np.array_equal(view(n_c, p), [1, 2])


def test_the_core_has_every_core_op():
    c = native_core()
    from device.step.program import OPS
    assert all(c.has_op(d.code) for d in OPS.values() if d.code < 100)
    assert not c.has_op(99)
