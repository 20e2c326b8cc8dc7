"""`python -m train SUBCOMMAND`: the training stage's command line. One small parser per subcommand."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

PRETRAIN_EXAMPLE = """example:
  python -m train pretrain --data fashion-mnist --model mcunet-tiny --epochs 6 --out runs/pretrain
  python -m train pretrain --preset default --out runs/pretrain --resume     # continue after a crash
  torchrun --nproc_per_node=2 -m train pretrain --preset default --out runs/ddp  # DistributedDataParallel
"""


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a model on a source dataset", epilog=PRETRAIN_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Pretrain on the source data. Flags override the preset file's values.")
    p.add_argument("--preset", default="default", help="train/presets/NAME.yaml or a path to a .yaml (default: default)")
    p.add_argument("--data", help="fashion-mnist | animal-mnist | digits | an image folder | a .npz with x, y")
    p.add_argument("--model", help="model preset (mcunet-tiny, mbv2-w0.35, proxylessnas-mobile) or a model .yaml")
    p.add_argument("--resolution", type=int, help="input side in px (default: the model preset's)")
    p.add_argument("--lite-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="insert TinyTL lite residual branches and pretrain them with the network")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--limit", type=int, help="use at most this many training images (quick runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, required=True, help="run folder: model.pt, model.json, state.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    p.add_argument("--force", action="store_true", help="start over even if OUT holds a run")
    p.set_defaults(run=_run_pretrain)


def _run_pretrain(a: argparse.Namespace) -> None:
    from .pretrain import load_preset, pretrain
    cfg = load_preset(a.preset, data=a.data, model=a.model, resolution=a.resolution, lite_residual=a.lite_residual,
                      epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, limit=a.limit, seed=a.seed)
    metrics = pretrain(cfg, a.out, resume=a.resume, force=a.force)
    if metrics:
        print(f"test accuracy {metrics['test_acc']:.4f} (model picked at epoch {metrics['best']['epoch']} by validation "
              f"accuracy {metrics['best']['val_acc']:.4f}) in {metrics['seconds']:.0f} s -> {a.out / 'model.pt'}")


ADAPT_EXAMPLE = """example:
  python -m train adapt --from runs/pretrain/model.pt --data animal-mnist --method tinytl-lb --batch-size 8 --out runs/adapt/tinytl-lb
  python -m train adapt --from runs/pretrain/model.pt --data my_images/ --method tinytl-b --batch-size 1 --out runs/mine
methods: ft-full, ft-last, ft-norm-last, tinytl-b, tinytl-l, tinytl-lb
"""

MEMORY_EXAMPLE = """example:
  python -m train memory --model proxylessnas-mobile --resolution 224 --batch 8 --classes 102
  python -m train memory --model mcunet-tiny --batch 1 --method tinytl-lb --layers

This is the TinyTL paper's accounting (params: trainable 32-bit, frozen 8-bit; activations: what
backward must keep, 32-bit, ReLU masks 1-bit; batch x the batch-1 peak). It omits what a real run
also needs: a GroupNorm's input when gradients flow through it, gradient buffers, optimizer state.
The device stage's memory planner counts those (python -m device plan).
"""


def _add_adapt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt a pretrained checkpoint to a target dataset (six methods)", epilog=ADAPT_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fine-tune a pretrained checkpoint with a new classifier head for the target's classes.")
    p.add_argument("--from", dest="checkpoint", required=True, help="pretrained checkpoint (.pt)")
    p.add_argument("--data", default="animal-mnist", help="target: animal-mnist | digits | fashion-mnist | folder | .npz")
    p.add_argument("--method", default="tinytl-lb", help="ft-full | ft-last | ft-norm-last | tinytl-b | tinytl-l | tinytl-lb")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, help="peak Adam learning rate (default: per method)")
    p.add_argument("--lite-init", choices=["pretrained", "random"], default="pretrained",
                   help="lite residual branches as pretrained with the network, or freshly zero-started (the paper's ablation)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips in augmentation (digits, text)")
    p.add_argument("--limit", type=int, help="use at most this many training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run folder: model.pt + model.json")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it holds a run")
    p.set_defaults(run=_run_adapt)


def _run_adapt(a: argparse.Namespace) -> None:
    from .adapt import AdaptConfig, adapt
    cfg = AdaptConfig(checkpoint=str(a.checkpoint), data=a.data, method=a.method, epochs=a.epochs, batch_size=a.batch_size,
                      lr=a.lr, lite_init=a.lite_init, augment_flip=not a.no_flip, limit=a.limit, seed=a.seed)
    m = adapt(cfg, a.out, force=a.force)
    print(f"{cfg.method} (batch {cfg.batch_size}): test accuracy {m['test_acc']:.4f}, {m['trainable_params']:,} trainable "
          f"parameters, estimated training memory {m['memory']['total_bytes'] / 1e6:.2f} MB -> {a.out / 'model.pt'}")


def _add_memory(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="training-memory estimate per method (the paper's accounting)", epilog=MEMORY_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Training memory = params + batch x peak activations, derived from the model itself.")
    p.add_argument("--model", default="mcunet-tiny", help="model preset, a model .yaml, or a checkpoint .pt")
    p.add_argument("--resolution", type=int, help="input side in px (default: the model's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, help="classifier outputs (default: the model's)")
    p.add_argument("--method", help="one method only (default: all six)")
    p.add_argument("--no-lite-residual", action="store_true", help="leave out the lite residual branches")
    p.add_argument("--layers", action="store_true", help="also print the per-layer walk (needs --method)")
    p.set_defaults(run=_run_memory)


def _run_memory(a: argparse.Namespace) -> None:
    from .memory import estimate, estimate_all, format_table, layer_table
    from .methods import METHODS
    from .models import build_model, insert_lite_residual, load_spec
    if a.model.endswith(".pt"):
        from .checkpoint import load_checkpoint
        model, _ = load_checkpoint(Path(a.model))
        spec = model.spec
        if a.classes:
            model.reset_classifier(a.classes)
    else:
        spec = load_spec(a.model, resolution=a.resolution, num_classes=a.classes)
        model = build_model(spec)
    if not a.no_lite_residual and not model.spec.lite_residual:
        insert_lite_residual(model)
    res = a.resolution or spec.resolution
    if a.method and a.method not in METHODS:
        raise UserError(f"unknown method '{a.method}'; methods: {', '.join(METHODS)}")
    rows = [estimate(model, a.method, res, a.batch)] if a.method else estimate_all(model, res, a.batch)
    print(format_table(rows, title=f"{spec.name}, {res} px, batch {a.batch}, {model.spec.num_classes} classes"))
    if a.layers:
        if not a.method:
            raise UserError("--layers needs --method (the walk differs per method)")
        print(layer_table(model, a.method, res))


SWEEP_EXAMPLE = """example:
  python -m train sweep --from runs/pretrain/model.pt --data animal-mnist --out runs/adapt --report results
