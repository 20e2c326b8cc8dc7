"""The firmware image (firmware_sim/firmware.py) and the emulated MCU (firmware_sim/emulated.py): the linker is the
judge of what fits (one byte over is refused, exactly enough builds), the emulated Cortex-M7 learns bit for bit
as the host's C core (TinyTL-B, SGD and Adam), a stack overflow and a flash write stop the run with the
function named, and a power cut on the emulated chip ends where an uninterrupted run does. The bundle is the
simulator tests' small one (random mcunet-tiny, 16 px digits, TinyTL-B)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device import ProgramTrainer, load_bundle
from device.data import to_model_input
from firmware_sim import SimConfig, load_profile, simulate
from firmware_sim.firmware import FirmwareError, FirmwareRefused, build_firmware
from test_firmware_sim import bundle_dir, data, digits  # noqa: F401  (fixtures: the small TinyTL-B bundle)

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("unicorn", reason="the emulated MCU needs the 'unicorn' package (host extra)")


def _profile(tmp: Path, name: str, sram: float, flash: float = 2048, cpu: str | None = "cortex-m7f") -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(f"name: {name}\nkind: mcu\nsram_kb: {sram!r}\nflash_kb: {flash!r}\nclock_mhz: 216\n"
                 "int8_macs_per_s: 2.16e8\n" + (f"cpu: {cpu}\n" if cpu else ""))
    return p


def _build(bundle_dir, tmp, profile, cfg=SimConfig(), **kw):
    return build_firmware(bundle_dir, load_profile(profile), cfg, tmp / "fw", log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def image(bundle_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fw")
    meta = _build(bundle_dir, tmp, _profile(tmp, "roomy", 512))
    return tmp / "fw", meta


def test_the_map_is_the_plan(bundle_dir, image):
    fw, meta = image
    s = meta["sizes"]
    tr = ProgramTrainer(load_bundle(bundle_dir), SimConfig().optim(), engine="numpy")
    assert s["sram"]["arena"] == tr.plan.peak["sram"] == meta["plan_peak"]          # the arena is the plan
    assert s["sram"]["mailbox"] == 88 and s["sram"]["stack"] == meta["stack_bytes"]
    assert s["sram"]["used"] == sum(v for k, v in s["sram"].items() if k not in ("used", "budget", "free"))
    assert 0 <= s["sram"]["other (data, alignment)"] < 64
    assert s["flash"]["model"] == len(tr.program.model) and s["flash"]["budget"] == 2048 * 1024
    binary = (fw / "firmware.bin").stat().st_size                        # the checkpoint slots follow the image
    assert binary + s["flash"]["checkpoints (2 slots)"] <= s["flash"]["used"] < binary + s["flash"]["checkpoints (2 slots)"] + 4096
    assert (fw / "link.ld").exists()
    # freestanding: no allocator, no libc beyond compiler-rt's float64 helpers
    from elftools.elf.elffile import ELFFile
    with open(fw / "firmware.elf", "rb") as f:
        names = {sym.name for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    assert not names & {"malloc", "calloc", "realloc", "free"} and "tt_run" in names


def test_the_linker_refuses_one_byte_over(bundle_dir, image, tmp_path):
    """SRAM of exactly what the image needs links; one byte less is refused by the linker, and the refusal is the
    planner's report with the byte count and what would fit."""
    _, meta = image
    need = meta["sizes"]["sram"]["used"]
    ok = _build(bundle_dir, tmp_path, _profile(tmp_path, "exact", need / 1024))
    assert ok["sizes"]["sram"]["free"] == 0
    with pytest.raises(FirmwareRefused) as e:
        _build(bundle_dir, tmp_path / "x", _profile(tmp_path, "short", (need - 1) / 1024))
    msg = str(e.value)
    assert "by the linker" in msg and "over by 1 bytes" in msg and "what would fit" in msg and "live at step" in msg
    assert not (tmp_path / "x" / "fw").exists()                            # nothing half-written


def test_bad_profiles_are_refused_before_building(bundle_dir, tmp_path):
    with pytest.raises(FirmwareError, match="field 'cpu' is missing: add one of cortex-m4f, cortex-m7f, cortex-m33f"):
        _build(bundle_dir, tmp_path, _profile(tmp_path, "nocpu", 512, cpu=None))
    with pytest.raises(Exception, match="field 'cpu' must be one of"):
        load_profile(_profile(tmp_path, "badcpu", 512, cpu="cortex-m0"))
    with pytest.raises(FirmwareError, match="linux"):
        _build(bundle_dir, tmp_path, "rpi4-4g")


