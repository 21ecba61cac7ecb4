"""Snapshots: a running sandbox's writable layer, captured as a read-only image layer.

A snapshot is one overlay layer (see ``layercopy`` for what a layer holds) plus a record of
what it sits on: a root filesystem base (``Rootfs``: host, busybox, download or dir) and
optionally a parent snapshot, so snapshots of snapshots form a chain of layers.  A container
started from a snapshot gets the chain as extra lower layers of its overlay, above the base:
``lxc.rootfs.path = overlay:<newest>:...:<oldest>:<base>:<upper>`` (liblxc 5.0.2's overlay
driver takes everything before the last ``:/`` as overlayfs' ``lowerdir`` list, leftmost on
top; see ``rootfs.define_container``).

Layout under ``SNAPSHOTS_ROOT`` (0711, like the bases: an unprivileged container's mapped root
must traverse to its own copy, and nothing else)::

    <id>/                 0711 root
      snapshot.json       the record (``Snapshot``)
      root/layer/         0700 root: the layer with 0-based owners (what privileged
                          containers use, and what every shifted copy is made from)
      @<start>/layer/     0700 owned by host uid <start>: the layer shifted into the id range
                          starting there, made on first use by a container of that range
                          (like the bases' shifted copies) and kept until the snapshot goes

A snapshot directory appears by ``rename()`` only, so one that exists is complete; a shifted
copy likewise.  Snapshots are removed with ``remove`` (refused while a container uses one or a
later snapshot sits on it); an ``ephemeral`` one (made by ``fork``) is removed by ``prune`` as
soon as no container uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from lxcbind._lite import lazy_re, record
from lxcbind.errors import SandboxError
from lxcbind.image import layercopy
from lxcbind.policy.model import Rootfs

SNAPSHOTS_ROOT = "/var/lib/lxcbind/snapshots"
RANGE = 65536          # ids per container (``sandbox.idmap.RANGE``; a layer holds 0 .. RANGE-1)
_NAME = lazy_re(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RECORD = "snapshot.json"
_GRACE = 600           # seconds an unused ephemeral snapshot stays, unless its owner prunes it


@record
class Snapshot:
    """A captured layer and what it sits on.  ``layers``: this snapshot's id and its
    ancestors', newest first.  Use it as ``image=`` anywhere a sandbox is made."""

    id: str
    base: Rootfs
    layers: tuple[str, ...]
    name: str | None = None
    parent: str | None = None
    created: float = 0.0
    size: int = 0                 # bytes of file data in this snapshot's own layer
    ephemeral: bool = False       # made by fork(): removed once no container uses it

    @property
    def path(self) -> str:
        return os.path.join(SNAPSHOTS_ROOT, self.id)

    def to_json(self) -> dict[str, object]:
        base = {k: getattr(self.base, k) for k in ("kind", "path", "distribution", "release",
                                                   "arch") if getattr(self.base, k) is not None}
        return {"id": self.id, "name": self.name, "parent": self.parent, "base": base,
                "layers": list(self.layers), "created": self.created, "size": self.size,
                "ephemeral": self.ephemeral}


def _from_json(data: dict[str, object]) -> Snapshot:
    base = data["base"]
    assert isinstance(base, dict)
    layers = data["layers"]
    assert isinstance(layers, list)
    return Snapshot(id=str(data["id"]), base=Rootfs(**base), layers=tuple(map(str, layers)),
                    name=data.get("name") or None,   # type: ignore[arg-type]
                    parent=data.get("parent") or None,   # type: ignore[arg-type]
                    created=float(data.get("created") or 0.0),   # type: ignore[arg-type]
                    size=int(data.get("size") or 0),   # type: ignore[call-overload]
                    ephemeral=bool(data.get("ephemeral")))


def _prepare_root() -> None:
    os.makedirs(SNAPSHOTS_ROOT, mode=0o711, exist_ok=True)
    if os.stat(SNAPSHOTS_ROOT).st_mode & 0o777 != 0o711:
        os.chmod(SNAPSHOTS_ROOT, 0o711)


def _read(sid: str) -> Snapshot | None:
    try:
        with open(os.path.join(SNAPSHOTS_ROOT, sid, _RECORD)) as f:
            return _from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None


