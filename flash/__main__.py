"""`python -m flash --host USER@HOST --bundle B`, `python -m flash status|rollback --host USER@HOST`."""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train/__main__.py

EXAMPLES = """examples:
  python -m flash --host pi@raspberrypi.local --bundle runs/bundle --profile rpi4-4g --service
  python -m flash --host pi@raspberrypi.local --bundle runs/bundle --dry-run
  python -m flash status --host pi@raspberrypi.local
  python -m flash rollback --host pi@raspberrypi.local
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="USER@HOST of the board (or an alias from ~/.ssh/config)")
    p.add_argument("--port", type=int, help="ssh port")
    p.add_argument("--identity", help="ssh private key file (default: ssh-agent / ~/.ssh)")
    p.add_argument("-o", "--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra ssh option, repeatable (e.g. -o UserKnownHostsFile=known_hosts)")
    p.add_argument("--root", default="~/tinytl", help="board directory for slots, venv, checkpoints (default ~/tinytl)")
    p.add_argument("--dry-run", action="store_true", help="print every remote command, run none")
    p.add_argument("-v", "--verbose", action="store_true", help="print every remote command as it runs")


def _parser(cmd: str) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    if cmd == "status":
        p = argparse.ArgumentParser(prog="python -m flash status", formatter_class=fmt, epilog=EXAMPLES,
                                    description="The board's slots, current bundle, last checkpoint and accuracy.")
        _common(p)
        p.add_argument("--json", action="store_true", help="print the status as JSON")
        return p
    if cmd == "rollback":
        p = argparse.ArgumentParser(prog="python -m flash rollback", formatter_class=fmt, epilog=EXAMPLES,
                                    description="Switch `current` back to the previous slot (or --to SLOT).")
        _common(p)
        p.add_argument("--to", help="slot name to switch to (default: the newest one older than current)")
        return p
    p = argparse.ArgumentParser(prog="python -m flash", formatter_class=fmt, epilog=EXAMPLES,
                                description="Copy the runtime and a bundle into a new slot on a Raspberry Pi / Jetson, "
                                            "verify SHA-256 and self-test there, then switch `current` atomically. "
                                            "Subcommands: status, rollback (see 'python -m flash status --help').")
    _common(p)
    p.add_argument("--bundle", required=True, help="bundle directory (from 'python -m convert')")
    p.add_argument("--profile", default="rpi-zero2w",
                   help="board profile from firmware_sim/profiles: rpi-zero2w | rpi4-4g | jetson-nano-4g | jetson-orin-nano-8g | a YAML path (default rpi-zero2w)")
    p.add_argument("--python", default="python3", help="the board's Python that creates the venv (default python3)")
    p.add_argument("--board-python", help="run the slot with this board interpreter as is (no venv; needs numpy)")
    p.add_argument("--service", action="store_true", help="install the systemd unit that learns from ROOT/inbox")
    p.add_argument("--service-steps", type=int, default=100000, help="total update steps of the service (default 100000)")
    p.add_argument("--unit-dir", help="where systemd units go (default /etc/systemd/system as root, else ~/.config/systemd/user)")
    p.add_argument("--keep", type=int, default=3, help="old slots kept on the board (default 3)")
    return p


def main(argv: list[str] | None = None) -> int:
    from . import FlashConfig, FlashError, flash, format_status, rollback, status
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv[:1] and argv[0] in ("status", "rollback") else "flash"
    a = _parser(cmd).parse_args(argv[1:] if cmd != "flash" else argv)
    base = dict(host=a.host, port=a.port, identity=a.identity, ssh_options=tuple(a.ssh_option), root=a.root,
                dry_run=a.dry_run, verbose=a.verbose)
    try:
        if cmd == "status":
            cfg = FlashConfig(**base)
            st = status(cfg)
            if not a.dry_run:
                print(json.dumps(st, indent=1) if a.json else format_status(cfg, st))
        elif cmd == "rollback":
            rollback(FlashConfig(**base), a.to)
        else:
            cfg = FlashConfig(**base, bundle=a.bundle, profile=a.profile, python=a.python, board_python=a.board_python,
                              service=a.service, service_steps=a.service_steps, unit_dir=a.unit_dir, keep=a.keep)
            name = flash(cfg)
            print(("dry run: nothing was changed on the board" if a.dry_run else f"flashed: {a.host} now runs slot {name}"))
        return 0
    except FlashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
