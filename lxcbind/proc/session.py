"""``Session``: many commands in one warm container at the cost of a plain fork+exec.

Why a resident spawner.  liblxc's ``attach()`` fork()s the whole caller for every command, so a
command costs ~2 ms plus time proportional to the caller's memory (page tables are copied:
~56 ms at 1 GiB resident).  A Session pays that once: a single attach execs the *spawner*
(``_cdefs/spawner.c``, a small static program shipped in the package as ``lxcbind-spawner``,
exec'd from a sealed memfd so no file of the container is trusted), so it has every part of
liblxc's setup (namespaces, cgroup, capability bounding set, no_new_privs, seccomp,
personality, LSM exec label, uid/gid).  It stays resident inside the container and starts each
later command with ``clone(CLONE_VM|CLONE_VFORK)``: no page table is copied, so a spawn costs
the same whatever the size of the caller, and whatever liblxc arranges "on exec" (capabilities
from the bounding set, the LSM label) is applied by the kernel at each command's own
``execve`` exactly as for a fresh attach.  The tests compare ``/proc/self/status``,
``/proc/self/ns/*`` and ``/proc/self/cgroup`` of both paths.

The commands are hostile (tests/security/test_session_security.py attacks each point):
nothing of the caller is in the spawner (it is a fresh program: empty environment, argv
``lxcbind-spawner``, only the control socket and /dev/null); it is not dumpable and no workload
gets CAP_SYS_PTRACE, so a command (container root included) can neither read its memory nor
ptrace it nor ``pidfd_getfd`` its sockets to forge replies; requests are bounds-checked in
64-bit arithmetic and a malformed one is refused alone.  What a command *can* do to it is stop
or kill it, so no deadline depends on it: each START record carries a pidfd of the command
(checked on the host: a child of the spawner, at the pid announced), through which the host
signals the command and its process group itself and sees it die; every wait for the spawner
is bounded, and one that does not answer (``_START_BOUND``, or ``_EXIT_GRACE`` after the
command died) fails the session with ``SpawnerDied``.

Protocol (see the top of ``spawner.c``).  The control socket is a ``SOCK_SEQPACKET`` pair whose
far end is the spawner's fd 0.  Each command is one datagram: a header, argv/env/cwd strings
(inline, or in a memfd when large) and, by ``SCM_RIGHTS``, a fresh per-command *report socket*
plus the command's stdin/stdout/stderr (and extra fds, which become 3, 4, ...).  On the report
socket the spawner answers ``START`` (pid, or the stage/errno that stopped it: chdir, ctty, exec)
and later ``EXIT`` (the wait status: the spawner reaps its children through a signalfd).  The
caller can send ``KILL`` records on it (signal the command or its process group); closing it
before the exit abandons the command, and the spawner kills its group.  A per-command socket
means concurrent threads need no demultiplexing: each waits on its own descriptors.  When the
control socket closes (``close()``, or the caller dying) the spawner SIGKILLs every command's
group, reaps them and exits.

The child gets the same clean state as ``Container.attach`` gives (``lxcbind_exec``): default
signal dispositions, an empty mask, its own session (``setsid``), a strict cwd, only its stdio
(and requested extra fds), the exact environment (``attach.baseline_env`` + ``env``), and exec
failures reported out of band, so ``exec_error`` tells "could not execute" (126/127) from the
program's own 126/127.

Thread-safety: ``run``/``spawn``/``map`` may be called from many threads at once (sends on the
control socket are atomic datagrams; every command has its own descriptors).  A ``Shell`` is
driven by one thread at a time (it has a lock).

Failure model: the spawner dying, stopping or lying (killed from inside the container,
container stopped) makes the call in progress and every later one raise ``SpawnerDied``; the
commands the host holds a pidfd of are killed at once; ``close()`` still works.  A persistent
shell that exits raises ``ShellDied``.  Both are ``SessionError``, an ``LxcbindError``.

Nothing outlives ``close()``: the spawner is the subreaper of everything its commands start,
and kills all of it (a daemon that ``setsid``'d and double-forked included) before it exits;
when it cannot (stopped, killed), the host freezes the container's cgroup and kills every
process that appeared since the session started (see ``close``).

Limits: per-command uid/gid is not offered (the whole session runs as the ``uid``/``gid`` given
to ``Session``: liblxc's own setuid path, so equivalence holds by construction); a timeout
kills the command's process group, not what left it (that goes at ``close()``).  Protection of
the spawner against a command relies on the command lacking CAP_SYS_PTRACE, which lxcbind
drops from every workload's bounding set itself; a session with a non-root ``uid`` has no
capability to drop, but a setuid-root program inside could regain it unless no_new_privs is set
(liblxc's default here).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol, Union

from lxcbind._lite import replace as _replace
from lxcbind.errors import ExecError, LxcError, SessionError, ShellDied, SpawnerDied
from lxcbind.lxc import cgroups as _cgroups
from lxcbind.lxc import spawner_wire as wire
from lxcbind.lxc.attach import (
    Process,
    baseline_env,
    build_attach,
    decode_wait_status,
    refuse_host_terminal,
)
from lxcbind.lxc.container import Container
from lxcbind.proc import pty as _pty
from lxcbind.proc.bridge import Bridge
from lxcbind.result import CompletedRun, OutputBuffer

__all__ = ["Session", "SessionProcess", "Shell", "SessionError", "SpawnerDied", "ShellDied"]

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
Command = Union[str, Sequence[str]]
StreamArg = Union[int, IO[Any], None]

_HEADER, _RECORD = wire.HEADER, wire.RECORD
_MAGIC = wire.MAGIC
_MAX_INLINE = wire.MAX_INLINE
_REC_HELLO, _REC_START, _REC_EXIT = wire.REC_HELLO, wire.REC_START, wire.REC_EXIT
_REC_REFUSED, _REC_KILL = wire.REC_REFUSED, wire.REC_KILL
_STAGES = wire.STAGES
_MAX_EXTRA_FDS = wire.MAX_EXTRA_FDS
_CHUNK = 65536
_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR
# How long the spawner may take to report a command's exit once the host has seen the
# command die (its pidfd), and to answer a spawn request when no timeout bounds the call.
_EXIT_GRACE = 2.0
_START_BOUND = 10.0

_SPAWNER_PROGRAM = Path(__file__).parent.parent / "lxcbind-spawner"  # built by setup.py
_MFD_EXEC = 0x10  # linux/memfd.h; refused (EINVAL) by kernels before 6.3, which need no flag
_image_lock = threading.Lock()
_image_fd = -1


def _spawner_image() -> int:
    """A sealed memfd holding the spawner program (one per process, shared by sessions).

    The spawner is exec'd from it inside the container: no file the workload controls is
    trusted, and the seals (no write, shrink or grow) keep anyone from changing it."""
    global _image_fd
    with _image_lock:
        if _image_fd >= 0:
            return _image_fd
        try:
            program = _SPAWNER_PROGRAM.read_bytes()
        except FileNotFoundError:
            raise SessionError(f"the session spawner program {str(_SPAWNER_PROGRAM)!r} is "
                               "missing: rebuild lxcbind (python3 setup.py build_ext)") from None
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        try:
            fd = os.memfd_create("lxcbind-spawner", flags | _MFD_EXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            fd = os.memfd_create("lxcbind-spawner", flags)
        try:
            view = memoryview(program)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK |
                        fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            # execve refuses a file open for writing (ETXTBSY): keep a read-only open of it.
            ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(fd)
        _image_fd = ro
        return ro


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




def _argv(command: Command) -> list[str]:
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    if isinstance(command, bytes):
        raise TypeError("command must be a str (shell) or a sequence of str")
    argv = list(command)
    if not argv:
        raise ValueError("argv must not be empty")
    return argv


def _fileno(value: StreamArg) -> int:
    return value if isinstance(value, int) else value.fileno()  # type: ignore[union-attr]


def _encode(items: Iterable[str], what: str) -> list[bytes]:
    out = []
    for item in items:
        raw = os.fsencode(item)
        if b"\0" in raw:
            raise ValueError(f"{what} contains a NUL byte: {item!r}")
        out.append(raw)
    return out


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


class Closeable(Protocol):
    def close(self) -> None: ...


class SessionProcess:
    """A command started by a Session's spawner (the spawner's child, not ours).

    ``pid`` is the pid *inside the container*, ``host_pid`` the same process seen from the
    host.  ``stdin``/``stdout``/``stderr`` are our ends of the pipes asked for with ``PIPE``
    (raw fds, owned by this object and closed by ``close``), else None; ``master`` is the pty
    master in tty mode.  ``returncode``/``exit_status``/``exec_error`` mean what they mean on
    ``attach.Process``.  ``fileno()`` is the report socket: readable when a status record
    arrives.

    The host does not depend on the spawner to stop a command: the START record carries a
    pidfd of the command (checked to be a process of the container's pid namespace with the
    pid the spawner announced), and signals, timeouts and ``close`` go through it and the
    command's process group directly.  Only the exit status comes from the spawner (it is the
    parent); if it has not reported it ``_EXIT_GRACE`` s after the host saw the command die,
    the spawner is declared dead (``SpawnerDied``).  Closing the handle before the command has
    exited kills its process group.

    Thread-safety: ``poll``/``wait``/``send_signal``/``close`` may be called from several
    threads; a ``wait`` interrupted by ``close`` raises ``SessionError``.
    """

    def __init__(self, session: Session, report: socket.socket, args: list[str],
                 program: str, cwd: str | None) -> None:
        self.session = session
        self.args = args
        self.pid: int | None = None
        self.host_pid: int | None = None
        self.returncode: int | None = None
        self.exec_error: ExecError | None = None
        self.stdin: int | None = None
        self.stdout: int | None = None
        self.stderr: int | None = None
        self.master: int | None = None
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
        return None if self.returncode is None else (
            128 - self.returncode if self.returncode < 0 else self.returncode)

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
            raise self._spawner_gone("the spawner hung up")
        kind, pid, a, b = _RECORD.unpack(data)
        if kind == _REC_START and self.pid is None:
            if pid < 0:
                raise ExecError("spawn", b, self._program)
            self._adopt_pidfd(pid, fds)
            self.pid = pid
            if a:
                name = _STAGES.get(a, "exec")
                self.exec_error = ExecError(name, b, (self._cwd if name == "chdir" else
                                                      self._program) or "")
            return
        for fd in fds:
            os.close(fd)
        if kind == _REC_EXIT and self.pid is not None:
            self.returncode = decode_wait_status(a)
        elif kind == _REC_REFUSED and self.pid is None:
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
        """One record and the descriptors that came with it; None when there is none yet."""
        assert self._sock is not None
        try:
            data, ancdata, flags, _ = self._sock.recvmsg(
                64, socket.CMSG_SPACE(4 * _RECORD.size), socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return None
        except ConnectionResetError:
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
        spawner has ``_EXIT_GRACE`` s to report its status."""
        self._read_records()
        if self.returncode is not None:
            return
        if self._exited_at is None:
            if self._pidfd < 0 or not select.select([self._pidfd], [], [], 0)[0]:
                return
            self._exited_at = time.monotonic()
            self._read_records()  # it may have been reported meanwhile
        elif time.monotonic() - self._exited_at > _EXIT_GRACE:
            raise self._spawner_gone(f"the spawner did not report an exit within "
                                     f"{_EXIT_GRACE}s")

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
                                           self._exited_at + _EXIT_GRACE + 0.01) if d]
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
        """Signal the command (and its group) from the host; False when we have no pidfd."""
        if self._pidfd < 0:
            return False
        if group and self._alive_leader():
            try:
                os.killpg(self.host_pid, sig)  # type: ignore[arg-type]
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
                self._sock.send(_RECORD.pack(_REC_KILL, int(sig), 1 if group else 0, 0))
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
            self._finalizer()  # closing the report socket also makes the spawner kill it
            self._sock = None
            self._pidfd = -1
            self.stdin = self.stdout = self.stderr = self.master = None

    def __enter__(self) -> SessionProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lxcbind.SessionProcess pid={self.pid} returncode={self.returncode}>"