def snapshots() -> list[Snapshot]:
    """Every complete snapshot, oldest first."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(SNAPSHOTS_ROOT):
            if not entry.startswith(".") and (snap := _read(entry)) is not None:
                found.append(snap)
    return sorted(found, key=lambda s: (s.created, s.id))


def load(ref: str | Snapshot) -> Snapshot:
    """The snapshot whose id or name is ``ref``.  Raises ``SandboxError`` naming ``image``."""
    if isinstance(ref, Snapshot):
        ref = ref.id
    if _NAME.fullmatch(ref):
        if (snap := _read(ref)) is not None:
            return snap
        for snap in snapshots():
            if snap.name == ref:
                return snap
    raise SandboxError(f"image: no snapshot with the id or name {ref!r} "
                       f"(see `lxcbind image ls`)")


def check_name(name: str | None) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SandboxError(f"snapshot name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    if any(s.name == name or s.id == name for s in snapshots()):
        raise SandboxError(f"snapshot name {name!r} is taken (remove it first: "
                           f"`lxcbind image rm {name}`)")


def capture(upper: str, *, start: int | None, base: Rootfs, parent: Snapshot | None,
            name: str | None = None, ephemeral: bool = False,
            frozen: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
            ) -> Snapshot:
    """Copy the overlay upper directory ``upper`` of a container whose ids start at ``start``
    (None: privileged) into a new snapshot on ``base`` (and ``parent``, the image the
    container itself started from), owners moved back to 0-based ids.  The copy runs inside
    ``frozen()`` (the caller's freezer: the workload cannot change the layer meanwhile); the
    record is written after.  Raises ``SandboxError``; nothing is left on failure."""
    check_name(name)
    _prepare_root()
    sid = "s" + os.urandom(6).hex()
    tmp = os.path.join(SNAPSHOTS_ROOT, f".build-{sid}-{os.getpid()}")
    os.mkdir(tmp, 0o700)
    try:
        os.mkdir(os.path.join(tmp, "root"), 0o700)
        back = layercopy.unshift(start, RANGE)
        try:
            with frozen():
                size = layercopy.copy_layer(upper, os.path.join(tmp, "root", "layer"), back,
                                            back)
        except OSError as exc:
            raise SandboxError(f"snapshot: cannot copy the writable layer: {exc}") from None
        snap = Snapshot(id=sid, base=base, layers=(sid, *(parent.layers if parent else ())),
                        name=name, parent=parent.id if parent else None, created=time.time(),
                        size=size, ephemeral=ephemeral)
        with open(os.path.join(tmp, _RECORD), "w") as f:
            json.dump(snap.to_json(), f, indent=1)
        os.chmod(tmp, 0o711)
        os.rename(tmp, snap.path)
        return snap
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lowers(snap: Snapshot, start: int | None) -> list[str]:
    """The layer directories of ``snap``'s chain, newest first, for a container whose ids
    start at ``start`` (None: privileged, the 0-based layers as they are): each shifted copy
    is made on first use.  Raises ``SandboxError``."""
    dirs = []
    for sid in snap.layers:
        top = os.path.join(SNAPSHOTS_ROOT, sid)
        if not os.path.isfile(os.path.join(top, _RECORD)):
            raise SandboxError(f"image: snapshot {snap.id} needs layer {sid}, which was removed")
        if start is None:
            dirs.append(os.path.join(top, "root", "layer"))
        else:
            dirs.append(_shifted(top, start))
    return dirs


def _shifted(top: str, start: int) -> str:
    final = os.path.join(top, f"@{start}")
    layer = os.path.join(final, "layer")
    if os.path.isdir(layer):
        return layer
    import fcntl

    with open(os.path.join(top, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # concurrent users of one range wait and reuse it
        if os.path.isdir(layer):
            return layer
        tmp = os.path.join(top, f".build-@{start}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        try:
            there = layercopy.shift(start, RANGE)
            layercopy.copy_layer(os.path.join(top, "root", "layer"),
                                 os.path.join(tmp, "layer"), there, there, trusted=False)
            os.chown(tmp, start, start)
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SandboxError(f"image: cannot prepare snapshot layer {top} for the "
                               f"container's id range: {exc}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return layer


def _in_use(lxcpath: str) -> str:
    """Every container config under ``lxcpath``, concatenated (a snapshot is in use while
    one names its directory)."""
    text = ""
    with contextlib.suppress(OSError):
        for name in os.listdir(lxcpath):
            with contextlib.suppress(OSError), open(os.path.join(lxcpath, name, "config")) as f:
                text += f.read()
    return text


def remove(ref: str | Snapshot, lxcpath: str) -> Snapshot:
    """Remove a snapshot and its shifted copies.  Refused (``SandboxError``) while a container
    under ``lxcpath`` uses it or another snapshot sits on it."""
    snap = load(ref)
    children = [s.id for s in snapshots() if snap.id in s.layers[1:]]
    if children:
        raise SandboxError(f"snapshot {snap.id} is the base of {', '.join(children)}: "
                           "remove those first")
    if f"{snap.path}/" in _in_use(lxcpath):
        raise SandboxError(f"snapshot {snap.id} is in use by a container")
    _delete(snap.path)
    return snap


def _delete(path: str) -> None:
    # The record first: from then on nothing picks the snapshot up, and a half-removed
    # directory is garbage for ``prune``.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, _RECORD))
    shutil.rmtree(path, ignore_errors=True)


def prune(lxcpath: str, only: str | None = None) -> list[str]:
    """Remove ephemeral snapshots no container uses, and what dead builders left; returns the
    ids removed.  ``only``: just that snapshot (its owner, once its last fork closed), at
    once; otherwise one made in the last ``_GRACE`` seconds stays (its forks may not have
    saved the configs that name it yet)."""
    removed = []
    in_use = _in_use(lxcpath)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(SNAPSHOTS_ROOT):
            path = os.path.join(SNAPSHOTS_ROOT, entry)
            if only is not None and entry != only:
                continue
            if entry.startswith(".build-"):
                pid = entry.rsplit("-", 1)[-1]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    shutil.rmtree(path, ignore_errors=True)
                continue
            snap = _read(entry)
            if snap is None:
                if not os.path.exists(os.path.join(path, _RECORD)):
                    shutil.rmtree(path, ignore_errors=True)   # a half-removed one
                continue
            young = only is None and time.time() - snap.created < _GRACE
            if snap.ephemeral and not young and f"{path}/" not in in_use and \
                    not any(snap.id in s.layers[1:] for s in snapshots()):
                _delete(path)
                removed.append(snap.id)
    return removed
