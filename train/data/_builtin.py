"""The datasets shipped offline: Fashion-MNIST (Debian package), Animal-MNIST (PyPI), sklearn digits."""

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import UserError
from ._neardup import near_duplicate_groups
from ._types import Source, Split
from ._unpickle import load_gzip_array

# Where the Debian package `dataset-fashion-mnist` installs its IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# The package's METADATA: "10 classes of animals (including Bear, Bird, Cat, Cow, Dog, Elephant,
# Giraffe, Horse, Sheep, Zebra) each consisting of 1000 pictures". Labels 0..9 follow that order
# (checked by eye on v3: label 6 are long necks, label 9 striped, label 1 has wings).
ANIMAL_MNIST_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
_ANIMAL_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzip): 2 zero bytes, type code 0x08 (uint8), ndim, ndim big-endian int32 sizes, data."""
    try:
        with gzip.open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise UserError(f"{path}: unreadable ({e}); reinstall it: sudo apt-get install --reinstall "
                        f"dataset-fashion-mnist") from None
    header = 4 + 4 * ndim
    ok = len(buf) >= header and buf[:2] == b"\0\0" and buf[2] == 0x08 and buf[3] == ndim
    shape = tuple(int(s) for s in np.frombuffer(buf, ">i4", ndim, 4)) if ok else ()
    if not ok or len(buf) != header + int(np.prod(shape)):
        raise UserError(f"{path}: not a {ndim}-D uint8 IDX file of the expected size; reinstall it: "
                        f"sudo apt-get install --reinstall dataset-fashion-mnist")
    return np.frombuffer(buf, np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=2)
def _fashion_arrays(root: str) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) from the IDX files under root; cached, so read-only."""
    arrays = []
    for split in ("train", "t10k"):
        img, lab = Path(root) / f"{split}-images-idx3-ubyte.gz", Path(root) / f"{split}-labels-idx1-ubyte.gz"
        for p in (img, lab):
            if not p.is_file():
                raise UserError(f"{p}: Fashion-MNIST is missing; install it: sudo apt-get install "
                                f"dataset-fashion-mnist (or run make setup)")
        x, y = _read_idx(img, 3), _read_idx(lab, 1).astype(np.int64)
        if len(x) != len(y) or y.max() >= len(FASHION_MNIST_CLASSES):
            raise UserError(f"{lab}: labels do not match {img.name}; reinstall it: "
                            f"sudo apt-get install --reinstall dataset-fashion-mnist")
        arrays += [x[..., None], y]
    for a in arrays:
        a.flags.writeable = False
    return tuple(arrays)


def fashion_mnist() -> Source:
    x, y, xt, yt = _fashion_arrays(str(FASHION_MNIST_DIR))
    return Source("fashion-mnist", FASHION_MNIST_CLASSES, x, y, test=Split(xt, yt))


def _animal_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ imports TensorFlow)
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("animal-mnist: package not installed; install it: "
                        "pip install --no-deps animal-mnist==0.4 (or run make setup)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


@functools.lru_cache(maxsize=1)
def _animal_arrays(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, near-duplicate groups), read-only; cached because grouping costs about a second."""
    data_path, label_path = (Path(root) / n for n in _ANIMAL_FILES)
    for p in (data_path, label_path):
        if not p.is_file():
            raise UserError(f"{p}: Animal-MNIST data file missing; reinstall it: "
                            f"pip install --no-deps --force-reinstall animal-mnist==0.4")
    x, y = load_gzip_array(data_path), load_gzip_array(label_path)
    if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or y.dtype.kind not in "iu":
        raise UserError(f"{data_path}: expected uint8 (N, 28, 28) images and N integer labels, got "
                        f"{x.dtype} {x.shape} and {y.dtype} {y.shape}; reinstall animal-mnist==0.4")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= len(ANIMAL_MNIST_CLASSES):
        raise UserError(f"{label_path}: labels outside 0..9; reinstall animal-mnist==0.4")
    x = np.ascontiguousarray(x[..., None])
    groups = near_duplicate_groups(x)
    for a in (x, y, groups):
        a.flags.writeable = False
    return x, y, groups


def animal_mnist() -> Source:
    x, y, groups = _animal_arrays(str(_animal_dir()))
    return Source("animal-mnist", ANIMAL_MNIST_CLASSES, x, y, groups=groups)


def digits() -> Source:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # values 0..16 -> 0..255
    return Source("digits", tuple(str(i) for i in range(10)), x, d.target.astype(np.int64))
