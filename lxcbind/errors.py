"""lxcbind's exceptions: one small tree, each also a builtin that callers already catch.

    LxcbindError                 base; never raised directly
    ├── PolicyError (ValueError)  a policy field is wrong; ``.path`` names it (``process.env[1]``)
    ├── ContainerNotFound (LookupError)
    ├── LxcError (OSError)        a liblxc call failed: errno, operation, container, log tail
    ├── ExecError (OSError)       the command could not be started inside the container
    ├── SandboxError              setting up or tearing down the sandbox failed (CLI exit 125)
    ├── SessionError              a Session cannot run commands any more
    │   ├── SpawnerDied           its resident spawner is gone
    │   └── ShellDied             its persistent shell exited (``returncode``)
    └── CommandTimeout (subprocess.TimeoutExpired) with the partial result

Nothing in lxcbind reports failure by returning False.

Every exception survives ``pickle`` (results and errors cross process boundaries: Ray, Dask,
multiprocessing).  The default ``BaseException.__reduce__`` calls ``cls(*self.args)``, and for
the ``OSError`` subclasses ``args`` is ``(errno, strerror)``, not what ``__init__`` takes, so the
classes whose constructor differs from ``args`` say how to rebuild themselves (``_Rebuilt``).
"""

from __future__ import annotations

import errno as _errno
import os
import subprocess
from typing import Any


class LxcbindError(Exception):
    """Superclass of every lxcbind exception.  Never raised directly."""


class _Rebuilt:
    """Pickle as ``cls(*self._init_args)`` plus the instance's attributes."""

    _init_args: tuple[Any, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self._init_args, dict(self.__dict__))


class PolicyError(_Rebuilt, LxcbindError, ValueError):
    """A policy is invalid.  ``path`` is the JSON path of the offending field."""

    def __init__(self, path: str, message: str) -> None:
        self._init_args = (path, message)
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ContainerNotFound(LxcbindError, LookupError):
    """The named container is not defined."""


class SandboxError(LxcbindError):
    """The sandbox could not be set up or failed (root filesystem, mounts, network)."""


class SessionError(LxcbindError):
    """A Session (or its persistent shell) cannot run commands any more."""


class SpawnerDied(SessionError):
    """The session's resident spawner is gone (killed, or the container stopped)."""


class ShellDied(SessionError):
    """The persistent shell exited; ``returncode`` is its status when known."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class LxcError(_Rebuilt, LxcbindError, OSError):
    """A liblxc call failed.

    ``errno`` is the best errno known (liblxc rarely sets one; ``EIO`` then), ``operation`` the
    call (``start``, ``attach`` ...), ``container`` the name, ``log_tail`` the last lines of
    liblxc's own log for this container when one was configured.
    """

    def __init__(self, operation: str, container: str, err: int | None = None,
                 detail: str = "", log_tail: str = "") -> None:
        self._init_args = (operation, container, err, detail, log_tail)
        code = err if err else _errno.EIO
        text = f"{operation} failed for container {container!r}"
        if detail:
            text += f": {detail}"
        elif err:
            text += f": {os.strerror(err)}"
        if log_tail:
            text += "\n" + log_tail
        super().__init__(code, text)
        self.operation = operation
        self.container = container
        self.log_tail = log_tail

    def __str__(self) -> str:
        return str(self.strerror)


class ExecError(_Rebuilt, LxcbindError, OSError):
    """The command never ran: its cwd, controlling terminal or program could not be set up.

    ``stage`` is ``"chdir"``, ``"ctty"`` or ``"exec"``; ``filename`` is the cwd or program.
    """

    def __init__(self, stage: str, err: int, filename: str) -> None:
        self._init_args = (stage, err, filename)
        super().__init__(err, f"{stage}: {os.strerror(err)}", filename)
        self.stage = stage


class CommandTimeout(_Rebuilt, LxcbindError, subprocess.TimeoutExpired):
    """Raised by ``check=True`` runs that timed out; ``result`` holds what was captured."""

    def __init__(self, result: Any) -> None:
        self._init_args = (result,)
        subprocess.TimeoutExpired.__init__(self, result.args, result.timeout or 0.0,
                                           result.stdout, result.stderr)
        self.result = result