def _samples(bundle_dir, data, n):
    (x, y), _ = data
    return to_model_input(x[:n], load_bundle(bundle_dir).manifest), y[:n]


@pytest.mark.parametrize("optimizer,lr", [("sgd", 1e-2), ("adam", 1e-3)])
def test_emulated_cortex_m7_learns_bit_for_bit_as_the_host_core(bundle_dir, data, tmp_path, optimizer, lr):
    from firmware_sim.emulated import EmulatedTrainer
    from step_helpers import native_core
    native_core()
    cfg = SimConfig(optimizer=optimizer, lr=lr, steps=12)
    _build(bundle_dir, tmp_path, _profile(tmp_path, "roomy", 512), cfg)
    b = load_bundle(bundle_dir)
    chip = EmulatedTrainer(b, cfg.optim(), tmp_path / "fw")
    host = ProgramTrainer(b, cfg.optim(), engine="native")
    xs, ys = _samples(bundle_dir, data, 12)
    chip.count_next = True
    for k in range(12):
        assert chip.step(xs[k][None], int(ys[k])) == host.step(xs[k][None], int(ys[k]))
    a, h = chip.state(), host.state()
    assert a.keys() == h.keys() and all(np.array_equal(a[k], h[k]) for k in a)    # bit-identical, every buffer
    assert np.array_equal(chip.predict(xs[:3]), host.predict(xs[:3]))
    assert chip.step_instructions[0] > 1_000_000 and chip.mcu.flash_unchanged()
    assert 0 < chip.mcu.stack_used() <= chip.mcu.stack_bytes


def test_a_stack_overflow_stops_the_run_naming_the_function(bundle_dir, data, tmp_path):
    from firmware_sim.emulated import EmulatedTrainer, EmulatorFault
    _build(bundle_dir, tmp_path, _profile(tmp_path, "roomy", 512), stack=256)
    chip = EmulatedTrainer(load_bundle(bundle_dir), SimConfig().optim(), tmp_path / "fw")
    xs, ys = _samples(bundle_dir, data, 1)
    with pytest.raises(EmulatorFault, match=r"stack overflow.*PC 0x[0-9a-f]+ in tt_\w+\+0x"):
        chip.step(xs[:1], int(ys[0]))


def test_a_write_to_flash_and_a_fetch_from_sram_are_faults(image):
    """Only the profile's flash (r-x) and SRAM (rw-) are mapped: code that writes flash, or runs from SRAM, stops."""
    from firmware_sim.emulated import EmulatedMCU, EmulatorFault
    mcu = EmulatedMCU(image[0])
    spare = mcu.flash_origin + (len(mcu.flash_image) + 15) // 16 * 16   # unused flash past the image
    mcu.write(spare, bytes.fromhex("0860"))                             # str r0, [r1]
    mcu.emu.reg_write(mcu.arm.UC_ARM_REG_R1, mcu.flash_origin)
    with pytest.raises(EmulatorFault, match=r"write to flash \(read-only\) at 0x08000000"):
        mcu._resume(spare)  # noqa: SLF001
    mcu.write(mcu.sram_origin + 4000, bytes.fromhex("0860"))
    with pytest.raises(EmulatorFault, match="instruction fetch from SRAM"):
        mcu._resume(mcu.sram_origin + 4000)  # noqa: SLF001


def test_power_cut_on_the_emulated_chip_ends_as_an_uninterrupted_run(bundle_dir, data, tmp_path):
    from firmware_sim import faults
    (x, y), ev = data
    prof = load_profile(_profile(tmp_path, "roomy", 512))
    base = SimConfig(steps=8, checkpoint_every=2, eval_every=4, eval_limit=8, optimizer="adam", lr=1e-3)
    _build(bundle_dir, tmp_path, prof.path, base)
    cfg = SimConfig(**{**base.__dict__, "firmware": str(tmp_path / "fw")})
    a = simulate(bundle_dir, prof, cfg, (x, y), ev, tmp_path / "a", log=lambda s: None)
    cut = SimConfig(**{**cfg.__dict__, "cuts": (faults.parse_cut("5:backward", 8, np.random.default_rng(0)),)})
    b = simulate(bundle_dir, prof, cut, (x, y), ev, tmp_path / "b", log=lambda s: None)
    assert len(b["events"]) == 1 and b["boots"] == 2 and b["emulated"]["instructions_per_step"] > 0
    assert all(np.array_equal(a["params"][n], b["params"][n]) for n in a["params"])


