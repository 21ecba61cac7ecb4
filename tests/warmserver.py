"""A warm server for tests: ``python -m lxcbind warm POLICY`` as a child process (the real
command line), and a client that fails instead of falling back.

``Server(policy, tmp_path, *options)`` starts it and waits for its ``serving PATH`` line;
``close()`` (fixtures call it on every path) stops it with SIGTERM, and if that does not end
it, SIGKILLs it and runs ``lxcbind gc``.  ``WarmClient(policy).run(...)`` is
``lxcbind.run(..., warm=True)`` without the fallback: it fails when no server answered.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lxcbind
from lxcbind.command import check_call
from lxcbind.policy.parse import load_policy
from lxcbind.proc import warm

ROOT = Path(__file__).resolve().parents[1]


def lock_and_socket(policy: dict[str, Any]) -> list[str]:
    """The server files of ``policy``'s key that exist now."""
    key = warm.template_key(load_policy(policy, command_required=False))
    return [p for p in (os.path.join(warm.WARM_DIR, f"{key}.{ext}") for ext in ("sock", "lock"))
            if os.path.exists(p)]


class Server:
    def __init__(self, policy: dict[str, Any], folder: Path, *options: str,
                 start_timeout: float = 180.0) -> None:
        self.policy = policy
        self.name = str(policy["containerId"])
        self.file = folder / f"{self.name}.json"
        self.file.write_text(json.dumps(policy))
        # stderr to a file: a pipe nobody reads while it serves could fill and stop it
        self.log = folder / f"{self.name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "warm",
                                          str(self.file), "-v", *options],
                                         stdout=subprocess.PIPE, stderr=log, cwd=ROOT)
        self.path = ""
        try:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
            line = self.proc.stdout.readline().decode() if ready else ""
            if not line.startswith("serving "):
                raise AssertionError(f"the warm server did not start: {line!r} "
                                     f"{self.stop_now()!r}")
            self.path = line.split(" ", 1)[1].strip()
        except BaseException:
            self.close()
            raise

    def cli_server(self) -> tuple[int, str]:
        """The pid of the CLI server ``lxcbind warm`` started (``lxcbind.cliserver``) and its
        socket; (0, "") when there is none."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid and b"lxcbind.cliserver" in cmdline:
                pid = int(entry)
                names = [n for n in os.listdir(warm.WARM_DIR)
                         if n.startswith("cli-") and n.endswith(f"-{pid}.sock")]
                return pid, os.path.join(warm.WARM_DIR, names[0]) if names else ""
        return 0, ""

    def stop_now(self) -> str:
        """SIGKILL (if still running) and its stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)
        return self.stderr()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> tuple[int, str]:
        """Signal it and wait: (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.stderr()

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        """Until it ends by itself: (exit status, stderr)."""
        self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.stderr()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.stop(timeout=120)
            except subprocess.TimeoutExpired:
                self.stop_now()
                subprocess.run([sys.executable, "-m", "lxcbind", "gc"], cwd=ROOT,
                               capture_output=True, timeout=300)
        else:
            self.proc.communicate(timeout=60)


class WarmClient:
    """``lxcbind.run(cmd, policy=..., warm=True)``'s warm path alone (the same calls)."""

    def __init__(self, policy: dict[str, Any]) -> None:
        self.policy = load_policy(policy, command_required=False)

    def run(self, command: Any, *, check: bool = False, tty: bool = False,
            **keywords: Any) -> lxcbind.CompletedRun:
        opts = check_call(command, **keywords)
        session = warm.open_clone(self.policy)
        assert session is not None, "no warm server answered"
        with session:
            return session.run_call(opts, check=check, tty=tty)
