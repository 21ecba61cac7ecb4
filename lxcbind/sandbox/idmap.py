"""User-namespace id ranges: one private range of 65,536 ids per container.

An unprivileged container's root is host uid ``start`` (and its uid N is ``start + N``), so
two containers that hold different ranges cannot touch each other's files, and neither owns
anything of the host.  Ranges come from a pool of ``SLOTS`` slots above ``FIRST_ID`` (far
above the ranges ``useradd`` hands out), recorded in ``<STATE_DIR>/idmap/ranges.json`` and
changed only under its lock.  A slot is held while its container's directory exists (a kept
container keeps its range) or while the runner that took it is alive; everything else is free
and is reaped lazily by the next ``acquire`` (and by ``lxcbind gc``), so a SIGKILLed runner
cannot leak a range.  The pool is host-wide (``/var/lib/lxcbind/idmap`` whatever
``LXCBIND_STATE_DIR`` says): ids are a host resource, shared by every installation.

The host is prepared idempotently on first use: ``/etc/subuid`` and ``/etc/subgid`` get a
``root:FIRST_ID:SLOTS*RANGE`` line (liblxc goes through ``newuidmap`` when it is installed,
and that refuses ranges root has not been delegated).

Idmapped bind mounts (a read-write host directory whose files must land owned by the
directory's owner, not by the container's range) need a user namespace *file* mapping the
owner to the container's root: ``bind_userns`` makes one inside the container's directory, and
``unbind_all`` removes them once the container has started (liblxc has used them by then) and
on every teardown path.  The same goes for ``bind_layer``'s idmapped read-only mounts of an
image's layers (overlay lower layers: the overlay keeps its own reference once mounted).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from lxcbind import state
from lxcbind._lite import record, sha256_hex
from lxcbind.errors import SandboxError
from lxcbind.lxc import hostmount, mountinfo

FIRST_ID = 1 << 30          # 1,073,741,824
RANGE = 65536
SLOTS = 4096                # up to FIRST_ID + 2**28: well below 2**32 - 1
# Host uids are a host-wide resource: every installation (every LXCBIND_STATE_DIR) shares one
# pool, so two of them never hand out the same range.
_DIR = Path("/var/lib/lxcbind/idmap")
_SUBID_FILES = ("/etc/subuid", "/etc/subgid")


@record
class IdRange:
    """Host ids ``start`` .. ``start + size - 1`` are the container's ids 0 .. size - 1."""

    start: int
    size: int = RANGE

    def config(self) -> list[tuple[str, str]]:
        return [("lxc.idmap", f"u 0 {self.start} {self.size}"),
                ("lxc.idmap", f"g 0 {self.start} {self.size}")]


def _subid_marks() -> tuple[tuple[int, ...] | None, ...]:
    """What tells the subid files changed without reading them (inode, size, times)."""
    marks: list[tuple[int, ...] | None] = []
    for path in _SUBID_FILES:
        try:
            st = os.stat(path)
        except OSError:
            marks.append(None)
            continue
        marks.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(marks)


# The subid files as this process last found them delegating the pool to root, and the
# ranges they delegate to others: read again only when they change (every fresh container
# asked for both; they change when an administrator adds a user).
_delegated: tuple[tuple[tuple[int, ...] | None, ...], list[tuple[int, int]]] | None = None


def _foreign_ranges() -> list[tuple[int, int]]:
    """(start, end) of subordinate ranges delegated to anyone but our own pool line."""
    found = []
    for path in _SUBID_FILES:
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                    continue
                start, count = int(parts[1]), int(parts[2])
                if parts[0] == "root" and start == FIRST_ID and count == SLOTS * RANGE:
                    continue
                found.append((start, start + count))
    return found


def ensure_host_delegation() -> list[tuple[int, int]]:
    """Give root the pool in ``/etc/subuid`` and ``/etc/subgid`` unless a line already does
    (idempotent; the files are replaced atomically, other lines kept); returns the ranges the
    files delegate to others (``_foreign_ranges``).  Reads the files only when they changed
    since this process last did."""
    global _delegated
    marks = _subid_marks()
    known = _delegated
    if known is not None and known[0] == marks:
        return known[1]
    _delegate_pool()
    marks = _subid_marks()   # after any write of ours; a change meanwhile: read next time
    foreign = _foreign_ranges()
    _delegated = (marks, foreign)
    return foreign


