"""python -m bench [--quick] [--only NAME]: run the benchmarks, print the tables, write bench/results/NAME.md
(and NAME.json; --quick: bench/results/quick/); a full run of all of them also writes BENCHMARKS.md (summary, goals) at
the repo root, and a full-size run of some (--only) updates it, recording them in timings.json as re-run alone."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as in train/__main__.py; before torch loads

import torch  # noqa: E402

from . import _bundles as B  # noqa: E402
from . import (accuracy, convert_fidelity, device_step, engine_speed, firmware_cost, memory_device,  # noqa: E402
               memory_paper, native_profile, pretrain_speed, summary)

# name -> run(quick) -> markdown; in this order, so later ones reuse the bundles earlier ones converted
BENCHMARKS = {"pretrain_speed": pretrain_speed.run, "convert_fidelity": convert_fidelity.run,
              "engine_speed": engine_speed.run, "device_step": device_step.run, "native_profile": native_profile.run,
              "firmware_cost": firmware_cost.run, "memory_paper": memory_paper.run,
              "memory_device": memory_device.run, "accuracy": accuracy.run}


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
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (never writes BENCHMARKS.md)")
    p.add_argument("--only", choices=list(BENCHMARKS), action="append", metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    a = p.parse_args(argv)
    if a.quick:  # a smoke run never overwrites the full run's results, which BENCHMARKS.md links and git tracks
        B.RESULTS = B.RESULTS / "quick"
    RESULTS = B.RESULTS
    RESULTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = machine()
    if not a.quick and not B.PRETRAINED.exists():
        t0 = time.perf_counter()  # every benchmark of a full run uses the pretrained model: make it first
        print(f"== {accuracy.pretrained(quick=False)[1]}", file=sys.stderr)
        timings["pretrain (setup)"] = time.perf_counter() - t0
    for name, run in BENCHMARKS.items():
        if a.only and name not in a.only:
            continue
        t0 = time.perf_counter()
        body = run(quick=a.quick)
        timings[name] = time.perf_counter() - t0
        md = (f"# {name}\n\nMachine: {machine()}\n\n{body}\n"
              f"{'Quick' if a.quick else 'Full'} mode; this benchmark took {timings[name]:.0f} s.\n")
        (RESULTS / f"{name}.md").write_text(md)
        print(md)
        print(f"-> {RESULTS / (name + '.md')}", file=sys.stderr)
    if not a.only:  # a partial run must not replace the full run's record of what each benchmark took
        (RESULTS / "timings.json").write_text(json.dumps({"quick": a.quick, "only": a.only, "seconds": timings,
                                                          "machine": start}, indent=1) + "\n")
    total = sum(timings.values())
    print(f"== total {total:.0f} s ({total / 60:.1f} min): " + ", ".join(f"{n} {s:.0f} s" for n, s in timings.items()),
          file=sys.stderr)
    if not a.quick and not a.only:
        summary.write(RESULTS, timings, start)
        print(f"-> {summary.ROOT / 'BENCHMARKS.md'}", file=sys.stderr)
    elif not a.quick:  # a full-size partial run: its results replace those files; BENCHMARKS.md says which were re-run
        path = RESULTS / "timings.json"
        full = json.loads(path.read_text()) if path.exists() else {}
        if full.get("seconds") and not full.get("quick") and not full.get("only"):
            full["reruns"] = (full.get("reruns") or {}) | {n: {"seconds": s, "machine": start} for n, s in timings.items()}
            path.write_text(json.dumps(full, indent=1) + "\n")
            summary.write(RESULTS, full["seconds"], full["machine"], reruns=full["reruns"])
            print(f"-> {summary.ROOT / 'BENCHMARKS.md'} (updated: {', '.join(timings)} re-run)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
