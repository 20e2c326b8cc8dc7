"""Pretraining throughput: our `pretrain` stage vs a plain PyTorch loop, same model and data, one run.

The plain loop is the textbook idiom (DataLoader over a TensorDataset, shuffle, forward, backward, step)
on the same preprocessed tensors and the same channels-last model. Our stage is timed as a whole
call: dataset loading, preprocessing, augmentation, progress bar, validation and checkpoints included,
so the overhead figure is an upper bound. Runs alternate (ours, plain, ours, ...) to share the noise.
"""
from __future__ import annotations

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
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data, seed=cfg.seed, limit=cfg.limit)
    spec = load_spec(cfg.model).replace(num_classes=len(ds.classes))
    x = preprocess(ds.train.x, Preprocess(spec.resolution, spec.in_channels))
    model = build_model(spec).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
    loader = DataLoader(TensorDataset(x, torch.from_numpy(ds.train.y)), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def _ours(cfg: PretrainConfig) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        pretrain(cfg, Path(d) / "run", progress=False)
        return time.perf_counter() - t0


def run(quick: bool = False) -> str:
    limit, repeats = (4096, 1) if quick else (16384, 3)
    cfg = PretrainConfig(data="fashion-mnist", model="mcunet-tiny", epochs=1, batch_size=128, limit=limit)
    ours, plain = [], []
    for _ in range(repeats):
        ours.append(_ours(cfg))
        plain.append(_plain(cfg))
    n = limit * cfg.epochs
    o, p = statistics.median(ours), statistics.median(plain)
    rows = ["| loop | images/s (median of %d) | min..max s |" % repeats, "|---|---:|---|",
            f"| plain PyTorch (DataLoader, no augmentation, no eval) | {n / p:.0f} | {min(plain):.1f}..{max(plain):.1f} |",
            f"| ours (`python -m train pretrain`, everything included) | {n / o:.0f} | {min(ours):.1f}..{max(ours):.1f} |"]
    verdict = "met" if o <= 1.10 * p else "NOT met"
    return (f"mcunet-tiny, Fashion-MNIST, {limit} training images, {cfg.epochs} epoch, batch {cfg.batch_size}.\n\n"
            + "\n".join(rows) + f"\n\nOverhead of our stage: {100 * (o / p - 1):+.1f}% (goal <= +10%: {verdict}).\n")