class Session:
    """One running container and a resident spawner in it (see the module docstring).

    ``Session(container, own=False, uid=None, gid=None, env=None)``: ``container`` must be
    running; ``own=True`` destroys it on ``close()``.  ``uid``/``gid``: who every command runs as
    (liblxc's attach setuid path).  ``env``: entries added to ``attach.baseline_env`` for every
    command (per-call ``env`` overrides them).

    Raises ``LxcError`` when the spawner cannot be attached, ``SessionError`` when it does not
    come up within ``start_timeout`` seconds.
    """

    def __init__(self, container: Container, *, own: bool = False, uid: int | None = None,
                 gid: int | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, timeout: float | None = None,
                 start_timeout: float = 10.0) -> None:
        if not isinstance(container, Container):
            raise TypeError(f"Session() takes a running Container, not {type(container).__name__}"
                            "; for a policy use Session.from_policy(policy)")
        self.container = container
        self.own = own
        # Whoever set the container up for us (a sandbox): closed after the spawner, it
        # tears the container down (set by lxcbind.sandbox's Session.from_policy).
        self._owner: Closeable | None = None
        self.uid = uid
        self.gid = gid
        self.cwd = cwd          # a command's cwd when a call names none (None: the container's /)
        self.timeout = timeout  # run()'s timeout when a call gives none (None: no deadline)
        self._closed = False
        self._lock = threading.Lock()
        self._env = baseline_env(uid)
        for key, value in (env or {}).items():
            self._env[key] = value
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._devpts = -2  # -2: not asked yet, -1: unavailable
        self._ctrl: socket.socket | None = None
        self._spawner: Process | None = None
        self.spawner_pid: int | None = None  # inside the container
        self._spawner_host_pid = 0  # a command's pidfd must name a child of this process
        self._nsdepth = 0  # ... at the same pid-namespace depth
        self._broken: SpawnerDied | None = None  # set once the spawner failed us
        # (container init, its processes before we started): what a last resort spares
        self._before: tuple[int, set[tuple[int, str]]] | None = None
        try:
            self._start(start_timeout)
        except BaseException:
            self._teardown()
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def _start(self, start_timeout: float) -> None:
        image = _spawner_image()
        init = self.container.init_pid
        try:
            self._before = (init, _cgroups.processes(init)) if init else None
        except OSError:
            self._before = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctrl = ours
        ours.settimeout(_START_BOUND)  # bounds sendmsg too: a stopped spawner stops reading
        try:
            request = build_attach(["lxcbind-spawner"], env=None, clear_env=True, cwd="/",
                                   uid=self.uid, gid=self.gid, stdin=theirs.fileno(),
                                   stdout=self._devnull, stderr=self._devnull,
                                   namespaces=None, flags=None, ctty=None)
            request.payload.exe_fd = image
            self._spawner = self.container.attach_request(request, ["lxcbind-spawner"],
                                                          wire.EXEC_SPAWNER)
        finally:
            theirs.close()
        ready, _, _ = select.select([ours], [], [], start_timeout)
        data = ours.recv(64) if ready else None
        if data is None or len(data) != _RECORD.size:
            status = self._spawner.poll() if data is not None else None
            if data is None:
                raise SessionError(f"spawner in {self.container.name!r} did not start within "
                                   f"{start_timeout}s")
            error = self._spawner.exec_error
            raise SessionError(f"spawner in {self.container.name!r} failed to start "
                               f"(status {status}{f': {error}' if error else ''})"
                               f"{self.container.log_tail()}")
        kind, pid, version, _ = _RECORD.unpack(data)
        if kind != _REC_HELLO or version != wire.VERSION:
            raise SessionError("spawner spoke an unknown protocol")
        self.spawner_pid = pid
        self._spawner_host_pid = self._spawner.pid
        with open(f"/proc/{self._spawner.pid}/status") as f:
            self._nsdepth = len(next(line for line in f if line.startswith("NSpid:")).split()) - 1

    def close(self) -> None:
        """Stop the spawner and every process of the session, and, with ``own=True``, destroy
        the container.  Idempotent; safe after the spawner died, from any thread.

        The spawner kills its commands and everything they left behind (it is their
        subreaper).  If it cannot (it was stopped, killed, or exits abnormally), the host
        freezes the container's cgroup and kills every process in it that was not there when
        the session started: a command that escaped its group may be anywhere in the
        container by then (processes another user started in a shared container meanwhile go
        too; the container's init and older processes stay)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._teardown()

    def _teardown(self) -> None:
        try:
            clean = False
            if self._ctrl is not None:
                self._ctrl.close()  # EOF: the spawner kills and reaps its children, then exits
                self._ctrl = None
            spawner = self._spawner
            if spawner is not None:
                try:
                    clean = spawner.wait(timeout=5) == 0 and self._broken is None
                except subprocess.TimeoutExpired:
                    pass
                if not clean and not self.own and self._owner is None:
                    self._kill_everything()
                spawner.close()  # SIGKILL if it hung, and reap
                self._spawner = None
        finally:
            for fd in (self._devnull, self._devpts):
                if fd >= 0:
                    os.close(fd)
            self._devnull = self._devpts = -1
            if self.own:
                self.own = False
                if self.container.defined:
                    self.container.destroy()
            if self._owner is not None:
                box, self._owner = self._owner, None
                box.close()

    def _kill_everything(self) -> None:
        """Last resort (see ``close``): freeze the container's cgroup and SIGKILL every
        process that was not there when the session started."""
        if self._before is not None and self._before[0] == self.container.init_pid:
            try:
                _cgroups.kill_newcomers(*self._before)
            except OSError:
                pass  # no freezer: what the spawner's own cleanup got is all we can do

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """Whether the spawner still runs (cheap check; a dead one is also noticed on use)."""
        spawner = self._spawner
        return self._broken is None and spawner is not None and spawner.poll() is None

    def _pidfd_of_child(self, pid: int) -> list[int]:
        """``[pidfd]`` of the spawner's child whose pid in the container is ``pid``, opened by
        the host itself; ``[]`` when there is none (any more)."""
        for tid in os.listdir(f"/proc/{self._spawner_host_pid}/task"):
            children = _read_proc(f"/proc/{self._spawner_host_pid}/task/{tid}/children") or ""
            for child in children.split():
                status = _read_proc(f"/proc/{child}/status") or ""
                nspid = next((line.split()[1:] for line in status.splitlines()
                              if line.startswith("NSpid:")), [])
                if nspid and nspid[-1] == str(pid):
                    try:
                        return [os.pidfd_open(int(child))]
                    except ProcessLookupError:
                        return []
        return []

    def _fail(self, why: str) -> SpawnerDied:
        """Declare the spawner dead (once); every later call raises the same error."""
        with self._lock:
            if self._broken is None:
                self._broken = SpawnerDied(
                    f"the spawner of session {self.container.name!r} failed: {why}; "
                    "close the session and start a new one")
            return self._broken

    def _dead(self) -> SpawnerDied:
        if self._broken is not None:
            return self._broken
        spawner = self._spawner  # close() may clear it meanwhile
        status = None
        if spawner is not None:
            try:
                spawner.wait(timeout=0.2)  # it is going: give it time to be reaped
            except subprocess.TimeoutExpired:
                pass
            status = spawner.returncode
        how = f" (status {status})" if status is not None else ""
        return self._fail(f"it is gone{how}")

    # -- spawning -------------------------------------------------------------------------

    def _environment(self, env: Mapping[str, str] | None) -> list[str]:
        environment = self._env
        if env:
            environment = dict(environment)
            for key, value in env.items():
                if not key or "=" in key or "\0" in key or "\0" in value:
                    raise ValueError(f"invalid environment entry {key!r}")
                environment[key] = value
        return [f"{k}={v}" for k, v in environment.items()]

    def _send(self, argv: list[str], env: Mapping[str, str] | None, cwd: str | None,
              fds: Sequence[int], ctty: bool) -> SessionProcess:
        """Send one spawn request; returns the handle with the report socket (START not yet
        read).  ``fds`` = stdin, stdout, stderr, extra...; the caller closes its copies."""
        ctrl = self._ctrl
        if self._closed or ctrl is None:
            raise SessionError("session is closed")
        if self._broken is not None:
            raise self._broken
        if len(fds) - 3 > _MAX_EXTRA_FDS:
            raise ValueError(f"pass_fds: at most {_MAX_EXTRA_FDS} descriptors per command")
        strings = _encode(argv, "argv") + _encode(self._environment(env), "env")
        flags = 0
        if cwd is not None:
            strings += _encode([cwd], "cwd")
            flags |= wire.FLAG_CWD
        if ctty:
            flags |= wire.FLAG_CTTY
        data = b"\0".join(strings) + b"\0"
        envc = len(strings) - len(argv) - (1 if cwd is not None else 0)
        memfd = -1
        if len(data) > _MAX_INLINE:
            flags |= wire.FLAG_MEMFD
            memfd = os.memfd_create("lxcbind-spawn", os.MFD_CLOEXEC)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            header = _HEADER.pack(_MAGIC, flags, len(argv), envc, len(fds) - 3, len(data), 0, 0)
            passed = [theirs.fileno(), *fds]
            if memfd >= 0:
                view = memoryview(data)
                while view:
                    view = view[os.write(memfd, view):]
                passed.append(memfd)
                payload = [header]
            else:
                payload = [header, data]
            try:
                ctrl.sendmsg(payload, [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", passed))])
            except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
                raise self._dead() from None
            except TimeoutError:  # its queue is full and it does not read: stopped or hung
                raise self._fail(f"the spawner took no request for {_START_BOUND:g}s "
                                 "(stopped?)") from None
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTCONN):
                    raise SessionError("session is closed") from None
                raise
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
            if memfd >= 0:
                os.close(memfd)
        mine.setblocking(False)
        return SessionProcess(self, mine, argv, argv[0], cwd)

    def _pty(self) -> _pty.PtyPair:
        if self._devpts == -2:
            try:
                self._devpts = self.container.devpts_fd()
            except LxcError:
                self._devpts = -1
        pair = _pty.open_pty(self._devpts if self._devpts >= 0 else None)
        try:
            _pty.set_winsize(pair.master, *_pty.DEFAULT_SIZE)
        except BaseException:
            pair.close()
            raise
        return pair

    def spawn(self, command: Command, *, stdin: StreamArg = PIPE, stdout: StreamArg = PIPE,
              stderr: StreamArg = PIPE, env: Mapping[str, str] | None = None,
              cwd: str | None = None, tty: bool = False,
              pass_fds: Sequence[int] = (),
              start_timeout: float = _START_BOUND) -> SessionProcess:
        """Start ``command`` (argv, or a str for ``/bin/sh -c``) and return its handle.

        Streams: ``PIPE`` (our end on the handle), ``DEVNULL``, an fd or file object;
        ``None`` is /dev/null (never the caller's own fds 0-2), and one of the caller's
        terminals is refused (``ValueError``: the command could type into it).  ``tty=True``: one pty (from the container's devpts when possible) for all three,
        controlling terminal of the command; its master is ``handle.master``.  ``pass_fds``:
        descriptors that become 3, 4, ... in the command.  ``cwd`` None: the container's /.
        A missing program or cwd is not an exception: ``wait()`` gives 127/126 and
        ``exec_error`` says why.  At most ``LXCBIND_SPAWN_MAX_EXTRA_FDS`` (8) ``pass_fds``.
        Raises ``SpawnerDied`` if the spawner is gone or does not answer within
        ``start_timeout`` s.
        """
        argv = _argv(command)
        child_fds: list[int] = []  # our copies of the child's ends: closed once sent
        ours: list[tuple[str, int]] = []
        pair: _pty.PtyPair | None = None
        proc: SessionProcess | None = None
        try:
            if tty:
                pair = self._pty()
                fds = [pair.slave] * 3
            else:
                fds = []
                for index, value in enumerate((stdin, stdout, stderr)):
                    if value == PIPE:
                        r, w = _pipe()
                        child, mine = (r, w) if index == 0 else (w, r)
                        child_fds.append(child)
                        ours.append((("stdin", "stdout", "stderr")[index], mine))
                        fds.append(child)
                    elif value == DEVNULL or value is None:
                        fds.append(self._devnull)
                    else:
                        fds.append(_fileno(value))
            fds += list(pass_fds)
            for index, fd in enumerate(fds):
                if index >= 3 or not tty:  # (our own pty's slave is not the caller's)
                    refuse_host_terminal(fd, ("stdin", "stdout", "stderr")[index]
                                         if index < 3 else "pass_fds")
            proc = self._send(argv, env, cwd if cwd is not None else self.cwd, fds, ctty=tty)
            for name, fd in ours:
                setattr(proc, name, proc._own(fd))
            ours.clear()
            if pair is not None:
                pair.close_slave()
                proc.master = proc._own(pair.master)
                pair = None
            proc._wait_start(start_timeout)
            return proc
        except BaseException:
            if proc is not None:
                proc.close()
            for _, fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
            if pair is not None:
                pair.close()

    def run(self, command: Command, *, input: bytes | str | None = None,
            timeout: float | None = None, tty: bool = False,
            env: Mapping[str, str] | None = None, cwd: str | None = None,
            max_output: int | None = None, check: bool = False,
            kill_grace: float = 2.0) -> CompletedRun:
        """Run ``command`` to completion and capture it (a str runs as ``/bin/sh -c``).

        The I/O is the bridge's (``lxcbind.proc.bridge``), exactly as for ``Container.run``.
        ``input`` is written to stdin, then EOF (None: empty stdin).  ``timeout``: SIGTERM to
        the command's process group, SIGKILL ``kill_grace`` s later; ``timed_out=True``.
        ``max_output``: per stream, keep head and tail of this many bytes.  ``tty``: a pty,
        merged output in ``stdout``.  A missing program is a result (127, ``exec_error``).
        Raises ``SpawnerDied``/``SessionError`` when the session cannot run commands.
        """
        if isinstance(input, str):
            input = input.encode()
        if timeout is None:
            timeout = self.timeout
        start = time.monotonic()
        bound = _START_BOUND if timeout is None else min(timeout + _EXIT_GRACE, _START_BOUND)
        proc = self.spawn(command, stdin=PIPE if input else None, env=env, cwd=cwd, tty=tty,
                          start_timeout=bound)
        try:
            out = OutputBuffer(max_output)
            err = OutputBuffer(max_output)
            timed_out = _bridge(proc, input, out, err, timeout, kill_grace)
            proc.wait()  # bounded: the command is gone, the spawner has _EXIT_GRACE to say how
        finally:
            proc.close()
        assert proc.returncode is not None
        result = CompletedRun.captured(proc.args, proc.returncode, out, err,
                                       timed_out=timed_out, started=start,
                                       exec_error=proc.exec_error, timeout=timeout)
        if check:
            result.check_returncode()
        return result

    def map(self, commands: Iterable[Command], *, workers: int = 4,
            **run_kwargs: Any) -> list[CompletedRun]:
        """Run every command (with ``run``'s keywords) on ``workers`` threads; results in the
        order given.  A command that fails or times out is just its own result."""
        items = list(commands)
        if workers <= 1 or len(items) <= 1:
            return [self.run(c, **run_kwargs) for c in items]
        with ThreadPoolExecutor(max_workers=min(workers, len(items)),
                                thread_name_prefix="lxcbind-map") as pool:
            return list(pool.map(lambda c: self.run(c, **run_kwargs), items))

    def shell(self, *, program: str = "/bin/sh", env: Mapping[str, str] | None = None,
              cwd: str | None = None, restart: bool = False) -> Shell:
        """A persistent shell whose state (cwd, variables, functions) carries across calls
        (bash, dash, ash; see ``Shell``).  ``restart=True``: a shell that dies is replaced at
        once (its state is lost) and the call's result has ``shell_restarted=True``; otherwise
        calls raise ``ShellDied`` until ``Shell.restart()``."""
        return Shell(self, program=program, env=env, cwd=cwd if cwd is not None else self.cwd,
                     restart=restart)

    def __repr__(self) -> str:
        return (f"<lxcbind.Session {self.container.name!r} spawner={self.spawner_pid} "
                f"{'closed' if self._closed else 'open'}>")


def _bridge(proc: SessionProcess, input: bytes | None, out: OutputBuffer, err: OutputBuffer,
            timeout: float | None, kill_grace: float) -> bool:
    """Drive a session command with the bridge, the one I/O loop of every run (the same
    input, EOF, drain, readiness, timeout and kill rules as ``Container.run``).  The bridge
    watches the host's pidfd of the command and signals its process group from the host, so
    the spawner is needed for nothing but the exit status.  Returns whether it timed out."""
    master = proc.master
    if master is not None:
        outputs = [(master, out)]
        to_child: int | None = master
        input = input if input is not None else b""
    else:
        outputs = [(fd, sink) for fd, sink in ((proc.stdout, out), (proc.stderr, err))
                   if fd is not None]
        to_child = proc.stdin
        if to_child is not None:
            proc._owned.remove(to_child)  # the bridge closes a stdin pipe at input EOF
            proc.stdin = None
    pgid = proc.host_pid if proc._alive_leader() else None
    # No pidfd only when the command was reaped before we could open one: an always-readable
    # eventfd tells the bridge it has exited.
    exited = os.eventfd(1, os.EFD_CLOEXEC) if proc._pidfd < 0 else -1
    try:
        bridge = Bridge(proc._pidfd if exited < 0 else exited, pgid=pgid, to_child=to_child,
                        input=input, outputs=outputs, pty_master=master, timeout=timeout,
                        kill_grace=kill_grace, handle_signals=False)
        try:
            bridge.run()
        finally:
            if master is None and bridge.to_child is not None:
                os.close(bridge.to_child)
    finally:
        if exited >= 0:
            os.close(exited)
    return bridge.timed_out


class _Tail:
    """The last ``limit`` bytes written (the shell's own chatter, for error messages)."""

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        del self.data[:-self.limit]
        return len(data)


class Shell:
    """A persistent shell in a Session: ``run("cd /tmp && export X=1")`` then
    ``run("pwd; echo $X")`` sees ``/tmp`` and ``1``.  Works with bash, dash, busybox ash (and is
    meant to with zsh, which this machine lacks).

    Descriptors.  The shell's own stdout and stderr (prompts, banners, "no job control" and
    job notices, the newline it prints on SIGINT) go to a pipe of their own, read and dropped
    (the last bytes are kept for error messages).  Each command gets fresh redirections from
    three pipes the shell holds: 4 (the command's stdout), 5 (its stderr) and 3 (status).
    So what a call returns is exactly what its command wrote, on every shell.

    Framing.  Each call writes to the shell's stdin::

        { command printf '<nonce> R\\n' >&3; command . /proc/self/fd/6 3>&- 4>&- 5>&-
        } 6<<'LXCBIND_<nonce>' </dev/null >&4 2>&5
        <command>
        LXCBIND_<nonce>
        command printf '<nonce> %d\\n' "$?" >&3

    The command is a quoted here-document (no expansion, no quoting to get wrong) that the
    shell sources: sourcing, unlike ``eval``, runs it as non-interactive input (bash then
    prints no ``[1] 123`` job notice), and ``command`` keeps a syntax error from aborting the
    rest of the frame.  The nonce (128 random bits, new each call) ends the here-document and
    tags the status line; a command cannot predict it.  The status is read on fd 3, which the
    command does not have: nothing it prints can end or forge a frame.  Once the status arrives
    every byte the command wrote is already in pipes 4 and 5, so they are read dry and the call
    returns (the bridge's ``done`` hook: the same loop, drain and cap as ``Session.run``).  The
    ``R`` line says the shell has read the whole frame; a timeout waits for it before sending
    SIGINT, which would otherwise abort the parse and run the rest as top-level input.  The
    command's stdin is /dev/null: it cannot eat the next frame.  (A command can of course
    redefine the shell itself, e.g. shadow ``command``; it then only spoils its own calls, and
    deadlines, enforced from the host, still hold.)

    Timeout.  The shell runs interactive (``-i``, job control off: every command is in the
    shell's process group) because only an interactive shell aborts the running command list on
    SIGINT and goes back to reading input with its state intact.  At the timeout the group gets
    SIGINT (background jobs of a non-job-control shell ignore it) and a recovery status line is
    sent (resent every 0.2 s: ash drops buffered input when interrupted); ``returncode`` is 130.
    If no status has come ``kill_grace`` s later (the command ignores SIGINT), every process of
    the group except the shell is SIGKILLed (``returncode`` 137): an external command dies and
    the shell, alive, reports.  If the shell itself is what runs (``trap '' INT`` and a builtin
    loop), it is killed ``kill_again`` (0.5) s later: then the state is lost.

    Death.  A shell that exits (``exit``, killed) loses its state.  Without ``restart``, the
    call during which it died raises ``ShellDied`` (after a timeout the call returns its result
    and the next call raises), as does every later call until ``restart()`` starts a new shell
    (same program, env and starting cwd).  With ``restart=True`` that happens at once and the
    result says ``shell_restarted=True``.  Processes that left the shell's process group are not
    killed by a timeout (they go at ``Session.close``).  Background jobs' output written after
    their call returned shows up in a later call.  One call at a time (a lock serializes them).
    """

    def __init__(self, session: Session, *, program: str = "/bin/sh",
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 start_timeout: float = 10.0, restart: bool = False) -> None:
        self.session = session
        self.program = program
        self.restart_on_death = restart
        self._env = {"PS1": "", "PS2": "", "PS4": "+ ", "ENV": "", **(env or {})}
        self._cwd = cwd
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._chatter = _Tail()
        self.dead: ShellDied | None = None
        self._start()

    def _argv(self) -> tuple[list[str], str]:
        """How to start ``program`` interactive without rc files or line editing, and the
        prefix that runs a builtin past functions and special-builtin error exits."""
        name = os.path.basename(self.program)
        if "bash" in name:
            return [self.program, "--noediting", "--norc", "--noprofile", "-i"], "command"
        if "zsh" in name:  # zsh's ``command`` runs external programs only
            return [self.program, "-f", "-i"], "builtin"
        return [self.program, "-i"], "command"

    def _start(self) -> None:
        argv, self._prefix = self._argv()
        pipes = [_pipe() for _ in range(4)]  # chatter, status, stdout, stderr
        try:
            proc = self.session.spawn(argv, stdout=pipes[0][1], stderr=pipes[0][1],
                                      env=self._env, cwd=self._cwd,
                                      pass_fds=[w for _, w in pipes[1:]])
        except BaseException:
            for fd in (fd for pair in pipes for fd in pair):
                os.close(fd)
            raise
        for _, w in pipes:
            os.close(w)
        self.proc = proc
        self._chat, self._status, self._out, self._err = (proc._own(r) for r, _ in pipes)
        self._buf = b""
        self.dead = None
        try:
            if proc.exec_error is not None:
                proc.wait()
                raise self._died(f"could not start: {proc.exec_error}", proc.returncode)
            # No job control (commands stay in the shell's group, no notices), no history.
            script = b"set +m; unset HISTFILE; HISTSIZE=0\n"
            result = self._call("true", script, self._start_timeout, None, 2.0, restart=False)
            if result is None or result.timed_out:
                raise self.dead or self._died(
                    f"did not start (no status within {self._start_timeout:g}s)", None)
        except BaseException:
            proc.close()
            raise

    def _died(self, why: str, returncode: int | None) -> ShellDied:
        chatter = bytes(self._chatter.data).decode(errors="replace").strip()
        self.dead = ShellDied(
            f"the persistent shell {self.program!r} {why}; its state (cwd, variables, "
            f"functions, background jobs) is lost: call restart() for a new one"
            + (f" (it said: {chatter[-300:]!r})" if chatter else ""), returncode)
        return self.dead

    @property
    def alive(self) -> bool:
        return self.dead is None and self.proc.poll() is None

    def restart(self) -> None:
        """Kill this shell (if still running) and start a new one with the same program,
        environment and starting cwd.  Everything the old one held is lost."""
        with self._lock:
            self.proc.close()
            self._start()

    def run(self, command: str, *, timeout: float | None = None,
            max_output: int | None = None, kill_grace: float = 2.0) -> CompletedRun:
        """Run ``command`` in the shell; the result's ``returncode`` is its ``$?`` (130 when
        a timeout interrupted it, 137 when it had to be killed; ``timed_out=True``).

        Raises ``ShellDied`` when the shell is dead (and ``restart`` is off)."""
        if "\0" in command:
            raise ValueError("command contains a NUL byte")
        with self._lock:
            if self.dead is not None:
                raise self.dead
            result = self._call(command, b"", timeout, max_output, kill_grace,
                                restart=self.restart_on_death)
            if result is None:
                assert self.dead is not None
                raise self.dead
            return result

    def _call(self, command: str, prefix: bytes, timeout: float | None,
              max_output: int | None, kill_grace: float, *,
              restart: bool) -> CompletedRun | None:
        """One framed exchange on the bridge.  When the shell dies meanwhile (``dead`` is then
        set): with ``restart`` a new shell is started and the result says so; else None,
        except after a timeout (the call's result; the next call raises)."""
        proc = self.proc
        start = time.monotonic()
        out = OutputBuffer(max_output)
        err = OutputBuffer(max_output)
        nonce = secrets.token_hex(16)
        cmd = self._prefix
        script = prefix + (
            f"{{ {cmd} printf '{nonce} R\\n' >&3; {cmd} . /proc/self/fd/6 3>&- 4>&- 5>&-\n"
            f"}} 6<<'LXCBIND_{nonce}' </dev/null >&4 2>&5\n{command}\nLXCBIND_{nonce}\n"
            f"{cmd} printf '{nonce} %d\\n' \"$?\" >&3\n").encode()
        recovery = f"{cmd} printf '{nonce} 130\\n' >&3\n".encode()
        status: list[int] = []
        started = [False]  # the "R" line: the shell has read the whole frame and runs it
        interrupted = [False]
        killed = [False]

        def parse(data: bytes) -> bool:
            self._buf += data
            lines = self._buf.split(b"\n")
            self._buf = lines.pop()
            for line in lines:  # lines with other nonces: stale recovery frames
                parts = line.split()
                if len(parts) == 2 and parts[0] == nonce.encode():
                    if parts[1].isdigit():
                        status.append(int(parts[1]))
                    elif parts[1] == b"R":
                        started[0] = True
            return bool(status)

        def on_deadline(stage: str) -> float | None:
            if stage != "kill":
                if not started[0]:
                    # Still reading the frame: SIGINT now would abort the parse and leave the
                    # rest of the command to run as top-level input.  Wait for "R".
                    return 0.02
                if not interrupted[0]:
                    interrupted[0] = True
                    proc.send_signal(signal.SIGINT, group=True)
                    bridge.send(recovery)
                elif not bridge._inbuf:
                    bridge.send(recovery)  # again: an interrupted ash drops buffered input
                return 0.2
            # "kill": first the command's processes, then (kill_again later) the shell.
            if not killed[0]:
                killed[0] = True
                _kill_group_but(proc, proc.host_pid)
            else:
                proc.send_signal(signal.SIGKILL, group=True)
            return None

        if proc._pidfd < 0 or proc.stdin is None:
            proc.poll()
            self._died("is gone", proc.returncode)
            return None
        bridge = Bridge(proc._pidfd, pgid=proc.host_pid if proc._alive_leader() else None,
                        to_child=proc.stdin, input=script, keep_input=True,
                        outputs=[(self._out, out), (self._err, err)],
                        side_outputs=[(self._chat, self._chatter)],
                        done=(self._status, parse), timeout=timeout, kill_grace=kill_grace,
                        kill_again=0.5, on_deadline=on_deadline, drain_quiet=0.0,
                        handle_signals=False)
        bridge.run()
        shell_status: int | None = None
        if bridge.exited or not bridge.done:  # the shell is gone (maybe just after its status)
            try:
                proc.wait(_EXIT_GRACE + 1.0)
            except subprocess.TimeoutExpired:
                proc.kill()
            except SpawnerDied as exc:
                self._died(f"is gone with its spawner ({exc})", None)
                return None
            shell_status = proc.exit_status
            self._died("is gone (no exit status)" if shell_status is None else
                       f"exited (status {shell_status})", proc.returncode)
        if bridge.done:
            returncode = status[0]  # (after an interrupt: 130 from the shell or recovery)
            if killed[0]:
                returncode = 128 + signal.SIGKILL
            elif interrupted[0]:
                returncode = 130
        elif bridge.timed_out:
            returncode = 128 + signal.SIGKILL
        elif restart:
            returncode = 255 if shell_status is None else shell_status
        else:
            return None
        result = CompletedRun.captured([command], returncode, out, err,
                                       timed_out=bridge.timed_out, started=start,
                                       timeout=timeout)
        if self.dead is not None and restart:
            self.proc.close()
            self._start()
            result = _replace(result, shell_restarted=True)
        return result

    def close(self) -> None:
        """Kill the shell (and its group).  Idempotent."""
        if self.dead is None:
            self.dead = ShellDied("the persistent shell was closed")
        self.proc.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group_but(proc: SessionProcess, keep: int | None) -> None:
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
