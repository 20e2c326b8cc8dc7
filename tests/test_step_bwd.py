"""The step program's backward ops: the numpy reference and the C core agree bit for bit (whole arena), and the
numpy reference agrees with the float reference device/backward.py.

Tolerance against device/backward.py: both sides compute in float32 (backward.py with BLAS matmuls or pairwise
sums, in float64 for GroupNorm and resize), ours adds one term at a time, so each element differs by rounding
only: |ours - ref| <= RTOL * |ref| + ATOL * max|ref|. A sum of K float32 terms carries up to ~K * 6e-8 of the
sum of |terms|; with K <= a few hundred here and random-sign terms the observed error is at most 4.2e-7 of the
largest gradient (conv_dx; 1e-7..2e-7 for the other ops), so ATOL 2e-6 of the largest value leaves a margin of ~5x
while still catching any wrong term (a misplaced or missing term is of the order of the values themselves).
"""
from __future__ import annotations

import numpy as np
import pytest

from device import backward as bw
from device.requant import from_tflite_layout
from device.step import bwd
from device.step.program import IO, NONE, OPS, Instr, Memory, Program, ProgramError, run_numpy
from step_helpers import arena, model, native_core, run_both, view

RTOL, ATOL = 1e-5, 2e-6
F32 = np.float32


def close(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    ref = np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def both(instrs, a, m=None, what=""):
    """Run on numpy and C; the whole arenas must be identical. Returns the numpy arena."""
    n_np, n_c, _, _ = run_both(instrs, a, m)
    if not np.array_equal(n_np, n_c):
        bad = np.flatnonzero(n_np != n_c)
        raise AssertionError(f"{what}: numpy and C arenas differ at {bad.size} bytes, first at byte {bad[0]}")
    return n_np


def out_size(n: int, k: int, s: int, p0: int, p1: int) -> int:
    return (n + p0 + p1 - k) // s + 1


# (h, w, cin, cout, k, stride, groups, (pad top, bottom, left, right))
CONV_CASES = [
    (7, 9, 6, 8, 3, 1, 1, (1, 1, 1, 1)),
    (9, 8, 8, 12, 3, 2, 2, (1, 1, 0, 1)),
    (6, 6, 4, 4, 3, 1, 4, (1, 1, 1, 1)),        # groups == cin through the grouped path
    (5, 7, 3, 16, 5, 2, 1, (2, 2, 2, 2)),
    (8, 8, 16, 24, 1, 1, 1, (0, 0, 0, 0)),
    (7, 7, 8, 8, 1, 2, 1, (0, 0, 0, 0)),        # 1x1 stride 2: every other input pixel gets no gradient
    (5, 4, 130, 4, 3, 1, 1, (1, 1, 1, 1)),      # cin > the C core's 64-weight chunk
    (6, 5, 6, 6, 3, 2, 3, (2, 0, 2, 0)),        # odd padding, 3 groups
    # the C core's 1x1 path: blocks of 16 (or 8) input channels x 16 output channels
    (5, 7, 20, 40, 1, 1, 1, (0, 0, 0, 0)),      # cin 16 + 4, cout 16 + 16 + 8
    (3, 5, 7, 3, 1, 1, 1, (0, 0, 0, 0)),        # cin < 8, odd width
    (4, 4, 33, 17, 1, 1, 1, (0, 0, 0, 0)),      # cin 16 + 16 + 1, cout 16 + 1
]


def conv_ids(c):
    return "h{}w{}ci{}co{}k{}s{}g{}p{}".format(*c[:7], "".join(map(str, c[7])))


def _conv_weights(rng, cout, k, cig):
    """(int8 OHWI, per-output-channel float32 scales)."""
    q = rng.integers(-127, 128, (cout, k, k, cig)).astype(np.int8)
    scale = rng.uniform(0.002, 0.02, cout).astype(F32)
    return q, scale


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_ids)
@pytest.mark.parametrize("wkind", [0, 1, 2])
def test_conv_dx(case, wkind):
    h, w, cin, cout, k, s, groups, pads = case
    pt, pb, pl, pr = pads
    oh, ow = out_size(h, k, s, pt, pb), out_size(w, k, s, pl, pr)
    cig = cin // groups
    rng = np.random.default_rng(hash((case, wkind)) % 2**32)
    q, scale = _conv_weights(rng, cout, k, cig)
    wzp = 0 if wkind else 3
    w_ohwi = (q.astype(np.int32) - wzp).astype(F32) * scale[:, None, None, None]      # what wkind 0 means
    if wkind:
        w_ohwi = rng.normal(0, 0.1, w_ohwi.shape).astype(F32)
    w_hwio = from_tflite_layout(w_ohwi, "conv_weight", (k, k, cig, cout))
    dy = rng.normal(0, 1, (1, oh, ow, cout)).astype(F32)
    dx0 = rng.normal(0, 1, (1, h, w, cin)).astype(F32)
    ref, _, _ = bw.conv2d(dy, w_hwio, dict(stride=s, pad=pads, groups=groups), (1, h, w, cin))
    a, m = arena(), model()
    wt = {0: lambda: m.put(q), 1: lambda: m.put(w_ohwi), 2: lambda: a.put(np.ascontiguousarray(w_hwio))}[wkind]()
    dyr = a.put(dy)
    dxs = [a.put(np.full_like(dx0, np.nan)), a.put(dx0)]                   # acc 0 must overwrite, acc 1 add
    sizes = dict(h=h, w=w, cin=cin, oh=oh, ow=ow, cout=cout, kh=k, kw=k, stride=s, pad_top=pt, pad_left=pl,
                 groups=groups, wkind=wkind)
    instrs = [Instr("conv_dx", dict(sizes, acc=acc, dy=dyr, wt=wt, dx=dxs[acc], wscale=scale if wkind == 0 else [],
                                    wzp=wzp)) for acc in (0, 1)]
    buf = both(instrs, a, m, f"conv_dx {case} wkind {wkind}")
    close(view(buf, dxs[0]), ref, "acc 0")
    close(view(buf, dxs[1]), dx0 + ref.astype(np.float64), "acc 1")


