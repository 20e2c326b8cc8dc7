"""Load and verify a bundle directory with numpy + json alone (never torch, never tensorflow).

Checks, in order: manifest format and version; every listed file present with its SHA-256 (a
mismatch names the file); the trainable graph verifies; the trainable parameters' shapes/dtypes match
the manifest and the graph; the frozen GroupNorm parameters (trainable.npz keys 'frozen/<name>', listed
in trainable.json 'frozen') are there for every GroupNorm whose gamma/beta does not train. Any failure
is a BundleError with a one-line message.

Versions: 2 ships the frozen GroupNorm parameters (the backward needs gamma, and TensorFlow's converter
may drop it from inference.tflite: x * 1 and x + 0 are folded away); version 1 bundles lack them: re-convert.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .graph import Graph, GraphError, from_dict, group_norm_params, verify

BUNDLE_FORMAT = "tinytl-bundle"
BUNDLE_VERSION = 2
MANIFEST = "manifest.json"
REQUIRED = ("inference.tflite", "trainable.json", "trainable.npz")
FROZEN_PREFIX = "frozen/"  # trainable.npz key of a frozen (non-learning) parameter the backward needs


class BundleError(Exception):
    """A bundle that is missing, damaged or inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    graph: Graph                        # the float graph, trainable flags set (device/graph.py)
    trainable: dict[str, np.ndarray]    # name -> float32 value, layouts as in device/graph.py
    spec: dict[str, Any]                # trainable.json: params with their .tflite slots, ops with taps
    frozen: dict[str, np.ndarray] = field(default_factory=dict)  # frozen GroupNorm gamma/beta, float32 (C,)

    @property
    def tflite_path(self) -> Path:
        return self.path / "inference.tflite"

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (bundles hold files of any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    m = _json(path / MANIFEST)
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path / MANIFEST}: not a {BUNDLE_FORMAT} manifest")
    if m.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path / MANIFEST}: format version {m.get('version')}, this runtime reads version {BUNDLE_VERSION}")
    files = m.get("files", {})
    for name in REQUIRED:
        if name not in files:
            raise BundleError(f"{path / MANIFEST}: does not list required file '{name}'")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: listed in the manifest but missing")
        if f.stat().st_size != info["bytes"] or file_sha256(f) != info["sha256"]:
            raise BundleError(f"{f}: SHA-256 mismatch (the file was edited or truncated; re-copy the bundle)")
    spec = _json(path / "trainable.json")
    try:
        graph = verify(from_dict(spec["graph"]))
    except (GraphError, KeyError, TypeError) as e:
        raise BundleError(f"{path / 'trainable.json'}: bad graph ({e})") from None
    with np.load(path / "trainable.npz", allow_pickle=False) as z:
        trainable = {k: z[k] for k in z.files if not k.startswith(FROZEN_PREFIX)}
        frozen = {k[len(FROZEN_PREFIX):]: z[k] for k in z.files if k.startswith(FROZEN_PREFIX)}
    _check_params(path, m, spec, graph, trainable)
    _check_frozen(path, spec, graph, frozen)
    return Bundle(path, m, graph, trainable, spec, frozen)


def _check_params(path: Path, m: dict, spec: dict, graph: Graph, values: dict[str, np.ndarray]) -> None:
    listed = {p["name"]: p for p in m.get("trainable", [])}
    if set(listed) != set(values):
        raise BundleError(f"{path / 'trainable.npz'}: holds {sorted(set(values) - set(listed))[:3]} extra / "
                          f"{sorted(set(listed) - set(values))[:3]} missing parameters vs the manifest")
    for name, p in listed.items():
        v, t = values[name], graph.tensors.get(name)
        if list(v.shape) != list(p["shape"]) or str(v.dtype) != p["dtype"]:
            raise BundleError(f"{path / 'trainable.npz'}: '{name}' is {v.dtype}{list(v.shape)}, the manifest says {p['dtype']}{p['shape']}")
        if t is None or not t.trainable or tuple(p["shape"]) != t.shape:
            raise BundleError(f"{path / 'trainable.json'}: parameter '{name}' is not a trainable graph tensor of shape {p['shape']}")
    if [p["name"] for p in spec.get("params", [])] != list(listed):
        raise BundleError(f"{path / 'trainable.json'}: its parameter list differs from the manifest's")


def _check_frozen(path: Path, spec: dict, graph: Graph, values: dict[str, np.ndarray]) -> None:
    listed = {f["name"] for f in spec.get("frozen", [])}
    if listed != set(values):
        raise BundleError(f"{path / 'trainable.npz'}: holds {sorted(set(values) - listed)[:3]} extra / "
                          f"{sorted(listed - set(values))[:3]} missing frozen parameters vs trainable.json")
    for name, v in values.items():
        t = graph.tensors.get(name)
        if t is None or not t.const or t.trainable or tuple(v.shape) != t.shape or v.dtype != np.float32:
            raise BundleError(f"{path / 'trainable.npz'}: frozen '{name}' ({v.dtype}{list(v.shape)}) is not a frozen "
                              f"float32 parameter of the graph")
    need = [t for t in group_norm_params(graph, frozen_only=True) if t not in values]
    if need:
        raise BundleError(f"{path / 'trainable.npz'}: lacks frozen GroupNorm parameter(s) {need[:3]} (re-convert the bundle)")


def save_trained(path: str | Path, params: dict[str, np.ndarray]) -> None:
    """The small file a device writes after learning: trainable parameters by name, float32 .npz."""
    np.savez(path, **{k: np.asarray(v, dtype=np.float32) for k, v in params.items()})


def load_trained(bundle: Bundle, path: str | Path) -> dict[str, np.ndarray]:
    """Device-learned parameters, checked against the bundle's trainable list (names, shapes)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            got = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable .npz of trained parameters ({e})") from None
    for name, v in bundle.trainable.items():
        if name not in got:
            raise BundleError(f"{path}: missing trained parameter '{name}'")
        if got[name].shape != v.shape or not np.all(np.isfinite(got[name])):
            raise BundleError(f"{path}: '{name}' has shape {got[name].shape} (want {v.shape}) or non-finite values")
    extra = sorted(set(got) - set(bundle.trainable))
    if extra:
        raise BundleError(f"{path}: parameters {extra[:3]} are not trainable in this bundle")
    return {k: got[k].astype(np.float32) for k in bundle.trainable}

