"""What the update step costs as firmware: per method, optimizer and MCU profile, the linker's verdict on the
Cortex-M image (`firmware_sim.firmware.build_firmware`: FLASH and SRAM lengths are the profile's budgets), the
planned peak beside the linked SRAM and flash use, and the exact instructions of one update step on the emulated
Cortex-M7 and on a Cortex-M4 build of the same image (`firmware_sim.emulated.EmulatedTrainer`, Unicorn).

Method.
  * Bundles: the pretrained checkpoint with a fresh 10-class Animal-MNIST head (bench/_bundles.new_task_bundle; a
    random mcunet-tiny when runs/pretrain/model.pt is absent). FT-Last and TinyTL-B train on the TinyTL-B bundle
    (`--trainables ft-last` / the bundle's own set), TinyTL-L+B on the TinyTL-L+B bundle. SGD lr 1e-2, Adam lr 1e-3.
  * Needs: every configuration is linked once per cpu on a roomy profile (ROOMY bytes of SRAM and flash, the same
    origins): its map is the exact SRAM and flash the image needs, whatever the profile. Then it is linked on each
    profile (cortex-m7f, the profiles' own cpu, and the same profile with cpu cortex-m4f): linked or refused, and
    for a refusal the region and bytes over from the FirmwareRefused message. The bench checks that the linker's
    verdict agrees with the needs (used <= budget in both regions), and shows need - budget per region where the
    message's figure says less (it is the first section that spilled, and names one region).
  * Every linked ELF is checked to be its own build's (tt_arena = the plan's peak; the program, model and initial
    state blobs = the files the build wrote), and rebuilt (up to TRIES times) when not: concurrent builds sharing
    the zig cache can link another build's objects.
  * Deepest last:K: where a full TinyTL-B or TinyTL-L+B update is refused, the largest K whose `--trainable-blocks
    last:K` image links on that profile (Cortex-M7), found by linking (binary search over K; the peak grows with K),
    beside the planner's answer for the arena the linked image leaves (firmware_sim.trainables.deepest).
  * Instructions: the roomy image of each configuration (cpu M7 and M4) runs 1 warm-up step, then COUNTED counted
    steps (exact: Unicorn block hooks, each block's Thumb instructions decoded once); the median is reported. The
    count is a property of the program and the code, not of the profile: the profile only sets the linker script's
    lengths, so the image's code, program and constants are the same bytes at the same addresses. One count per
    (configuration, cpu) therefore serves every profile it links on (checked once per run: the same steps counted
    on a profile's own image give the same numbers).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from . import _bundles as B

METHODS = ("ft-last", "tinytl-b", "tinytl-lb")
BUNDLE_OF = {"ft-last": "tinytl-b", "tinytl-b": "tinytl-b", "tinytl-lb": "tinytl-lb"}  # which bundle a method trains on
PARTIAL = ("tinytl-b", "tinytl-lb")   # methods whose deepest last:K is searched where the full update is refused
OPTIMIZERS = {"sgd": 1e-2, "adam": 1e-3}
PROFILES = ("mcu-256k", "stm32f746", "stm32h743")
CPUS = ("cortex-m7f", "cortex-m4f")
ROOMY = 8 * 1024 * 1024   # bytes of SRAM and of flash of the image that measures needs and counts instructions
COUNTED = 2               # counted steps per (configuration, cpu), after 1 warm-up step
KB = 1024
CPU_LABEL = {"cortex-m7f": "M7", "cortex-m4f": "M4"}


@dataclasses.dataclass(frozen=True)
class Conf:
    method: str
    optimizer: str
    last_k: int | None = None

    @property
    def label(self) -> str:
        from train.sweep import LABEL
        return LABEL[self.method] + (f" last:{self.last_k}" if self.last_k is not None else "")

    def sim(self):
        from firmware_sim.run import SimConfig
        return SimConfig(optimizer=self.optimizer, lr=OPTIMIZERS[self.optimizer], trainables=self.method, last_k=self.last_k)


def _refusal(message: str) -> tuple[str | None, int | None]:
    """(region, bytes over) from the first line of a FirmwareRefused message (later lines are the planner's)."""
    head = message.splitlines()[0] if message else ""
    region = re.search(r"does not fit (\w+)", head)
    over = re.search(r"over by ([\d,]+) bytes", head)
    return (region.group(1).lower() if region else None), (int(over.group(1).replace(",", "")) if over else None)


BLOBS = {"tt_fw_program": "program.bin", "tt_fw_model": "model.bin", "tt_fw_init": "init.bin"}
TRIES = 3  # builds of one image at most, when the linked ELF is not what its build wrote (see stale())


def stale(out: Path, plan_peak: int) -> str | None:
    """Why the linked ELF in `out` is not the image its build wrote, or None: its arena must be the plan's peak and
    its flash blobs the program, model and initial state files beside it. (Concurrent `zig cc` builds sharing the
    zig cache can link objects compiled from another build's fw_config.h and blobs: seen while other builds ran.)"""
    from elftools.elf.elffile import ELFFile
    with open(out / "firmware.elf", "rb") as f:
        e = ELFFile(f)
        syms = {x.name: (x["st_value"], x["st_size"]) for x in e.get_section_by_name(".symtab").iter_symbols()}
        why = []
        if syms["tt_arena"][1] != plan_peak:
            why.append(f"arena {syms['tt_arena'][1]:,} B, plan {plan_peak:,} B")
        for sym, fname in BLOBS.items():
            want = (out / fname).read_bytes() if (out / fname).exists() else None
            a, b = syms[sym][0], syms[f"{sym}_end"][0]
            sec = next(x for x in e.iter_sections() if x["sh_addr"] <= a < x["sh_addr"] + x["sh_size"])
            got = sec.data()[a - sec["sh_addr"]:b - sec["sh_addr"]]
            if want is not None and got != want:
                why.append(f"{sym} differs from {fname}")
    return "; ".join(why) or None


def link(bundle_dir: Path, profile, conf: Conf, cpu: str, keep: bool = False) -> dict:
    """Build the image of `conf` for `profile` with `cpu`: {"linked": True, sizes, plan_peak[, dir]} or
    {"linked": False, region, over} (refused by the linker) or {"linked": None, error} (the build failed, or
    its ELF was not its build's TRIES times). "rebuilt": builds thrown away because their ELF was stale."""
    rebuilt, t0 = [], time.perf_counter()
    for _ in range(TRIES):
        r = _link_once(bundle_dir, profile, conf, cpu)
        if not r.get("stale"):
            break
        rebuilt.append(r.pop("stale"))
        shutil.rmtree(Path(r.pop("dir")).parent, ignore_errors=True)
    else:
        r = {"linked": None, "error": f"the linked ELF was not its build's {TRIES} times: {rebuilt[-1]}"}
    if r.get("dir") and not keep:
        shutil.rmtree(Path(r.pop("dir")).parent, ignore_errors=True)
    r["seconds"], r["rebuilt"] = time.perf_counter() - t0, rebuilt
    return r


def _link_once(bundle_dir: Path, profile, conf: Conf, cpu: str) -> dict:
    from firmware_sim.firmware import FirmwareRefused, build_firmware
    out = Path(tempfile.mkdtemp(dir=B.tmpdir(), prefix="fw-")) / "fw"
    try:
        meta = build_firmware(bundle_dir, dataclasses.replace(profile, cpu=cpu), conf.sim(), out, log=lambda s: None)
    except FirmwareRefused as e:
        shutil.rmtree(out.parent, ignore_errors=True)
        region, over = _refusal(str(e))
        return {"linked": False, "region": region, "over": over, "message": str(e).splitlines()[0]}
    except Exception as e:  # noqa: BLE001  (FirmwareError: a build that fails for another reason; reported, not fatal)
        shutil.rmtree(out.parent, ignore_errors=True)
        text = str(e).strip()
        return {"linked": None, "error": f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}"[:400]}
    r = {"linked": True, "plan_peak": meta["plan_peak"], "sizes": {k: meta["sizes"][k] for k in ("flash", "sram")},
         "dir": str(out)}
    why = stale(out, meta["plan_peak"])
    return r | ({"stale": why} if why else {})


def count(bundle, conf: Conf, fw_dir: str, xs, ys) -> dict:
    """Instructions of COUNTED update steps after 1 warm-up step on the emulated chip of image `fw_dir`."""
    from firmware_sim.emulated import EmulatedTrainer
    from firmware_sim.run import select
    t0 = time.perf_counter()
    try:
        tr = EmulatedTrainer(select(bundle, conf.sim()), conf.sim().optim(), Path(fw_dir))
        tr.step(xs[0:1], int(ys[0]))
        secs = []
        for k in range(1, 1 + COUNTED):
            tr.count_next = True
            secs.append(B.timed(tr.step, xs[k:k + 1], int(ys[k])))
    except Exception as e:  # noqa: BLE001  (EmulatorFault: a crash on the chip; reported in the table)
        return {"error": f"{type(e).__name__}: {str(e).strip()}"[:600], "seconds": time.perf_counter() - t0}
    n = list(tr.step_instructions)
    return {"instructions": n, "median": float(statistics.median(n)), "stack_used": tr.mcu.stack_used(),
            "stack_bytes": tr.mcu.stack_bytes, "flash_unchanged": tr.mcu.flash_unchanged(),
            "count_seconds": secs, "seconds": time.perf_counter() - t0}


def _roomy(profile):
    return dataclasses.replace(profile, name="roomy", memory={"sram": ROOMY, "flash": ROOMY}, reserved={})


def check(verdict: dict, need: dict, budgets: dict) -> dict:
    """The linker's verdict against the needs measured on the roomy image: {"over_need": {region: need - budget > 0},
    "agrees": linked iff nothing is over (None: no data), "over_agrees": the message's bytes over == need - budget
    of the region it names (None: linked, or no figure)}."""
    if verdict.get("linked") is None or not need.get("linked"):
        return {"over_need": None, "agrees": None, "over_agrees": None}
    over = {r: need["sizes"][r]["used"] - budgets[r] for r in ("sram", "flash")}
    over = {r: v for r, v in over.items() if v > 0}
    out = {"over_need": over, "agrees": bool(verdict["linked"]) == (not over), "over_agrees": None}
    if verdict["linked"] is False and verdict.get("over") is not None:
        out["over_agrees"] = verdict["over"] == over.get(verdict["region"])
    return out


def measure(quick: bool) -> dict:
    import numpy as np
    from device import load_bundle
    from device.optim import OptimConfig
    from firmware_sim import trainables as target
    from firmware_sim.profiles import load_profile
    from firmware_sim.run import select
    profiles = {n: load_profile(n) for n in (PROFILES[:1] if quick else PROFILES)}
    confs = ([Conf("tinytl-b", "sgd"), Conf("tinytl-b", "adam")] if quick
             else [Conf(m, o) for m in METHODS for o in OPTIMIZERS])
    bundles, src = {}, ""
    for kind in sorted({BUNDLE_OF[c.method] for c in confs}):
        d, _, _, src = B.new_task_bundle(kind)
        xs = B.quantized_inputs(d, 1 + COUNTED, "train")
        ys = np.asarray(B.dataset().train.y[:1 + COUNTED])
        bundles[kind] = (d, load_bundle(d), xs, ys)
    res = bundles[next(iter(bundles))][1].manifest["input"]["shape"][1]
    base = next(iter(profiles.values()))
    need: dict = {}     # (conf, cpu) -> link() on the roomy profile (kept: the counting image)
    links: dict = {}    # (conf, profile, cpu) -> link()
    searches = []

    def add(conf: Conf, only: tuple[str, ...]) -> None:
        d = bundles[BUNDLE_OF[conf.method]][0]
        for cpu in CPUS:
            need[conf, cpu] = link(d, _roomy(base), conf, cpu, keep=True)
            for p in only:
                links[conf, p, cpu] = link(d, profiles[p], conf, cpu)

    for c in confs:
        add(c, tuple(profiles))
    if not quick:  # the deepest last:K that links, where the full update is refused
        for c in [c for c in confs if c.method in PARTIAL]:
            for p in profiles:
                full = links[c, p, "cortex-m7f"]
                if full["linked"] is not False:
                    continue
                d, bundle = bundles[BUNDLE_OF[c.method]][:2]
                names = target.method_names(bundle, c.method)
                n_units = len(target.units(names))
                probes = {}

                def links_at(k: int) -> bool:
                    probes[k] = link(d, profiles[p], dataclasses.replace(c, last_k=k), "cortex-m7f")
                    return bool(probes[k]["linked"])
                lo, hi = (0, n_units) if links_at(0) else (None, 0)
                while lo is not None and hi - lo > 1:  # invariant: last:lo links, last:hi (hi = n_units: the full update) does not
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if links_at(mid) else (lo, mid)
                n = need[c, "cortex-m7f"]
                planner = None
                if n.get("linked"):
                    s = n["sizes"]["sram"]
                    arena_budget = profiles[p].budgets["sram"] - (s["used"] - s["arena"])
                    dp = target.deepest(names, arena_budget, lambda ns: target.plan_for(bundle, ns, OptimConfig(c.optimizer),
                                                                                         "sram").peak["sram"])
                    planner = {"arena_budget": arena_budget, "k": dp[0] if dp else None}
                searches.append({"method": c.method, "optimizer": c.optimizer, "profile": p, "units": n_units, "k": lo,
                                 "probes": {k: {kk: v for kk, v in r.items() if kk != "message"} for k, r in sorted(probes.items())},
                                 "full_refused": {"region": full["region"], "over": full["over"]}, "planner": planner})
                if lo is not None:
                    k_conf = dataclasses.replace(c, last_k=lo)
                    if (k_conf, "cortex-m7f") not in need:
                        add(k_conf, ())
                    for cpu in CPUS:
                        links[k_conf, p, cpu] = link(d, profiles[p], k_conf, cpu)
    for (conf, p, cpu), v in links.items():
        v.update(check(v, need[conf, cpu], profiles[p].budgets))
    counts = {}
    for (conf, cpu), n in need.items():
        if n.get("linked"):
            d, bundle, xs, ys = bundles[BUNDLE_OF[conf.method]]
            counts[conf, cpu] = count(bundle, conf, n["dir"], xs, ys)
        else:
            counts[conf, cpu] = {"error": "the roomy image did not build: " + str(n.get("error") or n.get("message"))}
    same = None  # the profile-independence check: one configuration counted again on a profile's own image
    for (conf, p, cpu), v in links.items():
        if cpu == "cortex-m7f" and conf.last_k is None and v["linked"] and "instructions" in counts.get((conf, cpu), {}):
            d, bundle, xs, ys = bundles[BUNDLE_OF[conf.method]]
            img = link(d, profiles[p], conf, cpu, keep=True)
            again = count(bundle, conf, img["dir"], xs, ys) if img.get("linked") else {"error": "did not link again"}
            same = {"config": conf.label, "optimizer": conf.optimizer, "profile": p, "cpu": cpu,
                    "roomy": counts[conf, cpu]["instructions"], "profile_image": again.get("instructions"),
                    "equal": again.get("instructions") == counts[conf, cpu]["instructions"]}
            break
    key = lambda c: {"method": c.method, "optimizer": c.optimizer, "last_k": c.last_k, "label": c.label}  # noqa: E731
    return {"source": src, "resolution": res, "quick": quick, "counted_steps": COUNTED, "roomy_bytes": ROOMY,
            "profiles": {n: {"cpu": p.cpu, "clock_mhz": p.clock_mhz, "budgets": p.budgets, "description": p.description}
                         for n, p in profiles.items()},
            "configs": [key(c) for c in dict.fromkeys(c for c, _ in need)],
            "needs": [{**key(c), "cpu": cpu, **{k: v for k, v in n.items() if k != "dir"}} for (c, cpu), n in need.items()],
            "links": [{**key(c), "profile": p, "cpu": cpu, **{k: v for k, v in r.items() if k != "message"}}
                      for (c, p, cpu), r in links.items()],
            "refusals": [{**key(c), "profile": p, "cpu": cpu, "message": r["message"]}
                         for (c, p, cpu), r in links.items() if r.get("linked") is False],
            "counts": [{**key(c), "cpu": cpu, **r} for (c, cpu), r in counts.items()],
            "deepest": searches, "same_count_check": same}


# ---- rendering ------------------------------------------------------------------------------------------------

def _kb(n) -> str:
    return "-" if n is None else f"{n / KB:,.1f}"


def _mi(n) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f} M"


