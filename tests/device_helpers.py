"""Shared by tests/test_device_*.py: new-task bundles built once per session, data, input quantization."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "runs" / "pretrain" / "model.pt"
LABELS = "Bear,Bird,Cat,Cow,Dog,Elephant,Giraffe,Horse,Sheep,Zebra"


def new_task_bundle(tmp_path_factory, method: str = "tinytl-lb") -> Path:
    """A bundle from the Fashion-MNIST-pretrained checkpoint with a fresh 10-class head (cached per session)."""
    if not CKPT.exists():
        pytest.skip(f"{CKPT} missing (make train)")
    out = tmp_path_factory.getbasetemp() / f"bundle_{method}"
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "convert", "--checkpoint", str(CKPT), "--method", method, "--classes", "10",
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
