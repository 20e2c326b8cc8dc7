"""Weights-only checkpoints: one .pt (loadable with torch.load(weights_only=True)) plus a JSON beside it.

The .pt holds plain data only (tensors, strings, numbers, lists, dicts): the model spec, the
preprocessing, the class names and the state dict, so nothing in it executes code on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .models import MobileNet, ModelSpec, build_model

FORMAT = "tinytl-checkpoint"
VERSION = 1


def atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder, fsync, then rename: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: Path) -> Any:
    """torch.load restricted to plain data; a damaged or foreign file is a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # unpickling refused, truncated zip, ...
        raise UserError(f"{path}: not a readable weights-only checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def save_checkpoint(path: Path, model: MobileNet, *, preprocess: dict, classes: list[str], meta: dict[str, Any]) -> None:
    """model.pt (weights only) + model.json (the same metadata, human-readable, plus metrics)."""
    payload = {"format": FORMAT, "version": VERSION, "model_spec": model.spec.to_dict(), "preprocess": preprocess,
               "classes": list(classes), "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    payload.update({k: v for k, v in meta.items() if k in ("stage", "method", "trainable", "dataset", "config")})
    save_torch(path, payload)
    save_json(Path(path).with_suffix(".json"), {k: v for k, v in payload.items() if k != "state_dict"} | meta)


def load_checkpoint(path: Path) -> tuple[MobileNet, dict[str, Any]]:
    """Rebuild the model from the spec stored in the checkpoint and load its weights (strict)."""
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} file (was it written by 'python -m train'?)")
    if data.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {data.get('version')}, this tool reads version {VERSION}")
    spec = ModelSpec.from_dict(data["model_spec"], f"{path}: model_spec")
    model = build_model(spec)
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{path}: weights do not match the model spec '{spec.name}' ({first[:200]})") from None
    return model, {k: v for k, v in data.items() if k != "state_dict"}
