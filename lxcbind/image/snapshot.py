"""Snapshots: a running sandbox's writable layer, captured as a read-only image layer.

A snapshot is one overlay layer (see ``layercopy`` for what a layer holds) plus a record of
what it sits on: a root filesystem base (``Rootfs``: host, busybox, download or dir) and
optionally a parent snapshot, so snapshots of snapshots form a chain of layers.  A container
started from a snapshot gets the chain as extra lower layers of its overlay, above the base:
``lxc.rootfs.path = overlay:<newest>:...:<oldest>:<base>:<upper>`` (liblxc 5.0.2's overlay
driver takes everything before the last ``:/`` as overlayfs' ``lowerdir`` list, leftmost on
top; see ``rootfs.define_container``).

Snapshots live in the image store (``store``), so ``lxcbind image ls`` lists them and its
removal, in-use and parent rules apply: the image id is ``snap:<12 hex>``, its ``rootfs`` is
the layer with 0-based owners (what privileged containers use, what an unprivileged one reads
through an idmapped mount, ``sandbox.imagefs.lowers``, and what a fallback shifted copy is
made from), its ``source`` the snapshot's name (or ``snapshot of <container>``), its
``parent`` the parent snapshot's id.  What only a snapshot has (the base it sits on, the chain
of layers, whether it is ephemeral) is in ``snapshot.json`` beside ``image.json``.  Where
the kernel cannot idmap a layer, a copy shifted into a container's id range is the store's
``<dir>@<start>/rootfs``, made on first use by a container of that range.  An ``ephemeral``
snapshot (made by ``fork``) is removed by ``prune`` as soon as no container uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from lxcbind._lite import lazy_re, record, replace
from lxcbind.errors import ImageError, SandboxError
from lxcbind.image import layercopy, store
from lxcbind.image.config import ImageConfig
from lxcbind.policy.model import Rootfs

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
        """The snapshot's directory in the image store."""
        return os.path.join(store.IMAGES_ROOT, self.id.replace(":", "-", 1))

    @property
    def layer(self) -> str:
        """The layer with 0-based owners (root-only)."""
        return os.path.join(self.path, "rootfs")

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


def _of(image: store.Image) -> Snapshot | None:
    """The snapshot a stored image is, or None (an imported image)."""
    try:
        with open(os.path.join(os.path.dirname(image.rootfs), _RECORD)) as f:
            return _from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None


def layered(image: store.Image, spec: Rootfs) -> tuple[Snapshot | None, Rootfs]:
    """For a container on the stored ``image`` (named by ``spec``): the snapshot it is and
    the base its layers sit on, or (None, ``spec``) for an imported image."""
    snap = _of(image)
    return (snap, snap.base) if snap is not None else (None, spec)


def accounts(snap: Snapshot, image: store.Image) -> store.Image:
    """``image`` (the snapshot's stored record) with the ``rootfs`` whose ``etc/passwd`` and
    ``etc/group`` a container on ``snap`` sees, for the image config's ``User``: the newest
    layer that has an ``etc/passwd`` entry (a file, or a whiteout: then there is none), else
    the base image's root filesystem.  Nothing is followed through a link of a layer."""
    for sid in snap.layers:
        layer = store.get(sid)
        if layer is None:
            continue
        try:
            if not stat.S_ISDIR(os.lstat(os.path.join(layer.rootfs, "etc")).st_mode):
                continue
            os.lstat(os.path.join(layer.rootfs, "etc", "passwd"))
        except OSError:
            continue
        return replace(image, rootfs=layer.rootfs)
    if snap.base.kind == "image" and snap.base.path:
        base = store.get(snap.base.path.removeprefix("image:"))
        if base is not None:
            return replace(image, rootfs=base.rootfs)
    return image


def snapshots() -> list[Snapshot]:
    """Every complete snapshot in the store, oldest first."""
    return [snap for image in store.list_images() if (snap := _of(image)) is not None]


def load(ref: str | Snapshot) -> Snapshot:
    """The snapshot whose id, name or id prefix is ``ref``.  Raises ``ImageError``."""
    if isinstance(ref, Snapshot):
        ref = ref.id
    if not isinstance(ref, str) or not ref:
        raise ImageError(f"image: {ref!r} is not a snapshot's id or name")
    try:
        image = store.lookup(ref)
    except ImageError:
        raise ImageError(f"image: no snapshot with the id or name {ref!r} "
                         "(see `lxcbind image ls`)") from None
    snap = _of(image)
    if snap is None:
        raise ImageError(f"image: {ref!r} is an imported image, not a snapshot")
    return snap


