"""The C core as built: freestanding (no allocator, no libc), cross-built for the boards, and exact on aarch64
(a static test driver under Debian's qemu-user-static checks the arena the numpy reference computed)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from device.native.build import BuildError, build, build_executable
from step_helpers import native_core

ALLOCATORS = {"malloc", "calloc", "realloc", "free", "aligned_alloc", "posix_memalign"}


def _undefined(path) -> tuple[set[str], str]:
    """(undefined dynamic symbols, ELF machine) of a built library."""
    from elftools.elf.elffile import ELFFile
    with open(path, "rb") as f:
        elf = ELFFile(f)
        syms = elf.get_section_by_name(".dynsym")
        return {s.name for s in syms.iter_symbols() if s.name and s["st_shndx"] == "SHN_UNDEF"}, elf["e_machine"]


def test_host_library_calls_nothing_not_even_an_allocator():
    core = native_core()
    undefined, machine = _undefined(core.path)
    assert not (undefined & ALLOCATORS), f"the core calls an allocator: {undefined & ALLOCATORS}"
    assert undefined == set(), f"the core depends on outside symbols: {sorted(undefined)}"
    assert machine == "EM_X86_64"


def test_board_library_cross_builds_for_aarch64(tmp_path):
    try:
        path = build("aarch64-linux-gnu", out=tmp_path / "libtinytl_core.so")
    except BuildError as e:
        pytest.skip(f"cannot build here: {e}")
    undefined, machine = _undefined(path)
    assert machine == "EM_AARCH64" and undefined == set()


def test_aarch64_core_reproduces_the_numpy_reference_byte_for_byte(tmp_path, tmp_path_factory):
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.skip("qemu-aarch64-static is not installed (Debian package qemu-user-static; .ci/run installs it as root)")
    native_core()
    from device import ProgramTrainer, load_bundle
    from device.data import to_model_input
    from device.optim import OptimConfig
    from device.step.program import IO, Memory, run_numpy
    from device_helpers import animal_npz, new_task_bundle
    bundle = load_bundle(new_task_bundle(tmp_path_factory, "tinytl-b"))
    z = np.load(animal_npz(tmp_path_factory, "train", 400))
    tr = ProgramTrainer(bundle, OptimConfig("adam"), engine="numpy")
    tr.x_view[...] = to_model_input(z["x"][:1], bundle.manifest)
    before = tr.arena_bytes().copy()
    io = IO(label=int(z["y"][0]), first=0, lr=float(np.float32(1e-3 / 0.1)), sqrt_c2=float(np.float32(np.sqrt(0.001))))
    for _ in range(2):                                    # two steps with the same sample and rates
        run_numpy(tr.program, Memory(tr.arena_bytes(), tr.model, io))
    files = {"prog": tr.program.encode(), "model": tr.model, "in": before, "out": tr.arena_bytes()}
    for k, v in files.items():
        v.tofile(tmp_path / f"{k}.bin")
    from device.native.build import HERE
    try:
        exe = build_executable("aarch64-linux-musl", [HERE / "test" / "driver.c"], tmp_path / "driver")
    except BuildError as e:
        pytest.skip(f"cannot build the aarch64 driver here: {e}")
    r = subprocess.run([qemu, str(exe), *(str(tmp_path / f"{k}.bin") for k in ("prog", "model", "in", "out")),
                        str(io.label), f"{io.lr:.9g}", f"{io.sqrt_c2:.9g}", "0", "2"], capture_output=True, text=True, timeout=600)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not np.array_equal(before, files["out"])       # the step really changed the arena
