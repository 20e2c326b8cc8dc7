"""python -m bench [--quick]: run every benchmark, print the tables, write bench/results/*.md."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in train/__main__.py; before torch loads

import torch  # noqa: E402

from . import pretrain_speed  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    return (f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Measurements, side by side in one run.")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    a = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, run in [("pretrain_speed", pretrain_speed.run)]:
        md = f"# {name}\n\nMachine: {machine()}\n\n" + run(quick=a.quick) + "\n"
        (RESULTS / f"{name}.md").write_text(md)
        print(md)
        print(f"-> {RESULTS / (name + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
