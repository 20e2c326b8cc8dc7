"""report.md and PNGs of a simulated run (or of a refused plan): memory over the step, accuracy over steps.

The memory picture is the plan itself: every buffer of the step a rectangle, x = its lifetime (steps
first..last), y = its bytes in the arena (offset..offset+size), coloured by kind; the arena's peak (and the
budget) as horizontal lines, the step with the most live bytes as a vertical line. Below it, live bytes per
step. `timeline()` is the data both are drawn from, so a test can check it against the planner.
"""
from __future__ import annotations

import json
from pathlib import Path

from device import Plan, live_bytes_timeline, peak_step

KINDS = ("activation", "saved", "mask", "grad", "optimizer", "param", "scratch")
COLORS = {"activation": "#4c72b0", "saved": "#dd8452", "mask": "#55a868", "grad": "#c44e52", "optimizer": "#8172b3",
          "param": "#937860", "scratch": "#da8bc3"}


def timeline(plan: Plan, region: str) -> dict:
    """{'bars': [(name, kind, layer, first, last, offset, size)], 'live': bytes per step, 'peak': arena bytes
    (max offset + size), 'peak_step': step with the most live bytes, 'live_at_peak': buffers there}."""
    bars = [(b.name, b.kind, b.layer, b.first, b.last, plan.offsets[b.name], b.size)
            for b in plan.buffers if b.region == region and b.size]
    step, live = peak_step(plan, region)
    return {"bars": bars, "live": live_bytes_timeline(plan, region),
            "peak": max((o + s for *_, o, s in bars), default=0), "peak_step": step, "live_at_peak": live}


