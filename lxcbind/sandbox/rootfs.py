"""Where a container's root filesystem comes from, and the throwaway layer each run writes to.

Every container is defined on an overlay (``lxc.rootfs.path = overlay:<lower>:<upper>``): the
lower layer is a *base* that no run ever modifies, the upper layer (``delta0``, with overlayfs'
``work`` beside it) lives in the container's own directory, so ``destroy()`` throws every
write away.  liblxc mounts the overlay inside the container's mount namespace, so nothing is
mounted on the host and nothing outlives the container.

Kinds of base (``Rootfs.kind``):

``host``      a skeleton generated here: the host's ``/usr`` bound read-only, ``/bin``,
              ``/sbin``, ``/lib*`` recreated as the host has them (merged-usr symlinks, or
              read-only binds of real directories), a small generated ``/etc`` (no secrets: the
              host's ``/etc`` is never bound), private tmpfs ``/tmp``, autodev ``/dev``,
              LXC's proc/sys.  Init is the host's ``init.lxc`` running ``sleep infinity``
              (it reaps orphans), unless the sandbox makes the session spawner the init
              (every throwaway container: ``lxcbind.sandbox.initspawner``).  No template runs:
              the fastest kind, the default.
``busybox``   liblxc's busybox template, run once; its inittab reduced to nothing (no getty on
              missing ttys, no DHCP client).
``download``  liblxc's download template, run once, and only from LXC's local image cache
              (``--force-cache``): build machines are offline.
``dir``       an existing root filesystem directory, used as the lower layer as it is.
``image``     an image of the local store (``lxcbind.image``; the sandbox resolves the policy's
              reference to ``image:<id>`` first): its read-only rootfs is the base, and its
              shifted copies live in the store, beside it.

Bases are built once under ``BASES_ROOT`` and shared by concurrent runs: building holds an
``flock`` on the base's lock file, happens in a temporary directory, and ends with a
``rename()``, so a base that exists is complete.  A base's name carries a fingerprint of what
it was built from, so a changed host (busybox upgrade, different ``/bin`` layout) gets a new one.

Over 500 lines as one concern: the four base kinds, their shifted copies and pruning share
one locking and naming scheme, and split apart each half would restate it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from lxcbind._lite import sha256_hex
from lxcbind.errors import LxcbindError, SandboxError
from lxcbind.lxc import rmtree
from lxcbind.lxc.container import Container as LxcContainer
from lxcbind.lxc.container import default_lxcpath
from lxcbind.policy.model import Rootfs
from lxcbind.proc.runner import Container
from lxcbind.sandbox import disk, idmap, imagefs, security
from lxcbind.sandbox.idmap import RANGE, IdRange
from lxcbind.sandbox.mounts import MountEntry, plan_mounts

if TYPE_CHECKING:
    from lxcbind.image import Image

BASES_ROOT = "/var/lib/lxcbind/bases"
DOWNLOAD_CACHE = "/var/cache/lxc/download"
UPPER = "delta0"          # overlay upper layer, inside the container's directory
_PRUNE_GRACE = 600        # seconds a shifted copy stays after its last use, unused
_SCHEMA = "2"             # bump when a base's layout or content changes

# System directories a ``host`` container gets from the host, read-only.
_HOST_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Host files that are not secrets and that ordinary programs read.
_HOST_ETC_COPY = ("protocols", "services", "ld.so.conf", "localtime", "os-release", "shells",
                  # user management (useradd -m, adduser, userdel): no secrets in them
                  "login.defs", "adduser.conf", "deluser.conf")
_HOST_ETC_DIRS = ("skel", "pam.d")   # their plain files, copied (see ``_host_etc_names``)
_HOST_ETC_BIND = ("ld.so.cache", "alternatives", "ssl/certs")  # change with packages: bound

_ETC_FILES = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\n"
              "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nusers:x:100:\nsandbox:x:1000:\nnogroup:x:65534:\n",
    # Generated, with no password at all ("*"): PAM's account check (adduser's chfn) needs
    # an entry for root; never the host's file.  Mode 0600 (``_PRIVATE``).
    "shadow": "root:*:19000:0:99999:7:::\nsandbox:*:19000:0:99999:7:::\n"
              "nobody:*:19000:0:99999:7:::\n",
    "hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
                     "networks: files\nprotocols: files\nservices: files\n",
    "hostname": "sandbox\n",
}

# What LXC's common.conf would add (lxcbind does not include that file: it also sets a
# mount.auto and tty counts that would fight ours); capabilities and seccomp come from
# ``security``.
_DEVICES = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
            "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:229 rwm")


def _host_arch() -> str:
    machine = os.uname().machine   # platform.machine(), without importing platform
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386",
            "ppc64le": "ppc64el"}.get(machine, machine)


# -- bases ------------------------------------------------------------------------------------

def _host_etc_names() -> list[str]:
    """The host's /etc files a ``host`` container gets a copy of: ``_HOST_ETC_COPY`` and the
    plain files of ``_HOST_ETC_DIRS`` (a new user's home starts from ``skel``; ``adduser``
    runs ``chfn``, which asks PAM)."""
    names = list(_HOST_ETC_COPY)
    for directory in _HOST_ETC_DIRS:
        try:
            names += sorted(f"{directory}/{e.name}" for e in os.scandir("/etc/" + directory)
                            if e.is_file(follow_symlinks=False))
        except OSError:
            pass
    return names


# Each host /etc file's digest, by path, with the stat fields it was taken under: a run finds
# its base twice (the base, then its shifted copy) and a Pool once per container, and reading
# and hashing the ~40 files each time cost ~0.7 ms.  A changed file gets a new inode, size or
# change time (ctime cannot be set from user space); a file changed in the last seconds is not
# remembered, since a second change within one timestamp tick would keep all three.
_DIGESTS: dict[str, tuple[tuple[int, int, int, int, int], str]] = {}
_SETTLED_NS = 2_000_000_000


def _etc_digest(path: str, st: os.stat_result) -> str:
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _DIGESTS.get(path)
    if known is not None and known[0] == key:
        return known[1]
    with open(path, "rb") as f:
        digest = sha256_hex(f.read())
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS:
        _DIGESTS[path] = (key, digest)
    return digest


def _lstat_marks(paths: Sequence[str]) -> tuple[tuple[int, ...] | None, ...]:
    """What tells a path was replaced, created or removed without reading it: its inode, type,
    size, and modification and change times, or None when it is missing."""
    marks: list[tuple[int, ...] | None] = []
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            marks.append(None)
            continue
        marks.append((st.st_ino, st.st_dev, st.st_mode, st.st_size, st.st_mtime_ns,
                      st.st_ctime_ns))
    return tuple(marks)


# The host's system binds as last planned, with the ``_lstat_marks`` of the paths they come
# from: every fresh host-kind container asked for them (realpaths of ~10 paths), and they
# change only when a package replaces one of those paths.
_HOST_MOUNTS: tuple[tuple[tuple[int, ...] | None, ...], list[MountEntry]] | None = None


def _host_layout() -> dict[str, object]:
    """What the host skeleton is made of; its hash names the base (cheap: a few small files,
    hashed again only when one changed)."""
    top = {}
    for name in _HOST_TOP:
        path = "/" + name
        if os.path.islink(path):
            top[name] = ["link", os.readlink(path)]
        elif os.path.isdir(path):
            top[name] = ["dir"]
    etc = {}
    for name in _host_etc_names():
        path = "/etc/" + name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            etc[name] = ["link", os.readlink(path)]
        elif stat.S_ISREG(st.st_mode):
            etc[name] = ["sha256", _etc_digest(path, st)]
    return {"top": top, "etc": etc, "files": _ETC_FILES}


def _busybox_binary() -> str:
    import shutil  # building, pruning or busybox only: not on a host run's import path

    path = shutil.which("busybox") or ""
    if not path:
        raise SandboxError("the busybox rootfs needs busybox on the host "
                           "(apt-get install busybox-static)")
    return path


def _fingerprint(data: object) -> str:
    blob = json.dumps(data, sort_keys=True).encode()
    return sha256_hex(_SCHEMA.encode() + blob)[:12]


def _resolve_spec(spec: Rootfs) -> Rootfs:
    if spec.kind == "download" and spec.arch is None:
        return Rootfs("download", distribution=spec.distribution, release=spec.release,
                          arch=_host_arch())
    return spec


def base_dir(spec: Rootfs) -> str:
    """Where the base for ``spec`` lives (built or not): ``<BASES_ROOT>/<key>``; for ``dir``
    the directory itself."""
    spec = _resolve_spec(spec)
    if spec.kind == "dir":
        return os.path.realpath(spec.path or "")
    if spec.kind == "image":
        return os.path.dirname(_stored_image(spec).rootfs)
    if spec.kind == "host":
        key = "host-" + _fingerprint(_host_layout())
    elif spec.kind == "busybox":
        st = os.stat(_busybox_binary())
        key = "busybox-" + _fingerprint([st.st_size, st.st_mtime_ns])
    else:
        key = f"download-{spec.distribution}-{spec.release}-{spec.arch}-{_SCHEMA}"
    return os.path.join(BASES_ROOT, key)


def prune_bases(lxcpath: str | None = None) -> list[str]:
    """Remove cached bases that no run would pick any more (the host layout or the busybox
    binary changed, so their key did) and that no container under ``lxcpath`` still uses as
    its overlay's lower layer, with their shifted copies, and the shifted copies of ``dir:``
    root filesystems that no container uses (rebuilt on demand).  A shifted copy used in the
    last ``_PRUNE_GRACE`` seconds is kept: a run may be between picking it and saving the
    config that names it.  Returns the removed directories.  Download bases are kept: their
    key never goes stale, and rebuilding one needs the network."""
    import shutil  # building, pruning or busybox only: not on a host run's import path

    current = {os.path.basename(base_dir(Rootfs(kind))) for kind in ("host", "busybox")}
    root = lxcpath or default_lxcpath()
    in_use = ""
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            with contextlib.suppress(OSError), open(os.path.join(root, name, "config")) as f:
                in_use += f.read()
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(BASES_ROOT)):
            key = entry.split("@")[0]  # a shifted copy belongs to its base's key and lock
            stale = key.startswith(("host-", "busybox-")) and key not in current
            if entry.startswith(".") or not (stale or key.startswith("dir-")):
                continue  # current bases and their copies stay; dir: copies are rebuildable
            path = os.path.join(BASES_ROOT, entry)
            with open(os.path.join(BASES_ROOT, f".{key}.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if f"{path}/" in in_use or not os.path.isdir(path) or \
                        ("@" in entry and time.time() - os.stat(path).st_mtime < _PRUNE_GRACE):
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            if not any(e.split("@")[0] == key for e in os.listdir(BASES_ROOT)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(BASES_ROOT, f".{key}.lock"))
    return removed


def _lower(base: str, spec: Rootfs) -> str:
    return base if spec.kind == "dir" else os.path.join(base, "rootfs")


def ensure_base(spec: Rootfs) -> str:
    """The base directory for ``spec``, built now if it does not exist yet.

    Safe against concurrent callers (one builds, the others wait on the lock and reuse it).
    """
    spec = _resolve_spec(spec)
    base = base_dir(spec)
    if spec.kind == "dir":
        _check_dir_rootfs(base, spec.path or "")
        return base
    if spec.kind == "image":
        return base  # stored images are complete (the store renames them into place)
    if os.path.isdir(base):  # complete: bases appear only by rename()
        return base
    # Refuse an uncached download before taking a lock (which would leave a lock file).
    args = _download_args(spec) if spec.kind == "download" else []
    key = os.path.basename(base)

    def build(tmp: str) -> None:
        os.chmod(tmp, 0o700)  # only host root (privileged containers) uses it as it is
        if spec.kind == "host":
            _build_host(tmp)
        else:
            _build_from_template(tmp, spec, args)

    _build_once(key, base, build)
    return base


def _build_once(key: str, final: str, build: Callable[[str], None]) -> None:
    """Make ``final`` (a directory in ``BASES_ROOT``) with ``build(tmp)`` unless it exists:
    under the base's lock (``key``: concurrent callers wait and reuse), in a temporary
    directory renamed into place, so a directory that exists is complete."""
    import shutil  # building, pruning or busybox only: not on a host run's import path

    _prepare_bases_root()
    with open(os.path.join(BASES_ROOT, f".{key}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(final):
            return
        # Whatever a builder that died left half-done: nobody else can be building (we hold
        # the lock), so it is garbage.
        prefix = f".build-{os.path.basename(final)}-"
        for stale in os.listdir(BASES_ROOT):
            if stale.startswith(prefix):
                shutil.rmtree(os.path.join(BASES_ROOT, stale), ignore_errors=True)
        import tempfile  # only when building: not on a run's import path

        tmp = tempfile.mkdtemp(prefix=prefix, dir=BASES_ROOT)
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _prepare_bases_root() -> None:
    """``BASES_ROOT`` is traversable (0711) so a container's mapped root can reach its shifted
    copy; each base itself stays 0700 (host root only).  Idempotent: also fixes the modes an
    older lxcbind left."""
    os.makedirs(BASES_ROOT, mode=0o711, exist_ok=True)
    if os.stat(BASES_ROOT).st_mode & 0o777 != 0o711:
        os.chmod(BASES_ROOT, 0o711)
    for key in os.listdir(BASES_ROOT):
        path = os.path.join(BASES_ROOT, key)
        if "@" not in key and not key.startswith(".") and os.path.isdir(path) and \
                os.stat(path).st_mode & 0o777 != 0o700:
            os.chmod(path, 0o700)


def _dir_key(path: str) -> str:
    """A name for a ``dir:`` rootfs's shifted copies: the path and the change times of its top
    directories (a cheap freshness check: a changed file deep inside is not noticed until the
    copy is pruned by ``lxcbind gc``)."""
    marks = []
    for sub in ("", "etc", "usr", "bin", "lib", "sbin"):
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(path, sub))
            marks.append([sub, st.st_mtime_ns, st.st_ino])
    return "dir-" + _fingerprint([path, marks])


def shifted_lower(spec: Rootfs, ids: IdRange) -> str:
    """The lower layer for an unprivileged container with ids ``ids``: a copy of the base
    whose owners are moved into the range (uid N → ``ids.start + N``), built once per base
    and range and reused by every later container that gets the same range.  It lives in
    ``<BASES_ROOT>/<key>@<start>/`` (0700, owned by the range's root: no host user can reach
    inside)."""
    spec = _resolve_spec(spec)
    image = _stored_image(spec) if spec.kind == "image" else None
    base = os.path.dirname(image.rootfs) if image is not None else ensure_base(spec)
    source = _lower(base, spec)

    def build(tmp: str) -> None:
        _copy_shifted(source, os.path.join(tmp, "rootfs"), ids.start)
        os.chown(tmp, ids.start, ids.start)
        os.chmod(tmp, 0o700)

    if image is not None:  # the store keeps an image's copies with it (removed with it)
        from lxcbind.image import store

        return store.shifted(image, ids.start, build)
    key = _dir_key(base) if spec.kind == "dir" else os.path.basename(base)
    top = os.path.join(BASES_ROOT, f"{key}@{ids.start}")
    lower = os.path.join(top, "rootfs")
    if os.path.isdir(lower):
        with contextlib.suppress(OSError):
            os.utime(top)  # "in use": gc keeps copies used lately (see prune_bases)
        return lower
    _build_once(key, top, build)
    return lower


def _stored_image(spec: Rootfs) -> Image:
    from lxcbind.image import resolve_image

    return resolve_image(spec.path or "")


def _shift(value: int, start: int) -> int:
    return start + (value if value < RANGE else 65534)  # out-of-range owners become nobody


def _copy_shifted(src: str, dst: str, start: int) -> None:
    """Copy the tree ``src`` to ``dst`` with every owner shifted by ``start``: files, links,
    hard links (kept as such), device nodes and fifos; modes and times preserved; extended
    attributes (file capabilities among them) are not copied."""
    import shutil  # building, pruning or busybox only: not on a host run's import path

    seen: dict[tuple[int, int], str] = {}

    def one(s: str, d: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            with os.scandir(s) as entries:
                for entry in entries:
                    one(entry.path, os.path.join(d, entry.name), entry.stat(follow_symlinks=False))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif (st.st_dev, st.st_ino) in seen and st.st_nlink > 1:
            os.link(seen[(st.st_dev, st.st_ino)], d)
            return
        elif stat.S_ISREG(mode):
            shutil.copyfile(s, d, follow_symlinks=False)
            if st.st_nlink > 1:
                seen[(st.st_dev, st.st_ino)] = d
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(d, mode, st.st_rdev)
        else:
            return  # sockets: nothing to copy
        os.lchown(d, _shift(st.st_uid, start), _shift(st.st_gid, start))
        if not stat.S_ISLNK(mode):
            os.chmod(d, stat.S_IMODE(mode))  # after chown, which clears setuid bits
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    one(src, dst, os.lstat(src))


def _build_host(tmp: str) -> None:
    import shutil  # building, pruning or busybox only: not on a host run's import path

    root = os.path.join(tmp, "rootfs")
    os.mkdir(root, 0o755)
    for d, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777),
                    ("root", 0o700), ("home", 0o755), ("run", 0o755), ("mnt", 0o755),
                    ("opt", 0o755), ("srv", 0o755), ("usr", 0o755), ("var", 0o755),
                    ("var/tmp", 0o1777), ("var/lib", 0o755), ("var/log", 0o755),
                    ("var/cache", 0o755), ("etc", 0o755), ("etc/ssl", 0o755),
                    ("etc/ssl/certs", 0o755), ("etc/alternatives", 0o755),
                    ("etc/ld.so.conf.d", 0o755), ("etc/skel", 0o755), ("etc/pam.d", 0o755)):
        path = os.path.join(root, d)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)  # not subject to the umask
    home = os.path.join(root, "home", "sandbox")  # the optional non-root workload user's
    os.mkdir(home, 0o750)
    os.chown(home, 1000, 1000)
    top = _host_layout()["top"]
    assert isinstance(top, dict)
    for name, how in top.items():
        if how[0] == "link":
            os.symlink(how[1], os.path.join(root, name))
        else:
            os.mkdir(os.path.join(root, name), 0o755)
    for name, content in _ETC_FILES.items():
        mode = 0o600 if name == "shadow" else 0o644
        fd = os.open(os.path.join(root, "etc", name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "w") as f:
            f.write(content)
        os.chmod(os.path.join(root, "etc", name), mode)   # not subject to the umask
    for name in _host_etc_names():
        src, dst = "/etc/" + name, os.path.join(root, "etc", name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isfile(src):
            shutil.copyfile(src, dst)
    open(os.path.join(root, "etc", "ld.so.cache"), "w").close()  # mountpoint
    open(os.path.join(root, "etc", "resolv.conf"), "w").close()  # no network by default


def _build_from_template(tmp: str, spec: Rootfs, args: list[str]) -> None:
    """Run liblxc's template (``args`` after ``--``) in a private lxcpath, keep the rootfs
    (and the config lines that matter), throw the rest away."""
    import shutil  # building, pruning or busybox only: not on a host run's import path

    lxcpath = os.path.join(tmp, "lxcpath")
    os.mkdir(lxcpath, 0o700)
    name = "base"
    template = "busybox" if spec.kind == "busybox" else "download"
    if spec.kind == "busybox":
        _busybox_binary()
    with Container(name, lxcpath) as c:
        try:
            c.create(template, args)
        except LxcbindError as exc:
            if spec.kind == "download":
                raise SandboxError(_download_hint(spec, f"the download template failed: {exc}")) \
                    from None
            raise SandboxError(f"building the {spec.kind} base failed: {exc}") from None
    made = os.path.join(lxcpath, name)
    os.rename(os.path.join(made, "rootfs"), os.path.join(tmp, "rootfs"))
    keep = []
    with open(os.path.join(made, "config")) as f:
        for line in f:
            key = line.split("=", 1)[0].strip()
            if key in ("lxc.include", "lxc.arch"):
                keep.append(line.strip())
    with open(os.path.join(tmp, "lxc.conf"), "w") as f:
        f.write("".join(k + "\n" for k in keep))
    shutil.rmtree(lxcpath)
    if spec.kind == "busybox":
        # A sandbox needs an init that reaps and nothing else: no getty on ttys we do not
        # create (lxc.tty.max=0, it would respawn in a loop), no DHCP client, no syslogd.
        with open(os.path.join(tmp, "rootfs", "etc", "inittab"), "w") as f:
            f.write("::sysinit:/bin/true\n")


def _download_cache(spec: Rootfs) -> str:
    return os.path.join(DOWNLOAD_CACHE, spec.distribution or "", spec.release or "",
                        spec.arch or "", "default")


def _download_hint(spec: Rootfs, why: str) -> str:
    cache = _download_cache(spec)
    return (f"the {spec.distribution}/{spec.release}/{spec.arch} image could not be fetched "
            f"({why}). This machine does not download images: pre-seed LXC's download cache "
            f"{cache}/ (rootfs.tar.xz, meta.tar.xz unpacked: config, ...) by running "
            f"`lxc-create -t download -n seed -- -d {spec.distribution} -r {spec.release} "
            f"-a {spec.arch}` on a machine with network access and copying that directory "
            "here; lxcbind then builds the base offline with the template's --force-cache "
            "(set LXCBIND_DOWNLOAD_ONLINE=1 to let the template try the network instead)")


def _download_args(spec: Rootfs) -> list[str]:
    args = ["-d", spec.distribution or "", "-r", spec.release or "", "-a", spec.arch or ""]
    cache = _download_cache(spec)
    if os.path.isfile(os.path.join(cache, "rootfs.tar.xz")) and \
            os.path.isfile(os.path.join(cache, "config")):
        return args + ["--force-cache"]
    if os.environ.get("LXCBIND_DOWNLOAD_ONLINE") == "1":
        return args
    # Without a cached image the template would try the network (wget, 30 s timeouts, retried)
    # and fail slowly on an offline machine: refuse at once instead.
    raise SandboxError(_download_hint(spec, f"it is not in LXC's cache {cache}"))


def _check_dir_rootfs(path: str, given: str) -> None:
    if not os.path.isabs(given):
        raise SandboxError(f"rootfs dir {given!r} must be an absolute path")
    if not os.path.isdir(path):
        raise SandboxError(f"rootfs dir {given!r} does not exist or is not a directory")
    # lexists: /bin/sh is often an absolute symlink that only resolves inside the rootfs.
    if not os.path.lexists(os.path.join(path, "bin", "sh")):
        raise SandboxError(f"rootfs dir {given!r} has no /bin/sh: not a root filesystem")


# -- containers -------------------------------------------------------------------------------

def _host_init(name: str) -> str:
    for init in ("/usr/sbin/init.lxc.static", "/usr/sbin/init.lxc"):
        if os.access(init, os.X_OK):
            return f"{init} -n {name} -- /bin/sleep infinity"
    return "/bin/sleep infinity"  # no reaper, but a working container


def _host_mounts() -> list[MountEntry]:
    """The system binds of a host-kind container, planned again only when one of the paths
    they come from (or a directory their links resolve in) was replaced, created or removed."""
    global _HOST_MOUNTS
    sources = ["/usr", "/etc", "/etc/ssl"] + ["/" + n for n in _HOST_TOP] + \
        ["/etc/" + n for n in _HOST_ETC_BIND]
    marks = _lstat_marks(sources)
    known = _HOST_MOUNTS
    if known is not None and known[0] == marks:
        return list(known[1])
    system = ["/usr"] + ["/" + n for n in _HOST_TOP
                         if not os.path.islink("/" + n) and os.path.isdir("/" + n)]
    extra = ["/etc/" + n for n in _HOST_ETC_BIND if os.path.exists("/etc/" + n)]
    entries = plan_mounts([], system + extra, [], rootfs_kind="host")
    entries.append(MountEntry("tmpfs", "tmp", "tmpfs", "rw,nosuid,nodev,mode=1777"))
    _HOST_MOUNTS = (marks, entries)
    return list(entries)


def _security_config(kind: str) -> list[tuple[str, str]]:
    if kind == "download":
        return []  # the image's own lxc.include (common.conf + distribution) provides them
    items = [("lxc.mount.auto", "proc:mixed sys:ro cgroup:mixed")]
    prefix = "lxc.cgroup2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") \
        else "lxc.cgroup"
    items.append((f"{prefix}.devices.deny", "a"))
    items += [(f"{prefix}.devices.allow", rule) for rule in _DEVICES]
    items.append(("lxc.mount.entry",
                  "tmpfs dev/shm tmpfs rw,nosuid,nodev,mode=1777,create=dir 0 0"))
    return items


def define_container(name: str, spec: Rootfs, *, lxcpath: str | None = None,
                     mounts: Sequence[MountEntry] = (),
                     config: Sequence[tuple[str, str]] = (),
                     isolation: security.Isolation | None = None,
                     disk_size: int | None = None,
                     layers: Callable[[int | None], Sequence[str]] | None = None) -> Container:
    """Define (but do not start) container ``name`` on a throwaway copy-on-write root.

    The rootfs is an overlay whose lower layer is the cached base for ``spec`` (built first if
    needed) and whose upper layer is ``<lxcpath>/<name>/delta0``, so ``destroy()`` removes every
    write.  Sets loopback-only networking (``lxc.net.0.type=empty``, ``flags=up`` for ``lo``),
    ``lxc.pty.max=64``, ``lxc.tty.max=0``, the kind's own items, ``isolation`` (user
    namespace, capabilities, seccomp, limits; an unprivileged container's lower layer is the
    base's shifted copy for its id range), then ``config`` (applied last, so it may override,
    e.g. ``lxc.init.cmd``), then ``mounts`` in order, and saves the config.
    ``disk_size``: the upper layer lives on a filesystem of that many bytes of its own
    (``disk``), mounted on the host until the caller starts the container and detaches it.
    ``isolation=None`` is a bare privileged container (binding-level tests); the sandbox
    always passes one.  ``layers(start)``: read-only layers (newest first) stacked between
    the upper layer and the base, for a container whose ids start at ``start`` (None:
    privileged) — an image's snapshots (``lxcbind.image.snapshot.lowers``).

    Raises ``SandboxError`` (a container of that name exists, the base cannot be built, the
    config is refused); on any failure nothing is left: no container, no directory.
    The caller owns the returned handle; tear down with ``remove_container``.
    """
    c = Container(name, lxcpath)
    cdir = os.path.join(c.lxcpath, name)
    if c.defined or os.path.lexists(cdir):
        c.close()
        raise SandboxError(f"container {name!r} already exists in {c.lxcpath}")
    try:
        base = ensure_base(spec)
        ids = isolation.ids if isolation is not None else None
        if ids is None:
            lower = _lower(base, spec)
        elif spec.kind == "image":   # an imported image: one stored copy, idmapped per range
            source = _lower(base, spec)
            found = imagefs.idmapped(cdir, [source], ids) \
                if imagefs.owners_in_range(source) else None
            lower = found[0] if found else shifted_lower(spec, ids)
        else:
            lower = shifted_lower(spec, ids)
        if layers is not None:   # overlayfs' lowerdir list, leftmost on top
            lower = ":".join([*layers(ids.start if ids is not None else None), lower])
        items: list[tuple[str, str]] = []
        if spec.kind == "download":
            with open(os.path.join(base, "lxc.conf")) as f:
                for line in f:
                    key, _, value = line.partition("=")
                    if value.strip():
                        items.append((key.strip(), value.strip()))
        upper = disk.upper_dir(cdir) if disk_size is not None else os.path.join(cdir, UPPER)
        items += [
            ("lxc.rootfs.path", f"overlay:{lower}:{upper}"),
            ("lxc.uts.name", name),
            ("lxc.net.0.type", "empty"),
            ("lxc.net.0.flags", "up"),   # liblxc then brings up lo: loopback works offline
            ("lxc.pty.max", "64"),
            ("lxc.tty.max", "0"),
            ("lxc.autodev", "1"),
        ]
        items += _security_config(spec.kind)
        if ids is not None:
            # Overlay in a user namespace: trusted.* xattrs are out of reach, user.* work.
            items.append(("lxc.rootfs.options", "userxattr"))
        if isolation is not None:
            items += isolation.config()
        if spec.kind == "host":
            items.append(("lxc.init.cmd", _host_init(name)))
            items += [("lxc.mount.entry", e.config_value()) for e in _host_mounts()]
        keep_image = spec.kind == "image" and not any(k == "lxc.init.cmd" for k, _ in config)
        if keep_image:
            items += imagefs.keep_init(cdir, name)
        if spec.kind == "dir" and not any(k == "lxc.init.cmd" for k, _ in config) \
                and not os.path.lexists(os.path.join(lower, "sbin", "init")):
            raise SandboxError(f"rootfs dir {spec.path!r} has no /sbin/init; pass "
                               "config=[('lxc.init.cmd', ...)] naming a long-running program")
        items += list(config)
        items += [("lxc.mount.entry", e.config_value(cdir)) for e in mounts]
        for key, value in items:
            try:
                c.set_config_item(key, value)
            except (LxcbindError, ValueError) as exc:
                raise SandboxError(f"LXC refused config item {key} = {value!r}: {exc}") from None
        try:
            c.save_config()
        except LxcbindError as exc:
            raise SandboxError(f"could not save the config of {name!r}: {exc}") from None
        if keep_image:
            imagefs.place_init(cdir)
        if disk_size is not None:
            disk.prepare(cdir, disk_size, ids.start if ids is not None else None)
        elif ids is not None:
            # The overlay's upper layer belongs to the container's root (lxcbind may write
            # /etc files into it before the first start).
            os.makedirs(upper, 0o755, exist_ok=True)
            os.chown(upper, ids.start, ids.start)
        return c
    except BaseException:
        remove_container(c)
        c.close()
        raise


def _system_mount_items(spec: Rootfs) -> list[tuple[str, str]]:
    """The mount entries lxcbind itself puts in a container of this kind (not the policy's)."""
    items = [item for item in _security_config(spec.kind) if item[0] == "lxc.mount.entry"]
    if spec.kind == "host":
        items += [("lxc.mount.entry", e.config_value()) for e in _host_mounts()]
    return items


def replace_mounts(c: Container, spec: Rootfs, mounts: Sequence[MountEntry],
                   isolation: security.Isolation | None = None) -> None:
    """Give an existing, stopped container exactly the system mounts of ``spec`` plus
    ``mounts``, and ``isolation``'s capabilities, seccomp profile and limits (a kept container
    reused by a later run gets that run's policy instead of accumulating entries), and save
    its config.  Raises ``SandboxError``."""
    cdir = os.path.join(c.lxcpath, c.name)
    try:
        if isolation is not None:
            for key, _value in isolation.config():
                if key.startswith("lxc.cgroup") or key in ("lxc.cap.keep", "lxc.seccomp.profile"):
                    c.clear_config_item(key)
            for key, value in isolation.config():
                if key != "lxc.idmap":
                    c.set_config_item(key, value)
        c.clear_config_item("lxc.mount.entry")
        for key, value in _system_mount_items(spec):
            c.set_config_item(key, value)
        if spec.kind == "image":   # a kept container on an image: its init's binaries
            c.set_config_item("lxc.mount.entry", imagefs.keep_mount(cdir))
        for entry in mounts:
            c.set_config_item("lxc.mount.entry", entry.config_value(cdir))
        c.save_config()
    except (LxcbindError, ValueError) as exc:
        raise SandboxError(f"could not apply the filesystem policy to {c.name!r}: {exc}") from None


def remove_container(c: LxcContainer, *, wait_layer: bool = True) -> None:
    """Stop (hard) and destroy ``c``, then remove whatever of its directory is left (overlay
    upper and work dirs included).  Idempotent; the handle stays open (the caller closes it).
    ``wait_layer``: wait until the kernel has released a disk-limited layer's loop device
    (False when the caller still holds the layer open and lets it go afterwards: then the
    image is moved aside for the layer to reuse, ``disk.retire``).

    Never recursive on the caller's stack, whatever the workload left (``rmtree``); what cannot
    be removed raises ``rmtree.RemovalError`` and the container stays, for ``gc`` to report."""
    cdir = os.path.join(c.lxcpath, c.name)
    handle: LxcContainer = c if not c.closed else Container(c.name, c.lxcpath)
    idmap.unbind_all(cdir)  # a runner killed between define and start left them mounted
    layered = disk.has_layer(cdir)
    disk.detach(cdir)       # the whole limited layer goes at once: nothing for destroy to walk
    if layered and not wait_layer:
        disk.retire(cdir)   # the caller's layer reuses the image: destroy does not unlink it
    try:
        if handle.defined:
            try:
                handle.destroy()   # empties the workload's layers first (``rmtree``)
            except rmtree.RemovalError:
                raise              # liblxc never meets what could not be emptied
            except LxcbindError:
                handle.stop()  # destroy refused (e.g. still running): kill, then retry once
                if handle.defined:
                    handle.destroy()
    finally:
        if handle is not c:
            handle.close()
        if layered and wait_layer:
            disk.wait_released(cdir)
    if os.path.lexists(cdir):
        rmtree.remove_tree(cdir)
