"""The on-device learning loop: batch 1, periodic checkpoints and evaluation, NaN skip and rollback, resume.

Data order is a pure function of (seed, step): epoch e visits the samples in
np.random.default_rng([seed, e]).permutation(N), so a checkpoint only needs the step count (the data
position) and the seed (the RNG state) to resume on exactly the next sample, and a resumed run ends with
the same parameters as an uninterrupted one. A stdin stream has no replay: its position is the number
of samples consumed, and a resumed run continues with whatever the stream sends next.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import checkpoint as ck
from .bundle import Bundle
from .data import check_labels, to_model_input
from .optim import OptimConfig
from .step.runner import make_trainer
from .trainer import Trainer


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000                 # updates to run in total (a resumed run counts from its checkpoint)
    seed: int = 0                     # fixes the data order
    checkpoint_dir: str | None = None  # where checkpoints go; resumes from the newest one there
    checkpoint_every: int = 100       # steps between checkpoints
    max_bad: int = 3                  # consecutive NaN/inf steps before rolling back to the last checkpoint
    log_every: int = 100              # steps between progress lines
    eval_every: int = 0               # steps between evaluations on the eval set (0: only at the end)


def order(seed: int, step: int, n: int) -> int:
    """Index of the sample that step `step` trains on."""
    epoch, pos = divmod(step, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[pos])


def accuracy(trainer: Trainer, xq: np.ndarray, y: np.ndarray) -> float:
    return float((trainer.predict(xq).argmax(1) == y).mean()) if len(y) else float("nan")


def train(bundle: Bundle, optim: OptimConfig, cfg: LoopConfig, *, data: tuple[np.ndarray, np.ndarray] | None = None,
          samples: Iterator[tuple[np.ndarray, int]] | None = None, eval_data: tuple[np.ndarray, np.ndarray] | None = None,
          log: Callable[[str], None] = print, trainer: Trainer | None = None) -> dict:
    """Train `bundle` on `data` (uint8 images, labels) or on a `samples` stream; returns a summary."""
    n_classes = len(bundle.labels)
    tr = trainer or make_trainer(bundle, optim)
    xq = y = None
    if data is not None:
        check_labels(data[1], n_classes, "training data")
        xq, y = to_model_input(data[0], bundle.manifest, "training data"), data[1]
    ev = None
    if eval_data is not None:
        check_labels(eval_data[1], n_classes, "eval data")
        ev = (to_model_input(eval_data[0], bundle.manifest, "eval data"), eval_data[1])
    h = ck.bundle_hash(bundle)
    meta = {"bundle_sha256": h, "seed": cfg.seed, "optimizer": asdict(optim), "format": "tinytl-device-checkpoint", "version": 1}
    step = 0
    if cfg.checkpoint_dir:
        found = ck.latest(cfg.checkpoint_dir, expect_hash=h)
        if found:
            path, state, m = found
            tr.load_state(state)
            step = int(m["step"])
            log(f"resumed from {path.name}: step {step}")
        else:
            # a last good state exists from the start
            ck.save(cfg.checkpoint_dir, tr.state(), meta | {"step": 0}, on_phase=tr.on_phase)
    bad, skipped, rollbacks, losses, t0 = 0, 0, 0, [], time.time()
    first = step
    while step < cfg.steps:
        if xq is not None:
            i = order(cfg.seed, step, len(y))
            x1, y1 = xq[i:i + 1], int(y[i])
        else:
            try:
                img, y1 = next(samples)
            except StopIteration:
                break
            check_labels(np.array([y1]), n_classes, f"stream sample {step}")
            x1 = to_model_input(img, bundle.manifest, f"stream sample {step}")
        loss, ok = tr.step(x1, y1, step_index=step)
        step += 1
        if ok:
            bad = 0
            losses.append(loss)
        else:
            bad, skipped = bad + 1, skipped + 1
            log(f"step {step}: non-finite loss or gradient ({loss}); update skipped")
            if bad >= cfg.max_bad:
                found = ck.latest(cfg.checkpoint_dir, expect_hash=h) if cfg.checkpoint_dir else None
                if found:
                    tr.load_state(found[1])
                    log(f"step {step}: {bad} non-finite steps in a row: rolled back to the last good checkpoint "
                        f"{found[0].name} (parameters and optimizer state of step {found[2]['step']}); data continues")
                else:
                    tr.load_state(make_trainer(bundle, optim, engine="numpy").state())
                    log(f"step {step}: {bad} non-finite steps in a row: rolled back to the bundle's parameters")
                bad, rollbacks = 0, rollbacks + 1
        if cfg.checkpoint_dir and (step % cfg.checkpoint_every == 0 or step == cfg.steps) and bad == 0:
            ck.save(cfg.checkpoint_dir, tr.state(), meta | {"step": step}, on_phase=tr.on_phase)
        if cfg.log_every and step % cfg.log_every == 0:
            recent = np.mean(losses[-cfg.log_every:]) if losses else float("nan")
            rate = (step - first) / max(time.time() - t0, 1e-9)
            log(f"step {step}/{cfg.steps}  loss {recent:.4f}  {1e3 / max(rate, 1e-9):.1f} ms/step")
        if ev is not None and cfg.eval_every and step % cfg.eval_every == 0:
            log(f"step {step}: eval accuracy {accuracy(tr, *ev):.4f} on {len(ev[1])} samples")
    out = {"steps": step, "trained_steps": step - first, "skipped": skipped, "rollbacks": rollbacks,
           "seconds": time.time() - t0, "ms_per_step": 1e3 * (time.time() - t0) / max(step - first, 1),
           "final_loss": float(np.mean(losses[-100:])) if losses else float("nan"), "trainer": tr}
    if ev is not None:
        out["eval_acc"] = accuracy(tr, *ev)
    return out


def export(params: dict[str, np.ndarray], out: str | Path) -> Path:
    """The few-KB .npz of trained parameters that `python -m convert merge` takes (atomic write)."""
    from .bundle import save_trained
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    save_trained(tmp, params)
    tmp.replace(out)
    return out
