"""On-device learning: it learns, the arena is really used, NaN steps are skipped and rolled back."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from device import load_bundle
from device import checkpoint as ck
from device.data import to_model_input
from device.loop import LoopConfig, accuracy, train
from device.memplan import Arena
from device.optim import OptimConfig
from device.planner import plan_naive
from device.trainer import Trainer
from device_helpers import animal_npz, new_task_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(new_task_bundle(tmp_path_factory, "tinytl-lb"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tr, te = np.load(animal_npz(tmp_path_factory, "train")), np.load(animal_npz(tmp_path_factory, "test", 600))
    return (tr["x"], tr["y"]), (te["x"], te["y"])


def test_learns_new_task_well_above_chance(bundle, data):
    steps = 400
    r = train(bundle, OptimConfig("adam", lr=1e-3, total_steps=steps), LoopConfig(steps=steps, log_every=0),
              data=data[0], eval_data=data[1], log=lambda s: None)
    print(f"{steps} batch-1 steps: test accuracy {r['eval_acc']:.3f} (chance 0.1), {r['ms_per_step']:.1f} ms/step")
    assert r["skipped"] == 0 and r["eval_acc"] >= 0.3


def test_plan_checked_and_greedy_beats_naive(bundle):
    greedy = Trainer(bundle, OptimConfig("adam"))
    naive = Trainer(bundle, OptimConfig("adam"), planner=plan_naive)
    assert greedy.plan.peak["sram"] <= naive.plan.peak["sram"]
    kinds = {b.kind for b in greedy.plan.buffers}
    assert {"activation", "saved", "mask", "grad", "optimizer", "param", "scratch"} <= kinds
    masks = [b for b in greedy.plan.buffers if b.kind == "mask"]
    assert all(b.size == -(-int(np.prod(greedy.graph.tensors[b.name[5:]].shape)) // 8) for b in masks)  # 1 bit each


def _one_step(tr: Trainer, x, y) -> dict:
    tr.step(x, y)
    return {n: v.copy() for n, v in tr.params.items()}


def test_corrupting_one_planned_offset_changes_results(bundle, data):
    (x, y), _ = data
    xq = to_model_input(x[:1], bundle.manifest)
    good = _one_step(Trainer(bundle, OptimConfig("sgd", lr=0.1)), xq, int(y[0]))
    again = _one_step(Trainer(bundle, OptimConfig("sgd", lr=0.1)), xq, int(y[0]))
    assert all(np.array_equal(good[n], again[n]) for n in good)  # deterministic, so a difference means corruption
    tr = Trainer(bundle, OptimConfig("sgd", lr=0.1))
    plan = tr.plan
    # move one saved tensor (a lite branch's GroupNorm input) onto an activation gradient live at the same time
    saved = next(b for b in plan.buffers if b.kind == "saved" and ".lite.conv2" in b.name)
    victim = next(b for b in plan.buffers if b.kind == "grad" and b.name.startswith("grad:") and b.size >= saved.size
                  and b.first <= saved.last and saved.first <= b.last and b.first < saved.last)
    offsets = dict(plan.offsets) | {saved.name: plan.offsets[victim.name]}
    bad_plan = dataclasses.replace(plan, offsets=offsets)
    with pytest.raises(AssertionError, match="overlap"):
        Arena(bad_plan, tr.specs)  # the checker refuses it...
    params = {n: v.copy() for n, v in tr.params.items()}
    tr.arena = Arena(bad_plan, tr.specs, verify=False)  # ...and if it ran anyway, results would be wrong
    for n, v in params.items():
        tr.arena[f"param:{n}"][...] = v
    for n in tr.names:
        for k in range(1):
            tr.arena[f"opt{k}:{n}"][...] = 0
    tr._hook = None
    corrupted = _one_step(tr, xq, int(y[0]))
    assert any(not np.array_equal(good[n], corrupted[n]) for n in good)


def test_nan_steps_are_skipped_then_rolled_back(bundle, data, tmp_path):
    (x, y), _ = data
    opt = OptimConfig("adam", lr=1e-3, total_steps=40)
    tr = Trainer(bundle, opt)
    real = tr.backward
    poisoned = set(range(23, 27))  # 4 consecutive bad steps: 3 skips trigger a rollback, then one more skip

    def backward(dlogits):
        real(dlogits)
        if calls[0] in poisoned:
            tr.arena[f"pgrad:{tr.names[0]}"][0] = np.nan
        calls[0] += 1
    calls = [0]
    tr.backward = backward
    logs = []
    log = logs.append
    cfg = LoopConfig(steps=40, checkpoint_dir=str(tmp_path), checkpoint_every=10, max_bad=3, log_every=0)
    r = train(bundle, opt, cfg, data=(x[:100], y[:100]), log=log, trainer=tr)
    assert r["skipped"] == 4 and r["rollbacks"] == 1
    assert any("rolled back to the last good checkpoint ckpt-000000020.npz" in s for s in logs), logs
    assert all(np.isfinite(v).all() for v in tr.params.values())
    _, state, meta = ck.latest(tmp_path)
    assert meta["step"] == 40 and all(np.array_equal(state[f"param/{n}"], tr.params[n]) for n in tr.names)


def test_bias_only_patch_equals_rebuilt_kernels(tmp_path_factory, data):
    """The per-step patch updates TinyTL-B biases in the prepared kernels (set_bias) instead of re-preparing
    every conv; after a few steps every activation must equal freshly prepared kernels' byte for byte."""
    from device.kernels import KERNELS
    b = load_bundle(new_task_bundle(tmp_path_factory, "tinytl-b"))
    (x, y), _ = data
    xq = to_model_input(x[:4], b.manifest)
    tr = Trainer(b, OptimConfig("adam", lr=1e-2))
    tr.patch()
    eng = tr.engine
    before = [k for _, k in eng._steps]  # noqa: SLF001
    for i in range(3):
        tr.step(xq[i:i + 1], int(y[i]))
    tr.patch()
    bias_only = [k for k, (old, (_, new)) in enumerate(zip(before, eng._steps)) if old is new and hasattr(new, "set_bias")]  # noqa: SLF001
    assert len(bias_only) >= 5  # the fast path is really taken for the trained conv biases
    _, fast = eng.run(xq, intermediates=True)
    eng._steps = [(op, KERNELS[op.name](op, eng.tensors, eng._cfg)) for op, _ in eng._steps]  # noqa: SLF001
    _, full = eng.run(xq, intermediates=True)
    assert fast.keys() == full.keys()
    assert all(np.array_equal(fast[i], full[i]) for i in fast)


