"""Pretraining throughput: our `pretrain` stage vs a plain PyTorch loop, same model and data, one run.

The plain loop is the textbook idiom (DataLoader over a TensorDataset, shuffle, forward, backward, step)
on the same preprocessed tensors and the same channels-last model. Ours is timed over its training
steps (seeded batching, augmentation, LR schedule, progress bar, per-step loss/accuracy), read from the
run's history; its whole wall time (data loading, validation, test, checkpoints) is shown beside it.
Runs alternate (ours, plain, ours, ...) so both see the same machine noise.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from train.data import Preprocess, load_dataset, preprocess
from train.models import build_model, load_spec
from train.pretrain import PretrainConfig, pretrain


def _plain(cfg: PretrainConfig) -> float:
    """Seconds of training steps of the textbook loop (data preparation excluded, as for ours)."""
    ds = load_dataset(cfg.data, seed=cfg.seed, limit=cfg.limit)
    spec = load_spec(cfg.model).replace(num_classes=len(ds.classes), lite_residual=cfg.lite_residual)
    x = preprocess(ds.train.x, Preprocess(spec.resolution, spec.in_channels))
    model = build_model(spec).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    loader = DataLoader(TensorDataset(x, torch.from_numpy(ds.train.y)), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def _ours(cfg: PretrainConfig) -> tuple[float, float]:
    """(seconds of training steps, whole wall time)."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        pretrain(cfg, Path(d) / "run", progress=False)
        wall = time.perf_counter() - t0
        history = json.loads((Path(d) / "run" / "history.json").read_text())["history"]
    return sum(h["train_seconds"] for h in history), wall


def run(quick: bool = False) -> str:
    limit, repeats = (4096, 1) if quick else (16384, 3)
    cfg = PretrainConfig(data="fashion-mnist", model="mcunet-tiny", lite_residual=True, epochs=1, batch_size=128, limit=limit)
    ours, walls, plain = [], [], []
    for _ in range(repeats):
        o, w = _ours(cfg)
        ours.append(o)
        walls.append(w)
        plain.append(_plain(cfg))
    n = limit * cfg.epochs
    o, p = statistics.median(ours), statistics.median(plain)
    rows = [f"| loop | training images/s (median of {repeats}) | training s, min..max |", "|---|---:|---|",
            f"| plain PyTorch (DataLoader, no augmentation) | {n / p:.0f} | {min(plain):.1f}..{max(plain):.1f} |",
            f"| ours (`train.pretrain`: augmentation, schedule, progress) | {n / o:.0f} | {min(ours):.1f}..{max(ours):.1f} |"]
    verdict = "met" if o <= 1.10 * p else "NOT met"
    return (f"mcunet-tiny with lite residual branches, Fashion-MNIST, {limit} training images, {cfg.epochs} epoch, "
            f"batch {cfg.batch_size}, torch threads {torch.get_num_threads()}.\n\n" + "\n".join(rows) +
            f"\n\nOverhead of our training steps: {100 * (o / p - 1):+.1f}% (goal <= +10%: {verdict}). "
            f"Our whole command, with data loading, validation, test and checkpoints: "
            f"median {statistics.median(walls):.1f} s.\n")
