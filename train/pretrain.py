"""Pretraining on the source dataset: SGD + cosine, seeded, resumable, DistributedDataParallel-ready.

Outputs in the run folder: model.pt (weights only, best validation accuracy) + model.json (spec,
preprocessing, metrics), state.pt (everything needed to resume mid-epoch), history.json.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import _loop
from ._config import from_dict, read_yaml
from .checkpoint import load_torch, save_checkpoint, save_json, save_torch
from .data import Preprocess, check_fits, load_dataset, preprocess
from .errors import UserError
from .models import build_model, count_parameters, load_spec

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class PretrainConfig:
    data: str = "fashion-mnist"       # dataset name (fashion-mnist, animal-mnist, digits) or folder / .npz path
    model: str = "mcunet-tiny"        # model preset name or path to a model .yaml
    resolution: int | None = None     # input side in px; None = the model preset's
    lite_residual: bool = False       # insert TinyTL lite residual branches and pretrain them too
    epochs: int = 4
    batch_size: int = 128             # global batch (split across DDP processes)
    lr: float = 0.1                   # peak SGD learning rate (momentum 0.9, nesterov), cosine decay per step
    warmup_epochs: float = 0.3        # linear warmup, in epochs
    weight_decay: float = 5e-5
    label_smoothing: float = 0.1
    augment_shift: int = 2            # random translation, px
    augment_flip: bool = True         # random horizontal flip (off for digits/text)
    val_fraction: float = 0.1         # of train, for model selection; test is never looked at until the end
    limit: int | None = None          # cap on training images (quick runs and tests)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"pretrain config: {name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"pretrain config: lr must be positive, got {self.lr}")


def load_preset(name_or_path: str, **overrides: Any) -> PretrainConfig:
    path = Path(name_or_path) if Path(name_or_path).suffix in (".yaml", ".yml") else PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise UserError(f"unknown preset '{name_or_path}'; presets: {known} (or a path to a .yaml file)")
    data = read_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(PretrainConfig, data, str(path))


def _dist_setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when launched by torchrun.

    On GPUs each process drives the GPU of its LOCAL_RANK and talks NCCL; on CPUs, gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world, device) if world > 1 else (0, 1, device)


def pretrain(cfg: PretrainConfig, out: Path, *, resume: bool = False, force: bool = False,
             stop_after_steps: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train cfg.model on cfg.data; returns the metrics also written to out/model.json.

    stop_after_steps: save the resume state and return early after that many steps in total
    (used to prove that resuming reproduces an uninterrupted run).
    """
    rank, world, device = _dist_setup()
    out = Path(out)
    state_path = out / "state.pt"
    if rank == 0 and out.exists() and any(out.iterdir()) and not (resume or force):
        raise UserError(f"{out}: holds an earlier run; pass --resume to continue it or --force to start over")
    torch.manual_seed(cfg.seed)

    spec = load_spec(cfg.model, resolution=cfg.resolution)
    ds = load_dataset(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, limit=cfg.limit)
    spec = spec.replace(in_channels=ds.train.x.shape[-1] if spec.in_channels not in (1, 3) else spec.in_channels,
                        num_classes=len(ds.classes), lite_residual=cfg.lite_residual or spec.lite_residual)
    prep = Preprocess(resolution=spec.resolution, channels=spec.in_channels)
    check_fits(ds, prep)
    x_train, y_train = preprocess(ds.train.x, prep), torch.from_numpy(ds.train.y)
    x_val, y_val = preprocess(ds.val.x, prep), torch.from_numpy(ds.val.y)

    model = build_model(spec).to(device, memory_format=torch.channels_last)
    wd, no_wd = [], []
    for name, p in model.named_parameters():  # no weight decay on norms and biases
        (no_wd if p.ndim <= 1 else wd).append(p)
    optimizer = torch.optim.SGD([{"params": wd, "weight_decay": cfg.weight_decay}, {"params": no_wd, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(_loop.epoch_batches(len(x_train), cfg.batch_size // world, cfg.seed, 0, rank, world))
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)

    epoch, step_in_epoch, best, history, elapsed = 0, 0, {"val_acc": -1.0}, [], 0.0
    if resume and state_path.exists():
        st = load_torch(state_path)
        if st["config"] != dataclasses.asdict(cfg):
            raise UserError(f"{state_path}: was written with a different config; rerun with the same flags or use --force")
        model.load_state_dict(st["model"])  # (load_state_dict copies onto the model's device)
        optimizer.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["torch_rng"])
        epoch, step_in_epoch, best, history = st["epoch"], st["step_in_epoch"], st["best"], st["history"]
        elapsed = st["elapsed"]  # seconds spent before the crash, so reported times are whole-run times
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model

    def save_state() -> None:
        if rank == 0:
            save_torch(state_path, {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "torch_rng": torch.get_rng_state(), "epoch": epoch, "step_in_epoch": step_in_epoch,
                                    "best": best, "history": history, "elapsed": time.time() - t0})

    meta = {"stage": "pretrain", "config": dataclasses.asdict(cfg), "dataset": ds.name, "world_size": world,
            "parameters": count_parameters(model)}
    steps_done = epoch * steps_per_epoch + step_in_epoch
    t0 = time.time() - elapsed
    while epoch < cfg.epochs:
        batches = _loop.epoch_batches(len(x_train), cfg.batch_size // world, cfg.seed, epoch, rank, world)
        ddp.train()
        t_epoch = time.time()
        bar = tqdm(total=len(batches), initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress or rank != 0, mininterval=1.0, leave=False)
        steps = _loop.train_steps(ddp, x_train, y_train, batches, optimizer, seed=cfg.seed, epoch=epoch, start=step_in_epoch,
                                  lr_at=lambda i: _loop.cosine_lr(cfg.lr, epoch * steps_per_epoch + i, total, warmup),
                                  shift=cfg.augment_shift, flip=cfg.augment_flip, label_smoothing=cfg.label_smoothing)
        for i, loss, acc in steps:
            step_in_epoch, steps_done = i + 1, steps_done + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", refresh=False)
            if stop_after_steps is not None and steps_done >= stop_after_steps:
                bar.close()
                save_state()
                return {"stopped_at_step": steps_done}
        bar.close()
        train_seconds = time.time() - t_epoch  # the training steps alone (after a resume: the rest of the epoch)
        if rank == 0:
            val_acc, val_loss = _loop.evaluate(model, x_val, y_val)
            history.append({"epoch": epoch + 1, "val_acc": val_acc, "val_loss": val_loss, "seconds": time.time() - t0,
                            "train_seconds": train_seconds})
            if progress:
                tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: val acc {val_acc:.4f}, loss {val_loss:.4f}")
            if val_acc > best["val_acc"]:
                best = {"val_acc": val_acc, "epoch": epoch + 1}
                save_checkpoint(out / "model.pt", model, preprocess=prep.to_dict(), classes=list(ds.classes), meta=meta | {"best": best})
        epoch, step_in_epoch = epoch + 1, 0
        save_state()
    if world > 1:
        _check_in_sync(model)
        dist.barrier()
    if rank != 0:
        return {}
    # Test once, on the model selected by validation accuracy.
    from .checkpoint import load_checkpoint
    best_model, _ = load_checkpoint(out / "model.pt")
    best_model = best_model.to(device, memory_format=torch.channels_last)
    test_acc, test_loss = _loop.evaluate(best_model, preprocess(ds.test.x, prep), torch.from_numpy(ds.test.y))
    metrics = {"test_acc": test_acc, "test_loss": test_loss, "best": best, "history": history,
               "train_images": len(x_train), "seconds": round(time.time() - t0, 1)}
    save_checkpoint(out / "model.pt", best_model, preprocess=prep.to_dict(), classes=list(ds.classes), meta=meta | metrics)
    save_json(out / "history.json", {"history": history})
    return metrics


def _check_in_sync(model: torch.nn.Module) -> None:
    """DDP keeps replicas identical; prove it by comparing a parameter checksum across ranks."""
    s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    all_s = [torch.zeros_like(s) for _ in range(dist.get_world_size())]
    dist.all_gather(all_s, s)
    if any(not torch.equal(a, all_s[0]) for a in all_s):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {[a.item() for a in all_s]}")
