"""``SessionProcess``: one command started by a Session's spawner, as the host sees it.

The spawner (``lxcbind.proc.session``) is the command's parent, inside the container, and not
trusted: the START record carries a pidfd of the command, checked here against the kernel's
own view (a child of the spawner, at the pid it announced, in the container's pid namespace),
and every signal, timeout and ``close`` goes through that pidfd and the command's process
group from the host.  Only the exit status comes from the spawner; if it has not reported it
``EXIT_GRACE`` s after the host saw the command die, the spawner is declared dead
(``SpawnerDied``) through the ``Spawner`` interface of the session.

Streams.  A handle from ``Session.spawn`` has file objects like ``subprocess.Popen``'s:
``stdin``/``stdout``/``stderr`` (binary, or text with ``text=True``/``encoding=``) for the
streams asked for with ``PIPE``, ``communicate(input, timeout)`` and ``iter_output()``
(``(stream, chunk)`` pairs as they come; the loop is ``lxcbind.proc.streams``).  Unlike
``Popen.communicate``, a timeout kills the command's process group before
``lxcbind.TimeoutExpired`` is raised (a sandbox enforces its deadlines).

The module is one class over 500 lines: the record handling, the pidfd checks and the
signalling from the host are one trust boundary and read best in one place.
"""

# No ``from __future__ import annotations``: its string fields make typing compile() each
# field of a NamedTuple/TypedDict at import, and a process's first compile() costs ~1 ms
# (issue #23; tests/integration/api/test_cli.py checks a pipe run compiles none).
import array
import io
import os
import select
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Iterator
from typing import IO, Any, NamedTuple, Protocol

from lxcbind.command import check_input, check_max_output, check_timeout
from lxcbind.errors import ExecError, SessionError, SpawnerDied, TimeoutExpired
from lxcbind.lxc import spawner_wire as wire
from lxcbind.proc import streams
from lxcbind.result import CompletedRun, MaxOutput, OutputBuffer, exit_status

__all__ = ["SessionProcess", "EXIT_GRACE", "kill_group_but"]

_RECORD = wire.RECORD
# How long the spawner may take to report a command's exit once the host has seen the
# command die (its pidfd).  It reports only after it has killed the command's leftovers to the
# last process: a fork bomb at the pids limit took more than 2 s of that on a slow host (Debian
# 12 and 13 VMs under emulation).  A spawner that died is seen at once (its channel ends); this
# bound is for one that is alive and silent.
EXIT_GRACE = 10.0
_STREAMS = ("stdin", "stdout", "stderr")

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
StreamArg = int | IO[Any] | None


class Stdio(NamedTuple):
    """Where a command's stdin, stdout and stderr go (``Session.spawn``'s arguments)."""

    stdin: StreamArg = PIPE
    stdout: StreamArg = PIPE
    stderr: StreamArg = PIPE


class Spawner(Protocol):
    """What a handle needs of its session (``lxcbind.proc.session.Session``)."""

    _nsdepth: int
    _spawner_host_pid: int

    def _fail(self, why: str) -> SpawnerDied: ...

    def _pidfd_of_child(self, pid: int) -> list[int]: ...


