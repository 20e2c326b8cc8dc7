"""The device's truth: the planned peak of the batch-1 update step per method and profile, and what fits.

Model: the pretrained checkpoint with a fresh 10-class Animal-MNIST head (what `make simulate` deploys),
converted as TinyTL-B and TinyTL-L+B bundles (bench/_bundles.py new_task_bundle; a random mcunet-tiny if
runs/pretrain/model.pt is absent). Every plan comes from firmware_sim's machinery (firmware_sim.trainables.plan_for: the
device's own buffer rules and greedy planner; FT-Full is the TinyTL-B graph with every weight float32 and
trainable, planned, never a bundle); the deepest partial update is firmware_sim.trainables.deepest. Beside each planned peak:
the same model's paper-accounting estimate (train/memory.py) at batch 1, to show the gap between the views.
"""
from __future__ import annotations

from device.bundle import load_bundle
from device.engine import Engine
from device.optim import OptimConfig
from firmware_sim import boot, fit, list_profiles, load_profile
from firmware_sim import flash_image
from firmware_sim import trainables as target

from . import _bundles as B

METHODS = ("ft-last", "tinytl-b", "tinytl-l", "tinytl-lb", "ft-full")  # what the device plans
OPTIMIZERS = ("sgd", "adam")  # sgd: firmware_sim's default (one momentum array); adam: two state arrays
KB = 1024


def names_for(bundles: dict, method: str) -> tuple[str, list[str]]:
    """(bundle kind, graph parameter names) a method trains: TinyTL-L is the lite branches + head of the L+B graph."""
    if method in ("tinytl-l", "tinytl-lb"):
        b = bundles["tinytl-lb"]
        if method == "tinytl-l":
            return "tinytl-lb", [n for n in target.method_names(b, "tinytl-lb") if ".lite." in n or target.unit_of(n) == "classifier"]
        return "tinytl-lb", target.method_names(b, method)
    return "tinytl-b", target.method_names(bundles["tinytl-b"], method)


def paper_estimates(res: int) -> dict[str, int]:
    """{method: bytes} of the paper's accounting at batch 1 on the same model (fresh 10-class head)."""
    from train.adapt import prepare_model
    from train.checkpoint import load_checkpoint
    from train.memory import estimate
    from train.methods import METHODS as ALL
    src = B.PRETRAINED if B.PRETRAINED.exists() else B.checkpoint("mcunet-tiny", 32, "tinytl-b")
    out = {}
    for m in ALL:
        model, _ = load_checkpoint(src)
        model, _ = prepare_model(model, 10, m, "pretrained", 0)
        out[m] = estimate(model, m, res, 1).total_bytes
    return out


def measure(quick: bool) -> dict:
    bundles, src = {}, ""
    for kind in ("tinytl-b", "tinytl-lb"):
        d, _, _, src = B.new_task_bundle(kind)
        bundles[kind] = load_bundle(d)
    res = bundles["tinytl-b"].manifest["input"]["shape"][1]
    weights = {k: flash_image.weight_bytes(b) for k, b in bundles.items()}  # flash image bytes, as fit.py
    profiles = sorted((load_profile(p) for p in list_profiles()), key=lambda p: (p.kind != "mcu", p.budgets[p.step_region]))
    peaks = {}  # (optimizer, method, region) -> bytes
    for opt in OPTIMIZERS:
        for m in METHODS:
            kind, names = names_for(bundles, m)
            for region in sorted({p.step_region for p in profiles}):
                peaks[opt, m, region] = target.plan_for(bundles[kind], names, OptimConfig(opt), region).peak[region]
    rows = []
    for p in profiles:
        region = p.step_region
        for m in METHODS:
            kind, _ = names_for(bundles, m)
            budget = boot.budgets_for(p, weights[kind])[region]
            wbudget = p.budgets[p.weight_region]
            rows.append({"profile": p.name, "kind": p.kind, "method": m, "region": region, "budget": budget,
                         "weights": weights[kind], "weights_budget": wbudget, "weights_fit": weights[kind] <= wbudget,
                         **{f"peak_{o}": peaks[o, m, region] for o in OPTIMIZERS},
                         **{f"fits_{o}": peaks[o, m, region] <= budget and weights[kind] <= wbudget for o in OPTIMIZERS}})
    partial = []
    b = bundles["tinytl-b"]
    eng = Engine(b.tflite_path)
    names = target.method_names(b, "tinytl-b")
    for p in profiles if not quick else [load_profile("mcu-256k")]:
        if p.kind != "mcu":
            continue
        budget = boot.budgets_for(p, weights["tinytl-b"])[p.step_region]
        for opt in OPTIMIZERS:
            d = target.deepest(names, budget, lambda ns: fit.peak_under(b, eng, ns, OptimConfig(opt), p.step_region, ()))
            partial.append({"profile": p.name, "optimizer": opt, "units": len(target.units(names)),
                            "bias_layers": target.bias_layers(names), "budget": budget,
                            "k": d[0] if d else None, "bias_layers_trained": d[2] if d else None, "peak": d[1] if d else None})
    return {"source": src, "resolution": res, "weights": weights, "rows": rows, "partial": partial,
            "paper_batch1": paper_estimates(res), "profiles": {p.name: p.description for p in profiles}}


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / KB:,.1f}"


