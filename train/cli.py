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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="TinyTL training stage: pretrain, adapt, memory.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
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


