"""Adaptation accuracy: six methods x two targets (Animal-MNIST, digits) x batch 8 and 1 x three seeds, with
the paper-accounting training memory per method; and on-device (simulator) learning next to PyTorch's.

Steps:
  1. the pretrained checkpoint runs/pretrain/model.pt (pretrained here with the default preset if absent;
     quick mode uses a random mcunet-tiny instead of pretraining);
  2. every (target, batch, seed, method) is one `train.sweep.sweep` call with one run, in a pool of JOBS
     processes (one CPU thread each); runs live under runs/bench/accuracy/ and a finished run with the same
     config and pretrained file is reused, so a crash or a rerun loses at most the runs under way;
  3. table: mean +- std (sample std over the seeds; min..max in accuracy.json) per method and setting; plot
     bench/results/accuracy_memory.png (accuracy vs memory, one point per method, per target);
  4. on the device: the pretrained checkpoint converted to a new-task bundle (TinyTL-B, TinyTL-L+B), learned at
     batch 1 by firmware_sim.simulate on the smallest profile whose plan fits, for as many steps as PyTorch's
     seed-0 batch-1 run saw samples, on the same training images, once per data order (ORDERS); next to each,
     the same run in PyTorch (torch_twin, float32 and float64); accuracy on the whole test split; goal:
     device and PyTorch means within MAX_DEVICE_GAP.
"""
from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from . import _bundles as B

TARGETS = ("animal-mnist", "digits")
SEEDS = (0, 1, 2)
JOBS = 2  # runs at once, one thread each (as train/sweep.py)
# (target, batch) -> (training-image cap or None for the whole train split, epochs): sized so the whole
# sweep fits `make bench`'s 45 minutes on 2 cores (Animal-MNIST: 7,000 train images; digits: 1,258)
FULL = {("animal-mnist", 8): (1200, 2), ("digits", 8): (None, 2), ("animal-mnist", 1): (300, 2), ("digits", 1): (300, 2)}
QUICK = {("animal-mnist", 8): (200, 1), ("digits", 8): (200, 1), ("animal-mnist", 1): (48, 1), ("digits", 1): (48, 1)}
DEVICE_METHODS = ("tinytl-b", "tinytl-lb")
ORDERS = (0, 1, 2)  # data orders (device.loop.order seeds) of the on-device comparison
MAX_DEVICE_GAP = 0.02  # issue 5: on-device accuracy within 2 points of PyTorch batch-1 with the same steps and lr
RUNS = B.ROOT / "runs" / "bench" / "accuracy"


def pretrained(quick: bool) -> tuple[Path, str]:
    """(checkpoint, how it was obtained); pretrains once per `python -m bench` run if the file is absent."""
    if "pretrained" in B._cache:  # noqa: SLF001  (bench/__main__ calls this first in a full run)
        return B._cache["pretrained"]  # noqa: SLF001
    if B.PRETRAINED.exists():
        got = B.PRETRAINED, f"`{B.PRETRAINED.relative_to(B.ROOT)}` (present)"
    elif quick:
        got = B.checkpoint("mcunet-tiny", 32, "tinytl-b"), "a random mcunet-tiny (runs/pretrain/model.pt absent; quick mode does not pretrain)"
    else:
        subprocess.run([sys.executable, "-m", "train", "pretrain", "--preset", "default", "--out", str(B.PRETRAINED.parent),
                        "--resume"], cwd=B.ROOT, check=True)
        got = B.PRETRAINED, (f"`{B.PRETRAINED.relative_to(B.ROOT)}`, absent, so pretrained by this run "
                             "(`python -m train pretrain --preset default --resume`)")
    B._cache["pretrained"] = got  # noqa: SLF001
    return got


def _one(ckpt: str, data: str, out: str, method: str, batch: int, seed: int, limit: int | None, epochs: int) -> dict:
    """One run through train.sweep (its reuse rule: same config, same pretrained file); in a worker process."""
    from train.sweep import Run, sweep
    row = sweep(Path(ckpt), data, Path(out), runs=[Run(method, batch)], epochs=epochs, seed=seed, limit=limit,
                progress=False, jobs=1)[0]
    return row | {"data": data, "seed": seed, "epochs": epochs, "limit": limit}


