"""Punching holes in a file: ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``, which
Python's ``os`` does not offer (``os.posix_fallocate`` only allocates).  The disk layer uses it
to reset a reused image to its template without rewriting it."""

from __future__ import annotations

import os

from lxcbind.lxc._native import ffi, lib

_PUNCH = 0x02 | 0x01   # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes of ``fd`` from ``offset`` (they read as zeros; the size stays).
    Raises ``OSError``."""
    if lib.fallocate(fd, _PUNCH, offset, length) != 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
