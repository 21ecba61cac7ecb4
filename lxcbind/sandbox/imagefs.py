"""A sandbox on an image: the ``image=`` keyword, and the image config's command defaults.

``image=`` (``run``, ``Sandbox``, ``Session.from_policy``, ``Pool``, the CLI's ``--image``)
replaces the policy's ``lxc.rootfs``: the image gives the root filesystem, the policy everything
else.  When the sandbox opens, the reference is resolved once (imported if it is a source not
stored yet) and the container is defined on ``image:<id>``, so every later step names exactly
that image.

The image's config supplies defaults under the policy's (see ``lxcbind.image.config``):
``Env`` under ``process.env``, ``WorkingDir`` when ``process.cwd`` is unset, ``User`` when
``lxc.uid`` is unset (a name is looked up in the image's own ``/etc/passwd``, read without
following a link out of the image), ``Entrypoint + Cmd`` when neither the call nor the policy
names a command.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TYPE_CHECKING

from lxcbind._lite import replace
from lxcbind.command import CommandDefaults
from lxcbind.errors import ImageError, PolicyError, SandboxError
from lxcbind.policy.model import Policy, Rootfs
from lxcbind.policy.parse import IMAGE_PREFIXES, image_ref
from lxcbind.sandbox import idmap

if TYPE_CHECKING:
    from lxcbind.image import Image
    from lxcbind.image.snapshot import Snapshot
    from lxcbind.sandbox.idmap import IdRange


def with_image(policy: Policy, image: object) -> Policy:
    """``policy`` with its root filesystem replaced by ``image`` (a reference string, or an
    ``Image`` of the store)."""
    if image is None:
        return policy
    ref = getattr(image, "id", None)
    if isinstance(ref, str):
        ref = f"image:{ref}"
    elif isinstance(image, str):
        ref = image if image.startswith(IMAGE_PREFIXES) else f"image:{image}"
    else:
        raise TypeError(f"image must be a reference string or an lxcbind.image.Image, not "
                        f"{type(image).__name__}")
    rootfs = Rootfs("image", image_ref(ref, "image"))
    return replace(policy, lxc=replace(policy.lxc, rootfs=rootfs))


def resolve(spec: Rootfs) -> tuple[Image, Rootfs]:
    """The stored image ``spec`` names (imported now if needed) and the spec that names it by
    id."""
    from lxcbind.image import resolve_image

    image = resolve_image(spec.path or "")
    return image, Rootfs("image", f"image:{image.id}")


def defaults(d: CommandDefaults, image: Image, policy: Policy) -> CommandDefaults:
    """``d`` (the policy's command defaults) over the image config's."""
    config = image.config
    env = {**config.env_dict(), **d.env}
    cwd = d.cwd if policy.process.cwd else (config.working_dir or d.cwd)
    uid, gid = d.uid, d.gid
    if policy.lxc.uid is None and config.user:
        uid, gid = _user(image, config.user)
    return d._replace(env=env, cwd=cwd, uid=uid, gid=gid)


def argv(image: Image | None, policy: Policy, call: str) -> list[str]:
    """The command when the call names none: the policy's, else the image's."""
    if policy.process.command_line:
        return list(policy.process.argv)
    if image is not None and image.config.argv:
        return list(image.config.argv)
    raise PolicyError("process.commandLine", f"the policy has no command"
                      f"{' and the image none either' if image is not None else ''}; pass one: "
                      f"{call}(\"echo hi\") or {call}([\"ls\", \"/\"])")


def _user(image: Image, user: str) -> tuple[int | None, int | None]:
    from lxcbind.proc import users

    try:
        spec = users.check_user(user, "image")
        assert spec is not None
        account = users.resolve(spec, _read(image.rootfs, "etc/passwd"),
                                _read(image.rootfs, "etc/group"), "image")
    except ValueError as exc:
        raise ImageError(f"image {image.short_id}: config User {user!r}: {exc}") from None
    if account.uid > 65533 or account.gid > 65533:
        raise ImageError(f"image {image.short_id}: config User {user!r}: ids above 65533 are "
                         "outside the container's id range")
    return account.uid, account.gid


def _read(root: str, relative: str) -> bytes:
    """A file of the image, or b"" when it is missing or any component is a link (the image
    is hostile input: nothing of the host is read through it)."""
    from lxcbind.proc.users import MAX_ACCOUNT_FILE

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parts = relative.split("/")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (
                os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError:
                return b""
            os.close(fd)
            fd = nfd
        data = b""
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                while len(data) < MAX_ACCOUNT_FILE and (chunk := os.read(fd, 1 << 16)):
                    data += chunk
        return data
    finally:
        os.close(fd)


# -- stored layers, idmapped --------------------------------------------------------------

# Set once the kernel refused an idmapped mount of a layer (no mount_setattr, or the store's
# filesystem cannot be idmapped): from then on, each id range gets its own shifted copy.
_NO_IDMAP: list[int] = []
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


def lowers(snap: Snapshot, cdir: str, ids: IdRange | None) -> list[str]:
    """The overlay lower layers of ``snap``'s chain (newest first) for the container in
    ``cdir`` whose ids are ``ids`` (None: privileged, the stored 0-based layers as they are):
    ``idmapped`` mounts of them, or where the kernel cannot, each range's shifted copies
    (``snapshot.lowers``)."""
    from lxcbind.image import snapshot

    sources = snapshot.lowers(snap, None)
    if ids is None:
        return sources
    return idmapped(cdir, sources, ids) or snapshot.lowers(snap, ids.start)


def idmapped(cdir: str, sources: list[str], ids: IdRange) -> list[str] | None:
    """Idmapped, read-only mounts in ``cdir`` of the stored 0-based layers ``sources`` (an
    image's root filesystem, a snapshot's layers) for the container whose ids are ``ids``;
    None where the kernel cannot idmap them (the caller makes shifted copies instead).

    One stored copy serves every id range: a container costs a mount per layer instead of a
    copy (``idmap.bind_layer``).  The mounts are detached right after the container started
    (its overlay holds them) and on every teardown (``idmap.unbind_all``); a kept container
    gets them again at each start (``rebind_layers``).  Raises ``SandboxError``."""
    from lxcbind.image import store

    if _NO_IDMAP:
        return None
    earlier = store.recorded_uses(cdir)   # this container's base, already idmapped
    try:
        return bind_layers(cdir, sources, ids)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED or earlier:
            raise SandboxError(f"cannot mount the stored layer {exc.filename} for the "
                               f"container: {exc.strerror}") from None
        _NO_IDMAP.append(exc.errno or 0)
        idmap.unbind_all(cdir)
        store.record_uses(cdir, [])   # a kept container must not mount them at its next start
        return None


def owners_in_range(root: str) -> bool:
    """Whether every owner in the stored tree ``root`` is below ``idmap.RANGE``, so that an
    idmapped mount shows the container the same ids a shifted copy would.  (An imported image
    may own files by ids up to 2**32: through the mount they stay unmapped, and not even the
    container's root could change them; a shifted copy makes them ``nobody``.)  Walked once,
    the answer kept beside the tree (an image never changes)."""
    yes, no = (os.path.join(os.path.dirname(root), f".owners-{w}") for w in ("in-range", "not"))
    if os.path.exists(yes) or os.path.exists(no):
        return os.path.exists(yes)
    inside = True
    stack = [root]
    while stack and inside:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_uid >= idmap.RANGE or st.st_gid >= idmap.RANGE:
                    inside = False
                    break
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    with contextlib.suppress(OSError), open(yes if inside else no, "w"):
        pass
    return inside


def bind_layers(cdir: str, sources: list[str], ids: IdRange) -> list[str]:
    """Idmapped mounts of the stored layers ``sources`` in ``cdir``, each named after its place
    in the container's record of the store paths it uses (``store.record_uses``, written
    first, so the store never removes a layer a container is about to use).  Raises
    ``OSError``."""
    from lxcbind.image import store

    os.makedirs(cdir, 0o755, exist_ok=True)
    used = store.recorded_uses(cdir)
    added = [source for source in sources if source not in used]
    if added:
        store.record_uses(cdir, used + added)
        used += added
    return [idmap.bind_layer(cdir, used.index(source), source, ids) for source in sources]


def rebind_layers(cdir: str, ids: IdRange | None) -> None:
    """Mount again the idmapped layers a kept container's overlay names (they were detached
    after its last start).  Raises ``SandboxError``."""
    from lxcbind.image import store

    sources = store.recorded_uses(cdir)
    if ids is None or not sources:
        return
    try:
        bind_layers(cdir, sources, ids)
    except OSError as exc:
        raise SandboxError(f"cannot mount the stored layer {exc.filename} for the container: "
                           f"{exc.strerror}") from None


# -- a kept container's init ---------------------------------------------------------------

_KEEP = ".lxcbind-keep"             # in the container's directory: destroyed with it
_KEEP_INSIDE = "/dev/.lxcbind-keep"  # on the container's own /dev tmpfs, bound read-only
_INIT = "/usr/sbin/init.lxc.static"


def keep_init(cdir: str, name: str) -> list[tuple[str, str]]:
    """The init of a *kept* container on an image (a fresh one's init is the session spawner,
    ``initspawner``): an image has no lxcbind init and may have no ``sleep``, so liblxc's
    static ``init.lxc`` (it reaps orphans) runs the host's static busybox's ``sleep
    infinity``, both bound read-only from the container's directory (made by ``place_init``
    once the directory exists).  Raises ``SandboxError`` when the host lacks either."""
    from lxcbind.errors import SandboxError

    if not os.access(_INIT, os.X_OK) or not _busybox():
        raise SandboxError("a kept container on an image needs the host's static init.lxc "
                           "and busybox (apt-get install lxc busybox-static)")
    return [("lxc.init.cmd", f"{_KEEP_INSIDE}/init.lxc.static -n {name} -- "
                             f"{_KEEP_INSIDE}/busybox sleep infinity"),
            ("lxc.mount.entry", keep_mount(cdir))]


def keep_mount(cdir: str) -> str:
    """The mount entry of ``keep_init``'s binaries (also given again to a reused container,
    whose mount entries are replaced by each run's)."""
    from lxcbind.sandbox.mounts import MountEntry

    return MountEntry(os.path.join(cdir, _KEEP), _KEEP_INSIDE.lstrip("/"), "none",
                      "bind,ro,create=dir").config_value()


def place_init(cdir: str) -> None:
    """Put what ``keep_init`` binds into the container's directory."""
    import shutil

    folder = os.path.join(cdir, _KEEP)
    os.makedirs(folder, 0o755, exist_ok=True)
    for src, name in ((_INIT, "init.lxc.static"), (_busybox(), "busybox")):
        target = os.path.join(folder, name)
        if not os.path.exists(target):
            shutil.copyfile(src, target)
            os.chmod(target, 0o755)


def _busybox() -> str:
    import shutil

    return shutil.which("busybox") or ""
