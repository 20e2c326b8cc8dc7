"""`python -m firmware_sim fit`: which configuration fits the target, computed with the device's own plan.

Steps:
  1. convert the checkpoint at each resolution (convert/, host side): a TinyTL-B bundle (its graph also
     serves FT-Last, FT-Full and partial updates) and, if asked, a TinyTL-L+B one (lite branches in the graph);
  2. plan the update step of every method with the device's buffer rules (trainables.plan_for; FT-Full is the
     same graph with every conv weight float32 and trainable: planned, never a bundle);
  3. the deepest partial update that fits (trainables.deepest): the largest k whose `last:k` biases (+ lite branches) fit;
  4. what it would take beyond the current runtime: the same buffers re-planned under runtime techniques
     (rules below), each cumulative, with the deepest k that fits under each.

Rules (buffer rewrites on the device's plan, then the same greedy planner):
  pad-fused     TFLite's PAD before a stride-2 conv is computed on the fly by the conv (no padded copy)
  dw-inplace    a depthwise conv writes its output over its input (TinyEngine's in-place depthwise)
  fused-update  each parameter is updated as soon as its gradient is taken (operator reordering): parameter
                gradients live one backward step, not until the end of the step
  plain-sgd     SGD without momentum (MCUNetV3's update): no optimizer state
  int8-weights  trainable weights (the classifier, lite convs) kept int8 in SRAM and updated with
                quantization-aware scaling (MCUNetV3): a quarter of the float32 bytes; biases stay 32-bit
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from device import Buffer, Engine, OptimConfig, load_bundle, plan_greedy

from .boot import budgets_for
from .flash_image import weight_bytes
from .profiles import Profile
from .trainables import bias_layers, deepest, last_k, method_names, plan_for, units

RULES = ("pad-fused", "dw-inplace", "fused-update", "plain-sgd", "int8-weights")


def rewrite(buffers: tuple[Buffer, ...], engine: Engine, rules: tuple[str, ...]) -> list[Buffer]:
    """The step's buffers as a runtime with `rules` would hold them (see the module docstring)."""
    by = {b.name: b for b in buffers}
    ops = engine.ops

    def merge(keep: str, drop: str) -> None:
        a, b = by[keep], by.pop(drop)
        by[keep] = dataclasses.replace(a, size=max(a.size, b.size), last=max(a.last, b.last))

    alias: dict[int, int] = {}  # tensor index -> the buffer's tensor index after merges
    if "pad-fused" in rules:
        for op in ops:
            if op.name == "PAD" and f"act:{op.outputs[0]}" in by and f"act:{op.inputs[0]}" in by:
                i = alias.get(op.inputs[0], op.inputs[0])
                by[f"act:{i}"] = dataclasses.replace(by[f"act:{i}"], last=max(by[f"act:{i}"].last, by[f"act:{op.outputs[0]}"].last))
                by.pop(f"act:{op.outputs[0]}")
                alias[op.outputs[0]] = i
    if "dw-inplace" in rules:
        for k, op in enumerate(ops):
            if op.name != "DEPTHWISE_CONV_2D":
                continue
            i = alias.get(op.inputs[0], op.inputs[0])
            src, dst = f"act:{i}", f"act:{op.outputs[0]}"
            if src in by and dst in by and by[src].last <= k:  # nothing reads the input after the depthwise
                merge(src, dst)
                alias[op.outputs[0]] = i
    if "fused-update" in rules:
        for n, b in list(by.items()):
            if n.startswith("pgrad:"):
                by[n] = dataclasses.replace(b, last=b.first)
    if "plain-sgd" in rules:
        by = {n: b for n, b in by.items() if b.kind != "optimizer"}
    if "int8-weights" in rules:
        for n, b in list(by.items()):
            if n.split(":")[0] in ("param", "opt0", "opt1") and n.endswith(".weight"):
                by[n] = dataclasses.replace(b, size=-(-b.size // 4))
    return list(by.values())


def peak_under(bundle, engine, names, optim, region, rules) -> int:
    plan = plan_for(bundle, names, optim, region)
    return plan_greedy(rewrite(plan.buffers, engine, rules)).peak[region] if rules else plan.peak[region]


def _bundle(checkpoint: Path, method: str, res: int, data, work: Path, log):
    from convert import ConvertConfig, convert
    from train import load_checkpoint
    out = work / f"{method}-{res}"
    if not (out / "manifest.json").exists():
        _, meta = load_checkpoint(checkpoint)
        new = meta.get("stage") != "adapt"
        classes = len(meta.get("classes") or []) or 10
        log(f"converting {checkpoint} at {res} px ({method}) -> {out}")
        convert(ConvertConfig(checkpoint=str(checkpoint), out=str(out), calibration_samples=16, eval_samples=8, data=data,
                              method=method if new else None, classes=classes if new else None, resolution=res, force=True),
                log=lambda *_: None)
    return load_bundle(out)


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f}"


def fit_table(checkpoint: str | Path, profile: Profile, *, resolutions=None, methods=("ft-last", "tinytl-b", "tinytl-lb", "ft-full"),
              optimizer: str = "sgd", data: str | None = None, work: str | Path | None = None, log=print) -> str:
    from train import load_checkpoint
    checkpoint = Path(checkpoint)
    _, meta = load_checkpoint(checkpoint)
    native = int(meta["preprocess"]["resolution"])
    resolutions = resolutions or sorted({native, max(8, native * 3 // 4 // 8 * 8), max(8, native // 2)}, reverse=True)
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="fit-"))
    work.mkdir(parents=True, exist_ok=True)
    region = profile.step_region
    optim = OptimConfig(optimizer)
    rows, partial, takes = [], [], []
    for res in resolutions:
        for base in sorted({"tinytl-lb" if m == "tinytl-lb" else "tinytl-b" for m in methods}):
            b = _bundle(checkpoint, base, res, data, work, log)
            weights = weight_bytes(b)
            budget = budgets_for(profile, weights)[region]
            eng = Engine(b.tflite_path)
            for m in [m for m in methods if ("tinytl-lb" if m == "tinytl-lb" else "tinytl-b") == base]:
                peak = plan_for(b, method_names(b, m), optim, region).peak[region]
                rows.append((res, m, peak, budget, weights))
            if base == "tinytl-b" and "tinytl-b" in methods:
                names = method_names(b, "tinytl-b")
                d = deepest(names, budget, lambda ns: peak_under(b, eng, ns, optim, region, ()))
                partial.append((res, len(units(names)), bias_layers(names), d))
                if res == resolutions[0]:
                    for i in range(len(RULES) + 1):
                        rules = RULES[:i]
                        full = peak_under(b, eng, names, optim, region, rules)
                        takes.append((rules, full, peak_under(b, eng, last_k(names, 0), optim, region, rules),
                                      deepest(names, budget, lambda ns: peak_under(b, eng, ns, optim, region, rules))))
    lines = [f"fit on {profile.name}: {region} budget for the step = {profile.budgets[region]:,} bytes less reserved/weights "
             f"as listed; optimizer {optimizer}; batch 1; KB = 1024 bytes", "",
             f"| px | method | planned peak KB | budget KB | fits | weights KB ({profile.weight_region}) |",
             "|---:|---|---:|---:|---|---:|"]
    lines += [f"| {r} | {m} | {_kb(p)} | {_kb(bu)} | {'yes' if p <= bu else 'no'} | {_kb(w)} |" for r, m, p, bu, w in rows]
    lines += ["", "Deepest partial TinyTL-B update that fits (biases of the last k units + the classifier), as the device "
                  "runtime plans it today:", "", "| px | units | bias layers (full) | k | bias layers trained | peak KB |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r, nu, nb, d in partial:
        lines.append(f"| {r} | {nu} | {nb} | " + (f"{d[0]} | {d[2]} | {_kb(d[1])} |" if d else "- | none fits | - |"))
    if takes:
        lines += ["", f"What it takes at {resolutions[0]} px (the same buffers re-planned under runtime techniques, cumulative):",
                  "", "| runtime rules | full TinyTL-B peak KB | classifier only KB | deepest k | bias layers | its peak KB |",
                  "|---|---:|---:|---:|---:|---:|"]
        for rules, full, head, d in takes:
            lines.append(f"| {' + '.join(rules) or 'as run today'} | {_kb(full)} | {_kb(head)} | "
                         + (f"{d[0]} | {d[2]} | {_kb(d[1])} |" if d else "- | none fits | - |"))
    return "\n".join(lines)
