"""Self-test of a flashed slot, run ON the board before the slot becomes current (numpy + json + stdlib only).

    python -m device.selftest SLOT               # every check below, one line each, exit 1 at the first failure
    python -m device.selftest SLOT --only files  # just the SHA-256 of every shipped file

A slot (written by `python -m flash`) holds this runtime (device/, with the C core built for this board in
device/native/lib/<target>/ when we build for its architecture), the bundle (bundle/), a few int8 inputs, the
host's int8 outputs for them and the state after a few update steps on them (expected/), the target profile
(profile.json) and slot.json, the SHA-256 of every file. Checks, in order:
  1. python     this interpreter is 3.9+ and `device` is imported from the slot, not from elsewhere;
  2. files      every file listed in slot.json is present with its size and SHA-256;
  3. bundle     load_bundle: manifest format, the bundle's own SHA-256s, the trainable graph;
  4. plan       the memory plan of one update step (greedy planner) fits the profile's budget (and, as a
                warning only, the board's MemAvailable);
  5. inference  the int8 engine's outputs on the shipped inputs equal the host's, byte for byte
                (float islands in exact mode, so the result does not depend on the BLAS or the CPU);
  6. native     the engine that will train here: with the slot's C core, its int8 inference program's outputs
                equal the host's byte for byte, and a few update steps of the compiled step program leave
                parameters, optimizer state and losses equal to the host's (numpy engine) bit for bit; a
                slot without a C core runs those steps with the numpy engine (and says so). A shipped C core
                that does not load or disagrees fails the check.
Output lines are "ok <check>: ..." or "FAIL <check>: ..."; the host repeats the failing one.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

CHECKS = ("python", "files", "bundle", "plan", "inference", "native")
SLOT_FILE = "slot.json"


class SelfTestError(Exception):
    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


def check_python(slot: Path) -> str:
    if sys.version_info < (3, 9):
        raise SelfTestError("python", f"Python {sys.version.split()[0]} is too old: the runtime needs 3.9+")
    try:
        import device
    except ImportError as e:
        raise SelfTestError("python", f"{e} for {sys.executable} (the runtime needs numpy: use the venv, "
                                      "or install python3-numpy)") from None
    where = Path(device.__file__).resolve().parent
    if where != (slot / "device").resolve():
        raise SelfTestError("python", f"'device' is imported from {where}, not from the slot (set PYTHONPATH={slot})")
    return f"Python {sys.version.split()[0]}, runtime from {where}"


def check_files(slot: Path) -> str:
    from device.bundle import file_sha256  # after check_python: `device` must come from the slot
    try:
        listed = json.loads((slot / SLOT_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        raise SelfTestError("files", f"{slot / SLOT_FILE}: unreadable ({e})") from None
    total = 0
    for name, info in sorted(listed.items()):
        f = slot / name
        if not f.is_file():
            raise SelfTestError("files", f"{name}: missing (the copy was interrupted?)")
        if f.stat().st_size != info["bytes"] or file_sha256(f) != info["sha256"]:
            raise SelfTestError("files", f"{name}: SHA-256 mismatch with the host's (damaged in transit or edited)")
        total += info["bytes"]
    return f"{len(listed)} files, {total:,} bytes, SHA-256 as on the host"


def check_bundle(slot: Path):
    from device.bundle import BundleError, load_bundle
    try:
        b = load_bundle(slot / "bundle")
    except BundleError as e:
        raise SelfTestError("bundle", str(e)) from None
    return b, f"{b.manifest['model']}, method {b.manifest.get('method')}, labels {', '.join(b.labels)}"


def _mem_available() -> int | None:
    """Bytes the kernel says a new process can use without swapping (None off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_plan(slot: Path, bundle) -> str:
    from device.optim import OptimConfig
    from device.planner import BudgetError, check, check_budget
    from device.trainer import TrainError, Trainer
    profile = json.loads((slot / "profile.json").read_text())
    region = profile.get("region", "dram")
    try:
        tr = Trainer(bundle, OptimConfig(profile.get("optimizer", "adam")), region=region)
        check(tr.plan)
        check_budget(tr.plan, {region: int(profile["budget_bytes"])})
    except (BudgetError, TrainError, ValueError) as e:
        raise SelfTestError("plan", f"profile {profile['name']}: {str(e).splitlines()[0]}") from None
    peak = tr.plan.peak[region]
    msg = (f"update step arena {peak:,} bytes ({peak / 2**20:.2f} MB) <= {profile['name']} budget "
           f"{int(profile['budget_bytes']) / 2**20:.0f} MB")
    avail = _mem_available()
    if avail is not None and peak > avail:
        msg += f" (warning: only {avail / 2**20:.0f} MB available now)"
    return msg


def check_inference(slot: Path, bundle) -> str:
    import numpy as np
    from device.engine import Engine
    x = np.load(slot / "expected" / "inputs.npy", allow_pickle=False)
    want = np.load(slot / "expected" / "outputs.npy", allow_pickle=False)
    got = Engine(bundle.tflite_path, exact_float=True).run(x)
    if got.dtype != want.dtype or got.shape != want.shape:
        raise SelfTestError("inference", f"outputs are {got.dtype}{list(got.shape)}, the host's {want.dtype}{list(want.shape)}")
    diff = got != want
    if diff.any():
        k = int(np.argwhere(diff)[0][0])
        raise SelfTestError("inference", f"{int(diff.sum())} of {diff.size} output bytes differ from the host's "
                                         f"(first in sample {k}: got {got[k].tolist()}, host {want[k].tolist()})")
    return f"{len(x)} samples, {want.size} int8 outputs equal the host's byte for byte"


def _native_core(slot: Path, rec: dict):
    """The slot's C core (rec: slot.json's "native" record), loaded; None when the slot ships none."""
    from .native import NativeCore, host_target, library_path
    if not rec.get("library"):
        return None
    if rec.get("target") != host_target():
        raise SelfTestError("native", f"the slot's C core is built for {rec.get('target')}, this board is {host_target()}")
    lib = library_path()
    if lib.resolve() != (slot / rec["library"]).resolve():
        raise SelfTestError("native", f"the runtime looks for its C core at {lib}, the slot ships {rec['library']}")
    # load it in a child first: a damaged ELF can kill the loading process (SIGBUS), not just raise OSError
    r = subprocess.run([sys.executable, "-S", "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(lib)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        why = (f"the loader died of {signal.Signals(-r.returncode).name}" if r.returncode < 0 else
               (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1])
        raise SelfTestError("native", f"the shipped C core {rec['library']} does not load: {why}")
    try:
        return NativeCore(lib)
    except (OSError, AttributeError) as e:  # AttributeError: a library without the core's entry points
        raise SelfTestError("native", f"the shipped C core {rec['library']} does not load: {e}") from None


def _first_diff(want: dict, got: dict) -> str:
    """'' when every array of `want` is in `got` with the same dtype, shape and bytes; else the first difference."""
    import numpy as np
    for k, w in want.items():
        if k not in got:
            return f"'{k}' is missing"
        w, g = np.asarray(w).reshape(-1), np.asarray(got[k]).reshape(-1)
        if g.dtype != w.dtype or g.shape != w.shape:
            return f"'{k}' is {g.dtype}{list(g.shape)}, the host's {w.dtype}{list(w.shape)}"
        if w.size == 0:
            continue
        ne = (w.view(np.uint8).reshape(w.size, -1) != g.view(np.uint8).reshape(g.size, -1)).any(1)
        if ne.any():
            i = int(np.argmax(ne))
            return f"'{k}' differs in {int(ne.sum())} of {w.size} values (first [{i}]: {g[i]!r}, the host's {w[i]!r})"
    return ""


def check_native(slot: Path, bundle) -> str:
    import numpy as np
    from .kernels import UnsupportedOpError
    from .optim import OptimConfig
    from .step.infer import InferenceProgram
    from .step.program import ProgramError
    from .step.runner import ProgramTrainer
    rec = json.loads((slot / SLOT_FILE).read_text()).get("native") or {}
    core = _native_core(slot, rec)
    x = np.load(slot / "expected" / "inputs.npy", allow_pickle=False)
    said = []
    if core is not None:
        want = np.load(slot / "expected" / "outputs.npy", allow_pickle=False)
        try:
            InferenceProgram(bundle.tflite_path, engine="numpy")  # compiles: the ops the program covers
        except (ProgramError, UnsupportedOpError) as e:
            said.append(f"no int8 inference program for this model ({str(e).splitlines()[0]})")
        else:
            got = InferenceProgram(bundle.tflite_path, engine="native").run(x)
            if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                n = int((got != want).sum()) if got.shape == want.shape else got.size
                raise SelfTestError("native", f"the C core's int8 inference: {n} of {want.size} output bytes differ "
                                              "from the host's")
            said.append(f"{len(x)} samples' int8 outputs equal the host's byte for byte")
    f = slot / "expected" / "step.json"
    info = json.loads(f.read_text()) if f.exists() else {"skipped": "the slot holds no expected update steps"}
    if "skipped" in info:
        said.append(f"no step program for this bundle ({info['skipped']}): it trains with the numpy Trainer")
    else:
        opt = dict(info["optimizer"], betas=tuple(info["optimizer"]["betas"]))
        tr = ProgramTrainer(bundle, OptimConfig(**opt), region=info["region"], engine="native" if core else "numpy")
        losses = [tr.step(x[k % len(x)], label)[0] for k, label in enumerate(info["labels"])]
        with np.load(slot / "expected" / "step.npz", allow_pickle=False) as z:
            want = {k: z[k] for k in z.files}
        diff = _first_diff(want, {"loss": np.array(losses, np.float32), **tr.state()})
        if diff:
            raise SelfTestError("native", f"after {info['steps']} update steps on the {'C core' if core else 'numpy engine'}: "
                                          f"{diff}")
        said.append(f"{info['steps']} update steps ({info['optimizer']['name']}): losses, {len(tr.names)} parameters "
                    "and optimizer state equal the host's bit for bit")
    if core is None:
        return f"no C core in this slot ({rec.get('reason') or 'none shipped'}): ran the numpy engine: " + "; ".join(said)
    return f"C core {rec['library']}: " + "; ".join(said)


def run(slot: str | Path, only: tuple[str, ...] = CHECKS, out=print) -> None:
    """Run the checks in order; raise SelfTestError at the first failure."""
    slot = Path(slot).resolve()
    bundle = None
    for name in CHECKS:
        if name not in only and not (name == "bundle" and {"plan", "inference", "native"} & set(only)):
            continue
        try:
            if name == "python":
                msg = check_python(slot)
            elif name == "files":
                msg = check_files(slot)
            elif name == "bundle":
                bundle, msg = check_bundle(slot)
            elif name == "plan":
                msg = check_plan(slot, bundle)
            elif name == "inference":
                msg = check_inference(slot, bundle)
            else:
                msg = check_native(slot, bundle)
        except SelfTestError:
            raise
        except Exception as e:  # a damaged file can fail anywhere (reader, kernels): name the check, one line
            raise SelfTestError(name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        out(f"ok {name}: {msg}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.selftest", description=__doc__.split("\n\n")[0],
                                epilog="example:\n  PYTHONPATH=~/tinytl/current python -m device.selftest ~/tinytl/current",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slot", type=Path, help="the slot directory (holds device/, bundle/, expected/, slot.json)")
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="run only these checks")
    a = p.parse_args(argv)
    try:
        run(a.slot, tuple(a.only), out=lambda s: print(s, flush=True))
    except SelfTestError as e:
        print(f"FAIL {e.check}: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
