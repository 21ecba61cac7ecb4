"""Host-side mounts that only C can make: a user namespace as a file (for ``idmap=``), a
private bind, an idmapped read-only bind, a block device's filesystem, a lazy unmount.  Each
returns 0 or raises ``OSError``."""

from __future__ import annotations

import os

from lxcbind.lxc._native import ffi, lib


def _check(err: int, what: str, path: str) -> None:
    if err < 0:
        raise OSError(-err, f"{what}: {os.strerror(-err)}", path)


def bind_userns(target: str, uid_map: str, gid_map: str) -> None:
    """Make a user namespace with these maps (``"1000 1073741824 1\\n"``) and bind its nsfs
    file onto ``target`` (an existing empty file)."""
    _check(lib.lxcbind_userns_bind(os.fsencode(target), uid_map.encode(), gid_map.encode()),
           "cannot create a user namespace file", target)


def bind_private(source: str, target: str) -> None:
    """Bind ``source`` onto ``target`` and make the new mount private (no propagation)."""
    _check(lib.lxcbind_bind_private(os.fsencode(source), os.fsencode(target)),
           "cannot bind", source)


def idmapped_bind(source: str, target: str, start: int, size: int) -> None:
    """Mount a read-only, nosuid, nodev, private clone of directory ``source`` at ``target``
    (an existing empty directory), idmapped so that the owner N of a file appears as host
    id ``start + N`` (N below ``size``; any other owner appears as the overflow id)."""
    _check(lib.lxcbind_idmapped_bind(os.fsencode(source), os.fsencode(target),
                                     f"0 {start} {size}\n".encode()),
           "cannot make an idmapped mount", source)


def detach(path: str) -> bool:
    """Lazily unmount ``path``; False if that failed (not a mount point, gone)."""
    return int(lib.umount2(os.fsencode(path), lib.MNT_DETACH)) == 0


def mount_device(device: str, target: str, fstype: str, options: str = "") -> None:
    """Mount the filesystem on block device ``device`` at ``target``, nosuid, nodev and
    noatime (the host never runs or opens devices from it)."""
    flags = lib.MS_NOSUID | lib.MS_NODEV | lib.MS_NOATIME
    if lib.mount(os.fsencode(device), os.fsencode(target), fstype.encode(), flags,
                 options.encode() if options else ffi.NULL) != 0:
        err = ffi.errno
        raise OSError(err, f"cannot mount {device}: {os.strerror(err)}", target)
