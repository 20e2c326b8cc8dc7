"""firmware_sim: profiles, refusal before the first step, flash is read-only, power loss, timeline, equality
with the device runtime, fit. One small new-task bundle (random mcunet-tiny with realistic BN statistics,
TinyTL-B, 16 px digits) is converted once; steps are few so the file stays well under two minutes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from device import make_trainer
from device.bundle import load_bundle
from device.loop import LoopConfig, train
from device.optim import OptimConfig
from device.tflite_reader import read_tflite
from device.trainer import Trainer
from firmware_sim import FlashError, ProfileError, SimConfig, SimRefused, load_profile, simulate
from firmware_sim import boot, faults, flash_image, report, trainables
from firmware_sim.fit import rewrite
from firmware_sim.profiles import list_profiles

STEPS = 4


@pytest.fixture(scope="module")
def digits():
    from train.data import load_dataset
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, digits):
    from convert import ConvertConfig, convert
    from convert import nhwc
    from train.checkpoint import save_checkpoint
    from train.data import Preprocess
    from train.models import build_model, load_spec
    torch.manual_seed(0)
    model = build_model(load_spec("mcunet-tiny", resolution=16, num_classes=10, in_channels=1))
    x = torch.from_numpy(nhwc(digits.train.x[:128], Preprocess(16, 1))).permute(0, 3, 1, 2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    d = tmp_path_factory.mktemp("sim")
    save_checkpoint(d / "model.pt", model.eval(), preprocess=Preprocess(16, 1).to_dict(), classes=list(digits.classes),
                    meta={"stage": "pretrain", "config": {"data": "digits", "seed": 0}})
    convert(ConvertConfig(checkpoint=str(d / "model.pt"), out=str(d / "bundle"), method="tinytl-b", classes=10,
                          calibration_samples=32, eval_samples=16), log=lambda *_: None)
    return d / "bundle"


@pytest.fixture(scope="module")
def data(digits):
    return (digits.train.x[:64], digits.train.y[:64]), (digits.test.x[:32], digits.test.y[:32])


def _cfg(**kw) -> SimConfig:
    return SimConfig(**({"steps": STEPS, "lr": 0.05, "checkpoint_every": 2, "eval_every": STEPS, "eval_limit": 16} | kw))


def _profile(tmp_path: Path, **fields) -> Path:
    base = {"name": "tiny", "kind": "mcu", "sram_kb": 256, "flash_kb": 1024, "clock_mhz": 100, "int8_macs_per_s": 1e8}
    text = "\n".join(f"{k}: {v}" for k, v in (base | fields).items() if v is not None)
    p = tmp_path / "p.yaml"
    p.write_text(text + "\n")
    return p


# ---- profiles -------------------------------------------------------------------------------------

def test_builtin_profiles_load():
    names = list_profiles()
    assert {"mcu-256k", "stm32f746", "stm32h743", "rpi-zero2w", "rpi4-4g", "jetson-nano-4g", "jetson-orin-nano-8g"} <= set(names)
    p = load_profile("mcu-256k")
    assert p.budgets == {"sram": 256 * 1024, "flash": 1024 * 1024} and p.step_region == "sram"
    assert load_profile("rpi-zero2w").budgets == {"dram": 256 * 2 ** 20}


@pytest.mark.parametrize("fields,needle", [({"sram_kb": None}, "missing field.*sram_kb"),
                                           ({"flash_kb": -1}, "'flash_kb' must be >= 0"),
                                           ({"sram_mb": 3}, "unknown field.*sram_mb"),
                                           ({"clock_mhz": "fast"}, "'clock_mhz' must be a number"),
                                           ({"kind": "fpga"}, "'kind' must be one of")])
def test_bad_profiles_name_file_and_field(tmp_path, fields, needle):
    p = _profile(tmp_path, **fields)
    with pytest.raises(ProfileError, match=needle) as e:
        load_profile(p)
    assert str(p) in str(e.value)


def test_unknown_profile():
    with pytest.raises(ProfileError, match="no such file.*mcu-256k"):
        load_profile("no-such-board")


# ---- refusal before the first step ---------------------------------------------------------------

def test_over_budget_refused_before_any_step(tmp_path, bundle_dir, data, monkeypatch):
    calls = []
    from device import ProgramTrainer
    for cls in (Trainer, ProgramTrainer):
        monkeypatch.setattr(cls, "step", lambda *a, **k: calls.append(1))
    small = load_profile(_profile(tmp_path, sram_kb=64))
    with pytest.raises(SimRefused) as e:
        simulate(bundle_dir, small, _cfg(), *data, tmp_path / "ck")
    msg = str(e.value)
    assert not calls and not (tmp_path / "ck").exists()
    for needle in ("peak", "budget 65536 bytes", "live at step", "layer", "what would fit", "fits in"):
        assert needle in msg, needle
    # the suggestion is computed: the deepest last:k it names really plans within 64 KB
    k = int(msg.split("--trainable-blocks last:")[1].split()[0])
    b = load_bundle(bundle_dir)
    peak = trainables.plan_for(b, trainables.last_k(list(b.trainable), k), OptimConfig("sgd")).peak["sram"]
    assert peak <= 64 * 1024


def test_ft_full_refused_tinytl_b_fits_mcu_256k(tmp_path, bundle_dir, data):
    p = load_profile("mcu-256k")
    with pytest.raises(SimRefused, match=r"FT-Full.*does not fit(.|\n)*over by(.|\n)*tinytl-b: fits"):
        simulate(bundle_dir, p, _cfg(trainables="ft-full"), *data, tmp_path / "ck")
    tr = boot.build_trainer(load_bundle(bundle_dir), p, OptimConfig("sgd"))
    assert tr.plan.peak["sram"] <= 256 * 1024


def test_weights_that_do_not_fit_flash(tmp_path, bundle_dir, data):
    with pytest.raises(FlashError, match="frozen weights take .* flash budget"):
        simulate(bundle_dir, load_profile(_profile(tmp_path, flash_kb=16)), _cfg(), *data, tmp_path / "ck")


# ---- flash ----------------------------------------------------------------------------------------

def test_write_to_flash_is_caught(bundle_dir):
    tr = boot.build_trainer(load_bundle(bundle_dir), load_profile("mcu-256k"), OptimConfig("sgd"), engine="numpy")
    flash = flash_image.place_weights(tr, load_profile("mcu-256k"))
    assert flash.image is tr.model                  # the program reads every frozen constant in the model buffer
    with pytest.raises(ValueError, match="read-only"):
        tr.model[100] = 1
    tr.step(np.zeros(tr.x_view.shape, np.int8), 0)
    assert tr._frozen is None                       # and no float copy of a frozen weight was ever made
    flash.verify()  # unchanged
    b = load_bundle(bundle_dir)   # one count of the weights' bytes: the flash image's own layout of the constants
    consts = {t.index: t.data for t in read_tflite(b.tflite_path).tensors if t.data is not None}
    assert flash.size == flash_image.weight_bytes(b) == flash_image.Flash(consts).size
    other = flash_image.ModelFlash(tr.model.copy(), flash.size)   # a write that got through is caught after the run
    other.image[100] ^= 1
    with pytest.raises(flash_image.FlashWriteFault):
        other.verify()


# ---- the run, equal to the device runtime ----------------------------------------------------------

@pytest.fixture(scope="module")
def baseline(tmp_path_factory, bundle_dir, data):
    r = simulate(bundle_dir, load_profile("mcu-256k"), _cfg(), *data, tmp_path_factory.mktemp("base") / "ck", log=lambda s: None)
    return r


def test_run_equals_device_runtime(bundle_dir, data, baseline):
    b = load_bundle(bundle_dir)
    tr = make_trainer(b, _cfg().optim(), engine="numpy")   # the simulator ran the C core: the same program, bit for bit
    assert baseline["engine"] == "native"
    train(b, tr.cfg, LoopConfig(steps=STEPS, seed=0, log_every=0), data=data[0], trainer=tr, log=lambda s: None)
    assert baseline["params"].keys() == tr.params.keys()
    assert all(np.array_equal(baseline["params"][n], tr.params[n]) for n in tr.names)
    assert any(not np.array_equal(baseline["params"][n], b.trainable[n]) for n in tr.names)  # it did learn
    assert baseline["canary_ok"] and baseline["budget"] == 256 * 1024 and baseline["step_mj_est"] > 0


def test_timeline_peak_equals_planner_peak(baseline, tmp_path):
    plan = baseline["plan"]
    t = report.timeline(plan, "sram")
    assert t["peak"] == plan.peak["sram"]
    assert max(t["live"]) <= t["peak"] and len(t["bars"]) == sum(1 for b in plan.buffers if b.size)
    report.write_run_report(baseline, tmp_path)
    assert (tmp_path / "memory.png").stat().st_size > 1000 and (tmp_path / "accuracy.png").exists()
    assert "Flash image SHA-256 unchanged" in (tmp_path / "report.md").read_text()


def test_power_loss_on_20_random_cut_points(tmp_path, bundle_dir, data, baseline):
    rng = np.random.default_rng(1)
    cuts = [faults.parse_cut("random", STEPS, rng) for _ in range(20)]
    assert {c.phase for c in cuts} >= {"forward", "backward", "ckpt-write"}
    profiles = list_profiles()
    for i, cut in enumerate(cuts):
        p = load_profile(profiles[i % len(profiles)])
        r = simulate(bundle_dir, p, _cfg(cuts=(cut,)), *data, tmp_path / f"ck{i}", log=lambda s: None)
        assert len(r["events"]) == 1 and r["events"][0]["resumed_from"] <= cut.step + 2, (cut, r["events"])
        assert all(np.array_equal(r["params"][n], baseline["params"][n]) for n in r["params"]), cut
        ckpts = sorted((tmp_path / f"ck{i}").glob("ckpt-*.npz"))
        assert ckpts and [c.name for c in ckpts] == r["checkpoints"]  # every checkpoint file is readable


@pytest.mark.parametrize("phase", faults.PHASES)
def test_power_cut_through_the_numpy_trainers_seam(tmp_path, bundle_dir, data, phase):
    """The numpy Trainer (the fallback for bundles the step program does not cover) stops where its on_phase
    seam says, nothing patched; the loop then resumes from the last checkpoint to the uninterrupted run's bits."""
    b = load_bundle(bundle_dir)
    o = _cfg().optim()
    ref = Trainer(b, o)
    train(b, o, LoopConfig(steps=STEPS, seed=0, log_every=0), data=data[0], trainer=ref, log=lambda s: None)
    loop = LoopConfig(steps=STEPS, seed=0, checkpoint_dir=str(tmp_path), checkpoint_every=1, log_every=0)
    tr = Trainer(b, o)
    with pytest.raises(faults.PowerLoss, match=f"power lost .*step 2 {phase} at 50%"):
        with faults.inject(faults.Cut(2, phase, 0.5), tr):
            train(b, o, loop, data=data[0], trainer=tr, log=lambda s: None)
    assert tr.on_phase is None                       # disarmed on the way out
    newest = max(int(p.name[5:14]) for p in tmp_path.glob("ckpt-*.npz"))
    assert newest == (2 if phase in ("forward", "backward", "update", "ckpt-cleanup") else 1), newest
    assert (phase in ("ckpt-write", "ckpt-fsync", "ckpt-rename")) == bool(list(tmp_path.glob(".ckpt-000000002.npz.tmp")))
    again = Trainer(b, o)
    train(b, o, loop, data=data[0], trainer=again, log=lambda s: None)
    assert all(np.array_equal(again.params[n], ref.params[n]) for n in ref.names)


