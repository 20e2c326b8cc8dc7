"""`python -m firmware_sim run`: the device runtime's learning loop, run on the host as a given target.

Steps:
  1. load the profile and the bundle; optionally re-plan it with another trainable set (`method`, last:k);
  2. plan the update step and check it against the profile BEFORE any step (refusal: SimRefused, with the
     peak, the budget, the buffers live at the peak and what would fit, computed);
  3. boot: the Trainer moves into an arena of exactly the budget (MCU; a board: plan + guard zone; bytes past
     the plan's peak hold a canary),
     frozen int8 weights into a read-only flash image (or DRAM);
  4. train with device/loop.py (same engine, same data order, same checkpoints as `python -m device train`)
     in segments between evaluations; a power cut (faults.py) loses the arena, the simulator reboots and the
     loop resumes from the last good checkpoint;
  5. after the run: flash unchanged, canary intact, every checkpoint readable.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device import (BudgetError, Bundle, LoopConfig, OptimConfig, Plan, Trainer, accuracy, checkpoint as ck, load_bundle,
                    load_labelled, to_model_input, train)

from . import faults
from .boot import budgets_for, build_trainer
from .cost import step_macs
from .flash_image import FlashWriteFault, check_weights, place_weights, weight_bytes
from .profiles import Profile
from .trainables import deepest, last_k, method_names, plan_for, plan_only, with_trainables

CANARY = 0xA5  # fills the arena past the plan's peak: a byte changed there is a write outside the plan


class SimRefused(RuntimeError):
    """The update step does not fit the target; the message explains and suggests what would."""

    def __init__(self, message: str, plan: Plan | None = None):
        super().__init__(message)
        self.plan = plan


@dataclass(frozen=True)
class SimConfig:
    steps: int = 200                    # updates, batch 1
    seed: int = 0                       # data order (as `python -m device train --seed`)
    optimizer: str = "sgd"              # sgd (momentum) | adam: adam keeps two state arrays per parameter
    lr: float = 1e-2                    # peak learning rate
    schedule: str = "cosine"
    trainables: str = "bundle"          # bundle | ft-last | tinytl-b | tinytl-lb | ft-full: what learns
    last_k: int | None = None           # partial update: only the last k units' trainables (plus the classifier)
    checkpoint_every: int = 50          # steps between checkpoints
    eval_every: int = 50                # steps between accuracy points (each also a checkpoint)
    eval_limit: int = 500               # held-out samples per accuracy point
    cuts: tuple = field(default_factory=tuple)  # faults.Cut, in order
    engine: str | None = None           # native (the step program on the C core) | numpy | None: native if built
    firmware: str | None = None         # an image folder (firmware_sim build): run on the emulated MCU (--target emulated)
    emulate_steps: int | None = None    # with firmware: the first N steps on the emulated MCU, checked bit-identical
                                        # against the host's C core there, the rest on the host core (None: all)

    def optim(self) -> OptimConfig:
        return OptimConfig(self.optimizer, lr=self.lr, schedule=self.schedule, total_steps=max(1, self.steps))


def select(bundle: Bundle, cfg: SimConfig) -> Bundle:
    """The bundle with the trainable set the config asks for."""
    if cfg.trainables == "bundle" and cfg.last_k is None:
        return bundle
    names = list(bundle.trainable) if cfg.trainables == "bundle" else method_names(bundle, cfg.trainables)
    if cfg.last_k is not None:
        names = last_k(names, cfg.last_k)
    return with_trainables(bundle, names)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def suggestions(bundle: Bundle, cfg: SimConfig, profile: Profile, weights: int) -> list[str]:
    """What would fit, computed by planning candidates with the device's own rules (best first)."""
    budgets = budgets_for(profile, weights)
    region = profile.step_region
    budget = budgets[region]
    names = list(select(bundle, cfg).trainable)
    out = []
    cands = []
    other = "sgd" if cfg.optimizer == "adam" else None
    if other:
        cands.append((f"the same trainables with --optimizer sgd (one state array, not two)", names, other))
    for method in ("tinytl-b", "ft-last"):
        if cfg.trainables != method and set(method_names(bundle, method)) != set(names):
            cands.append((f"--trainables {method}", method_names(bundle, method), cfg.optimizer))
    for text, ns, opt in cands:
        peak = plan_for(bundle, ns, OptimConfig(opt), region).peak[region]
        out.append((peak <= budget, peak, f"{text}: {'fits' if peak <= budget else 'needs'} {_kb(peak)}"))
    optim = OptimConfig(cfg.optimizer)
    depth = deepest(names, budget, lambda ns: plan_for(bundle, ns, optim, region).peak[region])
    if depth:
        k, peak, n_bias = depth
        out.append((True, peak, f"--trainable-blocks last:{k} (the same trainables in the last {k} units only: "
                                f"{n_bias} conv bias layers, plus the classifier): fits in {_kb(peak)}"))
    out.sort(key=lambda t: (not t[0], -t[1] if t[0] else t[1]))
    lines = [s for _, _, s in out]
    lines.append("a smaller resolution: see `python -m firmware_sim fit --checkpoint CKPT --profile "
                 f"{profile.name}` (re-converts the model at a few resolutions)")
    return lines


