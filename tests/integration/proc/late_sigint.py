"""Forcing a persistent shell's late-SIGINT window from the host (for the tests of
``Shell`` and ``AsyncShell``): the command ends by itself just as its timeout fires, so the
shell reports its status before the SIGINT reaches it.  ``hook`` replaces
``Frame.on_deadline``: at the timeout it waits until the shell has written the command's
status, stops the shell (SIGSTOP from the host) and only then lets the SIGINT go; it continues
the shell once the host has read that status and the call still waits.  No timing decides the
outcome: a call that ends on the status alone returns with the shell stopped and its SIGINT
pending (``stopped_with_sigint``)."""

from __future__ import annotations

import array
import fcntl
import os
import signal
import termios
import time
from collections.abc import Callable
from typing import Any

from lxcbind.proc.shell import Frame, Shell


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def sigint_pending(pid: int) -> bool:
    st = _status(pid)
    return bool((int(st["SigPnd"], 16) | int(st["ShdPnd"], 16)) & (1 << (signal.SIGINT - 1)))


def stopped(pid: int) -> bool:
    return _status(pid)["State"].startswith("T")


def _queued(fd: int) -> int:
    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return n[0]


def _until(cond: Callable[[], bool], what: str, bound: float = 60.0) -> None:
    end = time.monotonic() + bound
    while not cond():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.01)


class LateSigint:
    """``LateSigint(shell).install(monkeypatch)`` (``monkeypatch.undo()`` puts the real
    hook back)."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.pid = shell.proc.host_pid
        assert self.pid is not None
        self.real = Frame.on_deadline
        self.seen: dict[str, bool] = {}

    def install(self, monkeypatch: Any) -> None:
        monkeypatch.setattr(Frame, "on_deadline",
                            lambda frame, stage, *args: self.hook(frame, stage, *args))

    def hook(self, frame: Frame, stage: str, *args: Any) -> float | None:
        status_fd = self.shell._status
        if stage != "kill" and frame.started and not self.seen:
            _until(lambda: _queued(status_fd) > 0, "the command's status")
            os.kill(self.pid, signal.SIGSTOP)
            _until(lambda: stopped(self.pid), "the shell stopped")
            self.seen["stopped"] = True
        elif self.seen.get("stopped") and "continued" not in self.seen and \
                _queued(status_fd) == 0:
            # The host has read the status and the call goes on: let the shell take its
            # SIGINT (pending all along: the shell was stopped).
            self.seen["pending"] = sigint_pending(self.pid)
            self.seen["continued"] = True
            os.kill(self.pid, signal.SIGCONT)
        return self.real(frame, stage, *args)

    def stopped_with_sigint(self) -> bool:
        """Right after the call returned: the shell still stopped, its SIGINT not taken."""
        return stopped(self.pid) or sigint_pending(self.pid)

    def release(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def check(self) -> None:
        """The window was forced, and the call waited through it."""
        assert self.seen == {"stopped": True, "pending": True, "continued": True}, self.seen
