"""The disk limit (``lxc.limits.disk``): each container's writable layer is a filesystem of
its own, so a workload that fills it gets ENOSPC and the host's disk stays untouched.

Most hosts have no project quotas, and an overlay's upper directory on the host's filesystem
can grow until the host's disk is full.  So the overlay's upper and work directories live on a
small ext4 filesystem per container, in a sparse image file in the container's directory
(``<cdir>/disk.img``), attached to a loop device and mounted at ``<cdir>/disk``.  Its size is
the byte limit and its inode count (one per ``INODE_RATIO`` bytes) the inode limit; ``df /``
inside shows both (overlayfs reports its upper filesystem).

Cost on the hot path: no ``mkfs`` per run.  An empty filesystem of each size is made once
with ``mkfs.ext4`` (no journal, no resize inode, lazily initialised inode tables: about 160 KiB
of data in a 10 GiB sparse file; the overlay's upper and work directories already in it) and
cached under ``<STATE_DIR>/disk``; a run copies only its data extents (found once per process
with ``SEEK_DATA``/``SEEK_HOLE``; ``copy_file_range``, a reflink where the host's filesystem
has them) into a new sparse file, attaches it with ``LOOP_CONFIGURE`` and mounts it with
``noinit_itable`` (no background zeroing that would grow the file) and ``nobarrier`` (no cache
flush at unmount, which the loop device would turn into an fsync of the image on the host).
Works on any host filesystem with sparse files (ext4, xfs, btrfs) and either cgroup version.
``benchmarks/bench_disk.py`` measures each step in CPU and wall time.

Nothing outlives the container, whoever dies: the loop device is attached with
``LO_FLAGS_AUTOCLEAR`` and the host's mount of a throwaway container's layer is detached right
after it started (its overlay holds the filesystem from then on), so the kernel frees the
filesystem and then the loop device when the container's last process is gone.  (A kept
container's layer stays mounted on the host while the container exists.)  The image is an
ordinary file in the container's directory, removed with it, except that a throwaway
container's image is moved aside at teardown (``retire``) and reused once the kernel has let
go of it (``diskpool``).  Teardown (``detach`` before
liblxc's destroy, ``wait_released`` after it, for ``gc``) never walks the workload's tree: the
whole filesystem goes at once.  While a sandbox runs it keeps an ``O_PATH`` descriptor on the
filesystem (``Layer``) to tell whether the limit was reached; it lets go of it after the
container is gone, in a background thread, so the filesystem's shutdown and the loop device's
detach (mostly waiting for the block layer, ~3 to 30 ms) are not on the caller's path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
from typing import TYPE_CHECKING

from lxcbind.errors import SandboxError
from lxcbind.policy.model import UNLIMITED
from lxcbind.result import filesystem_full
from lxcbind.sandbox import diskpool
from lxcbind.state import STATE_ROOT

if TYPE_CHECKING:
    import threading

IMAGES = os.path.join(STATE_ROOT, "disk")    # one cached empty filesystem per size
LAYER = "disk"                 # the mount point, in the container's directory
IMAGE = "disk.img"             # the container's filesystem, in its directory
UPPER = "delta0"               # overlay upper dir inside the layer (liblxc's work dir beside)
DEFAULT_CAP = 10 << 30         # at most 10 GiB by default ...
DEFAULT_SHARE = 4              # ... and at most a quarter of the free space where it lives
MIN_SIZE = 16 << 20
INODE_RATIO = 16384            # bytes per inode: 10 GiB holds 655,360 files
MAX_INODES = 1 << 31           # ext4 counts inodes in 32 bits (a limit past 32 TiB)
_SCHEMA = "2"                  # bump when the mkfs options or the tree in the image change
WORK = "work"                  # liblxc's overlay work dir, beside the upper one (liblxc 4, 5)
# nobarrier: no cache flush at unmount, which the loop device turns into an fsync of the image
# on the host (a journal commit there): ~1 ms of CPU and 3 to 20 ms of waiting per container,
# for a layer that is thrown away.  noinit_itable: no background thread zeroing inode tables
# (it would fill the sparse file).
MOUNT_OPTIONS = "noinit_itable,nobarrier"

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
_LOOP_INFO64 = 232             # sizeof(struct loop_info64); lo_flags at 52, lo_file_name at 56


def resolve(value: int | None, lxcpath: str) -> int | None:
    """The byte limit for a policy's ``lxc.limits.disk`` (None: not set; ``UNLIMITED``: none).

    The default is 10 GiB, or less where a quarter of the free space of ``lxcpath``'s
    filesystem is less (then the largest power of two below it, at least 16 MiB: a few sizes,
    so a few cached images).  An agent's shell rarely writes gigabytes, and a default that
    leaves three quarters of the free space keeps one run from filling the host; concurrent
    runs each get their own limit."""
    if value is not None:
        return None if value == UNLIMITED else value
    try:
        st = os.statvfs(lxcpath)
    except OSError:
        return DEFAULT_CAP
    share = st.f_bavail * st.f_frsize // DEFAULT_SHARE
    if share >= DEFAULT_CAP:
        return DEFAULT_CAP
    return max(MIN_SIZE, 1 << max(0, share.bit_length() - 1))


def upper_dir(cdir: str) -> str:
    return os.path.join(cdir, LAYER, UPPER)


def has_layer(cdir: str) -> bool:
    """Whether the container in ``cdir`` keeps its writes on a limited layer (its image, or,
    once its image is retired, the layer's mount point)."""
    return os.path.isfile(os.path.join(cdir, IMAGE)) or os.path.isdir(os.path.join(cdir, LAYER))


# -- the cached empty filesystems -------------------------------------------------------------

def _mkfs() -> str:
    import shutil  # once per size, like subprocess: not on a run's import path

    path = shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    if not path:
        raise SandboxError("lxc.limits.disk: mkfs.ext4 is not installed (apt-get install "
                           "e2fsprogs), so the disk limit cannot be enforced; install it, or "
                           "set \"disk\": \"max\" to run without a disk limit")
    return path


def _template_path(size: int) -> str:
    return os.path.join(IMAGES, f"ext4-{size}-{_SCHEMA}.img")


def _extents_of(fd: int, st: os.stat_result) -> list[tuple[int, int]]:
    """The data extents of a cached template, open as ``fd`` (found once per process)."""
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    extents = _EXTENTS.get(key)
    if extents is None:
        extents = _EXTENTS[key] = diskpool.data_extents(fd, st.st_size)
    return extents


def _template_extents(path: str) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _extents_of(fd, os.fstat(fd))
    finally:
        os.close(fd)


def template(size: int) -> str:
    """The cached empty ext4 image of ``size`` bytes, made now if it does not exist (under a
    lock: concurrent callers wait and reuse it; a file that exists is complete)."""
    path = _template_path(size)
    if os.path.exists(path):
        return path
    os.makedirs(IMAGES, mode=0o700, exist_ok=True)
    with open(os.path.join(IMAGES, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            return path
        import subprocess  # once per size: not on a run's import path

        base = os.path.basename(path)
        tmp = os.path.join(IMAGES, f".{base}.{os.getpid()}.tmp")
        tree = os.path.join(IMAGES, f".{base}.{os.getpid()}.tree")
        try:
            # The overlay's upper and work directories are in the image already: made at run
            # time they cost two directory allocations (ext4 spreads top-level directories
            # over the block groups: two bitmaps read per group touched).
            for name in ("", UPPER, WORK):
                os.makedirs(os.path.join(tree, name), 0o755, exist_ok=True)
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.truncate(size)
            inodes = min(max(64, size // INODE_RATIO), MAX_INODES)
            done = subprocess.run(
                [_mkfs(), "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N", str(inodes),
                 "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=1,nodiscard",
                 "-L", "lxcbind", "-d", tree, tmp],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                check=False)
            if done.returncode != 0:
                raise SandboxError(f"lxc.limits.disk: mkfs.ext4 failed: "
                                   f"{done.stdout.decode(errors='replace').strip()}")
            os.replace(tmp, path)
        except OSError as exc:   # e.g. larger than a file may be here (16 TiB on ext4)
            raise SandboxError(f"lxc.limits.disk: cannot make a {size}-byte image in {IMAGES}: "
                               f"{exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            for name in (UPPER, WORK, ""):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(tree, name))
    return path


def prune() -> list[str]:
    """``lxcbind gc``: remove the cached empty filesystems of another schema (an older
    lxcbind's: this one never uses them, and each may be gigabytes of apparent size), what a
    killed ``template()`` left half made, and the ``free/`` images this version would never
    claim (``diskpool.prune_free``).  Returns what went, as paths under ``IMAGES``.  Under the
    templates' lock, so no ``template()`` is making one meanwhile (a ``.tmp``/``.tree`` seen
    then is a dead maker's)."""
    removed: list[str] = []
    try:
        lock = open(os.path.join(IMAGES, ".lock"), "a")
    except OSError:
        return removed   # no cache here at all
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with os.scandir(IMAGES) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for name, is_dir in found:
            fields = name[:-len(".img")].split("-") if name.endswith(".img") else []
            stale_template = (len(fields) == 3 and fields[0] == "ext4" and fields[1].isdigit()
                              and fields[2] != _SCHEMA and not is_dir)
            half_made = name.startswith(".ext4-") and name.endswith((".tmp", ".tree"))
            if not (stale_template or half_made):
                continue
            try:
                if is_dir:
                    import shutil  # only when a maker died: not on a run's import path

                    shutil.rmtree(os.path.join(IMAGES, name))
                else:
                    os.unlink(os.path.join(IMAGES, name))
            except OSError:
                continue
            removed.append(name)
    removed += [f"free/{name}" for name in diskpool.prune_free(_SCHEMA)]
    return removed


# A template's data extents, found once per process (a template never changes once it exists:
# it is made under another name and renamed into place; one made again, after the cache was
# removed, has other times even if it has the same inode number).
_EXTENTS: dict[tuple[int, ...], list[tuple[int, int]]] = {}


_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _copy_range(src: int, dst: int, at: int, length: int) -> int:
    """Copy up to 1 MiB at offset ``at`` through user space; returns how much was copied."""
    data = os.pread(src, min(length, 1 << 20), at)
    done = 0
    while done < len(data):
        done += os.pwrite(dst, data[done:], at + done)
    return done


def _copy_sparse(src: str, dst: str) -> int:
    """Copy ``src`` to a new file ``dst`` (0600) data extent by data extent, leaving holes;
    returns ``dst`` open read-write."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        extents = _extents_of(fd, st)
        out = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        try:
            os.ftruncate(out, st.st_size)
            in_kernel = True
            for start, end in extents:
                at = start
                while at < end:
                    if in_kernel:
                        try:
                            copied = os.copy_file_range(fd, out, end - at, at, at)
                        except OSError as exc:
                            # Since Linux 5.19 a copy between two filesystems that have no
                            # copy_file_range of their own (ext4, tmpfs) is EXDEV: the cache
                            # and the container directory may well be on different ones.
                            if exc.errno not in _NO_KERNEL_COPY:
                                raise
                            in_kernel = False
                            continue
                    else:
                        copied = _copy_range(fd, out, at, end - at)
                    if copied <= 0:
                        raise OSError(errno.EIO, "short copy", dst)
                    at += copied
        except BaseException:
            os.close(out)
            raise
        return out
    finally:
        os.close(fd)


# -- loop devices -----------------------------------------------------------------------------

def _loop_info(name: str) -> bytes:
    info = bytearray(_LOOP_INFO64)
    struct.pack_into("I", info, 52, _LO_FLAGS_AUTOCLEAR)
    label = os.fsencode(name)[-63:]
    info[56:56 + len(label)] = label
    return bytes(info)


def _attach_loop(image_fd: int, name: str) -> tuple[str, int]:
    """Attach the open image to a free loop device, autoclear set; returns its path and an
    open descriptor on it (the device detaches itself once nothing holds it)."""
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"lxc.limits.disk: no loop devices on this host (/dev/loop-control: "
                           f"{exc.strerror}), so the disk limit cannot be enforced; set "
                           "\"disk\": \"max\" to run without one") from None
    try:
        for _ in range(64):   # another process may take the free device first: EBUSY, retry
            number = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            try:
                dev = os.open(device, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:   # no devtmpfs node for it (a container as the host)
                raise SandboxError(f"lxc.limits.disk: cannot open {device}: {exc.strerror}; "
                                   "set \"disk\": \"max\" to run without a disk limit") from None
            try:
                config = struct.pack("II", image_fd, 4096) + _loop_info(name) + bytes(64)
                try:
                    fcntl.ioctl(dev, _LOOP_CONFIGURE, config)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOTTY):
                        raise
                    # Before Linux 5.8: the two-step form (a small window without autoclear).
                    fcntl.ioctl(dev, _LOOP_SET_FD, image_fd)
                    fcntl.ioctl(dev, _LOOP_SET_STATUS64, _loop_info(name))
                return device, dev
            except OSError as exc:
                os.close(dev)
                if exc.errno != errno.EBUSY:
                    raise SandboxError(f"lxc.limits.disk: cannot attach {device}: "
                                       f"{exc.strerror}") from None
        raise SandboxError("lxc.limits.disk: no free loop device (64 attempts)")
    finally:
        os.close(ctl)


# -- one container's layer --------------------------------------------------------------------

def _mount(cdir: str, image_fd: int) -> None:
    from lxcbind.lxc import hostmount

    target = os.path.join(cdir, LAYER)
    os.makedirs(target, 0o755, exist_ok=True)
    try:
        device, dev = _attach_loop(image_fd, os.path.join(cdir, IMAGE))
    except OSError as exc:
        raise SandboxError(f"lxc.limits.disk: cannot attach a loop device: {exc.strerror}") \
            from None
    try:
        hostmount.mount_device(device, target, "ext4", MOUNT_OPTIONS)
    except OSError as exc:
        raise SandboxError(f"lxc.limits.disk: cannot mount the container's disk layer: "
                           f"{exc.strerror}") from None
    finally:
        os.close(dev)   # autoclear: the mount holds the device from now on


def prepare(cdir: str, size: int, owner: int | None) -> None:
    """Give the container in ``cdir`` a fresh writable layer of ``size`` bytes, mounted at
    ``<cdir>/disk`` with the overlay's upper and work directories made (owned by ``owner``,
    the container's shifted root, when it is unprivileged).  Raises ``SandboxError``; on
    failure what was made is left for ``detach`` (the caller removes the container)."""
    dst = os.path.join(cdir, IMAGE)
    try:
        # A clean image left by an earlier container of this size (``diskpool``), or a copy.
        if diskpool.claim(size, _SCHEMA, dst):
            image = os.open(dst, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            image = _copy_sparse(template(size), dst)
    except OSError as exc:
        raise SandboxError(f"lxc.limits.disk: cannot copy the disk image: {exc.strerror}") \
            from None
    try:
        _mount(cdir, image)
    finally:
        os.close(image)
    layer = os.path.join(cdir, LAYER)
    for name in (UPPER, WORK):   # in the image (an image of an older schema: made here)
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(layer, name), 0o755)
    if owner is not None:
        # liblxc uses the work directory, or makes its own beside the upper one ("olwork" in
        # some versions), as the container's root: the layer's root is that root's too.
        for name in (UPPER, WORK, ""):
            os.chown(os.path.join(layer, name), owner, owner)


def mount_existing(cdir: str) -> None:
    """Mount a kept container's layer again unless it is (its image holds its earlier
    writes).  Never while a loop device still holds the image: one filesystem mounted twice
    through two devices would be corrupted."""
    if os.path.ismount(os.path.join(cdir, LAYER)):
        return
    if wait_released(cdir):
        raise SandboxError(f"lxc.limits.disk: the disk layer of {os.path.basename(cdir)!r} "
                           "is still in use by an earlier start; try again")
    try:
        image = os.open(os.path.join(cdir, IMAGE), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"lxc.limits.disk: the disk image of {os.path.basename(cdir)!r} "
                           f"cannot be opened: {exc.strerror}") from None
    try:
        _mount(cdir, image)
    finally:
        os.close(image)


def detach(cdir: str) -> None:
    """Remove the host's mount of the layer (lazily: a running container keeps its own
    reference).  Idempotent, never raises.  Called after start, and before liblxc's destroy,
    which then finds no upper tree to walk."""
    from lxcbind.lxc import hostmount

    target = os.path.join(cdir, LAYER)
    for _ in range(8):   # stacked mounts (a killed runner's, then a retry's)
        if not os.path.ismount(target) or not hostmount.detach(target):
            return


def retire(cdir: str) -> None:
    """At a throwaway container's teardown, when this process holds its ``Layer``: move the
    image out of the container's directory, to ``diskpool``'s ``busy/``, so that liblxc's
    destroy does not unlink it on the caller's path; once the loop device lets go,
    ``Layer.close`` (off the caller's path) resets it for a later container, or
    ``diskpool.sweep`` removes it.  Never raises (an image not moved is destroyed as before)."""
    image = os.path.join(cdir, IMAGE)
    if os.path.isfile(image):
        diskpool.retire(image, os.path.basename(cdir))


def sweep() -> list[str]:
    """Remove the retired images nothing holds any more (``diskpool.sweep``)."""
    return diskpool.sweep()


def _images_of(cdir: str) -> list[str]:
    """The paths the container in ``cdir``'s image may have: in its directory, or retired."""
    paths = [os.path.join(cdir, IMAGE)]
    prefix = os.path.basename(cdir) + "."
    with contextlib.suppress(OSError), os.scandir(diskpool.BUSY) as entries:
        paths += [e.path for e in entries if e.name.startswith(prefix)]
    return paths


def wait_released(cdir: str, timeout: float = 5.0) -> list[str]:
    """After the container stopped: wait until the kernel has let go of the layer's loop
    device (autoclear runs when the last mount of the filesystem goes, which can lag the
    container's exit a little).  Returns the loop devices still attached (after asking them
    to detach), normally none.  Cheap when there is nothing to wait for: one look at the loop
    devices in /sys/block."""
    images = _images_of(cdir)   # liblxc's destroy may have removed it already
    deadline = time.monotonic() + timeout
    while True:
        left = [name for image in images for name in diskpool.backing_loops(image)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    for name in left:
        with contextlib.suppress(OSError):
            fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, _LOOP_CLR_FD)   # still in use: it clears on last close
            finally:
                os.close(fd)
    return left


class Layer:
    """An open handle on a running container's writable layer: whether it is full.  It also
    holds the layer's image (``diskpool.hold``) until ``close`` has recycled it."""

    def __init__(self, cdir: str) -> None:
        self._fd = os.open(os.path.join(cdir, LAYER), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._device = os.fstat(self._fd).st_dev   # the loop device (when it is mounted)
        self._image = -1
        with contextlib.suppress(OSError):   # without it the image is swept, not reused
            self._image = diskpool.hold(os.path.join(cdir, IMAGE))

    def upper(self) -> str:
        """A path to the overlay's upper directory that works after the host's mount of the
        layer was detached (through this descriptor: ``/proc/self/fd/N``)."""
        if self._fd < 0:
            raise ValueError("the layer was closed")
        return f"/proc/self/fd/{self._fd}/{UPPER}"

    def full(self) -> bool:
        """Whether the workload has (nearly) no bytes or no inodes left."""
        return filesystem_full(self._fd)

    def close(self, background: bool = False) -> None:
        """Let go of the filesystem (it must not outlive the container because of us).  When
        this is the last reference, the close shuts the filesystem and its loop device down;
        then a retired image (``retire``) is reset for a later container.  ``background``: in
        a daemon thread, so the caller does not wait for it (if this process exits first, the
        kernel closes the descriptors and does the same, and ``diskpool.sweep`` removes the
        image later)."""
        fd, self._fd = self._fd, -1
        image, self._image = self._image, -1
        if fd < 0:
            return
        if background:
            import threading

            thread = threading.Thread(target=_release, args=(fd, image, self._device),
                                      name="lxcbind-disk-release", daemon=True)
            global _waits_at_exit
            if not _waits_at_exit:
                import atexit

                atexit.register(_finish_pending)
                _waits_at_exit = True
            _PENDING.add(thread)
            thread.start()
        else:
            _release(fd, image, self._device)


# Releases under way in background threads.  At exit (the CLI's too: it runs the ``atexit``
# handlers) they are waited for, briefly, so that a one-shot run leaves its image reset in
# ``free/`` rather than half-released in ``busy/`` for a later run's sweep.
_PENDING: set[threading.Thread] = set()
_waits_at_exit = False


def _finish_pending(timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in list(_PENDING):
        thread.join(max(0.0, deadline - time.monotonic()))


def _release(fd: int, image: int, device: int, timeout: float = 10.0) -> None:
    """Close the layer's descriptor, then recycle its image once no loop device holds it
    (within ``timeout``: the kernel's release can take seconds on a slow host, and this runs
    off the caller's path; an exiting process waits for it at most ``_finish_pending``'s)."""
    try:
        _release_now(fd, image, device, timeout)
    finally:
        import threading

        _PENDING.discard(threading.current_thread())


def _backs(device: int, path: str) -> bool:
    """Whether loop device ``device`` (a dev_t) is still bound to the file at ``path``."""
    try:
        with open(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}/loop/backing_file") as f:
            return f.read().rstrip("\n").removesuffix(" (deleted)") == path
    except OSError:   # unbound: its loop/ directory is gone
        return False


def _release_now(fd: int, image: int, device: int, timeout: float) -> None:
    os.close(fd)
    if image < 0:
        return
    try:
        path = os.readlink(f"/proc/self/fd/{image}")
        if os.path.dirname(path) != diskpool.BUSY:
            return   # a kept container's image, or one that could not be retired
        deadline = time.monotonic() + timeout
        # The loop device's autoclear runs in a worker: watch that one device (recycle then
        # checks every loop device once, before it touches the image).
        while _backs(device, path):
            if time.monotonic() >= deadline:
                return   # the container still runs: the sweep's, later
            time.sleep(0.002)
        size = os.fstat(image).st_size
        source = _template_path(size)
        diskpool.recycle(image, source, _template_extents(source), _SCHEMA)
    except OSError:
        pass
    finally:
        os.close(image)
