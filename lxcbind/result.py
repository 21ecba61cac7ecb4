"""The result of one command: ``CompletedRun``, shaped like ``subprocess.CompletedProcess``."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Sequence

from .errors import CommandTimeout, ExecError


@dataclass(frozen=True)
class CompletedRun:
    """What a command did.

    ``returncode`` follows ``subprocess``: the exit code, or ``-N`` when signal N killed it;
    ``exit_status`` is the shell form (128+N).  ``stdout``/``stderr`` are bytes (``stderr`` is
    empty in tty mode, where both streams share the terminal).  With an output cap,
    ``truncated`` is True and ``*_omitted`` count the bytes dropped between the kept head and
    tail.  ``exec_error`` is set when the command never started (missing cwd or program).
    """

    args: Sequence[str]
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    duration: float = 0.0
    truncated: bool = False
    stdout_omitted: int = 0
    stderr_omitted: int = 0
    exec_error: ExecError | None = field(default=None, compare=False)
    timeout: float | None = None

    @property
    def signal(self) -> int | None:
        """The signal that killed the command, if one did."""
        return -self.returncode if self.returncode < 0 else None

    @property
    def exit_status(self) -> int:
        """Shell-style status: the exit code, or 128+N for death by signal N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    def check_returncode(self) -> None:
        """Raise ``CommandTimeout`` or ``subprocess.CalledProcessError`` unless it succeeded."""
        if self.timed_out:
            raise CommandTimeout(self)
        if self.returncode:
            raise subprocess.CalledProcessError(self.returncode, list(self.args), self.stdout,
                                                self.stderr)