# ---- fit and what-if rules --------------------------------------------------------------------------

def test_partial_update_and_rules(bundle_dir):
    b = load_bundle(bundle_dir)
    names = list(b.trainable)
    o = OptimConfig("sgd")
    peaks = [trainables.plan_for(b, trainables.last_k(names, k), o).peak["sram"] for k in range(len(trainables.units(names)) + 1)]
    assert peaks[0] < peaks[-1] and peaks[-1] == trainables.plan_for(b, names, o).peak["sram"]
    budget = (peaks[0] + peaks[-1]) // 2
    k, peak, _ = trainables.deepest(names, budget, lambda ns: trainables.plan_for(b, ns, o).peak["sram"])
    assert peak == peaks[k] <= budget and (k + 1 == len(peaks) or peaks[k + 1] > budget)
    assert trainables.deepest(names, peaks[0] - 1, lambda ns: trainables.plan_for(b, ns, o).peak["sram"]) is None
    assert trainables.deepest(names, peaks[-1], lambda ns: trainables.plan_for(b, ns, o).peak["sram"])[0] == len(peaks) - 1
    from device.engine import Engine
    plan = trainables.plan_for(b, names, o)
    from device.planner import plan_greedy
    prev = plan.peak["sram"]
    for i in range(1, 6):
        from firmware_sim.fit import RULES
        now = plan_greedy(rewrite(plan.buffers, Engine(b.tflite_path), RULES[:i])).peak["sram"]
        assert now <= prev + 64  # each rule only removes bytes (greedy may shift by alignment)
        prev = now


