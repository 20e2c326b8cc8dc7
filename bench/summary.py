"""BENCHMARKS.md: the machine, each benchmark's key table(s), links, and the goals with verdicts computed from
the numbers this run measured (bench/results/NAME.json; device_step.md's table, which has no JSON).

    text = summary.write(results_dir, timings, machine_line)    # -> BENCHMARKS.md at the repo root

A verdict is True (met), False (not met) or None (no data: the benchmark or a column is missing, said why).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# benchmark -> (what it measures, indices of its key tables in its .md)
ABOUT = {
    "pretrain_speed": ("PyTorch pretraining loop speed against a plain loop", (0,)),
    "convert_fidelity": ("conversion time, int8-vs-float agreement and sizes per preset", (0,)),
    "engine_speed": ("int8 inference at batch 1: our engine vs LiteRT, and bit-exactness", (0, 1)),
    "device_step": ("the batch-1 update step: our device runtimes (numpy Trainer, the compiled program on the C core and on "
                    "numpy) vs PyTorch (and LiteRT's training model)", (0, 1)),
    "native_profile": ("where the C core's time goes: the TinyTL-B update step and an int8 inference, per phase and per op",
                       (0, 1, 3)),
    "firmware_cost": ("the update step as Cortex-M firmware: what links on which MCU profile (the linker's verdict, SRAM "
                      "and flash used), and instructions per step on the emulated Cortex-M7 and M4", (0, 1)),
    "memory_paper": ("training memory in the paper's accounting next to the paper's figures", (0, 1, 2, 3, 4, 5)),
    "memory_device": ("the device's planned peak SRAM/DRAM per method and profile, and what fits", (0, 2)),
    "accuracy": ("six methods x two targets x batch 8/1 x three seeds; on-device accuracy beside PyTorch's", (0, 1, 2)),
}
CAPTION_MAX = 2000  # characters: a longer paragraph before a table stays in the benchmark's own .md
MIN_RATIO, MAX_DROP = 3.0, 0.03  # goal (b): "within 3 points of FT-Full at several (>= 3) times less memory"
MAX_DEVICE_GAP = 0.02  # goal (d), issue 5: on-device within 2 points of PyTorch batch-1 (same steps and lr)
C_STEP_VS_TORCH = 2.0  # goal (e), issue 13: the C-core step >= 2x faster than PyTorch eager at 1 thread (and <= LiteRT)
C_INFER_VS_XNNPACK = 2.0  # goal (f), issue 13: C-core int8 inference within 2x of XNNPACK (and faster than BUILTIN_REF)
NUMPY_TRAINER, C_CORE, TORCH_1, LITERT = "numpy Trainer", "C core (native)", "torch 1 thread", "LiteRT train.tflite"  # device_step sides


def tables(md: str) -> list[list[str]]:
    """Markdown tables of `md`: runs of consecutive lines starting with '|'."""
    return [t for _, t in captioned(md)]


def captioned(md: str) -> list[tuple[str, list[str]]]:
    """(the paragraph right before it, or "", table lines) for every table of `md`."""
    out, cur, para, prev, last = [], [], [], [], ""
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not cur:
                last = " ".join(para or prev)
            cur.append(line)
            continue
        if cur:
            out.append((last, cur))
            cur, para, prev = [], [], []
        if line.strip():
            para.append(line.strip())
        elif para:
            prev, para = para, []
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _ms(cell: str) -> float | None:
    m = re.match(r"\s*([0-9][0-9,]*\.?[0-9]*)", cell)
    return float(m.group(1).replace(",", "")) if m else None


def step_speed(md: str | None) -> dict:
    """Goal (a) from device_step.md's first table with an 'ours ms' (later: 'numpy Trainer ms') column: ours <= the
    fastest PyTorch column and <= every LiteRT column, for every method row."""
    if md is None:
        return {"met": None, "why": "bench/results/device_step.md missing"}
    is_ours = lambda c: c.lower().startswith(("ours ms", "numpy trainer ms"))  # noqa: E731
    tab = next((t for t in tables(md) if any(is_ours(c) for c in _cells(t[0]))), None)
    if tab is None:
        return {"met": None, "why": "no step-time table in device_step.md"}
    head = [c.lower() for c in _cells(tab[0])]
    ours = next(i for i, c in enumerate(head) if is_ours(c))
    torch = [i for i, c in enumerate(head) if c.startswith("torch") and c.endswith("ms")]
    litert = [i for i, c in enumerate(head) if "litert" in c and c.endswith("ms")]
    rows = []
    for line in tab[2:]:
        c = _cells(line)
        o = _ms(c[ours])
        t = [v for v in (_ms(c[i]) for i in torch) if v is not None]
        lt = [v for v in (_ms(c[i]) for i in litert) if v is not None]
        if o is not None:
            rows.append({"method": c[0], "ours_ms": o, "torch_ms": min(t) if t else None, "litert_ms": min(lt) if lt else None})
    if not rows:
        return {"met": None, "why": "no rows in the step-time table"}
    with_t = [r for r in rows if r["torch_ms"] is not None]
    with_l = [r for r in rows if r["litert_ms"] is not None]  # a method LiteRT's peer does not cover has no figure
    met_torch = all(r["ours_ms"] <= r["torch_ms"] for r in with_t) if with_t else None
    met_lite = all(r["ours_ms"] <= r["litert_ms"] for r in with_l) if with_l else None
    out = {"torch_met": met_torch, "litert_met": met_lite, "rows": rows}
    if met_torch is False or met_lite is False:
        return out | {"met": False}
    if met_lite is None:
        return out | {"met": None, "why": "no LiteRT training-model figure in device_step.md (not measured in this run)"}
    return out | {"met": met_torch}


def accuracy_goal(acc: dict | None) -> dict:
    """Goal (b) from accuracy.json: TinyTL-L+B within 3 points of FT-Full at >= 3x less memory, on every target (batch 8)."""
    if acc is None:
        return {"met": None, "why": "bench/results/accuracy.json missing"}
    per = acc.get("goal") or {}
    if not per:
        return {"met": None, "why": "no targets in accuracy.json"}
    verdicts = [g.get("met") for g in per.values()]
    met = None if any(v is None for v in verdicts) else all(verdicts)
    return {"met": met, "targets": per, **({"why": "a target lacks FT-Full or TinyTL-L+B runs"} if met is None else {})}


def exact_goal(eng: dict | None) -> dict:
    """Goal (c) from engine_speed.json: our int8 engine byte-exact with LiteRT's reference kernels on every model
    (exact_float: lite-branch float islands rounded as the reference does; the default mode is reported beside)."""
    if eng is None:
        return {"met": None, "why": "bench/results/engine_speed.json missing"}
    models = eng.get("exactness") or []
    if not models:
        return {"met": None, "why": "no exactness rows in engine_speed.json"}
    return {"met": all(m["exact_float_vs_reference"]["differ"] == 0 for m in models),
            "default_met": all(m["ours_vs_reference"]["differ"] == 0 for m in models), "models": models}


def device_goal(acc: dict | None) -> dict:
    """Goal (d) from accuracy.json's device rows: on-device batch-1 learning within MAX_DEVICE_GAP of its PyTorch
    twin (same start, order, steps and learning rates) for every method, the means over the data orders compared."""
    if acc is None:
        return {"met": None, "why": "bench/results/accuracy.json missing"}
    rows = acc.get("device") or []
    if not rows:
        return {"met": None, "why": "no on-device runs in accuracy.json"}
    if any(r.get("accuracy") is None or r.get("twin") is None for r in rows):
        return {"met": None, "rows": rows, "why": "a method fits no target or has no PyTorch twin run"}
    return {"met": all(r["within"] for r in rows), "rows": rows}


def c_step_goal(step: dict | None) -> dict:
    """Goal (e) from device_step.json: for every method the C core ran, its step >= C_STEP_VS_TORCH times faster than
    PyTorch eager at 1 thread and, where LiteRT's training model ran (TinyTL-B), no slower than it."""
    if step is None:
        return {"met": None, "why": "bench/results/device_step.json missing"}
    rows, missing = [], []
    for r in step.get("rows") or []:
        med = r["ms_median"]
        if C_CORE not in med:
            missing.append(f"{r['method']}: {r.get('c_core_missing', 'not run')}")
            continue
        c, t1, lt = med[C_CORE], med.get(TORCH_1), med.get(LITERT)
        rows.append({"method": r["method"], "c_ms": c, "torch1_ms": t1, "litert_ms": lt, "numpy_trainer_ms": med.get(NUMPY_TRAINER),
                     "speedup_vs_torch1": None if t1 is None else t1 / c,
                     "torch_met": None if t1 is None else t1 / c >= C_STEP_VS_TORCH,
                     "litert_met": None if lt is None else c <= lt, "same_as_numpy": r.get("c_equals_program_numpy")})
    if not rows:
        return {"met": None, "missing": missing, "why": "the C core ran no method (" + "; ".join(missing) + ")"}
    torch_met = [r["torch_met"] for r in rows if r["torch_met"] is not None]
    lite_met = [r["litert_met"] for r in rows if r["litert_met"] is not None]
    out = {"rows": rows, "missing": missing, "torch_met": all(torch_met) if torch_met else None,
           "litert_met": all(lite_met) if lite_met else None}
    if out["torch_met"] is False or out["litert_met"] is False:
        return out | {"met": False}
    if out["torch_met"] is None or out["litert_met"] is None:
        return out | {"met": None, "why": "no " + ("PyTorch" if out["torch_met"] is None else "LiteRT training-model") + " figure beside the C core"}
    return out | {"met": True}


