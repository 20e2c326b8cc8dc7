"""Batch-1 backward of the graph ops, float32 numpy. Activations NHWC, weights HWIO (device/graph.py).

Each function takes the output gradient and only what its op's backward really needs (the TinyTL
point): a frozen conv needs its weights for the input gradient and nothing for its bias gradient; a
conv whose weight trains needs its input; ReLU/ReLU6 need a 1-bit mask; GroupNorm needs its input and
gamma; resize, average pool, add and mean are linear and need only shapes.
`scratch` (optional) is a preallocated float32 array the im2col columns are written into.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def _windows(xp: np.ndarray, kh: int, kw: int, s: int, oh: int, ow: int):
    """(i, j, strided view xp[:, i + s*oy, j + s*ox, :]) for every kernel tap, (ky, kx) order."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s, :]


def conv2d(dy: np.ndarray, w: np.ndarray, attrs: dict, in_shape: tuple, *, x: np.ndarray | None = None,
           need_dx: bool = True, scratch: np.ndarray | None = None):
    """dy (1, OH, OW, Co); w (KH, KW, Cin/g, Co). Returns (dx or None, dw or None (x given), db).

    dx: per group, dcols = dy_g @ W_g^T, then col2im (each tap's columns added into the padded input
    gradient at its strided window); depthwise: the same per channel without a matmul.
    dw: per group, cols(x)^T @ dy_g. db: sum of dy over positions.
    """
    kh, kw, cig, co = w.shape
    s, (pt, pb, pl, pr), g = attrs["stride"], attrs["pad"], attrs["groups"]
    _, h, wd, cin = in_shape
    _, oh, ow, _ = dy.shape
    cog = co // g
    db = dy.sum(axis=(0, 1, 2), dtype=np.float64).astype(F32)
    dx = dw = None
    depthwise = g == cin == co and cig == 1
    padded = (1, h + pt + pb, wd + pl + pr, cin)
    if need_dx:
        dxp = np.zeros(padded, F32)
        if depthwise:
            for i, j, win in _windows(dxp, kh, kw, s, oh, ow):
                win += dy * w[i, j, 0]
        elif kh == kw == 1 and s == 1 and not any(attrs["pad"]):
            dxp = np.concatenate([dy[..., k * cog:(k + 1) * cog] @ w[0, 0, :, k * cog:(k + 1) * cog].T for k in range(g)], axis=-1)
        else:
            m = oh * ow
            cols = (scratch[:m * kh * kw * cin].reshape(m, kh * kw, cin) if scratch is not None
                    else np.empty((m, kh * kw, cin), F32))
            for k in range(g):
                wk = w[..., k * cog:(k + 1) * cog].reshape(kh * kw * cig, cog)
                cols[:, :, k * cig:(k + 1) * cig] = (dy.reshape(m, co)[:, k * cog:(k + 1) * cog] @ wk.T).reshape(m, kh * kw, cig)
            for t, (i, j, win) in enumerate(_windows(dxp, kh, kw, s, oh, ow)):
                win += cols[:, t, :].reshape(1, oh, ow, cin)
        dx = dxp[:, pt:pt + h, pl:pl + wd, :]
    if x is not None:
        xp = np.pad(x.astype(F32, copy=False), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        dw = np.empty_like(w, dtype=F32)
        if depthwise:
            for i, j, win in _windows(xp, kh, kw, s, oh, ow):
                dw[i, j, 0] = (win * dy).sum(axis=(0, 1, 2))
        else:
            m = oh * ow
            cols = np.stack([win for _, _, win in _windows(xp, kh, kw, s, oh, ow)], axis=3).reshape(m, kh * kw, cin)
            for k in range(g):
                ck = cols[:, :, k * cig:(k + 1) * cig].reshape(m, kh * kw * cig)
                dw[..., k * cog:(k + 1) * cog] = (ck.T @ dy.reshape(m, co)[:, k * cog:(k + 1) * cog]).reshape(kh, kw, cig, cog)
    return dx, dw, db


def fully_connected(dy: np.ndarray, w: np.ndarray, *, x: np.ndarray | None = None, need_dx: bool = True):
    """dy (1, Co); w (Co, Cin). Returns (dx, dw (x given), db)."""
    dx = (dy @ w).astype(F32) if need_dx else None
    dw = (dy.T @ x.astype(F32)).astype(F32) if x is not None else None
    return dx, dw, dy.sum(0).astype(F32)


def group_norm(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, groups: int, eps: float):
    """y = gamma * (x - mean_g) / sqrt(var_g + eps) + beta. Returns (dx, dgamma, dbeta).

    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means over each group's H*W*C/G
    elements, dxhat = dy * gamma.
    """
    n, h, w, c = x.shape
    z = x.astype(np.float64).reshape(n, h * w, groups, c // groups)
    mean = z.mean(axis=(1, 3), keepdims=True)
    rstd = 1.0 / np.sqrt(((z - mean) ** 2).mean(axis=(1, 3), keepdims=True) + eps)
    xhat = (z - mean) * rstd
    d = dy.astype(np.float64).reshape(z.shape)
    dgamma = (d * xhat).sum(axis=(0, 1)).reshape(c)
    dbeta = d.sum(axis=(0, 1)).reshape(c)
    dxhat = d * gamma.astype(np.float64).reshape(1, 1, groups, c // groups)
    dx = rstd * (dxhat - dxhat.mean(axis=(1, 3), keepdims=True) - xhat * (dxhat * xhat).mean(axis=(1, 3), keepdims=True))
    return dx.reshape(x.shape).astype(F32), dgamma.astype(F32), dbeta.astype(F32)


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, half-pixel centres (PyTorch align_corners=False, TF half_pixel_centers)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[o, i0] += 1 - lam
        m[o, i1] += lam
    return m


def resize_bilinear(dy: np.ndarray, in_shape: tuple) -> np.ndarray:
    """Adjoint of y = Rh x Rw^T (per channel): dx = Rh^T dy Rw."""
    _, h, w, _ = in_shape
    rh, rw = resize_matrix(h, dy.shape[1]), resize_matrix(w, dy.shape[2])
    return np.einsum("oh,nopc,pw->nhwc", rh, dy.astype(np.float64), rw).astype(F32)


def avg_pool2d(dy: np.ndarray, in_shape: tuple, k: int) -> np.ndarray:
    """k x k stride k, ceil mode: each input pixel gets dy of its window / the pixels that window covers."""
    _, h, w, _ = in_shape
    oh, ow = dy.shape[1], dy.shape[2]
    rows = np.minimum(k, h - k * np.arange(oh)).astype(F32)
    cols = np.minimum(k, w - k * np.arange(ow)).astype(F32)
    g = dy / (rows[:, None] * cols[None, :])[None, :, :, None]
    return np.repeat(np.repeat(g, k, axis=1), k, axis=2)[:, :h, :w, :].astype(F32)


def mean_hw(dy: np.ndarray, in_shape: tuple) -> np.ndarray:
    _, h, w, c = in_shape
    return np.broadcast_to((dy / F32(h * w)).reshape(dy.shape[0], 1, 1, c), in_shape).astype(F32)


def softmax_cross_entropy(logits: np.ndarray, label: int) -> tuple[float, np.ndarray]:
    """(loss, dloss/dlogits) of one sample, in float64 then float32."""
    z = logits.astype(np.float64).reshape(-1)
    z = z - z.max()
    p = np.exp(z) / np.exp(z).sum()
    loss = float(-np.log(max(p[label], 1e-300)))
    p[label] -= 1.0
    return loss, p.astype(F32).reshape(1, -1)