# (h, w, c, k, stride, pads)
DW_CASES = [
    (9, 9, 70, 3, 1, (1, 1, 1, 1)),             # c > the 64-weight chunk
    (10, 7, 8, 5, 2, (2, 2, 2, 2)),
    (8, 8, 16, 3, 2, (0, 1, 0, 1)),             # TFLite SAME, even size, stride 2
    (5, 5, 3, 1, 1, (0, 0, 0, 0)),
    (7, 6, 5, 3, 2, (0, 0, 0, 0)),              # VALID: the last row/column gets no gradient
]


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: "h{}w{}c{}k{}s{}".format(*c[:5]))
@pytest.mark.parametrize("wkind", [0, 1, 2])
def test_dwconv_dx(case, wkind):
    h, w, c, k, s, pads = case
    pt, pb, pl, pr = pads
    oh, ow = out_size(h, k, s, pt, pb), out_size(w, k, s, pl, pr)
    rng = np.random.default_rng(hash((case, wkind)) % 2**32)
    q = rng.integers(-127, 128, (1, k, k, c)).astype(np.int8)
    scale = rng.uniform(0.002, 0.02, c).astype(F32)
    wzp = -2 if wkind == 0 else 0
    w_tfl = (q.astype(np.int32) - wzp).astype(F32) * scale if wkind == 0 else rng.normal(0, 0.1, (1, k, k, c)).astype(F32)
    w_ours = from_tflite_layout(w_tfl, "conv_weight", (k, k, 1, c))
    dy = rng.normal(0, 1, (1, oh, ow, c)).astype(F32)
    dx0 = rng.normal(0, 1, (1, h, w, c)).astype(F32)
    ref, _, _ = bw.conv2d(dy, w_ours, dict(stride=s, pad=pads, groups=c), (1, h, w, c))
    a, m = arena(), model()
    wt = {0: lambda: m.put(q), 1: lambda: m.put(w_tfl), 2: lambda: a.put(np.ascontiguousarray(w_ours))}[wkind]()
    dyr = a.put(dy)
    dxs = [a.put(np.full_like(dx0, np.nan)), a.put(dx0)]
    sizes = dict(h=h, w=w, c=c, oh=oh, ow=ow, kh=k, kw=k, stride=s, pad_top=pt, pad_left=pl, wkind=wkind)
    instrs = [Instr("dwconv_dx", dict(sizes, acc=acc, dy=dyr, wt=wt, dx=dxs[acc], wscale=scale if wkind == 0 else [],
                                      wzp=wzp)) for acc in (0, 1)]
    buf = both(instrs, a, m, f"dwconv_dx {case} wkind {wkind}")
    close(view(buf, dxs[0]), ref, "acc 0")
    close(view(buf, dxs[1]), dx0 + ref.astype(np.float64), "acc 1")