def c_infer_goal(eng: dict | None) -> dict:
    """Goal (f) from engine_speed.json: on every model the C core's int8 inference faster than LiteRT's reference
    kernels, within C_INFER_VS_XNNPACK times XNNPACK, and byte-equal to the reference kernels on the timed inputs."""
    if eng is None:
        return {"met": None, "why": "bench/results/engine_speed.json missing"}
    rows, missing = [], []
    for m in eng.get("exactness") or []:
        med = m.get("ms_median") or {}
        if "c_core" not in med:
            missing.append(f"{m['model']}: {m.get('c_core_missing', 'not run')}")
            continue
        timed = m.get("c_core_vs_reference_timed") or {}
        rows.append({"model": m["model"], "c_ms": med["c_core"], "reference_ms": med["reference"], "xnnpack_ms": med["xnnpack"],
                     "vs_xnnpack": med["c_core"] / med["xnnpack"], "vs_reference": med["c_core"] / med["reference"],
                     "reference_met": med["c_core"] < med["reference"],
                     "xnnpack_met": med["c_core"] <= C_INFER_VS_XNNPACK * med["xnnpack"],
                     "exact": timed.get("differ") == 0, "timed_images": timed.get("images")})
    if not rows:
        return {"met": None, "missing": missing, "why": "no C-core figures in engine_speed.json"
                + (" (" + "; ".join(missing) + ")" if missing else "")}
    met = all(r["reference_met"] and r["xnnpack_met"] and r["exact"] for r in rows)
    return {"met": met, "rows": rows, "missing": missing, "reference_met": all(r["reference_met"] for r in rows),
            "xnnpack_met": all(r["xnnpack_met"] for r in rows), "exact": all(r["exact"] for r in rows)}


