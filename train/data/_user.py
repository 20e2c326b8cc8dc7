"""Users' own data: an image-folder tree (one subfolder per class) or a .npz with x, y[, classes]."""

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ._types import Source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: unreadable image ({e}); fix or remove the file") from None


def image_folder(root: Path) -> Source:
    """Class = subfolder name (sorted); every image resized (bilinear) to the first image's size.

    All images become grayscale when every file is grayscale, else RGB (gray ones repeated to 3).
    Files with other suffixes and hidden files are skipped.
    """
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise UserError(f"{root}: an image folder needs at least 2 class subfolders, found {found}; "
                        f"put each class's images in its own subfolder")
    files, labels = [], []
    for c, d in enumerate(class_dirs):
        own = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                     and p.suffix.lower() in IMAGE_SUFFIXES)
        if not own:
            raise UserError(f"{d}: class folder has no {'/'.join(IMAGE_SUFFIXES)} images; "
                            f"add images or remove the folder")
        files += own
        labels += [c] * len(own)
    images = [_read_image(p) for p in files]
    gray = all(im.mode in _GRAY_MODES for im in images)
    size = images[0].size  # (W, H)
    x = np.empty((len(images), size[1], size[0], 1 if gray else 3), dtype=np.uint8)
    for i, im in enumerate(images):
        im = im.convert("L" if gray else "RGB")
        if im.size != size:
            im = im.resize(size, Image.BILINEAR)
        x[i] = np.asarray(im).reshape(x.shape[1:])
    return Source(root.resolve().name, tuple(d.name for d in class_dirs), x, np.array(labels, np.int64))


def _npz_array(npz, path: Path, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError:  # allow_pickle=False refuses object arrays here
        raise UserError(f"{path}: key '{key}' is an object (pickled) array, which is never loaded; "
                        f"save it as a plain numeric/string array") from None


def npz_file(path: Path) -> Source:
    """x (N, H, W[, C]) uint8, y (N,) integer labels, optional classes (K,) strings."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz ({e}); save it with numpy.savez") from None
    with npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            raise UserError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(npz.files) or 'none'}); "
                            f"save with numpy.savez(path, x=images, y=labels)")
        x, y = _npz_array(npz, path, "x"), _npz_array(npz, path, "y")
        classes = _npz_array(npz, path, "classes") if "classes" in npz.files else None

    for key, a in (("x", x), ("y", y)):
        if a.dtype.kind in "fc" and np.isnan(a).any():
            raise UserError(f"{path}: key '{key}' contains NaN; x must be uint8 pixels 0..255 "
                            f"and y integer labels")
    if x.dtype != np.uint8:
        raise UserError(f"{path}: key 'x' has dtype {x.dtype}; store images as uint8 0..255 "
                        f"(e.g. (x * 255).round().astype(np.uint8))")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3) or 0 in x.shape:
        raise UserError(f"{path}: key 'x' has shape {x.shape}; expected (N, H, W) or (N, H, W, C) "
                        f"with C = 1 or 3 and N, H, W > 0")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise UserError(f"{path}: key 'y' has dtype {y.dtype} and shape {y.shape}; "
                        f"expected integer labels of shape (N,)")
    if len(y) != len(x):
        raise UserError(f"{path}: key 'y' has {len(y)} labels but 'x' has {len(x)} images; "
                        f"give exactly one label per image")
    if classes is not None:
        if classes.dtype.kind != "U" or classes.ndim != 1 or len(set(classes.tolist())) != len(classes):
            raise UserError(f"{path}: key 'classes' must be a 1-D array of distinct strings, "
                            f"got {classes.dtype} {classes.shape}; e.g. np.array(['cat', 'dog'])")
        names = tuple(classes.tolist())
    else:
        names = tuple(str(i) for i in range(max(int(y.max()) + 1, 0)))
    if y.min() < 0 or y.max() >= len(names):
        raise UserError(f"{path}: key 'y' has labels {int(y.min())}..{int(y.max())}, outside "
                        f"0..{len(names) - 1}; labels must index 'classes' (0-based)")
    if len(names) < 2:
        raise UserError(f"{path}: only {len(names)} class; a classifier needs at least 2 "
                        f"(labels 0..K-1, K >= 2)")
    return Source(path.stem, names, np.ascontiguousarray(x), y.astype(np.int64))
