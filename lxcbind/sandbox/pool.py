"""``Pool``: every command in a fresh container, at the speed of a warm one.

A pool keeps ``size`` containers of one policy started, each with its session spawner ready
(``Session.from_policy``: the same sandbox as a one-shot run of that policy: isolation,
limits, filesystem and network policy, ownership record).  ``run`` takes a ready container,
runs one command in it, and hands the container to a reaper thread that destroys it while a
starter thread sets up its replacement.  No container is ever used twice, so a
file written or a process left running by one command is gone for the next.

Threads: one reaper, and ``starters`` threads that keep the ready queue full (liblxc's calls
release the GIL, so setup overlaps with commands).  A starter that fails stores its error, and
the next ``run`` that finds the pool empty raises it (a policy that cannot set up fails fast
instead of hanging).  ``close`` stops the starters, destroys the ready containers and waits for
the reaper; a SIGKILLed owner leaves records that ``lxcbind gc`` reaps like any other.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Unpack

from lxcbind.command import Command, RunKeywords, check_call, check_keywords
from lxcbind.errors import LxcbindError
from lxcbind.lxc import cgroups
from lxcbind.result import CompletedRun, MaxOutput
from lxcbind.sandbox import imagefs
from lxcbind.sandbox.core import PolicyLike, Session, _warning, as_policy

if TYPE_CHECKING:
    from lxcbind.sandbox.template import Template


class PoolRunKeywords(RunKeywords, total=False):
    """``Pool.run``'s keywords beyond the common ones (for ``Pool.map``)."""

    tty: bool


class PoolClosed(LxcbindError):
    """The pool was closed: it runs no more commands."""


