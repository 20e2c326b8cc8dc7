"""Flash to a board over a real OpenSSH server on 127.0.0.1 (throwaway host key, client key, known_hosts).

The "board" is this machine: sshd runs in the foreground (-D -e) on a free port as the current user with a
temporary AuthorizedKeysFile; each test flashes into its own root under tmp_path and runs the slot with
this venv's Python (--board-python), so no venv is built. Covered: a full deploy (+ re-flash keeps the
checkpoints, status, the service unit, `device train` through `current`) with the C core built for this
machine in the slot and self-tested there, a board we build no C core for (the numpy engine), a tampered
bundle (host check, damage in transit, self-test mismatch) or a damaged C core leaving the old slot current,
rollback, shell injection through a path and a host, dry run, and bad input: unreachable host, unknown host
key, wrong key, no Python, disk full.
"""
from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device.native import host_target
from flash import FlashConfig, FlashError, flash, format_status, rollback, seal, stage_slot, status
from flash import _deploy
from flash._service import units
from flash._ssh import BoardPath
from flash._stage import load_profile

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
LIB = f"device/native/lib/{host_target()}/libtinytl_core.so"  # where a slot holds this machine's C core


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "throwaway", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists() and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "openssh-server"], capture_output=True)
    if not Path(SSHD).exists() or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server not installed and not installable here (apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for k in ("host_key", "id", "wrong"):
        _keygen(d / k)
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
MaxStartups 50
LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.05)
    host_pub = " ".join((d / "host_key.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    yield {"dir": d, "port": port, "host": f"{getpass.getuser()}@127.0.0.1", "key": str(d / "id"),
           "opts": (f"UserKnownHostsFile={d / 'known_hosts'}", "GlobalKnownHostsFile=/dev/null")}
    proc.terminate()
    proc.wait(timeout=10)


def _cfg(sshd, root, bundle="", **kw) -> FlashConfig:
    base = dict(host=sshd["host"], port=sshd["port"], identity=sshd["key"], ssh_options=sshd["opts"], root=str(root),
                bundle=str(bundle), board_python=PY)
    return FlashConfig(**(base | kw))


def _resign(bundle: Path) -> None:
    """Recompute the manifest's SHA-256 entries after editing bundle files (a consistent, 'signed' edit)."""
    m = json.loads((bundle / "manifest.json").read_text())
    for name in m["files"]:
        data = (bundle / name).read_bytes()
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(m, indent=1))


