"""The closing summary of `make demo`: each stage's headline number and where its report is.

    python -m bench.demo_summary --runs runs --results results --sim runs/sim/mcu-256k --seconds 900

Reads what the stages wrote (model.json, results.json, report.md, the LiteRT evaluation's output); a stage
that has not run is listed as missing, never invented.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _line(name: str, value: str, where: Path) -> str:
    return f"  {name:<40} {value:<48} {where}"


def summary(runs: Path, results: Path, sim: Path, seconds: float | None) -> str:
    out = [f"== demo finished" + (f" in {seconds / 60:.1f} min" if seconds else "") + ":"]
    pre = _json(runs / "pretrain" / "model.json")
    out.append(_line("pretrain (Fashion-MNIST)", f"test accuracy {pre['test_acc']:.4f}" if pre else "missing",
                     runs / "pretrain" / "model.pt"))
    accs = {}
    for j in sorted((runs / "adapt").glob("*/model.json")):
        d = _json(j)
        if d and "test_acc" in d:
            accs[j.parent.name] = (d["test_acc"], d.get("memory", {}).get("total_bytes"))
    if accs:
        show = ", ".join(f"{k} {a:.3f}" for k, (a, _) in accs.items() if k.endswith("-b8") and "litefresh" not in k)
        out.append(_line("adapt (Animal-MNIST, 6 methods)", f"{len(accs)} runs", results / "adapt.md"))
        out.append(f"    test accuracy at batch 8: {show}")
        full, lb = accs.get("ft-full-b8"), accs.get("tinytl-lb-b8")
        if full and lb and full[1] and lb[1]:
            out.append(f"    TinyTL-L+B {lb[0]:.3f} vs FT-Full {full[0]:.3f} ({100 * (lb[0] - full[0]):+.1f} points) "
                       f"at {full[1] / lb[1]:.1f}x less training memory (paper accounting, batch 8)")
        b1 = accs.get("tinytl-lb-b1")
        if b1 and b1[1]:
            out.append(f"    TinyTL-L+B at batch 1: {b1[0]:.3f} at {b1[1] / 1e6:.2f} MB")
    else:
        out.append(_line("adapt", "missing", results / "adapt.md"))
    rep = runs / "bundle" / "report.md"
    m = re.search(r"top-1 agreement \| ([0-9.]+)", rep.read_text()) if rep.exists() else None
    out.append(_line("convert (TinyTL-L+B, int8)", f"int8 vs float top-1 agreement {m.group(1)}" if m else "missing", rep))
    r = _json(sim / "results.json")
    if r:
        out.append(_line(f"on-device learning ({r['profile']}, batch 1)",
                         f"{r['steps']} steps, accuracy {r['final_accuracy']:.4f} on {r['eval_samples']}", sim / "report.md"))
        out.append(f"    {r['region']} arena {r['peak_bytes'] / 1024:.1f} of {r['budget_bytes'] / 1024:.1f} KB, flash weights "
                   f"{r['weights_bytes'] / 1024:.1f} KB, ~{r['step_ms_est']:.0f} ms/step on the target (MAC-rate estimate); "
                   f"plots {sim / 'memory.png'}, {sim / 'accuracy.png'}")
        em = r.get("emulated")
        if em:
            sram = em["sizes"]["sram"]
            prefix = em.get("prefix")
            out.append(f"    as a {em['cpu']} image (SRAM {sram['used']:,} of {sram['budget']:,} bytes linked): "
                       + (f"steps 1-{prefix['steps']} on the emulated chip, bit-identical to the host C core, the rest on "
                          "the host C core; " if prefix else "every step on the emulated chip; ")
                       + f"{em['instructions_per_step'] / 1e6:.1f} M instructions/step, >= "
                       f"{1e3 * em['step_seconds_lower_bound']:.0f} ms/step on the target (a lower bound)")
        elif r.get("engine"):
            heap = r.get("heap_bytes_per_step")
            out.append(f"    ran on the {'C core' if r['engine'] == 'native' else r['engine']} engine at {r['host_ms_per_step']:.1f} ms/step "
                       f"on this host" + (f", {heap:,} bytes of heap per step beyond the arena (measured)" if heap is not None else "")
                       + f"; {r['steps']} steps: as many as the accuracy needs to stop rising (curve in the report)")
    else:
        out.append(_line("on-device learning", "missing", sim / "report.md"))
    for name in ("tinytl-lb-full", "ft-full"):
        refused = sim.parent / name / "refused.txt"
        text = refused.read_text() if refused.exists() else ""
        m = re.search(r"peak \d+ bytes \(([0-9.]+ KB)\) > budget \d+ bytes \(([0-9.]+ KB)\)", text)
        value = f"planned {m.group(1)} > budget {m.group(2)}" if m else (text.splitlines()[0][:48] if text else "missing")
        if m and "by the linker" in text:
            value += ", by the linker"
        out.append(_line(f"refused on the MCU: {name}", value, refused))
    ev = sim / "litert_eval.txt"
    out.append(_line("merged .tflite under LiteRT", ev.read_text().strip() if ev.exists() else "missing", sim / "adapted.tflite"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo_summary", description="Summarize what `make demo` produced.",
                                epilog="example:\n  python -m bench.demo_summary --runs runs --results results --sim runs/sim/mcu-256k",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--sim", type=Path, default=Path("runs/sim/mcu-256k"))
    p.add_argument("--seconds", type=float, help="the demo's wall time")
    a = p.parse_args(argv)
    print(summary(a.runs, a.results, a.sim, a.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