def test_convert_trainable_blocks():
    from convert import last_blocks
    names = ["stem.bn.bias", "blocks.0.a.bn.bias", "blocks.1.a.bn.bias", "blocks.1.lite.conv1.weight", "head.bn.bias",
             "classifier.weight"]
    assert last_blocks(names, 2) == ["blocks.1.a.bn.bias", "blocks.1.lite.conv1.weight", "head.bn.bias", "classifier.weight"]
    assert last_blocks(names, 0) == ["classifier.weight"]


def test_lite_branch_update_refused_on_mcu_256k_offers_the_bias_update(tmp_path, tmp_path_factory):
    """The demo's case: a TinyTL-L+B new-task bundle's full update (float32 lite-branch weights + their gradients
    and optimizer state) does not fit 256 KB; the refusal offers the bias update of the same bundle, with its
    planned peak, and that really runs within the budget (the frozen pretrained lite branches stay in the graph)."""
    from device.data import load_labelled
    from device_helpers import animal_npz, new_task_bundle
    lb = new_task_bundle(tmp_path_factory, "tinytl-lb")
    b = load_bundle(lb)
    train_data = load_labelled(str(animal_npz(tmp_path_factory, "train", 40)), b.labels)
    p = load_profile("mcu-256k")
    with pytest.raises(SimRefused) as e:
        simulate(lb, p, _cfg(), train_data, None, tmp_path / "ck")
    peak = trainables.plan_for(b, trainables.method_names(b, "tinytl-b"), OptimConfig("sgd")).peak["sram"]
    assert f"--trainables tinytl-b: fits {peak / 1024:.1f} KB" in str(e.value), str(e.value)
    assert peak <= p.budgets["sram"]
    r = simulate(lb, p, _cfg(trainables="tinytl-b", steps=4, eval_every=4), train_data, None, tmp_path / "ck2")
    assert r["plan"].peak["sram"] == peak and r["canary_ok"]


def test_trainable_blocks_argument_is_parsed_once_for_both_clis():
    import argparse

    from convert import last_blocks
    from device.graph import last_k_arg, last_units
    from train.errors import UserError
    assert last_k_arg("last:7") == 7 and last_k_arg("last:0") == 0
    names = ["stem.conv.bias", "blocks.0.dw.bias", "blocks.10.pw.bias", "blocks.2.pw.bias", "head.conv.bias", "classifier.weight"]
    assert last_units(names, 2) == ["blocks.10.pw.bias", "head.conv.bias", "classifier.weight"]  # blocks.10 after blocks.2
    assert last_units(names, 0) == ["classifier.weight"] and trainables.last_k(names, 2) == last_blocks(names, 2)
    with pytest.raises(UserError, match="k must be >= 0"):
        last_blocks(names, -1)
    for bad in ("first:3", "last:", "last:x", "7"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected last:K"):
            last_k_arg(bad)
