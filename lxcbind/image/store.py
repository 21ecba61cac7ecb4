"""The local image store: content-addressed, read-only root filesystems with a record each.

Layout under ``IMAGES_ROOT`` (``/var/lib/lxcbind/images``, 0711 so a container's mapped root can
reach its own shifted copy; everything else in it is 0700, host root only)::

    <algo>-<hex>/rootfs/        the image's root filesystem, in the image's own (unshifted) ids
    <algo>-<hex>/image.json     its record (``Image``)
    <algo>-<hex>@<start>/rootfs a copy shifted into the id range starting at <start> (owned by
                                that range's root), made on first use by an unprivileged run
    .<algo>-<hex>.lock          the image's flock: building, shifting and removing hold it
    .build-<algo>-<hex>-*       a build in progress (or one a killed builder left: garbage)

An image id is ``<algo>:<hex>`` (``sha256:`` + the manifest digest for an OCI image).  ``add``
builds in a temporary directory under the image's lock and ends with ``rename()``: a directory
that exists is complete, a half-written image is never used, and concurrent imports of the same
image do the work once (the others wait on the lock and find it there).

An image is *in use* while a container defined under the lxcpath names its directory (its
``rootfs`` or a shifted copy) in its config, or in its ``USES`` record (a snapshot layer it
reads through an idmapped mount that its config names by the mount's path); ``remove``
refuses such an image, and an image that is another stored image's ``parent``.  A shifted
copy touched in the last ``GRACE`` seconds is also kept by ``prune``: a run may be between
choosing it and saving the config that names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lxcbind._lite import lazy_re, record
from lxcbind.errors import ImageError
from lxcbind.image.config import ImageConfig
from lxcbind.lxc import rmtree
from lxcbind.state import read_json, write_json

# Not below ``STATE_DIR`` when that is moved (``$LXCBIND_STATE_DIR``, e.g. a private temporary
# directory): an unprivileged container's root must be able to traverse every directory above
# its shifted copy, as for ``sandbox.rootfs.BASES_ROOT``.  ``$LXCBIND_IMAGES_DIR`` moves it.
IMAGES_ROOT = os.environ.get("LXCBIND_IMAGES_DIR", "/var/lib/lxcbind/images")
GRACE = 600                 # seconds a shifted copy stays after its last use
_ID = lazy_re(r"[a-z0-9]{1,16}:[0-9a-f]{12,128}")
_RECORD = "image.json"


@record
class Image:
    """A stored image.  ``rootfs`` is a read-only directory in the image's own ids (never
    written after ``add``); ``parent`` is the image it was derived from (None for an imported
    OCI image); ``size`` is in bytes; times are Unix seconds."""

    id: str
    rootfs: str
    config: ImageConfig
    parent: str | None
    source: str
    size: int
    created: float
    last_used: float
    dropped: tuple[str, ...] = ()    # entries left out at import (device nodes)

    @property
    def short_id(self) -> str:
        return self.id.partition(":")[2][:12]

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "rootfs": self.rootfs, "config": self.config.to_json(),
                "parent": self.parent, "source": self.source, "size": self.size,
                "created": self.created, "last_used": self.last_used,
                "dropped": list(self.dropped)}


def check_id(image_id: str) -> str:
    if not _ID.fullmatch(image_id):
        raise ImageError(f"{image_id!r} is not an image id (ALGO:HEX)")
    return image_id


def _dirname(image_id: str) -> str:
    return check_id(image_id).replace(":", "-", 1)


def _lock_path(dirname: str) -> str:
    return os.path.join(IMAGES_ROOT, f".{dirname}.lock")


@contextlib.contextmanager
def _locked(dirname: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the image's flock.  The lock file is removed with the image's last directory
    (``_drop_lock``, under the lock), so a holder re-checks that the file it locked is still
    the one at the path: otherwise it raced a removal and locks again.  Yields False (not
    held) only when ``wait`` is False and another process holds it."""
    _prepare_root()
    path = _lock_path(dirname)
    while True:
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                same = os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield True
                return


def _drop_lock(dirname: str) -> None:
    """Remove the image's lock file if nothing of the image is left (call holding it)."""
    if not any(e == dirname or e.startswith((f"{dirname}@", f".build-{dirname}"))
               for e in os.listdir(IMAGES_ROOT)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_lock_path(dirname))


def _prepare_root() -> None:
    os.makedirs(IMAGES_ROOT, mode=0o711, exist_ok=True)
    if os.stat(IMAGES_ROOT).st_mode & 0o777 != 0o711:
        os.chmod(IMAGES_ROOT, 0o711)


def _load(dirname: str) -> Image | None:
    top = os.path.join(IMAGES_ROOT, dirname)
    data = read_json(Path(top, _RECORD), None)
    if not isinstance(data, dict) or not os.path.isdir(os.path.join(top, "rootfs")):
        return None
    with contextlib.suppress(OSError):
        data["last_used"] = os.stat(os.path.join(top, _RECORD)).st_mtime   # see ``touch``
    try:
        return Image(str(data["id"]), os.path.join(top, "rootfs"),
                     ImageConfig.from_json(data.get("config")), data.get("parent"),
                     str(data.get("source", "")), int(data.get("size", 0)),
                     float(data["created"]), float(data.get("last_used") or data["created"]),
                     tuple(data.get("dropped") or ()))
    except (KeyError, TypeError, ValueError):
        return None