def test_cli_build_prints_the_map_and_refuses_with_exit_3(bundle_dir, tmp_path):
    prof = _profile(tmp_path, "tiny", 64)
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "build", "--bundle", str(bundle_dir), "--profile", str(prof),
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 3 and "by the linker" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    prof = _profile(tmp_path, "roomy", 512)
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "build", "--bundle", str(bundle_dir), "--profile", str(prof),
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "SRAM" in r.stdout and "arena" in r.stdout, r.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "firmware.json").read_text())["cpu"] == "cortex-m7f"


@pytest.mark.parametrize("cpu", ["cortex-m7f", "cortex-m4f"])
def test_qemu_mps2_boards_run_the_same_steps_to_the_same_bits(bundle_dir, data, tmp_path, cpu):
    """QEMU enforces the CPU model (Unicorn does not): the image for each cpu, linked at 0x0 for MPS2 (AN500 is a
    Cortex-M7, AN386 a Cortex-M4), runs 3 steps from flash and prints its state: equal to the host core's."""
    import shutil
    if shutil.which("qemu-system-arm") is None:
        pytest.skip("qemu-system-arm is not installed (Debian package qemu-system-arm; `make emulators` installs it as root)")
    from firmware_sim.emulated import run_mps2, state_bytes
    from step_helpers import native_core
    native_core()
    cfg = SimConfig(optimizer="adam", lr=1e-3, steps=3)
    xs, ys = _samples(bundle_dir, data, 3)
    build_firmware(bundle_dir, load_profile(_profile(tmp_path, "mps2", 512, 2048, cpu)), cfg, tmp_path / "fw",
                   flash_origin=0, script=(xs, ys), log=lambda s: None)
    printed = run_mps2(tmp_path / "fw", timeout=300)
    host = ProgramTrainer(load_bundle(bundle_dir), cfg.optim(), engine="native")
    for k in range(3):
        host.step(xs[k][None], int(ys[k]))
    names = [n for n in host.specs if n.split(":")[0] in ("param", "opt0", "opt1")]
    assert len(names) > 10
    for n in names:
        v = np.ascontiguousarray(host.arena[n]).tobytes()
        assert state_bytes(printed, host.plan.offsets[n], len(v)) == v, f"{n} differs on {cpu}"


def test_flash_checkpoints_two_slots_survive_a_cut_during_a_write(bundle_dir, data, image):
    """The firmware checkpoints into two flash slots (sequence number, CRC-32, header last): after a cut in the
    middle of writing the newer one, the chip boots from the older; after a whole one, from the newest."""
    from firmware_sim.emulated import EmulatedTrainer, EmulatorPowerCut
    fw, meta = image
    assert meta["sizes"]["flash"]["checkpoints (2 slots)"] == 2 * meta["checkpoint_slot_bytes"] > 0
    b = load_bundle(bundle_dir)
    xs, ys = _samples(bundle_dir, data, 6)
    chip = EmulatedTrainer(b, SimConfig().optim(), fw)
    assert chip.mcu.restored() == (0, -1)                      # a new chip: the build's initial state
    for k in range(3):
        chip.step(xs[k][None], int(ys[k]))
    at3 = chip.state()                                         # checkpoint #1 (slot 0), 3 steps
    for k in range(3, 5):
        chip.step(xs[k][None], int(ys[k]))
    chip.mcu.cut_flash_after = 100                             # the power goes 100 bytes into checkpoint #2
    with pytest.raises(EmulatorPowerCut):
        chip.state()
    again = EmulatedTrainer(b, SimConfig().optim(), fw, keep_flash=chip.mcu.ckpt_region())
    assert again.mcu.restored() == (1, 3)
    again._pull()  # noqa: SLF001  (the arena as the firmware restored it, without writing another checkpoint)
    for n in again.names:
        assert np.array_equal(again.arena[f"param:{n}"], at3[f"param/{n}"])
    assert np.array_equal(again.arena[f"opt0:{again.names[0]}"], at3[f"opt0/{again.names[0]}"])
    for k in range(3, 5):
        again.step(xs[k][None], int(ys[k]))
    again.updates = 5
    at5 = again.state()                                        # checkpoint #2, whole
    third = EmulatedTrainer(b, SimConfig().optim(), fw, keep_flash=again.mcu.ckpt_region())
    assert third.mcu.restored() == (2, 5) and third.mcu.flash_unchanged()
    third._pull()  # noqa: SLF001
    assert all(np.array_equal(third.arena[f"param:{n}"], at5[f"param/{n}"]) for n in third.names)
