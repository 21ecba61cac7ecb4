"""lxcbind's exceptions: one small tree, each also a builtin that callers already catch.

    LxcbindError                 base; never raised directly
    ├── PolicyError (ValueError)  a policy field is wrong; ``.path`` names it (``process.env[1]``)
    ├── ContainerNotFound (LookupError)
    ├── LxcError (OSError)        a liblxc call failed: errno, operation, container, log tail
    ├── ExecError (OSError)       the command could not be started inside the container
    ├── SandboxError              setting up or tearing down the sandbox failed (CLI exit 125)
    │   └── ImageError            an image cannot be imported or used (names the layer and entry)
    ├── SessionError              a Session cannot run commands any more
    │   ├── SpawnerDied           its resident spawner is gone
    │   └── ShellDied             its persistent shell exited (``returncode``)
    ├── CommandTimeout (subprocess.TimeoutExpired) with the partial result
    │   └── TimeoutExpired        what ``check=True`` raises on a timeout (``.result``)
    ├── CalledProcessError (subprocess.CalledProcessError)  check=True, non-zero exit
    └── FileTransferError (OSError)  ``Sandbox.put``/``get`` failed (``filename``, ``errno``)
        └── FileTransferNotFound, ...Permission, ...IsADirectory, ...NotADirectory, ...Exists:
            also FileNotFoundError, PermissionError, IsADirectoryError, ... (``of`` picks one)

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


class ImageError(SandboxError):
    """An image could not be imported, found or removed: the message names the image and,
    for a refused layer, the layer and the entry."""


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


class TimeoutExpired(CommandTimeout):
    """``check=True`` and the command timed out (``result.timed_out``).  Also a
    ``subprocess.TimeoutExpired`` (``cmd``, ``timeout``, ``output``, ``stderr``)."""


class CalledProcessError(_Rebuilt, LxcbindError, subprocess.CalledProcessError):
    """``check=True`` and the command exited non-zero (or died of a signal: ``returncode``
    -N).  Also a ``subprocess.CalledProcessError``; ``result`` is the whole ``CompletedRun``."""

    def __init__(self, returncode: int, cmd: Any, output: Any = None, stderr: Any = None,
                 result: Any = None) -> None:
        self._init_args = (returncode, cmd, output, stderr, result)
        subprocess.CalledProcessError.__init__(self, returncode, cmd, output, stderr)
        self.result = result


# What a failed ``cat`` says, mapped back to the errno it reported (busybox and coreutils agree).
_STRERRORS = {os.strerror(e): e for e in (
    _errno.ENOENT, _errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.EISDIR, _errno.ENOTDIR,
    _errno.ENOSPC, _errno.EDQUOT, _errno.EFBIG, _errno.ELOOP, _errno.ENAMETOOLONG, _errno.ETXTBSY,
    _errno.EEXIST)}


_STRERRORS["Directory nonexistent"] = _errno.ENOENT   # dash's word for a missing parent
_STRERRORS["No such file"] = _errno.ENOENT   # dash's, for a redirect from a missing file
_STRERRORS["is not a regular file"] = _errno.EPERM   # Sandbox.put/get's own refusal
_STRERRORS["exists but is not a directory"] = _errno.ENOTDIR   # coreutils mkdir -p


class FileTransferError(_Rebuilt, LxcbindError, OSError):
    """``Sandbox.put``/``get`` could not write/read ``path`` inside the container: the
    filesystem policy or the container's own permissions refused it (``errno`` as reported
    there: ``EROFS`` for a read-only or denied path, ``ENOENT``, ``EACCES`` ...).

    Raise it through ``FileTransferError.of``: the instance is then also the builtin that
    ``OSError`` itself would pick for its errno (``FileNotFoundError``, ``PermissionError``,
    ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``), so a caller of a
    file API catches it by the type it already knows.  ``err`` overrides the errno read from
    ``detail``."""

    def __init__(self, operation: str, path: str, detail: str, err: int | None = None) -> None:
        self._init_args = (operation, path, detail, err)
        code = err if err is not None else next(
            (e for text, e in _STRERRORS.items() if text in detail), _errno.EIO)
        super().__init__(code, f"{operation} {path}: {detail or os.strerror(code)}", path)
        self.operation = operation

    @classmethod
    def of(cls, operation: str, path: str, detail: str,
           err: int | None = None) -> FileTransferError:
        """The ``FileTransferError`` for this failure, of the subclass its errno picks."""
        error = cls(operation, path, detail, err)
        kind = _BY_ERRNO.get(error.errno or 0)
        return error if kind is None else kind(operation, path, detail, err)


class FileTransferNotFound(FileTransferError, FileNotFoundError):
    """``ENOENT``: the file, or a directory on its path, does not exist."""


class FileTransferPermission(FileTransferError, PermissionError):
    """``EACCES``/``EPERM``: the container's permissions (or put/get's refusal of a path
    that is not a regular file) say no."""


class FileTransferIsADirectory(FileTransferError, IsADirectoryError):
    """``EISDIR``: the path is a directory."""


class FileTransferNotADirectory(FileTransferError, NotADirectoryError):
    """``ENOTDIR``: a component of the path is not a directory."""


class FileTransferExists(FileTransferError, FileExistsError):
    """``EEXIST``: something is in the way (``parents=True`` met a file)."""


_BY_ERRNO: dict[int, type[FileTransferError]] = {
    _errno.ENOENT: FileTransferNotFound, _errno.EACCES: FileTransferPermission,
    _errno.EPERM: FileTransferPermission, _errno.EISDIR: FileTransferIsADirectory,
    _errno.ENOTDIR: FileTransferNotADirectory, _errno.EEXIST: FileTransferExists}


class Terminated(BaseException):
    """A fatal signal arrived; cleanup runs, then the process exits 128+signum.  A
    ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` must not swallow it."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum
