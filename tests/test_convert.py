"""Conversion stage: BN folding, the NHWC TF emitter, int8 agreement, the bundle contract, merge round trip.

Tolerances (written down, per STYLE.md):
- folded float graph (TF) vs PyTorch: max |logit error| <= 1e-4 x max |logit| (float32 reordering only);
- int8 .tflite vs float on RANDOM weights (64 images): RMS logit error <= 40% of the logits' RMS spread
  and top-1 agreement >= 60%. Random nets have no margin and amplify int8 noise block by block
  (measured: 1% after the stem, ~12% at mcunet-tiny's pooled features, 33% after mbv2-w0.35's 17
  blocks; agreement 0.7-0.95 on 64 images); trained checkpoints reach >= 99% (see report.md);
- merge round trip: the merged int8 model vs the float model with the same perturbation, the same bounds.
Models are random (BN statistics re-estimated on real images so activations are realistic), small
resolutions keep the file under two minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convert import ConvertConfig, convert, merge
from convert import _tflite
from convert._build import build_graph
from convert import nhwc
from convert._report import compare
from device.bundle import BundleError, load_bundle, save_trained
from device.engine import Engine
from device.graph import GraphError, Graph, dumps, loads, verify
from train.checkpoint import save_checkpoint
from train.data import Preprocess, load_dataset
from train.errors import UserError
from train.methods import apply_method
from train.models import build_model, insert_lite_residual, load_spec
from step_helpers import every_tensor_equal
from bench._bundles import realistic as _realistic  # random weights, BN statistics from real images

ROOT = Path(__file__).resolve().parents[1]


def _model(preset: str, res: int, channels: int | None = None) -> nn.Module:
    torch.manual_seed(0)  # the same random model whichever tests run
    spec = load_spec(preset, resolution=res, num_classes=10, **({"in_channels": channels} if channels else {}))
    model = build_model(spec)
    insert_lite_residual(model)
    return model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _x(ds, res: int, ch: int, n: int, split: str = "train") -> np.ndarray:
    return nhwc(getattr(ds, split).x[:n], Preprocess(resolution=res, channels=ch))


def test_folded_graph_matches_pytorch(digits):
    x = _x(digits, 32, 1, 16)
    model = _realistic(_model("mcunet-tiny", 32), torch.from_numpy(_x(digits, 32, 1, 128)).permute(0, 3, 1, 2))
    g, params = build_graph(model, 32)
    assert loads(dumps(g)) == g  # JSON round trip
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = _tflite.run_float(g, params, x)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_verify_catches_bad_graphs(digits):
    g, params = build_graph(_model("mcunet-tiny", 32), 32)
    t = dict(g.tensors)
    t["stem"] = t["stem"].__class__("stem", (1, 31, 32, 16))
    with pytest.raises(GraphError, match="stem"):
        verify(Graph(t, g.ops, g.inputs, g.outputs))
    with pytest.raises(GraphError, match="used before"):
        verify(Graph(g.tensors, g.ops[::-1], g.inputs, g.outputs))
    bad = dict(params, **{"stem.bias": np.zeros(3, np.float32)})
    with pytest.raises(GraphError, match="stem.bias"):
        verify(g, bad)


@pytest.mark.parametrize("preset,res,ch", [("mcunet-tiny", 32, 1), ("proxylessnas-mobile", 64, 3), ("mbv2-w0.35", 64, 3)])
def test_int8_agrees_with_float_no_transpose(digits, preset, res, ch):
    model = _realistic(_model(preset, res, ch), torch.from_numpy(_x(digits, res, ch, 128)).permute(0, 3, 1, 2))
    g, params = build_graph(model, res)
    tfl = _tflite.convert_int8(g, params, _x(digits, res, ch, 64))
    ops = _tflite.op_counts(tfl)
    assert ops.get("TRANSPOSE", 0) == 0
    it = _tflite.interpreter(tfl, reference=True)
    assert it.get_input_details()[0]["dtype"] == np.int8 and it.get_output_details()[0]["dtype"] == np.int8
    r = compare(model, tfl, _x(digits, res, ch, 64, "test"))
    assert r["agreement"] >= 0.6 and r["logit_rel_rms"] <= 0.4, sorted(r.items())
    # every int8 tensor of this random preset's forward: the C core == the numpy program == LiteRT's reference
    # kernels == the numpy engine, byte for byte (issue 13 5a)
    xq = Engine(tfl).quantize_input(_x(digits, res, ch, 3, "test"))
    assert every_tensor_equal(tfl, xq) >= 40


# ---- the bundle, from a checkpoint on disk -------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    """An 'adapted' TinyTL-L+B mcunet-tiny checkpoint on digits (random weights, realistic statistics)."""
    d = tmp_path_factory.mktemp("ckpt")
    model = _realistic(_model("mcunet-tiny", 32), torch.from_numpy(_x(digits, 32, 1, 128)).permute(0, 3, 1, 2))
    names = apply_method(model, "tinytl-lb")
    save_checkpoint(d / "model.pt", model, preprocess=Preprocess(32, 1).to_dict(), classes=list(digits.classes),
                    meta={"stage": "adapt", "method": "tinytl-lb", "trainable": names, "config": {"data": "digits", "seed": 0}})
    return d / "model.pt", model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("b") / "bundle"
    r = convert(ConvertConfig(checkpoint=str(checkpoint[0]), out=str(out), calibration_samples=64, eval_samples=64),
                log=lambda *_: None)
    assert r["agreement"] >= 0.6 and r["logit_rel_rms"] <= 0.4, sorted(r.items())
    return out


def test_bundle_contents(bundle):
    b = load_bundle(bundle)
    m = b.manifest
    assert m["method"] == "tinytl-lb" and m["input"]["shape"] == [1, 32, 32, 1] and m["input"]["dtype"] == "int8"
    assert set(m["files"]) >= {"inference.tflite", "trainable.json", "trainable.npz", "model.onnx", "report.md"}
    names = [p["name"] for p in m["trainable"]]
    assert "stem.bias" in names and "classifier.weight" in names and "blocks.1.lite.conv1.weight" in names
    assert not any(n.endswith("depthwise.weight") for n in names)  # frozen weights never train
    assert all(b.graph.tensors[n].trainable for n in names)
    assert "TRANSPOSE ops: 0" in (bundle / "report.md").read_text()


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow', 'ai_edge_litert', 'train', 'convert'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from device.bundle import load_bundle
b = load_bundle(sys.argv[1])
print(len(b.trainable), sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')))
"""