class Pool:
    """``size`` pre-started fresh containers of ``policy``; see the module docstring.

    Use as a context manager (or call ``close``).  Thread-safe: ``run`` may be called from
    many threads at once (``map`` does).  ``starters`` bounds how many containers are being set
    up at a time (default: 2, the setup is CPU-bound).
    """

    def __init__(self, policy: PolicyLike, size: int = 4, *, starters: int = 2,
                 start_timeout: float = 60.0, image: object = None,
                 clones: bool = False) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"Pool size must be a positive int, got {size!r}")
        if not isinstance(clones, bool):
            raise TypeError(f"Pool clones must be a bool, got {clones!r}")
        # Commands come from run().  An image is resolved (imported) once, here: every
        # container then names it by id.
        self.policy = imagefs.with_image(as_policy(policy, command_required=False), image)
        if self.policy.lxc.rootfs.kind == "image":
            self.policy = imagefs.with_image(self.policy, imagefs.resolve(
                self.policy.lxc.rootfs)[0])
        self.size = size
        self._start_timeout = start_timeout
        # clones=True: one warm template container, and a light clone of it per command
        # (``sandbox.template``, ``sandbox.clone``); ValueError naming the policy field
        # when clones cannot serve this policy.
        self._template: Template | None = None
        if clones:
            from lxcbind.sandbox.template import Template, refusal

            why = refusal(self.policy)
            if why is not None:
                raise ValueError(f"Pool(clones=True): {why[0]}: {why[1]}")
            self._template = Template(self.policy)
        self._ready: queue.Queue[Session | None] = queue.Queue()  # None: a starter failed
        self._used: queue.Queue[Session | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._wanted = 0            # containers asked of the starters, not yet taken
        self._error: BaseException | None = None
        self._starters = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(starters, size)), thread_name_prefix="lxcbind-pool-start")
        self._reaper = threading.Thread(target=self._reap, name="lxcbind-pool-reap",
                                        daemon=True)
        self._reaper.start()
        for _ in range(size):
            self._order_one()

    # -- filling and emptying ----------------------------------------------------------------

    def _order_one(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._wanted += 1
        self._starters.submit(self._start_one)

    def _start_one(self) -> None:
        try:
            if self._closed:
                return
            if self._template is not None:
                session = self._clone()
            else:
                # A replacement is set up off every caller's path: not worth the primer's CPU.
                with cgroups.unprimed():
                    session = Session.from_policy(self.policy)
        except BaseException as exc:  # handed to the next run() that waits
            with self._lock:
                self._wanted -= 1
                self._error = exc
            self._ready.put_nowait(None)  # wakes a waiting run()
            return
        try:
            # The first command of a spawner pays for first touches (~1 ms): pay it here, in
            # the background, with a command that leaves nothing behind.  (Not for a clone:
            # its setup is the cost being saved.)
            if self._template is None:
                session.run(["/bin/true"], timeout=10)
        except Exception:  # noqa: BLE001 - a broken session is not handed out
            pass
        with self._lock:
            self._error = None
            closed = self._closed
        if closed:
            self._used.put(session)
        else:
            self._ready.put(session)

    def _clone(self) -> Session:
        from lxcbind.sandbox.clone import Clone

        assert self._template is not None
        return Clone(self._template, start_timeout=min(self._start_timeout, 10.0)).open()

    def _reap(self) -> None:
        while True:
            session = self._used.get()
            if session is None:
                return
            try:
                session.close()  # stops and destroys the container (Sandbox teardown)
            except Exception as exc:  # noqa: BLE001 - the record stays for gc; keep reaping
                _warning(f"Pool: tearing a used container down failed (left for "
                         f"`lxcbind gc` once this process ends): {exc}")

    def _take(self) -> Session:
        while True:
            with self._lock:
                if self._closed:
                    raise PoolClosed("the pool is closed")
            try:
                session = self._ready.get(timeout=self._start_timeout)
            except queue.Empty:
                raise LxcbindError(f"no container became ready within "
                                   f"{self._start_timeout:g}s") from None
            if session is None:  # a starter failed
                with self._lock:
                    error = self._error
                self._order_one()
                if error is not None:
                    raise error
                continue
            with self._lock:
                self._wanted -= 1
            if not session.alive:
                self._used.put(session)
                self._order_one()
                continue
            return session

    @property
    def ready(self) -> int:
        """Containers started and waiting for a command (approximate: other threads move it)."""
        return self._ready.qsize()

    @property
    def idle(self) -> bool:
        """Full and quiet: every container is ready, none is being set up or torn down."""
        return self._ready.qsize() >= self.size and self._used.qsize() == 0 and \
            self._wanted == self._ready.qsize()

    # -- commands ----------------------------------------------------------------------------

    def run(self, command: Command, *, input: bytes | str | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            cwd: str | None = None, max_output: MaxOutput = None, text: bool = False,
            encoding: str | None = None, errors: str | None = None,
            check: bool = False, tty: bool = False) -> CompletedRun:
        """Run ``command`` (a str runs as ``/bin/sh -c``) in a fresh container and return its
        result; the container is destroyed afterwards.  Keywords as ``Session.run`` (``tty``:
        a pty of the container's devpts, output merged in ``stdout``)."""
        check_call(command, env=env, cwd=cwd, input=input, timeout=timeout,
                   max_output=max_output, text=text, encoding=encoding, errors=errors,
                   call="Pool.run")   # before a container is taken
        session = self._take()
        try:
            return session.run(command, input=input, timeout=timeout, env=env, cwd=cwd,
                               max_output=max_output, text=text, encoding=encoding,
                               errors=errors, check=check, tty=tty)
        finally:
            self._give_back(session)

    def _give_back(self, session: Session) -> None:
        """A used container goes to the reaper, and its replacement is ordered: after the
        command, not during it (the set-up is CPU-bound Python and would compete for the
        interpreter with the command).  After ``close`` (the reaper is gone) it is torn
        down here."""
        with self._lock:
            closed = self._closed
        if closed:
            try:
                session.close()
            except Exception as exc:  # noqa: BLE001 - the record stays for gc
                _warning(f"Pool: tearing a used container down failed (left for "
                         f"`lxcbind gc` once this process ends): {exc}")
            return
        self._used.put(session)
        self._order_one()

    def map(self, commands: Iterable[Command], *, workers: int | None = None,
            **kwargs: Unpack[PoolRunKeywords]) -> list[CompletedRun]:
        """``run`` every command (at most ``workers`` at a time, default the pool size) with
        ``run``'s keywords; results in input order.  The first exception is raised after all
        have finished."""
        check_keywords(kwargs, "Pool.map", PoolRunKeywords)
        items = list(commands)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers or self.size) as ex:
            futures = [ex.submit(self.run, command, **kwargs) for command in items]
            return [f.result() for f in futures]

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy every container of the pool (ready, starting or used); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._starters.shutdown(wait=True, cancel_futures=True)
        while True:
            try:
                session = self._ready.get_nowait()
            except queue.Empty:
                break
            if session is not None:
                self._used.put(session)
        self._used.put(None)
        self._reaper.join()
        if self._template is not None:
            self._template.close()   # stops it, and every clone it still has

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