def render(r: dict) -> str:
    from train.sweep import LABEL
    by = {(x["profile"], x["method"]): x for x in r["rows"]}
    profiles = list(dict.fromkeys(x["profile"] for x in r["rows"]))
    peak = {m: next(x for x in r["rows"] if x["method"] == m) for m in METHODS}  # the plan is the same in every region
    lines = ["| method | paper accounting, batch 1, KB | planned peak, SGD, KB | planned / paper | planned peak, Adam, KB | "
             + " | ".join(f"fits {p} (SGD / Adam)" for p in profiles) + " |",
             "|---|---:|---:|---:|---:|" + "---|" * len(profiles)]
    for m in METHODS:
        paper, sgd, adam = r["paper_batch1"][m], peak[m]["peak_sgd"], peak[m]["peak_adam"]
        fits = " | ".join(f"{'yes' if by[p, m]['fits_sgd'] else 'no'} / {'yes' if by[p, m]['fits_adam'] else 'no'}" for p in profiles)
        lines.append(f"| {LABEL[m]} | {_kb(paper)} | {_kb(sgd)} | {sgd / paper:.1f}x | {_kb(adam)} | {fits} |")
    budgets = ["| profile | step region | step budget KB (TinyTL-B bundle) | frozen weights KB (TinyTL-B / L+B) | "
               "weights budget KB | description |", "|---|---|---:|---:|---:|---|"]
    for p in profiles:
        x = by[p, "tinytl-b"]
        budgets.append(f"| {p} | {x['region']} | {_kb(x['budget'])} | {_kb(x['weights'])} / {_kb(by[p, 'tinytl-lb']['weights'])} | "
                       f"{_kb(x['weights_budget'])}{' (shared)' if x['kind'] == 'linux' else ''} | {r['profiles'][p]} |")
    part = ["| profile | optimizer | step budget KB | units | bias layers (full TinyTL-B) | deepest k that fits | bias layers trained | its peak KB |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for d in r["partial"]:
        part.append(f"| {d['profile']} | {d['optimizer']} | {_kb(d['budget'])} | {d['units']} | {d['bias_layers']} | "
                    + (f"{d['k']} | {d['bias_layers_trained']} | {_kb(d['peak'])} |" if d["k"] is not None else "- | none fits | - |"))
    return (f"Model: {r['source']}, {r['resolution']} px, 10 classes, batch 1. KB = 1024 bytes. Planned peak: the "
            "device's plan of one update step (activations, saved tensors, masks, gradient buffers, optimizer state, "
            "im2col scratch, trainable params) in the step's region, from `firmware_sim.trainables.plan_for` (the same "
            "planner `python -m firmware_sim fit` and `run` use); fits = planned peak within the profile's step budget "
            "and the frozen int8 weights within its flash (MCU) / DRAM. FT-Full is planned on the TinyTL-B graph with "
            "every weight float32 and trainable (it cannot ship as an int8 bundle); TinyTL-L is the L+B graph with only "
            "the lite branches and the head trainable. Paper accounting: `train/memory.py` on the same model "
            "(trainable params 32-bit, frozen 8-bit, saved activations, no gradients, no optimizer state); it counts the "
            "frozen int8 weights, which the device keeps in flash (MCU) outside the step's arena, and leaves out the "
            "gradient buffers, optimizer state and scratch the plan holds: hence FT-Last below the estimate and the "
            "lite-branch methods (float32 lite weights, their gradients and GroupNorm inputs) well above it.\n\n"
            + "\n".join(lines) + "\n\nProfiles (firmware_sim/profiles/*.yaml):\n\n" + "\n".join(budgets)
            + "\n\nDeepest partial TinyTL-B update that fits each MCU (biases of the last k units + the classifier; "
              "`firmware_sim.trainables.deepest`, the runtime as it is today):\n\n" + "\n".join(part) + "\n")


def run(quick: bool = False) -> str:
    r = measure(quick)
    B.write_json("memory_device", r)
    return render(r)
