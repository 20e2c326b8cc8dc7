"""`python -m convert ...`: checkpoint -> bundle; `python -m convert merge ...`: trained params -> .tflite."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from device import last_k_arg

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train/__main__.py: spinning OpenMP threads stall busy CPUs

CONVERT_EXAMPLE = """examples:
  python -m convert --checkpoint runs/adapt/tinytl-lb/model.pt --out bundles/animal
  python -m convert --checkpoint runs/pretrain/model.pt --method tinytl-lb --classes 3 --labels cat,dog,bird --out bundles/new
  python -m convert --checkpoint runs/pretrain/model.pt --method tinytl-b --classes 3 --litert-training --out bundles/peer
  python -m convert merge --bundle bundles/animal --trained trained.npz --out adapted.tflite
"""


def _convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert", epilog=CONVERT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Turn a checkpoint into a device bundle (int8 .tflite, trainable graph, manifest, "
                                            "model.onnx, report.md). Subcommand 'merge': see 'python -m convert merge --help'.")
    p.add_argument("--checkpoint", required=True, type=Path, help="model.pt from 'python -m train adapt' (or pretrain, for a new task)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to create")
    p.add_argument("--calibration-samples", type=int, default=200, help="training images for int8 calibration (default 200)")
    p.add_argument("--data", help="dataset for calibration and the test report (default: the checkpoint's)")
    p.add_argument("--method", help="new task: tinytl-b | tinytl-l | tinytl-lb | ft-last (fresh classifier head)")
    p.add_argument("--classes", type=int, help="new task: number of classes")
    p.add_argument("--labels", help="new task: comma-separated class names")
    p.add_argument("--int8-lite", action="store_true", help="quantize lite residual branches too (default: float islands, more accurate)")
    p.add_argument("--ranges", choices=("mse", "minmax"), default="mse",
                   help="int8 activation ranges: MSE-optimal clipping from the calibration images (default), or their raw min/max")
    p.add_argument("--eval-samples", type=int, help="evaluate at most this many test images (default: all)")
    p.add_argument("--trainable-blocks", metavar="last:K", type=last_k_arg,
                   help="partial update: only the last K units (stem, blocks, head) keep their trainable biases/lite branches, plus the classifier")
    p.add_argument("--resolution", type=int, help="input side in px (default: the checkpoint's)")
    p.add_argument("--litert-training", action="store_true",
                   help="also write train.tflite: a float LiteRT training model (signatures train/infer/save/restore, "
                        "builtin ops only) for tinytl-b and ft-last")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return p


def _merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert merge", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m convert merge --bundle bundles/animal --trained trained.npz --out adapted.tflite",
                                description="Write a stock int8 .tflite with the device-learned trainable parameters "
                                            "(requantized biases and head, float lite branches) patched in.")
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--trained", required=True, type=Path, help=".npz of trainable parameters saved by the device")
    p.add_argument("--out", required=True, type=Path, help="the new .tflite")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from device import BundleError
    from train import UserError
    try:
        if argv[:1] == ["merge"]:
            a = _merge_parser().parse_args(argv[1:])
            from ._merge import merge
            r = merge(a.bundle, a.trained, a.out, force=a.force)
            print(f"merged {r['params']} trainable parameters -> {a.out} ({r['bytes']:,} bytes)")
            return 0
        a = _convert_parser().parse_args(argv)
        from ._bundle import ConvertConfig, convert
        cfg = ConvertConfig(checkpoint=str(a.checkpoint), out=str(a.out), calibration_samples=a.calibration_samples, data=a.data,
                            method=a.method, classes=a.classes, labels=tuple(a.labels.split(",")) if a.labels else None,
                            float_lite=not a.int8_lite, ranges=a.ranges, eval_samples=a.eval_samples, seed=a.seed, force=a.force,
                            trainable_blocks=a.trainable_blocks, resolution=a.resolution,
                            litert_training=a.litert_training)
        if cfg.calibration_samples < 1:
            raise UserError("--calibration-samples must be at least 1")
        r = convert(cfg)
        acc = f", float/int8 accuracy {r['float_acc']:.4f}/{r['int8_acc']:.4f}" if "float_acc" in r else ""
        print(f"bundle -> {r['out']}: int8 vs float top-1 agreement {r['agreement']:.4f} on {r['samples']} test images{acc}")
        return 0
    except (UserError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
