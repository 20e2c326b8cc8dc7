"""Datasets for train/: load a source, split it reproducibly, turn its images into model input.

    ds = load_dataset("animal-mnist", seed=0)          # Dataset(train/val/test Splits of uint8 NHWC)
    p = Preprocess(resolution=32, channels=1)
    check_fits(ds, p)
    x = preprocess(ds.train.x, p)                       # float32 (N, 1, 32, 32)
    x = augment(x[:64], torch.Generator().manual_seed(0))
"""

from pathlib import Path

import numpy as np

from ..errors import UserError
from ._builtin import animal_mnist, digits, fashion_mnist
from ._splits import group_split, subsample
from ._transforms import Preprocess, augment, check_fits, preprocess
from ._types import Dataset, Split
from ._user import image_folder, npz_file

__all__ = ["Split", "Dataset", "load_dataset", "Preprocess", "preprocess", "augment", "check_fits"]

_BUILTIN = {"fashion-mnist": fashion_mnist, "animal-mnist": animal_mnist, "digits": digits}


def _check_args(seed, val_fraction, test_fraction, limit) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed: must be an int >= 0, got {seed!r}")
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise UserError(f"{name}: must be in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no "
                        f"training data; keep the sum below 1")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise UserError(f"limit: must be an int >= 1 or None, got {limit!r}")


def load_dataset(source: str, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 limit: int | None = None) -> Dataset:
    """Load `source` and split it; the same arguments always give the same splits.

    source: "fashion-mnist" | "animal-mnist" | "digits" | an image-folder directory | a .npz file.
    val_fraction: share of the training data held out for validation (per class).
    test_fraction: share held out for test, only for sources without an official test split.
    limit: cap on the train split size (seeded subsample), for fast runs; val/test are unchanged.
    Animal-MNIST splits whole near-duplicate groups (see _neardup.py); other sources split images.
    """
    _check_args(seed, val_fraction, test_fraction, limit)
    if source in _BUILTIN:
        src = _BUILTIN[source]()
    else:
        path = Path(source)
        if path.is_dir():
            src = image_folder(path)
        elif path.suffix == ".npz" and path.is_file():
            src = npz_file(path)
        else:
            raise UserError(f"dataset '{source}': not a known name ({', '.join(_BUILTIN)}) nor an existing "
                            f"image folder or .npz file; pick one of those")

    official = src.test is not None
    groups = src.groups if src.groups is not None else np.arange(len(src.y))
    tr, va, te = group_split(src.y, groups, seed=seed, val_fraction=val_fraction,
                             test_fraction=0.0 if official else test_fraction)
    tr = subsample(tr, limit, seed)
    test = Split(src.test.x.copy(), src.test.y.copy()) if official else Split(src.x[te], src.y[te])
    for name, idx, fraction in (("train", tr, 1.0), ("val", va, val_fraction), ("test", te, test_fraction)):
        if fraction > 0 and len(idx) == 0 and not (name == "test" and official):
            raise UserError(f"dataset '{src.name}': the {name} split is empty ({len(src.y)} images); "
                            f"add images or raise {name}_fraction")
    return Dataset(src.name, src.classes, Split(src.x[tr], src.y[tr]), Split(src.x[va], src.y[va]), test)
