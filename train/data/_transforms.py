"""Raw uint8 images -> the model's input tensor, plus light training augmentation."""

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ._types import Dataset

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as PIL's RGB -> "L"
_CHUNK = 8192  # images converted per step: bounds the float intermediates to a chunk, not the whole set
MAX_DOWNSCALE = 4  # an image side may be at most 4x the resolution (bilinear would drop most pixels)
MAX_UPSCALE = 8  # and at least resolution / 8 (8x8 digits -> 64 px is the limit)


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 images become the model's input; stored in checkpoints via to_dict()."""

    resolution: int  # model input side, px (square)
    channels: int  # 1 or 3: model input channels
    mean: float = 128 / 255  # subtracted after scaling pixels to [0, 1]; 128/255 (not 0.5) puts pixel p at
                             # (p - 128) * 2/255, exactly the int8 grid q = p - 128, so int8 input is lossless
    std: float = 0.5  # then divided by

    def __post_init__(self):
        if not isinstance(self.resolution, int) or self.resolution < 1:
            raise UserError(f"preprocess: resolution must be a positive int (px), got {self.resolution!r}")
        if self.channels not in (1, 3):
            raise UserError(f"preprocess: channels must be 1 or 3, got {self.channels!r}")
        if not self.std > 0:
            raise UserError(f"preprocess: std must be > 0, got {self.std!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        missing = sorted({"resolution", "channels"} - set(d))
        if unknown or missing:
            raise UserError(f"preprocess: unknown key(s) {unknown} / missing key(s) {missing}; "
                            f"expected {sorted(known)}")
        return cls(**d)


def _fits_by_padding(h: int, w: int, r: int) -> bool:
    # pad only when the image fits and the border needed is <= r/4 per side (28 -> 32: 2 px);
    # a wider black frame (8 -> 32: 12 px) would leave the object a speck, so resize instead
    return h <= r and w <= r and (r - h) <= r / 2 and (r - w) <= r / 2


def preprocess(x: np.ndarray, p: Preprocess) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, p.channels, R, R): channels matched, padded or resized, normalized.

    Geometry: zero-pad centred (pixel (i, j) -> (i + top, j + left), top = (R - H) // 2) when
    `_fits_by_padding`, else bilinear resize to R x R (antialiased when shrinking). Padding is black
    (pixel 0), applied before normalization, so it reads (0 - mean) / std like the background.
    Channels: gray -> 3 by repetition; RGB -> gray by BT.601 luminance.
    """
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3):
        raise ValueError(f"preprocess wants uint8 (N, H, W, 1|3), got {x.dtype} {x.shape}")
    n, h, w, c = x.shape
    r = p.resolution
    out = torch.empty((n, p.channels, r, r), dtype=torch.float32)
    pad = _fits_by_padding(h, w, r)
    top, left = (r - h) // 2, (r - w) // 2
    luma = torch.tensor(_LUMA).view(1, 3, 1, 1)
    for s in range(0, n, _CHUNK):
        t = torch.from_numpy(np.ascontiguousarray(x[s:s + _CHUNK])).permute(0, 3, 1, 2).float().div_(255.0)
        if c == 3 and p.channels == 1:
            t = (t * luma).sum(1, keepdim=True)
        if pad:
            t = F.pad(t, (left, r - w - left, top, r - h - top))
        elif (h, w) != (r, r):
            t = F.interpolate(t, size=(r, r), mode="bilinear", align_corners=False, antialias=max(h, w) > r)
        out[s:s + len(t)] = t  # broadcasts 1 -> 3 channels
    return out.sub_(p.mean).div_(p.std)


def augment(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 2, flip: bool = False) -> torch.Tensor:
    """Random per-sample translation by -max_shift..max_shift px (each axis) and optional horizontal flip.

    One gather over an edge-padded copy: out[n, :, i, j] = padded[n, :, dy[n] + i, dx[n] + j'] with
    j' mirrored for flipped samples. Pixels shifted in repeat the border (replicate padding): on
    padded or dark-background images that is the background value (what a black, zero-pixel fill
    becomes after normalization), without augment() having to know the normalization.
    Same generator state -> same result.
    """
    n, _, h, w = x.shape
    m = max_shift
    dy = torch.randint(0, 2 * m + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * m + 1, (n,), generator=generator)
    flipped = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    padded = F.pad(x, (m, m, m, m), mode="replicate") if m > 0 else x
    cols = torch.arange(w)
    cols = torch.where(flipped[:, None], cols.flip(0), cols) + dx[:, None]  # (N, W)
    rows = torch.arange(h) + dy[:, None]  # (N, H)
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def check_fits(ds: Dataset, p: Preprocess) -> None:
    """UserError unless ds's images can become p's input: 1 or 3 channels, sides within
    resolution / MAX_UPSCALE .. resolution * MAX_DOWNSCALE."""
    _, h, w, c = ds.train.x.shape
    r = p.resolution
    lo, hi = -(-r // MAX_UPSCALE), r * MAX_DOWNSCALE
    if c not in (1, 3):
        raise UserError(f"dataset '{ds.name}': images have {c} channels; only 1 (gray) or 3 (RGB) fit")
    if not (lo <= h <= hi and lo <= w <= hi):
        raise UserError(f"dataset '{ds.name}': images are {h}x{w} px, resolution {r} fits sides {lo}..{hi} px; "
                        f"choose a resolution in {-(-max(h, w) // MAX_DOWNSCALE)}..{min(h, w) * MAX_UPSCALE} "
                        f"or resize the images")
