"""Crash-safe checkpoints of on-device learning: write temp, fsync, rename, fsync the folder; keep the previous.

A checkpoint is one .npz: the trainer's state (parameters, optimizer state, applied-update count) plus
'meta', a JSON document (uint8 bytes) with the bundle hash, the step (= data position: samples consumed),
the seed that fixes the data order, and the optimizer config. Files are named ckpt-<step:09d>.npz; a
rename is atomic, so a reader sees either the old or the new file, never half of one. `latest` returns the
newest readable checkpoint (falling back to the previous one if the newest is damaged, which a power cut
cannot cause but a bad SD card can).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

KEEP = 2     # checkpoints kept: the newest and the previous
PAGE = 4096  # bytes: the file is written a page at a time (what a power cut can tear)


class CheckpointError(ValueError):
    """A checkpoint that does not belong to this bundle or cannot be read; the message names the file."""


def bundle_hash(bundle) -> str:
    """SHA-256 of the bundle's manifest (which holds the SHA-256 of every bundle file)."""
    return hashlib.sha256((Path(bundle.path) / "manifest.json").read_bytes()).hexdigest()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_fault(step: int, phase: str, done: int, total: int) -> None:
    pass


def save(directory: str | Path, state: dict[str, np.ndarray], meta: dict[str, Any], *, on_phase=None) -> Path:
    """Write ckpt-<step>.npz: temp file (page by page), fsync, rename, fsync the folder, drop all but KEEP.
    on_phase(step, phase, done, total): the fault seam (as Trainer.on_phase), called with 'ckpt-write' before
    each page and after the last (done: bytes written), 'ckpt-fsync' before the fsync, 'ckpt-rename' before the
    rename and 'ckpt-cleanup' after it; a hook that raises stops the save there."""
    phase = on_phase or _no_fault
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    step = int(meta["step"])
    final = d / f"ckpt-{step:09d}.npz"
    tmp = d / f".{final.name}.tmp"
    arrays = dict(state)
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getbuffer()
    with open(tmp, "wb") as f:
        for at in range(0, len(data), PAGE):
            phase(step, "ckpt-write", at, len(data))
            f.write(data[at:at + PAGE])
        phase(step, "ckpt-write", len(data), len(data))
        f.flush()
        phase(step, "ckpt-fsync", 0, 1)
        os.fsync(f.fileno())
    phase(step, "ckpt-rename", 0, 1)
    os.replace(tmp, final)
    phase(step, "ckpt-cleanup", 0, 1)
    _fsync_dir(d)
    for old in sorted(d.glob("ckpt-*.npz"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return final


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    return arrays, meta


def latest(directory: str | Path, expect_hash: str | None = None) -> tuple[Path, dict, dict] | None:
    """(path, state, meta) of the newest readable checkpoint in `directory`, or None if there is none.
    expect_hash: refuse (CheckpointError) a checkpoint written for another bundle."""
    d = Path(directory)
    errors = []
    for p in sorted(d.glob("ckpt-*.npz"), reverse=True):
        try:
            state, meta = read(p)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if expect_hash is not None and meta.get("bundle_sha256") != expect_hash:
            raise CheckpointError(f"{p}: written for another bundle (bundle hash {str(meta.get('bundle_sha256'))[:12]}..., "
                                  f"this bundle is {expect_hash[:12]}...); use another --checkpoint-dir")
        return p, state, meta
    if errors:
        raise CheckpointError("; ".join(errors))
    return None
