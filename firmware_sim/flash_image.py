"""The target's read-only memory: the bundle's frozen weights as one flash image (or, on a board, in DRAM).

    need = weight_bytes(bundle)            # the one count of frozen-weight bytes (16-byte aligned constants)
    check_weights(bundle, need, profile)   # FlashError unless they fit the profile's flash / DRAM
    flash = place_weights(tr, profile)     # the trainer's constants become read-only views of one image
    ...
    flash.verify()                         # FlashWriteFault if anything wrote there during the run
"""
from __future__ import annotations

import hashlib

import numpy as np

from device import Bundle, Trainer, read_tflite

from .profiles import Profile

ALIGN = 16  # bytes: every constant starts on a 16-byte boundary of the image (as in a firmware's weights section)


class FlashError(ValueError):
    """The bundle's frozen weights do not fit the target's flash (or DRAM)."""


class FlashWriteFault(RuntimeError):
    """Something wrote to flash while the model ran: on the chip a bus fault."""


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def weight_bytes(bundle: Bundle) -> int:
    """Bytes of the .tflite's constant tensors (int8 weights, int32 biases) as placed in flash, each aligned."""
    return sum(_aligned(t.data.nbytes) for t in read_tflite(bundle.tflite_path).tensors if t.data is not None)


def check_weights(bundle: Bundle, need: int, profile: Profile) -> None:
    """FlashError unless `need` bytes of frozen weights fit the target's flash (MCU) or DRAM (Linux)."""
    region = profile.weight_region
    budget = profile.budgets[region]
    if need > budget:
        raise FlashError(f"bundle {bundle.path}: its frozen weights take {need} bytes ({need / 1024:.1f} KB), "
                         f"the {profile.name} {region} budget is {budget} bytes ({budget / 1024:.1f} KB: "
                         f"{profile.memory[region]} minus {profile.reserved.get(region, 0)} reserved); a smaller model "
                         f"or resolution is needed")


class Flash:
    """One read-only byte image holding every constant tensor of the .tflite, 16-byte aligned, like the
    weights section of a firmware image. `views` are non-writeable ndarrays into it: a write raises."""

    def __init__(self, arrays: dict[int, np.ndarray]):
        offsets, cursor = {}, 0
        for i, a in arrays.items():
            offsets[i] = cursor
            cursor += _aligned(a.nbytes)
        image = np.zeros(max(cursor, 1), np.uint8)
        for i, a in arrays.items():
            image[offsets[i]:offsets[i] + a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        image.flags.writeable = False
        self.image, self.offsets, self.size = image, offsets, cursor
        self.views = {i: image[offsets[i]:offsets[i] + a.nbytes].view(a.dtype).reshape(a.shape) for i, a in arrays.items()}
        self.sha256 = self.digest()

    def digest(self) -> str:
        return hashlib.sha256(self.image.tobytes()).hexdigest()

    def verify(self) -> None:
        if self.digest() != self.sha256:
            raise FlashWriteFault("the flash image changed during the run")


class ModelFlash(Flash):
    """The step program's flash: the .tflite bytes the C core / numpy executor read frozen constants from (a
    read-only array, nothing copied out of it); verify() checks after the run that nothing wrote there."""

    def __init__(self, model: np.ndarray, size: int):
        self.image, self.size, self.offsets, self.views = model, size, {}, {}
        self.sha256 = self.digest()


def place_weights(tr: Trainer, profile: Profile) -> Flash | ModelFlash:
    """Move every constant the engine reads into one read-only image and re-prepare the kernels on it
    (Engine.set_constants: the kernels' derived caches, e.g. float64 matrices for the exact BLAS path, are
    host speed-ups of reading flash). Trainable slots are re-encoded into RAM by the trainer's patch().
    The trainer's dequantized float copies of frozen weights (read by backward) become read-only too."""
    need = weight_bytes(tr.bundle)
    check_weights(tr.bundle, need, profile)
    if hasattr(tr, "program"):  # the step program reads constants where they sit in the read-only model buffer
        tr.model.flags.writeable = False
        return ModelFlash(tr.model, need)
    flash = Flash({t.index: t.data for t in tr.engine.tensors if t.data is not None})
    tr.use_constants(flash.views)   # the kernels read flash; trainable slots are re-encoded into RAM
    return flash
