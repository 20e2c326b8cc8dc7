"""Flash a bundle to a board over SSH, show its status, roll back. Board layout under the root (~/tinytl):

    slots/<time>-<hash>/   one self-contained slot per flash (see _stage.py); '.incoming-*' while in flight
    current -> slots/...   switched atomically (ln -s to a temp name, mv -T) only after every check passed
    venv/                  shared by the slots: the board requirements (numpy, ai-edge-litert)
    checkpoints/<hash>/    on-device learning state per bundle, outside the slots (survives re-flashes)
    inbox/  train.log      the watched folder and the learning log of the optional systemd service

Flash steps: prepare (host) -> connect -> native -> space -> upload -> venv -> verify -> self-test -> switch
[-> service] -> prune. Any failure removes the incoming slot and leaves `current` as it was. `native` puts the
C core built for the board's architecture (its Python's platform.machine(), learned at connect) into the slot;
for an architecture we do not build for, the slot ships none and the board runs the numpy engine.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import _service
from ._ssh import BoardPath, FlashError, Remote, check_host, last_line, q, say
from ._stage import LIB_DIR, NATIVE_TARGETS, load_profile, native_target, ship_native, size_bytes, slot_name, stage_slot, tar_bytes

BOARD_REQUIREMENTS = ("numpy>=1.23,<3", "ai-edge-litert>=1.2")  # pyproject.toml's `board` extra
MIN_PYTHON = (3, 9)


@dataclass(frozen=True)
class FlashConfig:
    host: str                                # USER@HOST (or an alias from ~/.ssh/config)
    bundle: str = ""                         # bundle directory to flash
    port: int | None = None                  # ssh port
    identity: str | None = None              # ssh private key (-i)
    ssh_options: tuple[str, ...] = ()        # extra `ssh -o` options, e.g. UserKnownHostsFile=...
    root: str = "~/tinytl"                   # board directory holding slots/, current, venv/, checkpoints/
    profile: str = "rpi-zero2w"              # board profile (firmware_sim/profiles/<name>.yaml or a path): memory budget
    python: str = "python3"                  # the board's Python, used to create the venv
    board_python: str | None = None          # use this board interpreter as is (no venv; it must have numpy)
    service: bool = False                    # install the systemd learning service
    service_steps: int = 100000              # --steps of `device train` in the service (total updates)
    unit_dir: str | None = None              # where units go (default: /etc/systemd/system as root, else ~/.config/systemd/user)
    keep: int = 3                            # slots kept on the board (besides the current one)
    dry_run: bool = False                    # print every remote command, run none
    verbose: bool = False                    # print every remote command as it runs
    staged: str | None = None                # a slot already built by stage_slot (tests, re-flashes)

    def remote(self) -> Remote:
        return Remote(check_host(self.host), self.port, self.identity, tuple(self.ssh_options),
                      dry_run=self.dry_run, echo=self.verbose)


@dataclass
class Board:
    """What `connect` learned about the board."""
    home: str = "$HOME"
    python: str = ""
    version: tuple[int, int] = (0, 0)
    machine: str = ""              # platform.machine() of that Python (uname -m), e.g. aarch64
    bits: int = 0                  # its pointer size: 32 on a 32-bit userland under a 64-bit kernel
    free: int = 0                  # bytes free where the root is (or would be)
    venv: bool = False             # the shared venv exists
    current: str = ""              # `current` link target ('' if none)
    systemd: bool = False          # systemd runs as init
    uid: int = -1
    raw: dict = field(default_factory=dict)


def _kv(text: str) -> dict[str, str]:
    return dict(l.split("=", 1) for l in text.splitlines() if "=" in l)


def connect(r: Remote, root: BoardPath, python: str) -> Board:
    venv_py = root.join("venv", "bin", "python").word()
    cmd = (f"printf 'home=%s\\n' \"$HOME\"; echo uid=$(id -u); "
           f"if P=$(command -v {q(python)}); then printf 'python=%s\\n' \"$P\"; "
           f"\"$P\" -c 'import sys, platform, struct; print(\"version=%d.%d\" % sys.version_info[:2]); "
           f"print(\"machine=\" + platform.machine()); print(\"bits=%d\" % (8 * struct.calcsize(\"P\")))'; fi; "
           f"d={root.word()}; while [ ! -d \"$d\" ]; do d=$(dirname -- \"$d\"); done; "
           f"printf 'free_kb=%s\\n' \"$(df -Pk -- \"$d\" | awk 'NR==2 {{print $4}}')\"; "
           f"[ -x {venv_py} ] && echo venv=1; "
           f"printf 'current=%s\\n' \"$(readlink -- {root.join('current').word()} 2>/dev/null)\"; "
           f"[ -d /run/systemd/system ] && echo systemd=1; true")
    out = _kv(r.run("connect", cmd).stdout)
    if r.dry_run:  # a guess, for printing: the unit text needs an absolute home
        user = r.host.split("@")[0] if "@" in r.host else "USER"
        return Board(home="/root" if user == "root" else f"/home/{user}", python=python, version=MIN_PYTHON,
                     free=1 << 62, uid=0 if user == "root" else 1000)
    b = Board(home=out.get("home", ""), python=out.get("python", ""), free=int(out.get("free_kb") or 0) * 1024,
              machine=out.get("machine", ""), bits=int(out.get("bits") or 0),
              venv=out.get("venv") == "1", current=out.get("current", ""), systemd=out.get("systemd") == "1",
              uid=int(out.get("uid", -1)), raw=out)
    if not b.python:
        raise FlashError(f"connect: no Python on the board ('{python}' is not on the PATH of {r.host}); "
                         "install it: sudo apt install python3 python3-venv")
    try:
        b.version = tuple(int(v) for v in out["version"].split("."))  # type: ignore[assignment]
    except (KeyError, ValueError):
        raise FlashError(f"connect: {b.python} on the board does not run") from None
    if b.version < MIN_PYTHON:
        raise FlashError(f"connect: the board's {b.python} is Python {b.version[0]}.{b.version[1]}; "
                         f"the runtime needs {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+")
    return b


def _slot_cmd(py_word: str, slot: BoardPath, checks: str) -> str:
    return f"cd -- {slot.word()} && PYTHONPATH={slot.word()} {py_word} -m device.selftest {slot.word()} --only {checks}"


def _on_board(r: Remote, step: str, cmd: str, **kw) -> str:
    try:
        return r.run(step, cmd, **kw).stdout
    except FlashError as e:
        if "No space left" in str(e):
            raise FlashError(f"{step}: disk full on the board ({e}); free space or lower --keep") from None
        raise


def flash(cfg: FlashConfig) -> str:
    """Flash cfg.bundle; returns the new slot's name. Raises FlashError naming the failed step."""
    with cfg.remote().session() as r:
        return _flash(cfg, r)


