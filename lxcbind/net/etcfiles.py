"""Files in a stopped container's ``/etc``, written from the host without following anything
the container's root may have put there (a kept container's root is not trusted).

Only lxcbind's own overlay root filesystems are written: the file goes to the upper layer,
hides the base's, and goes away with the container.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from lxcbind.errors import SandboxError

__all__ = ["overlay_layers", "read_etc_file", "write_etc_file"]


def overlay_layers(rootfs_path: str) -> tuple[str, str] | None:
    """(lower, upper) of an ``overlay:<lower>:<upper>`` rootfs path (liblxc hands the value
    back without the ``overlay:`` prefix), else None."""
    rest = rootfs_path[len("overlay:"):] if rootfs_path.startswith("overlay:") else rootfs_path
    lower, sep, upper = rest.rpartition(":")
    if not sep or not os.path.isabs(lower) or not os.path.isabs(upper):
        return None
    return lower, upper


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_etc(layer: str, *, create_from: str | None = None) -> int | None:
    """A descriptor of ``<layer>/etc``, never through a symlink: a kept container's root may
    have replaced its ``/etc`` by a symlink, which would resolve on the host.  None when it is
    missing (or, with ``create_from``, created with that directory's mode and owner)."""
    top = os.open(layer, _DIR_FLAGS)
    try:
        try:
            return os.open("etc", _DIR_FLAGS, dir_fd=top)
        except FileNotFoundError:
            if create_from is None:
                return None
        st = os.stat(create_from)
        os.mkdir("etc", st.st_mode & 0o7777, dir_fd=top)
        fd = os.open("etc", _DIR_FLAGS, dir_fd=top)
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, st.st_mode & 0o7777)
        return fd
    finally:
        os.close(top)


def write_etc_file(rootfs_path: str, name: str, content: str) -> None:
    """Write ``/etc/<name>`` of a stopped container by putting it in the overlay's upper layer
    (it then hides the base's file, a symlink included, and goes away with the container).
    The upper ``etc`` directory is created with the base's mode so the merged view is unchanged.
    Everything is opened relative to that directory without following symlinks: what a kept
    container's root left there (a symlinked ``/etc``, a symlink at the file or at the
    temporary name) must never make the host write elsewhere."""
    layers = overlay_layers(rootfs_path)
    if layers is None:
        raise SandboxError(f"network: cannot write /etc/{name}: the root filesystem "
                           f"{rootfs_path!r} is not an lxcbind overlay")
    lower, upper = layers
    os.makedirs(upper, mode=0o755, exist_ok=True)
    refused = SandboxError(f"network: /etc/{name} in the container's upper layer is not a "
                           "regular file in a directory; refusing to write through it")
    try:
        # The bottom lower layer (the base): a snapshot's layers stack above it ("a:b:base").
        etc = _open_etc(upper, create_from=os.path.join(lower.rsplit(":", 1)[-1], "etc"))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            raise refused from None
        raise
    assert etc is not None
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=etc, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                raise refused
        tmp = name + ".lxcbind-tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=etc)   # whatever the container put there (not followed)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=etc)
        except (IsADirectoryError, PermissionError, FileExistsError):
            raise refused from None
        with os.fdopen(fd, "w") as f:
            f.write(content)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, name, src_dir_fd=etc, dst_dir_fd=etc)
    finally:
        os.close(etc)


def read_etc_file(rootfs_path: str, name: str) -> str:
    """``/etc/<name>`` as the container would see it (upper layer first), "" if absent or not a
    regular file (a symlink would resolve on the host; a FIFO would block)."""
    layers = overlay_layers(rootfs_path)
    if layers is None:
        return ""
    for layer in (layers[1], layers[0]):
        try:
            etc = _open_etc(layer)
        except FileNotFoundError:
            continue
        except OSError:
            return ""   # /etc is not a plain directory: do not follow it on the host
        if etc is None:
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=etc)
        except FileNotFoundError:
            continue
        except OSError:
            return ""
        finally:
            os.close(etc)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return ""
            return f.read(1 << 20).decode(errors="replace")
    return ""