def _delegate_pool() -> None:
    line = f"root:{FIRST_ID}:{SLOTS * RANGE}"
    for path in _SUBID_FILES:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise SandboxError(f"cannot read {path}: {exc.strerror}") from None
        if line in text.split():
            continue
        tmp = f"{path}.lxcbind-tmp"
        with open(tmp, "w") as f:
            f.write(text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def _held(record: dict[str, Any]) -> bool:
    cdir = os.path.join(str(record.get("lxcpath", "")), str(record.get("container", "")))
    return os.path.isdir(cdir) or state.runner_alive(record)


def _load() -> dict[str, dict[str, Any]]:
    data = state.read_json(_DIR / "ranges.json", {})
    return data if isinstance(data, dict) else {}


def acquire(container: str, lxcpath: str) -> IdRange:
    """The range of ``container`` (its existing one if it has one: a kept container), else the
    lowest free slot.  Raises ``SandboxError`` when every slot is in use."""
    foreign = ensure_host_delegation()
    with state.locked(_DIR / "lock"):
        ranges = _load()
        for slot, record in ranges.items():
            if record.get("container") == container and record.get("lxcpath") == lxcpath:
                record.update(state.runner_identity())
                state.write_json(_DIR / "ranges.json", ranges)
                return IdRange(FIRST_ID + int(slot) * RANGE)
        ranges = {slot: r for slot, r in ranges.items() if _held(r)}
        for index in range(SLOTS):
            start = FIRST_ID + index * RANGE
            if str(index) in ranges:
                continue
            if any(start < end and lo < start + RANGE for lo, end in foreign):
                continue  # delegated to someone else on this host: never share ids with it
            ranges[str(index)] = {"container": container, "lxcpath": lxcpath,
                                 **state.runner_identity()}
            state.write_json(_DIR / "ranges.json", ranges)
            return IdRange(start)
    raise SandboxError(f"all {SLOTS} user-namespace id ranges are in use")


def release(container: str, lxcpath: str) -> None:
    """Give ``container``'s range back (after it is destroyed)."""
    with state.locked(_DIR / "lock"):
        ranges = _load()
        kept = {slot: r for slot, r in ranges.items()
                if not (r.get("container") == container and r.get("lxcpath") == lxcpath)}
        if kept != ranges:
            state.write_json(_DIR / "ranges.json", kept)


def reap() -> list[str]:
    """Free the ranges no container and no live runner holds; returns their containers."""
    with state.locked(_DIR / "lock"):
        ranges = _load()
        kept = {slot: r for slot, r in ranges.items() if _held(r)}
        if kept != ranges:
            state.write_json(_DIR / "ranges.json", kept)
    return sorted(str(r.get("container")) for s, r in ranges.items() if s not in kept)


def held_ranges() -> dict[str, IdRange]:
    """Container name → range, for every recorded slot (a snapshot, for tests and gc)."""
    return {str(r.get("container")): IdRange(FIRST_ID + int(slot) * RANGE)
            for slot, r in _load().items()}


# -- host-side staging ------------------------------------------------------------------------
# Made by host root in ``<cdir>/.lxcbind/`` right before each start, removed right after it (and
# by every teardown path): liblxc has made its mounts from them by then.

STAGING = ".lxcbind"


def userns_path(cdir: str, owner: tuple[int, int]) -> str:
    return os.path.join(cdir, STAGING, f"userns-{owner[0]}-{owner[1]}")


def staged_path(cdir: str, source: str) -> str:
    digest = sha256_hex(os.fsencode(source))[:16]
    return os.path.join(cdir, STAGING, f"bind-{digest}")


def _staging(cdir: str) -> str:
    folder = os.path.join(cdir, STAGING)
    os.makedirs(folder, 0o711, exist_ok=True)
    return folder


def _is_mountpoint(path: str) -> bool:
    return any(m.point == path for m in mountinfo.mounts())


def bind_userns(cdir: str, owner: tuple[int, int], root: IdRange) -> str:
    """A user namespace mapping the host ``owner`` to the container's root, as a file, so that
    files the container's root creates on an idmapped bind land owned by ``owner``."""
    _staging(cdir)
    path = userns_path(cdir, owner)
    if _is_mountpoint(path):
        return path
    with open(path, "a"):
        pass
    try:
        hostmount.bind_userns(path, f"{owner[0]} {root.start} 1\n",
                              f"{owner[1]} {root.start} 1\n")
    except OSError as exc:
        raise SandboxError(f"could not create the user namespace for an idmapped mount "
                           f"({exc.strerror})") from None
    return path


def stage_bind(cdir: str, source: str) -> str:
    """Bind ``source`` (a host path the container's mapped root may not be able to traverse
    to, e.g. below a 0700 directory) at its staged path, privately."""
    _staging(cdir)
    path = staged_path(cdir, source)
    if _is_mountpoint(path):
        return path
    if os.path.isdir(source):
        os.makedirs(path, 0o755, exist_ok=True)
    else:
        with open(path, "a"):
            pass
    try:
        hostmount.bind_private(source, path)
    except OSError as exc:
        raise SandboxError(f"could not stage {source!r} for the container "
                           f"({exc.strerror})") from None
    return path


def bind_layer(cdir: str, index: int, source: str, ids: IdRange) -> str:
    """An idmapped, read-only mount of the 0-based image layer ``source`` in ``cdir``, for an
    overlay lower layer: the container sees the layer's owners as its own ids, and nothing
    is copied.  Raises ``OSError`` (the kernel refused: an older one may lack idmapped
    mounts on this filesystem)."""
    path = os.path.join(_staging(cdir), f"layer-{index}")
    if _is_mountpoint(path):
        return path
    os.makedirs(path, 0o755, exist_ok=True)
    hostmount.idmapped_bind(source, path, ids.start, ids.size)
    return path


def unbind_all(cdir: str) -> None:
    """Unmount and remove everything staged in ``cdir`` (idempotent, never raises)."""
    folder = os.path.join(cdir, STAGING)
    if not os.path.isdir(folder):
        return
    for mount in reversed(mountinfo.below(folder)):  # deepest first
        hostmount.detach(mount.point)
    import shutil  # only when something was staged: not on a default run's import path

    shutil.rmtree(folder, ignore_errors=True)
