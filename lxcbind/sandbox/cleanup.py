"""Nothing is left behind: fatal signals become exceptions, runs leave ownership records.

Three mechanisms, one per way a run can end:

* Normal end and errors: the sandbox's ``finally`` blocks (kill the workload, stop, destroy).
* SIGHUP/SIGTERM/SIGINT: ``FatalSignals`` turns the first one into a ``Terminated`` exception
  raised in the main thread, so the same ``finally`` blocks run; while cleanup is under way
  (``shielded()``) further signals are only recorded, so they cannot cut a teardown short.
  The CLI then exits 128+N.
* SIGKILL of the runner cannot be caught: every run first writes an ownership record (container
  name, lxcpath, runner pid and its start time, whether the container is to be destroyed).  A
  record whose runner is gone (pid dead, or reused by another process: the start time differs)
  is an orphan; ``collect_garbage()`` — ``lxcbind gc``, and cheaply at the start of every run —
  destroys what it owned.  Records of live runners, and containers kept on purpose
  (``destroyOnExit: false`` after a completed run, which leaves no record), are never touched.

Per-``containerId`` locks (``ContainerLock``) keep two runs from sharing or destroying each
other's container: the second waits for the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

from lxcbind._lite import as_dict, factory, record
from lxcbind.errors import SandboxError, Terminated
from lxcbind.state import STATE_ROOT, boot_id, process_start_time

FATAL_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class FatalSignals:
    """Turn SIGHUP/SIGTERM/SIGINT into ``Terminated`` in the main thread (context manager).

    The previous handlers are restored on exit.  Outside the main thread it does nothing
    (Python only lets the main thread install handlers).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._raised = False
        self._shield = 0
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame: object) -> None:
        # Raise once: a second Ctrl-C must not cut short the cleanup the first one started
        # (an attached child left unreaped would make the container's stop() hang).
        if self.received is not None:
            return
        self.received = signum
        if self._shield == 0:
            self._raised = True
            raise Terminated(signum)

    def __enter__(self) -> FatalSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in FATAL_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Inside, fatal signals are recorded but do not interrupt (for teardown)."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1

    def check(self) -> None:
        """Raise ``Terminated`` now if a signal arrived while shielded (and was not raised)."""
        if self.received is not None and self._shield == 0 and not self._raised:
            self._raised = True
            raise Terminated(self.received)


@record(frozen=False)
class OwnershipRecord:
    """What one run created, written before it creates anything."""

    container: str
    lxcpath: str
    runner_pid: int
    runner_start: int
    boot_id: str
    destroy: bool
    created: list[str] = factory(default_factory=list)

    @property
    def path(self) -> str:
        return os.path.join(STATE_ROOT, "owners", f"{self.container}.json")

    def save(self) -> None:
        path = self.path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path[:-len('.json')]}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(json.dumps(as_dict(self)))
        os.replace(tmp, path)

    def note(self, what: str) -> None:
        """Record one more created resource (written through at once)."""
        self.created.append(what)
        self.save()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    @classmethod
    def for_this_process(cls, container: str, lxcpath: str, destroy: bool) -> OwnershipRecord:
        pid = os.getpid()
        return cls(container, lxcpath, pid, process_start_time(pid) or 0, boot_id(), destroy)

    def runner_alive(self) -> bool:
        if self.boot_id != boot_id():
            return False
        return process_start_time(self.runner_pid) == self.runner_start


def _load_records() -> list[OwnershipRecord]:
    records: list[OwnershipRecord] = []
    try:   # os.scandir, not Path.glob: no pattern to compile on every run
        names = sorted(e.name for e in os.scandir(os.path.join(STATE_ROOT, "owners"))
                       if e.name.endswith(".json") and not e.name.startswith("."))
    except FileNotFoundError:
        return records
    for name in names:
        try:
            with open(os.path.join(STATE_ROOT, "owners", name), "rb") as f:
                records.append(OwnershipRecord(**json.loads(f.read())))
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours: leave it
    return records


