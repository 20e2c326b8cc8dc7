"""Build the C core (device/native/core/*.c) with the pinned `ziglang` package: no system compiler needed.

    path = build("x86_64-linux-gnu")          # the host's shared library (cached by source hash)
    path = build("aarch64-linux-gnu")         # Raspberry Pi OS 64-bit / Jetson Linux, built on the host
    python -m device build-native --target aarch64-linux-gnu

Flags that keep results exact and portable (../shared/NATIVE.md, measured): an explicit -target (zig's default
is -mcpu=native), -ffp-contract=off (no fused multiply-add: results then match numpy bit for bit), no fast-math,
-fno-math-errno (sqrt is one instruction, no libm call), freestanding (no libc: the core calls nothing).
The library lands in device/native/lib/<target>/ (what `flash` ships); builds are cached by a hash of the
sources and flags, so a warm build is a file check.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = HERE / "core"
LIB_DIR = HERE / "lib"
LIB_NAME = "libtinytl_core.so"
HOST = "x86_64-linux-gnu"
TARGETS = {
    "x86_64-linux-gnu": ["-shared", "-fPIC", "-s"],      # -s: no debug info (ctypes needs only the dynamic symbols)
    "aarch64-linux-gnu": ["-shared", "-fPIC", "-s"],     # Raspberry Pi OS 64-bit, Jetson Linux
}
CFLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing", "-ffreestanding",
          "-nostdlib", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-Wno-unused-function"]


class BuildError(RuntimeError):
    """The C core could not be built; the message says why and what to do."""


def sources(core: Path = CORE) -> list[Path]:
    return sorted(core.glob("*.c"))


def _digest(target: str, srcs: list[Path], flags: list[str]) -> str:
    h = hashlib.sha256(" ".join([target, *flags]).encode())
    for p in sorted(srcs + sorted(CORE.glob("*.h"))):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def zig() -> list[str]:
    """The command that runs the pinned zig compiler."""
    try:
        import ziglang  # noqa: F401  (the host extra pins it; boards get a prebuilt library instead)
    except ImportError:
        raise BuildError("the C core is built with the 'ziglang' package: pip install 'ziglang==0.17.1' "
                         "(in the host extra), or copy a library built on the host ('python -m device build-native')") from None
    return [sys.executable, "-m", "ziglang"]


def library_path(target: str = HOST) -> Path:
    return LIB_DIR / target / LIB_NAME


def build(target: str = HOST, *, out: Path | None = None, extra_flags: list[str] | None = None, quiet: bool = True) -> Path:
    """Compile the core for `target` into out (default device/native/lib/<target>/); returns the library path.
    A build whose sources and flags are unchanged is reused (a stamp file holds their hash)."""
    if target not in TARGETS:
        raise BuildError(f"unknown target '{target}': choose one of {', '.join(TARGETS)}")
    srcs = sources()
    flags = CFLAGS + TARGETS[target] + list(extra_flags or [])
    out = Path(out) if out is not None else library_path(target)
    stamp = out.with_suffix(".hash")
    digest = _digest(target, srcs, flags)
    if out.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:   # atomic: a failed build leaves the old library
        tmp_lib = Path(tmp) / out.name
        cmd = zig() + ["cc", "-target", target, *flags, "-o", str(tmp_lib), *map(str, srcs)]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": cache_dir()})
        if r.returncode != 0:
            raise BuildError(f"building the C core for {target} failed:\n{r.stderr.strip()[-3000:]}")
        os.replace(tmp_lib, out)
    stamp.write_text(digest + "\n")
    if not quiet:
        print(f"built {out} ({out.stat().st_size:,} bytes) for {target}")
    return out


def build_executable(target: str, sources_: list[Path], out: Path, extra_flags: list[str] | None = None) -> Path:
    """A static test executable (e.g. aarch64-linux-musl for qemu-aarch64-static): the core + a driver."""
    flags = [f for f in CFLAGS if f not in ("-ffreestanding", "-nostdlib")] + ["-static"] + list(extra_flags or [])
    cmd = zig() + ["cc", "-target", target, *flags, "-o", str(out), *map(str, sources() + list(sources_))]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ZIG_GLOBAL_CACHE_DIR": cache_dir()})
    if r.returncode != 0:
        raise BuildError(f"building {out.name} for {target} failed:\n{r.stderr.strip()[-3000:]}")
    return out


def cache_dir() -> str:
    return os.environ.get("ZIG_GLOBAL_CACHE_DIR") or str(Path.home() / ".cache" / "zig")


def clean() -> None:
    shutil.rmtree(LIB_DIR, ignore_errors=True)
