"""The systemd units of on-device learning: a service running `device train`, a path unit watching the inbox.

    <root>/inbox/<label>/*.pgm   the watched folder: one sub-folder per label, images dropped in by the user
    tinytl-train.path            starts the service when the inbox is non-empty or changes
    tinytl-train.service         python -m device train on <root>/current (Restart=on-failure); checkpoints in
                                 <root>/current/checkpoints -> <root>/checkpoints/<bundle hash>/, outside the
                                 slots, so they survive restarts and re-flashes of the same bundle
Paths go through the `current` link, so a flash or rollback only has to restart the service.
"""
from __future__ import annotations

import re

UNIT = "tinytl-train"


def _sd_word(s: str) -> str:
    """One systemd ExecStart/Environment word: quoted, with '%' and '$' escaped (no specifiers, no variables)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def check_root(root_abs: str) -> None:
    from ._ssh import FlashError
    if re.search(r"[\s%\\\x00-\x1f]", root_abs):
        raise FlashError(f"--service: the board root {root_abs!r} holds whitespace, '%' or a backslash, which "
                         "systemd paths cannot carry; choose another --root")


def units(root: str, python: str, steps: int, user_scope: bool) -> dict[str, str]:
    """{file name: text} for a board root (absolute) and the board's Python (absolute)."""
    check_root(root)
    cur = f"{root}/current"
    cmd = [python, "-m", "device", "train", "--bundle", f"{cur}/bundle", "--data", f"{root}/inbox",
           "--checkpoint-dir", f"{cur}/checkpoints", "--steps", str(steps), "--checkpoint-every", "50",
           "--log-every", "50", "--eval-data", f"{root}/inbox", "--eval-every", "200", "--export", f"{root}/trained.npz"]
    wanted = "default.target" if user_scope else "multi-user.target"
    service = f"""[Unit]
Description=TinyTL on-device learning on {root}/inbox (written by python -m flash)
After=network.target
StartLimitIntervalSec=0

[Service]
Type=simple
Environment={_sd_word("PYTHONPATH=" + cur)}
Environment=OMP_WAIT_POLICY=PASSIVE
ExecStart={" ".join(_sd_word(w) for w in cmd)}
Restart=on-failure
RestartSec=30
StandardOutput=append:{root}/train.log
StandardError=append:{root}/train.log
Nice=10

[Install]
WantedBy={wanted}
"""
    path = f"""[Unit]
Description=Start TinyTL learning when {root}/inbox gets images

[Path]
DirectoryNotEmpty={root}/inbox
PathChanged={root}/inbox
Unit={UNIT}.service

[Install]
WantedBy={wanted}
"""
    return {f"{UNIT}.service": service, f"{UNIT}.path": path}
