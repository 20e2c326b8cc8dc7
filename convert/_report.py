"""int8 vs float on the held-out test split, and the conversion report (report.md)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _tflite


def float_logits(model: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(b).permute(0, 3, 1, 2)) for b in _tflite.batches(x_nhwc, 256)]).numpy()


def compare(model: torch.nn.Module, tfl: bytes, x_nhwc: np.ndarray, y: np.ndarray | None = None) -> dict[str, Any]:
    """Top-1 agreement, accuracies (if labels), and the logit error relative to the float logits' range."""
    ref = float_logits(model, x_nhwc)
    q = _tflite.run_int8(tfl, x_nhwc)
    r = {"samples": len(ref), "agreement": float((ref.argmax(1) == q.argmax(1)).mean()),
         "logit_max_err": float(np.abs(q - ref).max()), "logit_range": float(np.abs(ref).max()),
         # RMS error over the RMS spread of the float logits around each image's mean
         "logit_rel_rms": float(np.sqrt(((q - ref) ** 2).mean() / ((ref - ref.mean(1, keepdims=True)) ** 2).mean()))}
    if y is not None:
        r |= {"float_acc": float((ref.argmax(1) == y).mean()), "int8_acc": float((q.argmax(1) == y).mean())}
    return r


def evaluate(model, tfl: bytes, ds, prep, meta: dict, limit: int | None) -> dict[str, Any]:
    from ._bundle import nhwc
    n = len(ds.test) if limit is None else min(limit, len(ds.test))
    x = nhwc(ds.test.x[:n], prep)
    same_task = not meta["new_task"] and list(meta["classes"]) == list(ds.classes)
    r = compare(model, tfl, x, ds.test.y[:n] if same_task else None)
    return r | {"dataset": ds.name, "split": "test"}


RANGES = {"mse": "MSE-optimal clipping per activation (histograms of the float run on the calibration images)",
          "minmax": "calibrated min/max"}


def _input_err(manifest: dict) -> float:
    """Max |dequantized - preprocessed| over the 256 pixel values, in input steps."""
    i = manifest["input"]
    n = i["normalization"]
    v = (np.arange(256) / 255 - n["mean"]) / n["std"]
    q = np.clip(np.round(v / i["scale"]) + i["zero_point"], -128, 127)
    return float(np.abs((q - i["zero_point"]) * i["scale"] - v).max() / i["scale"])


def write_report(path: Path, manifest: dict, ev: dict, ops: Counter, seconds: float, onnx_note: str, float_lite: bool) -> str:
    files = manifest["files"]
    tfl_bytes = files["inference.tflite"]["bytes"]
    lines = [f"# Conversion report: {manifest['model']} ({manifest['method']})", "",
             f"- source: `{manifest['source']['checkpoint']}` ({'new task, fresh head' if manifest['new_task'] else 'adapted'})",
             f"- conversion time: {seconds:.1f} s; calibration: {manifest['source']['calibration_samples']} training images",
             f"- activation ranges: {RANGES.get(manifest['source'].get('activation_ranges', 'minmax'), '?')}",
             f"- input: int8 {manifest['input']['shape']} NHWC, scale {manifest['input']['scale']:.6g}, zero point {manifest['input']['zero_point']} "
             f"(chosen to hold the pixel grid; max error {_input_err(manifest):.3g} of a step)",
             f"- lite residual branches: {'float islands (DEQUANTIZE -> float -> QUANTIZE)' if float_lite else 'int8'}",
             f"- inference.tflite: {tfl_bytes:,} bytes; TRANSPOSE ops: {ops.get('TRANSPOSE', 0)}",
             f"- bundle: {sum(f['bytes'] for f in files.values()):,} bytes (without manifest.json)",
             f"- model.onnx: {onnx_note}", "",
             f"## int8 (LiteRT) vs float (PyTorch) on the {ev['dataset']} {ev['split']} split ({ev['samples']} images)", "",
             "| metric | value |", "|---|---|",
             f"| top-1 agreement | {ev['agreement']:.4f} |"]
    if "float_acc" in ev:
        lines += [f"| float accuracy | {ev['float_acc']:.4f} |", f"| int8 accuracy | {ev['int8_acc']:.4f} |",
                  f"| accuracy change | {100 * (ev['int8_acc'] - ev['float_acc']):+.2f} points |"]
    else:
        lines += ["| accuracy | n/a (fresh head for a new task) |"]
    lines += [f"| max logit error / max float logit | {ev['logit_max_err']:.4g} / {ev['logit_range']:.4g} |",
              f"| RMS logit error / RMS logit spread | {ev['logit_rel_rms']:.4f} |", ""]
    lines += ["## Op counts (inference.tflite)", "", "| op | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {k} | {v['bytes']:,} | `{v['sha256'][:16]}...` |" for k, v in files.items()]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
