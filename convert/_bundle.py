"""checkpoint -> bundle directory: inference.tflite, trainable.{json,npz}, model.onnx, manifest.json, report.md.

Steps: load the checkpoint (adapted, or pretrained + a new task's head) -> build our Graph with BN
folded -> int8 .tflite calibrated on training images -> trainable graph + taps -> ONNX -> evaluate int8
vs float on the test split -> write everything into a temp dir beside OUT, hash, then rename.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from device import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, file_sha256, last_units
from train import UserError, load_checkpoint
from . import _litert_train, _tflite
from ._build import build_graph, mark_trainable
from ._trainable import trainable_spec

DEVICE_METHODS = ("tinytl-b", "tinytl-l", "tinytl-lb", "ft-last")  # the ones whose trainables fit the int8 graph


@dataclass(frozen=True)
class ConvertConfig:
    checkpoint: str                      # .pt from `python -m train pretrain|adapt`
    out: str                             # bundle directory to create
    calibration_samples: int = 200       # training images used to calibrate int8 activation ranges
    data: str | None = None              # calibration/test dataset; default: the checkpoint's own
    method: str | None = None            # new task: TinyTL method (fresh head); default: the checkpoint's
    classes: int | None = None           # new task: number of classes of the fresh head
    labels: tuple[str, ...] | None = None  # new task: class names (default class0..classN-1)
    float_lite: bool = True              # lite residual branches as float islands (more accurate, see report)
    ranges: str = "mse"                  # activation ranges: "mse" (MSE-optimal clipping) or "minmax" (calibrator's)
    eval_samples: int | None = None      # cap on test images evaluated (None: the whole test split)
    seed: int = 0                        # calibration sample choice, fresh head init
    force: bool = False                  # replace an existing OUT
    trainable_blocks: int | None = None  # partial update: only the last k units (stem, blocks.i, head) keep their
                                         # trainables, plus the classifier (MCUNetV3's sparse update); None: all
    resolution: int | None = None        # input side, px, overriding the checkpoint's (memory/latency what-ifs)
    litert_training: bool = False        # also emit train.tflite, LiteRT's training peer (tinytl-b, ft-last)


def _checkpoint_json(path: Path) -> dict[str, Any]:
    j = path.with_suffix(".json")
    return json.loads(j.read_text()) if j.exists() else {}


def load_model(cfg: ConvertConfig):
    """(model, meta): the checkpoint as is (adapted), or with a fresh head for a new task."""
    model, meta = load_checkpoint(Path(cfg.checkpoint))
    meta = meta | {k: v for k, v in _checkpoint_json(Path(cfg.checkpoint)).items() if k not in meta}
    if cfg.classes is not None or cfg.method is not None and meta.get("stage") != "adapt":
        if cfg.method is None or cfg.classes is None:
            raise UserError("a bundle for a new task needs both --method and --classes (and optionally --labels)")
        if cfg.method not in DEVICE_METHODS:
            raise UserError(f"method '{cfg.method}' cannot learn on the device; pick one of {', '.join(DEVICE_METHODS)}")
        labels = list(cfg.labels) if cfg.labels else [f"class{i}" for i in range(cfg.classes)]
        if len(labels) != cfg.classes:
            raise UserError(f"--labels has {len(labels)} names, --classes is {cfg.classes}; give one name per class")
        from train import prepare_model  # zero-started lite branches when absent, fresh head, freezing
        model, names = prepare_model(model, cfg.classes, cfg.method, "pretrained", cfg.seed)
        meta = meta | {"method": cfg.method, "trainable": names, "classes": labels, "new_task": True}
    else:
        if meta.get("stage") != "adapt" or not meta.get("method"):
            raise UserError(f"{cfg.checkpoint}: a pretrained checkpoint; for a new task give --method tinytl-lb --classes N [--labels a,b,...]")
        if cfg.method not in (None, meta["method"]):
            raise UserError(f"{cfg.checkpoint}: adapted with {meta['method']}, not {cfg.method}; drop --method")
        if meta["method"] not in DEVICE_METHODS:
            raise UserError(f"{cfg.checkpoint}: method '{meta['method']}' trains frozen conv weights, which the int8 "
                            f"graph cannot hold as trainable; bundles support {', '.join(DEVICE_METHODS)}")
        meta = meta | {"new_task": False}
    if cfg.trainable_blocks is not None:
        meta = meta | {"trainable": last_blocks(meta["trainable"], cfg.trainable_blocks), "trainable_blocks": cfg.trainable_blocks}
    return model.float().eval().to(memory_format=torch.contiguous_format), meta


def last_blocks(names: list[str], k: int) -> list[str]:
    """`--trainable-blocks last:k` on the checkpoint's trainable names (device.graph.last_units)."""
    try:
        return last_units(names, k)
    except ValueError as e:
        raise UserError(f"--trainable-blocks {e}") from None


def load_data(cfg: ConvertConfig, meta: dict[str, Any]):
    from train import Preprocess, load_dataset
    conf = meta.get("config", {})
    source = cfg.data or conf.get("data") or meta.get("dataset")
    if not source:
        raise UserError(f"{cfg.checkpoint}: records no dataset; pass --data for calibration images")
    ds = load_dataset(source, seed=conf.get("seed", 0), val_fraction=conf.get("val_fraction", 0.1))
    prep = Preprocess.from_dict(meta["preprocess"] | ({"resolution": cfg.resolution} if cfg.resolution else {}))
    if len(ds.train) < cfg.calibration_samples:
        raise UserError(f"calibration: asked for {cfg.calibration_samples} images, dataset '{ds.name}' has only "
                        f"{len(ds.train)} training images; lower --calibration-samples")
    return ds, prep


