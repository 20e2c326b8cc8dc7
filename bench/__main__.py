"""python -m bench [--quick] [--only NAME]: run the benchmarks, print the tables, write bench/results/NAME.md."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in train/__main__.py; before torch loads

import torch  # noqa: E402

from . import convert_fidelity, device_step, engine_speed, pretrain_speed  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# name -> run(quick) -> markdown; in this order, so later ones reuse the bundles earlier ones converted
BENCHMARKS = {"pretrain_speed": pretrain_speed.run, "convert_fidelity": convert_fidelity.run,
              "engine_speed": engine_speed.run, "device_step": device_step.run}


def machine() -> str:
    import importlib.metadata as md
    versions = []
    for pkg in ("numpy", "ai-edge-litert", "tensorflow-cpu", "tensorflow"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {', '.join(versions)}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Measurements, side by side in one run.")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--only", choices=list(BENCHMARKS), action="append", metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    a = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, run in BENCHMARKS.items():
        if a.only and name not in a.only:
            continue
        t0 = time.perf_counter()
        body = run(quick=a.quick)
        md = (f"# {name}\n\nMachine: {machine()}\n\n{body}\n"
              f"{'Quick' if a.quick else 'Full'} mode; this benchmark took {time.perf_counter() - t0:.0f} s.\n")
        (RESULTS / f"{name}.md").write_text(md)
        print(md)
        print(f"-> {RESULTS / (name + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
