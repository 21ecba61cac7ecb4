"""The few cgroup facts the container layer needs: where this process is, how to go back,
a kill of what a container started since a snapshot (a Session's last resort), and the
counters of limit events (OOM kills, refused forks) read before and after a command.

liblxc 5.0's daemonized ``start()`` moves the *calling* process into the container's monitor
cgroup (``lxc.monitor.<name>``), where it would stay, and which then cannot be removed when
the container stops.  ``Container.start`` saves ``current()`` and calls ``return_to``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from lxcbind._lite import record
from lxcbind.lxc import mountinfo, sigmask

_ROOT = "/sys/fs/cgroup"


def current() -> dict[str, str]:
    """This process's cgroup per hierarchy: ``{controllers: path}`` from /proc/self/cgroup."""
    result = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            result[controllers] = path
    return result


def _mountpoints() -> dict[str, str]:
    """Mount point per hierarchy key (``cpu``, ``name=systemd``, ``""`` for cgroup2)."""
    return dict(_cached_mountpoints())


@functools.lru_cache(maxsize=1)
def _cached_mountpoints() -> tuple[tuple[str, str], ...]:
    # The cgroup hierarchies are mounted at boot and never move while we run; reading
    # mountinfo costs ~0.1 ms, and a run asks a few dozen times.
    mounts: dict[str, str] = {}
    for m in mountinfo.mounts():
        if m.fstype == "cgroup2":
            mounts.setdefault("", m.point)
        elif m.fstype == "cgroup":
            options = [o for o in m.options.split(",") if o not in ("rw", "ro") and "=" not in o
                       or o.startswith("name=")]
            mounts.setdefault(",".join(sorted(options)), m.point)
    return tuple(mounts.items())


def _key(controllers: str) -> str:
    return ",".join(sorted(controllers.split(","))) if controllers else ""