def _flash(cfg: FlashConfig, r: Remote) -> str:
    root = BoardPath(cfg.root)
    profile = load_profile(cfg.profile)
    with tempfile.TemporaryDirectory(prefix="flash-") as tmp:
        if cfg.staged:
            slot_dir = Path(cfg.staged)
            meta = json.loads((slot_dir / "slot.json").read_text())
        else:
            slot_dir = Path(tmp) / "slot"
            meta = stage_slot(cfg.bundle, profile, slot_dir)
        name, bhash = slot_name(meta["bundle_hash"]), meta["bundle_hash"]
        nbytes = size_bytes(slot_dir)
        say(f"prepare: slot {name}: {meta['model']} ({', '.join(meta['labels'])}), {len(meta['files'])} files, "
            f"{nbytes / 2**20:.1f} MB, profile {meta['profile']}")
        board = connect(r, root, cfg.board_python or cfg.python)
        say(f"connect: {cfg.host}: Python {board.version[0]}.{board.version[1]} ({board.python}"
            + (f", {board.machine} {board.bits}-bit" if board.machine else "")
            + f"), {board.free / 2**20:.0f} MB free, current slot: {board.current or 'none'}")
        slot_dir, meta = native(cfg, board, slot_dir, meta, Path(tmp))
        nbytes = size_bytes(slot_dir)
        need = int(nbytes * 1.1) + (1 << 20) + (0 if cfg.board_python or board.venv else 200 << 20)
        if board.free < need:
            raise FlashError(f"space: disk full on the board: {board.free / 2**20:.1f} MB free under {cfg.root}, "
                             f"the slot{'' if cfg.board_python or board.venv else ' and the venv'} need "
                             f"{need / 2**20:.1f} MB; the current slot is unchanged")
        incoming = root.join("slots", f".incoming-{name}")
        try:
            _deploy(cfg, r, root, board, slot_dir, incoming, name, bhash, nbytes)
        except FlashError as e:
            if not cfg.dry_run:
                try:
                    r.run("cleanup", f"rm -rf -- {incoming.word()}", check=False)
                except FlashError:
                    pass
            raise FlashError(f"{e} [current slot unchanged: {board.current or 'none'}]") from None
    return name


