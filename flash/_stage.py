"""Build a slot on the host: the runtime, the bundle, expected outputs, the profile, and slot.json (SHA-256s).

A slot is what one flash puts on the board, self-contained and immutable:
    device/          the board runtime as source (numpy + LiteRT only; the `board` extra)
    bundle/          the bundle, exactly the files its manifest lists
    expected/        inputs.npy: a few int8 model inputs; outputs.npy: the host engine's int8 outputs
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

from device.bundle import file_sha256

from ._ssh import FlashError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 4  # int8 inputs the board re-infers (a few, so the self-test takes a second)


def load_profile(name_or_path: str) -> dict:
    """A Linux board profile from firmware_sim/profiles/ (the one home of device profiles) or a YAML path."""
    from firmware_sim.profiles import ProfileError, load_profile as load_sim_profile
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
    from device.engine import Engine
    m = json.loads((bundle_dir / "manifest.json").read_text())
    shape = (n, *m["input"]["shape"][1:])  # (N, H, W, C)
    x = np.random.default_rng(seed).integers(-128, 128, shape, dtype=np.int8)
    return x, Engine(bundle_dir / "inference.tflite", exact_float=True).run(x)


def slot_name(bhash: str) -> str:
    """Sorts by time: <UTC date>-<time>.<ms>-<bundle hash prefix>."""
    t = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}-{bhash[:8]}"


def stage_slot(bundle: str | Path, profile: dict, out: str | Path) -> dict:
    """Write a slot into `out` (a new directory); returns its slot.json. The bundle is verified first."""
    from device.bundle import BundleError, load_bundle
    src, out = Path(bundle), Path(out)
    try:
        b = load_bundle(src)
    except BundleError as e:
        raise FlashError(f"bundle check on the host failed: {e}") from None
    out.mkdir(parents=True)
    shutil.copytree(ROOT / "device", out / "device", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "bundle").mkdir()
    for name in ["manifest.json", *b.manifest["files"]]:
        (out / "bundle" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, out / "bundle" / name)
    (out / "expected").mkdir()
    x, y = expected_outputs(out / "bundle")
    np.save(out / "expected" / "inputs.npy", x)
    np.save(out / "expected" / "outputs.npy", y)
    (out / "profile.json").write_text(json.dumps(profile, indent=1) + "\n")
    return seal(out, extra={"bundle_hash": bundle_hash(out / "bundle"), "bundle_source": str(src.resolve()),
                            "model": b.manifest["model"], "labels": b.labels, "profile": profile["name"]})


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
