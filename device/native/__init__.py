"""The C core, loaded with ctypes (the board needs numpy and this one shared library, nothing else).

    core = load()                          # None when the library for this machine is not built
    core.run(words, arena, model, io)      # runs a step program (device/step/) in place over the arena

Build it with `python -m device build-native` (device/native/build.py, the pinned ziglang package).
"""
from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LIB_NAME = "libtinytl_core.so"
ERRORS = {1: "not a step program of this version (magic/version)", 2: "an opcode this core does not implement",
          3: "the arena is smaller than the program's plan", 4: "the model buffer's size differs from the program's",
          5: "malformed arguments", 6: "a reference reaches past its memory"}


class NativeError(RuntimeError):
    """The C core refused or failed a program; the message names the instruction."""


def host_target() -> str:
    m = platform.machine().lower()
    return {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
            "arm64": "aarch64-linux-gnu"}.get(m, f"{m}-linux-gnu")


def library_path(target: str | None = None) -> Path:
    return HERE / "lib" / (target or host_target()) / LIB_NAME


class IOStruct(ctypes.Structure):
    _fields_ = [("label", ctypes.c_int32), ("first", ctypes.c_int32), ("lr", ctypes.c_float),
                ("sqrt_c2", ctypes.c_float), ("loss", ctypes.c_float), ("applied", ctypes.c_int32)]


class NativeCore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        lib = ctypes.CDLL(str(self.path))
        p = ctypes.c_void_p
        lib.tt_run.argtypes = [p, ctypes.c_int64, p, ctypes.c_int64, p, ctypes.c_int64, ctypes.POINTER(IOStruct),
                               ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)]
        lib.tt_run.restype = ctypes.c_int
        lib.tt_has_op.argtypes = [ctypes.c_int32]
        lib.tt_has_op.restype = ctypes.c_int
        self.lib = lib
        self._io = IOStruct()
        self._where = ctypes.c_int32(-1)

    def has_op(self, code: int) -> bool:
        return bool(self.lib.tt_has_op(code))

    def run(self, words: np.ndarray, arena: np.ndarray, model: np.ndarray, io, first: int = 0, last: int = -1,
            notes: list[str] | None = None) -> None:
        """Run instructions [first, last) in place; io (device.step.program.IO) is read and updated."""
        c = self._io
        c.label, c.first, c.lr, c.sqrt_c2 = io.label, io.first, io.lr, io.sqrt_c2
        rc = self.lib.tt_run(words.ctypes.data, words.size, arena.ctypes.data, arena.size, model.ctypes.data,
                             model.size, ctypes.byref(c), first, last, ctypes.byref(self._where))
        io.loss, io.applied = float(c.loss), int(c.applied)
        if rc:
            k = self._where.value
            where = f"instruction {k}" + (f" ({notes[k]})" if notes and 0 <= k < len(notes) else "") if k >= 0 else "the header"
            raise NativeError(f"C core ({self.path.name}): {where}: {ERRORS.get(rc, f'error {rc}')}")


_loaded: dict[str, NativeCore | None] = {}


def elf_complete(path: Path) -> bool:
    """A cheap check before dlopen: an ELF whose section header table lies inside the file (a truncated library
    would otherwise crash the loading process with SIGBUS, which Python cannot catch)."""
    import struct
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = f.seek(0, 2)
    except OSError:
        return False
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:       # 64-bit ELF only (x86_64, aarch64)
        return False
    endian = "<" if head[5] == 1 else ">"
    shoff, = struct.unpack_from(endian + "Q", head, 0x28)
    shentsize, shnum = struct.unpack_from(endian + "HH", head, 0x3A)
    return 0 < shoff and shoff + shentsize * shnum <= size


def load(path: str | Path | None = None) -> NativeCore | None:
    """The host's C core, or None when it is not built (or cannot load here)."""
    p = Path(path) if path else library_path()
    key = str(p)
    if key not in _loaded:
        try:
            _loaded[key] = NativeCore(p) if p.exists() and elf_complete(p) else None
        except OSError:
            _loaded[key] = None
    return _loaded[key]