@pytest.mark.parametrize("case", CONV_CASES[:6] + [CONV_CASES[7]], ids=conv_ids)
@pytest.mark.parametrize("xkind", [0, 1])
def test_conv_dw(case, xkind):
    h, w, cin, cout, k, s, groups, pads = case
    pt, pb, pl, pr = pads
    oh, ow = out_size(h, k, s, pt, pb), out_size(w, k, s, pl, pr)
    cig = cin // groups
    rng = np.random.default_rng(hash((case, xkind)) % 2**32)
    if xkind == 0:
        x = rng.normal(0, 1, (1, h, w, cin)).astype(F32)
        xf, xscale, xzp = x, 0.0, 0
    else:
        x = rng.integers(-128, 128, (1, h, w, cin)).astype(np.int8)
        xscale, xzp = 0.05, -7
        xf = (x.astype(np.int32) - xzp).astype(F32) * F32(xscale)
    dy = rng.normal(0, 1, (1, oh, ow, cout)).astype(F32)
    wdummy = np.zeros((k, k, cig, cout), F32)
    _, ref, _ = bw.conv2d(dy, wdummy, dict(stride=s, pad=pads, groups=groups), (1, h, w, cin), x=xf, need_dx=False)
    a = arena()
    xr, dyr = a.put(x), a.put(dy)
    dwr = a.put(np.full((k, k, cig, cout), np.nan, F32))
    ins = Instr("conv_dw", dict(h=h, w=w, cin=cin, oh=oh, ow=ow, cout=cout, kh=k, kw=k, stride=s, pad_top=pt, pad_left=pl,
                                groups=groups, xkind=xkind, x=xr, dy=dyr, dw=dwr, xscale=xscale, xzp=xzp))
    buf = both([ins], a, what=f"conv_dw {case}")
    close(view(buf, dwr), ref, "dw")


@pytest.mark.parametrize("case", DW_CASES, ids=lambda c: "h{}w{}c{}k{}s{}".format(*c[:5]))
def test_dwconv_dw(case):
    h, w, c, k, s, pads = case
    pt, pb, pl, pr = pads
    oh, ow = out_size(h, k, s, pt, pb), out_size(w, k, s, pl, pr)
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.integers(-128, 128, (1, h, w, c)).astype(np.int8)
    xf = (x.astype(np.int32) - 5).astype(F32) * F32(0.03)
    dy = rng.normal(0, 1, (1, oh, ow, c)).astype(F32)
    _, ref, _ = bw.conv2d(dy, np.zeros((k, k, 1, c), F32), dict(stride=s, pad=pads, groups=c), (1, h, w, c), x=xf,
                          need_dx=False)
    a = arena()
    xr, dyr, dwr = a.put(x), a.put(dy), a.put(np.full((k, k, 1, c), np.nan, F32))
    ins = Instr("dwconv_dw", dict(h=h, w=w, c=c, oh=oh, ow=ow, kh=k, kw=k, stride=s, pad_top=pt, pad_left=pl, xkind=1,
                                  x=xr, dy=dyr, dw=dwr, xscale=0.03, xzp=5))
    buf = both([ins], a, what=f"dwconv_dw {case}")
    close(view(buf, dwr), ref, "dw")


