"""Backward ops of the step program (opcodes 200..299), numpy twins of device/native/core/bwd.c.

Float32 throughout, and every sum has one fixed order (stated per op, the same in the C comment), so the C
core reproduces every bit. Conventions shared by all ops:
- An output with `acc` 0 starts from 0, with `acc` 1 from what it holds (a gradient with several
  consumers); the op's terms are then added to it one at a time, in the op's order.
- Sums that are not accumulated into an output start from 0.0f and add one term at a time (`seq0`).
- Weights: wkind 0 int8 in the MODEL (.tflite layout), value float32(q - wzp) * wscale[channel];
  wkind 1 float32 in the MODEL (.tflite layout); wkind 2 float32 in the ARENA, our layout (device/graph.py).
- Kernel taps that fall into the padding are skipped (never added as zeros).
"""
from __future__ import annotations

import numpy as np

from .program import ProgramError, op

F32 = np.float32


def seq0(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """0.0f + a[0] + a[1] + ... along `axis` in float32, in order (C: `float s = 0.0f; s += a[k];`).
    np.cumsum adds sequentially; the trailing + 0.0f turns the -0.0 of an all -0.0 run into C's +0.0."""
    a = np.asarray(a, F32)
    if a.shape[axis] == 0:
        return np.zeros(np.delete(a.shape, axis), F32)
    return np.take(np.cumsum(a, axis=axis, dtype=F32), -1, axis=axis) + F32(0)


def tap_range(n_in: int, n_out: int, stride: int, pad: int, t: int) -> tuple[int, int]:
    """[lo, hi): the outputs o whose tap t reads input o * stride + t - pad inside [0, n_in) (tap_range in C)."""
    a = pad - t
    lo = (a + stride - 1) // stride if a > 0 else 0
    b = n_in - 1 + pad - t
    hi = min(n_out - 1, b // stride) + 1 if b >= 0 else 0
    return lo, max(lo, hi)


def _window(n: int, stride: int, pad: int, t: int, lo: int, hi: int) -> slice:
    """The input slice (of one spatial axis) that outputs [lo, hi) read at tap t."""
    first = lo * stride + t - pad
    return slice(first, first + (hi - lo - 1) * stride + 1, stride)


def _xf(x: np.ndarray, xkind: int, xscale: float, xzp: int) -> np.ndarray:
    """A saved forward input as float32: xkind 0 float32 as is, 1 int8: float32(q - xzp) * xscale."""
    if xkind == 0:
        return np.asarray(x, F32)
    return (x.astype(np.int32) - xzp).astype(F32) * F32(xscale)


def _check(cond: bool, name: str, what: str) -> None:
    if not cond:
        raise ProgramError(f"{name}: {what}")


@op("conv_dx", 200, "h:i32 w:i32 cin:i32 oh:i32 ow:i32 cout:i32 kh:i32 kw:i32 stride:i32 pad_top:i32 pad_left:i32 "
    "groups:i32 wkind:i32 acc:i32 dy:ref wt:ref dx:ref wscale:f32[] wzp:i32")
def conv_dx(mem, h, w, cin, oh, ow, cout, kh, kw, stride, pad_top, pad_left, groups, wkind, acc, dy, wt, dx, wscale, wzp):
    """Input gradient of a dense or grouped conv. dy (1, oh, ow, cout) -> dx (1, h, w, cin).

    wt: wkind 0/1 OHWI (cout, kh, kw, cin/groups) in the MODEL, wkind 2 HWIO (kh, kw, cin/groups, cout).
    Order: dx[y, x, ci] = (acc ? dx : 0) + terms one at a time, for each kernel tap (i, j) in row-major
    order, then each output channel co of ci's group increasing: term = dy[oy, ox, co] * w(co, i, j, ci),
    where y = oy * stride + i - pad_top, x = ox * stride + j - pad_left (taps into the padding skipped).
    """
    cig, cog = cin // groups, cout // groups
    if wkind == 0:
        _check(np.asarray(wscale).size == cout, "conv_dx", f"wscale has {np.asarray(wscale).size} values, cout is {cout}")
        wf = (wt.reshape(cout, kh, kw, cig).astype(np.int32) - wzp).astype(F32) * np.asarray(wscale, F32).reshape(cout, 1, 1, 1)
        wf = wf.transpose(1, 2, 3, 0)                        # -> (kh, kw, cig, cout)
    elif wkind == 1:
        wf = wt.reshape(cout, kh, kw, cig).transpose(1, 2, 3, 0)
    else:
        wf = wt.reshape(kh, kw, cig, cout)
    d = dy.reshape(oh, ow, cout)
    out = dx.reshape(h, w, cin)
    if not acc:
        out[...] = 0
    ci = np.arange(cin)
    g_ci, l_ci = ci // cig, ci % cig                           # each input channel's group and index in it
    co = g_ci[:, None] * cog + np.arange(cog)[None, :]         # (cin, cog): ci's output channels, increasing
    for i in range(kh):
        ylo, yhi = tap_range(h, oh, stride, pad_top, i)
        for j in range(kw):
            xlo, xhi = tap_range(w, ow, stride, pad_left, j)
            if ylo == yhi or xlo == xhi:
                continue
            win = out[_window(h, stride, pad_top, i, ylo, yhi), _window(w, stride, pad_left, j, xlo, xhi)]
            dwin = d[ylo:yhi, xlo:xhi].reshape(-1, cout)
            wsel = wf[i, j][l_ci[:, None], co]                 # (cin, cog)
            flat = win.reshape(-1, cin) if win.flags.c_contiguous else win.copy().reshape(-1, cin)
            step = max(1, (1 << 22) // max(1, cin * (cog + 1)))   # positions per chunk: bounded temporaries
            for p0 in range(0, flat.shape[0], step):
                # the chain win + t_0 + t_1 + ... for every element at once: np.cumsum adds in order
                chain = np.empty((min(step, flat.shape[0] - p0), cin, cog + 1), F32)
                chain[:, :, 0] = flat[p0:p0 + step]
                np.multiply(dwin[p0:p0 + step][:, co], wsel, out=chain[:, :, 1:])
                flat[p0:p0 + step] = np.cumsum(chain, axis=2, dtype=F32)[:, :, -1]
            if not win.flags.c_contiguous:
                win[...] = flat.reshape(win.shape)


def _dw_weights(wt, kh, kw, c, wkind, wscale, wzp) -> np.ndarray:
    """Depthwise weights as float32 (kh, kw, c): .tflite (1, kh, kw, c) for wkind 0/1, ours (kh, kw, 1, c)."""
    if wkind == 0:
        _check(np.asarray(wscale).size == c, "dwconv_dx", f"wscale has {np.asarray(wscale).size} values, c is {c}")
        return (wt.reshape(kh, kw, c).astype(np.int32) - wzp).astype(F32) * np.asarray(wscale, F32)
    return np.asarray(wt, F32).reshape(kh, kw, c)


@op("dwconv_dx", 201, "h:i32 w:i32 c:i32 oh:i32 ow:i32 kh:i32 kw:i32 stride:i32 pad_top:i32 pad_left:i32 wkind:i32 "
    "acc:i32 dy:ref wt:ref dx:ref wscale:f32[] wzp:i32")
def dwconv_dx(mem, h, w, c, oh, ow, kh, kw, stride, pad_top, pad_left, wkind, acc, dy, wt, dx, wscale, wzp):
    """Input gradient of a depthwise conv (multiplier 1). dx[y, x, ch] = (acc ? dx : 0) + dy[oy, ox, ch] * w[i, j, ch]
    added one tap at a time, taps (i, j) in row-major order (taps into the padding skipped)."""
    wf = _dw_weights(wt, kh, kw, c, wkind, wscale, wzp)
    d = dy.reshape(oh, ow, c)
    out = dx.reshape(h, w, c)
    if not acc:
        out[...] = 0
    for i in range(kh):
        ylo, yhi = tap_range(h, oh, stride, pad_top, i)
        for j in range(kw):
            xlo, xhi = tap_range(w, ow, stride, pad_left, j)
            if ylo == yhi or xlo == xhi:
                continue
            out[_window(h, stride, pad_top, i, ylo, yhi), _window(w, stride, pad_left, j, xlo, xhi)] += d[ylo:yhi, xlo:xhi] * wf[i, j]


@op("bias_grad", 202, "npos:i32 c:i32 dy:ref db:ref")
def bias_grad(mem, npos, c, dy, db):
    """db[ch] = 0.0f + dy[0, ch] + dy[1, ch] + ... (positions in raster order)."""
    db.reshape(c)[...] = seq0(dy.reshape(npos, c), axis=0)


@op("relu_bwd", 203, "n:i32 acc:i32 dy:ref mask:ref dx:ref")
def relu_bwd(mem, n, acc, dy, mask, dx):
    """dx = (acc ? dx + : ) dy * bit, bit float32 0/1 from the packed mask (np.packbits order). dx may be dy
    (in place) with acc 0."""
    bits = mask.reshape(-1).view(np.uint8)[:(n + 7) // 8]          # the packed bytes, whatever the ref's dtype
    t = dy.reshape(n) * np.unpackbits(bits, count=n).astype(F32)
    if acc:
        _check(not np.shares_memory(dx, dy), "relu_bwd", "acc 1 with dx the same memory as dy")
        dx.reshape(n)[...] += t
    else:
        dx.reshape(n)[...] = t


@op("grad_acc", 204, "n:i32 acc:i32 src:ref dst:ref")
def grad_acc(mem, n, acc, src, dst):
    """dst = src (acc 0) or dst + src (acc 1): the add op's backward (both inputs get dy)."""
    if acc:
        dst.reshape(n)[...] += src.reshape(n)
    else:
        dst.reshape(n)[...] = src.reshape(n)


@op("avgpool_bwd", 205, "h:i32 w:i32 c:i32 oh:i32 ow:i32 k:i32 acc:i32 dy:ref dx:ref")
def avgpool_bwd(mem, h, w, c, oh, ow, k, acc, dy, dx):
    """k x k stride k, ceil mode: dx[y, x, ch] (+)= dy[y // k, x // k, ch] / float32(rows * cols of that window)."""
    _check(oh == -(-h // k) and ow == -(-w // k), "avgpool_bwd", f"output {oh}x{ow} is not ceil({h}x{w} / {k})")
    rows = np.minimum(k, h - k * np.arange(oh))
    cols = np.minimum(k, w - k * np.arange(ow))
    area = (rows[:, None] * cols[None, :]).astype(F32)
    g = dy.reshape(oh, ow, c) / area[:, :, None]
    t = g[np.arange(h) // k][:, np.arange(w) // k]
    if acc:
        dx.reshape(h, w, c)[...] += t
    else:
        dx.reshape(h, w, c)[...] = t


def resize_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1 int32, lam float32) per output index: the two source indices of bilinear resize with half-pixel
    centres and the weight of i1 (i0 weighs 1 - lam), computed in float64 as backward.resize_matrix."""
    scale = n_in / n_out
    i0, i1, lam = np.zeros(n_out, np.int32), np.zeros(n_out, np.int32), np.zeros(n_out, np.float64)
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0[o] = min(int(np.floor(src)), n_in - 1)
        i1[o] = min(i0[o] + 1, n_in - 1)
        lam[o] = src - i0[o]
    return i0, i1, lam.astype(F32)


@op("resize_bwd", 206, "h:i32 w:i32 c:i32 oh:i32 ow:i32 acc:i32 dy:ref dx:ref row_i0:i32[] row_i1:i32[] row_lam:f32[] "
    "col_i0:i32[] col_i1:i32[] col_lam:f32[]")
def resize_bwd(mem, h, w, c, oh, ow, acc, dy, dx, row_i0, row_i1, row_lam, col_i0, col_i1, col_lam):
    """Adjoint of bilinear resize (h, w) -> (oh, ow); tables from resize_table (float64, cast to float32).

    Weights per row: rw0 = 1.0f - lam, rw1 = lam (float32); the same per column. Order: dx = (acc ? dx : 0),
    then for each output row o, for each corner (a, b) in (0, 0), (0, 1), (1, 0), (1, 1), for each output
    column p: dx[row_ia[o], col_ib[p], :] += (rwa[o] * cwb[p]) * dy[o, p, :] (the weight a float32 product).
    """
    rows = (np.asarray(row_i0, np.int64), np.asarray(row_i1, np.int64))
    cols = (np.asarray(col_i0, np.int64), np.asarray(col_i1, np.int64))
    rl, cl = np.asarray(row_lam, F32), np.asarray(col_lam, F32)
    rws, cws = (F32(1) - rl, rl), (F32(1) - cl, cl)
    _check(all(t.size == oh for t in rows + rws) and all(t.size == ow for t in cols + cws), "resize_bwd",
           "a table's length differs from the output size")
    _check(all(((t >= 0) & (t < h)).all() for t in rows) and all(((t >= 0) & (t < w)).all() for t in cols),
           "resize_bwd", "a table index is out of range")
    d = dy.reshape(oh, ow, c)
    out = dx.reshape(h, w, c)
    if not acc:
        out[...] = 0
    for o in range(oh):
        for a in (0, 1):
            for b in (0, 1):
                wgt = rws[a][o] * cws[b]                         # (ow,) float32
                np.add.at(out[rows[a][o]], cols[b], wgt[:, None] * d[o])   # unbuffered: p in increasing order


@op("mean_bwd", 207, "h:i32 w:i32 c:i32 acc:i32 dy:ref dx:ref")
def mean_bwd(mem, h, w, c, acc, dy, dx):
    """dx[y, x, ch] (+)= dy[ch] / float32(h * w)."""
    t = np.broadcast_to(dy.reshape(1, 1, c) / F32(h * w), (h, w, c))
    if acc:
        dx.reshape(h, w, c)[...] += t
    else:
        dx.reshape(h, w, c)[...] = t


@op("group_norm_bwd", 208, "hw:i32 c:i32 groups:i32 xkind:i32 acc:i32 x:ref dy:ref dx:ref gamma_ref:ref dgamma:ref "
    "dbeta:ref eps:f32 gamma:f32[] xscale:f32 xzp:i32")
def group_norm_bwd(mem, hw, c, groups, xkind, acc, x, dy, dx, gamma_ref, dgamma, dbeta, eps, gamma, xscale, xzp):
    """GroupNorm backward from the saved input x (float32, or int8 with xscale/xzp). Per group g (channels
    [g*cg, (g+1)*cg), n = hw*cg elements), every sum seq0 over positions in raster order, then the group's
    channels (a per-channel sum: over positions):
      mean = sum(x) / float32(n); var = sum((x - mean)^2) / float32(n); rstd = 1 / sqrt(var + eps)
      xhat = (x - mean) * rstd; dxhat = dy * gamma[ch]
      m1 = sum(dxhat) / n; m2 = sum(dxhat * xhat) / n
      dx (+)= rstd * ((dxhat - m1) - xhat * m2)
      dgamma[ch] = sum_p dy * xhat; dbeta[ch] = sum_p dy      (assigned; NONE when frozen)
    gamma: gamma_ref (ARENA float32, a trained gamma) or else the inline array. dx must not be dy.
    """
    cg = c // groups
    gam = np.asarray(gamma_ref if gamma_ref is not None else gamma, F32).reshape(c)
    _check(dx is None or not np.shares_memory(dx, dy), "group_norm_bwd", "dx must not be the same memory as dy")
    xs = _xf(x.reshape(hw, c), xkind, xscale, xzp)
    ds = dy.reshape(hw, c)
    n = F32(hw * cg)
    for g in range(groups):
        sl = slice(g * cg, (g + 1) * cg)
        xg, dg = xs[:, sl], ds[:, sl]
        mean = seq0(xg.reshape(-1)) / n
        dev = xg - mean
        var = seq0((dev * dev).reshape(-1)) / n
        rstd = F32(1) / np.sqrt(var + F32(eps))
        xhat = dev * rstd
        dxhat = dg * gam[sl]
        m1 = seq0(dxhat.reshape(-1)) / n
        m2 = seq0((dxhat * xhat).reshape(-1)) / n
        if dx is not None:
            t = rstd * ((dxhat - m1) - xhat * m2)
            if acc:
                dx.reshape(hw, c)[:, sl] += t
            else:
                dx.reshape(hw, c)[:, sl] = t
        if dgamma is not None:
            dgamma.reshape(c)[sl] = seq0(dg * xhat, axis=0)
        if dbeta is not None:
            dbeta.reshape(c)[sl] = seq0(dg, axis=0)


@op("fc_bwd", 209, "cin:i32 cout:i32 acc:i32 dy:ref w:ref x:ref dx:ref dw:ref db:ref xscale:f32 xzp:i32")
def fc_bwd(mem, cin, cout, acc, dy, w, x, dx, dw, db, xscale, xzp):
    """The float classifier's backward. w (cout, cin) float32; x the saved int8 features, xf = float32(x - xzp) * xscale.
    dx[i] = (acc ? dx : 0) + dy[0] * w[0, i] + dy[1] * w[1, i] + ... (o in order); dw[o, i] = dy[o] * xf[i];
    db = dy. dx, dw, db: NONE when not needed (dw, db assigned)."""
    d = dy.reshape(cout)
    if dx is not None:
        out = dx.reshape(cin)
        if not acc:
            out[...] = 0
        wm = w.reshape(cout, cin)
        for o in range(cout):
            out += d[o] * wm[o]
    if dw is not None:
        xf = _xf(x.reshape(cin), 1, xscale, xzp)
        dw.reshape(cout, cin)[...] = d[:, None] * xf[None, :]
    if db is not None:
        db.reshape(cout)[...] = d


@op("conv_dw", 210, "h:i32 w:i32 cin:i32 oh:i32 ow:i32 cout:i32 kh:i32 kw:i32 stride:i32 pad_top:i32 pad_left:i32 "
    "groups:i32 xkind:i32 x:ref dy:ref dw:ref xscale:f32 xzp:i32")
def conv_dw(mem, h, w, cin, oh, ow, cout, kh, kw, stride, pad_top, pad_left, groups, xkind, x, dy, dw, xscale, xzp):
    """Weight gradient of a dense/grouped conv, our layout HWIO (kh, kw, cin/groups, cout), assigned.
    dw[i, j, cl, co] = 0.0f + x[y, x, g*cig + cl] * dy[oy, ox, co] + ... over output positions (oy, ox) in
    raster order whose tap (i, j) reads inside the input (y = oy*stride + i - pad_top ...); g = co's group."""
    cig, cog = cin // groups, cout // groups
    xs = _xf(x.reshape(h, w, cin), xkind, xscale, xzp)
    d = dy.reshape(oh, ow, cout)
    out = dw.reshape(kh, kw, cig, cout)
    for i in range(kh):
        ylo, yhi = tap_range(h, oh, stride, pad_top, i)
        for j in range(kw):
            xlo, xhi = tap_range(w, ow, stride, pad_left, j)
            if ylo == yhi or xlo == xhi:
                out[i, j] = 0
                continue
            xw = xs[_window(h, stride, pad_top, i, ylo, yhi), _window(w, stride, pad_left, j, xlo, xhi)].reshape(-1, cin)
            dwin = d[ylo:yhi, xlo:xhi].reshape(-1, cout)
            for g in range(groups):
                prod = xw[:, g * cig:(g + 1) * cig, None] * dwin[:, None, g * cog:(g + 1) * cog]   # (P, cig, cog)
                out[i, j, :, g * cog:(g + 1) * cog] = seq0(prod, axis=0)


@op("dwconv_dw", 211, "h:i32 w:i32 c:i32 oh:i32 ow:i32 kh:i32 kw:i32 stride:i32 pad_top:i32 pad_left:i32 xkind:i32 "
    "x:ref dy:ref dw:ref xscale:f32 xzp:i32")
def dwconv_dw(mem, h, w, c, oh, ow, kh, kw, stride, pad_top, pad_left, xkind, x, dy, dw, xscale, xzp):
    """Weight gradient of a depthwise conv, our layout (kh, kw, 1, c), assigned:
    dw[i, j, 0, ch] = 0.0f + x[y, x, ch] * dy[oy, ox, ch] + ... over output positions in raster order (taps
    into the padding skipped)."""
    xs = _xf(x.reshape(h, w, c), xkind, xscale, xzp)
    d = dy.reshape(oh, ow, c)
    out = dw.reshape(kh, kw, c)
    for i in range(kh):
        ylo, yhi = tap_range(h, oh, stride, pad_top, i)
        for j in range(kw):
            xlo, xhi = tap_range(w, ow, stride, pad_left, j)
            if ylo == yhi or xlo == xhi:
                out[i, j] = 0
                continue
            xw = xs[_window(h, stride, pad_top, i, ylo, yhi), _window(w, stride, pad_left, j, xlo, xhi)]
            out[i, j] = seq0((xw * d[ylo:yhi, xlo:xhi]).reshape(-1, c), axis=0)
