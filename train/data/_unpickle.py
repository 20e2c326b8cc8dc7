"""Read a gzip pickle of ONE numpy array without letting the pickle run code.

A pickle is a program: `pickle.load` will call any importable function it names (os.system included).
Animal-MNIST ships its data as pickles, so they go through an Unpickler whose `find_class` admits only
what numpy needs to rebuild an array and refuses everything else before it can be called.
"""

import gzip
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2 keeps the real module at numpy._core; numpy.core is a deprecated alias
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

from ..errors import UserError

# (module, name) a pickled ndarray refers to -> the object to hand back; nothing else is importable.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # pickles written by numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"{self._path}: the pickle refers to {module}.{name}; only numpy arrays are accepted, "
                f"so it was not loaded: replace the file with a clean copy"
            ) from None


def load_gzip_array(path: Path) -> np.ndarray:
    """The numpy array pickled (gzip) in `path`; UserError if it names anything but ndarray parts."""
    try:
        with gzip.open(path, "rb") as f:
            obj = _ArrayUnpickler(f, path).load()
    except UserError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a readable gzip pickle ({e}); replace the file with a clean copy") from None
    if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
        raise UserError(f"{path}: expected a numeric numpy array, got {type(obj).__name__}; "
                        f"replace the file with a clean copy")
    return obj