def test_bias_grad_relu_grad_acc_mean():
    rng = np.random.default_rng(1)
    a = arena()
    dy = rng.normal(0, 1, (1, 7, 9, 13)).astype(F32)
    dyr, dbr = a.put(dy), a.put(np.full(13, np.nan, F32))
    n = 1001
    g = rng.normal(0, 1, n).astype(F32)
    bits = rng.integers(0, 2, n).astype(np.uint8)
    mask = a.put(np.packbits(bits))
    g_inplace = a.put(g)                                       # relu_bwd in place (acc 0)
    gr = a.put(g)
    dx_new, dx_acc = a.put(np.full(n, np.nan, F32)), a.put(rng.normal(0, 1, n).astype(F32))
    src = a.put(rng.normal(0, 1, n).astype(F32))
    acc_new, acc_add = a.put(np.full(n, np.nan, F32)), a.put(rng.normal(0, 1, n).astype(F32))
    mdy = a.put(rng.normal(0, 1, (1, 11)).astype(F32))
    mdx_new, mdx_acc = a.put(np.full((1, 5, 6, 11), np.nan, F32)), a.put(rng.normal(0, 1, (1, 5, 6, 11)).astype(F32))
    instrs = [Instr("bias_grad", dict(npos=63, c=13, dy=dyr, db=dbr)),
              Instr("relu_bwd", dict(n=n, acc=0, dy=g_inplace, mask=mask, dx=g_inplace)),
              Instr("relu_bwd", dict(n=n, acc=0, dy=gr, mask=mask, dx=dx_new)),
              Instr("relu_bwd", dict(n=n, acc=1, dy=gr, mask=mask, dx=dx_acc)),
              Instr("grad_acc", dict(n=n, acc=0, src=src, dst=acc_new)),
              Instr("grad_acc", dict(n=n, acc=1, src=src, dst=acc_add)),
              Instr("mean_bwd", dict(h=5, w=6, c=11, acc=0, dy=mdy, dx=mdx_new)),
              Instr("mean_bwd", dict(h=5, w=6, c=11, acc=1, dy=mdy, dx=mdx_acc))]
    a0 = a.bytes()
    buf = both(instrs, a, what="elementwise ops")
    before = lambda r: view(a0, r)  # noqa: E731
    _, _, db_ref = bw.conv2d(dy, np.zeros((1, 1, 13, 13), F32), dict(stride=1, pad=(0, 0, 0, 0), groups=1), dy.shape,
                             need_dx=False)
    close(view(buf, dbr), dy.astype(np.float64).sum(axis=(0, 1, 2)), "bias_grad vs float64")
    close(view(buf, dbr), db_ref, "bias_grad vs backward.conv2d")
    relu = g * bits                                            # exact: a product by 0 or 1
    assert np.array_equal(view(buf, g_inplace), relu) and np.array_equal(view(buf, dx_new), relu)
    assert np.array_equal(view(buf, dx_acc), before(dx_acc) + relu)
    assert np.array_equal(view(buf, acc_new), before(src))
    assert np.array_equal(view(buf, acc_add), before(acc_add) + before(src))
    mref = bw.mean_hw(before(mdy), (1, 5, 6, 11))
    assert np.array_equal(view(buf, mdx_new), mref)            # the same float32 division
    assert np.array_equal(view(buf, mdx_acc), before(mdx_acc) + mref)