@pytest.fixture(scope="module")
def c_core():
    """This machine's C core, built (flash would build it too; here a build failure skips, saying why)."""
    from device.native.build import BuildError, build
    try:
        return build(host_target())
    except BuildError as e:
        pytest.skip(f"the C core cannot be built here: {e}")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Bundle A: a small random mcunet-tiny with a fresh 3-class TinyTL-L+B head on digits (lite branches start at zero); bundle B: A with
    another report.md (another manifest hash, so another slot and checkpoint folder)."""
    import torch
    from convert import ConvertConfig, convert
    from train.checkpoint import save_checkpoint
    from train.data import Preprocess
    from train.models import build_model, load_spec
    d = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    model = build_model(load_spec("mcunet-tiny", resolution=32, num_classes=10, in_channels=1)).eval()
    save_checkpoint(d / "model.pt", model, preprocess=Preprocess(32, 1).to_dict(), classes=[str(k) for k in range(10)],
                    meta={"stage": "pretrain", "config": {"data": "digits", "seed": 0}})
    convert(ConvertConfig(checkpoint=str(d / "model.pt"), out=str(d / "A"), method="tinytl-lb", classes=3,
                          labels=("a", "b", "c"), data="digits", calibration_samples=32, eval_samples=64),
            log=lambda *_: None)
    shutil.copytree(d / "A", d / "B")
    (d / "B" / "report.md").write_text((d / "B" / "report.md").read_text() + "\nbundle B\n")
    _resign(d / "B")
    return d / "A", d / "B"


def _current(root: Path) -> str:
    return os.readlink(root / "current").rsplit("/", 1)[-1]


def test_full_deploy_reflash_status_service(sshd, bundles, c_core, tmp_path, capsys):
    a, _ = bundles
    root = tmp_path / "board"
    name = flash(_cfg(sshd, root, a, service=True, unit_dir=str(tmp_path / "units")))
    out = capsys.readouterr().out
    for step in ("prepare", "connect", f"native: {os.uname().machine} board: shipping {LIB}", "upload",
                 "verify: ok python", "verify: ok files", "self-test: ok plan", "self-test: ok inference",
                 f"self-test: ok native: C core {LIB}: 4 samples' int8 outputs equal the host's byte for byte; "
                 "3 update steps (adam): losses", "switch", "service"):
        assert step in out, out
    assert _current(root) == name and os.readlink(root / "current") == f"slots/{name}"
    slot = root / "slots" / name
    assert {p.name for p in slot.iterdir()} == {"device", "bundle", "expected", "profile.json", "slot.json", "checkpoints"}
    assert (slot / "device" / "selftest.py").is_file()
    # the C core: this machine's build only (no other target, no build stamps), listed in slot.json
    assert [p.relative_to(slot).as_posix() for p in (slot / "device" / "native" / "lib").rglob("*") if p.is_file()] == [LIB]
    meta = json.loads((slot / "slot.json").read_text())
    assert meta["native"] == {"target": host_target(), "library": LIB, "bytes": (slot / LIB).stat().st_size}
    assert meta["files"][LIB]["sha256"] == hashlib.sha256((slot / LIB).read_bytes()).hexdigest()
    bhash = meta["bundle_hash"]
    assert (root / "current" / "checkpoints").resolve() == (root / "checkpoints" / bhash).resolve()
    assert not list((root / "slots").glob(".incoming-*"))
    # the service: units written (systemd is not running here), Restart=on-failure, `device train` via current
    svc = (tmp_path / "units" / "tinytl-train.service").read_text()
    assert "Restart=on-failure" in svc and f'"{root}/current/checkpoints"' in svc and '"device" "train"' in svc
    assert f"PathChanged={root}/inbox" in (tmp_path / "units" / "tinytl-train.path").read_text()
    assert "systemd is not running" in out
    # run the unit's learning command for a few steps on an inbox of PGM images, as the service would
    rng = np.random.default_rng(0)
    for k, label in enumerate("abc"):
        (root / "inbox" / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            px = (rng.integers(0, 40, (32, 32)) + 100 * k).astype(np.uint8)
            (root / "inbox" / label / f"{i}.pgm").write_bytes(b"P5 32 32 255\n" + px.tobytes())
    cmd = [PY, "-m", "device", "train", "--bundle", f"{root}/current/bundle", "--data", f"{root}/inbox",
           "--checkpoint-dir", f"{root}/current/checkpoints", "--steps", "6", "--checkpoint-every", "3",
           "--eval-data", f"{root}/inbox", "--log-every", "3"]
    with open(root / "train.log", "a") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": f"{root}/current"})
    assert r.returncode == 0, r.stderr
    st = status(_cfg(sshd, root))
    assert st["current"] == name and st["step"] == 6 and st["bundle"]["labels"] == ["a", "b", "c"]
    text = format_status(_cfg(sshd, root), st)
    assert "ckpt-000000006.npz (step 6)" in text and "eval accuracy" in text and f"engine: C core {LIB}" in text, text
    # re-flashing the same bundle: a new slot, the same checkpoints (learning resumes)
    name2 = flash(_cfg(sshd, root, a))
    assert name2 != name and _current(root) == name2
    assert status(_cfg(sshd, root))["step"] == 6


def _tamper_weights(slot: Path) -> None:
    """Change int8 weight bytes of the shipped .tflite and re-sign manifest and slot.json: every hash check
    passes, only inference can notice."""
    from device.tflite_reader import read_tflite
    f = slot / "bundle" / "inference.tflite"
    data = bytearray(f.read_bytes())
    t = max((t for t in read_tflite(bytes(data)).tensors if t.data is not None and t.data.dtype == np.int8),
            key=lambda t: t.data.size)
    raw = t.data.tobytes()
    at = bytes(data).find(raw)
    assert at > 0
    data[at:at + len(raw)] = (t.data.astype(np.int16) // 2).astype(np.int8).tobytes()
    f.write_bytes(bytes(data))
    _resign(slot / "bundle")
    seal(slot)


def test_tampered_bundle_leaves_the_old_slot_current(sshd, bundles, c_core, tmp_path):
    a, b = bundles
    root = tmp_path / "board"
    good = flash(_cfg(sshd, root, a))
    profile = load_profile("rpi-zero2w")
    # 1. consistently re-signed weights: the self-test's byte-for-byte comparison fails on the board
    s1 = tmp_path / "s1"
    stage_slot(b, profile, s1)
    _tamper_weights(s1)
    with pytest.raises(FlashError, match=r"self-test failed on the board: FAIL inference: .* differ .*current slot unchanged"):
        flash(_cfg(sshd, root, staged=str(s1)))
    # 1b. a truncated C core, re-signed (a bad build, say): every hash check passes, loading it fails (it kills
    # the loading process with SIGBUS: the self-test loads it in a child first); the staged slot is sent as is
    s1b = tmp_path / "s1b"
    stage_slot(b, profile, s1b, native=host_target())
    (s1b / LIB).write_bytes((s1b / LIB).read_bytes()[:4096])
    seal(s1b)
    with pytest.raises(FlashError, match=rf"self-test failed on the board: FAIL native: the shipped C core {LIB} "
                                         r"does not load: the loader died of SIGBUS .*current slot unchanged"):
        flash(_cfg(sshd, root, staged=str(s1b)))
    # 2. a file damaged after the host sealed the slot: the board's SHA-256 check fails
    s2 = tmp_path / "s2"
    stage_slot(b, profile, s2)
    (s2 / "bundle" / "trainable.npz").write_bytes((s2 / "bundle" / "trainable.npz").read_bytes()[:-10])
    with pytest.raises(FlashError, match=r"verify failed on the board: FAIL files: bundle/trainable.npz: SHA-256 mismatch"):
        flash(_cfg(sshd, root, staged=str(s2)))
    # 3. an edited bundle on the host: refused before anything is copied
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    (bad / "trainable.json").write_text((bad / "trainable.json").read_text().replace("stem", "stEm", 1))
    with pytest.raises(FlashError, match="bundle check on the host failed: .*trainable.json: SHA-256 mismatch"):
        flash(_cfg(sshd, root, bad))
    assert _current(root) == good
    assert [p.name for p in (root / "slots").iterdir()] == [good]  # no incoming leftovers


def test_board_without_a_c_core_runs_numpy(sshd, bundles, tmp_path, capsys, monkeypatch):
    """A board whose architecture we build no C core for (here: this machine, reported as a 32-bit Pi):
    the slot ships none, flash says once that the board runs the numpy engine, the self-test runs the step
    program on numpy and passes."""
    connect = _deploy.connect
    monkeypatch.setattr(_deploy, "connect", lambda *a: dataclasses.replace(connect(*a), machine="armv7l", bits=32))
    root = tmp_path / "board"
    name = flash(_cfg(sshd, root, bundles[0]))
    out = capsys.readouterr().out
    assert out.count("the board runs the numpy engine") == 1, out
    assert "native: the board's Python is 32-bit (on armv7l): the board runs the numpy engine" in out
    assert ("self-test: ok native: no C core in this slot (the board's Python is 32-bit (on armv7l)): ran the "
            "numpy engine: 3 update steps (adam): losses") in out, out
    slot = root / "slots" / name
    assert _current(root) == name and not (slot / "device" / "native" / "lib").exists()
    assert json.loads((slot / "slot.json").read_text())["native"]["library"] is None


def test_rollback(sshd, bundles, tmp_path):
    a, b = bundles
    root = tmp_path / "board"
    first = flash(_cfg(sshd, root, a))
    second = flash(_cfg(sshd, root, b))
    assert _current(root) == second
    assert rollback(_cfg(sshd, root)) == first and _current(root) == first
    assert status(_cfg(sshd, root))["slots"] == [first, second]
    with pytest.raises(FlashError, match="no slot older than the current one"):
        rollback(_cfg(sshd, root))
    assert rollback(_cfg(sshd, root), to=second) == second and _current(root) == second


def test_shell_injection_in_paths_and_host(sshd, bundles, tmp_path):
    a, _ = bundles
    pwned = Path(f"/tmp/pwned-{os.getpid()}")
    pwned.unlink(missing_ok=True)
    root = tmp_path / f"board; touch {pwned}; $(touch {pwned}) `touch {pwned}` 'x"
    name = flash(_cfg(sshd, root, a))
    assert not pwned.exists()
    assert _current(root) == name and (root / "slots" / name / "bundle" / "manifest.json").is_file()
    assert rollback(_cfg(sshd, root), to=name) == name and status(_cfg(sshd, root))["current"] == name
    for host in (f"{sshd['host']}; touch {pwned}", f"-oProxyCommand=touch {pwned}", f"u@-oProxyCommand=touch {pwned}"):
        with pytest.raises(FlashError, match="bad --host"):
            flash(_cfg(sshd, tmp_path / "b2", a, host=host))
    assert not pwned.exists()


def test_dry_run_prints_every_command_and_changes_nothing(sshd, bundles, c_core, tmp_path, capsys):
    a, _ = bundles
    root = tmp_path / "dry;run$(x)"
    flash(_cfg(sshd, root, a, dry_run=True, service=True, board_python=None))
    out = capsys.readouterr().out
    for step in ("connect", "upload", "venv", "verify", "switch", "service", "prune"):
        assert f"[{step}] $ ssh " in out, step
    assert "--system-site-packages" in out and "Restart=on-failure" in out
    assert "native: would ship the C core of the board's architecture" in out
    assert f"{os.uname().machine} -> {LIB} ({(ROOT / LIB).stat().st_size:,} bytes)" in out, out
    assert not root.exists()


def test_unreachable_host(sshd, bundles, tmp_path):
    with pytest.raises(FlashError, match="connect: cannot reach .* connection refused"):
        flash(_cfg(sshd, tmp_path / "board", bundles[0], port=_free_port()))


def test_wrong_key_and_unknown_host_key(sshd, bundles, tmp_path):
    a, _ = bundles
    with pytest.raises(FlashError, match="refused the login with key .*wrong"):
        flash(_cfg(sshd, tmp_path / "board", a, identity=str(sshd["dir"] / "wrong")))
    (tmp_path / "empty_known_hosts").write_text("")
    with pytest.raises(FlashError, match="host key .* is unknown or has changed"):
        flash(_cfg(sshd, tmp_path / "board", a, ssh_options=(f"UserKnownHostsFile={tmp_path / 'empty_known_hosts'}",
                                                             "GlobalKnownHostsFile=/dev/null")))
    assert not (tmp_path / "board").exists()


def test_no_python_on_the_board(sshd, bundles, tmp_path):
    a, _ = bundles
    root = tmp_path / "board"
    good = flash(_cfg(sshd, root, a))
    with pytest.raises(FlashError, match="no Python on the board .*python3.99-missing"):
        flash(_cfg(sshd, root, a, board_python=None, python="python3.99-missing"))
    assert _current(root) == good


def test_disk_full_on_the_board(sshd, bundles, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    a, b = bundles
    root = tmp_path / "small"
    root.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        good = flash(_cfg(sshd, root, a))
        with pytest.raises(FlashError, match=r"space: disk full on the board: .* MB free"):
            flash(_cfg(sshd, root, b))
        # the space check passes by mistake (say, another process fills the disk): the copy itself fails
        monkeypatch.setattr("flash._deploy.size_bytes", lambda _: 1000)
        with pytest.raises(FlashError, match=r"upload: disk full on the board .*No space left.*current slot unchanged"):
            flash(_cfg(sshd, root, b))
        assert _current(root) == good and [p.name for p in (root / "slots").iterdir()] == [good]
    finally:
        subprocess.run(["umount", str(root)], check=False)


def test_selftest_uses_numpy_json_stdlib_only(bundles, c_core, tmp_path):
    """The board-side self-test, run locally with torch/tensorflow/LiteRT/train/convert blocked."""
    slot = tmp_path / "slot"
    stage_slot(bundles[0], load_profile("rpi-zero2w"), slot, native=host_target())
    blocker = ("import sys, runpy\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'tensorflow', 'ai_edge_litert', 'train', 'convert', 'yaml'):\n"
               "            raise ImportError('blocked: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "sys.argv = ['selftest', sys.argv[1]]\n"
               "runpy.run_module('device.selftest', run_name='__main__')\n")
    r = subprocess.run([PY, "-c", blocker, str(slot)], capture_output=True, text=True, cwd=slot,
                       env=os.environ | {"PYTHONPATH": str(slot)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert [l.split(":")[0] for l in r.stdout.splitlines()] == ["ok python", "ok files", "ok bundle", "ok plan", "ok inference",
                                                                "ok native"]
    assert f"ok native: C core {LIB}" in r.stdout
    # the host's expected state after the steps, changed in one bit: the C core's steps no longer match
    with np.load(slot / "expected" / "step.npz") as z:
        arrays = {k: z[k] for k in z.files}
    w = arrays["param/classifier.bias"]
    w.view(np.uint32)[0] ^= 1
    np.savez(slot / "expected" / "step.npz", **arrays)
    seal(slot)
    r = subprocess.run([PY, "-m", "device.selftest", str(slot)], capture_output=True, text=True, cwd=slot,
                       env=os.environ | {"PYTHONPATH": str(slot)})
    assert r.returncode == 1 and ("FAIL native: after 3 update steps on the C core: 'param/classifier.bias' differs "
                                  "in 1 of 3 values") in r.stdout, r.stdout
    # a profile the update step does not fit: the plan check fails, naming the profile
    (slot / "profile.json").write_text(json.dumps({"name": "tiny", "region": "dram", "budget_bytes": 1024}))
    seal(slot)
    r = subprocess.run([PY, "-m", "device.selftest", str(slot)], capture_output=True, text=True, cwd=slot,
                       env=os.environ | {"PYTHONPATH": str(slot)})
    assert r.returncode == 1 and "FAIL plan: profile tiny: memory plan does not fit" in r.stdout, r.stdout


def test_quoting_helpers():
    assert BoardPath("~/tinytl").join("slots", "x").word() == '"$HOME"/tinytl/slots/x'
    assert BoardPath("/a b/c;d").word() == "'/a b/c;d'"
    assert BoardPath("~").word() == '"$HOME"' and BoardPath("~/x").absolute("/home/pi") == "/home/pi/x"
    u = units("/srv/tl", "/srv/tl/venv/bin/python", 10, user_scope=False)["tinytl-train.service"]
    assert 'ExecStart="/srv/tl/venv/bin/python" "-m" "device" "train"' in u and "WantedBy=multi-user.target" in u
    with pytest.raises(FlashError, match="whitespace"):
        units("/srv/t l", "/usr/bin/python3", 10, user_scope=True)
    with pytest.raises(FlashError, match="rpi-zero2w"):
        load_profile("no-such-board")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TINYTL_TEST_BOARD_VENV") != "1",
                    reason="downloads numpy + ai-edge-litert (~20 s): set TINYTL_TEST_BOARD_VENV=1 to run")
def test_venv_created_once_then_reused(sshd, bundles, tmp_path, capsys):
    """The default path: the board's python3 builds ROOT/venv (--system-site-packages) and pip installs the
    board extra from the package index; the next flash reuses it. Skipped where that cannot work offline."""
    a, _ = bundles
    root = tmp_path / "board"
    try:
        flash(_cfg(sshd, root, a, board_python=None))
    except FlashError as e:
        if str(e).startswith("venv"):
            pytest.skip(f"cannot build the board venv here (python3-venv or the package index missing): {e}")
        raise
    assert "venv created" in capsys.readouterr().out
    flash(_cfg(sshd, root, a, board_python=None))
    assert "venv reused" in capsys.readouterr().out and (root / "venv" / "bin" / "python").exists()