def plan_or_refuse(bundle: Bundle, cfg: SimConfig, profile: Profile, weights: int,
                   keep_flash: bytes | None = None) -> Trainer:
    """Build the target's trainer, or raise SimRefused before any step."""
    b = select(bundle, cfg)
    try:
        tr = build_trainer(b, profile, cfg.optim(), weights=weights, engine=cfg.engine, firmware=cfg.firmware,
                                  keep_flash=keep_flash)
    except BudgetError as e:
        what = {"ft-full": "FT-Full (every conv weight trains: it cannot be an int8 bundle, so this plan applies the "
                           "device's buffer rules to the bundle's graph with all weights float32 and trainable)"}.get(
            cfg.trainables, f"the {cfg.trainables if cfg.trainables != 'bundle' else bundle.manifest.get('method')} update"
            + (f" of the last {cfg.last_k} units" if cfg.last_k is not None else ""))
        msg = (f"refused on {profile.name}: {what} with {cfg.optimizer} does not fit, nothing was run.\n{e}\n"
               f"what would fit on {profile.name} ({_kb(budgets_for(profile, weights)[profile.step_region])} "
               f"for the step):\n" + "\n".join(f"  - {s}" for s in suggestions(bundle, cfg, profile, weights)))
        raise SimRefused(msg, e.plan) from None
    if plan_only(b):
        raise SimRefused(f"{cfg.trainables} fits {profile.name} ({_kb(tr.plan.peak[profile.step_region])} for the step), but "
                         f"{len(plan_only(b))} of its parameters (e.g. {plan_only(b)[0]}) have no trainable "
                         f"place in the int8 bundle: it was planned, not run", tr.plan)
    return tr


def _canary(tr) -> None:
    for r, mem in tr.arena.memory.items():
        mem[tr.arena.base[r] + tr.plan.peak[r]:] = CANARY


def _canary_ok(tr) -> bool:
    return all(bool((mem[tr.arena.base[r] + tr.plan.peak[r]:] == CANARY).all()) for r, mem in tr.arena.memory.items())


def boot(bundle: Bundle, cfg: SimConfig, profile: Profile, keep_flash: bytes | None = None):
    """Power on: a fresh arena (SRAM content is gone) and the weights in flash (an emulated chip's checkpoint
    slots as the cut left them: keep_flash)."""
    tr = plan_or_refuse(bundle, cfg, profile, weight_bytes(bundle), keep_flash)
    flash = place_weights(tr, profile)
    if hasattr(tr, "mcu"):
        tr.count_next = True                  # count the instructions of the first step after each boot
    _canary(tr)
    return tr, flash