def memory_png(plan: Plan, region: str, path: Path, budget: int | None = None, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    t = timeline(plan, region)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for _, kind, _, first, last, off, size in t["bars"]:
        ax.broken_barh([(first, last - first + 1)], (off / 1024, size / 1024), facecolors=COLORS.get(kind, "grey"),
                       edgecolor="black", linewidth=0.2)
    ax.axhline(t["peak"] / 1024, color="red", lw=1.2, label=f"arena peak {t['peak'] / 1024:.1f} KB")
    if budget is not None:
        ax.axhline(budget / 1024, color="black", ls="--", lw=1.2, label=f"budget {budget / 1024:.1f} KB")
    ax.axvline(t["peak_step"], color="red", ls=":", lw=1)
    ax.set_ylabel(f"{region} offset (KB)")
    handles = [Patch(color=COLORS[k], label=k) for k in KINDS if any(b[1] == k for b in t["bars"])]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="upper left", ncol=3)
    ax.set_title(title or f"memory of one update step ({len(t['bars'])} buffers)")
    ax2.plot(range(len(t["live"])), [v / 1024 for v in t["live"]], color="black", lw=1)
    ax2.axvline(t["peak_step"], color="red", ls=":", lw=1, label=f"most live: step {t['peak_step']}")
    ax2.set_ylabel("live KB")
    ax2.set_xlabel("step of the update (forward ops, loss, backward ops, optimizer)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_png(curve: list[tuple[int, float, float]], path: Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o")
    ax.set_xlabel("updates (batch 1)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or "accuracy over steps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KB"


def _engine_line(r: dict) -> str:
    """Who ran the step and what it allocated, measured (not planned)."""
    eng = r.get("engine", "numpy (Trainer)")
    if eng not in ("native", "numpy"):
        return f"Engine: {eng} (this bundle's step is not compiled into a program; buffers outside the plan exist)."
    heap = r.get("heap_bytes_per_step")
    who = "the C core (device/native)" if eng == "native" else "the numpy reference of the program"
    return (f"Engine: the compiled step program ({len(r['trainer'].program.instrs)} instructions) on {who}: it "
            f"reads frozen weights where they sit in the read-only model buffer and writes only the arena "
            f"({r['plan'].peak[r['region']]:,} bytes, the plan's peak, handed to it exactly)"
            + (f"; heap allocated by the host during one step, measured with tracemalloc: {heap:,} bytes." if heap is not None else "."))


def write_run_report(r: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p, plan, region, cfg = r["profile"], r["plan"], r["region"], r["config"]
    memory_png(plan, region, out / "memory.png", r["budget"], f"{p.name}: one update step, {region} arena")
    accuracy_png(r["curve"], out / "accuracy.png", f"{p.name}: on-device learning, batch 1")
    t = timeline(plan, region)
    kinds: dict[str, int] = {}
    for _, k, _, _, _, _, s in t["bars"]:
        kinds[k] = kinds.get(k, 0) + s
    m = r["macs"]
    lines = [f"# Simulated on-device learning: {p.name}", "",
             f"bundle `{r['bundle']}` ({r['method']}), trainables: {cfg.trainables}"
             + (f", last {cfg.last_k} units" if cfg.last_k is not None else "")
             + f"; {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, {cfg.steps} steps, seed {cfg.seed}", "",
             f"profile `{p.path}`: {p.description}", "", "## Memory (1 KB = 1024 bytes)", "",
             "| region | used | budget | on the chip | reserved |", "|---|---:|---:|---:|---:|",
             f"| {region} (update step arena) | {_kb(plan.peak[region])} | {_kb(r['budget'])} | {_kb(p.memory[region])} | "
             f"{_kb(p.reserved.get(region, 0))} |",
             f"| {p.weight_region} (frozen int8 weights, read-only) | {_kb(r['weights_bytes'])} | "
             f"{_kb(p.budgets[p.weight_region])} | {_kb(p.memory[p.weight_region])} | {_kb(p.reserved.get(p.weight_region, 0))} |",
             "", f"The plan was checked against the budget before the first step; the run used an arena of "
                 f"{r['arena_bytes']:,} bytes (the budget on an MCU; the plan plus a guard zone on a board); bytes past "
                 f"the plan's peak held a canary: "
                 f"{'intact' if r['canary_ok'] else 'OVERWRITTEN'}. Flash image SHA-256 unchanged: yes.", "",
             _engine_line(r), "",
             f"Buffers: {len(t['bars'])}; sum by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())), "",
             f"Most live bytes at step {t['peak_step']}: {sum(b.size for b in t['live_at_peak']):,}; largest there:", "",
             "| bytes | buffer | kind | layer |", "|---:|---|---|---|"]
    lines += [f"| {b.size:,} | `{b.name}` | {b.kind} | {b.layer} |" for b in t["live_at_peak"][:8]]
    lines += ["", "![memory over one update step](memory.png)", "", "## Time and energy (estimates)", "",
              f"MACs per step: forward {m['forward']:,}, backward {m['backward']:,}, total {m['total']:,}. "
              f"At {p.int8_macs_per_s:.3g} MAC/s ({p.clock_mhz:g} MHz): **{1e3 * r['step_seconds_est']:.1f} ms per step**"
              + (f", **{r['step_mj_est']:.1f} mJ per step** at {p.power_mw:g} mW" if r["step_mj_est"] is not None else "")
              + f". (Host: {r['host_ms_per_step']:.1f} ms per step in the simulator.) The rate is the profile's nominal "
                "int8 MAC rate; the float32 backward is counted at the same rate, so this is a lower bound on an MCU "
                "without a fast FPU.", "", "## Accuracy", "",
              f"Top-1 on {r['eval_samples']} samples of the {r['eval_source']}:", "", "| step | accuracy | loss (recent) |",
              "|---:|---:|---:|"]
    lines += [f"| {s} | {a:.4f} | {l:.4f} |" for s, a, l in r["curve"]]
    lines += ["", "![accuracy over steps](accuracy.png)", "", "## Power loss", ""]
    if r["events"]:
        lines += [f"{len(r['events'])} cut(s), {r['boots']} boots; each resumed from the last good checkpoint:", ""]
        lines += [f"- {e['message']} -> resumed from step {e['resumed_from']}" for e in r["events"]]
    else:
        lines.append("none injected (`--power-loss-at STEP[:PHASE]|random`)")
    lines += ["", f"Checkpoints readable at the end: {', '.join(r['checkpoints']) or 'none'}", ""]
    lines += _emulated_section(r.get("emulated"), p)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    summary = {"profile": p.name, "bundle": r["bundle"], "method": r["method"], "trainables": cfg.trainables, "steps": cfg.steps,
               "region": region, "peak_bytes": plan.peak[region], "budget_bytes": r["budget"], "weights_bytes": r["weights_bytes"],
               "final_accuracy": r["curve"][-1][1], "eval_samples": r["eval_samples"], "curve": [[st, a, None if l != l else l] for st, a, l in r["curve"]],  # NaN: no loss yet
               "step_ms_est": 1e3 * r["step_seconds_est"], "host_ms_per_step": r["host_ms_per_step"], "power_losses": len(r["events"]),
               "engine": r.get("engine"), "heap_bytes_per_step": r.get("heap_bytes_per_step"), "emulated": r.get("emulated")}
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")  # the numbers above, for scripts
    return path


def _emulated_section(em: dict | None, p) -> list[str]:
    """The firmware image and what the emulated chip measured (firmware_sim/firmware.py, emulated.py)."""
    if not em:
        return []
    lines = ["## On the emulated MCU", "",
             f"The update step ran as a {em['cpu']} firmware image (`{em['firmware']}`) in Unicorn, with only the "
             f"profile's flash (read + execute) and SRAM (read + write) mapped; any other access would have stopped the run."]
    if em.get("prefix"):
        n = em["prefix"]["steps"]
        lines[-1] += (f" Steps 1..{n} ran on the emulated chip; there its state ({em['prefix']['buffers']} buffers) was "
                      f"bit-identical to the host C core's replay of the same steps, and the rest ran on the host core "
                      "(the same sources, IEEE single precision, no FMA). Accuracy points were measured on the host core.")
    lines += ["", f"Instructions per step: **{em['instructions_per_step']:,}** (counted on {em['counted_steps']} step(s) "
                  f"with block hooks); at {p.clock_mhz:g} MHz that is **>= {1e3 * em['step_seconds_lower_bound']:.0f} ms per "
                  "step**, a lower bound (one instruction per cycle, no flash wait states, no cache model). "
                  f"Stack high-water mark: {em['stack_used']:,} of {em['stack_bytes']:,} bytes.", "",
              "The linked image (bytes, from the ELF):", "", "| region | part | bytes |", "|---|---|---:|"]
    fc = em.get("flash_checkpoints")
    for region in ("flash", "sram"):
        for k, v in em["sizes"][region].items():
            lines.append(f"| {region.upper()} | {'**' + k + '**' if k in ('used', 'budget', 'free') else k} | {v:,} |")
    if fc and fc["per_hour_at_most"]:
        lines += ["", f"Checkpoints on the chip: two flash slots of {fc['slot_bytes']:,} bytes, written alternately "
                      f"(sequence number, CRC-32, header last: a cut during a write loses at most the newest); "
                      f"{fc['writes']:,} flash writes ({fc['bytes']:,} bytes) in this run. Every {fc['every_steps']} steps, "
                      f"at the lower-bound step time, that is at most {fc['per_hour_at_most']:,.1f} checkpoints per hour, "
                      f"{fc['slot_erases_per_hour_at_most']:,.1f} erase/program cycles per slot per hour: a "
                      f"{fc['endurance_cycles']:,}-cycle flash lasts at least {fc['hours_at_least']:,.0f} hours "
                      f"({fc['hours_at_least'] / 24:,.0f} days) of continuous learning."]
    return lines + [""]
