"""The session spawner program (``_cdefs/spawner.c``, built by setup.py as
``lxcbind/lxcbind-spawner``) as a sealed memfd: what ``Session`` attaches to exec it inside the
container, so that no file the workload controls is trusted."""

from __future__ import annotations

import errno
import fcntl
import os
import threading

from lxcbind.errors import SessionError

__all__ = ["spawner_image", "SPAWNER_PROGRAM"]

# built by setup.py; a str: pathlib is not on the run path (issue #23)
SPAWNER_PROGRAM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "lxcbind-spawner")
_MFD_EXEC = 0x10  # linux/memfd.h; refused (EINVAL) by kernels before 6.3, which need no flag
_image_lock = threading.Lock()
_image_fd = -1


def spawner_image() -> int:
    """A sealed memfd holding the spawner program (one per process, shared by sessions).

    The spawner is exec'd from it inside the container: no file the workload controls is
    trusted, and the seals (no write, shrink or grow) keep anyone from changing it."""
    global _image_fd
    with _image_lock:
        if _image_fd >= 0:
            return _image_fd
        try:
            with open(SPAWNER_PROGRAM, "rb") as f:
                program = f.read()
        except FileNotFoundError:
            raise SessionError(f"the session spawner program {SPAWNER_PROGRAM!r} is "
                               "missing: rebuild lxcbind (python3 setup.py build_ext)") from None
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        try:
            fd = os.memfd_create("lxcbind-spawner", flags | _MFD_EXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            fd = os.memfd_create("lxcbind-spawner", flags)
        try:
            view = memoryview(program)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK |
                        fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            # execve refuses a file open for writing (ETXTBSY): keep a read-only open of it.
            ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        _image_fd = ro
        return ro