@pytest.mark.parametrize("method", ["tinytl-b", "tinytl-lb"])
def test_device_learning_tracks_its_pytorch_twin(tmp_path_factory, data, method):
    """Issue 5's acceptance at test size: batch-1 learning on the device vs the same run in PyTorch (same start,
    dequantized inputs, sample order, steps, lr schedule; bench.accuracy.torch_twin). `make bench` checks
    2 points at 600 steps on 300 images; here 300 steps on 200 random training images, the whole test split
    (2,002 images; the fixture's first 600 hold 3 classes only, the split is sorted by class): bound 4 points.
    A wrong gradient or update rule lands far outside it (the twin learns)."""
    from bench.accuracy import torch_twin
    from device_helpers import pretrained_checkpoint
    from train.adapt import DEFAULT_LR
    d = new_task_bundle(tmp_path_factory, method)
    (x, y), _ = data
    te = np.load(animal_npz(tmp_path_factory, "test"))
    test = (te["x"], te["y"].astype(np.int64))
    pick = np.random.default_rng(0).choice(len(y), 200, replace=False)
    tr_data, steps, lr = (x[pick], y[pick].astype(np.int64)), 300, DEFAULT_LR[method]
    r = train(load_bundle(d), OptimConfig("adam", lr=lr, total_steps=steps), LoopConfig(steps=steps, seed=0, log_every=0),
              data=tr_data, eval_data=test, log=lambda s: None)
    twin = torch_twin(method, d, tr_data, test, steps, lr, 0, pretrained_checkpoint(tmp_path_factory))
    print(f"{method}: device {r['eval_acc']:.4f}, PyTorch twin {twin:.4f}")
    assert twin >= 0.18 and r["eval_acc"] >= 0.18  # learned: chance is 0.10 (the quick checkpoint is weak)
    assert abs(r["eval_acc"] - twin) <= 0.04
