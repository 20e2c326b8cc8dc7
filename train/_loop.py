"""The training loop shared by pretraining and adaptation: batches, augmentation, evaluation."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import augment


def seeded(*parts: int) -> torch.Generator:
    """A generator fixed by (seed, epoch, step): resuming mid-epoch replays the same batches."""
    g = torch.Generator()
    g.manual_seed(hash(tuple(parts)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  drop_singleton: bool = True) -> list[torch.Tensor]:
    """This rank's batches of one epoch: a seeded permutation, strided across ranks. With drop_singleton, a last
    batch of one sample is dropped (BatchNorm in training mode cannot normalize one sample)."""
    order = torch.randperm(n, generator=seeded(seed, epoch))
    order = order[: len(order) // world * world][rank::world]  # equal batch counts on every rank
    batches = list(order.split(batch_size))
    if drop_singleton and len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warmup then cosine decay to zero, per step."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: list[torch.Tensor], optimizer: torch.optim.Optimizer,
                *, seed: int, epoch: int, start: int, lr_at, shift: int, flip: bool, label_smoothing: float = 0.0) -> Iterator[tuple[int, float, float]]:
    """Run batches[start:], yielding (step_in_epoch, loss, accuracy) after each optimizer step."""
    for i in range(start, len(batches)):
        idx = batches[i]
        dev = next(model.parameters()).device  # data stays on the host; batches go to the model's device
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        if shift or flip:
            xb = augment(xb, seeded(seed, epoch, i, 1), max_shift=shift, flip=flip)
        xb = xb.contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i) * group.get("lr_scale", 1.0)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield i, loss.item(), (logits.argmax(1) == yb).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode; restores every module's previous mode (frozen BN stays frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    dev = next(model.parameters()).device
    correct, loss = 0, 0.0
    for s in range(0, len(x), batch_size):
        logits = model(x[s:s + batch_size].to(dev).contiguous(memory_format=torch.channels_last))
        yb = y[s:s + batch_size].to(dev)
        correct += (logits.argmax(1) == yb).sum().item()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
    for m, mode in modes:
        m.training = mode
    return correct / max(1, len(x)), loss / max(1, len(x))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    dev = next(model.parameters()).device
    return torch.cat([model(x[s:s + batch_size].to(dev).contiguous(memory_format=torch.channels_last)).cpu()
                      for s in range(0, len(x), batch_size)])
