"""Files in and out of a running container through a Session's spawner (no attach).

``put`` and ``get`` are commands like any other (``/bin/sh`` with a small script, the path as
``$1``): they run as the session's user, under the filesystem policy and the container's own
permissions, and cost what a Session command costs whatever the caller's size (liblxc's
attach forks the caller; the spawner is already inside).  The call is split in two so that
the sync and async worlds share it: ``put_call``/``get_call`` check the arguments and build
the command's ``CallOptions``; ``put_done``/``get_done`` turn its result into the data or the
``FileTransferError`` (the builtin subclass its errno picks).

Only regular files: a denied file is masked by ``/dev/null`` (writes would vanish, reads come
back empty) and a device or FIFO would never end.
"""

from __future__ import annotations

import errno
import os
import posixpath
from typing import Any

from lxcbind.command import CallOptions, check_container_path, check_timeout
from lxcbind.errors import _STRERRORS, FileTransferError
from lxcbind.result import CompletedRun

# put/get refuse a directory (EISDIR, as ``open`` does) and whatever is not a regular file
# (EPERM: a denied path, a device, a FIFO).  Messages end in the strerror that ``_errno_of``
# reads back.
_PRELUDE = ('if [ -d "$1" ]; then echo "$0: $1: Is a directory" >&2; exit 1; fi; '
            'if [ -e "$1" ] && [ ! -f "$1" ]; then echo "$0: $1: is not a regular file '
            '(a denied path, a device or a FIFO)" >&2; exit 1; fi; ')
# ``$2`` = 1: create the missing parents first (``mkdir -p``, the container's umask).
_PUT = ('if [ "$2" = 1 ] && [ -n "${1%/*}" ]; then mkdir -p -- "${1%/*}" || exit 1; fi; '
        + _PRELUDE + 'exec cat > "$1"')
# get_file: the whole file, streamed; refused first when larger than max_size.
GET_STREAM = (_PRELUDE + 'size=$(wc -c < "$1") || exit 1; [ "$size" -le {max_size} ] || {{ '
              'echo "$0: $1: File too large" >&2; exit 1; }}; exec head -c {max_size} -- "$1"')


def resolve(path: Any, cwd: str | None, call: str) -> str:
    """``path`` (str or path-like) made absolute against ``cwd`` (the sandbox's working
    directory; None: ``/``), or ``TypeError``/``ValueError`` naming ``call``."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, str) and path and not path.startswith("/"):
        path = posixpath.join(cwd or "/", path)
    return check_container_path(path, call, "path")


def put_call(path: Any, data: Any, *, cwd: str | None, parents: bool, timeout: Any,
             call: str) -> tuple[CallOptions, str]:
    """The command that writes ``data`` to ``path``, and the absolute path."""
    path = resolve(path, cwd, call)
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{call}(): data must be bytes or str, not {type(data).__name__}")
    argv = ["/bin/sh", "-c", _PUT, "lxcbind-put", path, "1" if parents else "0"]
    return CallOptions(argv, {}, "/", bytes(data), check_timeout(timeout, call), 4096, None,
                       "replace"), path


# get(owner_read=True): a file whose owner may not read it is refused (EACCES) even when the
# reader is root, who ignores file modes (Docker's provider's rule for Inspect's read_file).
_OWNER_READ = ('m=$(stat -L -c %a -- "$1" 2>/dev/null) && [ $((0$m & 0400)) -eq 0 ] && '
               '{ echo "$0: $1: Permission denied" >&2; exit 1; }; ')


def get_call(path: Any, *, cwd: str | None, max_size: Any, timeout: Any,
             call: str, owner_read: bool = False) -> tuple[CallOptions, str]:
    """The command that reads ``path`` (at most ``max_size`` + 1 bytes), and the path."""
    path = resolve(path, cwd, call)
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"{call}(): max_size must be an int, got {max_size!r}")
    if max_size < 0:
        raise ValueError(f"{call}(): max_size must be >= 0, got {max_size}")
    # head stops reading one byte past the limit, so an endless file costs nothing more.
    script = _PRELUDE + (_OWNER_READ if owner_read else "") + \
        f'exec head -c {max_size + 1} -- "$1"'
    argv = ["/bin/sh", "-c", script, "lxcbind-get", path]
    return CallOptions(argv, {}, "/", None, check_timeout(timeout, call), max_size + 1, None,
                       "replace"), path


def stream_fd(stream: Any, call: str, what: str) -> int:
    """The descriptor of a streaming source or destination: an fd (int >= 0) or an object
    with ``fileno()`` (flushed first when it has ``flush``: its buffer comes before what the
    command reads or writes); ``TypeError`` naming ``call`` otherwise."""
    if isinstance(stream, int) and not isinstance(stream, bool) and stream >= 0:
        return stream
    fileno = getattr(stream, "fileno", None)
    if not callable(fileno):
        raise TypeError(f"{call}(): {what} must be a file object with fileno() or an fd, not "
                        f"{type(stream).__name__}")
    flush = getattr(stream, "flush", None)
    if callable(flush):
        flush()
    fd = fileno()
    assert isinstance(fd, int)
    return fd


def _errno_of(line: str) -> int | None:
    """The errno a failed command's last stderr line ends with (``cat: /x: Permission
    denied``): read from its last ``: `` field, so a path that contains such words cannot
    change it."""
    tail = line.rsplit(": ", 1)[-1].strip()
    return next((e for text, e in _STRERRORS.items() if tail.startswith(text)), None)


def _failed(operation: str, path: str, result: CompletedRun,
            timeout: float | None) -> FileTransferError | None:
    if result.timed_out:
        return FileTransferError(operation, path, f"timed out after {timeout or 0:g}s",
                                 errno.ETIMEDOUT)
    if result.exec_error is not None:   # no /bin/sh in this root filesystem
        err = result.exec_error
        return FileTransferError.of(operation, path, f"/bin/sh: {err.strerror}", errno.EIO)
    if result.returncode == 0:
        return None
    stderr = result.stderr
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    detail = lines[-1] if lines else f"exit status {result.exit_status}"
    return FileTransferError.of(operation, path, detail, _errno_of(detail) or errno.EIO)


def put_done(result: CompletedRun, path: str, timeout: float | None,
             operation: str = "put") -> None:
    """Nothing when ``put``'s (``operation``'s) command succeeded, else its
    ``FileTransferError``."""
    error = _failed(operation, path, result, timeout)
    if error is not None:
        raise error


def get_done(result: CompletedRun, path: str, max_size: int, timeout: float | None) -> bytes:
    """The file's contents from ``get``'s command, else its ``FileTransferError``."""
    error = _failed("get", path, result, timeout)
    if error is not None:
        raise error
    data = result.stdout
    assert isinstance(data, bytes)
    if len(data) > max_size:
        raise FileTransferError("get", path, f"{os.strerror(errno.EFBIG)}: larger than "
                                f"max_size={max_size} bytes", errno.EFBIG)
    return data
