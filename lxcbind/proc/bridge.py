"""The stdio bridge: one epoll loop between a child process and its sources and sinks.

Invariants (read before changing the loop):

* **Ownership.**  The caller owns every fd it passes and closes them after ``run`` returns,
  with one exception: ``to_child`` when it is a pipe is closed by the bridge at input EOF (a
  pipe's only way to say EOF) or when the child exits.  The bridge owns its epoll fd and the
  wakeup socketpair.  It sets O_NONBLOCK on every fd it reads or writes and puts the original
  flags of the *host* fds (``input_fd`` and integer sinks) back on the way out, because the
  open file description of a terminal is shared with the user's shell.
* **Level-triggered**, no EPOLLONESHOT: the interest mask of each fd is recomputed every
  iteration from the state (read a source only while its sink has room, EPOLLOUT only while
  bytes are pending), and an fd nobody wants is *unregistered* rather than given mask 0: epoll
  reports EPOLLHUP/EPOLLERR even for mask 0, and a hung-up master we are not reading (its sink
  is full) would otherwise spin the loop.  Regular files cannot be registered (EPERM); they
  are always ready and are serviced without waiting.
* **EPOLLHUP|EPOLLERR wake both directions** of an fd: the pty master is read and written
  through one fd, and after a hang-up the only way to learn what happened is to try the
  operation (EIO on the master = end of output, EPIPE on a pipe = reader gone).
* **Bounded memory.**  Host sinks and the input buffer hold at most ``buffer_size`` bytes each;
  capture sinks are the caller's (``result.OutputBuffer`` caps them while reading).
* **Deadlines** are absolute ``time.monotonic()`` values (timeout, SIGKILL escalation, the
  input-ready wait, the post-exit drain); each epoll wait sleeps until the nearest one, so
  clock changes and EINTR retries (PEP 475) cannot stretch them.
* **Exit** is the pidfd turning readable, never EIO alone: a background process can keep the
  slave open forever (lxc/lxc#4507).  After exit the sources are drained until EOF, until they
  stay quiet for ``drain_quiet`` s, or ``drain_grace`` s have passed, so output that is still
  in the kernel arrives and the loop always ends.  The bridge never reaps: the caller does.
* **Signals** (main thread only: ``signal.set_wakeup_fd`` is refused elsewhere, and the bridge
  then simply does without): SIGWINCH copies the host size to the master, SIGCONT re-applies
  raw mode, SIGINT/SIGTERM/SIGHUP are forwarded to the child's process group and recorded in
  ``signal_received`` so that the caller can re-raise after cleanup.  Previous handlers and
  wakeup fd are restored.

Over 500 lines as one thing: the loop's invariants (ownership of each fd, drain order,
deadlines) hold only when read together; the terminal and pty helpers live in ``pty``.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lxcbind.proc import pty as _pty
    from lxcbind.proc.escapes import EscapeFilter
# ``pty`` (with termios) and ``escapes`` are imported where a terminal is involved: a run
# through pipes never needs them, and the CLI pays every import.

__all__ = ["Bridge", "Writable"]


class Writable(Protocol):
    def write(self, data: bytes, /) -> Any: ...


Sink = int | Writable

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_BAD = select.EPOLLHUP | select.EPOLLERR
_CHUNK = 65536
_READS_PER_WAKE = 16  # reads per readiness report: fewer epoll_wait calls at full throughput
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Bridge:
    """Copy bytes between a running child and its host-side sources and sinks until it exits.

    ``child`` is a pidfd (int) or an object whose ``fileno()`` is one
    (``lxcbind.lxc.attach.Process``).
    ``pgid`` is the process group to signal on timeout or forwarded signals (the child is a
    session leader, so its pid); without it only the pidfd is signalled.

    Input: ``input`` (bytes) or ``input_fd`` (read until EOF; e.g. host stdin) is written to
    ``to_child`` (the pty master or a pipe's write end).  Neither means empty input: EOF is
    delivered at once.  End of input is delivered as ``lxcbind.proc.pty.eof_bytes`` on a
    master, by closing a pipe.

    Output: ``outputs`` pairs each fd to read (master, stdout/stderr pipe, ...) with a sink: a
    host fd (written non-blocking with a bounded buffer; reading pauses while it is full) or an
    object with ``write(bytes)`` (capture).  ``side_outputs`` are read the same way while the
    child runs but not waited for after it exits (one last read, then dropped): for a pty that
    is only a controlling terminal, whose slave the caller keeps open.

    ``pty_master``: which fd is a pty master (EIO is end of output, EOF is VEOF, SIGWINCH
    target).  **Input-ready rule**: on a pty, input is held until the child has produced its
    first output or ``ready_wait`` seconds have passed, whichever is first.  A shell that sets
    up its terminal after starting may flush or mangle bytes that arrived earlier; holding them
    until it prints (its prompt) delivers them to the program that reads them.

    ``timeout``: seconds, then SIGTERM to the group (and the pty's foreground group), SIGKILL
    after ``kill_grace``; ``timed_out`` is then True.  After a timeout or a forwarded signal the
    group is SIGKILLed when the child exits, so nothing it started in its group survives.

    ``filter_terminals`` (default True): output whose sink is a host fd that is a terminal
    goes through ``lxcbind.proc.escapes.EscapeFilter``, which drops the sequences that reach
    past the screen (clipboard, title reports, window operations).

    ``raw_mode`` (``lxcbind.proc.pty.RawMode``) is re-applied on SIGCONT; ``winsize_from`` is
    the host terminal fd whose size SIGWINCH copies to the master.

    Hooks for a child that outlives its command (the persistent shell):

    * ``done=(fd, parse)``: ``fd`` is read while the child runs and every chunk (``b""`` at EOF)
      is given to ``parse``; when it returns True the command is over although the child lives
      on (``done`` is then True).  The outputs are drained as after an exit (already-written
      bytes first, then the same ``drain_quiet``/``drain_grace`` rule), side outputs get one
      last read, the child is not signalled and its input is left open.  Pending input is
      dropped (whole small writes only, see ``send``).
    * ``keep_input=True``: never deliver EOF and never close ``to_child`` (the caller owns it:
      the child reads further commands from it later).
    * ``on_deadline(stage)`` replaces what a timeout does: it is called with ``"timeout"`` at
      the timeout (instead of SIGTERM), ``"kill"`` at ``kill_grace`` s later and then every
      ``kill_again`` s while the command is not over (instead of SIGKILL), and ``"tick"``
      whenever a previous call returned a delay (seconds) for it; it may ``send`` input.

    After ``run()``: ``timed_out``, ``escalated`` (SIGKILL was needed), ``signal_received`` (a
    forwarded SIGINT/SIGTERM/SIGHUP), ``exited``, ``done``, ``bytes_in``, ``bytes_out``,
    ``duration``.
    One ``run()`` per instance; not thread-safe (one thread drives it).
    """

    def __init__(
        self,
        child: int | Any,
        *,
        pgid: int | None = None,
        to_child: int | None = None,
        input: bytes | None = None,
        input_fd: int | None = None,
        outputs: Sequence[tuple[int, Sink]] = (),
        side_outputs: Sequence[tuple[int, Sink]] = (),
        pty_master: int | None = None,
        timeout: float | None = None,
        kill_grace: float = 2.0,
        ready_wait: float = 0.25,
        drain_quiet: float = 0.1,
        drain_grace: float = 2.0,
        raw_mode: _pty.RawMode | None = None,
        winsize_from: int | None = None,
        handle_signals: bool = True,
        buffer_size: int = 256 * 1024,
        done: tuple[int, Callable[[bytes], bool]] | None = None,
        keep_input: bool = False,
        on_deadline: Callable[[str], float | None] | None = None,
        kill_again: float = 1.0,
        filter_terminals: bool = True,
    ) -> None:
        self.pidfd = child if isinstance(child, int) else child.fileno()
        if self.pidfd < 0:
            raise ValueError("the child has no pidfd (already reaped?)")
        if input is not None and input_fd is not None:
            raise ValueError("give input or input_fd, not both")
        self.pgid = pgid
        self.to_child = to_child
        self.input_fd = input_fd
        self.outputs = list(outputs)
        self.pty_master = pty_master
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.ready_wait = ready_wait
        self.drain_quiet = drain_quiet
        self.drain_grace = drain_grace
        self.raw_mode = raw_mode
        self.winsize_from = winsize_from
        self.handle_signals = handle_signals
        self.buffer_size = buffer_size
        self._inbuf = bytearray(input or b"")
        self._in_eof = input_fd is None
        self.keep_input = keep_input
        self._eof_queued = keep_input  # (never queued: the child reads on after this run)
        self._done_fd = done[0] if done is not None else -1
        self._parse: Callable[[bytes], bool] | None = done[1] if done is not None else None
        self.on_deadline = on_deadline
        self.kill_again = kill_again
        self._last_byte: int | None = None
        self._side = [fd for fd, _ in side_outputs]
        every = self.outputs + list(side_outputs)
        self._sink_of = {fd: sink for fd, sink in every}
        self._open_sources = [fd for fd, _ in every]
        self._pending: dict[int, bytearray] = {s: bytearray() for _, s in every
                                               if isinstance(s, int)}
        terminals = [fd for fd, s in every
                     if filter_terminals and isinstance(s, int) and os.isatty(s)]
        self._filters: dict[int, EscapeFilter] = {}
        if terminals:
            from lxcbind.proc.escapes import EscapeFilter

            self._filters = {fd: EscapeFilter() for fd in terminals}
        self._dead_sinks: set[int] = set()
        self._registered: dict[int, int] = {}
        self._always_ready: set[int] = set()
        self._ready_now: list[tuple[int, int]] = []
        self._wake_fd = -1
        self._ep: Any = None
        self._wake_r: socket.socket | None = None
        self.timed_out = False
        self.escalated = False
        self.signal_received: int | None = None
        self.exited = False
        self.done = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration = 0.0

    # -- setup / teardown ----------------------------------------------------------------

    def run(self) -> None:
        """Bridge until the child has exited and its output is drained (see class docstring).
        Returns normally on timeout and on forwarded signals; raises only on unexpected OS
        errors, after restoring handlers and fd flags."""
        start = time.monotonic()
        host_fds = {fd for fd in [self.input_fd, *self._pending] if fd is not None}
        saved_flags: dict[int, int] = {}
        saved_signals: dict[int, Any] = {}
        old_wakeup: int | None = None
        wake_w: socket.socket | None = None
        try:
            fds = [fd for fd in {self.to_child, self.input_fd, *self._sink_of, *self._pending,
                                 self._done_fd} if fd is not None and fd >= 0]
            # Read every flag before changing any: host stdin and stdout are often one open
            # file description (the terminal), so setting O_NONBLOCK through one fd changes
            # what the other reports.
            saved_flags = {fd: os.get_blocking(fd) for fd in fds if fd in host_fds}
            for fd in fds:
                os.set_blocking(fd, False)
            self._ep = select.epoll()
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                self._wake_r, wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_fd = self._wake_r.fileno()
                wake_w.setblocking(False)
                old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
                for sig in self._wanted_signals():
                    previous = signal.getsignal(sig)
                    if previous is signal.SIG_IGN and sig in _FORWARDED:
                        continue  # the caller ignores it (nohup, background job): so do we
                    saved_signals[sig] = previous
                    # A Python-level handler is what makes the C handler write the wakeup byte;
                    # the byte (the signal number) is the event, the handler itself does nothing.
                    signal.signal(sig, _noop)
            self._loop(start)
        finally:
            for sig, previous in saved_signals.items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            if old_wakeup is not None:
                signal.set_wakeup_fd(old_wakeup)
            for sock in (self._wake_r, wake_w):
                if sock is not None:
                    sock.close()
            if self._ep is not None:
                self._ep.close()
            for fd, blocking in saved_flags.items():
                try:
                    os.set_blocking(fd, bool(blocking))
                except OSError:
                    pass
            self.duration = time.monotonic() - start

    def _wanted_signals(self) -> list[int]:
        wanted: list[int] = list(_FORWARDED)
        if self.pty_master is not None and self.winsize_from is not None:
            wanted.append(signal.SIGWINCH)
        if self.raw_mode is not None or wanted[-1] == signal.SIGWINCH:
            wanted.append(signal.SIGCONT)
        return wanted

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, start: float) -> None:
        timeout_at = start + self.timeout if self.timeout is not None else None
        kill_at: float | None = None
        ready = self.pty_master is None or self.ready_wait <= 0
        ready_at = start + self.ready_wait
        tick_at: float | None = None
        exit_at = 0.0
        quiet_at = 0.0
        while True:
            now = time.monotonic()
            ended = self.exited or self.done
            if not ready and now >= ready_at:
                ready = True
            if not ended:
                if timeout_at is not None and now >= timeout_at and not self.timed_out:
                    self.timed_out = True
                    kill_at = now + self.kill_grace if kill_at is None else kill_at
                    tick_at = self._deadline("timeout", signal.SIGTERM)
                if kill_at is not None and now >= kill_at:
                    self.escalated = True
                    kill_at = now + self.kill_again  # again later if something still runs
                    tick_at = self._deadline("kill", signal.SIGKILL) or tick_at
                if tick_at is not None and now >= tick_at:
                    tick_at = self._deadline("tick", 0)
                ended = self.exited or self.done  # (a hook may have sent the last input)
            if ready and self._in_eof and not self._inbuf and not self._eof_queued:
                self._queue_eof()

            draining = ended and bool(self._open_sources)
            if ended:
                if not self._open_sources and not self._has_pending():
                    break
                if now >= exit_at + self.drain_grace + 5.0:
                    break  # host sink stuck: give up on it rather than hang
                if draining and (now >= quiet_at or now >= exit_at + self.drain_grace):
                    self._open_sources.clear()  # background holder: stop reading, flush the rest
                    continue

            self._sync_interest(ready)
            wait = -1.0
            if timeout_at is not None or kill_at is not None or not ready or ended:
                deadlines = [d for d in (timeout_at if not self.timed_out else None, kill_at,
                                         None if ready else ready_at) if d is not None]
                if tick_at is not None and not ended:
                    deadlines.append(tick_at)
                if ended:
                    deadlines.append(exit_at + self.drain_grace + 5.0)
                    if draining:
                        deadlines += [quiet_at, exit_at + self.drain_grace]
                if deadlines:
                    wait = max(0.0, min(deadlines) - now)
            if self._ready_now:
                events = self._ep.poll(0) + self._ready_now
                self._ready_now = []
            else:
                events = self._ep.poll(wait)

            got_output = False
            for fd, ev in events:
                if fd == self._wake_fd:
                    kill_at = self._on_signals(kill_at)
                    continue
                if fd == self.pidfd:
                    if not self.exited:
                        if not self.done:
                            exit_at = quiet_at = time.monotonic()
                            quiet_at += self.drain_quiet
                        self.exited = True
                        self._child_gone()
                    continue
                if fd == self._done_fd:
                    if self._read_done() and not self.exited:
                        exit_at = quiet_at = time.monotonic()
                        quiet_at += self.drain_quiet
                        self._command_over()
                    continue
                if ev & (_IN | _BAD):
                    if fd in self._open_sources:
                        if self._read_source(fd):
                            got_output = True
                    if fd == self.input_fd and not self._in_eof:
                        self._read_input(ready)
                if ev & (_OUT | _BAD):
                    if fd == self.to_child and self._inbuf and ready:
                        self._write_input()
                    if fd in self._pending and self._pending[fd]:
                        self._flush(fd)
            if got_output:
                if not ready:
                    ready = True  # the input-ready rule: first output
                    if self._inbuf:
                        self._write_input()
                if self.exited or self.done:
                    quiet_at = time.monotonic() + self.drain_quiet
            elif (self.exited or self.done) and not self._sources_wanted():
                # Reading is paused by a full host sink: that is not silence.
                quiet_at = time.monotonic() + self.drain_quiet

    def _has_pending(self) -> bool:
        return any(buf for fd, buf in self._pending.items() if fd not in self._dead_sinks)

    def _sources_wanted(self) -> bool:
        return any(self._room_for(fd) for fd in self._open_sources)

    def _room_for(self, source: int) -> bool:
        sink = self._sink_of[source]
        return not isinstance(sink, int) or len(self._pending[sink]) < self.buffer_size

    def _sync_interest(self, ready: bool) -> None:
        # Runs once per iteration: kept to plain loops over a handful of fds (this is on the
        # keystroke path), and epoll_ctl is only called for masks that changed.
        wanted: dict[int, int] = {}
        if self._wake_r is not None:
            wanted[self._wake_fd] = _IN
        if not self.exited and not self.done:
            wanted[self.pidfd] = _IN
            if self._done_fd >= 0:
                wanted[self._done_fd] = _IN
        for fd in self._open_sources:
            if self._room_for(fd):
                wanted[fd] = _IN
        if (self.input_fd is not None and not self._in_eof and not self.exited
                and not self.done and len(self._inbuf) < self.buffer_size):
            wanted[self.input_fd] = wanted.get(self.input_fd, 0) | _IN
        if self.to_child is not None and ready and self._inbuf:
            wanted[self.to_child] = wanted.get(self.to_child, 0) | _OUT
        for fd, buf in self._pending.items():
            if buf and fd not in self._dead_sinks:
                wanted[fd] = wanted.get(fd, 0) | _OUT
        registered = self._registered
        if self._always_ready:
            self._ready_now = [(fd, wanted.pop(fd)) for fd in self._always_ready if fd in wanted]
        if wanted == registered:
            return
        for fd in [fd for fd in registered if fd not in wanted]:
            self._ep.unregister(fd)
            del registered[fd]
        for fd, mask in wanted.items():
            old = registered.get(fd)
            if old == mask:
                continue
            try:
                if old is None:
                    self._ep.register(fd, mask)
                else:
                    self._ep.modify(fd, mask)
                registered[fd] = mask
            except PermissionError:
                # A regular file or /dev/null: epoll refuses it, and it never blocks.
                self._always_ready.add(fd)
                self._ready_now.append((fd, mask))

    # -- events ----------------------------------------------------------------------------

    def _read_source(self, fd: int) -> bool:
        sink = self._sink_of[fd]
        got = False
        for _ in range(_READS_PER_WAKE):
            if not self._room_for(fd):
                break
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO on a master: every slave fd is closed
                    raise
                data = b""
            if not data:
                self._open_sources.remove(fd)
                escapes = self._filters.get(fd)
                if escapes is not None and isinstance(sink, int) and \
                        sink not in self._dead_sinks:
                    self._pending[sink] += escapes.flush()
                break
            got = True
            self.bytes_out += len(data)
            if isinstance(sink, int):
                if sink in self._dead_sinks:
                    continue
                escapes = self._filters.get(fd)
                self._pending[sink] += data if escapes is None else escapes.feed(data)
                self._flush(sink)  # optimistic: saves an epoll round trip per keystroke
            else:
                sink.write(data)
            if len(data) < 1024:
                break  # small read: likely nothing more right now (keeps latency low)
        return got

    def _flush(self, sink: int) -> None:
        buf = self._pending[sink]
        while buf:
            try:
                n = os.write(sink, buf[:_CHUNK * 4])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO, errno.ECONNRESET):
                    raise
                # The host reader is gone: keep draining the child (so it never blocks on a
                # full pipe) but drop what it writes.
                self._dead_sinks.add(sink)
                buf.clear()
                return
            del buf[:n]

    def _read_input(self, ready: bool) -> None:
        assert self.input_fd is not None
        try:
            data = os.read(self.input_fd, min(_CHUNK, self.buffer_size - len(self._inbuf) or 1))
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the host terminal was hung up
                raise
            data = b""
        if not data:
            self._in_eof = True
            return
        self._inbuf += data
        if ready:
            self._write_input()

    def _write_input(self) -> None:
        if self.to_child is None or self.exited or self.done:
            self._inbuf.clear()
            return
        while self._inbuf:
            try:
                n = os.write(self.to_child, self._inbuf[:_CHUNK])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO):
                    raise
                # The program closed its stdin (or the pty is gone): the rest is undeliverable.
                self._inbuf.clear()
                self._in_eof = self._eof_queued = True
                if not self.keep_input:
                    self._close_input_pipe()
                return
            if n:
                self._last_byte = self._inbuf[n - 1]
                self.bytes_in += n
            del self._inbuf[:n]
        if self._eof_queued and self.to_child != self.pty_master:
            self._close_input_pipe()

    def _queue_eof(self) -> None:
        self._eof_queued = True
        if self.to_child is None:
            return
        if self.to_child == self.pty_master:
            from lxcbind.proc import pty as _pty

            eof = _pty.eof_bytes(self.to_child, self._last_byte)
            if eof:
                self._inbuf += eof
                self._write_input()
        else:
            self._close_input_pipe()

    def _close_input_pipe(self) -> None:
        if self.keep_input:
            return
        if self.to_child is not None and self.to_child != self.pty_master:
            if self.to_child in self._registered:
                self._ep.unregister(self.to_child)
                del self._registered[self.to_child]
            self._always_ready.discard(self.to_child)
            os.close(self.to_child)
            self.to_child = None

    def send(self, data: bytes) -> None:
        """Queue more input for the child (from an ``on_deadline`` hook).  Writes of at most
        PIPE_BUF bytes to a pipe are atomic: such a chunk is delivered whole or not at all."""
        if self.exited or self.done or self.to_child is None:
            return
        self._inbuf += data
        self._write_input()

    def _deadline(self, stage: str, sig: int) -> float | None:
        """What a deadline does: the hook's action, or signal ``sig`` (none for a tick)."""
        if self.on_deadline is None:
            if sig:
                self._signal_child(sig)
            return None
        delay = self.on_deadline(stage)
        return None if delay is None else time.monotonic() + delay

    def _read_done(self) -> bool:
        """Feed what the done fd has to the parser; True when it says the command is over."""
        assert self._parse is not None
        while not self.done:
            try:
                data = os.read(self._done_fd, _CHUNK)
            except BlockingIOError:
                break
            if self._parse(data):
                self.done = True
            if not data:
                if self._done_fd in self._registered:
                    self._ep.unregister(self._done_fd)
                    del self._registered[self._done_fd]
                self._done_fd = -1  # EOF: the child is going away; its exit will follow
                break
        return self.done

    def _command_over(self) -> None:
        """The child said its command is over: everything it wrote is already in the output
        fds (written before the status), so read them dry now, then drain as after an exit."""
        self._inbuf.clear()
        for fd in list(self._open_sources):
            while fd in self._open_sources and self._room_for(fd) and self._read_source(fd):
                pass
        for fd in self._side:
            if fd in self._open_sources:
                self._open_sources.remove(fd)

    def _child_gone(self) -> None:
        if self._done_fd >= 0 and not self.done:
            self._read_done()  # a status written just before the exit still counts
        for fd in self._side:
            if fd in self._open_sources:
                self._read_source(fd)
                if fd in self._open_sources:
                    self._open_sources.remove(fd)
        self._inbuf.clear()
        self._close_input_pipe()
        if self.timed_out or self.signal_received is not None:
            # The leader is a zombie until the caller reaps it, so its pgid cannot be reused
            # yet: kill whatever it left in its group (e.g. a background job ignoring SIGTERM).
            self._signal_child(signal.SIGKILL)

    def _on_signals(self, kill_at: float | None) -> float | None:
        assert self._wake_r is not None
        try:
            data = self._wake_r.recv(512)
        except BlockingIOError:
            return kill_at
        for sig in data:
            if sig == signal.SIGWINCH:
                self._copy_winsize()
            elif sig == signal.SIGCONT:
                if self.raw_mode is not None:
                    self.raw_mode.reapply()
                self._copy_winsize()
            elif sig in _FORWARDED and not self.exited and not self.done:
                if self.signal_received is None:
                    self.signal_received = sig
                self._signal_child(sig)
                if kill_at is None:
                    kill_at = time.monotonic() + self.kill_grace
        return kill_at

    def _copy_winsize(self) -> None:
        if self.pty_master is None or self.winsize_from is None:
            return
        from lxcbind.proc import pty as _pty

        size = _pty.get_winsize(self.winsize_from)
        if size:
            try:
                _pty.set_winsize(self.pty_master, *size)
            except OSError:
                pass

    def _signal_child(self, sig: int) -> None:
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass
        if self.pty_master is not None:
            from lxcbind.proc import pty as _pty

            # A job-control shell runs its foreground job in a group of its own; the terminal
            # knows which one it is.
            fg = _pty.foreground_pgrp(self.pty_master)
            if fg is not None and fg != self.pgid:
                try:
                    os.killpg(fg, sig)
                except (ProcessLookupError, PermissionError):
                    pass


def _noop(signum: int, frame: Any) -> None:
    """Handler whose only job is to make CPython write the wakeup byte."""