def test_bundle_loads_with_numpy_and_json_only(bundle):
    r = subprocess.run([sys.executable, "-c", BLOCKER, str(bundle)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("[]")


@pytest.mark.parametrize("damage", ["edit", "truncate"])
def test_tampered_bundle_names_the_file(tmp_path, bundle, damage):
    import shutil
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    f = copy / ("trainable.npz" if damage == "edit" else "inference.tflite")
    data = bytearray(f.read_bytes())
    if damage == "edit":
        data[len(data) // 2] ^= 1
    else:
        data = data[: len(data) // 2]
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f.name):
        load_bundle(copy)


def test_bad_input_errors(tmp_path, checkpoint, bundle):
    ckpt, model = checkpoint
    with pytest.raises(UserError, match="exists"):
        convert(ConvertConfig(checkpoint=str(ckpt), out=str(bundle)))
    with pytest.raises(UserError, match="calibration.*100000"):
        convert(ConvertConfig(checkpoint=str(ckpt), out=str(tmp_path / "x"), calibration_samples=100000))
    assert not (tmp_path / "x").exists()
    bad = _model("mcunet-tiny", 32)
    bad.blocks[2].depthwise.act = nn.Hardswish()
    with pytest.raises(UserError, match=r"blocks\.2\.depthwise\.act.*Hardswish"):
        build_graph(bad, 32)


def test_new_task_bundle_from_pretrained(tmp_path, digits):
    model = _model("mcunet-tiny", 32)
    model.spec = model.spec.replace(lite_residual=False)
    for b in model.blocks:  # a checkpoint without lite branches: they start at zero in the bundle
        b.lite = None
    save_checkpoint(tmp_path / "pre.pt", model, preprocess=Preprocess(32, 1).to_dict(), classes=list(digits.classes),
                    meta={"stage": "pretrain", "config": {"data": "digits"}})
    with pytest.raises(UserError, match="--method"):
        convert(ConvertConfig(checkpoint=str(tmp_path / "pre.pt"), out=str(tmp_path / "b")))
    convert(ConvertConfig(checkpoint=str(tmp_path / "pre.pt"), out=str(tmp_path / "b"), method="tinytl-lb", classes=3,
                          labels=("a", "b", "c"), calibration_samples=32, eval_samples=16), log=lambda *_: None)
    b = load_bundle(tmp_path / "b")
    assert b.labels == ["a", "b", "c"] and b.trainable["classifier.weight"].shape == (3, 160)
    assert not b.trainable["blocks.1.lite.norm2.weight"].any()  # zero start: the branch is a no-op
    # tinytl-b on the same checkpoint: the frozen zero-start branches add nothing and are left out,
    # and the device trainer can build its step over what remains
    from device.optim import OptimConfig
    from device.trainer import Trainer
    convert(ConvertConfig(checkpoint=str(tmp_path / "pre.pt"), out=str(tmp_path / "bb"), method="tinytl-b", classes=3,
                          labels=("a", "b", "c"), calibration_samples=32, eval_samples=16), log=lambda *_: None)
    bb = load_bundle(tmp_path / "bb")
    assert not any(".lite." in n for n in bb.trainable)
    tr = Trainer(bb, OptimConfig("sgd", lr=0.01, total_steps=2, schedule="constant"))
    loss, updated = tr.step(_x(digits, 32, 1, 1)[0].astype(np.float32), 1)
    assert np.isfinite(loss) and updated


# ---- merge: device-learned parameters back into a stock int8 .tflite ------------------------------

def _set_torch(model: nn.Module, name: str, value: np.ndarray) -> None:
    """Write a graph parameter back into the PyTorch model (the inverse of _build's naming/layout)."""
    v = torch.from_numpy(np.asarray(value, np.float32))
    mods = dict(model.named_modules())
    path, leaf = name.rsplit(".", 1)
    m = mods[path]
    if isinstance(m, nn.Conv2d):  # lite conv weight, HWIO -> OIHW
        m.weight.data = v.permute(3, 2, 0, 1).contiguous()
    elif leaf == "bias" and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):  # folded bias moves with the BN shift
        bn = m.bn
        folded = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bn.bias.data += v - folded.detach()
    else:
        getattr(m, leaf).data = v


def test_merge_round_trip(tmp_path, bundle, checkpoint, digits):
    import copy
    b = load_bundle(bundle)
    rng = np.random.default_rng(1)
    trained = {k: v + rng.normal(0, 0.1 * (np.abs(v).std() + 1e-2), v.shape).astype(np.float32) for k, v in b.trainable.items()}
    save_trained(tmp_path / "trained.npz", trained)
    merge(bundle, tmp_path / "trained.npz", tmp_path / "adapted.tflite")
    model = copy.deepcopy(checkpoint[1]).eval()
    for k, v in trained.items():
        _set_torch(model, k, v)
    tfl = (tmp_path / "adapted.tflite").read_bytes()
    assert _tflite.op_counts(tfl).get("TRANSPOSE", 0) == 0
    x = _x(digits, 32, 1, 64, "test")
    r = compare(model, tfl, x)
    assert r["agreement"] >= 0.6 and r["logit_rel_rms"] <= 0.4, sorted(r.items())
    # the perturbation is visible: the unmerged bundle disagrees more with the perturbed float model
    before = compare(model, (bundle / "inference.tflite").read_bytes(), x)
    assert before["logit_rel_rms"] > 1.5 * r["logit_rel_rms"], (before, r)
    with pytest.raises(UserError, match="exists"):
        merge(bundle, tmp_path / "trained.npz", tmp_path / "adapted.tflite")
    save_trained(tmp_path / "bad.npz", {**trained, "stem.bias": np.zeros(3)})
    with pytest.raises(BundleError, match="stem.bias"):
        merge(bundle, tmp_path / "bad.npz", tmp_path / "bad.tflite")


# ---- int8 numerics: the input grid and the activation ranges -------------------------------------

@pytest.mark.parametrize("mean,std", [(0.5, 0.5), (0.0, 1.0), (128 / 255, 0.5), (0.485, 0.229)])
def test_input_quantization_holds_the_pixel_grid(mean, std):
    """Pixel p -> (p/255 - mean)/std -> int8 by the manifest's rule: within half a step, never clipped,
    and exact wherever an integer zero point allows it (mean 0: q == p - 128 for every pixel)."""
    s, zp = _tflite.input_quant(-mean / std, 1 / (255 * std))
    x = ((np.arange(256) / 255 - mean) / std).astype(np.float32)  # as the preprocessing computes it
    q = np.round(x / np.float32(s)) + zp
    assert q.min() >= -128 and q.max() <= 127
    err = np.abs((q - zp) * s - x)
    assert err.max() <= 0.5 * s * (1 + 1e-5)
    if mean == 0.0:
        assert (q == np.arange(256) - 128).all()
    if (mean, std) == (128 / 255, 0.5):  # 255 * mean integer: exact too
        assert err.max() < 1e-6
    if (mean, std) == (0.5, 0.5):  # 2p/255 - 1: -1 (the background), 0 and 1 exact; the old 2/255, -1 was off by 1/255 everywhere
        assert abs(s - 1 / 127) < 1e-9 and err[0] < 1e-6 and err[-1] < 1e-6
        old = (np.clip(np.round(x / np.float32(2 / 255)) - 1, -128, 127) + 1) * (2 / 255)
        assert np.abs(old - x).min() > 0.99 / 255  # every pixel off by a full 1/255
        assert np.sqrt((err ** 2).mean()) < 0.6 * np.sqrt(((old - x) ** 2).mean())


def test_mse_range_clips_tails_only():
    rng = np.random.default_rng(0)
    heavy = np.concatenate([rng.normal(0, 1, 1_000_000), [-40.0, 40.0]])  # two outliers stretch min/max 10x
    h = np.bincount(((heavy + 40) * (_tflite.BINS / 80)).astype(int).clip(0, _tflite.BINS - 1), minlength=_tflite.BINS)
    lo, hi = _tflite.mse_range(-40.0, 40.0, h)
    assert 3 < hi < 15 and -15 < lo < -3
    flat = np.full(_tflite.BINS, 100)  # uniform values: nothing to gain by clipping
    assert _tflite.mse_range(-1.0, 1.0, flat) == (-1.0, 1.0)


def test_bundle_input_and_ranges(bundle):
    m = load_bundle(bundle).manifest
    # the default normalization (mean 128/255, std 0.5) puts pixel p at (p - 128) * 2/255: an exact int8 grid
    assert abs(m["input"]["scale"] - 2 / 255) < 1e-9 and m["input"]["zero_point"] == 0
    assert m["source"]["activation_ranges"] == "mse"
    assert "MSE-optimal" in (bundle / "report.md").read_text()