def native(cfg: FlashConfig, board: Board, slot_dir: Path, meta: dict, tmp: Path) -> tuple[Path, dict]:
    """The slot with the C core built for the board's architecture (see ship_native), as (slot dir, slot.json).
    A staged slot that already ships the board's library is sent as it is; one that does not is changed in
    a copy, never in place."""
    if cfg.dry_run:
        from device import native_build

        def would(machine: str) -> str:
            t = NATIVE_TARGETS[machine]
            lib = native_build.library_path(t)
            return (f"{machine} -> {LIB_DIR}/{t}/{lib.name} " + (f"({lib.stat().st_size:,} bytes)" if lib.exists()
                                                                 else "(not built yet: flash builds it on the host)"))
        say(f"native: would ship the C core of the board's architecture (its Python's platform.machine(), read at "
            f"connect): {would('aarch64')}, {would('x86_64')}; another architecture gets none and runs the numpy engine")
        return slot_dir, meta
    target = native_target(board.machine) if board.bits in (0, 64) else None
    have = meta.get("native") or {}
    if target and have.get("library") and have.get("target") == target:
        say(f"native: {board.machine} board: the slot ships {have['library']} ({have['bytes']:,} bytes)")
        return slot_dir, meta
    if target is None:
        why = (f"the board's Python is {board.bits}-bit (on {board.machine})" if board.bits not in (0, 64)
               else f"no C core build for {board.machine or 'an unknown'} boards (built for: "
                    f"{', '.join(sorted(set(NATIVE_TARGETS.values())))})")
    else:
        why = ""
    if cfg.staged:  # never edit a staged slot in place
        shutil.copytree(slot_dir, tmp / "slot")
        slot_dir = tmp / "slot"
    meta = ship_native(slot_dir, target, why)
    rec = meta["native"]
    if rec["library"]:
        say(f"native: {board.machine} board: shipping {rec['library']} ({rec['bytes']:,} bytes, built on the host)")
    else:
        say(f"native: {rec['reason']}: the board runs the numpy engine")
    return slot_dir, meta