def remove_stale_temporaries() -> list[str]:
    """Remove the ``<name>.tmp<pid>`` files that runners killed in the middle of
    ``OwnershipRecord.save`` left in the records' folder (the pid is no longer alive: a live
    writer's file is left alone, whoever holds its pid).  Returns the names removed; for
    ``lxcbind gc`` (a run's own cheap pass skips it)."""
    removed: list[str] = []
    try:
        entries = [e.name for e in os.scandir(os.path.join(STATE_ROOT, "owners"))]
    except FileNotFoundError:
        return removed
    for name in entries:
        _, dot, pid = name.rpartition(".tmp")
        if not dot or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue   # alive, someone else's
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(STATE_ROOT, "owners", name))
            removed.append(name)
    return removed


class ContainerLock:
    """An exclusive lock on one container name, held for a whole run (flock: released by the
    kernel if the holder dies, so a killed runner never blocks the next one).

    The holder removes the lock file before it lets go (one file per run would otherwise pile
    up: tens of thousands in one folder).  So a waiter may get the lock on a file that is no
    longer there, which locks nothing: it checks, after taking the lock, that the path still
    names the file it holds, and starts over if not."""

    def __init__(self, name: str, timeout: float = 60.0) -> None:
        self.name = name
        self.timeout = timeout
        self._fd = -1

    def __enter__(self) -> ContainerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def path(self) -> str:
        return os.path.join(STATE_ROOT, "locks", f"{self.name}.lock")

    def acquire(self, blocking: bool = True) -> bool:
        path = self.path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not blocking:
                    return False
                if time.monotonic() >= deadline:
                    raise SandboxError(
                        f"container {self.name!r} is in use by another lxcbind run; "
                        f"gave up waiting after {self.timeout:g}s") from None
                time.sleep(0.05)
                continue
            if _same_file(fd, path):
                self._fd = fd
                return True
            os.close(fd)   # its holder removed it meanwhile: lock the one the path names now

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)   # while held: see the class docstring
            os.close(self._fd)
            self._fd = -1


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def remove_stale_locks() -> int:
    """Remove the lock files nobody holds (the ones runs of older versions left, one per
    run); for ``lxcbind gc``.  Returns how many."""
    try:
        names = [e.name for e in os.scandir(os.path.join(STATE_ROOT, "locks"))
                 if e.name.endswith(".lock")]
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        lock = ContainerLock(name[:-len(".lock")])
        if lock.acquire(blocking=False):
            lock.release()
            removed += 1
    return removed


def collect_garbage(destroy: Callable[[str, str], None], *,
                    release: Callable[[OwnershipRecord], None] | None = None,
                    log: Callable[[str], None] = lambda m: None,
                    warn: Callable[[str], None] | None = None) -> list[str]:
    """Remove what runners that died without cleaning up (SIGKILL) left behind.

    ``destroy(name, lxcpath)`` removes one container with everything it owns; then
    ``release(record)`` undoes what else the record names (network state), for kept
    containers too.  A record is
    handled only under its container's lock, so a live run is never disturbed.  A leftover
    that cannot be removed is reported (one ``warn`` line, ``log`` without one) and skipped,
    its record kept for the next pass: one bad item never stops the others.  Returns the
    names of the containers destroyed.
    """
    removed = []
    for rec in _load_records():
        if rec.runner_alive():
            continue
        lock = ContainerLock(rec.container)
        if not lock.acquire(blocking=False):
            continue
        try:
            fresh = [r for r in _load_records() if r.container == rec.container]
            if not fresh or fresh[0].runner_alive():
                continue
            try:
                if rec.destroy:
                    log(f"gc: destroying {rec.container!r} left by dead runner pid "
                        f"{rec.runner_pid}")
                    destroy(rec.container, rec.lxcpath)
                    removed.append(rec.container)
                if release is not None:
                    release(fresh[0])
            except Exception as exc:  # noqa: BLE001 - reported, skipped, retried next time
                (warn or log)(f"gc: could not remove {rec.container!r} (skipped, its record "
                              f"kept): {_one_line(exc)}")
                continue
            rec.remove()
        finally:
            lock.release()
    return removed


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
