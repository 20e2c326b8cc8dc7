"""Device-side data: labelled images from a .npz, an image folder or a stdin stream -> int8 model input.

Formats (numpy + stdlib; PIL only if importable, for .png/.jpg):
  .npz             x: uint8 (N, H, W) or (N, H, W, C), y: int (N,)   (np.load, allow_pickle=False)
  folder           one sub-folder per class (sorted names = label order, or the bundle's labels when
                   they match), images as .npy (uint8 HxW[xC]), binary PGM/PPM (P5/P6, maxval 255), or
                   anything PIL reads when PIL is installed
  stdin stream     one sample per line: "<label> <path to .npy/.pgm/.ppm image>"
Input rule (manifest "input"): q = round(((pixel / 255) - mean) / std / scale) + zero_point, after centring
the image on a black canvas of the model's resolution (28 -> 32 px pads 2 px per side, as train/ does).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np


class DataError(ValueError):
    """Data the device cannot use; the message names the file and what is wrong."""


def _pnm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    parts, pos = [], 0
    while len(parts) < 4:  # magic, width, height, maxval; '#' comments allowed
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(data) and not data[end:end + 1].isspace():
            end += 1
        parts.append(data[pos:end])
        pos = end
    magic, w, h, maxval = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
    if magic not in (b"P5", b"P6") or maxval != 255:
        raise DataError(f"{path}: only binary PGM/PPM (P5/P6) with maxval 255 are read")
    c = 1 if magic == b"P5" else 3
    px = np.frombuffer(data, np.uint8, count=w * h * c, offset=pos + 1)
    return px.reshape(h, w, c)


def read_image(path: str | Path) -> np.ndarray:
    """uint8 (H, W, C) from .npy, .pgm/.ppm, or (with PIL) any image file."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif path.suffix in (".pgm", ".ppm", ".pnm"):
            a = _pnm(path)
        else:
            try:
                from PIL import Image
            except ImportError:
                raise DataError(f"{path}: {path.suffix} images need PIL; use .npy or PGM/PPM") from None
            a = np.asarray(Image.open(path))
    except (OSError, ValueError, IndexError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable image ({e})") from None
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise DataError(f"{path}: expected uint8 HxW or HxWxC pixels, got {a.dtype}{list(a.shape)}")
    return a[..., None] if a.ndim == 2 else a


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise DataError(f"{path}: a .npz of labelled images needs arrays 'x' and 'y', has {z.files}")
            x, y = z["x"], z["y"]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz ({e})") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"{path}: 'x' must be uint8 (N, H, W[, C]), got {x.dtype}{list(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be N integer labels, got {y.dtype}{list(y.shape)} for {len(x)} images")
    return (x[..., None] if x.ndim == 3 else x), y.astype(np.int64)


def load_folder(path: str | Path, labels: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{path}: no class sub-folders")
    if labels and sorted(labels) == classes:
        classes = list(labels)
    xs, ys = [], []
    for k, c in enumerate(classes):
        for f in sorted((path / c).iterdir()):
            if f.is_file():
                xs.append(read_image(f))
                ys.append(k)
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise DataError(f"{path}: images of different sizes {sorted(shapes)[:3]}")
    return np.stack(xs), np.array(ys, np.int64)


def load_labelled(source: str | Path, labels: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    p = Path(source)
    if p.is_dir():
        return load_folder(p, labels)
    if p.suffix == ".npz":
        return load_npz(p)
    raise DataError(f"{p}: not a .npz file or an image folder")


def stream(lines=None) -> Iterator[tuple[np.ndarray, int]]:
    """Labelled samples from lines "<label> <image path>" (stdin by default); blank lines skipped."""
    for n, line in enumerate(lines if lines is not None else sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        label, _, path = line.partition(" ")
        try:
            y = int(label)
        except ValueError:
            raise DataError(f"stdin line {n}: expected '<label> <image path>', got {line[:60]!r}") from None
        yield read_image(path.strip())[None], y


def check_labels(y: np.ndarray, n_classes: int, where: str) -> None:
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise DataError(f"{where}: label {int(y[bad][0])} is outside the head's classes 0..{n_classes - 1}")


def to_model_input(x: np.ndarray, manifest: dict, where: str = "input") -> np.ndarray:
    """uint8 (N, H, W, C) -> int8 (N, R, R, C_model) by the manifest's input rule."""
    spec = manifest["input"]
    _, r, r2, c = spec["shape"]
    if x.ndim == 3:
        x = x[..., None]
    n, h, w, cx = x.shape
    if cx != c:
        raise DataError(f"{where}: images have {cx} channel(s), the model takes {c}")
    if not (h <= r and w <= r2 and (r - h) <= r / 2 and (r2 - w) <= r2 / 2):
        raise DataError(f"{where}: images are {h}x{w} px, the model takes {r}x{r2} (or smaller by at most half, padded)")
    canvas = np.zeros((n, r, r2, c), np.float32)
    top, left = (r - h) // 2, (r2 - w) // 2
    canvas[:, top:top + h, left:left + w, :] = x
    norm = spec["normalization"]
    f = (canvas * np.float32(norm["pixel_scale"]) - np.float32(norm["mean"])) / np.float32(norm["std"])
    q = f.astype(np.float64) / np.float32(spec["scale"])
    q = np.sign(q) * np.floor(np.abs(q) + 0.5) + spec["zero_point"]
    return np.clip(q, -128, 127).astype(np.int8)