def _read_proc(path: str) -> str | None:
    """A small /proc file in one read (raw: this is on every command's path)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (state is [0], ppid [1], start time
    [19]), None when the process is gone."""
    text = _read_proc(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text else None


def _pidfd_pids(fd: int) -> tuple[int, list[int]] | None:
    """``(host pid, [pid in each pid namespace])`` of a pidfd, None for any other fd.  The
    host pid is -1 once the process has been reaped."""
    info = _read_proc(f"/proc/self/fdinfo/{fd}")
    if info is None:
        return None
    pid = nspids = None
    for line in info.splitlines():
        if line.startswith("Pid:"):
            pid = int(line.split()[1])
        elif line.startswith("NSpid:"):
            nspids = [int(x) for x in line.split()[1:]]
    if pid is None or (pid > 0 and not nspids) or pid == 0:
        return None
    return pid, nspids or []


class SessionProcess:
    """A command started by a Session's spawner (the spawner's child, not ours).

    ``pid`` is the pid *inside the container*, ``host_pid`` the same process seen from the
    host.  ``stdin``/``stdout``/``stderr`` are file objects on our ends of the pipes asked for
    with ``PIPE`` (binary, or text: see ``Session.spawn``), else None; ``master`` is the pty
    master in tty mode (a raw fd).  All are owned by this object and closed by ``close``.
    ``returncode``/``exit_status``/``exec_error`` mean what they mean on
    ``lxcbind.lxc.attach.Process``.  ``fileno()`` is the report socket: readable when a
    status record arrives.

    The host does not depend on the spawner to stop a command: the START record carries a
    pidfd of the command (checked to be a process of the container's pid namespace with the
    pid the spawner announced), and signals, timeouts and ``close`` go through it and the
    command's process group directly.  Only the exit status comes from the spawner (it is the
    parent); if it has not reported it ``EXIT_GRACE`` s after the host saw the command die,
    the spawner is declared dead (``SpawnerDied``).  Closing the handle before the command has
    exited kills its process group.

    Thread-safety: ``poll``/``wait``/``send_signal``/``close`` may be called from several
    threads; a ``wait`` interrupted by ``close`` raises ``SessionError``.
    """

    def __init__(self, session: Spawner, report: socket.socket, args: list[str],
                 program: str, cwd: str | None) -> None:
        self.session = session
        self.args = args
        self.pid: int | None = None
        self.host_pid: int | None = None
        self.returncode: int | None = None
        self.exec_error: ExecError | None = None
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        self.master: int | None = None
        # Our raw ends of the pipes (the bridge, the shell and asyncio use them directly);
        # once ``_open_files`` made file objects of them, the files own them.
        self._pipes: dict[str, int] = {}
        self._encoding: str | None = None   # text mode: what communicate/iter_output decode
        self._errors = "replace"
        self._sock: socket.socket | None = report
        self._report = report.fileno()
        self._pidfd = -1
        self._starttime: str | None = None
        self._exited_at: float | None = None  # when the host saw it die (pidfd readable)
        self._program = program
        self._cwd = cwd
        self._lock = threading.RLock()
        self._owned: list[int] = []
        self._finalizer = weakref.finalize(self, SessionProcess._close_fds, self._owned, report)

    @staticmethod
    def _close_fds(fds: list[int], sock: socket.socket) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        fds.clear()
        sock.close()

    def _own(self, fd: int) -> int:
        self._owned.append(fd)
        return fd

    def fileno(self) -> int:
        return self._report

    @property
    def exit_status(self) -> int | None:
        return None if self.returncode is None else exit_status(self.returncode)

    # -- records --------------------------------------------------------------------------

    def _spawner_gone(self, why: str) -> SpawnerDied:
        """The spawner stopped answering for this command: kill the command ourselves (we
        have its pidfd once it started) and fail the whole session."""
        self._host_signal(signal.SIGKILL, group=True)
        return self.session._fail(f"{why} (while {self.args[0]!r} ran)")

    def _handle(self, data: bytes, fds: list[int]) -> None:
        if len(data) != _RECORD.size:
            for fd in fds:
                os.close(fd)
            # Which one it was tells a spawner that died or dropped a record (EOF) from one
            # that speaks nonsense.
            raise self._spawner_gone(
                "the spawner hung up (the command's report socket ended before its EXIT "
                "record)" if not data else
                f"the spawner sent a malformed record ({len(data)} bytes)")
        kind, pid, a, b = _RECORD.unpack(data)
        if kind == wire.REC_START and self.pid is None:
            if pid < 0:
                raise ExecError("spawn", b, self._program)
            self._adopt_pidfd(pid, fds)
            self.pid = pid
            if a:
                name = wire.STAGES.get(a, "exec")
                self.exec_error = ExecError(name, b, (self._cwd if name == "chdir" else
                                                      self._program) or "")
            return
        for fd in fds:
            os.close(fd)
        if kind == wire.REC_EXIT and self.pid is not None:
            self.returncode = os.waitstatus_to_exitcode(a)
        elif kind == wire.REC_REFUSED and self.pid is None:
            raise SessionError(f"spawner refused the command: {os.strerror(a)}")
        else:
            raise self._spawner_gone(f"the spawner sent an unexpected record {kind!r}")

    def _adopt_pidfd(self, pid: int, fds: list[int]) -> None:
        """Keep the command's pidfd after checking it is what the spawner says: a pidfd of a
        child of the spawner (hence in the container), whose pid there is ``pid``.  A fast
        command may already be reaped (fdinfo then says Pid -1): nothing left to signal, and
        the spawner must report its status within the exit grace as usual."""
        if not fds:  # the spawner could not make one (a seccomp policy may deny pidfd_open)
            fds = self.session._pidfd_of_child(pid)
            if not fds:  # no such child any more: reaped, so its EXIT record is due now
                self._exited_at = time.monotonic()
                return
        info = _pidfd_pids(fds[0]) if len(fds) == 1 else None
        ok = info is not None
        host_pid: int | None = None
        if info is not None and info[0] > 0:
            host_pid, nspids = info
            ok = nspids[-1] == pid and len(nspids) == self.session._nsdepth
            fields = _stat_fields(host_pid)
            if fields is None or fields[0] == "X":  # reaped, or being reaped right now
                host_pid = None
            else:
                ok = ok and int(fields[1]) == self.session._spawner_host_pid
                self._starttime = fields[19]
        if not ok and info is not None and info[0] > 0:
            again = _pidfd_pids(fds[0])
            if again is not None and again[0] == -1:
                # Reaped between the two reads (its pid may already name another process):
                # nothing left to signal; its EXIT record is due within the grace.
                ok, host_pid = True, None
        if not ok:
            for fd in fds:
                os.close(fd)
            raise self.session._fail(f"the spawner sent no valid pidfd for {self.args[0]!r} "
                                     f"(fds {len(fds)}, pidfd says {info}, expected pid {pid} "
                                     f"at depth {self.session._nsdepth})")
        self._pidfd = self._own(fds[0])
        self.host_pid = host_pid

    def _recv(self) -> tuple[bytes, list[int]] | None:
        """One record and the descriptors that came with it; None when there is none yet;
        ``(b"", [])`` once the spawner closed its end with nothing more queued."""
        assert self._sock is not None
        # An EOF is only believed when a read made after an end was seen says it again:
        # - a non-blocking SEQPACKET read that finds the queue empty checks for the peer's
        #   shutdown only afterwards, so when the spawner sends EXIT and closes in between,
        #   the read says EOF with the EXIT record queued (a kernel race: about once in 10^5
        #   commands here, once in a run of 10,000 under emulation);
        # - ECONNRESET: the spawner closed its end with records of ours still unread there
        #   (a KILL sent as the command exited); the kernel says so once, ahead of the queue.
        # Once either was seen, the spawner's end is closed and all it sent is queued: the
        # next reads give those records, then EOF for good.  Worst order: EOF (the race),
        # ECONNRESET, record.
        ended = False
        for _ in range(3):
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    64, socket.CMSG_SPACE(4 * _RECORD.size), socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return None
            except ConnectionResetError:
                ended = True
                continue
            if data or ancdata:
                break
            if ended:
                return b"", []
            ended = True
        else:
            return b"", []
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[:len(payload) - len(payload) % 4])
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            return b"?", []  # not a record: refused as a lying spawner
        return data, fds

    def _read_records(self) -> None:
        """Read what is there (non-blocking); raises SpawnerDied on EOF before EXIT."""
        while self.returncode is None:
            got = self._recv()
            if got is None:
                return
            self._handle(*got)

    def _check(self) -> None:
        """Records, then the host's own view: once the pidfd says the command is gone, the
        spawner has ``EXIT_GRACE`` s to report its status."""
        self._read_records()
        if self.returncode is not None:
            return
        if self._exited_at is None:
            if self._pidfd < 0 or not select.select([self._pidfd], [], [], 0)[0]:
                return
            self._exited_at = time.monotonic()
            self._read_records()  # it may have been reported meanwhile
        elif time.monotonic() - self._exited_at > EXIT_GRACE:
            raise self._spawner_gone(f"the spawner did not report an exit within "
                                     f"{EXIT_GRACE}s")

    def _wait_start(self, bound: float) -> None:
        """Read START, at most ``bound`` s: a spawner that does not answer is dead to us."""
        deadline = time.monotonic() + bound
        with self._lock:
            while self.pid is None:
                left = max(0.0, deadline - time.monotonic())
                if not select.select([self._report], [], [], left)[0]:
                    raise self.session._fail(
                        f"the spawner did not answer within {bound:g}s (stopped?)")
                got = self._recv()
                if got is not None:
                    self._handle(*got)

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and self._sock is not None:
                self._check()
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit status; ``subprocess.TimeoutExpired`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            with self._lock:
                if self._sock is None:
                    raise SessionError(f"the handle of {self.args[0]!r} was closed")
                watch = [self._report]
                if self._pidfd >= 0 and self._exited_at is None:
                    watch.append(self._pidfd)
                # dup'd under the lock: a concurrent close() cannot pull them from under us
                watch = [os.dup(fd) for fd in watch]
            try:
                now = time.monotonic()
                waits = [d - now for d in (deadline, self._exited_at and
                                           self._exited_at + EXIT_GRACE + 0.01) if d]
                if deadline is not None and deadline <= now:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                select.select(watch, [], [], max(0.001, min(waits)) if waits else None)
            finally:
                for fd in watch:
                    os.close(fd)
        assert self.returncode is not None
        return self.returncode

    def _alive_leader(self) -> bool:
        """Whether ``host_pid`` still names our command (running or a zombie not reaped yet):
        only then is the process group ``host_pid`` certainly ours to signal."""
        if self.host_pid is None or self._starttime is None:
            return False
        fields = _stat_fields(self.host_pid)
        return fields is not None and fields[19] == self._starttime

    def _host_signal(self, sig: int, *, group: bool) -> bool:
        """Signal the command (and its group) from the host; False when we have no pidfd.
        Each process gets the signal once: the command is a session leader (the spawner's
        child calls setsid), which cannot leave its group, so the group signal reaches it.
        A second SIGINT sent through the pidfd reached an interactive shell after it had
        already handled the first and reported, and interrupted its next frame."""
        if self._pidfd < 0:
            return False
        if group and self._alive_leader():
            try:
                os.killpg(self.host_pid, sig)  # type: ignore[arg-type]
                return True
            except (ProcessLookupError, PermissionError):
                pass
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass
        return True

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Signal the command (or its whole process group), from the host through its pidfd
        (no pid-reuse race); before START, through the spawner."""
        with self._lock:
            if self.returncode is not None or self._sock is None:
                return
            if self._host_signal(int(sig), group=group):
                return
            try:
                self._sock.send(_RECORD.pack(wire.REC_KILL, int(sig), 1 if group else 0, 0))
            except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                pass

    def signal_group(self, sig: int) -> None:
        self.send_signal(sig, group=True)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill the group if still running, close every descriptor.  Idempotent; does not wait
        (the spawner reaps)."""
        with self._lock:
            if self._sock is None:
                return
            if self.returncode is None:
                self._host_signal(signal.SIGKILL, group=True)
            for name in _STREAMS:
                file = getattr(self, name)
                if file is not None:
                    try:
                        if name == "stdin" and not file.closed:
                            # Its flush must not block close() on a pipe nobody reads: it
                            # fails instead, and the descriptor is closed all the same.
                            os.set_blocking(file.fileno(), False)
                        file.close()
                    except (OSError, ValueError):
                        pass
            self._finalizer()  # closing the report socket also makes the spawner kill it
            self._sock = None
            self._pidfd = -1
            self.stdin = self.stdout = self.stderr = self.master = None
            self._pipes.clear()

    # -- streams ------------------------------------------------------------------------------

    def _take_pipe(self, name: str) -> int | None:
        """Our raw end of pipe ``name``, handed over to the caller (who closes it)."""
        fd = self._pipes.pop(name, None)
        if fd is not None:
            self._owned.remove(fd)
        return fd

    def _open_files(self, encoding: str | None, errors: str) -> None:
        """File objects on the pipes, as ``subprocess.Popen`` makes them (buffered; in text
        mode a ``TextIOWrapper``, stdin written through)."""
        self._encoding, self._errors = encoding, errors
        for name in _STREAMS:
            fd = self._take_pipe(name)
            if fd is None:
                continue
            try:
                file: IO[Any] = open(fd, "wb" if name == "stdin" else "rb")
            except BaseException:
                os.close(fd)
                raise
            if encoding is not None:
                file = io.TextIOWrapper(file, encoding, errors,
                                        write_through=name == "stdin")
            setattr(self, name, file)

    def _chunks(self, data: bytes, deadline: float | None) -> Iterator[tuple[str, bytes]]:
        readers = {f.fileno(): name for name in ("stdout", "stderr")
                   if (f := getattr(self, name)) is not None and not f.closed}
        stdin = self.stdin if self.stdin is not None and not self.stdin.closed else None
        if stdin is not None:
            try:
                stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

        def close_stdin() -> None:
            if stdin is not None:
                try:
                    stdin.close()
                except BrokenPipeError:
                    pass

        return streams.chunks(readers, None if stdin is None else stdin.fileno(), data,
                              self._pidfd, deadline, close_stdin)

    def _timed_out(self, timeout: float, out: bytes, err: bytes) -> TimeoutExpired:
        """Kill the command's group (the deadline is the host's) and the error to raise."""
        self.send_signal(signal.SIGKILL, group=True)
        try:
            self.wait(EXIT_GRACE + 1.0)
        except (subprocess.TimeoutExpired, SessionError):
            pass
        result = CompletedRun(args=list(self.args), returncode=(
            self.returncode if self.returncode is not None else -signal.SIGKILL),
            stdout=out, stderr=err, timed_out=True, timeout=timeout)
        if self._encoding is not None:
            result = result.decoded(self._encoding, self._errors)
        return TimeoutExpired(result)

    def communicate(self, input: bytes | str | None = None, timeout: float | None = None, *,
                    max_output: MaxOutput = None) -> tuple[Any, Any]:
        """Send ``input`` (then EOF), read stdout and stderr to the end, wait for the exit;
        returns ``(stdout, stderr)`` (None for a stream that is not a pipe; str in text mode),
        as ``subprocess.Popen.communicate``.  At ``timeout`` s the command's process group is
        killed and ``lxcbind.TimeoutExpired`` raised (its ``output``/``stderr``: what came).
        ``max_output``: bytes kept per stream, as ``run``'s (None: 16 MiB, head and tail with
        the omitted marker between; ``lxcbind.UNLIMITED``: everything).

        Raises ``ValueError`` when ``input`` is given but stdin is not a pipe."""
        call = "SessionProcess.communicate"
        timeout = check_timeout(timeout, call)
        data = check_input(input, self._encoding, call)
        limit = check_max_output(max_output, call)
        if data and (self.stdin is None or self.stdin.closed):
            raise ValueError(f"{call}(): input given, but stdin is not an open pipe "
                             "(spawn(..., stdin=PIPE))")
        got = {"stdout": OutputBuffer(limit), "stderr": OutputBuffer(limit)}
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for name, chunk in self._chunks(data or b"", deadline):
                got[name].write(chunk)
        except streams.Deadline:
            assert timeout is not None
            raise self._timed_out(timeout, got["stdout"].getvalue(),
                                  got["stderr"].getvalue()) from None
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic())
                  + EXIT_GRACE)
        out: list[Any] = []
        for name in ("stdout", "stderr"):
            file = getattr(self, name)
            if file is None:
                out.append(None)
                continue
            file.close()
            value = got[name].getvalue()
            out.append(value if self._encoding is None else
                       value.decode(self._encoding, self._errors))
        return out[0], out[1]

    def iter_output(self, timeout: float | None = None) -> Iterator[tuple[str, Any]]:
        """``(stream, chunk)`` pairs as the command writes (``"stdout"``/``"stderr"``; chunks
        are bytes, or str in text mode, decoded incrementally).  ``stdin`` is left as it is:
        write to it and close it yourself (or spawn with ``stdin=None``).  Ends when both
        streams are at EOF (or the command exited and they went quiet); at ``timeout`` s the
        group is killed and ``lxcbind.TimeoutExpired`` raised."""
        timeout = check_timeout(timeout, "SessionProcess.iter_output")
        deadline = None if timeout is None else time.monotonic() + timeout
        decoders = {name: streams.decoder(self._encoding, self._errors)
                    for name in ("stdout", "stderr")}
        stdin, self.stdin = self.stdin, None   # iter_output never writes: leave stdin alone
        try:
            for name, chunk in self._chunks(b"", deadline):
                text = decoders[name](chunk, False)
                if text:
                    yield name, text
        except streams.Deadline:
            assert timeout is not None
            raise self._timed_out(timeout, b"", b"") from None
        finally:
            self.stdin = stdin
        for name, decode in decoders.items():
            rest = decode(b"", True)
            if rest:
                yield name, rest

    def __enter__(self) -> "SessionProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lxcbind.SessionProcess pid={self.pid} returncode={self.returncode}>"


def kill_group_but(proc: SessionProcess, keep: int | None) -> None:
    """SIGKILL every process of ``proc``'s process group except ``keep`` (the shell): seen
    from the host, through pidfds, each checked to be in the group after it was opened."""
    pgid = proc.host_pid
    if pgid is None or not proc._alive_leader():
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == keep:
            continue
        fields = _stat_fields(int(entry))
        if fields is None or int(fields[2]) != pgid:
            continue
        try:
            pidfd = os.pidfd_open(int(entry))
        except OSError:
            continue
        try:
            fields = _stat_fields(int(entry))  # still that process, still in the group
            if fields is not None and int(fields[2]) == pgid:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