Runs the six methods at batch 8, TinyTL-L+B at batch 1 and with fresh lite branches; finished runs are reused.
"""


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="all six methods on one target: table + accuracy-vs-memory plot", epilog=SWEEP_EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="checkpoint", type=Path, required=True, help="pretrained checkpoint (.pt)")
    p.add_argument("--data", default="animal-mnist")
    p.add_argument("--epochs", type=int, default=2,
                   help="per batch-8 run (default 2: the sweep takes ~6 min on 2 cores; 3 adds ~1-2 points per method, ~11 min with --batch1-epochs 3)")
    p.add_argument("--batch1-epochs", type=int, default=1,
                   help="the TinyTL-L+B batch-1 run's epochs (default 1: as many updates as 8 batch-8 epochs; the sweep's longest run)")
    p.add_argument("--limit", type=int, help="use at most this many training images")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="folder for the runs")
    p.add_argument("--report", type=Path, default=Path("results"), help="folder for adapt.md and adapt.png")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one CPU thread each (default 2)")
    p.set_defaults(run=_run_sweep)


def _run_sweep(a: argparse.Namespace) -> None:
    from .sweep import default_runs, sweep, write_report
    rows = sweep(a.checkpoint, a.data, a.out, runs=default_runs(a.batch1_epochs), epochs=a.epochs, seed=a.seed, limit=a.limit, flip=not a.no_flip,
               jobs=a.jobs)
    md = write_report(rows, a.report, title=f"TinyTL adaptation: {a.checkpoint} -> {a.data}, {a.epochs} epochs (batch 1: {a.batch1_epochs}), seed {a.seed}")
    print(md.read_text())
    print(f"report: {md}, plot: {md.with_suffix('.png')}")


EXPORT_EXAMPLE = """example:
  python -m train export-data --data animal-mnist --out runs/data/animal
writes runs/data/animal_train.npz, _val.npz, _test.npz (x uint8 NHWC, y int64, classes): the files the
device runtime and the simulator read with numpy alone.
"""


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-data", help="write a dataset's splits as .npz files for the device and the simulator",
                       epilog=EXPORT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="fashion-mnist | animal-mnist | digits | folder | .npz")
    p.add_argument("--out", type=Path, required=True, help="prefix: OUT_train.npz, OUT_val.npz, OUT_test.npz")
    p.add_argument("--seed", type=int, default=0, help="the split seed (use the one the model was trained with)")
    p.set_defaults(run=_run_export)


def _run_export(a: argparse.Namespace) -> None:
    import numpy as np
    from .checkpoint import atomic_write
    from .data import load_dataset
    ds = load_dataset(a.data, seed=a.seed)
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        path = a.out.parent / f"{a.out.name}_{name}.npz"
        atomic_write(path, lambda f, s=split: np.savez(f, x=s.x, y=s.y, classes=np.array(ds.classes)))
        print(f"{path}: {len(split.y)} images {split.x.shape[1:]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="TinyTL training stage: pretrain, adapt, memory.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_adapt(sub)
    _add_memory(sub)
    _add_sweep(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last saved state is kept (rerun with --resume)", file=sys.stderr)
        return 130
    return 0