def sweep_all(ckpt: Path, sizes: dict, seeds, runs_dir: Path, log=print) -> list[dict]:
    from train.methods import METHODS
    tasks = [(str(ckpt), d, str(runs_dir / f"{d}-b{b}-s{s}"), m, b, s, *sizes[d, b])
             for (d, b) in sizes for s in seeds for m in METHODS]
    tasks.sort(key=lambda t: (t[4], t[3] != "ft-full"))  # batch 1 and FT-Full take longest: start them first
    ctx = multiprocessing.get_context("spawn")
    rows = []
    with ProcessPoolExecutor(max_workers=JOBS, mp_context=ctx) as pool:
        for k, row in enumerate(pool.map(_one, *zip(*tasks)), 1):
            log(f"[{k}/{len(tasks)}] {row['data']} {row['run']} seed {row['seed']}: {row['test_acc']:.4f} ({row['seconds']:.0f} s)")
            rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """{target: {batch: {method: {mean, std, min, max, n, values}}}} of test accuracy; memory per method and batch."""
    acc: dict = {}
    mem: dict = {}
    for r in rows:
        acc.setdefault(r["data"], {}).setdefault(str(r["batch"]), {}).setdefault(r["method"], []).append(r["test_acc"])
        mem.setdefault(r["method"], {})[str(r["batch"])] = r["memory_mb"]
    stats = {d: {b: {m: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                          "min": min(v), "max": max(v), "n": len(v), "values": v} for m, v in bm.items()}
                 for b, bm in db.items()} for d, db in acc.items()}
    return {"accuracy": stats, "memory_mb": mem}


def goal_lb_vs_full(summary: dict, batch: str = "8", max_drop: float = 0.03, min_ratio: float = 3.0) -> dict:
    """TinyTL-L+B within `max_drop` (fraction) of FT-Full's mean accuracy at >= `min_ratio`x less memory, per target."""
    out = {}
    mem = summary.get("memory_mb", {})
    ratio = None
    if "ft-full" in mem and "tinytl-lb" in mem and batch in mem["ft-full"] and batch in mem["tinytl-lb"]:
        ratio = mem["ft-full"][batch] / mem["tinytl-lb"][batch]
    for d, db in summary.get("accuracy", {}).items():
        a = db.get(batch, {})
        if "ft-full" not in a or "tinytl-lb" not in a or ratio is None:
            out[d] = {"met": None, "why": "missing runs"}
            continue
        drop = a["ft-full"]["mean"] - a["tinytl-lb"]["mean"]
        out[d] = {"met": drop <= max_drop and ratio >= min_ratio, "drop_points": 100 * drop, "memory_ratio": ratio,
                  "full": a["ft-full"]["mean"], "lb": a["tinytl-lb"]["mean"]}
    return out


# ---- on the device ------------------------------------------------------------------------------

def _uint8_nhwc(x: np.ndarray) -> np.ndarray:
    return x[..., None] if x.ndim == 3 else x


def torch_twin(method: str, bundle_dir: Path, train: tuple, test: tuple, steps: int, lr: float, seed: int,
               pretrained: Path | None = None, double: bool = False) -> float:
    """PyTorch's batch-1 run from the bundle's own start: the float model the bundle was converted from (same
    fresh head), the device's input values (its int8 inputs dequantized), the device's sample order
    (device.loop.order with `seed`), Adam with the device's cosine schedule (device.optim.lr_at), no
    augmentation, the last parameters; returns its test accuracy. Only the arithmetic differs from the device.
    pretrained: the checkpoint the bundle was converted from (see _bundles.new_task_model). double: the same run
    in float64, whose distance from the float32 run is batch-1 training's own sensitivity to rounding."""
    import torch
    import torch.nn.functional as F
    from device.bundle import load_bundle
    from device.data import to_model_input
    from device.loop import order
    from device.optim import OptimConfig, lr_at
    man = load_bundle(bundle_dir).manifest
    q = man["input"]

    def floats(x):
        xq = to_model_input(x, man).astype(np.float32)
        t = torch.from_numpy((xq - q["zero_point"]) * np.float32(q["scale"])).permute(0, 3, 1, 2)
        return (t.double() if double else t).contiguous(memory_format=torch.channels_last)
    model = B.new_task_model(method, bundle_dir, pretrained)
    if double:
        model = model.double()
    x, y = floats(train[0]), torch.from_numpy(train[1].astype(np.int64))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    cfg = OptimConfig("adam", lr=lr, schedule="cosine", total_steps=steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch 1 (as train adapt); also keeps the result independent of the core count
    try:
        for s in range(steps):
            i = order(seed, s, len(y))
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, s)
            loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(1) for b in floats(test[0]).split(256)])
    finally:
        torch.set_num_threads(threads)
    return float((pred.numpy() == test[1]).mean())