def check_name(name: str | None) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SandboxError(f"snapshot name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    if any(s.name == name for s in snapshots()):
        raise SandboxError(f"snapshot name {name!r} is taken (remove it first: "
                           f"`lxcbind image rm {name}`)")


def capture(upper: str, *, start: int | None, base: Rootfs, parent: Snapshot | None,
            name: str | None = None, ephemeral: bool = False, source: str = "",
            image: store.Image | None = None,
            frozen: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
            ) -> Snapshot:
    """Copy the overlay upper directory ``upper`` of a container whose ids start at ``start``
    (None: privileged) into a new snapshot on ``base`` (and ``parent``, the image the
    container itself started from, if it was a snapshot; ``image``: the stored image it ran
    on, whose config the snapshot inherits and which it depends on), owners moved back to
    0-based ids, and store it.  The copy
    runs inside ``frozen()`` (the caller's freezer: the workload cannot change the layer
    meanwhile); the records are written after.  Raises ``SandboxError``; nothing is left on
    failure (the store builds in a temporary directory)."""
    check_name(name)
    sid = "snap:" + os.urandom(6).hex()
    back = layercopy.unshift(start, RANGE)
    made: list[Snapshot] = []

    def build(root: str) -> int:
        os.rmdir(root)   # the store made it; the copy makes it with the layer's own mode
        try:
            with frozen():
                size = layercopy.copy_layer(upper, root, back, back)
        except OSError as exc:
            raise SandboxError(f"snapshot: cannot copy the writable layer: {exc}") from None
        snap = Snapshot(id=sid, base=base, layers=(sid, *(parent.layers if parent else ())),
                        name=name, parent=parent.id if parent else None, created=time.time(),
                        size=size, ephemeral=ephemeral)
        with open(os.path.join(os.path.dirname(root), _RECORD), "w") as f:
            json.dump(snap.to_json(), f, indent=1)
        made.append(snap)
        return size

    store.add(sid, build, source=name or source or "snapshot",
              config=image.config if image is not None else ImageConfig(),
              parent=image.id if image is not None else None)
    return made[0]


def lowers(snap: Snapshot, start: int | None) -> list[str]:
    """The layer directories of ``snap``'s chain, newest first, for a container whose ids
    start at ``start`` (None: privileged, the 0-based layers as they are): each shifted copy
    is made on first use.  Raises ``ImageError``."""
    dirs = []
    for sid in snap.layers:
        image = store.get(sid)
        if image is None:
            raise ImageError(f"image: snapshot {snap.id} needs layer {sid}, which was removed")
        if start is None:
            dirs.append(image.rootfs)
            continue

        def build(top: str, source: str = image.rootfs, at: int = start) -> None:
            there = layercopy.shift(at, RANGE)
            try:
                layercopy.copy_layer(source, os.path.join(top, "rootfs"), there, there,
                                     trusted=False)
            except OSError as exc:
                raise ImageError(f"image: cannot prepare snapshot layer {source} for the "
                                 f"container's id range: {exc}") from None
            os.chown(top, at, at)
            os.chmod(top, 0o700)

        dirs.append(store.shifted(image, start, build))
    return dirs


def remove(ref: str | Snapshot, lxcpath: str | None = None) -> Snapshot:
    """Remove a snapshot and its shifted copies.  Refused (``ImageError``) while a container
    under ``lxcpath`` uses it or another snapshot sits on it."""
    snap = load(ref)
    store.remove(snap.id, lxcpath)
    return snap


def prune(lxcpath: str | None = None, only: str | None = None) -> list[str]:
    """Remove ephemeral snapshots no container uses; returns the ids removed.  ``only``: just
    that snapshot (its owner, once its last fork closed), at once; otherwise one made in the
    last ``_GRACE`` seconds stays (its forks may not have saved the configs that name it
    yet)."""
    removed = []
    for snap in snapshots():
        if not snap.ephemeral or (only is not None and snap.id != only):
            continue
        if only is None and time.time() - snap.created < _GRACE:
            continue
        image = store.get(snap.id)
        if image is None or store.users(image, lxcpath):
            continue
        try:
            store.remove(snap.id, lxcpath)
        except ImageError:
            continue   # in use after all, or a later snapshot sits on it
        removed.append(snap.id)
    return removed
