"""TinyTL adaptation: a pretrained checkpoint, a new head for the target's classes, one of six methods.

Adam with a per-step cosine schedule (as in the paper), BatchNorm frozen in eval mode (batch 1 works),
validation-based model selection; writes model.pt (weights only) + model.json for the conversion stage.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import _loop
from .checkpoint import file_sha256, load_checkpoint, save_checkpoint
from .data import Preprocess, check_fits, load_dataset, preprocess
from .errors import UserError
from .methods import LITE_METHODS, METHODS, apply_method, set_adapt_mode
from .models import LiteResidual, insert_lite_residual

# Per-method default peak learning rates for Adam (tuned on the validation split, never on test):
# the classifier alone tolerates a large step, full fine-tuning needs a small one.
DEFAULT_LR = {"ft-full": 1e-3, "ft-last": 3e-3, "ft-norm-last": 3e-3, "tinytl-b": 3e-3, "tinytl-l": 1e-3, "tinytl-lb": 1e-3}


@dataclass(frozen=True)
class AdaptConfig:
    checkpoint: str                   # pretrained checkpoint (.pt) from `python -m train pretrain`
    data: str = "animal-mnist"        # target dataset name, image folder or .npz
    method: str = "tinytl-lb"         # one of METHODS
    epochs: int = 6
    batch_size: int = 8
    lr: float | None = None           # peak Adam learning rate; None = DEFAULT_LR[method]
    lite_init: str = "pretrained"     # lite branches as pretrained ("pretrained") or freshly zero-started ("random")
    augment_shift: int = 2            # random translation, px
    augment_flip: bool = True
    val_fraction: float = 0.1
    limit: int | None = None          # cap on training images (quick runs and tests)
    seed: int = 0
    threads: int | None = None        # torch CPU threads; None = 1 for batches <= 16 (measured faster: per-op threading
                                      # overhead exceeds the work on small batches), else torch's default

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'; methods: {', '.join(METHODS)}")
        if self.lite_init not in ("pretrained", "random"):
            raise UserError(f"lite_init must be 'pretrained' or 'random', got '{self.lite_init}'")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("epochs and batch size must be at least 1")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


def prepare_model(ckpt_model: torch.nn.Module, num_classes: int, method: str, lite_init: str, seed: int) -> tuple[torch.nn.Module, list[str]]:
    """New head, lite branches (pretrained, or zero-started when absent or asked), freezing policy applied."""
    torch.manual_seed(seed)
    model = ckpt_model
    if not model.spec.lite_residual:
        insert_lite_residual(model)  # zero-started: the output is unchanged until they learn
    elif lite_init == "random":
        for block in model.blocks:
            if block.lite is not None:
                block.lite = LiteResidual(block.in_channels, block.out_channels, block.lite.conv1.kernel_size[0],
                                          block.stride, not isinstance(block.lite.pool, torch.nn.Identity))
    model.reset_classifier(num_classes)
    names = apply_method(model, method)
    return model.to(memory_format=torch.channels_last), names


def adapt(cfg: AdaptConfig, out: Path, *, progress: bool = True, force: bool = False) -> dict[str, Any]:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out}: holds an earlier run; pass --force to overwrite it")
    threads = cfg.threads or (1 if cfg.batch_size <= 16 else None)
    if threads:
        torch.set_num_threads(threads)
    pretrained, ckpt_meta = load_checkpoint(Path(cfg.checkpoint))
    had_lite = pretrained.spec.lite_residual
    ds = load_dataset(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, limit=cfg.limit)
    prep = Preprocess.from_dict(ckpt_meta["preprocess"])
    check_fits(ds, prep)
    model, names = prepare_model(pretrained, len(ds.classes), cfg.method, cfg.lite_init, cfg.seed)
    x_train, y_train = preprocess(ds.train.x, prep), torch.from_numpy(ds.train.y)
    x_val, y_val = preprocess(ds.val.x, prep), torch.from_numpy(ds.val.y)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.peak_lr)
    steps_per_epoch = len(_loop.epoch_batches(len(x_train), cfg.batch_size, cfg.seed, 0, drop_singleton=False))
    total = cfg.epochs * steps_per_epoch
    best, history, t0 = {"val_acc": -1.0}, [], time.time()
    best_state = None
    for epoch in range(cfg.epochs):
        set_adapt_mode(model)
        batches = _loop.epoch_batches(len(x_train), cfg.batch_size, cfg.seed, epoch, drop_singleton=False)
        bar = tqdm(total=len(batches), desc=f"{cfg.method} b{cfg.batch_size} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, mininterval=1.0, leave=False)
        for _, loss, acc in _loop.train_steps(model, x_train, y_train, batches, optimizer, seed=cfg.seed, epoch=epoch, start=0,
                                              lr_at=lambda i: _loop.cosine_lr(cfg.peak_lr, epoch * steps_per_epoch + i, total),
                                              shift=cfg.augment_shift, flip=cfg.augment_flip):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.close()
        val_acc, val_loss = _loop.evaluate(model, x_val, y_val)
        history.append({"epoch": epoch + 1, "val_acc": val_acc, "val_loss": val_loss, "seconds": round(time.time() - t0, 1)})
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch + 1}
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test_acc, test_loss = _loop.evaluate(model, preprocess(ds.test.x, prep), torch.from_numpy(ds.test.y))
    metrics = {"test_acc": test_acc, "test_loss": test_loss, "best": best, "history": history, "seconds": round(time.time() - t0, 1),
               "trainable_params": sum(p.numel() for p in params), "lite_init": cfg.lite_init if had_lite else "random (checkpoint had none)",
               "memory": _memory_estimate(model, cfg.method, prep.resolution, cfg.batch_size)}
    meta = {"stage": "adapt", "method": cfg.method, "trainable": names, "config": dataclasses.asdict(cfg), "dataset": ds.name,
            "pretrained_from": str(cfg.checkpoint), "pretrained_sha256": file_sha256(Path(cfg.checkpoint))}
    save_checkpoint(out / "model.pt", model, preprocess=prep.to_dict(), classes=list(ds.classes), meta=meta | metrics)
    return metrics


def _memory_estimate(model: torch.nn.Module, method: str, resolution: int, batch: int) -> dict[str, Any]:
    """The paper-convention estimate for this run (params + batch x peak activations), in bytes."""
    from .memory import estimate
    e = estimate(model, method, resolution, batch)
    return {"convention": "tinytl-paper", "param_bytes": e.param_bytes, "activation_bytes": e.activation_bytes,
            "total_bytes": e.total_bytes, "batch": batch}


__all__ = ["AdaptConfig", "adapt", "prepare_model", "DEFAULT_LR", "LITE_METHODS"]
