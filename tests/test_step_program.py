"""The compiled step program on a real bundle: its forward equals the int8 engine (LiteRT-exact) tensor for
tensor, the C core and the numpy reference agree bit for bit over 200 steps, it learns like the numpy Trainer,
and a step on the C core allocates nothing beyond the arena."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from device import ProgramError, ProgramTrainer, load_bundle
from device.data import to_model_input
from device.engine import Engine
from device.optim import OptimConfig
from device.planner import plan_naive
from device.trainer import Trainer
from device_helpers import animal_npz, new_task_bundle
from step_helpers import native_core


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(new_task_bundle(tmp_path_factory, "tinytl-b"))


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    return load_bundle(new_task_bundle(tmp_path_factory, "tinytl-lb"))


def tinytl_l(lb):
    """TinyTL-L: the lite branches (weights, GroupNorm gamma/beta) and the classifier, biases frozen."""
    from firmware_sim.trainables import with_trainables
    return with_trainables(lb, [n for n in lb.trainable if ".lite." in n or n.startswith("classifier")])


@pytest.fixture(scope="module")
def data(tmp_path_factory, bundle):
    z = np.load(animal_npz(tmp_path_factory, "train", 400))
    return to_model_input(z["x"], bundle.manifest), z["y"]


@pytest.mark.parametrize("engine,method", [("numpy", "tinytl-b"), ("native", "tinytl-b"), ("numpy", "tinytl-lb"),
                                           ("native", "tinytl-lb")])
def test_forward_equals_the_engine_on_every_tensor(bundle, lb, data, engine, method):
    if engine == "native":
        native_core()
    bundle = lb if method == "tinytl-lb" else bundle   # L+B: the lite-branch weights are read from the arena
    tr = ProgramTrainer(bundle, OptimConfig("adam"), planner=plan_naive, engine=engine)  # naive: nothing overlaps
    x = data[0][:1]
    tr.forward(x)
    _, env = Engine(bundle.tflite_path, exact_float=True).run(x, intermediates=True)
    head_out = tr.taps.index[tr.head.outputs[0]]
    hidden = {t for ins in tr.program.instrs for t in ins.hides}   # inside a fused GroupNorm: never written
    assert len(hidden) >= 40                  # the lite branches (frozen in TinyTL-B) have their norms fused
    checked = 0
    for name, view in tr.arena.views.items():
        if name.startswith("act:") and int(name[4:]) != head_out and int(name[4:]) not in hidden:
            ref = env[int(name[4:])]
            assert view.dtype == ref.dtype and np.array_equal(view.reshape(ref.shape), ref), f"{name} differs"
            checked += 1
    assert checked > 100  # every activation of the model (int8 and float islands), bit for bit


def _run(bundle, data, engine, opt: OptimConfig, steps: int):
    tr = ProgramTrainer(bundle, opt, engine=engine)
    xs, ys = data
    losses = [tr.step(xs[k % len(ys)][None], int(ys[k % len(ys)]))[0] for k in range(steps)]
    return tr, losses


@pytest.mark.parametrize("method,optimizer", [("tinytl-b", "sgd"), ("tinytl-b", "adam"), ("tinytl-l", "sgd"),
                                              ("tinytl-l", "adam"), ("tinytl-lb", "sgd"), ("tinytl-lb", "adam")])
def test_c_core_and_numpy_bit_identical_over_200_steps(bundle, lb, data, method, optimizer):
    native_core()
    bundle = {"tinytl-b": bundle, "tinytl-l": tinytl_l(lb), "tinytl-lb": lb}[method]
    opt = OptimConfig(optimizer, lr=1e-2 if optimizer == "sgd" else 1e-3, total_steps=200)
    a, la = _run(bundle, data, "numpy", opt, 200)
    b, lb = _run(bundle, data, "native", opt, 200)
    assert la == lb
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k].reshape(-1).view(np.uint8), sb[k].reshape(-1).view(np.uint8)), f"{k} differs"
    assert a.updates == b.updates == 200
    assert np.mean(la[-50:]) < np.mean(la[:50])  # and it learns


@pytest.mark.parametrize("method", ["tinytl-b", "tinytl-lb"])
def test_same_updates_as_the_numpy_trainer(bundle, lb, data, method):
    """The program's fixed-order float32 arithmetic vs the Trainer's BLAS/float64: the same step to rounding."""
    bundle = lb if method == "tinytl-lb" else bundle
    opt = OptimConfig("sgd", lr=1e-2, total_steps=20)
    prog, _ = _run(bundle, data, "numpy", opt, 5)
    old = Trainer(bundle, opt)
    xs, ys = data
    for k in range(5):
        old.step(xs[k][None], int(ys[k]))
    for n in old.names:
        np.testing.assert_allclose(prog.params[n], old.params[n], rtol=1e-3, atol=1e-5, err_msg=n)
    np.testing.assert_allclose(prog.predict(xs[:20]), old.predict(xs[:20]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["tinytl-b", "tinytl-l", "tinytl-lb"])
def test_a_c_step_allocates_nothing_beyond_the_arena(bundle, lb, data, method):
    native_core()
    bundle = {"tinytl-b": bundle, "tinytl-l": tinytl_l(lb), "tinytl-lb": lb}[method]
    tr = ProgramTrainer(bundle, OptimConfig("adam", total_steps=60), engine="native")
    assert tr.arena_bytes().size == tr.plan.peak[tr.region]        # exactly the plan's bytes go to C
    xs, ys = data
    samples = [(xs[k][None], int(ys[k])) for k in range(50)]
    tr.step(*samples[0])
    tracemalloc.start()
    for x, y in samples:
        tr.step(x, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{method}, 50 C-core steps: Python heap peak {peak:,} bytes beyond the arena")
    assert peak <= 4096


def test_bad_programs_are_refused_before_any_step(bundle, tmp_path, monkeypatch):
    core = native_core()
    tr = ProgramTrainer(bundle, OptimConfig("adam"), engine="native")
    # an arena smaller than the plan
    small = tr.arena_bytes()[:-16]
    from device.native import NativeError
    from device.step.program import IO
    with pytest.raises(NativeError, match="arena is smaller than the program's plan"):
        core.run(tr.words, small, tr.model, IO())
    # a model buffer that is not the program's
    with pytest.raises(NativeError, match="model buffer"):
        core.run(tr.words, tr.arena_bytes(), tr.model[:-1], IO())
    # an instruction reaching past the arena (a write past the plan): refused before it writes, the bytes after intact
    from device.step.program import ARENA, Instr, Program, Ref
    arena = np.zeros(4096 + 64, np.uint8)
    arena[4096:] = 0xA5
    bad = Program([Instr("copy", dict(n=64, src=Ref(ARENA, 0, "uint8", (64,)), dst=Ref(ARENA, 4096 - 32, "uint8", (64,))))],
                  arena_bytes=4096, model=b"")
    with pytest.raises(NativeError, match="reaches past its memory"):
        core.run(bad.encode(), arena[:4096], np.zeros(0, np.uint8), IO())
    assert (arena[4096:] == 0xA5).all() and not arena[:4096].any()
    # a model buffer whose bytes are not the bundle's (the program's hash): refused before any step
    import dataclasses
    other = dataclasses.replace(bundle, manifest={**bundle.manifest, "files": {
        **bundle.manifest["files"], "inference.tflite": {**bundle.manifest["files"]["inference.tflite"], "sha256": "0" * 64}}})
    with pytest.raises(ProgramError, match="do not match the program's model hash"):
        ProgramTrainer(other, OptimConfig("adam"), engine="native")
    # a core that lacks an op the program needs: named, with the fix
    monkeypatch.setattr(type(core), "has_op", lambda self, code: code != 5)
    with pytest.raises(ProgramError, match="lacks op.*softmax_ce.*build-native"):
        ProgramTrainer(bundle, OptimConfig("adam"), engine="native")