def _deploy(cfg: FlashConfig, r: Remote, root: BoardPath, board: Board, slot_dir: Path, incoming: BoardPath,
            name: str, bhash: str, nbytes: int) -> None:
    _on_board(r, "upload", f"mkdir -p -- {root.join('slots').word()} && rm -rf -- {incoming.word()} && "
                           f"mkdir -- {incoming.word()} && tar -xf - --no-same-owner -C {incoming.word()}",
              stdin=b"" if cfg.dry_run else tar_bytes(slot_dir), stdin_note=f"tar of {slot_dir} ({nbytes:,} bytes)")
    say(f"upload: {nbytes:,} bytes -> {cfg.root}/slots/.incoming-{name}")
    py_word, py_abs = venv(cfg, r, root, board)
    # one board process for both steps: verify = python + files (SHA-256), self-test = bundle, plan, inference, native
    res = r.run("verify", _slot_cmd(py_word, incoming, "python files bundle plan inference native"), check=False)
    step = "verify"
    for line in res.stdout.splitlines():
        step = "self-test" if line.split(":")[0].split()[-1] in ("bundle", "plan", "inference", "native") else "verify"
        say(f"{step}: {line}")
    if res.returncode != 0:
        fail = next((l for l in res.stdout.splitlines() if l.startswith("FAIL")), "")
        if not fail:
            fail = last_line(res.stderr) or f"exit code {res.returncode}"
            if res.returncode > 128:  # the shell's code for a process killed by a signal (e.g. in a C library)
                fail = f"the board's Python died of signal {res.returncode - 128} ({fail})"
            if "No module named" in fail:
                fail += f" (the board's Python lacks it: drop --board-python to use the venv, or install python3-numpy)"
        raise FlashError(f"{step} failed on the board: {fail}")
    cur, tmp_link = root.join("current"), root.join(".current.tmp")
    out = _on_board(r, "switch", f"cd -- {root.word()} && mv -T -- {q('slots/.incoming-' + name)} {q('slots/' + name)} && "
                                 f"mkdir -p -- {q('checkpoints/' + bhash)} && "
                                 f"ln -sfn -- {q('../../checkpoints/' + bhash)} {q('slots/' + name + '/checkpoints')} && "
                                 f"ln -sfn -- {q('slots/' + name)} {tmp_link.word()} && mv -T -- {tmp_link.word()} {cur.word()} && "
                                 f"ls -1 -- slots")
    say(f"switch: current -> slots/{name} (checkpoints in {cfg.root}/checkpoints/{bhash[:12]}...)")
    if cfg.service:
        install_service(cfg, r, root, board, py_abs)
    else:
        _restart_service(r, board, cfg)
    prune(r, root, name, cfg.keep, sorted(n for n in out.split() if not n.startswith(".")))


def venv(cfg: FlashConfig, r: Remote, root: BoardPath, board: Board) -> tuple[str, str]:
    """The board interpreter for the slot, as (shell word, absolute path): --board-python as is, else the
    shared venv (created with --system-site-packages, so a Debian python3-numpy is reused, or kept)."""
    if cfg.board_python:  # the self-test's first check imports numpy with it
        say(f"venv: using {cfg.board_python} as is")
        return q(cfg.board_python), (cfg.board_python if cfg.board_python.startswith("/") else board.python)
    v = root.join("venv")
    reqs = " ".join(q(x) for x in BOARD_REQUIREMENTS)
    vpy = v.join("bin", "python").word()
    try:
        out = _on_board(r, "venv", f"{{ {{ [ -x {vpy} ] && echo reused; }} || {{ {q(board.python)} -m venv "
                                   f"--system-site-packages -- {v.word()} && echo created; }}; }} && {vpy} -m pip "
                                   f"install -q --disable-pip-version-check {reqs}")
    except FlashError as e:
        raise FlashError(f"{e} (on Raspberry Pi OS / JetPack: sudo apt install python3-venv python3-numpy)") from None
    say(f"venv: {cfg.root}/venv {out.strip() or 'ready'}, with {', '.join(BOARD_REQUIREMENTS)}")
    py = v.join("bin", "python")
    return py.word(), py.absolute(board.home)


def _scope(cfg: FlashConfig, board: Board) -> tuple[bool, str]:
    user = board.uid != 0
    unit_dir = cfg.unit_dir or ("~/.config/systemd/user" if user else "/etc/systemd/system")
    return user, unit_dir


def _systemctl(user: bool) -> str:
    return "systemctl --user" if user else "systemctl"