@pytest.mark.parametrize("h,w,c,k", [(7, 8, 5, 2), (9, 10, 3, 3), (4, 4, 8, 4), (5, 3, 2, 2)])
def test_avgpool_bwd(h, w, c, k):
    rng = np.random.default_rng(h * 100 + w)
    oh, ow = -(-h // k), -(-w // k)
    dy = rng.normal(0, 1, (1, oh, ow, c)).astype(F32)
    dx0 = rng.normal(0, 1, (1, h, w, c)).astype(F32)
    a = arena()
    dyr, d0, d1 = a.put(dy), a.put(np.full_like(dx0, np.nan)), a.put(dx0)
    instrs = [Instr("avgpool_bwd", dict(h=h, w=w, c=c, oh=oh, ow=ow, k=k, acc=acc, dy=dyr, dx=d)) for acc, d in ((0, d0), (1, d1))]
    buf = both(instrs, a, what="avgpool_bwd")
    ref = bw.avg_pool2d(dy, (1, h, w, c), k)
    assert np.array_equal(view(buf, d0), ref)                  # the same float32 division
    assert np.array_equal(view(buf, d1), dx0 + ref)


@pytest.mark.parametrize("h,w,oh,ow", [(4, 5, 8, 10), (5, 7, 8, 9), (8, 8, 3, 5), (6, 6, 6, 6), (1, 3, 4, 7)])
def test_resize_bwd(h, w, oh, ow):
    rng = np.random.default_rng(h * 1000 + oh)
    c = 6
    dy = rng.normal(0, 1, (1, oh, ow, c)).astype(F32)
    dx0 = rng.normal(0, 1, (1, h, w, c)).astype(F32)
    r0, r1, rl = bwd.resize_table(h, oh)
    c0, c1, cl = bwd.resize_table(w, ow)
    a = arena()
    dyr, d0, d1 = a.put(dy), a.put(np.full_like(dx0, np.nan)), a.put(dx0)
    instrs = [Instr("resize_bwd", dict(h=h, w=w, c=c, oh=oh, ow=ow, acc=acc, dy=dyr, dx=d, row_i0=r0, row_i1=r1,
                                       row_lam=rl, col_i0=c0, col_i1=c1, col_lam=cl)) for acc, d in ((0, d0), (1, d1))]
    buf = both(instrs, a, what="resize_bwd")
    ref = bw.resize_bilinear(dy, (1, h, w, c))
    close(view(buf, d0), ref, "acc 0")
    close(view(buf, d1), dx0 + ref.astype(np.float64), "acc 1")


@pytest.mark.parametrize("h,w,c,groups,xkind,gamma_trains", [(6, 5, 8, 2, 0, True), (4, 4, 12, 3, 1, False),
                                                             (3, 7, 6, 1, 0, False), (5, 5, 4, 4, 1, True)])
def test_group_norm_bwd(h, w, c, groups, xkind, gamma_trains):
    rng = np.random.default_rng(c * 10 + groups)
    if xkind == 0:
        x = rng.normal(0.5, 2, (1, h, w, c)).astype(F32)
        xf, xscale, xzp = x, 0.0, 0
    else:
        x = rng.integers(-128, 128, (1, h, w, c)).astype(np.int8)
        xscale, xzp = 0.04, 9
        xf = (x.astype(np.int32) - xzp).astype(F32) * F32(xscale)
    dy = rng.normal(0, 1, (1, h, w, c)).astype(F32)
    gamma = rng.uniform(0.5, 1.5, c).astype(F32)
    dx0 = rng.normal(0, 1, (1, h, w, c)).astype(F32)
    eps = 1e-5
    a = arena()
    xr, dyr = a.put(x), a.put(dy)
    d0, d1 = a.put(np.full_like(dx0, np.nan)), a.put(dx0)
    gref = a.put(gamma) if gamma_trains else NONE
    dg, dbt = (a.put(np.full(c, np.nan, F32)), a.put(np.full(c, np.nan, F32))) if gamma_trains else (NONE, NONE)
    common = dict(hw=h * w, c=c, groups=groups, xkind=xkind, x=xr, dy=dyr, gamma_ref=gref, eps=eps,
                  gamma=[] if gamma_trains else gamma, xscale=xscale, xzp=xzp)
    instrs = [Instr("group_norm_bwd", dict(common, acc=0, dx=d0, dgamma=dg, dbeta=dbt)),
              Instr("group_norm_bwd", dict(common, acc=1, dx=d1, dgamma=NONE, dbeta=NONE))]
    buf = both(instrs, a, what="group_norm_bwd")
    rdx, rdg, rdb = bw.group_norm(dy, xf, gamma, groups, eps)
    close(view(buf, d0), rdx, "dx")
    close(view(buf, d1), dx0 + rdx.astype(np.float64), "dx acc 1")
    if gamma_trains:
        close(view(buf, dg), rdg, "dgamma")
        close(view(buf, dbt), rdb, "dbeta")


@pytest.mark.parametrize("cin,cout", [(40, 7), (256, 10), (3, 1)])
def test_fc_bwd(cin, cout):
    rng = np.random.default_rng(cin)
    dy = rng.normal(0, 1, (1, cout)).astype(F32)
    wm = rng.normal(0, 0.3, (cout, cin)).astype(F32)
    x = rng.integers(-128, 128, cin).astype(np.int8)
    xscale, xzp = 0.02, -5
    xf = (x.astype(np.int32) - xzp).astype(F32) * F32(xscale)
    dx0 = rng.normal(0, 1, (1, cin)).astype(F32)
    a = arena()
    dyr, wr, xr = a.put(dy), a.put(wm), a.put(x)
    d0, d1 = a.put(np.full_like(dx0, np.nan)), a.put(dx0)
    dwr, dbr = a.put(np.full((cout, cin), np.nan, F32)), a.put(np.full(cout, np.nan, F32))
    instrs = [Instr("fc_bwd", dict(cin=cin, cout=cout, acc=0, dy=dyr, w=wr, x=xr, dx=d0, dw=dwr, db=dbr, xscale=xscale, xzp=xzp)),
              Instr("fc_bwd", dict(cin=cin, cout=cout, acc=1, dy=dyr, w=wr, x=NONE, dx=d1, dw=NONE, db=NONE, xscale=xscale, xzp=xzp))]
    buf = both(instrs, a, what="fc_bwd")
    rdx, rdw, rdb = bw.fully_connected(dy, wm, x=xf[None, :])
    close(view(buf, d0), rdx, "dx")
    close(view(buf, d1), dx0 + rdx.astype(np.float64), "dx acc 1")
    assert np.array_equal(view(buf, dwr), rdw)                 # one float32 product each
    assert np.array_equal(view(buf, dbr), rdb.reshape(cout))


def test_the_core_has_every_backward_op_and_rejects_bad_arguments():
    from device.native import NativeError
    c = native_core()
    codes = [d.code for d in OPS.values() if 200 <= d.code < 300]
    assert len(codes) >= 12 and all(c.has_op(k) for k in codes)
    assert not c.has_op(299)
    # a wscale whose length is not cout, and an in-place relu with acc 1: refused, not run
    a, m = arena(), model()
    q, dyr, dxr = m.put(np.zeros((4, 3, 3, 2), np.int8)), a.put(np.zeros((1, 3, 3, 4), F32)), a.put(np.zeros((1, 3, 3, 2), F32))
    bad = Instr("conv_dx", dict(h=3, w=3, cin=2, oh=3, ow=3, cout=4, kh=3, kw=3, stride=1, pad_top=1, pad_left=1, groups=1,
                                wkind=0, acc=0, dy=dyr, wt=q, dx=dxr, wscale=[1.0, 1.0], wzp=0))
    prog = Program([bad], arena_bytes=a.size, model=m.bytes().tobytes())
    with pytest.raises(NativeError):
        c.run(prog.encode(), a.bytes(), m.bytes(), IO())
    with pytest.raises(ProgramError):
        run_numpy(prog, Memory(a.bytes(), m.bytes()))
    g, mk = a.put(np.zeros(8, F32)), a.put(np.zeros(1, np.uint8))
    prog = Program([Instr("relu_bwd", dict(n=8, acc=1, dy=g, mask=mk, dx=g))], arena_bytes=a.size, model=m.bytes().tobytes())
    with pytest.raises(NativeError):
        c.run(prog.encode(), a.bytes(), m.bytes(), IO())
    with pytest.raises(ProgramError):
        run_numpy(prog, Memory(a.bytes(), m.bytes()))