def device_runs(sizes: dict, quick: bool, log=print) -> list[dict]:
    """TinyTL-B / L+B learned at batch 1 by the simulator on Animal-MNIST (seed 0's split and training images),
    once per data order in ORDERS, each next to its PyTorch twin (torch_twin) with the same order."""
    from device.optim import OptimConfig
    from device.bundle import load_bundle
    from firmware_sim import SimConfig, SimRefused, boot, flash_image, list_profiles, load_profile, simulate
    from firmware_sim import trainables
    from train.adapt import DEFAULT_LR
    from train.data import load_dataset
    limit, epochs = sizes["animal-mnist", 1]
    orders = ORDERS[:1] if quick else ORDERS
    ds = load_dataset("animal-mnist", seed=0, limit=limit)
    train = (_uint8_nhwc(ds.train.x), ds.train.y.astype(np.int64))
    test = (_uint8_nhwc(ds.test.x), ds.test.y.astype(np.int64))
    steps = len(train[1]) * epochs  # what PyTorch's batch-1 run saw
    profiles = [load_profile(p) for p in list_profiles()]
    profiles.sort(key=lambda p: (p.kind != "mcu", boot.budgets_for(p)[p.step_region]))
    out = []
    for m in DEVICE_METHODS:
        d, _, _, src = B.new_task_bundle(m)
        b = load_bundle(d)
        fits = [p for p in profiles if trainables.plan_for(b, list(b.trainable), OptimConfig("adam"), p.step_region).peak[p.step_region]
                <= boot.budgets_for(p, flash_image.weight_bytes(b))[p.step_region]]
        row = {"method": m, "profile": None, "steps": steps, "source": src, "accuracy": None, "orders": []}
        for p in fits:  # the smallest target whose plan fits (refused before any step otherwise)
            try:
                for seed in orders:
                    cfg = SimConfig(steps=steps, seed=seed, optimizer="adam", lr=DEFAULT_LR[m], schedule="cosine",
                                    eval_every=steps, checkpoint_every=steps, eval_limit=len(test[1]))
                    with tempfile.TemporaryDirectory(prefix="bench-sim-") as ck:
                        r = simulate(d, p, cfg, train, test, ck, log=lambda *_: None)
                    twin = torch_twin(m, d, train, test, steps, DEFAULT_LR[m], seed)
                    twin64 = torch_twin(m, d, train, test, steps, DEFAULT_LR[m], seed, double=True)
                    row["orders"].append({"seed": seed, "before": r["curve"][0][1], "device": r["curve"][-1][1], "torch_twin": twin,
                                          "torch_twin_f64": twin64})
                    log(f"device {m} on {p.name}, order {seed}: {r['curve'][-1][1]:.4f} after {steps} steps; PyTorch twin "
                        f"{twin:.4f} (float64: {twin64:.4f})")
            except SimRefused:
                row["orders"] = []
                continue
            dev, tw = [o["device"] for o in row["orders"]], [o["torch_twin"] for o in row["orders"]]
            gaps = [a - t for a, t in zip(dev, tw)]
            noise = [o["torch_twin_f64"] - o["torch_twin"] for o in row["orders"]]
            row |= {"profile": p.name, "before": row["orders"][0]["before"], "accuracy": float(np.mean(dev)),
                    "twin": float(np.mean(tw)), "max_abs_gap": float(max(abs(g) for g in gaps)),
                    "max_abs_f64_gap": float(max(abs(g) for g in noise)),
                    "within": bool(abs(np.mean(dev) - np.mean(tw)) <= MAX_DEVICE_GAP), "eval_samples": r["eval_samples"],
                    "peak": r["plan"].peak[p.step_region], "budget": r["budget"], "host_ms_per_step": r["host_ms_per_step"]}
            break
        out.append(row)
    return out