def install_service(cfg: FlashConfig, r: Remote, root: BoardPath, board: Board, py_abs: str) -> None:
    user, unit_dir = _scope(cfg, board)
    d = BoardPath(unit_dir)
    texts = _service.units(root.absolute(board.home), py_abs, cfg.service_steps, user)
    _on_board(r, "service", f"mkdir -p -- {d.word()} {root.join('inbox').word()}")
    for fname, text in texts.items():
        _on_board(r, "service", f"cat > {d.join(fname).word()}", stdin=text.encode(), stdin_note=f"unit {fname}")
        if cfg.dry_run:
            print(text)
    sc = _systemctl(user)
    if not board.systemd and not cfg.dry_run:
        say(f"service: systemd is not running on the board: units written to {unit_dir}, not enabled")
        return
    _on_board(r, "service", f"{sc} daemon-reload && {sc} enable --now {_service.UNIT}.path && "
                            f"{sc} try-restart {_service.UNIT}.service"
                            + (" && (loginctl enable-linger \"$(id -un)\" || true)" if user else ""))
    say(f"service: {_service.UNIT}.path enabled: drop images into {cfg.root}/inbox/<label>/ and watch "
        f"{cfg.root}/train.log")


def _restart_service(r: Remote, board: Board, cfg: FlashConfig) -> None:
    """A running learning service moves to the new `current` (it resumes from that bundle's checkpoints)."""
    if board.systemd and not cfg.dry_run:
        user, _ = _scope(cfg, board)
        r.run("restart", f"{_systemctl(user)} try-restart {_service.UNIT}.service", check=False)


def _slots(r: Remote, root: BoardPath) -> tuple[str, list[str]]:
    out = r.run("list", f"readlink -- {root.join('current').word()} || true; echo @@; "
                        f"ls -1 -- {root.join('slots').word()} 2>/dev/null || true").stdout
    cur, _, rest = out.partition("@@")
    return cur.strip(), sorted(s for s in rest.split() if not s.startswith("."))


def prune(r: Remote, root: BoardPath, current: str, keep: int, names: list[str]) -> None:
    """Remove the oldest slots beyond `keep` (never the current one); `names`: the board's slots."""
    if r.dry_run:
        r.run("prune", "rm -rf -- " + root.join("slots", "<slots older than the newest --keep>").word())
        return
    old = [n for n in names if n != current][:-keep or None] if keep >= 0 else []
    if old:
        r.run("prune", "rm -rf -- " + " ".join(root.join("slots", n).word() for n in old), check=False)
        say(f"prune: removed {len(old)} old slot(s): {', '.join(old)}")


def rollback(cfg: FlashConfig, to: str | None = None) -> str:
    """Point `current` at the newest slot older than it (or at `to`); returns that slot's name."""
    with cfg.remote().session() as r:
        return _rollback(cfg, r, to)


def _rollback(cfg: FlashConfig, r: Remote, to: str | None) -> str:
    root = BoardPath(cfg.root)
    if cfg.dry_run:
        r.run("rollback", f"readlink -- {root.join('current').word()}; ls -1 -- {root.join('slots').word()}")
        r.run("rollback", f"cd -- {root.word()} && ln -sfn -- slots/PREVIOUS .current.tmp && mv -T -- .current.tmp current")
        return "PREVIOUS"
    cur, names = _slots(r, root)
    cur_name = cur.rsplit("/", 1)[-1]
    if to:
        if to not in names:
            raise FlashError(f"rollback: no slot {to!r} on the board (slots: {', '.join(names) or 'none'})")
        target = to
    else:
        older = [n for n in names if n < cur_name] if cur_name else []
        if not older:
            raise FlashError(f"rollback: no slot older than the current one ({cur_name or 'none'}) on the board")
        target = older[-1]
    tmp_link = root.join(".current.tmp")
    r.run("rollback", f"cd -- {root.word()} && [ -f {q('slots/' + target + '/slot.json')} ] && "
                      f"ln -sfn -- {q('slots/' + target)} {tmp_link.word()} && mv -T -- {tmp_link.word()} {root.join('current').word()}")
    say(f"rollback: current -> slots/{target} (was {cur_name or 'none'})")
    r.run("restart", f"[ -d /run/systemd/system ] && {{ systemctl try-restart {_service.UNIT}.service 2>/dev/null || "
                     f"systemctl --user try-restart {_service.UNIT}.service 2>/dev/null; }}; true", check=False)
    return target


