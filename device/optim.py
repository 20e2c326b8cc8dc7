"""Optimizers and learning-rate schedules of on-device learning; state lives in caller-given arrays (arena views).

    opt = make_optimizer("adam", state_views)     # state_views: {param name: [arrays of the param's shape]}
    opt.update(params, grads, lr, t)              # in place; t = 1-based step count (Adam bias correction)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OPTIMIZERS = {"sgd": 1, "adam": 2}  # name -> state arrays per parameter (momentum; first and second moment)
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"            # sgd (with momentum) | adam
    lr: float = 1e-3              # peak learning rate
    momentum: float = 0.9         # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, as torch.optim.Adam
    eps: float = 1e-8             # adam
    schedule: str = "cosine"      # cosine decay to 0 over total_steps, or constant
    total_steps: int = 1000       # the cosine schedule's length (steps)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer '{self.name}': choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule '{self.schedule}': choose one of {', '.join(SCHEDULES)}")
        if not self.lr > 0 or self.total_steps < 1:
            raise ValueError("lr must be > 0 and total_steps >= 1")


def lr_at(cfg: OptimConfig, step: int) -> float:
    """Learning rate of 0-based step `step` (the same cosine as train/_loop.cosine_lr, no warmup)."""
    if cfg.schedule == "constant":
        return cfg.lr
    t = step / max(1, cfg.total_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, t)))


def update(cfg: OptimConfig, params: dict, grads: dict, state: dict, lr: float, t: int) -> None:
    """One in-place step over every parameter. t: 1-based count of applied updates."""
    for name, p in params.items():
        g = grads[name]
        s = state[name]
        if cfg.name == "sgd":
            buf = s[0]
            if t == 1:
                buf[...] = g                      # torch.optim.SGD: first step's buffer is the gradient
            else:
                buf *= np.float32(cfg.momentum)
                buf += g
            p -= np.float32(lr) * buf
        else:
            m, v = s
            b1, b2 = cfg.betas
            m *= np.float32(b1)
            m += np.float32(1 - b1) * g
            v *= np.float32(b2)
            v += np.float32(1 - b2) * g * g
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            # torch.optim.Adam: p -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)
            p -= np.float32(lr / c1) * m / (np.sqrt(v) / np.float32(math.sqrt(c2)) + np.float32(cfg.eps))