# ---- report -------------------------------------------------------------------------------------

def _cell(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if s["n"] > 1 else f"{100 * s['mean']:.1f} (n=1)"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _mb(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from train.sweep import LABEL
    targets = list(summary["accuracy"])
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4), squeeze=False)
    for ax, d in zip(axes[0], targets):
        for batch, filled in (("8", True), ("1", False)):
            for m, s in summary["accuracy"][d].get(batch, {}).items():
                x = summary["memory_mb"][m][batch]
                tiny = m.startswith("tinytl")
                color = "tab:red" if tiny else "tab:blue"
                ax.errorbar(x, 100 * s["mean"], yerr=100 * s["std"], fmt="*" if tiny else "o", ms=9 if tiny else 6,
                            color=color, mfc=color if filled else "white", capsize=2, lw=0.8)
                ax.annotate(LABEL[m], (x, 100 * s["mean"]), textcoords="offset points",
                            xytext=(5, -11 if m == "tinytl-l" else 4), fontsize=7, color="black" if filled else "gray")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 0.6 0.7 0.8 0.9 would overlap
        ax.set_xlabel("estimated training memory, paper's accounting (MB, log)")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{d}: filled batch 8, hollow batch 1", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(res: dict) -> str:
    from train.methods import METHODS
    from train.sweep import LABEL
    s, sizes = res["summary"], res["sizes"]
    acc = s["accuracy"]
    cols = [(d, b) for d in TARGETS for b in ("8", "1") if b in acc.get(d, {})]

    def size(d, b):
        lim, ep = sizes[f"{d}|{b}"]
        return f"{d} batch {b}: {'all' if lim is None else f'at most {lim:,}'} training images ({res['train_sizes'][f'{d}|{b}']:,}) x {ep} epoch{'s' if ep > 1 else ''}"
    lines = ["| method | " + " | ".join(f"{d} b{b} %" for d, b in cols) + " | est. memory b8 MB | est. memory b1 MB | b8: x less than FT-Full |",
             "|---|" + "---:|" * (len(cols) + 3)]
    mem = s["memory_mb"]
    for m in METHODS:
        cells = " | ".join(_cell(acc[d][b].get(m)) for d, b in cols)
        m8, m1 = mem.get(m, {}).get("8"), mem.get(m, {}).get("1")
        full8 = mem.get("ft-full", {}).get("8")
        lines.append(f"| {LABEL[m]} | {cells} | {_mb(m8)} | {_mb(m1)} | {f'{full8 / m8:.1f}x' if m8 and full8 else '-'} |")
    goal = ["| target | FT-Full b8 % | TinyTL-L+B b8 % | drop (points) | memory FT-Full / L+B | within 3 points at >= 3x less |",
            "|---|---:|---:|---:|---:|---|"]
    for d, g in res["goal"].items():
        if g["met"] is None:
            goal.append(f"| {d} | - | - | - | - | no data ({g['why']}) |")
        else:
            goal.append(f"| {d} | {100 * g['full']:.1f} | {100 * g['lb']:.1f} | {g['drop_points']:+.1f} | {g['memory_ratio']:.1f}x | "
                        f"{'met' if g['met'] else 'NOT met'} |")
    dev = ["| method | simulated target (smallest that fits) | planned peak KB / budget KB | steps (batch 1) | "
           "device per order % | PyTorch twin per order % | device mean % | twin mean % | means within "
           f"{100 * MAX_DEVICE_GAP:.0f} points | largest gap per order | twin float64 vs float32: largest gap | "
           "PyTorch b1 sweep mean ± std |", "|---|---|---|---:|---|---|---:|---:|---|---:|---:|---:|"]
    for r in res["device"]:
        pt = acc.get("animal-mnist", {}).get("1", {}).get(r["method"])
        if r["accuracy"] is None:
            dev.append(f"| {LABEL[r['method']]} | none fits | - | {r['steps']} | - | - | - | - | - | - | - | {_cell(pt)} |")
            continue
        per = lambda k: ", ".join(f"{100 * o[k]:.1f}" for o in r["orders"])  # noqa: E731
        dev.append(f"| {LABEL[r['method']]} | {r['profile']} | {r['peak'] / 1024:,.1f} / {r['budget'] / 1024:,.1f} | {r['steps']:,} | "
                   f"{per('device')} | {per('torch_twin')} | {100 * r['accuracy']:.1f} | {100 * r['twin']:.1f} | "
                   f"{'met' if r['within'] else 'NOT met'} ({100 * (r['accuracy'] - r['twin']):+.1f}) | {100 * r['max_abs_gap']:.1f} | "
                   f"{_pts(r.get('max_abs_f64_gap'))} | {_cell(pt)} |")
    dsrc = res["device"][0]["source"] if res["device"] else "-"
    orders = ", ".join(str(o["seed"]) for o in (res["device"][0]["orders"] if res["device"] else []))
    return (f"Pretrained checkpoint: {res['source']}. Runs under `{res['runs_dir']}` (reused when config and "
            f"checkpoint match). Each cell: test accuracy, mean ± std (sample standard deviation) over seeds "
            f"{', '.join(map(str, res['seeds']))} (the seed changes the train/val/test split, the head's init and the "
            "sample order; min..max in accuracy.json). Sizes, chosen to fit `make bench` on 2 cores: "
            + "; ".join(size(d, b) for d, b in cols) + ". Adam, per-method default learning rates (train/adapt.py), "
            "cosine schedule, shift/flip augmentation, best-validation epoch. Memory: the paper's accounting "
            "(train/memory.py) of this model (mcunet-tiny, 32 px, 10 classes), MB = 10^6 bytes.\n\n"
            + "\n".join(lines) + "\n\n![accuracy vs memory](accuracy_memory.png)\n\n"
            "TinyTL-L+B against FT-Full at batch 8 (mean over seeds):\n\n" + "\n".join(goal)
            + f"\n\nOn the device (simulator), Animal-MNIST, seed 0's split, training images and whole test split: bundle {dsrc}, "
              "learned at batch 1 by `firmware_sim.simulate` (the device runtime inside the profile's arena) with Adam, "
              "the per-method peak learning rate and a cosine schedule, for as many steps as PyTorch's batch-1 runs saw "
              f"samples, once per data order (seeds {orders} of device.loop.order); no augmentation, no model selection "
              "(the last parameters), int8 forward. PyTorch twin: the same run in PyTorch eager from the same start (the "
              "float model the bundle was converted from, the same fresh head), the same dequantized inputs, sample order, "
              "steps and learning rates; only the arithmetic differs (float32 forward vs the int8 graph). The criterion "
              "compares the means over the orders: a batch-1 run amplifies any rounding difference into another "
              "trajectory, as the last columns show (the twin rerun in float64 lands that far from itself in float32; "
              "gaps in points). The sweep's batch-1 runs (another head init and order, augmentation, best-validation "
              "epoch) are shown for context.\n\n" + "\n".join(dev) + "\n")


