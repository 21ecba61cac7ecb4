"""``AsyncShell``: the persistent shell (``lxcbind.proc.shell``) driven by the event loop's
readers (see ``lxcbind.aio``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

from lxcbind._lite import replace as dataclass_replace
from lxcbind.command import CallOptions, check_grace
from lxcbind.errors import ShellDied
from lxcbind.proc.shell import Frame, Shell, check_shell_call
from lxcbind.proc.spawned import EXIT_GRACE as _EXIT_GRACE
from lxcbind.proc.streams import CHUNK, read_chunk
from lxcbind.result import CompletedRun, MaxOutput, OutputBuffer

__all__ = ["AsyncShell"]



class _ShellCall:
    """One framed exchange of an ``AsyncShell`` on the loop's readers (the bridge's job for
    the sync ``Shell``): the frame goes to the shell's stdin, the command's stdout/stderr into
    the buffers, the shell's chatter to its tail, status lines to the frame."""

    def __init__(self, shell: Shell, frame: Frame, out: OutputBuffer, err: OutputBuffer
                 ) -> None:
        self.shell, self.frame = shell, frame
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()      # the status line came
        self.exited = asyncio.Event()    # the shell process died
        self._pending = bytearray(frame.script)
        self._stdin = shell.stdin_fd
        self._readers: dict[int, Callable[[bytes], object]] = {
            shell._out: out.write, shell._err: err.write, shell._chat: shell._chatter.write,
            shell._status: self._parse}
        for fd in (*self._readers, self._stdin):
            if fd is not None:
                os.set_blocking(fd, False)
        for fd in self._readers:
            self.loop.add_reader(fd, self._read, fd)
        self._writing = False
        self._pidfd = shell.proc._pidfd
        if self._pidfd >= 0:
            self.loop.add_reader(self._pidfd, self._died)
        else:
            self.exited.set()
        if self._stdin is None:
            self.exited.set()
        else:
            self._want_write()

    def _parse(self, data: bytes) -> None:
        self.shell._buf = self.frame.parse(self.shell._buf, data)
        if self.frame.over:
            self.done.set()

    def _read(self, fd: int) -> None:
        data = read_chunk(fd)
        if data is None:
            return
        if data:
            self._readers[fd](data)
        else:
            self.loop.remove_reader(fd)

    def _died(self) -> None:
        self.loop.remove_reader(self._pidfd)
        self._pidfd = -1
        self.exited.set()

    def send(self, data: bytes) -> None:
        self._pending += data
        self._want_write()

    def _want_write(self) -> None:
        if self._pending and not self._writing and self._stdin is not None:
            self._writing = True
            self.loop.add_writer(self._stdin, self._write)

    def _write(self) -> None:
        assert self._stdin is not None
        try:
            n = os.write(self._stdin, self._pending[:CHUNK])
            del self._pending[:n]
        except BlockingIOError:
            return
        except OSError:
            self._pending.clear()   # the shell is gone: the pidfd says so
        if not self._pending:
            self.loop.remove_writer(self._stdin)
            self._writing = False

    async def _until(self, seconds: float | None) -> bool:
        """Wait for the status or the shell's death, at most ``seconds``; True if either."""
        waits = [asyncio.ensure_future(self.done.wait()),
                 asyncio.ensure_future(self.exited.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.done.is_set() or self.exited.is_set()

    async def interrupt(self, kill_grace: float) -> None:
        """The deadline stages of ``Frame.on_deadline``: SIGINT (and recovery lines) until
        ``kill_grace`` s, then SIGKILL to the command's processes but the shell, then, 0.5 s
        later (1 s if it reported but has not taken its last SIGINT), to the shell."""
        proc = self.shell.proc
        end = time.monotonic() + kill_grace
        while time.monotonic() < end:
            step = self.frame.on_deadline("term", proc, self.send, not self._pending)
            if await self._until(min(step or 0.2, max(0.0, end - time.monotonic()))):
                return
        self.frame.on_deadline("kill", proc, self.send, not self._pending)
        for _ in range(2):  # the shell, if it neither reports nor takes its SIGINT
            if await self._until(0.5):
                return
            self.frame.on_deadline("kill", proc, self.send, not self._pending)
        await self._until(_EXIT_GRACE)

    def drain(self) -> None:
        """Once the status came every byte of the command is in the pipes: read them dry."""
        for fd in (self.shell._out, self.shell._err, self.shell._chat):
            while data := read_chunk(fd):
                self._readers[fd](data)

    def stop(self) -> None:
        for fd in self._readers:
            self.loop.remove_reader(fd)
        if self._stdin is not None:
            self.loop.remove_writer(self._stdin)
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)


class AsyncShell:
    """A persistent shell for asyncio (``await AsyncSession.shell()``): ``await sh.run(cmd)``
    as ``Shell.run`` (same framing, results and timeout rules), without threads.

    Cancelling a ``run`` interrupts the running command as a timeout does (SIGINT, then its
    processes but the shell are killed) before ``CancelledError`` propagates; the shell and its
    state survive.  If the shell itself had to be killed, the loss is reported as ``Shell``
    does: the next call raises ``ShellDied``, or, with ``restart=True``, runs in a new shell
    and its result says ``shell_restarted=True``.  One call at a time (an ``asyncio.Lock``)."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self._lock = asyncio.Lock()
        self._lost = False   # the shell died during a cancelled call: tell the next result

    @property
    def alive(self) -> bool:
        return self.shell.alive

    async def run(self, command: str, *, timeout: float | None = None,
                  max_output: MaxOutput = None, text: bool = False,
                  encoding: str | None = None, errors: str | None = None, check: bool = False,
                  kill_grace: float = 2.0) -> CompletedRun:
        """Run ``command`` in the shell; see ``Shell.run`` (same keywords and result).
        Raises ``ShellDied`` when the shell is dead (and ``restart`` is off)."""
        opts = check_shell_call(command, timeout, max_output, "AsyncShell.run", text=text,
                                encoding=encoding, errors=errors)
        result = await self._run(command, opts, check_grace(kill_grace, "AsyncShell.run"))
        return result.finished(opts.encoding, opts.errors, check)

    async def _run(self, command: str, opts: CallOptions, kill_grace: float) -> CompletedRun:
        async with self._lock:
            shell = self.shell
            loop = asyncio.get_running_loop()
            if shell.dead is not None:
                if not (self._lost and shell.restart_on_death):
                    raise shell.dead
                await loop.run_in_executor(None, shell.restart)
            start = time.monotonic()
            out, err = OutputBuffer(opts.max_output), OutputBuffer(opts.max_output)
            frame = Frame(shell._prefix, command)
            call = _ShellCall(shell, frame, out, err)
            timed_out = False
            try:
                if not await call._until(opts.timeout):
                    timed_out = True
                    await call.interrupt(kill_grace)
                if call.done.is_set():
                    call.drain()
            except asyncio.CancelledError:
                await asyncio.shield(self._cancelled(call, kill_grace))
                raise
            finally:
                call.stop()
            return await self._result(call, out, err, start=start, timed_out=timed_out,
                                      timeout=opts.timeout)

    async def _cancelled(self, call: _ShellCall, kill_grace: float) -> None:
        try:
            await call.interrupt(kill_grace)
            if call.done.is_set():
                call.drain()   # the interrupted command's output is dropped with the call
                return
            await asyncio.get_running_loop().run_in_executor(None, self.shell._note_death)
            self._lost = True
        finally:
            call.stop()

    async def _result(self, call: _ShellCall, out: OutputBuffer, err: OutputBuffer, *,
                      start: float, timed_out: bool, timeout: float | None) -> CompletedRun:
        shell, frame = self.shell, call.frame
        loop = asyncio.get_running_loop()
        restart = shell.restart_on_death
        if not call.done.is_set() or (call.exited.is_set() and shell.proc.poll() is not None):
            if not await loop.run_in_executor(None, shell._note_death):
                raise shell.dead or ShellDied("the persistent shell is gone")
        if call.done.is_set():
            returncode = frame.returncode()
        elif timed_out:
            returncode = 128 + signal.SIGKILL
        elif restart:
            status = shell.proc.exit_status
            returncode = 255 if status is None else status
        else:
            assert shell.dead is not None
            raise shell.dead
        result = CompletedRun.captured([frame.command], returncode, out, err,
                                       timed_out=timed_out, started=start, timeout=timeout)
        if self._lost:
            self._lost = False
            result = dataclass_replace(result, shell_restarted=True)
        if shell.dead is not None and restart:
            result = await loop.run_in_executor(None, shell._restart_if_dead, result, True)
        return result

    async def restart(self) -> None:
        """Kill this shell and start a new one (``Shell.restart``)."""
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(None, self.shell.restart)
            self._lost = False

    async def close(self) -> None:
        self.shell.close()

    async def __aenter__(self) -> AsyncShell:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