def simulate(bundle_path: str | Path, profile: Profile, cfg: SimConfig, data: tuple, eval_data: tuple | None,
             ckpt_dir: str | Path, log=print) -> dict:
    """Run; returns the results dict the report is written from (see report.py)."""
    bundle = load_bundle(bundle_path)
    weights = weight_bytes(bundle)
    check_weights(bundle, weights, profile)
    tr, flash = boot(bundle, cfg, profile)   # refuses here, before any step
    if hasattr(tr, "measure_heap"):
        tr.measure_heap()                     # what the first step allocates beyond the arena, measured
    macs = step_macs(tr)
    ev = eval_data if eval_data is not None else (data[0][:cfg.eval_limit], data[1][:cfg.eval_limit])
    ev = (ev[0][:cfg.eval_limit], ev[1][:cfg.eval_limit])
    ev_q = (to_model_input(ev[0], bundle.manifest, "eval data"), ev[1])
    judge = tr
    if hasattr(tr, "mcu") and cfg.emulate_steps is not None:   # a prefix on the chip: every accuracy point on the
        judge = build_trainer(select(bundle, cfg), profile, cfg.optim(), weights=weights, engine="native")  # host core
    curve = [(0, accuracy(judge, *ev_q), float("nan"))]
    pending = list(cfg.cuts)
    events, boots, t0, host_steps, emulated, flash_log = [], 1, time.time(), 0, None, []
    ckpt_dir = Path(ckpt_dir)
    every = max(1, cfg.eval_every)
    while True:
        handed_over = False
        try:
            with faults.inject(pending[0] if pending else None, tr):
                while True:
                    found = ck.latest(ckpt_dir, expect_hash=ck.bundle_hash(tr.bundle))
                    at = int(found[2]["step"]) if found else 0
                    if at >= cfg.steps:  # done (perhaps just before a cut): the device holds the final checkpoint
                        if found:
                            tr.load_state(found[1])
                        break
                    end = min(cfg.steps, (at // every + 1) * every)
                    chip = hasattr(tr, "mcu")
                    if chip and cfg.emulate_steps is not None and at < cfg.emulate_steps:
                        end = min(end, cfg.emulate_steps)
                    r = train(tr.bundle, tr.cfg, LoopConfig(steps=end, seed=cfg.seed, checkpoint_dir=str(ckpt_dir),
                                                           checkpoint_every=cfg.checkpoint_every, log_every=0),
                              data=data, trainer=tr, log=lambda s: None)
                    host_steps += r["trained_steps"]
                    if (not curve or curve[-1][0] < end) and (end % every == 0 or end == cfg.steps):
                        curve.append((end, accuracy(tr, *ev_q), r["final_loss"]))
                        log(f"step {end}/{cfg.steps}: accuracy {curve[-1][1]:.4f}, loss {r['final_loss']:.4f}")
                    if chip and cfg.emulate_steps is not None and end >= cfg.emulate_steps and end < cfg.steps:
                        flash_log.append(_flash_use(tr))
                        emulated = _emulated(tr, profile, cfg, flash_log)
                        emulated["prefix"] = _check_prefix(bundle, cfg, profile, tr, data, end)
                        log(f"steps 1..{end} ran on the emulated {emulated['cpu']}: its state equals the host C core's "
                            f"replay bit for bit ({emulated['prefix']['buffers']} buffers); the rest runs on the host core")
                        st = tr.state()
                        cfg = dataclasses.replace(cfg, firmware=None)
                        tr, flash = boot(bundle, cfg, profile)
                        tr.load_state(st)
                        handed_over = True
                        break
            if not handed_over:
                break
        except faults.PowerLoss as e:
            flash.verify()
            found = ck.latest(ckpt_dir, expect_hash=ck.bundle_hash(tr.bundle))
            events.append({"cut": str(pending[0]), "message": str(e), "resumed_from": int(found[2]["step"]) if found else 0,
                           "canary_ok": _canary_ok(tr)})
            log(f"POWER LOSS: {e}; rebooting, resuming from the checkpoint of step {events[-1]['resumed_from']}")
            pending.pop(0)
            keep = None
            if hasattr(tr, "mcu"):
                keep = tr.mcu.ckpt_region()
                flash_log.append(_flash_use(tr))
            tr, flash = boot(bundle, cfg, profile, keep)
            boots += 1
    flash.verify()
    if hasattr(tr, "mcu"):
        flash_log.append(_flash_use(tr))
    emulated = _emulated(tr, profile, cfg, flash_log) or emulated
    seconds = time.time() - t0
    region = profile.step_region
    step_s = macs["total"] / profile.int8_macs_per_s
    readable = [p.name for p in sorted(ckpt_dir.glob("ckpt-*.npz")) if _readable(p)]
    return {
        "trainer": tr, "plan": tr.plan, "region": region, "budget": tr.budgets[region], "profile": profile,
        "arena_bytes": len(tr.arena.memory[region]) - 64,
        "bundle": str(bundle_path), "method": bundle.manifest.get("method"), "config": cfg, "curve": curve,
        "weights_bytes": flash.size, "flash_sha256": flash.sha256, "macs": macs, "step_seconds_est": step_s,
        "step_mj_est": step_s * profile.power_mw if profile.power_mw else None,
        "host_ms_per_step": 1e3 * seconds / max(1, host_steps), "engine": getattr(tr, "engine_name", "numpy (Trainer)"),
        "heap_bytes_per_step": getattr(tr, "heap_bytes", None), "events": events, "boots": boots,
        "canary_ok": _canary_ok(tr), "checkpoints": readable, "params": {n: v.copy() for n, v in tr.params.items()},
        "eval_samples": len(ev[1]), "eval_source": "eval data" if eval_data is not None else "training data (no --eval-data)",
        "emulated": emulated,
    }


def _check_prefix(bundle: Bundle, cfg: SimConfig, profile: Profile, chip, data: tuple, steps: int) -> dict:
    """Replay the first `steps` steps on the host's C core (same data order, same schedule) and compare every
    trainable-state buffer with the emulated chip's, bit for bit; EmulatorFault naming the first that differs."""
    import tempfile
    from .emulated import EmulatorFault
    host = build_trainer(select(bundle, cfg), profile, cfg.optim(), engine="native")
    with tempfile.TemporaryDirectory() as d:
        train(host.bundle, host.cfg, LoopConfig(steps=steps, seed=cfg.seed, checkpoint_dir=d, checkpoint_every=steps,
                                                log_every=0), data=data, trainer=host, log=lambda s: None)
    a, b = chip.state(), host.state()
    for k in a:
        if not np.array_equal(a[k], b[k]):
            raise EmulatorFault(f"after {steps} steps the emulated chip's '{k}' differs from the host C core's replay")
    return {"steps": steps, "buffers": len(a), "bit_identical": True}


def _flash_use(tr) -> tuple[int, int]:
    return tr.mcu.flash_writes, tr.mcu.flash_bytes


ENDURANCE = 10_000  # program/erase cycles of a typical MCU's internal flash (STM32F7/H7 datasheets: 10k)


def _emulated(tr, profile: Profile, cfg: SimConfig, flash_log: list) -> dict | None:
    """What the emulated chip measured: instructions per step, the lower-bound time at the profile's clock, the
    stack's high-water mark, the image's sizes, its flash checkpoints (and what they cost the flash's life at
    the run's checkpoint interval); FlashWriteFault if the image's flash changed."""
    if not hasattr(tr, "mcu"):
        return None
    if not tr.mcu.flash_unchanged():
        raise FlashWriteFault("the emulated chip's flash changed outside its checkpoint slots during the run")
    n = tr.step_instructions
    per = int(np.median(n)) if n else None
    step_s = per / (profile.clock_mhz * 1e6) if per else None
    ckpts_per_hour = 3600 / (step_s * max(1, cfg.checkpoint_every)) if step_s else None   # at most (a lower-bound time)
    return {"cpu": tr.mcu.meta["cpu"], "instructions_per_step": per, "counted_steps": len(n),
            "step_seconds_lower_bound": step_s, "stack_used": tr.mcu.stack_used(), "stack_bytes": tr.mcu.stack_bytes,
            "sizes": tr.mcu.meta["sizes"], "firmware": str(tr.mcu.dir),
            "flash_checkpoints": {"slot_bytes": tr.mcu.meta["checkpoint_slot_bytes"],
                                  "writes": sum(w for w, _ in flash_log), "bytes": sum(b for _, b in flash_log),
                                  "every_steps": cfg.checkpoint_every, "per_hour_at_most": ckpts_per_hour,
                                  "slot_erases_per_hour_at_most": ckpts_per_hour / 2 if ckpts_per_hour else None,
                                  "endurance_cycles": ENDURANCE,
                                  "hours_at_least": 2 * ENDURANCE / ckpts_per_hour if ckpts_per_hour else None}}


def _readable(p: Path) -> bool:
    try:
        ck.read(p)
        return True
    except ck.CheckpointError:
        return False


def load_data(path: str | Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return load_labelled(path, labels)