def _find(rows: list[dict], **kw) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def _verdict(v: dict | None) -> str:
    """A profile cell: links (free SRAM, flash) or refused (the region and bytes over the linker's message gives;
    then the need - budget of each region over, when that says more: another region, or other bytes)."""
    if v is None:
        return "-"
    if v["linked"] is None:
        return f"build failed ({v['error'][:120]})"
    if v["linked"]:
        return f"**links** (SRAM {_kb(v['sizes']['sram']['free'])} KB free, flash {_kb(v['sizes']['flash']['free'])} KB free)"
    text = f"refused: {(v['region'] or '?').upper()}" + (f" over by {v['over']:,} B" if v["over"] is not None else "")
    need = v.get("over_need") or {}
    if need and (set(need) != {v["region"]} or need.get(v["region"]) != v["over"]):
        text += " (need - budget: " + ", ".join(f"{r.upper()} +{_kb(n)} KB" for r, n in sorted(need.items(), reverse=True)) + ")"
    return text


def _probe(v: dict) -> str:
    if v["linked"]:
        return "links"
    if v["linked"] is None:
        return "build failed"
    return f"refused ({(v.get('region') or '?').upper()})"


def render(r: dict) -> str:
    profs = list(r["profiles"])
    confs = [(c["method"], c["optimizer"], c["last_k"], c["label"]) for c in r["configs"]]
    links, needs, counts = r["links"], r["needs"], r["counts"]
    # 1. which fits where (Cortex-M7 image, the profiles' own cpu), with the needs and the instruction counts
    head = ("| method | optimizer | planned peak KB | SRAM need KB | flash need KB (M7) | "
            + " | ".join(f"{p} ({_kb(r['profiles'][p]['budgets']['sram'])} / {_kb(r['profiles'][p]['budgets']['flash'])} KB)" for p in profs)
            + " | instructions/step M7 | instructions/step M4 |")
    t1 = [head, "|---|---|---:|---:|---:|" + "---|" * len(profs) + "---:|---:|"]
    for m, o, k, label in confs:
        n7 = _find(needs, method=m, optimizer=o, last_k=k, cpu="cortex-m7f") or {}
        cells = []
        for p in profs:
            v7 = _find(links, method=m, optimizer=o, last_k=k, profile=p, cpu="cortex-m7f")
            v4 = _find(links, method=m, optimizer=o, last_k=k, profile=p, cpu="cortex-m4f")
            cell = _verdict(v7)
            if v7 and v4 and v4["linked"] != v7["linked"]:
                cell += f"; M4 image: {_verdict(v4)}"
            cells.append(cell)
        ins = []
        for cpu in CPUS:
            c = _find(counts, method=m, optimizer=o, last_k=k, cpu=cpu) or {}
            ins.append(_mi(c.get("median")) if "median" in c else "error")
        t1.append(f"| {label} | {o} | {_kb(n7.get('plan_peak'))} | "
                  f"{_kb(n7['sizes']['sram']['used']) if n7.get('linked') else '-'} | "
                  f"{_kb(n7['sizes']['flash']['used']) if n7.get('linked') else '-'} | " + " | ".join(cells) + " | "
                  + " | ".join(ins) + " |")
    # 2. per linked (configuration, profile): SRAM / flash used and free, ms per step at the profile's clock
    t2 = ["| method | optimizer | profile | clock MHz | planned peak KB | SRAM used KB (arena + stack + mailbox + data) | "
          "SRAM free KB | flash used KB M7 / M4 | flash free KB M7 / M4 | ms/step M7 (lower bound) | ms/step M4 (lower bound) |",
          "|---|---|---|---:|---:|---|---:|---|---|---:|---:|"]
    for m, o, k, label in confs:
        for p in profs:
            v7 = _find(links, method=m, optimizer=o, last_k=k, profile=p, cpu="cortex-m7f")
            v4 = _find(links, method=m, optimizer=o, last_k=k, profile=p, cpu="cortex-m4f")
            if not (v7 and v7["linked"]):
                continue
            mhz = r["profiles"][p]["clock_mhz"]
            s7 = v7["sizes"]
            f4 = v4["sizes"]["flash"] if v4 and v4["linked"] else None

            def ms(cpu: str, v) -> str:
                c = _find(counts, method=m, optimizer=o, last_k=k, cpu=cpu) or {}
                if not (v and v["linked"]):
                    return "does not link"
                return f"{c['median'] / (mhz * 1e3):,.1f}" if "median" in c else "error"
            t2.append(f"| {label} | {o} | {p} | {mhz:g} | {_kb(v7['plan_peak'])} | {_kb(s7['sram']['used'])} "
                      f"({_kb(s7['sram']['arena'])} + {_kb(s7['sram']['stack'])} + {s7['sram']['mailbox']} B + "
                      f"{s7['sram']['other (data, alignment)']} B) | {_kb(s7['sram']['free'])} | "
                      f"{_kb(s7['flash']['used'])} / {_kb(f4['used']) if f4 else '-'} | "
                      f"{_kb(s7['flash']['free'])} / {_kb(f4['free']) if f4 else '-'} | {ms('cortex-m7f', v7)} | {ms('cortex-m4f', v4)} |")
    # 3. the counts themselves
    t3 = ["| method | optimizer | cpu | instructions of the counted steps | median | spread | stack high-water / reserved B | "
          "links on | s per counted step (emulation) |", "|---|---|---|---|---:|---:|---|---|---:|"]
    for m, o, k, label in confs:
        for cpu in CPUS:
            c = _find(counts, method=m, optimizer=o, last_k=k, cpu=cpu) or {}
            on = [p for p in profs if (_find(links, method=m, optimizer=o, last_k=k, profile=p, cpu=cpu) or {}).get("linked")]
            where = ", ".join(on) if on else "none of these profiles (counted for reference)"
            if "median" not in c:
                t3.append(f"| {label} | {o} | {CPU_LABEL[cpu]} | error: {c.get('error', '?')[:200]} | - | - | - | {where} | - |")
                continue
            n = c["instructions"]
            t3.append(f"| {label} | {o} | {CPU_LABEL[cpu]} | {', '.join(f'{x:,}' for x in n)} | {c['median']:,.0f} | "
                      f"{max(n) - min(n):,} | {c['stack_used']:,} / {c['stack_bytes']:,} | {where} | "
                      f"{statistics.median(c['count_seconds']):.1f} |")
    # 4. deepest last:K
    t4 = ["| method | optimizer | profile | full update | units | deepest last:K that links (linker) | probes (K: verdict, the region the message names) | "
          "planner's deepest K for the arena left |", "|---|---|---|---|---:|---:|---|---:|"]
    for s in r["deepest"]:
        probes = ", ".join(f"{k}: {_probe(v)}" for k, v in s["probes"].items())
        full = _find(links, method=s["method"], optimizer=s["optimizer"], last_k=None, profile=s["profile"], cpu="cortex-m7f")
        pl = s["planner"]
        t4.append(f"| {s['method']} | {s['optimizer']} | {s['profile']} | {_verdict(full)} | {s['units']} | "
                  f"{s['k'] if s['k'] is not None else 'none (last:0 is refused)'} | {probes} | "
                  f"{(pl['k'] if pl['k'] is not None else 'none') if pl else '-'} |")
    disagree = [x for x in links if x.get("agrees") is False]
    off = [x for x in links if x.get("over_agrees") is False]
    both = [x for x in links if x.get("linked") is False and len(x.get("over_need") or {}) > 1]
    rebuilt = sum(len(x.get("rebuilt") or []) for x in links + needs) + sum(
        len(v.get("rebuilt") or []) for d in r["deepest"] for v in d["probes"].values())
    same = r["same_count_check"]
    flash_parts = next((n["sizes"]["flash"] for n in needs if n.get("linked")), {})
    flash_parts = ", ".join(k for k in flash_parts if k not in ("used", "budget", "free"))
    intro = (f"Bundles: {r['source']} for Animal-MNIST (10 classes), {r['resolution']} px; FT-Last and TinyTL-B on the "
             "TinyTL-B bundle, TinyTL-L+B on its own; SGD lr 1e-2, Adam lr 1e-3, batch 1. KB = 1024 bytes. Each profile "
             "cell is the linker's verdict on the Cortex-M7 image for that profile (`firmware_sim build`: the FLASH and "
             "SRAM lengths are the profile's budgets, in the header as SRAM / flash); free = budget - used. Planned peak: "
             "the step's arena (the plan). SRAM need: arena + stack reservation + mailbox + data; flash need: "
             f"{flash_parts}; both from the map of the same configuration linked with room to spare. Instructions per "
             f"step: median of {r['counted_steps']} update steps counted exactly after 1 warm-up step on the emulated "
             "chip (Unicorn), the Cortex-M7 image and its Cortex-M4 build.")
    timing = ("Linked images: where the SRAM and flash go, and one update step at the profile's clock as a LOWER BOUND: "
              "instructions / clock, i.e. one instruction per cycle, no flash wait states, no cache model (real parts add "
              "flash wait states behind their accelerator or cache, multi-cycle loads, multiplies, divides and FP ops, "
              "and pipeline stalls). The Cortex-M7 can dual-issue, so for it 1 instruction per cycle is an estimate "
              "rather than a strict floor. The M4 column is the Cortex-M4 build of the same configuration at the same "
              "clock (these profiles are M7 parts; M4 parts run at up to ~180 MHz: scale by the clock).")
    counted = (f"Instruction counts per (configuration, cpu), counted on a roomy image ({_kb(r['roomy_bytes'])} KB of "
               "SRAM and of flash) and reused for every profile the configuration links on: the program, code and "
               "constants are the same bytes at the same addresses whatever the profile (only the linker script's "
               "lengths differ). Spread: max - min over the counted steps (data-dependent branches). Stack: the painted "
               "stack's high-water mark on the emulated chip, against the fixed reservation the SRAM figures include.")
    deep = ("Deepest `--trainable-blocks last:K` (the method's trainables in the last K units only, plus the classifier) "
            "whose Cortex-M7 image links where the full update is refused; K found by linking (binary search: the peak "
            "grows with K, and the full update is last:units), beside the planner's deepest K for the arena the linked "
            "image leaves (SRAM budget - stack - mailbox - data; `firmware_sim.trainables.deepest`). Their rows in the "
            "tables above are linked on that profile only.")
    name = lambda x: f"{x['label']} {x['optimizer']} on {x['profile']} ({CPU_LABEL[x['cpu']]})"  # noqa: E731
    notes = ["- The linker is the judge: fits = the image linked. " + (
        "Every verdict (links / refused) agrees with the needs measured on the roomy image (used <= budget in both "
        "regions)." if not disagree else
        f"**{len(disagree)} verdict(s) disagree with the roomy image's needs**: " + "; ".join(map(name, disagree)) + ".")]
    if off or both:
        notes.append(
            "- The refusal message's figure is not always the region's overflow: firmware_sim reads the first "
            "'overflowed by N bytes' line of ld.lld, which is the overflow at the first section that spilled (later "
            "sections, e.g. the flash checkpoint slots, add more), and names one region when both overflow. The cells "
            "then add need - budget per region from the roomy image's map. "
            + (f"Bytes differ in {len(off)} refusal(s) (e.g. {name(off[0])}: message {off[0]['over']:,} B, need - budget "
               f"{off[0]['over_need'].get(off[0]['region'], 0):,} B)" if off else "")
            + (f"{'; ' if off else ''}both regions over in {len(both)}." if both else "."))
    if rebuilt:
        notes.append(f"- {rebuilt} build(s) were thrown away and rebuilt because the linked ELF was not the build's own "
                     "(its tt_arena size not the plan's peak, or a flash blob not the program/model/initial state written "
                     "beside it): concurrent `zig cc` builds sharing the zig cache (here: other firmware builds running on "
                     f"the machine) can link another build's objects. Every image measured here passed that check.")
    if same:
        notes.append(f"- Profile independence of the counts, checked: {same['config']} {same['optimizer']} on the "
                     f"{same['profile']} image counted {', '.join(f'{x:,}' for x in same['profile_image'] or [])} "
                     f"instructions, on the roomy image {', '.join(f'{x:,}' for x in same['roomy'])}: "
                     + ("equal." if same["equal"] else "**NOT equal**."))
    notes += ["- The counted section is the whole update step (forward, loss, backward, optimizer update) as the "
              "firmware's mailbox runs it; the host keeps the schedule and writes the sample. Unicorn does not enforce "
              "the CPU model's instruction set (QEMU's MPS2 boards do, in tests/test_firmware.py); the M4 image is "
              "compiled for cortex_m4+vfp4d16sp, so its counts are the M4 build's instruction stream.",
              "- SRAM used includes the fixed stack reservation (firmware_sim.firmware.STACK_BYTES); the measured "
              "high-water mark is in the counts table."]
    if r["quick"]:
        notes.append("- Quick mode: one profile, two configurations, no last:K search.")
    parts = [intro, "", *t1, "", timing, "", *t2, "", counted, "", *t3, ""]
    if r["deepest"]:
        parts += [deep, "", *t4, ""]
    return "\n".join(parts + ["Notes:", "", *notes, ""])


def run(quick: bool = False) -> str:
    r = measure(quick)
    B.write_json("firmware_cost", r)
    return render(r)
