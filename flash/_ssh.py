"""Plain OpenSSH, driven by argument lists (never a local shell); every remote word is shlex-quoted.

The remote side runs each command string with the login user's shell, so everything that reaches it is
built with `q()` (shlex.quote) or `BoardPath.word()`: a path or name holding spaces, `;` or `$(...)` arrives
as one literal word. Host keys are checked as ssh always does (BatchMode: an unknown key fails instead
of prompting); extra `-o` options (e.g. UserKnownHostsFile=...) are passed through unchanged.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

q = shlex.quote

_HOST = re.compile(r"^(?:[A-Za-z0-9._+-]+@)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])$")


class FlashError(Exception):
    """A step of flash/status/rollback failed; the message is one line and says what to do."""


def check_host(host: str) -> str:
    """USER@HOST or HOST: a name, an IPv4 address or a [bracketed] IPv6 address; never an ssh option."""
    if not _HOST.match(host) or host.lstrip("[").startswith("-") or host.split("@")[-1].startswith("-"):
        raise FlashError(f"bad --host {host!r}: expected USER@HOST (letters, digits, '.', '-', '_')")
    return host


@dataclass(frozen=True)
class BoardPath:
    """A path on the board. Home-relative paths ('~/x' or 'x') expand on the board ("$HOME"/'x')."""
    path: str

    @property
    def home_relative(self) -> bool:
        return not self.path.startswith("/")

    def _rest(self) -> str:
        return self.path[2:] if self.path.startswith("~/") else ("" if self.path == "~" else self.path)

    def join(self, *parts: str) -> "BoardPath":
        base = self.path.rstrip("/") or "/"
        return BoardPath("/".join([base, *parts]) if base != "/" else "/" + "/".join(parts))

    def word(self) -> str:
        """One shell word that names this path on the board."""
        if not self.home_relative:
            return q(self.path)
        rest = self._rest()
        return '"$HOME"' + ("/" + q(rest) if rest else "")

    def absolute(self, home: str) -> str:
        if not self.home_relative:
            return self.path
        rest = self._rest()
        return home.rstrip("/") + ("/" + rest if rest else "")


@dataclass(frozen=True)
class Remote:
    host: str                      # USER@HOST
    port: int | None = None        # ssh port (None: ssh's default or ~/.ssh/config)
    identity: str | None = None    # private key file (ssh -i); None: ssh-agent / ~/.ssh defaults
    options: tuple[str, ...] = ()  # extra ssh -o KEY=VALUE options, passed as given
    connect_timeout: int = 10      # seconds
    dry_run: bool = False          # print the commands, run nothing
    echo: bool = False             # also print each command before running it
    control_path: str | None = None  # ssh multiplexing socket: one TCP+key exchange for all the steps

    def argv(self, command: str) -> list[str]:
        a = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.port:
            a += ["-p", str(self.port)]
        if self.identity:
            a += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for o in self.options:
            a += ["-o", o]
        if self.control_path:
            a += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}", "-o", "ControlPersist=60"]
        return a + ["--", self.host, command]

    @contextlib.contextmanager
    def session(self):
        """This remote with connection sharing (a Pi on Wi-Fi takes ~1 s per handshake); closed at the end."""
        if self.dry_run:
            yield self
            return
        d = tempfile.mkdtemp(prefix="tl-ssh-")  # private (0700): holds only the control socket
        r = dataclasses.replace(self, control_path=f"{d}/%C")
        try:
            yield r
        finally:
            with tempfile.TemporaryFile() as f:
                subprocess.run(r.argv("")[:-3] + ["-O", "exit", "--", self.host], stdout=f, stderr=f)
            shutil.rmtree(d, ignore_errors=True)

    def run(self, step: str, command: str, stdin: bytes | None = None, stdin_note: str = "",
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `command` on the board. Connection problems raise FlashError naming `step`; a failing
        command raises it too (with its last stderr line) unless check=False."""
        argv = self.argv(command)
        if self.dry_run or self.echo:
            print(f"[{step}] $ {shlex.join(argv)}" + (f"  < {stdin_note}" if stdin_note else ""), flush=True)
        if self.dry_run:
            return subprocess.CompletedProcess(argv, 0, "", "")
        # files, not pipes: a shared-connection master keeps inherited pipes open after the command ends
        with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
            try:
                r = subprocess.run(argv, input=stdin if stdin is not None else b"", stdout=fo, stderr=fe)
            except FileNotFoundError:
                raise FlashError("the 'ssh' client is not installed on this host (apt-get install openssh-client)") from None
            fo.seek(0)
            fe.seek(0)
            out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
        res = subprocess.CompletedProcess(argv, r.returncode, out, err)
        if r.returncode == 255:
            raise FlashError(f"{step}: {self.explain(err)}")
        if check and r.returncode != 0:
            raise FlashError(f"{step} failed on the board: {error_line(err) or last_line(out) or f'exit code {r.returncode}'}")
        return res

    def explain(self, err: str) -> str:
        """ssh's exit 255 (it could not run the command) as one line with the likely fix."""
        where = f"{self.host}" + (f" port {self.port}" if self.port else "")
        if "Host key verification failed" in err or "HOST IDENTIFICATION HAS CHANGED" in err:
            return (f"the host key of {where} is unknown or has changed: check it and accept it once with "
                    f"'ssh {self.host}' (host-key checking stays on)")
        if "Permission denied" in err or "Too many authentication failures" in err:
            key = f"key {self.identity}" if self.identity else "your default keys"
            return f"{where} refused the login with {key} (wrong user or key? copy it with 'ssh-copy-id {self.host}')"
        if "Could not resolve hostname" in err:
            return f"cannot resolve the host name of {self.host}"
        for sign in ("Connection refused", "Connection timed out", "No route to host", "Network is unreachable",
                     "Operation timed out", "Connection closed", "Connection reset"):
            if sign in err:
                return f"cannot reach {where}: {sign.lower()} (is the board on and sshd running?)"
        return f"ssh to {where} failed: {last_line(err) or 'exit code 255'}"


def error_line(err: str) -> str:
    """The line of a command's stderr that says what went wrong (tar's closing summary line does not)."""
    for sign in ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied"):
        for line in err.splitlines():
            if sign in line:
                return line.strip()
    return last_line(err)


def last_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def say(msg: str) -> None:
    print(msg, file=sys.stdout, flush=True)
