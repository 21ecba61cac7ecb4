"""Copy an overlay layer (a directory tree in overlayfs' own format) with its owners remapped.

One function, ``copy_layer``, used in both directions: capturing a running container's upper
directory as a 0-based layer (owners moved *out of* the container's id range), and making a
layer's copy for one container (owners moved *into* its range).  What a layer holds and how
each kind of entry is copied:

* directories, regular files, symbolic links (recreated, never followed), FIFOs;
* whiteouts (character devices 0/0: a deletion of the name in a lower layer);
* opaque directories (``user.overlay.opaque``, and ``trusted.overlay.opaque`` where a
  privileged container's overlay wrote it): kept, in both namespaces, so the layer is read
  the same way under ``userxattr`` (unprivileged) and without it (privileged);
* hard links inside the layer stay hard links;
* modes (setuid and setgid bits included, set after the owner), owners, access and modify
  times; the workload's own ``user.*`` extended attributes;
* sparse files stay sparse: only data extents are copied (``SEEK_DATA``/``SEEK_HOLE`` +
  ``copy_file_range``, a reflink where source and copy share a filesystem that has them), so
  a file with a huge hole costs what it holds, not its length.

Dropped on purpose (a hostile workload must not smuggle them into an image): device nodes
other than whiteouts, sockets, every other ``trusted.*``/``security.*`` attribute (file
capabilities, overlayfs' redirect/metacopy/origin records, which could point a lookup
elsewhere), ``user.overlay.*`` other than opaque.

Bounded whatever the tree: iterative (an explicit stack, no recursion), paths never followed
through a symlink (``lstat`` and ``O_NOFOLLOW`` everywhere; the source belongs to a frozen or
stopped workload, so nothing changes underneath).  Must run as host root (``mknod`` of
whiteouts, ``chown``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

OPAQUE = ("user.overlay.opaque", "trusted.overlay.opaque")
_DROP_PREFIXES = ("user.overlay.",)

IdMap = Callable[[int], int]
WORKERS = 4


_CROSS = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
_ranges_work = [True]   # copy_file_range between these filesystems; else sendfile


def _copy_range(fd: int, out: int, count: int, at: int) -> int:
    """Copy up to ``count`` bytes at offset ``at`` of ``fd`` to the same offset of ``out``,
    in the kernel: ``copy_file_range`` (a reflink where the filesystem shares extents), or
    ``sendfile`` where the two filesystems cannot (EXDEV between different kinds)."""
    if _ranges_work[0]:
        try:
            return os.copy_file_range(fd, out, count, at, at)
        except OSError as exc:
            if exc.errno not in _CROSS:
                raise
            _ranges_work[0] = False
    os.lseek(out, at, os.SEEK_SET)
    return os.sendfile(out, fd, at, count)


def _copy_data(src: str, dst: str, size: int) -> int:
    """Copy ``src``'s data extents into a new file ``dst`` (holes stay holes); returns the
    bytes copied."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        copied = 0
        try:
            os.ftruncate(out, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:   # only a hole left
                        break
                    raise
                end = os.lseek(fd, start, os.SEEK_HOLE)
                at = start
                while at < end:
                    n = _copy_range(fd, out, end - at, at)
                    if n <= 0:   # the file shrank meanwhile: keep what there is
                        break
                    at += n
                copied += at - start
                offset = end
        finally:
            os.close(out)
        return copied
    finally:
        os.close(fd)


def _xattrs(path: str) -> list[tuple[str, bytes]]:
    """The extended attributes a layer keeps, opaque markers written in both namespaces."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    kept: list[tuple[str, bytes]] = []
    opaque = False
    for name in names:
        if name in OPAQUE:
            try:
                opaque = opaque or os.getxattr(path, name, follow_symlinks=False) == b"y"
            except OSError:
                pass
            continue
        if not name.startswith("user.") or name.startswith(_DROP_PREFIXES):
            continue
        try:
            kept.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    if opaque:
        kept += [(name, b"y") for name in OPAQUE]
    return kept


def _finish(s: str, d: str, st: os.stat_result, uid: IdMap, gid: IdMap,
            trusted: bool) -> None:
    """Owner, mode, kept extended attributes and times of the copy ``d`` of ``s``."""
    mode = st.st_mode
    os.lchown(d, uid(st.st_uid), gid(st.st_gid))
    if stat.S_ISLNK(mode):
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return
    os.chmod(d, stat.S_IMODE(mode))   # after chown, which clears setuid and setgid
    for name, value in _xattrs(s):
        if trusted or not name.startswith("trusted."):
            os.setxattr(d, name, value, follow_symlinks=False)
    if not stat.S_ISDIR(mode):   # a directory's, once its entries are made
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_layer(src: str, dst: str, uid: IdMap, gid: IdMap, *,
               trusted: bool = True) -> int:
    """Copy the layer ``src`` to a new directory ``dst`` (its parent must exist), owners
    mapped through ``uid``/``gid``; returns the bytes of file data copied.  ``trusted``:
    write the ``trusted.overlay.opaque`` marker too (a layer only unprivileged containers
    read does not need it).  Raises ``OSError``; a partial ``dst`` is the caller's to
    remove.

    Plain files (one link) are copied by ``WORKERS`` threads: creating a file is the cost
    (a journalled create on the host's filesystem, 0.3 to 2 ms on a busy machine), and
    creates in different directories proceed in parallel; everything else, in walk order."""
    from concurrent.futures import Future, ThreadPoolExecutor

    def plain(s: str, d: str, st: os.stat_result) -> int:
        size = _copy_data(s, d, st.st_size)
        _finish(s, d, st, uid, gid, trusted)
        return size

    seen: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, os.stat_result]] = []   # their times are set last
    total = 0
    jobs: list[Future[int]] = []
    stack: list[tuple[str, str]] = [(src, dst)]
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="lxcbind-layercopy") as pool:
        try:
            while stack:
                s, d = stack.pop()
                st = os.lstat(s)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    os.mkdir(d, 0o700)
                    with os.scandir(s) as entries:
                        for entry in entries:
                            stack.append((entry.path, os.path.join(d, entry.name)))
                    dirs.append((d, st))
                elif stat.S_ISREG(mode) and st.st_nlink == 1:
                    jobs.append(pool.submit(plain, s, d, st))
                    continue
                elif stat.S_ISLNK(mode):
                    os.symlink(os.readlink(s), d)
                elif st.st_nlink > 1 and (st.st_dev, st.st_ino) in seen:
                    os.link(seen[(st.st_dev, st.st_ino)], d)
                    continue
                elif stat.S_ISREG(mode):
                    total += _copy_data(s, d, st.st_size)
                    seen[(st.st_dev, st.st_ino)] = d
                elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                    os.mknod(d, stat.S_IFCHR | 0o000, 0)   # a whiteout
                elif stat.S_ISFIFO(mode):
                    os.mkfifo(d, 0o600)
                else:
                    continue   # devices and sockets are never part of an image
                _finish(s, d, st, uid, gid, trusted)
            total += sum(job.result() for job in jobs)   # the first error, raised here
        finally:
            for job in jobs:
                job.cancel()
    for d, st in reversed(dirs):
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return total


def unshift(start: int | None, size: int) -> IdMap:
    """Host id → layer id for a container whose ids are ``start`` .. ``start + size - 1``
    (None: privileged, ids are the host's); anything outside becomes nobody (65534)."""
    if start is None:
        return lambda v: v if v < size else 65534
    return lambda v: v - start if start <= v < start + size else 65534


def shift(start: int, size: int) -> IdMap:
    """Layer id → host id in the range starting at ``start``."""
    return lambda v: start + (v if v < size else 65534)
