"""Host state shared by concurrent runs: one flock per file family, JSON written atomically,
and the identity of a runner process (pid + start time + boot id) that outlives a reboot check.

Everything lxcbind keeps on the host lives under ``STATE_DIR`` (``/var/lib/lxcbind``, or
``$LXCBIND_STATE_DIR``).  A reader that needs a consistent view takes the family's lock;
writers always do, and replace the file with ``rename()`` so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("LXCBIND_STATE_DIR", "/var/lib/lxcbind"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600) for the ``with`` block; the kernel
    drops it if the holder dies, so a killed runner never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_json(path: Path, default: Any) -> Any:
    """The JSON document at ``path``, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))   # no indent: the C encoder
    os.replace(tmp, path)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot): with the pid, names one process.

    None for a process that is gone, a zombie included: a SIGKILLed runner whose parent has not
    reaped it yet (a Ray raylet restarts the actor before it reaps the old worker) holds no
    lock and can do nothing, so what it left is already garbage."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[1].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


_boot_id = ""                            # read once: it cannot change while a process runs
_identity: dict[str, Any] | None = None   # this process's, for its pid (a fork has another)


def boot_id() -> str:
    global _boot_id
    if not _boot_id:
        try:
            _boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""
    return _boot_id


def runner_identity() -> dict[str, Any]:
    """Who this process is, in a form ``runner_alive`` can check later (from any process).
    Read once per process (every fresh container's records ask several times): a pid and its
    start time do not change while the process lives."""
    global _identity
    pid = os.getpid()
    known = _identity
    if known is None or known["runner_pid"] != pid:
        known = _identity = {"runner_pid": pid, "runner_start": process_start_time(pid),
                             "boot_id": boot_id()}
    return dict(known)


def runner_alive(identity: dict[str, Any]) -> bool:
    """Whether the runner named by ``identity`` still runs: same boot, pid alive, same start
    time (a recycled pid is another process)."""
    if identity.get("boot_id") and identity.get("boot_id") != boot_id():
        return False
    pid = identity.get("runner_pid")
    return isinstance(pid, int) and pid > 0 and \
        process_start_time(pid) == identity.get("runner_start")
