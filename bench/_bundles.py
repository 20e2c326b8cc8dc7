"""Checkpoints and bundles the benchmarks share, made once per `python -m bench` run in one temp dir.

    ckpt = checkpoint("mbv2-w0.35", 64)          # random weights, realistic BN statistics, "adapted" TinyTL-L+B
    b = bundle("mcunet-tiny", 32)                 # -> (bundle dir, convert() result, conversion seconds)

A bundle converted by convert_fidelity is reused by engine_speed and device_step in the same run.
Random models follow tests/test_convert.py: BN statistics re-estimated on real images (so activations
and int8 ranges look like a trained net's), lite branches switched on, a classifier with logit spread.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
ADAPTED = ROOT / "runs" / "adapt" / "tinytl-lb-b8" / "model.pt"   # `make adapt`
PRETRAINED = ROOT / "runs" / "pretrain" / "model.pt"              # `make train`
DATA = "animal-mnist"                                            # the project's adaptation task
LABELS = "Bear,Bird,Cat,Cow,Dog,Elephant,Giraffe,Horse,Sheep,Zebra"
REAL = "real"  # preset name standing for the adapted checkpoint
RESULTS = ROOT / "bench" / "results"  # NAME.md, NAME.json, plots; read at call time (--quick rebinds it to results/quick)

_tmp: Path | None = None
_cache: dict = {}


def tmpdir() -> Path:
    global _tmp
    if _tmp is None:
        _tmp = Path(tempfile.mkdtemp(prefix="tinytl-bench-"))
        atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
    return _tmp


def realistic(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random weights, BN statistics from real images x (N, C, H, W), lite branches switched on."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if isinstance(m, nn.GroupNorm) and not m.weight.abs().sum():
            nn.init.normal_(m.weight, 0, 0.3)
    model.train()
    with torch.no_grad():
        for b in x.split(64):
            model(b)
        for m in model.modules():  # floor the variance: a near-dead channel would get a x300 folded weight,
            if isinstance(m, nn.BatchNorm2d):  # which trained nets (weight decay) do not have
                m.running_var += 0.1 * m.running_var.mean()
    nn.init.normal_(model.classifier.weight, 0, model.classifier.in_features ** -0.5)  # logits with spread
    return model.eval()


def random_model(preset: str, res: int, channels: int, x: torch.Tensor, classes: int = 10) -> nn.Module:
    """`preset` at `res` px with lite residual branches, random weights, BN statistics from x."""
    from train.models import build_model, insert_lite_residual, load_spec
    torch.manual_seed(0)
    model = build_model(load_spec(preset, resolution=res, num_classes=classes, in_channels=channels))
    insert_lite_residual(model)
    return realistic(model, x)


def dataset():
    if "ds" not in _cache:
        from train.data import load_dataset
        _cache["ds"] = load_dataset(DATA, seed=0)
    return _cache["ds"]


def images(res: int, channels: int, n: int, split: str = "train") -> torch.Tensor:
    """(n, C, res, res) preprocessed images of the task."""
    from train.data import Preprocess, preprocess
    return preprocess(getattr(dataset(), split).x[:n], Preprocess(res, channels))


def channels_of(preset: str) -> int:
    return 1 if preset == "mcunet-tiny" else 3  # the presets' own input channels


def checkpoint(preset: str, res: int, method: str = "tinytl-lb") -> Path:
    """An 'adapted' checkpoint of a random `preset` on Animal-MNIST (what `train adapt` would write)."""
    key = ("ckpt", preset, res, method)
    if key not in _cache:
        from train.checkpoint import save_checkpoint
        from train.data import Preprocess
        from train.methods import apply_method
        ch = channels_of(preset)
        model = random_model(preset, res, ch, images(res, ch, 256))
        names = apply_method(model, method)
        path = tmpdir() / f"ckpt-{preset}-{res}-{method}" / "model.pt"
        path.parent.mkdir()
        save_checkpoint(path, model, preprocess=Preprocess(res, ch).to_dict(), classes=list(dataset().classes),
                        meta={"stage": "adapt", "method": method, "trainable": names, "config": {"data": DATA, "seed": 0}})
        _cache[key] = path
    return _cache[key]


def bundle(preset: str, res: int | None = None, *, eval_samples: int | None = 500) -> tuple[Path, dict, float]:
    """(bundle dir, convert() result, wall seconds of convert()), converted once per run, of:
    REAL, the adapted checkpoint; or a random `preset` at `res` px; eval_samples: test images compared."""
    key = ("bundle", preset, res)
    if key not in _cache:
        ckpt = ADAPTED if preset == REAL else checkpoint(preset, res)
        _cache[key] = _convert(ckpt, tmpdir() / f"bundle-{preset}-{res}", eval_samples=eval_samples)
    return _cache[key]


def new_task_bundle(method: str, *, eval_samples: int | None = 500, litert_training: bool = False) -> tuple[Path, dict, float, str]:
    """(bundle dir, convert() result, seconds, where it came from): the pretrained checkpoint with a fresh
    10-class Animal-MNIST head, as `python -m convert --checkpoint runs/pretrain/model.pt --method M
    --classes 10 --labels ... --data animal-mnist`; a random adapted mcunet-tiny if that file is absent.
    litert_training: also train.tflite (`--litert-training`; a bundle with it serves callers without too)."""
    key = ("new-task", method)
    if key in _cache and litert_training and not (_cache[key][0] / "train.tflite").exists():
        del _cache[key]  # converted earlier without the peer
    if key not in _cache:
        out = tmpdir() / f"newtask-{method}{'-peer' if litert_training else ''}"
        if PRETRAINED.exists():
            r = _convert(PRETRAINED, out, eval_samples=eval_samples, method=method, classes=10,
                         labels=tuple(LABELS.split(",")), data=DATA, litert_training=litert_training)
            src = f"`{PRETRAINED.relative_to(ROOT)}` + fresh head"
        else:
            r = _convert(checkpoint("mcunet-tiny", 32, method), out, eval_samples=eval_samples, litert_training=litert_training)
            src = "random mcunet-tiny (runs/pretrain/model.pt absent: `make train`)"
        _cache[key] = (*r, src)
    return _cache[key]


def new_task_model(method: str, bundle_dir: Path, pretrained: Path | None = None):
    """The float PyTorch model `new_task_bundle(method)` was converted from (seed-0 fresh head, lite branches as
    convert made them), `method`'s parameters trainable, BatchNorm frozen: the PyTorch side of a like-for-like
    batch-1 comparison with the device. pretrained: the checkpoint of a bundle made by `convert --checkpoint
    P --method M --classes 10 --labels ... --data animal-mnist` elsewhere (default: PRETRAINED)."""
    import torch
    from convert import ConvertConfig
    from convert import load_model
    from train.methods import apply_method, set_adapt_mode
    pretrained = pretrained or (PRETRAINED if PRETRAINED.exists() else None)
    src = pretrained or checkpoint("mcunet-tiny", 32, method)
    kw = dict(method=method, classes=10, labels=tuple(LABELS.split(",")), data=DATA) if pretrained else {}
    model, _ = load_model(ConvertConfig(checkpoint=str(src), out=str(bundle_dir), **kw))
    apply_method(model, method)
    return set_adapt_mode(model.to(memory_format=torch.channels_last))


def _convert(ckpt: Path, out: Path, **kw) -> tuple[Path, dict, float]:
    from convert import ConvertConfig, convert
    t0 = time.perf_counter()
    r = convert(ConvertConfig(checkpoint=str(ckpt), out=str(out), **kw), log=lambda *_: None)
    return out, r, time.perf_counter() - t0


def task_npz(split: str, n: int | None = None) -> Path:
    """Animal-MNIST `split` as .npz (x uint8 NHWC, y), the device CLI's data format."""
    out = tmpdir() / f"{DATA}-{split}-{n}.npz"
    if not out.exists():
        s = getattr(dataset(), split)
        np.savez(out, x=s.x[:n], y=s.y[:n])
    return out


def quantized_inputs(bundle_dir: Path, n: int, split: str = "test") -> np.ndarray:
    """(n, H, W, C) int8 model inputs: task images preprocessed as at conversion (resized, channels repeated),
    quantized by the manifest's rule. device/data.to_model_input only pads, so it cannot feed the 64 px models."""
    import json
    from convert import nhwc
    from train.data import Preprocess
    m = json.loads((Path(bundle_dir) / "manifest.json").read_text())["input"]
    x = nhwc(getattr(dataset(), split).x[:n], Preprocess.from_dict(m["preprocess"]))
    q = x.astype(np.float64) / np.float32(m["scale"])
    q = np.sign(q) * np.floor(np.abs(q) + 0.5) + m["zero_point"]  # round half away from zero, as device/data.py
    return np.clip(q, -128, 127).astype(np.int8)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def write_json(name: str, data) -> Path:
    """bench/results/NAME.json: a benchmark's numbers for the BENCHMARKS.md summary (no markdown parsing)."""
    import json
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path
