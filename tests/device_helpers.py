"""Shared by tests/test_device_*.py: new-task bundles built once per session, data, input quantization."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELS = "Bear,Bird,Cat,Cow,Dog,Elephant,Giraffe,Horse,Sheep,Zebra"
# A quick stand-in for `make train`: the default preset (mcunet-tiny with lite residual branches, Fashion-MNIST)
# on 6,000 images for one epoch, ~1 min with its evaluation, ~64% test accuracy. Tests never depend on what runs/ holds: a clean
# CI clone has no runs/, and a skipped test proves nothing.
QUICK_PRETRAIN = ["--preset", "default", "--limit", "6000", "--epochs", "1", "--seed", "0"]


def pretrained_checkpoint(tmp_path_factory) -> Path:
    """The quick pretrained checkpoint, made once per test session."""
    out = tmp_path_factory.getbasetemp() / "pretrain"
    if not (out / "model.pt").exists():
        r = subprocess.run([sys.executable, "-m", "train", "pretrain", *QUICK_PRETRAIN, "--out", str(out), "--force"],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    return out / "model.pt"


def new_task_bundle(tmp_path_factory, method: str = "tinytl-lb") -> Path:
    """A bundle from the Fashion-MNIST-pretrained checkpoint with a fresh 10-class head (cached per session)."""
    ckpt = pretrained_checkpoint(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / f"bundle_{method}"
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "convert", "--checkpoint", str(ckpt), "--method", method, "--classes", "10",
                        "--labels", LABELS, "--data", "animal-mnist", "--calibration-samples", "64", "--eval-samples", "64",
                        "--out", str(out), "--force"], cwd=ROOT, check=True, capture_output=True)
    return out


def animal_npz(tmp_path_factory, split: str = "train", n: int | None = None) -> Path:
    out = tmp_path_factory.getbasetemp() / f"animal_{split}_{n}.npz"
    if not out.exists():
        from train.data import load_dataset
        ds = load_dataset("animal-mnist", seed=0)
        s = getattr(ds, split)
        np.savez(out, x=s.x[:n], y=s.y[:n])
    return out