def run(quick: bool = False) -> str:
    sizes = QUICK if quick else FULL
    seeds = SEEDS[:1] if quick else SEEDS
    ckpt, source = pretrained(quick)
    runs_dir = RUNS / ("quick" if quick else "full")
    rows = sweep_all(ckpt, sizes, seeds, runs_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
    summary = summarize(rows)
    from train.data import load_dataset
    train_sizes = {f"{d}|{b}": len(load_dataset(d, seed=0, limit=lim).train.y) for (d, b), (lim, _) in sizes.items()}
    res = {"source": source, "runs_dir": str(runs_dir.relative_to(B.ROOT)), "seeds": list(seeds),
           "sizes": {f"{d}|{b}": v for (d, b), v in sizes.items()}, "train_sizes": train_sizes, "rows": rows,
           "summary": summary, "goal": goal_lb_vs_full(summary),
           "device": device_runs(sizes, quick, log=lambda s: print(s, file=sys.stderr, flush=True))}
    B.RESULTS.mkdir(parents=True, exist_ok=True)
    plot(summary, B.RESULTS / "accuracy_memory.png",
         f"mcunet-tiny from {'a random checkpoint' if 'random' in source else 'Fashion-MNIST pretraining'}: accuracy vs training memory")
    B.write_json("accuracy", res)
    return render(res)

