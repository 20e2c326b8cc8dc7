"""Conversion per preset: time, int8 vs float agreement (and accuracy), .tflite and bundle size.

Models: the adapted TinyTL-L+B checkpoint (`make adapt`) when present; the pretrained checkpoint with a
fresh head (what `device train` starts from); and mcunet-tiny, mbv2-w0.35, proxylessnas-mobile with
random weights and realistic BN statistics (bench/_bundles.py), "adapted" with TinyTL-L+B. Random nets
have no margin, so their agreement is a lower bound; their accuracy is chance and not shown, their RMS
logit error (over the float logits' spread) is. Each conversion runs once: it is minutes, not noise.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import _bundles as B

BIG_RES = 64  # px: mbv2-w0.35 (preset 128) and proxylessnas-mobile (preset 224) at 64 keep conversion ~1 min


def _transposes(tflite: Path) -> int:
    from device.tflite_reader import read_tflite
    return sum(op.name == "TRANSPOSE" for op in read_tflite(tflite).ops)


def _resolution(d: Path) -> int:
    return json.loads((d / "manifest.json").read_text())["input"]["shape"][1]


def _row(name: str, source: str, res: int, d: Path, r: dict, wall: float, *, accuracy: bool = False,
         record: list | None = None) -> str:
    acc = f"{r['float_acc']:.4f} / {r['int8_acc']:.4f}" if accuracy else "n/a"
    tfl = (d / "inference.tflite").stat().st_size
    total = sum(f.stat().st_size for f in d.iterdir())
    if record is not None:
        record.append({"preset": name, "weights": source, "px": res, "conversion_s": r["seconds"], "wall_s": wall,
                       "transposes": _transposes(d / "inference.tflite"), "agreement": r["agreement"], "samples": r["samples"],
                       "float_acc": r["float_acc"] if accuracy else None, "int8_acc": r["int8_acc"] if accuracy else None,
                       "logit_rel_rms": r["logit_rel_rms"], "tflite_bytes": tfl, "bundle_bytes": total})
    return (f"| {name} | {source} | {res} | {r['seconds']:.1f} | {wall:.1f} | {_transposes(d / 'inference.tflite')} | "
            f"{r['agreement']:.4f} ({r['samples']}) | {acc} | {r['logit_rel_rms']:.3f} | {tfl:,} | {total:,} |")


def run(quick: bool = False) -> str:
    n = 200 if quick else 500  # test images compared for the random models
    rows, notes, record = [], [], []
    if B.ADAPTED.exists():
        d, r, wall = B.bundle(B.REAL, eval_samples=None)  # the whole test split
        rows.append(_row("mcunet-tiny", f"`{B.ADAPTED.relative_to(B.ROOT)}`", _resolution(d), d, r, wall, accuracy=True, record=record))
    else:
        notes.append(f"Adapted checkpoint skipped: `{B.ADAPTED.relative_to(B.ROOT)}` is absent; make it with `make adapt`.")
    d, r, wall, src = B.new_task_bundle("tinytl-lb", eval_samples=n)
    rows.append(_row("mcunet-tiny", src, _resolution(d), d, r, wall, record=record))
    presets = [("mcunet-tiny", 32)] + ([] if quick else [("mbv2-w0.35", BIG_RES), ("proxylessnas-mobile", BIG_RES)])
    for preset, res in presets:
        d, r, wall = B.bundle(preset, res, eval_samples=n)
        rows.append(_row(preset, "random, realistic BN", res, d, r, wall, record=record))
    if quick:
        notes.append("Quick mode: mbv2-w0.35 and proxylessnas-mobile skipped.")
    B.write_json("convert_fidelity", {"rows": record, "notes": notes})
    head = ["| preset | weights | px | conversion s | convert() wall s | TRANSPOSE | top-1 agreement (images) | "
            "float / int8 accuracy | RMS logit error / spread | .tflite bytes | bundle bytes |",
            "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    return ("All converted with `convert.convert(ConvertConfig(...))` defaults (200 calibration images, MSE activation "
            "ranges, lite branches as float islands), TinyTL-L+B, Animal-MNIST test split. `conversion s` is "
            "convert's own figure (load, graph, calibration, int8 .tflite; the first row also pays TensorFlow's "
            "warm-up); `convert() wall s` adds the int8-vs-float evaluation, ONNX export and writing. "
            f"mbv2-w0.35 and proxylessnas-mobile at {BIG_RES} px (presets: 128, 224) to keep time sane; "
            "mcunet-tiny at its preset 32 px. Random models: input 3 channels for the big ones (grayscale repeated). "
            "Accuracy only for the adapted checkpoint (a fresh head is untrained, a random net is at chance). "
            "Each conversion runs once.\n\n" + "\n".join(head + rows) + "\n" + "".join(f"\n- {s}" for s in notes) + "\n")

