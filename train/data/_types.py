"""The data records handed between the loaders, the splitter and the rest of train/."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """One split of a dataset."""

    x: np.ndarray  # uint8 (N, H, W, C), C = 1 or 3
    y: np.ndarray  # int64 (N,), class indices into Dataset.classes

    def __post_init__(self):
        if self.x.dtype != np.uint8 or self.x.ndim != 4 or self.x.shape[3] not in (1, 3):
            raise ValueError(f"Split.x must be uint8 (N, H, W, 1|3), got {self.x.dtype} {self.x.shape}")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise ValueError(f"Split.y must be int64 ({len(self.x)},), got {self.y.dtype} {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A named, split dataset; images of all three splits share one (H, W, C)."""

    name: str  # "fashion-mnist", "animal-mnist", "digits", or the folder / .npz file's stem
    classes: tuple[str, ...]  # class names; a label y indexes this tuple
    train: Split
    val: Split  # for model selection; carved from the source's training data
    test: Split  # the source's official test split, or a held-out part when it has none


@dataclass(frozen=True)
class Source:
    """What a loader returns, before splitting."""

    name: str
    classes: tuple[str, ...]
    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int64 (N,)
    groups: np.ndarray | None = None  # near-duplicate group id per image; None: every image its own
    test: Split | None = None  # the source's official test split; None: carve one out of x