def nhwc(x_uint8: np.ndarray, prep) -> np.ndarray:
    from train import preprocess
    return preprocess(x_uint8, prep).permute(0, 2, 3, 1).contiguous().numpy()


def export_onnx(model: torch.nn.Module, resolution: int, path: Path) -> str:
    """Float model as ONNX (NCHW, as PyTorch). TorchScript exporter: the dynamo one needs onnxscript."""
    x = torch.zeros(1, model.spec.in_channels, resolution, resolution)
    try:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17, dynamo=False)
        return "torch.onnx (TorchScript exporter)"
    except Exception as e:  # noqa: BLE001  an optional artifact must not sink the bundle
        path.unlink(missing_ok=True)
        return f"not written: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def _tool_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for pkg in ("torch", "tensorflow-cpu", "tensorflow", "ai-edge-litert", "onnx", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def convert(cfg: ConvertConfig, *, log=print) -> dict[str, Any]:
    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise UserError(f"{out}: exists; pass --force to replace it (it is replaced whole, never half-overwritten)")
    t0 = time.time()
    model, meta = load_model(cfg)
    if cfg.litert_training and meta["method"] not in _litert_train.METHODS:
        raise UserError(f"--litert-training: method '{meta['method']}' is not supported; train.tflite is implemented for "
                        f"{', '.join(_litert_train.METHODS)} only (conv biases and the classifier), not for the lite-branch "
                        f"weights tinytl-l/tinytl-lb train")
    ds, prep = load_data(cfg, meta)
    g, params = build_graph(model, prep.resolution, trainable=set(meta["trainable"]))
    g = mark_trainable(g, meta["trainable"])
    rng = np.random.default_rng(cfg.seed)
    calib = nhwc(ds.train.x[np.sort(rng.choice(len(ds.train), cfg.calibration_samples, replace=False))], prep)
    log(f"converting {model.spec.name} ({meta['method']}), calibrating on {len(calib)} '{ds.name}' training images")
    # the input's int8 grid from the pixel grid (pixel p -> (p / 255 - mean) / std), see _tflite.input_quant
    grid = (-prep.mean / prep.std, 1 / (255 * prep.std))
    tfl = _tflite.convert_int8(g, params, calib, float_lite=cfg.float_lite, input_grid=grid, ranges=cfg.ranges)
    seconds = time.time() - t0
    peer = _litert_training(g, params) if cfg.litert_training else None
    spec, trainable = trainable_spec(g, params, tfl, meta["method"])
    from ._report import evaluate, write_report
    ev = evaluate(model, tfl, ds, prep, meta, cfg.eval_samples)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "inference.tflite").write_bytes(tfl)
        np.savez(tmp / "trainable.npz", **trainable)
        (tmp / "trainable.json").write_text(json.dumps(spec, indent=1) + "\n")
        onnx_note = export_onnx(model, prep.resolution, tmp / "model.onnx")
        if peer is not None:
            (tmp / "train.tflite").write_bytes(peer[0])
        manifest = _manifest(cfg, model, meta, prep, tfl, spec, tmp)
        if peer is not None:
            manifest["litert_training"] = {"file": "train.tflite", "signatures": list(peer[1]),
                                           "input": "float32 NHWC normalized", "params": peer[2]}
        report = write_report(tmp / "report.md", manifest, ev, _tflite.op_counts(tfl), seconds, onnx_note, cfg.float_lite)
        manifest["files"] = _files(tmp)  # now with report.md
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "seconds": round(seconds, 1), **ev, "report": report}


def _litert_training(g, params) -> tuple[bytes, tuple[str, ...], list[str]]:
    """(train.tflite, its signatures, trainable names in save() order); UserError if it needs non-builtin ops."""
    try:
        return _litert_train.convert_training(g, params), _litert_train.SIGNATURES, _litert_train.trainable_order(g, params)
    except _litert_train.NotBuiltinError as e:
        raise UserError(str(e)) from None


def _files(folder: Path) -> dict[str, dict]:
    return {f.name: {"sha256": file_sha256(f), "bytes": f.stat().st_size} for f in sorted(folder.iterdir()) if f.name != MANIFEST}


def _manifest(cfg, model, meta, prep, tfl: bytes, spec: dict, tmp: Path) -> dict[str, Any]:
    it = _tflite.interpreter(tfl, reference=True)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "model": model.spec.name,
        "model_spec": model.spec.to_dict(),
        "input": {"shape": [int(d) for d in i["shape"]], "dtype": "int8", "layout": "NHWC",
                  "scale": float(i["quantization"][0]), "zero_point": int(i["quantization"][1]),
                  "normalization": {"pixel_scale": 1 / 255, "mean": prep.mean, "std": prep.std,
                                    "rule": "q = round(((pixel / 255) - mean) / std / scale) + zero_point"},
                  "preprocess": prep.to_dict()},
        "output": {"shape": [int(d) for d in o["shape"]], "dtype": "int8", "scale": float(o["quantization"][0]),
                   "zero_point": int(o["quantization"][1])},
        "labels": list(meta["classes"]), "method": meta["method"], "new_task": meta["new_task"],
        "lite_residual": "float islands" if cfg.float_lite else "int8",
        "trainable": [{"name": p["name"], "shape": p["shape"], "dtype": p["dtype"]} for p in spec["params"]],
        "source": {"checkpoint": str(cfg.checkpoint), "stage": meta.get("stage"),
                   "calibration_samples": cfg.calibration_samples, "activation_ranges": cfg.ranges},
        "files": _files(tmp),
        "tools": _tool_versions(),
    }


__all__ = ["ConvertConfig", "convert", "load_model", "export_onnx", "DEVICE_METHODS", "last_blocks"]