def get(image_id: str) -> Image | None:
    """The stored image ``image_id``, or None."""
    return _load(_dirname(image_id))


def list_images() -> list[Image]:
    """Every stored image, oldest first."""
    try:
        names = os.listdir(IMAGES_ROOT)
    except FileNotFoundError:
        return []
    images = [img for n in names if not n.startswith(".") and "@" not in n
              if (img := _load(n)) is not None]
    return sorted(images, key=lambda i: (i.created, i.id))


def lookup(id_or_ref: str) -> Image:
    """The stored image named by its id, a unique prefix of its hex digest (at least 4
    digits), or the source reference it was imported from (the newest such)."""
    if _ID.fullmatch(id_or_ref):
        exact = get(id_or_ref)
        if exact is not None:
            return exact
    images = list_images()
    by_source = [i for i in images if i.source == id_or_ref]
    if by_source:
        return by_source[-1]
    hexpart = id_or_ref.partition(":")[2] if ":" in id_or_ref else id_or_ref
    if len(hexpart) >= 4 and all(c in "0123456789abcdef" for c in hexpart):
        found = [i for i in images if i.id.partition(":")[2].startswith(hexpart)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ImageError(f"image {id_or_ref!r}: ambiguous, {len(found)} images match")
    raise ImageError(f"image {id_or_ref!r}: not in the store")


def add(image_id: str, build: Callable[[str], int], *, source: str, config: ImageConfig,
        parent: str | None = None, dropped: Callable[[], tuple[str, ...]] | None = None) -> Image:
    """The stored image ``image_id``, made now by ``build(rootfs_dir)`` (which fills the empty
    directory and returns the size in bytes) unless it is already stored.  Concurrent callers
    for one id: one builds, the others wait and get its result."""
    dirname = _dirname(image_id)
    final = os.path.join(IMAGES_ROOT, dirname)
    with _locked(dirname):
        existing = _load(dirname)
        if existing is not None:
            return touch(existing)
        prefix = f".build-{dirname}-"
        for stale in os.listdir(IMAGES_ROOT):  # a killed builder's leftovers
            if stale.startswith(prefix):
                rmtree.remove_tree(os.path.join(IMAGES_ROOT, stale))
        if os.path.lexists(final):  # incomplete without its record: rebuilt
            rmtree.remove_tree(final)
        import tempfile  # only when building

        tmp = tempfile.mkdtemp(prefix=prefix, dir=IMAGES_ROOT)
        try:
            root = os.path.join(tmp, "rootfs")
            os.mkdir(root, 0o755)
            size = build(root)
            now = time.time()
            image = Image(image_id, os.path.join(final, "rootfs"), config, parent, source, size,
                          now, now, dropped() if dropped else ())
            write_json(Path(tmp, _RECORD), image.to_json())
            os.chmod(tmp, 0o700)
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                rmtree.remove_tree(tmp)
            _drop_lock(dirname)
            raise
        return image


def touch(image: Image) -> Image:
    """Record that ``image`` is used now (the record's modification time: no rewrite, so
    concurrent users never race on its content); returns the updated record."""
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(os.path.join(os.path.dirname(image.rootfs), _RECORD), (now, now))
    return Image(image.id, image.rootfs, image.config, image.parent, image.source, image.size,
                 image.created, now, image.dropped)


def shifted(image: Image, start: int, build: Callable[[str], None]) -> str:
    """The copy of ``image``'s rootfs shifted into the id range at ``start``: ``build(top)``
    makes ``top/rootfs`` once (under the image's lock), later calls reuse it."""
    dirname = _dirname(image.id)
    top = os.path.join(IMAGES_ROOT, f"{dirname}@{start}")
    lower = os.path.join(top, "rootfs")
    if os.path.isdir(lower):
        with contextlib.suppress(OSError):
            os.utime(top)  # "in use" (see prune)
        return lower
    with _locked(dirname):
        if os.path.isdir(lower):
            return lower
        if _load(dirname) is None:
            raise ImageError(f"image {image.id}: removed from the store")
        import tempfile

        tmp = tempfile.mkdtemp(prefix=f".build-{dirname}@{start}-", dir=IMAGES_ROOT)
        try:
            build(tmp)
            os.rename(tmp, top)
        except BaseException:
            with contextlib.suppress(OSError):
                rmtree.remove_tree(tmp)
            raise
    return lower


def users(image: Image, lxcpath: str | None = None) -> list[str]:
    """Names of the containers under ``lxcpath`` whose config (or ``USES`` record) names
    ``image``'s directory (its rootfs or a shifted copy of it)."""
    from lxcbind.lxc.container import default_lxcpath

    root = lxcpath or default_lxcpath()
    mark = os.path.join(IMAGES_ROOT, _dirname(image.id))
    found = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(root)):
            text = _uses(os.path.join(root, name))
            if f"{mark}/" in text or f"{mark}@" in text:
                found.append(name)
    return found


