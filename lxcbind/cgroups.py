"""The few cgroup facts the container layer needs: where this process is, how to go back,
and a container-wide kill that spares init (a Session's last resort).

liblxc 5.0's daemonized ``start()`` moves the *calling* process into the container's monitor
cgroup (``lxc.monitor.<name>``), where it would stay, and which then cannot be removed when
the container stops.  ``Container.start`` saves ``current()`` and calls ``return_to``.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import time

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
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) < 3 or fields[0] not in ("cgroup", "cgroup2"):
                continue
            mountpoint = left.split()[4]
            if fields[0] == "cgroup2":
                mounts.setdefault("", mountpoint)
                continue
            options = [o for o in fields[2].split(",") if o not in ("rw", "ro") and "=" not in o
                       or o.startswith("name=")]
            mounts.setdefault(",".join(sorted(options)), mountpoint)
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


def remove_monitor_cgroups(name: str) -> None:
    """Remove the empty ``lxc.monitor.<name>`` cgroups a stopped container left behind."""
    for mountpoint in set(_mountpoints().values()):
        path = os.path.join(mountpoint, f"lxc.monitor.{name}")
        try:
            os.rmdir(path)
        except OSError:
            pass  # absent, or still in use by a live monitor


def controller_version(controller: str) -> str | None:
    """``"v1"`` when ``controller`` has a legacy hierarchy here, ``"v2"`` when the unified
    hierarchy offers it, else None.  liblxc silently ignores ``lxc.cgroup2.*`` items on a
    legacy hierarchy (and ``lxc.cgroup.*`` on a unified one), so callers pick by this."""
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

def kill_all_but(init_pid: int, timeout: float = 5.0) -> bool:
    """SIGKILL every process in the cgroup of ``init_pid`` (a container's init) and below,
    except ``init_pid`` itself; True once only init is left (within ``timeout``).

    The cgroup is frozen meanwhile (v1 freezer, else cgroup2 ``cgroup.freeze``), so nothing
    can fork its way out of the kill.  Only processes inside the container's cgroup are
    touched: the container's own limits and tree are what bound it.  Session.close() uses it
    as a last resort, when the spawner (which normally kills its commands and their orphans)
    stopped answering or died, so a command that left its group may be anywhere in there.
    """
    mounts = _mountpoints()
    groups = _process_cgroups(init_pid)
    if mounts.get("freezer") and "freezer" in groups:
        base = os.path.join(mounts["freezer"], groups["freezer"].lstrip("/"))
        state, frozen, thawed = os.path.join(base, "freezer.state"), "FROZEN", "THAWED"
        is_frozen = lambda: _read(state) == "FROZEN"  # noqa: E731
    elif mounts.get("") and "" in groups:
        base = os.path.join(mounts[""], groups[""].lstrip("/"))
        state, frozen, thawed = os.path.join(base, "cgroup.freeze"), "1", "0"
        events = os.path.join(base, "cgroup.events")
        is_frozen = lambda: "frozen 1" in _read(events)  # noqa: E731
    else:
        raise OSError(errno.ENOTSUP, "no freezer for the container's cgroup")
    deadline = time.monotonic() + timeout
    _write(state, frozen)
    try:
        while not is_frozen() and time.monotonic() < deadline:
            time.sleep(0.002)
        for pid in _tree_pids(base):
            if pid != init_pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        _write(state, thawed)
    while any(pid != init_pid for pid in _tree_pids(base)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


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