def status(cfg: FlashConfig) -> dict:
    """The board's slots, current bundle, last checkpoint and accuracy (from the learning log or a metrics JSON)."""
    r, root = cfg.remote(), BoardPath(cfg.root)
    cmd = (f"cd -- {root.word()} 2>/dev/null || {{ echo @@missing; exit 0; }}; "
           "echo @@current; readlink -- current; echo @@slots; ls -1 -- slots 2>/dev/null; "
           "echo @@slot; cat -- current/slot.json 2>/dev/null; echo @@ckpt; ls -1 -- current/checkpoints/ 2>/dev/null; "
           "echo @@metrics; cat -- current/checkpoints/metrics.json 2>/dev/null; "
           "echo @@log; grep -E 'accuracy|^step ' train.log 2>/dev/null | tail -n 3; "
           "echo @@service; systemctl is-active tinytl-train.service 2>/dev/null || "
           "systemctl --user is-active tinytl-train.service 2>/dev/null; true")
    out = r.run("status", cmd).stdout
    if cfg.dry_run:
        return {}
    sec: dict[str, list[str]] = {}
    key = None
    for line in out.splitlines():
        if line.startswith("@@"):
            key = line[2:]
            sec[key] = []
        elif key:
            sec[key].append(line)
    if "missing" in sec:
        raise FlashError(f"status: nothing flashed on {cfg.host} under {cfg.root}")
    cur = "".join(sec.get("current", [])).strip().rsplit("/", 1)[-1]
    try:
        meta = json.loads("\n".join(sec.get("slot", [])) or "{}")
    except ValueError:
        meta = {}
    ckpts = sorted(l for l in sec.get("ckpt", []) if l.startswith("ckpt-") and l.endswith(".npz"))
    try:
        metrics = json.loads("\n".join(sec.get("metrics", [])) or "{}")
    except ValueError:
        metrics = {}
    st = {"current": cur, "slots": sorted(l for l in sec.get("slots", []) if l and not l.startswith(".")),
          "bundle": {k: meta.get(k) for k in ("model", "labels", "profile", "bundle_hash", "bundle_source")},
          "checkpoint": ckpts[-1] if ckpts else None,
          "step": int(ckpts[-1][5:-4]) if ckpts else None,
          "native": meta.get("native") or {},
          "metrics": metrics, "log": sec.get("log", []),
          "service": "".join(sec.get("service", [])).strip() or "not installed / no systemd"}
    return st


def format_status(cfg: FlashConfig, st: dict) -> str:
    b = st["bundle"]
    lines = [f"board {cfg.host}, root {cfg.root}",
             f"current: {st['current'] or 'none'}" + (f"  ({b['model']}, labels {', '.join(b['labels'] or [])}, "
                                                      f"profile {b['profile']}, bundle {str(b['bundle_hash'])[:12]}...)" if b.get("model") else ""),
             "slots:   " + (", ".join(f"{s}{' *' if s == st['current'] else ''}" for s in st["slots"]) or "none"),
             f"last checkpoint: {st['checkpoint'] + ' (step ' + str(st['step']) + ')' if st['checkpoint'] else 'none yet'}"]
    nat = st.get("native") or {}
    if nat:
        lines.append(f"engine: C core {nat['library']}" if nat.get("library")
                     else f"engine: numpy ({nat.get('reason') or 'no C core in the slot'})")
    acc = st["metrics"].get("eval_acc", st["metrics"].get("accuracy"))
    if acc is not None:
        lines.append(f"accuracy: {acc} (metrics.json)")
    acc_lines = [l for l in st["log"] if "accuracy" in l]
    if acc_lines:
        lines.append(f"accuracy (train.log): {acc_lines[-1].strip()}")
    elif acc is None:
        lines.append("accuracy: not measured yet")
    lines.append(f"service: {st['service']}")
    return "\n".join(lines)
