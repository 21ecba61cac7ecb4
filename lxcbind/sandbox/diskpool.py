"""Reused disk images: a throwaway container's image, once the kernel has let go of it, is
reset to its size's cached empty filesystem and kept for the next container of that size.

Why: making and removing a file per container is most of the disk limit's cost after the
mount itself.  A new image is a new inode on the host's filesystem, and an unlinked one frees
its blocks (on a host mounted with ``discard``, one discard request per extent, waited for);
on this project's hosts both show up as the largest items in a profile of a layer's life.  A
reused image is renamed into the container's directory instead (no inode made, nothing
freed), and its reset writes the same ~200 KiB that a copy writes.

Where images are (all under ``<STATE_DIR>/disk``, root's, 0700):

* ``busy/<container>.<random>.img``: a throwaway container's image at its teardown
  (``retire``, from ``disk.retire``, only when the runner holds the layer: it then recycles
  it).  The loop device may still hold it open; the runner holds it open too, with an
  exclusive ``flock``, until it has reset or removed it.
* ``free/ext4-<size>-<schema>.<random>.img``: a clean image, byte for byte its template's data
  with holes everywhere else (checked after the reset, extent by extent).  Put there only by
  ``recycle`` after no loop device is attached to it; taken by ``claim`` with one ``rename``
  into a new container's directory, so no image is ever handed to two containers.  At most
  ``KEEP`` per size: more are removed.

Nothing is left behind whoever dies: an image in ``busy/`` whose runner died (no ``flock``
holder) and that no loop device holds any more is removed by ``sweep`` (every run's garbage
collection, and ``lxcbind gc``).  Its blocks were the workload's: nothing of them ever reaches
``free/``.  ``free/`` is a bounded cache like the templates (``KEEP`` small images per size);
``lxcbind gc`` also removes what this version can never claim (``prune_free``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from lxcbind.state import STATE_ROOT

FREE = os.path.join(STATE_ROOT, "disk", "free")
BUSY = os.path.join(STATE_ROOT, "disk", "busy")
KEEP = 4                        # clean images kept per size (a Pool of 4 recycles all of its)
# An image that holds more than this is removed, not reset: the reset walks the image's data
# extents, and a workload decides how many there are (one per other block, in the worst case).
# Bounded, the walk costs at most a few thousand seeks; removing a large image costs what it
# did before images were reused.
MAX_WRITTEN = 64 << 20


def iter_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) byte ranges of ``fd`` that hold data (``SEEK_DATA``/``SEEK_HOLE``)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:   # no data past offset
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    return list(iter_extents(fd, size))


def backing_loops(image: str) -> list[str]:
    """The loop devices (``loopN``) whose backing file is ``image`` (deleted or not; the
    kernel shows a renamed file's current path).  Only bound devices have ``loop/``."""
    found = []
    with contextlib.suppress(OSError), os.scandir("/sys/block") as entries:
        for entry in entries:
            if not entry.name.startswith("loop"):
                continue
            with contextlib.suppress(OSError), \
                    open(f"/sys/block/{entry.name}/loop/backing_file") as f:
                backing = f.read().rstrip("\n").removesuffix(" (deleted)")
                if backing == image:
                    found.append(entry.name)
    return found


def claim(size: int, schema: str, dst: str) -> bool:
    """Move a clean image of ``size`` bytes to ``dst`` (a new file name); False if there is
    none.  The rename is the claim: of two runs that pick the same image one gets ENOENT."""
    prefix = f"ext4-{size}-{schema}."
    try:
        with os.scandir(FREE) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except OSError:
        return False
    for name in names:
        try:
            os.rename(os.path.join(FREE, name), dst)
        except FileNotFoundError:
            continue   # another run took it
        except OSError:
            return False
        return True
    return False


def retire(image: str, owner: str) -> str | None:
    """Move a throwaway container's image (in use by its loop device) out of the container's
    directory into ``busy/``; returns its new path, or None if it could not be moved (then it
    stays where it is, removed with the container)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(BUSY, 0o700)
    target = os.path.join(BUSY, f"{owner}.{os.urandom(4).hex()}.img")
    try:
        os.rename(image, target)
    except OSError:
        return None
    return target


def hold(image: str) -> int:
    """Open ``image`` and take the exclusive lock that says a live runner owns it (released
    when this process ends, whatever ends it)."""
    fd = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _punch_outside(fd: int, size: int, keep: list[tuple[int, int]]) -> None:
    """Punch every data range of ``fd`` that no range of ``keep`` (sorted) covers."""
    from lxcbind.lxc.holes import punch_hole

    for start, end in iter_extents(fd, size):
        at = start
        for k_start, k_end in keep:
            if k_end <= at or k_start >= end:
                continue
            if k_start > at:
                punch_hole(fd, at, k_start - at)
            at = max(at, k_end)
        if at < end:
            punch_hole(fd, at, end - at)


def recycle(fd: int, template: str, template_extents: list[tuple[int, int]],
            schema: str) -> bool:
    """Reset the held image ``fd`` (in ``busy/``, no loop device attached any more: the
    caller checked) to ``template`` and publish it in ``free/``; otherwise remove it.  True
    if it was kept.  Never raises; the caller closes ``fd``."""
    path = ""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.dirname(path) != BUSY:
            return False   # not a throwaway container's image: nothing to do here
        st = os.fstat(fd)
        size = st.st_size
        if backing_loops(path):
            return False   # still attached: left for a later sweep
        if st.st_blocks * 512 > MAX_WRITTEN:
            os.unlink(path)
            return False
        try:
            with os.scandir(FREE) as entries:
                kept = sum(1 for e in entries if e.name.startswith(f"ext4-{size}-{schema}."))
        except FileNotFoundError:
            kept = 0
        if kept >= KEEP:
            os.unlink(path)
            return False
        src = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(src).st_size != size:
                os.unlink(path)
                return False
            _punch_outside(fd, size, template_extents)
            for start, end in template_extents:
                at = start
                while at < end:
                    copied = os.copy_file_range(src, fd, end - at, at, at)
                    if copied <= 0:
                        raise OSError(errno.EIO, "short copy")
                    at += copied
        finally:
            os.close(src)
        # Fail closed: published only if its data is exactly the template's, range by range.
        if data_extents(fd, size) != template_extents:
            os.unlink(path)
            return False
        with contextlib.suppress(FileExistsError):
            os.mkdir(FREE, 0o700)
        os.rename(path, os.path.join(FREE, f"ext4-{size}-{schema}.{os.urandom(4).hex()}.img"))
        return True
    except OSError:
        if path.startswith(BUSY + "/"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return False


def sweep() -> list[str]:
    """Remove the images in ``busy/`` that nothing holds any more: no runner (its ``flock``
    went with it) and no loop device (its container is gone).  Returns their names.  Cheap
    when there is nothing: one directory read."""
    removed: list[str] = []
    try:
        with os.scandir(BUSY) as entries:
            names = [e.name for e in entries]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(BUSY, name)
        try:
            fd = hold(path)
        except OSError:   # its runner holds it (EWOULDBLOCK), or it is gone
            continue
        try:
            if not backing_loops(path):
                os.unlink(path)
                removed.append(name)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def prune_free(schema: str) -> list[str]:
    """``lxcbind gc``: remove the images of ``free/`` this version would never claim (another
    schema's: an image is its template's data, and another schema's template is not ours; a
    name of no image), and those beyond ``KEEP`` per size (two runs recycling at once may both
    have counted ``KEEP - 1``).  Returns their names.  Safe beside running claims: an image
    is removed by its name in ``free/``, and one claimed meanwhile has left that name (the
    ``unlink`` finds nothing)."""
    removed: list[str] = []
    try:
        with os.scandir(FREE) as entries:
            names = sorted(e.name for e in entries)
    except OSError:
        return removed
    kept: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        fields = parts[0].split("-")
        ours = (len(parts) == 3 and parts[2] == "img" and len(fields) == 3
                and fields[0] == "ext4" and fields[1].isdigit() and fields[2] == schema)
        if ours:
            kept[fields[1]] = kept.get(fields[1], 0) + 1
            if kept[fields[1]] <= KEEP:
                continue
        try:
            os.unlink(os.path.join(FREE, name))
        except OSError:
            continue   # claimed meanwhile, or not ours to remove
        removed.append(name)
    return removed
