"""The device CLI: real examples in every --help, clear one-line errors on bad input, checkpoints never lost."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from device import checkpoint as ck
from device_helpers import ROOT, animal_npz, new_task_bundle

CMDS = ("inspect", "plan", "infer", "eval", "train", "export")


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "device", *map(str, args)], cwd=ROOT, capture_output=True, text=True, input=stdin)


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    return new_task_bundle(tmp_path_factory, "tinytl-lb")


@pytest.mark.parametrize("cmd", CMDS)
def test_help_has_a_real_example(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and "example" in r.stdout and f"python -m device {cmd}" in r.stdout


def test_inspect_plan_infer_eval(lb, tmp_path_factory, tmp_path):
    r = run("inspect", "--bundle", lb)
    assert r.returncode == 0 and "trainable:" in r.stdout and "arena" in r.stdout
    r = run("plan", "--bundle", lb, "--optimizer", "sgd")
    assert r.returncode == 0 and "peak (greedy planner)" in r.stdout
    r = run("plan", "--bundle", lb, "--budget-kb", "16")  # a budget error lists what is live at the peak below its first line
    assert r.returncode == 2 and r.stderr.startswith("error: memory plan does not fit") and "over by" in r.stderr
    test = animal_npz(tmp_path_factory, "test", 64)
    r = run("eval", "--bundle", lb, "--data", test)
    assert r.returncode == 0 and r.stdout.startswith("accuracy")
    x = np.load(test)["x"][:3]
    np.save(tmp_path / "a.npy", x[0, :, :, 0])
    (tmp_path / "b.pgm").write_bytes(b"P5\n28 28\n255\n" + x[1].tobytes())
    r = run("infer", "--bundle", lb, "--images", tmp_path / "a.npy", tmp_path / "b.pgm")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    # any full-int8 .tflite: our engine == LiteRT reference kernels, byte for byte
    xq = np.random.default_rng(0).integers(-128, 128, (4, 32, 32, 1)).astype(np.int8)
    np.save(tmp_path / "x.npy", xq)
    for eng in ("numpy", "litert-ref"):
        assert run("infer", "--tflite", lb / "inference.tflite", "--input", tmp_path / "x.npy", "--output", tmp_path / f"{eng}.npy",
                   "--engine", eng).returncode == 0
    assert np.array_equal(np.load(tmp_path / "numpy.npy"), np.load(tmp_path / "litert-ref.npy"))


def test_bad_bundles(lb, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(lb, old)
    m = json.loads((old / "manifest.json").read_text())
    m["version"] = 99
    (old / "manifest.json").write_text(json.dumps(m))
    one_line_error(run("inspect", "--bundle", old), "format version 99")
    bad = tmp_path / "tampered"
    shutil.copytree(lb, bad)
    data = bytearray((bad / "inference.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "inference.tflite").write_bytes(bytes(data))
    one_line_error(run("inspect", "--bundle", bad), "inference.tflite", "SHA-256")


def test_bad_data_and_foreign_checkpoint_never_lose_the_last_good_one(lb, tmp_path_factory, tmp_path):
    good = animal_npz(tmp_path_factory, "train", 50)
    z = np.load(good)
    np.savez(tmp_path / "big.npz", x=np.zeros((4, 40, 40, 1), np.uint8), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 28, 28, 3), np.uint8), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "label.npz", x=z["x"][:4], y=np.array([0, 1, 12, 3]))
    one_line_error(run("eval", "--bundle", lb, "--data", tmp_path / "big.npz"), "40x40")
    one_line_error(run("eval", "--bundle", lb, "--data", tmp_path / "rgb.npz"), "3 channel(s)")
    ckdir = tmp_path / "ck"
    r = run("train", "--bundle", lb, "--data", good, "--steps", "6", "--checkpoint-dir", ckdir, "--checkpoint-every", "3")
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in ckdir.glob("ckpt-*.npz")}
    one_line_error(run("train", "--bundle", lb, "--data", tmp_path / "label.npz", "--steps", "9", "--checkpoint-dir", ckdir),
                   "label 12", "outside the head's classes")
    other = new_task_bundle(tmp_path_factory, "tinytl-b")
    one_line_error(run("train", "--bundle", other, "--data", good, "--steps", "9", "--checkpoint-dir", ckdir), "another bundle")
    lines = f"11 {tmp_path / 'a.npy'}\n" + "".join(f"{k} {tmp_path / 'a.npy'}\n" for k in range(3))
    np.save(tmp_path / "a.npy", z["x"][0])
    one_line_error(run("train", "--bundle", lb, "--stdin", "--steps", "9", "--checkpoint-dir", ckdir, stdin=lines), "label 11")
    after = {p.name: p.read_bytes() for p in ckdir.glob("ckpt-*.npz")}
    assert "ckpt-000000006.npz" in after and after["ckpt-000000006.npz"] == before["ckpt-000000006.npz"]
    r = run("export", "--bundle", lb, "--checkpoint-dir", ckdir, "--out", tmp_path / "p.npz")
    assert r.returncode == 0 and (tmp_path / "p.npz").stat().st_size < 1_000_000


def test_partial_run_export_merge_eval_with_litert(lb, tmp_path_factory, tmp_path):
    """The demo's path: a TinyTL-L+B bundle of which only the biases learn (as the simulator's --trainables
    tinytl-b on a 256 KB MCU), exported, merged into a stock .tflite, evaluated by LiteRT: the merged file must
    give the accuracy our engine gives with the trained parameters (the same int8 model, so equal counts)."""
    from device import load_bundle
    from device.loop import LoopConfig, train
    from device.optim import OptimConfig
    from firmware_sim import trainables
    b = load_bundle(lb)
    biases = trainables.method_names(b, "tinytl-b")
    assert biases and len(biases) < len(b.trainable)
    z = np.load(animal_npz(tmp_path_factory, "train", 60))
    ckdir = tmp_path / "ck"
    train(trainables.with_trainables(b, biases), OptimConfig("sgd", lr=1e-2, total_steps=20),
          LoopConfig(steps=20, seed=0, checkpoint_dir=str(ckdir), checkpoint_every=10, log_every=0),
          data=(z["x"], z["y"]), log=lambda s: None)
    r = run("export", "--bundle", lb, "--checkpoint-dir", ckdir, "--out", tmp_path / "t.npz")
    assert r.returncode == 0 and f"{len(biases)} learned tensors" in r.stdout, r.stdout + r.stderr
    t = np.load(tmp_path / "t.npz")
    assert set(t.files) == set(b.trainable)
    assert any(not np.array_equal(t[n], b.trainable[n]) for n in biases)  # it learned
    assert all(np.array_equal(t[n], b.trainable[n]) for n in set(b.trainable) - set(biases))  # the rest as shipped
    m = subprocess.run([sys.executable, "-m", "convert", "merge", "--bundle", str(lb), "--trained", str(tmp_path / "t.npz"),
                        "--out", str(tmp_path / "adapted.tflite")], cwd=ROOT, capture_output=True, text=True)
    assert m.returncode == 0, m.stderr[-2000:]
    test = animal_npz(tmp_path_factory, "test", 64)
    acc = {}
    for args in (("--tflite", tmp_path / "adapted.tflite", "--engine", "litert-ref"), ("--tflite", tmp_path / "adapted.tflite"),
                 ("--trained", tmp_path / "t.npz")):
        r = run("eval", "--bundle", lb, "--data", test, *args)
        assert r.returncode == 0, r.stderr
        acc[args[0] + args[-1].__str__()[-4:]] = float(r.stdout.split()[1])
    assert len(set(acc.values())) == 1, acc
    one_line_error(run("eval", "--bundle", lb, "--data", test, "--tflite", tmp_path / "adapted.tflite", "--trained", tmp_path / "t.npz"),
                   "exclude each other")
    # a .tflite of another model (here: 28x28 inputs instead of 32x32) is named, not run on the wrong inputs
    other = subprocess.run([sys.executable, "-c", "import numpy as np, tensorflow as tf\n"
                            "f = tf.function(lambda x: x[:, :2, 0, 0] * 2.0, input_signature=[tf.TensorSpec((1, 28, 28, 1), tf.float32)])\n"
                            f"open({str(tmp_path / 'other.tflite')!r}, 'wb').write(tf.lite.TFLiteConverter.from_concrete_functions("
                            "[f.get_concrete_function()]).convert())"], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr[-1500:]
    for eng in ("numpy", "litert"):
        one_line_error(run("eval", "--bundle", lb, "--data", test, "--tflite", tmp_path / "other.tflite", "--engine", eng),
                       "other.tflite", "input [28, 28, 1]", "[32, 32, 1]")
