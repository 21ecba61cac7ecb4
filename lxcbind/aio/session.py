"""``AsyncSession`` and ``AsyncPool``: commands under the event loop (see ``lxcbind.aio``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Unpack

from lxcbind.aio.shell import AsyncShell
from lxcbind.command import (
    CallOptions,
    Command,
    RunKeywords,
    check_call,
    check_grace,
    check_keywords,
)
from lxcbind.errors import FileTransferError
from lxcbind.proc import files as _files
from lxcbind.proc import users as _users
from lxcbind.proc.spawned import EXIT_GRACE as _EXIT_GRACE
from lxcbind.proc.spawned import PIPE, SessionProcess, Stdio
from lxcbind.proc.streams import CHUNK, OutputCallback, Tee, read_chunk
from lxcbind.proc.streams import DRAIN_GRACE as _DRAIN_GRACE
from lxcbind.proc.streams import DRAIN_QUIET as _DRAIN_QUIET
from lxcbind.result import CompletedRun, MaxOutput, OutputBuffer
from lxcbind.sandbox.core import PolicyLike, Session
from lxcbind.sandbox.pool import Pool


class _Watch:
    """One running command under the loop: its output goes to ``on_output`` as it comes."""

    def __init__(self, proc: SessionProcess, input: bytes | None,
                 on_output: Callable[[str, bytes], object]) -> None:
        self.proc = proc
        self.loop = asyncio.get_running_loop()
        self.on_output = on_output
        self.exited = asyncio.Event()
        self.output_event = asyncio.Event()
        self.open: dict[int, str] = {}
        for name in ("stdout", "stderr"):
            fd = proc._pipes.get(name)
            if fd is not None:
                os.set_blocking(fd, False)
                self.open[fd] = name
                self.loop.add_reader(fd, self._readable, fd)
        self._pending = memoryview(input or b"")
        self._stdin = proc._take_pipe("stdin")   # ours now: closed at the end of input
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
        data = read_chunk(fd)
        if data is None:
            return
        if not data:
            self.loop.remove_reader(fd)
            self.open.pop(fd, None)
        else:
            self.on_output(self.open[fd], data)
        self.output_event.set()

    def _writable(self) -> None:
        assert self._stdin is not None
        try:
            n = os.write(self._stdin, self._pending[:CHUNK])
            self._pending = self._pending[n:]
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            self._pending = self._pending[:0]
        if not self._pending:
            self.loop.remove_writer(self._stdin)
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            os.close(self._stdin)
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
            self._close_stdin()
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

    def __init__(self, session: Session | None = None, *, policy: PolicyLike | None = None,
                 image: object = None) -> None:
        if session is not None and not isinstance(session, Session):
            raise TypeError("AsyncSession() takes a Session; use AsyncSession.from_policy("
                            "policy) for a new sandbox")
        self.session = session
        self._policy = policy
        self._image = image
        self._owned = session is None

    @classmethod
    def from_policy(cls, policy: PolicyLike, *, image: object = None) -> AsyncSession:
        """An unstarted session for ``policy`` (``image``: its root filesystem, as for
        ``Session.from_policy``)."""
        return cls(policy=policy, image=image)

    async def start(self) -> AsyncSession:
        if self.session is None:
            if self._policy is None:
                raise RuntimeError("this AsyncSession has no policy to start from")
            loop = asyncio.get_running_loop()
            task = loop.run_in_executor(None, functools.partial(
                Session.from_policy, self._policy, image=self._image))
            try:
                self.session = await asyncio.shield(task)
            except asyncio.CancelledError:
                # The set-up finishes in its thread; tear it down then, not leak it.
                task.add_done_callback(_close_when_done)
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
                  cwd: str | None = None, max_output: MaxOutput = None,
                  text: bool = False, encoding: str | None = None, errors: str | None = None,
                  check: bool = False, kill_grace: float = 2.0,
                  on_output: OutputCallback | None = None,
                  user: str | int | _users.User | None = None) -> CompletedRun:
        """Run ``command`` and capture it, like ``Session.run`` (same keywords and result);
        cancelling the awaiting task kills the command (its whole process group).  ``user``:
        another user of the container, resolved from its account files read under the loop."""
        opts = check_call(command, env=env, cwd=cwd, input=input, timeout=timeout,
                          max_output=max_output, text=text, encoding=encoding, errors=errors,
                          call="AsyncSession.run")
        kill_grace = check_grace(kill_grace, "AsyncSession.run")
        return await self._run(opts, check=check, kill_grace=kill_grace, on_output=on_output,
                               user=await self._who(user))

    async def _who(self, user: str | int | _users.User | None) -> _users.User | None:
        """``user`` resolved (a ``User`` resolved earlier passes as it is)."""
        if isinstance(user, _users.User):
            return user
        spec = _users.check_user(user, "AsyncSession.run")
        return None if spec is None else await self._user(spec)

    async def _user(self, spec: str) -> _users.User | None:
        call = "AsyncSession.run"
        files = []
        for path in ("/etc/passwd", "/etc/group"):
            try:
                files.append(await self.get(path, timeout=10, max_size=_users.MAX_ACCOUNT_FILE))
            except FileNotFoundError:
                files.append(b"")
            except FileTransferError as exc:
                raise ValueError(f"{call}(): user: cannot read the container's {path}: "
                                 f"{exc.strerror}") from None
        return self._started()._user_from(spec, files[0], files[1], call)

    async def _run(self, opts: CallOptions, *, check: bool = False, kill_grace: float = 2.0,
                   on_output: OutputCallback | None = None,
                   user: _users.User | None = None) -> CompletedRun:
        session = self._started()
        timeout = opts.timeout if opts.timeout is not None else session.timeout
        out, err = OutputBuffer(opts.max_output), OutputBuffer(opts.max_output)
        sinks: dict[str, Tee | OutputBuffer] = {"stdout": out, "stderr": err}
        if on_output is not None:
            sinks = {name: Tee(buf, name, on_output, opts.encoding, opts.errors)
                     for name, buf in (("stdout", out), ("stderr", err))}
        start = time.monotonic()
        before = session.limit_events()
        proc, watch = self._spawn(opts, lambda name, data: sinks[name].write(data), user)
        try:
            timed_out = await watch.finish(timeout, kill_grace)
        finally:
            watch.stop_watching()
            proc.close()  # kills the group if it still runs (cancellation)
        for sink in sinks.values():
            if isinstance(sink, Tee):
                sink.finish()
        result = CompletedRun.captured(
            proc.args, proc.returncode if proc.returncode is not None else -signal.SIGKILL,
            out, err, timed_out=timed_out, started=start, exec_error=proc.exec_error,
            timeout=timeout)
        return session.with_limit_events(result, before).finished(opts.encoding, opts.errors,
                                                                  check)

    async def stream(self, command: Command, *, input: bytes | str | None = None,
                     timeout: float | None = None, env: Mapping[str, str] | None = None,
                     cwd: str | None = None, kill_grace: float = 2.0
                     ) -> AsyncIterator[tuple[str, bytes]]:
        """Yield ``("stdout" | "stderr", chunk)`` as the command writes; a timeout ends it
        (SIGTERM, then SIGKILL), and leaving the loop early kills it."""
        opts = check_call(command, env=env, cwd=cwd, input=input, timeout=timeout,
                          call="AsyncSession.stream")
        kill_grace = check_grace(kill_grace, "AsyncSession.stream")
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        proc, watch = self._spawn(opts, lambda name, data: queue.put_nowait((name, data)))
        finisher = asyncio.ensure_future(watch.finish(opts.timeout, kill_grace))
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

    async def put(self, path: str | os.PathLike[str], data: bytes | str, *,
                  parents: bool = False, timeout: float | None = 60.0,
                  user: str | int | _users.User | None = None) -> None:
        """``Session.put`` under the loop: the same command through the same spawner, and
        cancelling the awaiting task kills it (a file cut short may be left).  ``user``: as
        that user of the container (``run``'s ``user``)."""
        session = self._started()
        opts, where = _files.put_call(path, data, cwd=session.cwd, parents=bool(parents),
                                      timeout=timeout, call="AsyncSession.put")
        who = await self._who(user)
        _files.put_done(await self._run(opts, user=who), where, opts.timeout)

    async def get(self, path: str | os.PathLike[str], *, timeout: float | None = 60.0,
                  max_size: int = 256 << 20,
                  user: str | int | _users.User | None = None) -> bytes:
        """``Session.get`` under the loop (cancellable like ``run``; ``user`` as ``put``)."""
        session = self._started()
        opts, where = _files.get_call(path, cwd=session.cwd, max_size=max_size,
                                      timeout=timeout, call="AsyncSession.get")
        who = await self._who(user)
        return _files.get_done(await self._run(opts, user=who), where, max_size, opts.timeout)

    def _spawn(self, opts: CallOptions, on_output: Callable[[str, bytes], object],
               user: _users.User | None = None) -> tuple[SessionProcess, _Watch]:
        proc = self._started()._spawn(opts, Stdio(PIPE if opts.input else None), user=user)
        try:
            return proc, _Watch(proc, opts.input, on_output)
        except BaseException:
            proc.close()
            raise

    async def shell(self, *, program: str = "/bin/sh", env: Mapping[str, str] | None = None,
                    cwd: str | None = None, restart: bool = False,
                    user: str | int | _users.User | None = None) -> AsyncShell:
        """A persistent shell (``Session.shell``'s arguments) driven by the loop; see
        ``AsyncShell``.  Starting it takes a few milliseconds in the loop's executor."""
        session = self._started()
        who = await self._who(user)
        loop = asyncio.get_running_loop()
        shell = await loop.run_in_executor(
            None, lambda: session.shell(program=program, env=env, cwd=cwd, restart=restart,
                                        user=who))
        return AsyncShell(shell)


def _close_when_done(task: asyncio.Future[Session]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


class AsyncPool:
    """``Pool`` for asyncio: ``await pool.run(cmd)`` runs in a fresh container; commands run
    under the loop (cancellation kills them), waiting for a ready container happens in the
    loop's executor."""

    def __init__(self, policy: PolicyLike, size: int = 4, *, starters: int = 2,
                 start_timeout: float = 60.0, image: object = None,
                 clones: bool = False) -> None:
        self.pool = Pool(policy, size, starters=starters, start_timeout=start_timeout,
                         image=image, clones=clones)

    async def run(self, command: Command, **keywords: Unpack[RunKeywords]) -> CompletedRun:
        """``Pool.run`` for asyncio (``run``'s keywords); cancelling it kills the command."""
        check_keywords(keywords, "AsyncPool.run")
        check_call(command, call="AsyncPool.run")
        loop = asyncio.get_running_loop()
        take = loop.run_in_executor(None, self.pool._take)
        try:
            session = await asyncio.shield(take)
        except asyncio.CancelledError:
            # The container arrives later: hand it back to be destroyed, never lose it.
            take.add_done_callback(self._give_back_when_done)
            raise
        try:
            return await AsyncSession(session).run(command, **keywords)
        finally:
            self.pool._give_back(session)

    def _give_back_when_done(self, task: asyncio.Future[Session]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.pool._give_back(task.result())

    async def map(self, commands: Iterable[Command], *, workers: int | None = None,
                  **keywords: Unpack[RunKeywords]) -> list[CompletedRun]:
        """``run`` every command, at most ``workers`` at a time (default: the pool size);
        results in input order.  The first exception propagates (the others are cancelled,
        which kills their commands)."""
        check_keywords(keywords, "AsyncPool.map")
        items = list(commands)
        for item in items:
            check_call(item, call="AsyncPool.map")
        limit = asyncio.Semaphore(workers or self.pool.size)

        async def one(command: Command) -> CompletedRun:
            async with limit:
                return await self.run(command, **keywords)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(c)) for c in items]
        return [t.result() for t in tasks]

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.pool.close)

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