def return_to(saved: dict[str, str]) -> None:
    """Move this process back into the cgroups of ``saved`` wherever it was moved away."""
    now = current()
    if now == saved:
        return
    mounts = _mountpoints()
    pid = str(os.getpid()).encode()
    for controllers, path in saved.items():
        if now.get(controllers) == path:
            continue
        mountpoint = mounts.get(_key(controllers))
        if mountpoint is None:
            continue
        try:
            fd = os.open(os.path.join(mountpoint, path.lstrip("/"), "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        except OSError:
            pass  # best effort: a hierarchy we may not write to stays as liblxc left it


def prime_migration() -> None:
    """Start, in a background thread, the wait the next cgroup migration would otherwise pay.

    Every migration (a write to a ``cgroup.procs``) takes the kernel's global
    ``cgroup_threadgroup_rwsem`` for writing, and when no migration happened during the last
    grace period the first one waits for an RCU grace period (5-20 ms measured on a 2-vCPU
    VM; ``benchmarks/bench_floor.py`` prints it).  liblxc's ``start`` makes such a migration
    (the monitor into ``lxc.monitor.<name>``) and ``stop`` another (the monitor into
    ``lxc.pivot``); a one-shot run that follows no other run paid both on its critical path.
    A no-op migration (this process into the cgroup it is already in) made here pays the wait
    while the caller prepares the container, and repeated until the next ``start()`` returns
    keeps the fast path armed (a migration within a grace period of the last one is
    immediate).  It moves nothing, and is skipped while a start is in flight (the process may
    be in a monitor cgroup then).  Mounting a hierarchy with ``favordynmods``
    removes the wait altogether (a host setting; lxcbind changes no mount options).
    """
    if not getattr(_unprimed, "on", False):
        _primer.kick()


_unprimed = threading.local()


@contextlib.contextmanager
def unprimed() -> Iterator[None]:
    """Starts set up in this block, by this thread, are not primed (``prime_migration`` does
    nothing): for set-ups off every caller's path, such as a Pool's replacement containers,
    where waiting out a grace period costs no CPU but the primer's repeated migrations cost
    0.5-1 ms of it per container (measured in a sustained ``Pool.map``)."""
    before = getattr(_unprimed, "on", False)
    _unprimed.on = True
    try:
        yield
    finally:
        _unprimed.on = before


def started() -> None:
    """A container start just returned (its migrations left the fast path armed): the primer
    rests until it is kicked again."""
    _primer.last = _primer.started = time.monotonic()


class _Primer:
    """One daemon thread that makes the no-op migration when kicked (starting a thread per
    container would cost more than the write: ~0.4 ms on a loaded 2-vCPU VM), and repeats it
    every few ms until the next ``start()`` has returned (at most ``HOLD`` s): the kernel's
    fast path stays armed however long the caller takes to get there."""

    RECENT = 0.004   # a migration this recent leaves the fast path armed: nothing to do
    EVERY = 0.003    # well inside one grace period
    HOLD = 0.06      # a CLI run reaches start() ~20-40 ms after it primes

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kicked = threading.Event()
        self._thread: threading.Thread | None = None
        self.last = 0.0          # time.monotonic() of this process's last migration
        self.started = 0.0       # ... of the last start() that returned

    def kick(self) -> None:
        if time.monotonic() - self.last < self.RECENT:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="lxcbind-cgroup-prime")
                # Born with every signal blocked (a thread inherits its creator's mask), so the
                # kernel never hands it one: a signal meant for the process must wait while
                # the main thread blocks it (Container.attach_request does, between liblxc's
                # fork and owning the pid), or its Python handler would run anyway, flagged
                # from here, and drop the pid: an unreaped child makes stop() hang forever.
                with sigmask.blocked(signal.valid_signals()):
                    self._thread.start()
        self._kicked.set()

    def _loop(self) -> None:
        while True:
            self._kicked.wait()
            self._kicked.clear()
            kicked = time.monotonic()
            while self.started < kicked and time.monotonic() - kicked < self.HOLD:
                self._migrate()
                time.sleep(self.EVERY)

    def _migrate(self) -> None:
        # Under the start lock: a start that began between a check and the write would have
        # the process moved back out of its monitor cgroup mid-start.  A start that comes
        # meanwhile waits for the write, whose wait it would otherwise pay itself.
        with starting.idle() as home:
            if home is None:
                return   # a start is in flight: it makes the migrations itself
            mounts = _mountpoints()
            for controllers, path in home.items():
                mountpoint = mounts.get(_key(controllers))
                if mountpoint:
                    try:
                        _write(os.path.join(mountpoint, path.lstrip("/"), "cgroup.procs"),
                               str(os.getpid()))
                    except OSError:
                        pass  # not root, or a read-only hierarchy: the next one just waits
                    self.last = time.monotonic()
                    return


def remove_monitor_cgroups(name: str) -> None:
    """Remove the empty ``lxc.monitor.<name>`` cgroups a stopped container left behind."""
    for mountpoint in set(_mountpoints().values()):
        path = os.path.join(mountpoint, f"lxc.monitor.{name}")
        try:
            os.rmdir(path)
        except OSError:
            pass  # absent, or still in use by a live monitor


@functools.cache
def controller_version(controller: str) -> str | None:
    """``"v1"`` when ``controller`` has a legacy hierarchy here, ``"v2"`` when the unified
    hierarchy offers it, else None.  liblxc silently ignores ``lxc.cgroup2.*`` items on a
    legacy hierarchy (and ``lxc.cgroup.*`` on a unified one), so callers pick by this.
    Remembered, like the mount points it is read from (a run asks ~20 times)."""
    mounts = _mountpoints()
    if any(controller in key.split(",") for key in mounts if key):
        return "v1"
    unified = mounts.get("")
    if unified:
        try:
            with open(os.path.join(unified, "cgroup.controllers")) as f:
                if controller in f.read().split():
                    return "v2"
        except OSError:
            pass
    return None


def process_dir(pid: int, controller: str) -> str | None:
    """The cgroup directory (host path) of process ``pid`` for ``controller``, or None."""
    version = controller_version(controller)
    mounts = _mountpoints()
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if version == "v1" and controller in controllers.split(","):
            mountpoint = mounts.get(_key(controllers))
        elif version == "v2" and controllers == "":
            mountpoint = mounts.get("")
        else:
            continue
        if mountpoint:
            return os.path.join(mountpoint, path.lstrip("/"))
    return None

# -- limits as the kernel stores them ---------------------------------------------------------

# The memory controllers keep a limit as a number of pages (``page_counter``), at most
# LONG_MAX / PAGE_SIZE of them: a byte count written is rounded DOWN to whole pages, a larger
# one is clamped, and the file shows pages x PAGE_SIZE (v2 shows the maximum as ``max``).
_MEMORY_LIMITS = {"memory.max": "v2", "memory.swap.max": "v2",
                  "memory.limit_in_bytes": "v1", "memory.memsw.limit_in_bytes": "v1"}
_LONG_MAX = (1 << 63) - 1


def stored_limit(name: str, written: str, page_size: int | None = None) -> str:
    """What the limit file ``name`` reads after ``written`` (a byte/process count, a v2
    ``"quota period"`` pair, or ``max``) was written to it, as the kernel keeps it.

    Memory files (v1 and v2, swap included) round down to whole pages and clamp at the page
    counter's maximum; ``pids.max``, ``cpu.max`` and the v1 CFS files keep what was written
    (microseconds in both families).  ``verify_limits`` compares a read-back with this, so
    a limit the kernel merely rounded is not mistaken for one that did not take.
    """
    family = _MEMORY_LIMITS.get(name)
    if family is None:
        return " ".join(written.split())
    page = page_size or os.sysconf("SC_PAGE_SIZE")
    most = _LONG_MAX // page
    pages = most if written in ("max", "-1") else min(int(written) // page, most)
    return "max" if family == "v2" and pages == most else str(pages * page)


def unlimited(name: str, shown: str, page_size: int | None = None) -> bool:
    """Whether the limit file ``name`` showing ``shown`` means no limit at all."""
    if shown.split()[:1] == ["max"] or (name == "cpu.cfs_quota_us" and shown == "-1"):
        return True
    if _MEMORY_LIMITS.get(name) == "v1":
        return shown == stored_limit(name, "max", page_size)
    return False


def _freezer(init_pid: int) -> tuple[str, str, str, str, Any]:
    """The container's cgroup directory and how to freeze it: v1 freezer, else cgroup2."""
    mounts = _mountpoints()
    groups = _process_cgroups(init_pid)
    if mounts.get("freezer") and "freezer" in groups:
        base = os.path.join(mounts["freezer"], groups["freezer"].lstrip("/"))
        state = os.path.join(base, "freezer.state")
        return base, state, "FROZEN", "THAWED", lambda: _read(state) == "FROZEN"
    if mounts.get("") and "" in groups:
        base = os.path.join(mounts[""], groups[""].lstrip("/"))
        events = os.path.join(base, "cgroup.events")
        return (base, os.path.join(base, "cgroup.freeze"), "1", "0",
                lambda: "frozen 1" in _read(events))
    raise OSError(errno.ENOTSUP, "no freezer for the container's cgroup")


def processes(init_pid: int) -> set[tuple[int, str]]:
    """Every process in the cgroup tree of ``init_pid`` (a container's init), as
    ``(pid, start time)``: an identity that pid reuse cannot fake."""
    base = _freezer(init_pid)[0]
    return {(pid, start) for pid in _tree_pids(base) if (start := _starttime(pid))}


def kill_newcomers(init_pid: int, spare: set[tuple[int, str]], timeout: float = 5.0) -> bool:
    """SIGKILL every process in the container's cgroup tree (that of ``init_pid``) that is not
    in ``spare`` (a ``processes()`` snapshot) nor init itself; True once none is left.

    The cgroup is frozen meanwhile (v1 freezer, else cgroup2 ``cgroup.freeze``), so nothing
    can fork its way out of the kill.  Only processes inside the container are touched, and
    only those started after the snapshot.  Session.close() uses it as a last resort, when
    the spawner (which normally kills its commands and their orphans) stopped answering or
    died: a command that left its group may then be anywhere in the container.
    """
    base, state, frozen, thawed, is_frozen = _freezer(init_pid)
    deadline = time.monotonic() + timeout

    def newcomers() -> list[int]:
        return [pid for pid in _tree_pids(base)
                if pid != init_pid and (pid, _starttime(pid)) not in spare]

    _write(state, frozen)
    try:
        while not is_frozen() and time.monotonic() < deadline:
            time.sleep(0.002)
        for pid in newcomers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        _write(state, thawed)
    while newcomers():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


@contextlib.contextmanager
def frozen(init_pid: int, timeout: float = 5.0) -> Iterator[None]:
    """Freeze every process of the container whose init is ``init_pid`` for the ``with`` block
    (v1 freezer, else cgroup2 ``cgroup.freeze``), thawed on every path.  Raises ``OSError``
    (no freezer, or not frozen within ``timeout``: a process in an uninterruptible sleep)."""
    _base, state, frozen_value, thawed, is_frozen = _freezer(init_pid)
    _write(state, frozen_value)
    try:
        deadline = time.monotonic() + timeout
        while not is_frozen():
            if time.monotonic() >= deadline:
                raise OSError(errno.ETIMEDOUT, "the container's processes did not freeze")
            time.sleep(0.001)
        yield
    finally:
        _write(state, thawed)


def _starttime(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""

def _tree_pids(base: str) -> list[int]:
    """Every pid in the cgroup ``base`` and its descendants (zombies are not listed)."""
    pids = []
    for directory, _, files in os.walk(base):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(directory, "cgroup.procs")) as f:
                    pids += [int(line) for line in f if line.strip()]
            except FileNotFoundError:
                pass
    return pids

def _process_cgroups(pid: int) -> dict[str, str]:
    """Like ``current()`` for another process, keyed like ``_mountpoints()``."""
    result = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            result[_key(controllers)] = path
    return result


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class _Home:
    """Where this process belongs while containers start around it.

    liblxc 5.0's daemonized ``start()`` moves the *whole calling process* into the new
    container's ``lxc.monitor.<name>`` cgroup.  With starts in several threads at once, a
    start that saved ``current()`` while another start had moved the process would "return"
    into that other container's monitor cgroup, and the process would stay there (and the
    cgroup could never be removed).  So the home is captured only when no start is in flight,
    and every start that ends moves the process back to it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight = 0
        self._home: dict[str, str] = {}

    def __enter__(self) -> None:
        with self._lock:
            if self._inflight == 0:
                self._home = current()
            self._inflight += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._inflight -= 1
            return_to(self._home)
        started()

    @contextlib.contextmanager
    def idle(self) -> Iterator[dict[str, str] | None]:
        """This process's cgroups (its home) when no start is in flight, else None; no start
        begins until the block ends."""
        with self._lock:
            yield current() if self._inflight == 0 else None


starting = _Home()
_primer = _Primer()


@record
class Events:
    """Counters of limit events in a container's cgroups, compared before/after a command."""

    oom_kills: int = 0
    pids_max: int = 0


def _counter(path: str | None, key: str) -> int:
    # Raw reads: a Session reads these around every command (a text-mode open costs ~4x).
    if path is None:
        return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        prefix = key.encode() + b" "
        for line in data.splitlines():
            if line.startswith(prefix):
                return int(line[len(prefix):])
    except (OSError, ValueError):
        pass
    return 0


def event_files(init_pid: int | None) -> tuple[str | None, str | None]:
    """The files holding a container's OOM-kill and refused-fork counters (None: unknown).
    They do not move while the container runs: a Session finds them once."""
    if not init_pid:
        return None, None
    memory = process_dir(init_pid, "memory")
    pids = process_dir(init_pid, "pids")
    v2 = controller_version("memory") == "v2"
    return (os.path.join(memory, "memory.events" if v2 else "memory.oom_control")
            if memory else None, os.path.join(pids, "pids.events") if pids else None)


def read_events(files: tuple[str | None, str | None]) -> Events:
    """The counters now, from ``event_files`` (0 for what is unknown)."""
    return Events(_counter(files[0], "oom_kill"), _counter(files[1], "max"))


def events(init_pid: int | None) -> Events:
    """OOM kills and refused forks so far in the container (0 when unknown)."""
    return read_events(event_files(init_pid))


# -- a cgroup of our own below a container's (a Pool's clones: ``sandbox.clone``) -------------

_CHILD_CONTROLLERS = ("memory", "pids", "cpu")


def parent_dirs(pid: int) -> dict[str, str]:
    """Per controller (memory, pids, cpu), the cgroup directory of process ``pid``: where
    cgroups of its own go (``child_dirs``; on v2 call it before ``delegate_v2`` moves the
    process one level down).  ``OSError`` when a controller is missing: a limit could not
    be enforced."""
    dirs: dict[str, str] = {}
    for controller in _CHILD_CONTROLLERS:
        base = process_dir(pid, controller)
        if base is None:
            raise OSError(errno.ENOENT, f"no {controller} cgroup for process {pid}")
        dirs[controller] = base
    return dirs


def child_dirs(parents: dict[str, str], name: str) -> dict[str, str]:
    """Per controller, the directory of a cgroup ``name`` below ``parents``
    (``parent_dirs``): one per v1 hierarchy (co-mounted controllers share it), the one
    unified directory on v2."""
    return {controller: os.path.join(base, name) for controller, base in parents.items()}


def _unique(dirs: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(dirs.values()))


def delegate_v2(parent_pid: int) -> None:
    """On cgroup v2, make process ``parent_pid``'s cgroup able to hold children with the
    memory, pids and cpu controllers: its processes move to an inner leaf (``init``; the
    kernel enables controllers only for a cgroup without processes of its own), then the
    controllers are enabled for its children.  Nothing to do on v1."""
    if controller_version("memory") != "v2":
        return
    base = process_dir(parent_pid, "memory")
    if base is None:
        raise OSError(errno.ENOENT, f"no cgroup for process {parent_pid}")
    leaf = os.path.join(base, "init")
    with contextlib.suppress(FileExistsError):
        os.mkdir(leaf)
    for pid in _read(os.path.join(base, "cgroup.procs")).split():
        with contextlib.suppress(ProcessLookupError):
            _write(os.path.join(leaf, "cgroup.procs"), pid)
    enabled = set(_read(os.path.join(base, "cgroup.subtree_control")).split())
    wanted = [c for c in _CHILD_CONTROLLERS if c not in enabled]
    if wanted:
        _write(os.path.join(base, "cgroup.subtree_control"),
               " ".join(f"+{c}" for c in wanted))


def make_child(dirs: dict[str, str], limits: list[tuple[str, str, str]]) -> None:
    """Create ``dirs`` (from ``child_dirs``) and write ``limits`` ((controller, file,
    value), in order) into each controller's directory.  On error what was made is removed
    again and the error raised."""
    made: list[str] = []
    try:
        for path in _unique(dirs):
            os.mkdir(path)
            made.append(path)
        for controller, name, value in limits:
            _write(os.path.join(dirs[controller], name), value)
    except BaseException:
        remove_child({str(i): p for i, p in enumerate(made)}, timeout=0)
        raise


def enter_child(dirs: dict[str, str], pid: int) -> None:
    """Move process ``pid`` (a host pid) into every one of ``dirs``."""
    for path in _unique(dirs):
        _write(os.path.join(path, "cgroup.procs"), str(pid))


def remove_child(dirs: dict[str, str], timeout: float = 5.0) -> bool:
    """Remove ``dirs``, waiting up to ``timeout`` seconds for the last exiting processes to
    leave them (rmdir says EBUSY meanwhile); True when all are gone.  Only called once every
    process in them has been killed."""
    deadline = time.monotonic() + timeout
    left = _unique(dirs)
    while True:
        for path in list(left):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                continue
            left.remove(path)
        if not left or time.monotonic() >= deadline:
            return not left
        time.sleep(0.002)
