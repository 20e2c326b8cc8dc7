"""kill -9 of `python -m device train` at random moments: it resumes, no checkpoint is ever unreadable, and the
final parameters equal an uninterrupted run's with the same seed (bit for bit)."""
from __future__ import annotations

import random
import subprocess
import sys
import time

import numpy as np

from device import checkpoint as ck
from device import load_bundle
from device.loop import LoopConfig, train
from device.optim import OptimConfig
from device_helpers import ROOT, animal_npz, new_task_bundle

STEPS, EVERY = 300, 7


def _cmd(bundle, data, ckdir, export):
    return [sys.executable, "-m", "device", "train", "--bundle", str(bundle), "--data", str(data), "--steps", str(STEPS),
            "--lr", "1e-3", "--optimizer", "adam", "--seed", "3", "--checkpoint-dir", str(ckdir),
            "--checkpoint-every", str(EVERY), "--log-every", "0", "--export", str(export)]


def test_kill_9_and_resume_equals_uninterrupted(tmp_path_factory, tmp_path):
    bpath = new_task_bundle(tmp_path_factory, "tinytl-lb")
    data = animal_npz(tmp_path_factory, "train", 200)
    ckdir, export = tmp_path / "ck", tmp_path / "trained.npz"
    rng = random.Random(0)
    kills, steps_seen = 0, []
    for _ in range(4):
        before = ck.latest(ckdir)
        before = before[2]["step"] if before else 0
        p = subprocess.Popen(_cmd(bpath, data, ckdir, export), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # kill at a random moment AFTER this run made progress (a new checkpoint), not after a fixed time: on a
        # loaded machine start-up alone can take seconds, and a run killed before its first checkpoint tests nothing
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:
            now = ck.latest(ckdir)
            if now and now[2]["step"] > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the next steps or checkpoint write
        if p.poll() is None:
            p.kill()  # SIGKILL: no cleanup, no flush
            kills += 1
        p.wait()
        for f in ckdir.glob("ckpt-*.npz"):  # every checkpoint on disk is complete and readable
            ck.read(f)
        found = ck.latest(ckdir)
        steps_seen.append(found[2]["step"] if found else 0)
    assert kills >= 2, "the runs finished before they could be killed; raise STEPS"
    r = subprocess.run(_cmd(bpath, data, ckdir, export), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert len(list(ckdir.glob("ckpt-*.npz"))) <= ck.KEEP
    b = load_bundle(bpath)
    z = np.load(data)
    ref = train(b, OptimConfig("adam", lr=1e-3, total_steps=STEPS), LoopConfig(steps=STEPS, seed=3, log_every=0),
                data=(z["x"], z["y"]), log=lambda s: None)["trainer"].params
    got = np.load(export)
    print(f"killed {kills} times; checkpoint steps after each kill: {steps_seen}")
    assert set(got.files) == set(ref)
    for n in ref:
        assert np.array_equal(got[n], ref[n]), n
