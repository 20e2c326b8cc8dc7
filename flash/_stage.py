"""Build a slot on the host: the runtime, the bundle, expected outputs, the profile, and slot.json (SHA-256s).

A slot is what one flash puts on the board, self-contained and immutable:
    device/          the board runtime as source (numpy + LiteRT only; the `board` extra), and the C core
                     built for the board's architecture in device/native/lib/<target>/ (when we build for it)
    bundle/          the bundle, exactly the files its manifest lists
    expected/        inputs.npy: a few int8 model inputs; outputs.npy: the host engine's int8 outputs;
                     step.json + step.npz: a few update steps of the step program on those inputs (numpy
                     engine on the host): the losses and the parameters + optimizer state after them
    profile.json     the target profile's memory budget (the board reads JSON, not YAML)
    slot.json        SHA-256 and size of every file above, the bundle hash, where it came from
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np

from device import file_sha256

from ._ssh import FlashError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 4  # int8 inputs the board re-infers (a few, so the self-test takes a second)
STEPS = 3    # update steps the board repeats (the first only moves the zero-initialised head; later ones the biases)
LIB_DIR = "device/native/lib"  # where the slot's C core lives (device.native.library_path on the board)
# the board's platform.machine() (what device.native.host_target() reads there) -> the target we build
NATIVE_TARGETS = {"aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu",
                  "x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu"}


def load_profile(name_or_path: str) -> dict:
    """A Linux board profile from firmware_sim/profiles/ (the one home of device profiles) or a YAML path."""
    from firmware_sim import ProfileError, load_profile as load_sim_profile
    try:
        p = load_sim_profile(name_or_path)
    except ProfileError as e:
        raise FlashError(str(e)) from None
    if p.kind != "linux":
        raise FlashError(f"profile {p.name!r} is a {p.kind} target; flash deploys to Linux boards (rpi-*, jetson-*)")
    return {"name": p.name, "description": p.description, "region": "dram", "optimizer": "adam",
            "budget_bytes": p.budgets["dram"]}


def bundle_hash(bundle_dir: Path) -> str:
    """As device.checkpoint.bundle_hash: SHA-256 of manifest.json (which holds every file's SHA-256)."""
    return hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()


def expected_outputs(bundle_dir: Path, n: int = SAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded int8 inputs of the model's input shape and the host engine's outputs (exact float islands)."""
    from device import Engine
    m = json.loads((bundle_dir / "manifest.json").read_text())
    shape = (n, *m["input"]["shape"][1:])  # (N, H, W, C)
    x = np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)
    return x, Engine(bundle_dir / "inference.tflite", exact_float=True).run(x)


def expected_steps(bundle_dir: Path, x: np.ndarray, optimizer: str, region: str, steps: int = STEPS) -> tuple[dict, dict]:
    """(step.json, step.npz arrays): `steps` updates of the compiled step program run by the numpy engine, on
    inputs x[k % N] with labels k % classes. The C core runs the same program bit-identically (tests/test_step_*),
    so the board's C core must reproduce these arrays bit for bit. A bundle the program compiler does not cover
    yet gives {"skipped": why} (the board then trains with the numpy Trainer)."""
    from dataclasses import asdict

    from device import OptimConfig, ProgramError, ProgramTrainer, UnsupportedOpError, load_bundle
    cfg = OptimConfig(optimizer)
    b = load_bundle(bundle_dir)
    try:
        tr = ProgramTrainer(b, cfg, region=region, engine="numpy")
    except (ProgramError, UnsupportedOpError) as e:
        return {"skipped": str(e).splitlines()[0]}, {}
    labels = [k % len(b.labels) for k in range(steps)]
    losses = [tr.step(x[k % len(x)], labels[k])[0] for k in range(steps)]
    arrays = {"loss": np.array(losses, np.float32), **tr.state()}
    return {"optimizer": asdict(cfg), "region": region, "steps": steps, "labels": labels, "engine": "numpy"}, arrays


def native_target(machine: str) -> str | None:
    """The C core's build target for a board whose Python reports platform.machine() == machine (None: we
    do not build for it, e.g. armv7l: 32-bit Raspberry Pi OS, whose kernel may still say aarch64)."""
    return NATIVE_TARGETS.get(machine.lower())


def ship_native(slot: Path, target: str | None, why: str = "") -> dict:
    """Put the C core built for `target` into the slot (built on the host when missing or stale, cached by
    source hash); target None (or a failed build) ships none: the board runs the numpy engine. slot.json gains
    the library's SHA-256 and the "native" record, {"target", "library", "bytes"} or {"target", "library": None,
    "reason"}; its other entries stay as sealed (damage after sealing stays visible). Returns the new slot.json."""
    shutil.rmtree(slot / LIB_DIR, ignore_errors=True)
    meta = json.loads((slot / "slot.json").read_text())
    files = {k: v for k, v in meta["files"].items() if not k.startswith(LIB_DIR + "/")}
    rec: dict = {"target": target, "library": None, "reason": why}
    if target is not None:
        from device import native_build
        try:
            lib = native_build.build(target)
        except native_build.BuildError as e:
            rec["reason"] = f"the C core for {target} could not be built on the host ({str(e).splitlines()[0]})"
        else:
            rel = f"{LIB_DIR}/{target}/{lib.name}"
            (slot / rel).parent.mkdir(parents=True)
            shutil.copyfile(lib, slot / rel)
            files[rel] = {"sha256": file_sha256(slot / rel), "bytes": (slot / rel).stat().st_size}
            rec = {"target": target, "library": rel, "bytes": files[rel]["bytes"]}
    meta = meta | {"native": rec, "files": dict(sorted(files.items()))}
    (slot / "slot.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def slot_name(bhash: str) -> str:
    """Sorts by time: <UTC date>-<time>.<ms>-<bundle hash prefix>."""
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}-{bhash[:8]}"


def _runtime_files(d: str, names: list[str]) -> set[str]:
    """copytree filter for device/: no caches, and no C core builds (flash ships the board's one, ship_native)."""
    skip = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
    return skip | ({"lib"} if Path(d) == ROOT / "device" / "native" else set())


def stage_slot(bundle: str | Path, profile: dict, out: str | Path, native: str | None = None) -> dict:
    """Write a slot into `out` (a new directory); returns its slot.json. The bundle is verified first.
    native: the C core's target to ship (see ship_native); None ships none (flash adds the board's after connect)."""
    from device import BundleError, load_bundle
    src, out = Path(bundle), Path(out)
    try:
        b = load_bundle(src)
    except BundleError as e:
        raise FlashError(f"bundle check on the host failed: {e}") from None
    out.mkdir(parents=True)
    shutil.copytree(ROOT / "device", out / "device", ignore=_runtime_files)
    (out / "bundle").mkdir()
    for name in ["manifest.json", *b.manifest["files"]]:
        (out / "bundle" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, out / "bundle" / name)
    (out / "expected").mkdir()
    x, y = expected_outputs(out / "bundle")
    np.save(out / "expected" / "inputs.npy", x)
    np.save(out / "expected" / "outputs.npy", y)
    info, arrays = expected_steps(out / "bundle", x, profile.get("optimizer", "adam"), profile.get("region", "dram"))
    (out / "expected" / "step.json").write_text(json.dumps(info, indent=1) + "\n")
    if arrays:
        np.savez(out / "expected" / "step.npz", **arrays)
    (out / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
    seal(out, extra={"bundle_hash": bundle_hash(out / "bundle"), "bundle_source": str(src.resolve()),
                     "model": b.manifest["model"], "labels": b.labels, "profile": profile["name"]})
    return ship_native(out, native, why="" if native else "the slot was staged for no board architecture")


def seal(slot: Path, extra: dict | None = None) -> dict:
    """(Re)write slot.json with the SHA-256 and size of every file in the slot."""
    old = json.loads((slot / "slot.json").read_text()) if (slot / "slot.json").exists() else {}
    files = {p.relative_to(slot).as_posix(): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
             for p in sorted(slot.rglob("*")) if p.is_file() and p.name != "slot.json"}
    meta = {k: v for k, v in old.items() if k != "files"} | (extra or {}) | {"files": files}
    (slot / "slot.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def tar_bytes(slot: Path) -> bytes:
    """The slot as an uncompressed tar stream (int8 weights barely compress): files 0644, dirs 0755."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(slot.rglob("*")):
            info = tar.gettarinfo(str(p), arcname=p.relative_to(slot).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if p.is_dir() else 0o644
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def size_bytes(slot: Path) -> int:
    return sum(p.stat().st_size for p in slot.rglob("*") if p.is_file())