def _num(v: float | None, unit: str = "", missing: str = "-") -> str:
    return missing if v is None else f"{v:.1f}{unit}"


def _verdict(v: bool | None) -> str:
    return {True: "**met**", False: "**NOT met**", None: "**no data**"}[v]


def goals(results: Path) -> tuple[dict, str]:
    def load(name):
        p = results / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None
    step_md = results / "device_step.md"
    a = step_speed(step_md.read_text() if step_md.exists() else None)
    b = accuracy_goal(load("accuracy"))
    c = exact_goal(load("engine_speed"))
    dv = device_goal(load("accuracy"))
    cs = c_step_goal(load("device_step"))
    ci = c_infer_goal(load("engine_speed"))
    lines = ["## Goals", "", "Verdicts computed from this run's numbers (bench/summary.py), not typed in.", ""]
    text = (f"(a) Our batch-1 update step (the numpy Trainer, every method) at least as fast as PyTorch eager and the LiteRT "
            f"training model: {_verdict(a['met'])}.")
    if a.get("rows"):
        text += " " + "; ".join(
            f"{r['method']}: ours {r['ours_ms']:.1f} ms vs PyTorch {_num(r['torch_ms'], ' ms')} (fastest thread count), "
            f"LiteRT {_num(r['litert_ms'], ' ms', 'not measured')}" for r in a["rows"]) + f". Against PyTorch alone: {_verdict(a['torch_met'])}"
        text += f"; against LiteRT: {_verdict(a['litert_met'])}."
    if a.get("why"):
        text += f" ({a['why']}.)"
    lines += [f"- {text}", ""]
    text = (f"(b) TinyTL-L+B within {100 * MAX_DROP:.0f} points of FT-Full at >= {MIN_RATIO:.0f}x less memory "
            f"(batch 8, paper's accounting): {_verdict(b['met'])}.")
    for d, g in (b.get("targets") or {}).items():
        if g.get("met") is None:
            text += f" {d}: no data."
        else:
            text += (f" {d}: FT-Full {100 * g['full']:.1f}%, L+B {100 * g['lb']:.1f}% ({-g['drop_points']:+.1f} points) at "
                     f"{g['memory_ratio']:.1f}x less memory -> {'met' if g['met'] else 'not met'}.")
    if b.get("why"):
        text += f" ({b['why']}.)"
    lines += [f"- {text}", ""]
    text = f"(c) int8 engine bit-exact with LiteRT's reference kernels: {_verdict(c['met'])}."
    for m in c.get("models") or []:
        e, d = m["exact_float_vs_reference"], m["ours_vs_reference"]
        text += (f" {m['model']}: {e['differ']} of {m['images']} images differ with exact_float (max {e['max_lsb']} LSB); "
                 f"default float islands: {d['differ']} differ (max {d['max_lsb']} LSB).")
    if c.get("why"):
        text += f" ({c['why']}.)"
    lines += [f"- {text}", ""]
    text = (f"(d) On-device batch-1 learning (simulator, int8 forward) within {100 * MAX_DEVICE_GAP:.0f} points of PyTorch "
            f"batch-1 with the same start, steps and learning rate (means over the data orders): {_verdict(dv['met'])}.")
    for r in dv.get("rows") or []:
        if r.get("accuracy") is None or r.get("twin") is None:
            text += f" {r['method']}: no data."
        else:
            text += (f" {r['method']}: device {100 * r['accuracy']:.1f}% vs PyTorch {100 * r['twin']:.1f}% (mean of "
                     f"{len(r['orders'])} orders), largest gap of one order {100 * r['max_abs_gap']:.1f} points"
                     + (f" (PyTorch float64 vs float32, same order: up to {100 * r['max_abs_f64_gap']:.1f})" if r.get("max_abs_f64_gap") is not None else "")
                     + ".")
    if dv.get("why"):
        text += f" ({dv['why']}.)"
    lines += [f"- {text}", ""]
    text = (f"(e) The C core's batch-1 update step (the compiled program) at least {C_STEP_VS_TORCH:.0f}x faster than PyTorch "
            f"eager at 1 thread, and no slower than LiteRT's training model (TinyTL-B): {_verdict(cs['met'])}.")
    for r in cs.get("rows") or []:
        text += (f" {r['method']}: C {r['c_ms']:.2f} ms vs PyTorch 1 thread {_num(r['torch1_ms'], ' ms')} "
                 f"({'-' if r['speedup_vs_torch1'] is None else format(r['speedup_vs_torch1'], '.2f')}x faster"
                 f"{'' if r['torch_met'] is None else ', met' if r['torch_met'] else ', not met'}), "
                 f"LiteRT {_num(r['litert_ms'], ' ms', 'not measured')}"
                 f"{'' if r['litert_met'] is None else ' (met)' if r['litert_met'] else ' (not met)'}; parameters equal the "
                 f"program on numpy's bit for bit: {'yes' if r['same_as_numpy'] else 'no'}.")
    for mm in cs.get("missing") or []:
        text += f" {mm.split(':')[0]}: no C-core figure ({mm.split(': ', 1)[-1][:200]})."
    if cs.get("rows"):
        text += f" Against PyTorch: {_verdict(cs['torch_met'])}; against LiteRT: {_verdict(cs['litert_met'])}."
    if cs.get("why"):
        text += f" ({cs['why']}.)"
    lines += [f"- {text}", ""]
    text = (f"(f) The C core's int8 inference (batch 1) faster than LiteRT's reference kernels and within "
            f"{C_INFER_VS_XNNPACK:.0f}x of XNNPACK, byte-equal to the reference kernels: {_verdict(ci['met'])}.")
    for r in ci.get("rows") or []:
        text += (f" {r['model']}: C {r['c_ms']:.2f} ms = {r['vs_reference']:.2f}x the reference kernels' {r['reference_ms']:.2f} ms, "
                 f"{r['vs_xnnpack']:.1f}x XNNPACK's {r['xnnpack_ms']:.2f} ms; outputs "
                 f"{'byte-equal' if r['exact'] else 'DIFFER'} on {r['timed_images']} timed images.")
    if ci.get("rows"):
        text += (f" Faster than reference: {_verdict(ci['reference_met'])}; within {C_INFER_VS_XNNPACK:.0f}x of XNNPACK: "
                 f"{_verdict(ci['xnnpack_met'])}; exact: {_verdict(ci['exact'])}.")
    if ci.get("why"):
        text += f" ({ci['why']}.)"
    lines += [f"- {text}", ""]
    return {"a": a, "b": b, "c": c, "d": dv, "e": cs, "f": ci}, "\n".join(lines)