USES = ".lxcbind-images"   # in a container's directory: the store paths it uses, one a line


def record_uses(cdir: str, paths: list[str]) -> None:
    """Note that the container in ``cdir`` uses these store directories although its config
    does not name them (its overlay's lower layers are idmapped mounts of them)."""
    with open(os.path.join(cdir, USES), "w") as f:
        f.write("".join(f"{p}\n" for p in paths))


def recorded_uses(cdir: str) -> list[str]:
    with contextlib.suppress(OSError), open(os.path.join(cdir, USES)) as f:
        return [line for line in f.read().split("\n") if line]
    return []


def _uses(cdir: str) -> str:
    """The config of the container in ``cdir`` and its ``USES`` record."""
    text = ""
    for name in ("config", USES):
        with contextlib.suppress(OSError), open(os.path.join(cdir, name)) as f:
            text += f.read() + "\n"
    return text


def _children(image: Image, images: list[Image]) -> list[Image]:
    return [i for i in images if i.parent == image.id]


def remove(id_or_ref: str, lxcpath: str | None = None) -> Image:
    """Remove a stored image and its shifted copies.  Refused (ImageError) while a container
    uses it or another stored image names it as its parent."""
    image = lookup(id_or_ref)
    with _locked(_dirname(image.id)):
        _check_unused(image, lxcpath)
        _delete(image)
    return image


def _check_unused(image: Image, lxcpath: str | None) -> None:
    in_use = users(image, lxcpath)
    if in_use:
        raise ImageError(f"image {image.short_id}: in use by container(s) {', '.join(in_use)}")
    children = _children(image, list_images())
    if children:
        raise ImageError(f"image {image.short_id}: the parent of image(s) "
                         f"{', '.join(c.short_id for c in children)}")


def _delete(image: Image) -> None:
    dirname = _dirname(image.id)
    top = os.path.join(IMAGES_ROOT, dirname)
    # The record goes first: a half-removed image is never loaded again.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(top, _RECORD))
    for entry in os.listdir(IMAGES_ROOT):
        if entry == dirname or entry.startswith(f"{dirname}@"):
            rmtree.remove_tree(os.path.join(IMAGES_ROOT, entry))
    _drop_lock(dirname)


def prune(lxcpath: str | None = None, *, unused_for: float = 0.0) -> list[str]:
    """Remove the images no container uses, not used for ``unused_for`` seconds and parent of
    no image that stays; the shifted copies no container uses (untouched for ``GRACE``); and
    what killed builders left.  Returns the ids and directories removed."""
    removed: list[str] = []
    images = list_images()
    now = time.time()
    changed = True
    while changed:  # children first, then parents that became childless
        changed = False
        for image in list(images):
            if now - image.last_used < unused_for or _children(image, images):
                continue
            with _locked(_dirname(image.id)):
                if users(image, lxcpath) or _load(_dirname(image.id)) is None:
                    continue
                _delete(image)
            removed.append(image.id)
            images.remove(image)
            changed = True
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(IMAGES_ROOT)):
            removed += _prune_entry(entry, lxcpath, now)
    return removed


def _prune_entry(entry: str, lxcpath: str | None, now: float) -> list[str]:
    path = os.path.join(IMAGES_ROOT, entry)
    if entry.startswith(".build-"):
        rest = entry[len(".build-"):]
        dirname = rest.split("@")[0] if "@" in rest else rest.rsplit("-", 1)[0]
    elif entry.startswith(".") and entry.endswith(".lock"):
        dirname = entry[1:-len(".lock")]
    elif "@" in entry:
        dirname = entry.split("@")[0]
    else:
        return []
    with _locked(dirname, wait=False) as held:
        if not held:
            return []  # being built, shifted or removed right now
        removed = []
        if not entry.endswith(".lock") and os.path.lexists(path):
            fresh = "@" in entry and not entry.startswith(".") and _load(dirname) is not None \
                and now - os.stat(path).st_mtime < GRACE
            if fresh or f"{path}/" in _configs(lxcpath):
                return []
            rmtree.remove_tree(path)
            removed.append(path)
        _drop_lock(dirname)
        return removed


def _configs(lxcpath: str | None) -> str:
    """The configs of every container under ``lxcpath``, concatenated."""
    from lxcbind.lxc.container import default_lxcpath

    root = lxcpath or default_lxcpath()
    text = ""
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            text += _uses(os.path.join(root, name))
    return text


def disk_budget(max_size: int | None) -> int:
    """The unpacked-size limit of an import: ``max_size``, else 20 GiB or half the free space
    of the store's filesystem, whichever is smaller."""
    if max_size is not None:
        if max_size <= 0:
            raise ImageError(f"max_size: must be positive, not {max_size}")
        return max_size
    _prepare_root()
    st = os.statvfs(IMAGES_ROOT)
    return min(20 << 30, st.f_bavail * st.f_frsize // 2)


__all__ = ["IMAGES_ROOT", "Image", "add", "get", "list_images", "lookup", "prune", "remove",
           "shifted", "touch", "users", "disk_budget"]
