"""All six methods on one target, the paper's comparison: a table (results/adapt.md) and a plot of
accuracy against estimated training memory, one point per method (cf. TinyTL, Figure 1/Table 1).

Each run lands in its own folder; a finished run is reused, so a crash loses at most the run under way.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapt import AdaptConfig, adapt
from .checkpoint import file_sha256
from .methods import METHODS

LABEL = {"ft-full": "FT-Full", "ft-last": "FT-Last", "ft-norm-last": "FT-Norm+Last",
         "tinytl-b": "TinyTL-B", "tinytl-l": "TinyTL-L", "tinytl-lb": "TinyTL-L+B"}


@dataclass(frozen=True)
class Run:
    method: str
    batch_size: int
    lite_init: str = "pretrained"
    epochs: int | None = None  # None: the sweep's epochs

    @property
    def name(self) -> str:
        return f"{self.method}-b{self.batch_size}" + ("-litefresh" if self.lite_init == "random" else "")


def default_runs(batch1_epochs: int | None = 1) -> list[Run]:
    """Six methods at batch 8, TinyTL-L+B also at batch 1 and with fresh (zero-started) lite branches.
    batch1_epochs: the batch-1 run's epochs (None: the sweep's). One epoch at batch 1 is as many updates as
    eight at batch 8 (7,000 on Animal-MNIST; two batch-8 epochs are 1,750) and still the sweep's longest run
    (~200 s on one core); `make demo`'s 20-minute budget holds one. Measured from runs/pretrain/model.pt:
    85.3% test accuracy after one epoch, 91.3% after three (620 s)."""
    return [Run(m, 8) for m in METHODS] + [Run("tinytl-lb", 1, epochs=batch1_epochs), Run("tinytl-lb", 8, "random")]


def _run_one(cfg: AdaptConfig, folder: Path, progress: bool) -> float:
    return adapt(cfg, folder, progress=progress, force=True)["test_acc"]


def sweep(checkpoint: Path, data: str, out: Path, *, runs: list[Run], epochs: int, seed: int = 0, limit: int | None = None,
          flip: bool = True, progress: bool = True, jobs: int = 1) -> list[dict[str, Any]]:
    """Run (or reuse) every run; with jobs > 1, that many runs at once in separate processes (one thread each)."""
    source = file_sha256(checkpoint)
    todo = []
    for run in runs:
        cfg = AdaptConfig(checkpoint=str(checkpoint), data=data, method=run.method, batch_size=run.batch_size, lite_init=run.lite_init,
                          epochs=run.epochs or epochs, seed=seed, limit=limit, augment_flip=flip, threads=1 if jobs > 1 else None)
        if not _finished(out / run.name / "model.json", cfg, source):
            todo.append((run, cfg))
    todo.sort(key=lambda rc: rc[0].batch_size)  # batch-1 runs take longest: start them first so the jobs finish together
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_one, cfg, out / run.name, False): run for run, cfg in todo}
            for k, fut in enumerate(as_completed(futures), 1):
                if progress:
                    print(f"[{k}/{len(todo)}] {futures[fut].name}: test accuracy {fut.result():.4f}", flush=True)
                fut.result()
    else:
        for k, (run, cfg) in enumerate(todo, 1):
            if progress:
                print(f"[{k}/{len(todo)}] {run.name}", flush=True)
            _run_one(cfg, out / run.name, progress)
    rows = []
    for run in runs:
        info = json.loads((out / run.name / "model.json").read_text())
        rows.append({"run": run.name, "method": run.method, "batch": run.batch_size, "lite_init": info["lite_init"],
                     "trainable_params": info["trainable_params"], "test_acc": info["test_acc"],
                     "val_acc": info["best"]["val_acc"], "memory_mb": info["memory"]["total_bytes"] / 1e6,
                     "seconds": info["seconds"], "epochs": info["config"]["epochs"]})
    return rows


def _finished(done: Path, cfg: AdaptConfig, source_sha256: str) -> bool:
    """A run is reused only if it was made with the same config from the same pretrained file."""
    if not done.exists():
        return False
    info = json.loads(done.read_text())
    return info.get("config") == dataclasses.asdict(cfg) and info.get("pretrained_sha256") == source_sha256


def gap_closed(rows: list[dict[str, Any]], batch: int = 8) -> float | None:
    """(L+B - Last) / (Full - Last) at the given batch size: how much of FT-Full's gain TinyTL-L+B keeps."""
    acc = {r["method"]: r["test_acc"] for r in rows if r["batch"] == batch and r["lite_init"] == "pretrained"}
    if not {"ft-full", "ft-last", "tinytl-lb"} <= set(acc) or acc["ft-full"] == acc["ft-last"]:
        return None
    return (acc["tinytl-lb"] - acc["ft-last"]) / (acc["ft-full"] - acc["ft-last"])


def write_report(rows: list[dict[str, Any]], out_dir: Path, *, title: str) -> Path:
    """results/adapt.md + adapt.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "Memory: the TinyTL paper's accounting (`python -m train memory`), MB = 10^6 bytes; accuracy on the held-out test split.", "",
             "| run | method | batch | epochs | lite branches | trainable params | est. memory (MB) | val acc | test acc | time (s) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {LABEL[r['method']]} | {r['batch']} | {r.get('epochs', '-')} | {r['lite_init']} | {r['trainable_params']:,} | "
                     f"{r['memory_mb']:.2f} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | {r['seconds']:.0f} |")
    g = gap_closed(rows)
    if g is not None:
        lines += ["", f"Gap closed by TinyTL-L+B at batch 8: (L+B - Last) / (Full - Last) = {g:.2f} (paper: 0.29-0.89, ~0.7 on average)."]
    md = out_dir / "adapt.md"
    md.write_text("\n".join(lines) + "\n")
    _plot(rows, out_dir / "adapt.png", title)
    return md


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["batch"] != 8 or r["lite_init"] != "pretrained":
            continue
        tiny = r["method"].startswith("tinytl")
        ax.scatter(r["memory_mb"], 100 * r["test_acc"], s=60, marker="*" if tiny else "o", color="tab:red" if tiny else "tab:blue")
        below = r["method"] == "tinytl-l"  # L and L+B sit close together: label one under its point
        ax.annotate(LABEL[r["method"]], (r["memory_mb"], 100 * r["test_acc"]), textcoords="offset points",
                    xytext=(5, -11 if below else 4), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("estimated training memory, batch 8 (MB, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