def write(results: Path, timings: dict[str, float], machine: str, out: Path = ROOT / "BENCHMARKS.md",
          reruns: dict | None = None) -> str:
    """reruns: {name: {"seconds": s, "machine": line}} of benchmarks re-run alone (`--only`) after the full run that
    `timings` and `machine` describe; their sections come from the re-run, and the header says so."""
    total = sum(timings.values())
    parts = ["# Benchmarks", "", f"Machine: {machine}.", "",
             f"Written by `python -m bench` (`make bench`) at the end of a full run: every figure below "
             + ("not marked otherwise " if reruns else "") + f"was measured in that one run, {total / 60:.1f} min in all ("
             + ", ".join(f"{n} {s / 60:.1f} min" for n, s in timings.items())
             + "). Full tables, notes and sizes: `bench/results/NAME.md`; numbers: `bench/results/NAME.json`.", ""]
    if reruns:
        by_machine: dict[str, list[str]] = {}
        for n, r in reruns.items():
            by_machine.setdefault(r["machine"], []).append(n)
        for line, names in by_machine.items():
            parts += ["Re-run alone afterwards (`python -m bench " + " ".join(f"--only {n}" for n in names) + f"`; {line}): "
                      + ", ".join(f"{n} ({reruns[n]['seconds'] / 60:.1f} min)" for n in names)
                      + ". Those sections, and the goals computed from them, come from that run.", ""]
        timings = timings | {n: r["seconds"] for n, r in reruns.items()}
    order = {n: i for i, n in enumerate(ABOUT)}
    timings = {n: timings[n] for n in sorted(timings, key=lambda n: order.get(n, len(order)))}
    verdicts, goal_md = goals(results)
    parts += [goal_md]
    for name in [n for n in timings if (results / f"{n}.md").exists() or n in ABOUT]:
        md_path = results / f"{name}.md"
        what, keys = ABOUT.get(name, (name, (0,)))
        parts += [f"## {name}", "", f"{what[0].upper()}{what[1:]}. Details: [bench/results/{name}.md](bench/results/{name}.md).", ""]
        if not md_path.exists():
            parts += ["(no result file in this run)", ""]
            continue
        tabs = captioned(md_path.read_text())
        for k in keys:
            if k < len(tabs):
                caption, lines = tabs[k]
                parts += ([caption, ""] if caption and len(caption) <= CAPTION_MAX else []) + lines + [""]
        if name == "accuracy" and (results / "accuracy_memory.png").exists():
            parts += ["![accuracy vs memory](bench/results/accuracy_memory.png)", ""]
    text = "\n".join(parts).rstrip() + "\n"
    out.write_text(text)
    (results / "goals.json").write_text(json.dumps(verdicts, indent=1, default=float) + "\n")
    return text
