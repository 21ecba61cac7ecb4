"""asyncio: ``AsyncSession`` and ``AsyncPool``, driven by the event loop's own readers.

A command's pipes, its report socket and its pidfd are watched with ``loop.add_reader``: no
thread waits for a command, so cancelling the task that awaits ``run()`` (``asyncio.wait_for``,
``TaskGroup``, Ctrl-C in ``asyncio.run``) kills the command's process group from the host at
once, and nothing of it survives.  Output rules are the bridge's (``lxcbind.proc.bridge``): input
then EOF, output drained after exit until it stays quiet for 0.1 s (2 s at most: a background
process holding the pipe), timeout = SIGTERM to the group then SIGKILL after ``kill_grace``.

Setting a sandbox up and tearing it down are blocking liblxc calls of a few tens of
milliseconds; they run in the loop's default executor (a cancelled set-up is torn down as soon
as it finishes).  Starting a command waits for the spawner's START record (well under a
millisecond) on the loop's thread.

    async with lxcbind.AsyncSession.from_policy(policy) as s:
        r = await s.run("make test", timeout=60)
        async for stream, chunk in s.stream("pytest -x"):   # ("stdout" | "stderr", bytes)
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from lxcbind.proc.session import PIPE, SessionProcess
from lxcbind.result import CompletedRun, OutputBuffer
from lxcbind.sandbox.core import PolicyLike, Session

Command = str | Sequence[str]

_CHUNK = 65536
_DRAIN_QUIET = 0.1
_DRAIN_GRACE = 2.0
_EXIT_GRACE = 2.0


class _Watch:
    """One running command under the loop: its output goes to ``on_output`` as it comes."""

    def __init__(self, proc: SessionProcess, input: bytes | None, on_output: Any) -> None:
        self.proc = proc
        self.loop = asyncio.get_running_loop()
        self.on_output = on_output
        self.exited = asyncio.Event()
        self.output_event = asyncio.Event()
        self.open: dict[int, str] = {}
        for name in ("stdout", "stderr"):
            fd = getattr(proc, name)
            if fd is not None:
                os.set_blocking(fd, False)
                self.open[fd] = name
                self.loop.add_reader(fd, self._readable, fd)
        self._pending = memoryview(input or b"")
        self._stdin = proc.stdin
        if self._stdin is not None:
            os.set_blocking(self._stdin, False)
            if self._pending:
                self.loop.add_writer(self._stdin, self._writable)
            else:
                self._close_stdin()
        self.loop.add_reader(proc.fileno(), self._check_exit)
        self._pidfd = proc._pidfd if proc._pidfd >= 0 else -1
        if self._pidfd >= 0:
            self.loop.add_reader(self._pidfd, self._pidfd_readable)
        self._recheck: asyncio.TimerHandle | None = None

    # -- loop callbacks ----------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(fd)
            self.open.pop(fd, None)
        else:
            self.on_output(self.open[fd], data)
        self.output_event.set()

    def _writable(self) -> None:
        assert self._stdin is not None
        try:
            n = os.write(self._stdin, self._pending[:_CHUNK])
            self._pending = self._pending[n:]
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            self._pending = self._pending[:0]
        if not self._pending:
            self.loop.remove_writer(self._stdin)
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None and self.proc.stdin is not None:
            os.close(self.proc.stdin)
            self.proc.stdin = None
        self._stdin = None

    def _check_exit(self) -> None:
        try:
            done = self.proc.poll() is not None
        except Exception:  # noqa: BLE001 - SpawnerDied: the command is gone for us
            done = True
        if done:
            self.loop.remove_reader(self.proc.fileno())
            self.exited.set()

    def _pidfd_readable(self) -> None:
        # The command died; its status comes from the spawner, which has _EXIT_GRACE s.
        self.loop.remove_reader(self._pidfd)
        self._pidfd = -1
        self._recheck = self.loop.call_later(_EXIT_GRACE + 0.01, self._check_exit)
        self._check_exit()

    # -- control -----------------------------------------------------------------------------

    def stop_watching(self) -> None:
        for fd in list(self.open):
            self.loop.remove_reader(fd)
        self.open.clear()
        if self._stdin is not None:
            self.loop.remove_writer(self._stdin)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.proc.fileno())
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
        if self._recheck is not None:
            self._recheck.cancel()

    async def finish(self, timeout: float | None, kill_grace: float) -> bool:
        """Wait for exit (enforcing ``timeout``), then drain; returns whether it timed out."""
        timed_out = False
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            timed_out = True
            self.proc.send_signal(signal.SIGTERM, group=True)
            try:
                await asyncio.wait_for(self.exited.wait(), kill_grace)
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL, group=True)
                await self.exited.wait()
        if timed_out:
            self.proc.send_signal(signal.SIGKILL, group=True)  # nothing of its group survives
        deadline = time.monotonic() + _DRAIN_GRACE
        while self.open and time.monotonic() < deadline:
            self.output_event.clear()
            try:
                await asyncio.wait_for(self.output_event.wait(), _DRAIN_QUIET)
            except TimeoutError:
                break  # quiet: a background process holds the pipe
        return timed_out


class AsyncSession:
    """A ``Session`` for asyncio code; see the module docstring.

    ``AsyncSession.from_policy(policy)`` returns an unstarted session: ``async with`` (or
    ``await s.start()``) sets it up, ``await s.close()`` tears it down.  ``AsyncSession(session)``
    wraps a started ``Session`` (the caller keeps owning it).
    """

    def __init__(self, session: Session | None = None, *, policy: PolicyLike | None = None
                 ) -> None:
        if session is not None and not isinstance(session, Session):
            raise TypeError("AsyncSession() takes a Session; use AsyncSession.from_policy("
                            "policy) for a new sandbox")
        self.session = session
        self._policy = policy
        self._owned = session is None

    @classmethod
    def from_policy(cls, policy: PolicyLike) -> AsyncSession:
        return cls(policy=policy)

    async def start(self) -> AsyncSession:
        if self.session is None:
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(None, Session.from_policy, self._policy)
            try:
                self.session = await asyncio.shield(task)
            except asyncio.CancelledError:
                # The set-up finishes in its thread; tear it down then, not leak it.
                task.add_done_callback(lambda f: f.exception() is None and f.result().close())
                raise
        return self

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None and self._owned:
            await asyncio.get_running_loop().run_in_executor(None, session.close)

    async def __aenter__(self) -> AsyncSession:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _started(self) -> Session:
        if self.session is None:
            raise RuntimeError("the AsyncSession is not started: use `async with` or "
                               "`await session.start()`")
        return self.session

    async def run(self, command: Command, *, input: bytes | str | None = None,
                  timeout: float | None = None, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, max_output: int | None = None,
                  check: bool = False, kill_grace: float = 2.0) -> CompletedRun:
        """Run ``command`` and capture it, like ``Session.run``; cancelling the awaiting task
        kills the command (its whole process group)."""
        out, err = OutputBuffer(max_output), OutputBuffer(max_output)
        sinks = {"stdout": out, "stderr": err}
        start = time.monotonic()
        proc, watch = self._spawn(command, input, env, cwd,
                                  lambda name, data: sinks[name].write(data))
        try:
            timed_out = await watch.finish(timeout, kill_grace)
        finally:
            watch.stop_watching()
            proc.close()  # kills the group if it still runs (cancellation)
        result = CompletedRun.captured(
            proc.args, proc.returncode if proc.returncode is not None else -signal.SIGKILL,
            out, err, timed_out=timed_out, started=start, exec_error=proc.exec_error,
            timeout=timeout)
        if check:
            result.check_returncode()
        return result

    async def stream(self, command: Command, *, input: bytes | str | None = None,
                     timeout: float | None = None, env: Mapping[str, str] | None = None,
                     cwd: str | None = None, kill_grace: float = 2.0
                     ) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``("stdout" | "stderr", chunk)`` as the command writes; a timeout ends it
        (SIGTERM, then SIGKILL), and leaving the loop early kills it."""
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        proc, watch = self._spawn(command, input, env, cwd,
                                  lambda name, data: queue.put_nowait((name, data)))
        finisher = asyncio.ensure_future(watch.finish(timeout, kill_grace))
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, finisher},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not queue.empty():
                    yield queue.get_nowait()
                break
        finally:
            finisher.cancel()
            watch.stop_watching()
            proc.close()

    def _spawn(self, command: Command, input: bytes | str | None,
               env: Mapping[str, str] | None, cwd: str | None, on_output: Any
               ) -> tuple[SessionProcess, _Watch]:
        if isinstance(input, str):
            input = input.encode()
        proc = self._started().spawn(command, stdin=PIPE if input else None, env=env, cwd=cwd)
        try:
            return proc, _Watch(proc, input, on_output)
        except BaseException:
            proc.close()
            raise


class AsyncPool:
    """``Pool`` for asyncio: ``await pool.run(cmd)`` runs in a fresh container; commands run
    under the loop (cancellation kills them), waiting for a ready container happens in the
    loop's executor."""

    def __init__(self, policy: PolicyLike, size: int = 4, **kwargs: Any) -> None:
        from lxcbind.sandbox.pool import Pool

        self.pool = Pool(policy, size, **kwargs)

    async def run(self, command: Command, **kwargs: Any) -> CompletedRun:
        """``Pool.run`` for asyncio (same keywords); cancelling it kills the command."""
        loop = asyncio.get_running_loop()
        take = loop.run_in_executor(None, self.pool._take)
        try:
            session = await asyncio.shield(take)
        except asyncio.CancelledError:
            # The container arrives later: hand it back to be destroyed, never lose it.
            take.add_done_callback(
                lambda f: f.exception() is None and self.pool._give_back(f.result()))
            raise
        try:
            return await AsyncSession(session).run(command, **kwargs)
        finally:
            self.pool._give_back(session)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.pool.close)

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
