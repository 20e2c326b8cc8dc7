"""Pretraining: checkpoint round trip, exact resume, 2-process DDP, and clear one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import load_checkpoint
from train.cli import main
from train.errors import UserError
from train.pretrain import PretrainConfig, load_preset, pretrain

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(data="digits", model="mcunet-tiny", epochs=2, batch_size=32, limit=256, lr=0.05, augment_flip=False)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    m = pretrain(PretrainConfig(**QUICK), tmp_path / "run", progress=False)
    assert 0.0 <= m["test_acc"] <= 1.0 and len(m["history"]) == 2
    raw = torch.load(tmp_path / "run" / "model.pt", weights_only=True)  # refuses anything but plain data
    model, meta = load_checkpoint(tmp_path / "run" / "model.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["state_dict"][k]), k
    assert meta["classes"] == [str(i) for i in range(10)]
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["test_acc"] == m["test_acc"] and info["model_spec"]["name"] == "mcunet-tiny"
    assert info["preprocess"]["resolution"] == 32


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = PretrainConfig(**QUICK)
    pretrain(cfg, tmp_path / "full", progress=False)
    stopped = pretrain(cfg, tmp_path / "cut", progress=False, stop_after_steps=11)  # mid-epoch 2 (8 steps/epoch)
    assert stopped == {"stopped_at_step": 11}
    with pytest.raises(UserError, match="--resume"):
        pretrain(cfg, tmp_path / "cut", progress=False)
    pretrain(cfg, tmp_path / "cut", progress=False, resume=True)
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_another_config_is_refused(tmp_path):
    pretrain(PretrainConfig(**QUICK), tmp_path / "r", progress=False, stop_after_steps=3)
    with pytest.raises(UserError, match="different config"):
        pretrain(PretrainConfig(**(QUICK | {"lr": 0.2})), tmp_path / "r", progress=False, resume=True)


def test_two_process_ddp_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train", "pretrain",
           "--data", "digits", "--model", "mcunet-tiny", "--epochs", "1", "--batch-size", "32", "--limit", "256",
           "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert info["world_size"] == 2  # and the run checked replica checksums were identical, else it fails
    assert info["train_images"] == 256 and 0.0 <= info["test_acc"] <= 1.0


def _cli_error(capsys, *argv):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert "unknown model 'vgg'" in _cli_error(capsys, "pretrain", "--model", "vgg", "--data", "digits", "--out", out)
    assert "unknown preset 'nope'" in _cli_error(capsys, "pretrain", "--preset", "nope", "--out", out)
    bad = tmp_path / "p.yaml"
    bad.write_text("data: digits\nepochz: 3\n")
    assert "unknown key(s) epochz" in _cli_error(capsys, "pretrain", "--preset", str(bad), "--out", out)
    err = _cli_error(capsys, "pretrain", "--data", "cifar-77", "--out", out)
    assert "cifar-77" in err and "fashion-mnist" in err  # names the bad source and the known ones
    one = tmp_path / "one" / "cats"
    one.mkdir(parents=True)
    assert "class" in _cli_error(capsys, "pretrain", "--data", str(tmp_path / "one"), "--out", out)


def test_preset_overrides_and_validation():
    cfg = load_preset("default", epochs=1, data="digits")
    assert cfg.epochs == 1 and cfg.data == "digits" and cfg.model == "mcunet-tiny"
    with pytest.raises(UserError, match="epochs must be at least 1"):
        load_preset("default", epochs=0)
