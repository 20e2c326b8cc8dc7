"""`python -m firmware_sim run|fit|profiles`: the device runtime on the host as an MCU / Pi / Jetson."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from device import last_k_arg

EXAMPLES = {
    "run": "python -m firmware_sim run --bundle bundles/animal --profile mcu-256k --data animal_train.npz \\\n"
           "      --eval-data animal_test.npz --steps 200 --out runs/sim/mcu-256k --power-loss-at random",
    "build": "python -m firmware_sim build --bundle bundles/animal --profile stm32h743 --optimizer adam --lr 1e-3 \\\n"
             "      --trainable-blocks last:10 --out runs/fw/stm32h743",
    "fit": "python -m firmware_sim fit --checkpoint runs/pretrain/model.pt --profile mcu-256k --data animal-mnist",
    "profiles": "python -m firmware_sim profiles",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m firmware_sim", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run the device runtime on the host as a target (profile), under its memory budgets.",
                                epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()))
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog="example:\n  " + EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    s = cmd("run", "Batch-1 on-device learning of a bundle inside the target's memory; refuses what does not fit.")
    s.add_argument("--bundle", required=True, type=Path)
    s.add_argument("--profile", required=True, help="built-in name (see 'profiles') or a .yaml path")
    s.add_argument("--data", required=True, help="training data: .npz (x uint8 NHWC, y) or an image folder")
    s.add_argument("--eval-data", help="held-out data for the accuracy curve (default: the first training samples)")
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--out", type=Path, default=Path("runs/sim"), help="report.md, PNGs and checkpoints go here")
    s.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    s.add_argument("--lr", type=float, default=1e-2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--trainables", choices=("bundle", "ft-last", "tinytl-b", "tinytl-lb", "ft-full"), default="bundle",
                   help="what learns (default: as the bundle says); ft-full is planned with the device's rules and refused if too big")
    s.add_argument("--trainable-blocks", metavar="last:K", type=last_k_arg, help="only the last K units' trainables (plus the classifier)")
    s.add_argument("--checkpoint-every", type=int, default=50)
    s.add_argument("--eval-every", type=int, default=50)
    s.add_argument("--eval-limit", type=int, default=500)
    s.add_argument("--engine", choices=("native", "numpy"),
                   help="who runs the step program: the C core (default when built) or the numpy reference")
    s.add_argument("--target", choices=("host", "emulated"), default="host",
                   help="host: the step program in this process (C core or numpy); emulated: the firmware image on an "
                        "emulated Cortex-M (Unicorn) with only the profile's flash and SRAM mapped (default: host)")
    s.add_argument("--emulate-steps", type=int, metavar="N",
                   help="--target emulated: only the first N steps on the emulated chip (checked bit-identical against "
                        "the host C core there), the rest on the host core (default: every step on the chip)")
    s.add_argument("--firmware", type=Path, help="--target emulated: an image folder from 'build' (default: build one "
                                                 "into OUT/firmware with this run's trainables and optimizer)")
    s.add_argument("--power-loss-at", action="append", default=[], metavar="STEP[:PHASE]|random",
                   help="cut the power (repeatable); phases: forward, backward, update, ckpt-write, ckpt-fsync, "
                        "ckpt-rename, ckpt-cleanup")
    s = cmd("build", "Build the update step as a Cortex-M firmware image (ELF, .bin, map summary) sized by the profile; "
                     "the linker refuses what does not fit.")
    s.add_argument("--bundle", required=True, type=Path)
    s.add_argument("--profile", required=True, help="an mcu profile with a 'cpu' field (built-in name or .yaml path)")
    s.add_argument("--out", required=True, type=Path, help="the image folder (built in a temporary folder, then renamed)")
    s.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="(default: sgd)")
    s.add_argument("--lr", type=float, default=1e-2, help="(default: 1e-2; the host streams the schedule)")
    s.add_argument("--trainables", choices=("bundle", "ft-last", "tinytl-b", "tinytl-lb"), default="bundle",
                   help="what learns (default: as the bundle says)")
    s.add_argument("--trainable-blocks", metavar="last:K", type=last_k_arg, help="only the last K units' trainables (plus the classifier)")
    s.add_argument("--stack-bytes", type=int, default=None, help="SRAM for the stack (default: 3072; the run reports the high-water mark, about 2.7 KB)")
    s = cmd("fit", "Which configuration fits the target: planned peak per method and resolution, deepest partial update.")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--profile", required=True)
    s.add_argument("--data", help="calibration dataset (default: the checkpoint's)")
    s.add_argument("--resolutions", help="comma-separated px (default: the checkpoint's, 3/4 and 1/2 of it)")
    s.add_argument("--methods", default="ft-last,tinytl-b,tinytl-lb,ft-full")
    s.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    s.add_argument("--work", type=Path, help="keep the converted bundles here (default: a temp folder)")
    cmd("profiles", "List the built-in device profiles.")
    from .tflm import add_parser as add_tflm
    add_tflm(sub)
    return p


def cmd_run(a) -> None:
    from device import load_bundle, load_labelled
    from . import faults, report
    from .profiles import load_profile
    from .run import SimConfig, SimRefused, simulate
    profile = load_profile(a.profile)
    bundle = load_bundle(a.bundle)
    rng = np.random.default_rng(a.seed)
    cuts = tuple(sorted((faults.parse_cut(c, a.steps, rng) for c in a.power_loss_at), key=lambda c: c.step))
    cfg = SimConfig(steps=a.steps, seed=a.seed, optimizer=a.optimizer, lr=a.lr, trainables=a.trainables,
                    last_k=a.trainable_blocks, checkpoint_every=a.checkpoint_every, eval_every=a.eval_every,
                    eval_limit=a.eval_limit, cuts=cuts, engine=a.engine)
    if a.target == "emulated":
        from .firmware import build_firmware
        fw = a.firmware
        if fw is None:
            fw = a.out / "firmware"
            try:
                build_firmware(a.bundle, profile, cfg, fw, log=lambda s: print(s, flush=True))
            except Exception as e:
                if type(e).__name__ == "FirmwareRefused":
                    a.out.mkdir(parents=True, exist_ok=True)
                    (a.out / "refused.txt").write_text(str(e) + "\n")
                raise
        cfg = dataclasses.replace(cfg, firmware=str(fw), emulate_steps=a.emulate_steps)
    elif a.emulate_steps is not None or a.firmware is not None:
        raise ValueError("--emulate-steps and --firmware go with --target emulated")
    data = load_labelled(a.data, bundle.labels)
    ev = load_labelled(a.eval_data, bundle.labels) if a.eval_data else None
    ckpt = a.out / "checkpoints"
    if ckpt.exists() and any(ckpt.iterdir()):
        raise SystemExit(f"error: {ckpt} holds checkpoints of an earlier run; use another --out")
    try:
        r = simulate(a.bundle, profile, cfg, data, ev, ckpt, log=lambda s: print(s, flush=True))
    except SimRefused as e:
        a.out.mkdir(parents=True, exist_ok=True)
        if e.plan is not None:
            report.memory_png(e.plan, profile.step_region, a.out / "refused_memory.png",
                              title=f"{profile.name}: REFUSED plan")
        (a.out / "refused.txt").write_text(str(e) + "\n")
        raise
    path = report.write_run_report(r, a.out)
    em = r.get("emulated")
    if em:
        if em.get("prefix"):
            print(f"steps 1..{em['prefix']['steps']} on the emulated {em['cpu']}, bit-identical to the host C core's "
                  f"replay; steps {em['prefix']['steps'] + 1}..{a.steps} on the host C core")
        print(f"emulated {em['cpu']}: {em['instructions_per_step']:,} instructions per step ({em['counted_steps']} counted), "
              f">= {1e3 * em['step_seconds_lower_bound']:.0f} ms/step at {profile.clock_mhz:g} MHz (a lower bound: 1 "
              f"instruction/cycle, no wait states, no cache model); stack high-water {em['stack_used']:,} of "
              f"{em['stack_bytes']:,} bytes")
    print(f"{profile.name}: {r['region']} arena {r['plan'].peak[r['region']]:,} of {r['budget']:,} bytes, weights "
          f"{r['weights_bytes']:,} bytes in {profile.weight_region}; {1e3 * r['step_seconds_est']:.1f} ms/step estimated; "
          f"final accuracy {r['curve'][-1][1]:.4f}; {len(r['events'])} power loss(es) -> {path}")


def cmd_build(a) -> None:
    from .firmware import STACK_BYTES, build_firmware
    from .profiles import load_profile
    from .run import SimConfig
    cfg = SimConfig(optimizer=a.optimizer, lr=a.lr, trainables=a.trainables, last_k=a.trainable_blocks)
    build_firmware(a.bundle, load_profile(a.profile), cfg, a.out, stack=a.stack_bytes or STACK_BYTES,
                   log=lambda s: print(s, flush=True))


def cmd_fit(a) -> None:
    from .fit import fit_table
    from .profiles import load_profile
    profile = load_profile(a.profile)
    res = [int(x) for x in a.resolutions.split(",")] if a.resolutions else None
    text = fit_table(a.checkpoint, profile, resolutions=res, methods=a.methods.split(","), optimizer=a.optimizer,
                     data=a.data, work=a.work, log=lambda s: print(s, flush=True))
    print(text)


def cmd_profiles(a) -> None:
    from .profiles import list_profiles, load_profile
    for n in list_profiles():
        p = load_profile(n)
        mem = ", ".join(f"{r} {v / 1024:,.0f} KB (reserved {p.reserved[r] / 1024:,.0f})" for r, v in p.memory.items())
        print(f"{n:<22} {p.kind:<6} {mem}; {p.clock_mhz:g} MHz, {p.int8_macs_per_s:.3g} MAC/s"
              + (f", {p.power_mw:g} mW" if p.power_mw else ""))


def main(argv: list[str] | None = None) -> int:
    from device import BundleError, CheckpointError, DataError
    from .profiles import ProfileError
    from .run import SimRefused
    from .emulated import EmulatorFault
    from .firmware import FirmwareError, FirmwareRefused
    from .flash_image import FlashError
    a = _parser().parse_args(argv)
    try:
        from .tflm import cmd_export_tflm
        {"run": cmd_run, "build": cmd_build, "fit": cmd_fit, "profiles": cmd_profiles, "export-tflm": cmd_export_tflm}[a.cmd](a)
        return 0
    except (SimRefused, FirmwareRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except EmulatorFault as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except (ProfileError, FlashError, BundleError, CheckpointError, DataError, FirmwareError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
