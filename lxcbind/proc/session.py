"""``Session``: many commands in one warm container at the cost of a plain fork+exec.

This module is the spawner's lifecycle and the calls on it (``spawn``, ``run``, ``map``); a
started command's handle is ``lxcbind.proc.spawned.SessionProcess``, the persistent shell
``lxcbind.proc.shell.Shell``, the spawner's wire format ``lxcbind.lxc.spawner_wire``.  It is
over 500 lines because the protocol and threat notes below belong next to the one class that
speaks the protocol.

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
``/proc/self/ns/*`` and ``/proc/self/cgroup`` of both paths.  In a throwaway container the
sandbox makes the spawner the container's init instead (``lxcbind.sandbox.initspawner``) and
the Session adopts it (``init_control``): no attach at all, and as pid 1 it is out of reach of
its commands' signals.

The commands are hostile (tests/security/test_session_security.py attacks each point):
nothing of the caller is in the spawner (it is a fresh program: empty environment, argv
``lxcbind-spawner``, only the control socket and /dev/null); it is not dumpable and no workload
gets CAP_SYS_PTRACE, so a command (container root included) can neither read its memory nor
ptrace it nor ``pidfd_getfd`` its sockets to forge replies; requests are bounds-checked in
64-bit arithmetic and a malformed one is refused alone.  What a command *can* do to it is stop
or kill it, so no deadline depends on it: each START record carries a pidfd of the command
(checked on the host: a child of the spawner, at the pid announced), through which the host
signals the command and its process group itself and sees it die; every wait for the spawner
is bounded, and one that does not answer (``_START_BOUND``, or ``EXIT_GRACE`` after the
command died) fails the session with ``SpawnerDied``.

Protocol (see the top of ``_cdefs/spawner.c`` and ``lxcbind.lxc.spawner_wire``).  The control
socket is a ``SOCK_SEQPACKET`` pair whose far end is the spawner's fd 0.  Each command is one
datagram: a header, argv/env/cwd strings (inline, or in a memfd when large) and, by ``SCM_RIGHTS``,
a fresh per-command *report socket* plus the command's stdin/stdout/stderr (and extra fds, which
become 3, 4, ...).  On the report socket the spawner answers ``START`` (pid, or the stage/errno
that stopped it: chdir, ctty, exec) and later ``EXIT`` (the wait status: the spawner reaps its
children through a signalfd).  The caller can send ``KILL`` records on it (signal the command or
its process group); closing it before the exit abandons the command, and the spawner kills its
group.  A per-command socket means concurrent threads need no demultiplexing: each waits on its own
descriptors.  When the control socket closes (``close()``, or the caller dying) the spawner
SIGKILLs every command's group, reaps them and exits.

The child gets the same clean state as ``Container.attach`` gives (``lxcbind_exec``): default
signal dispositions, an empty mask, its own session (``setsid``), a strict cwd, only its stdio (and
requested extra fds), the exact environment (``lxcbind.lxc.attach.baseline_env`` + ``env``), and
exec failures reported out of band, so ``exec_error`` tells "could not execute" (126/127) from the
program's own 126/127.

Thread-safety: ``run``/``spawn``/``map`` may be called from many threads at once (sends on the
control socket are atomic datagrams; every command has its own descriptors).  A ``Shell`` is
driven by one thread at a time (it has a lock).

Failure model: the spawner dying, stopping or lying (killed from inside the container,
container stopped) makes the call in progress and every later one raise ``SpawnerDied``; the
commands the host holds a pidfd of are killed at once; ``close()`` still works.  A persistent
shell that exits raises ``ShellDied``.  Both are ``SessionError``, an ``LxcbindError``.

A command's result is its own (``tests/security/test_command_integrity.py``): when the last
running command exits, the spawner kills everything the commands left behind (it is their
subreaper: background jobs, ``setsid``'d and double-forked daemons) before it reports that
command's exit, so nothing of an earlier command is alive when a later one starts; and seccomp
denies ptrace, ``process_vm_readv``/``writev`` and ``pidfd_getfd`` unless the policy allows
``ptrace``.  While a command runs (a ``Shell``, a spawned server, ``map`` with workers),
leftovers live on: commands that overlap share one uid and are not isolated from each other.

Nothing outlives ``close()``: the spawner is the subreaper of everything its commands start,
and kills all of it (a daemon that ``setsid``'d and double-forked included) before it exits;
when it cannot (stopped, killed), the host freezes the container's cgroup and kills every
process that appeared since the session started (see ``close``).

Limits: per-command uid/gid is not offered (the whole session runs as the ``uid``/``gid`` given
to ``Session``: liblxc's own setuid path, so equivalence holds by construction; an init
spawner switches user itself, the way liblxc does, and the security tests compare both); a timeout
kills the command's process group, and what left it goes once no command runs.  Protection of
the spawner against a command relies on the command lacking CAP_SYS_PTRACE, which lxcbind
drops from every workload's bounding set itself; a session with a non-root ``uid`` has no
capability to drop, but a setuid-root program inside could regain it unless no_new_privs is set
(liblxc's default here).
"""

# No ``from __future__ import annotations``: its string fields make typing compile() each
# field of a NamedTuple/TypedDict at import, and a process's first compile() costs ~1 ms
# (issue #23; tests/integration/api/test_cli.py checks a pipe run compiles none).
import array
import errno
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from lxcbind._lite import replace as _replace
from lxcbind.command import (
    CallOptions,
    Command,
    RunKeywords,
    check_call,
    check_fds,
    check_grace,
    check_keywords,
    check_stdio,
    check_timeout,
)
from lxcbind.errors import FileTransferError, LxcError, SessionError, ShellDied, SpawnerDied
from lxcbind.lxc import cgroups as _cgroups
from lxcbind.lxc import spawner_wire as wire
from lxcbind.lxc.attach import (
    Process,
    baseline_env,
    build_attach,
    environment,
    fileno_of,
    pipe,
    refuse_host_terminal,
)
from lxcbind.lxc.container import Container
from lxcbind.proc import files as _files
from lxcbind.proc import users as _users
from lxcbind.proc.bridge import Bridge, Writable
from lxcbind.proc.spawned import (
    DEVNULL,
    EXIT_GRACE,
    PIPE,
    STDOUT,
    SessionProcess,
    Stdio,
    StreamArg,
    _read_proc,
)
from lxcbind.proc.spawner import spawner_image
from lxcbind.proc.streams import OutputCallback, Tee
from lxcbind.result import CompletedRun, MaxOutput, OutputBuffer

if TYPE_CHECKING:
    from lxcbind.proc import pty as _pty
    from lxcbind.proc.shell import Shell

__all__ = ["Session", "SessionProcess", "Shell", "SessionError", "SpawnerDied", "ShellDied",
           "PIPE", "DEVNULL", "STDOUT"]


def __getattr__(name: str) -> Any:
    """``Shell``, imported on first use: a run that opens no persistent shell (the CLI's, a
    one-shot ``run()``) does not pay for its module."""
    if name == "Shell":
        from lxcbind.proc.shell import Shell

        return Shell
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_RECORD = wire.RECORD
# How long the spawner may take to answer a spawn request when no timeout bounds the call.
_START_BOUND = 10.0

class Closeable(Protocol):
    def close(self) -> None: ...


_PIPES = Stdio()


class SessionRunKeywords(RunKeywords, total=False):
    """``Session.run``'s keywords beyond the common ones (for ``Session.map``)."""

    tty: bool
    kill_grace: float
    on_output: OutputCallback | None


class Session:
    """One running container and a resident spawner in it (see the module docstring).

    ``Session(container, own=False, uid=None, gid=None, env=None)``: ``container`` must be
    running; ``own=True`` destroys it on ``close()``.  ``uid``/``gid``: who every command runs as
    (liblxc's attach setuid path).  ``env``: entries added to
    ``lxcbind.lxc.attach.baseline_env`` for every command (per-call ``env`` overrides them).
    ``init_control``: the connected control socket of a spawner that already runs as the
    container's init (``lxcbind.sandbox.initspawner``): nothing is attached, and closing the
    session ends the init, hence the container (its owner tears it down).

    Raises ``LxcError`` when the spawner cannot be attached, ``SessionError`` when it does not
    come up within ``start_timeout`` seconds.
    """

    def __init__(self, container: Container, *, own: bool = False, uid: int | None = None,
                 gid: int | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, timeout: float | None = None,
                 start_timeout: float = 10.0, init_control: socket.socket | None = None) -> None:
        if not isinstance(container, Container):
            raise TypeError(f"Session() takes a running Container, not {type(container).__name__}"
                            "; for a policy use Session.from_policy(policy)")
        self.container = container
        self.own = own
        # Whoever set the container up for us (a sandbox): closed after the spawner, it
        # tears the container down (set by ``lxcbind.sandbox.core.Session.from_policy``).
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
        self._spawner: Process | _InitSpawner | None = None
        self.spawner_pid: int | None = None  # inside the container
        self._spawner_host_pid = 0  # a command's pidfd must name a child of this process
        self._nsdepth = 0  # ... at the same pid-namespace depth
        self._broken: SpawnerDied | None = None  # set once the spawner failed us
        # (container init, its processes before we started): what a last resort spares
        self._before: tuple[int, set[tuple[int, str]]] | None = None
        self._event_files: tuple[str | None, str | None] = (None, None)
        try:
            if init_control is not None:
                self._adopt(init_control, start_timeout)
            else:
                self._start(start_timeout)
        except BaseException:
            self._teardown()
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def _start(self, start_timeout: float) -> None:
        image = spawner_image()
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
            try:
                request.payload.exe_fd = image
                self._spawner = self.container.attach_request(request, ["lxcbind-spawner"],
                                                              wire.EXEC_SPAWNER)
            except BaseException:   # raised before attach_request's own guard (idempotent)
                request.close()
                raise
        finally:
            theirs.close()
        self._hello(start_timeout)
        self._event_files = _cgroups.event_files(init)

    def _adopt(self, control: socket.socket, start_timeout: float) -> None:
        """Take over a spawner that runs as the container's init (``lxcbind-spawner --init``,
        see ``lxcbind.sandbox.initspawner``), connected to ``control``: no attach."""
        self._ctrl = control
        control.settimeout(_START_BOUND)
        # The process at the other end (the host's pid of the container's init, as the
        # sandbox checked when it accepted): no need to ask liblxc's monitor.
        creds = control.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        init = struct.unpack("=3i", creds)[0]   # struct ucred: pid, uid, gid
        try:
            self._spawner = _InitSpawner(init)
        except ProcessLookupError:
            raise SessionError(f"the init of {self.container.name!r} is gone") from None
        self._hello(start_timeout)
        self._event_files = _cgroups.event_files(init)

    def _hello(self, start_timeout: float) -> None:
        """Read the spawner's HELLO; what the host needs to check its START records."""
        ctrl, spawner = self._ctrl, self._spawner
        assert ctrl is not None and spawner is not None
        ready, _, _ = select.select([ctrl], [], [], start_timeout)
        data = ctrl.recv(64) if ready else None
        if data is None or len(data) != _RECORD.size:
            status = spawner.poll() if data is not None else None
            if data is None:
                raise SessionError(f"spawner in {self.container.name!r} did not start within "
                                   f"{start_timeout}s")
            error = spawner.exec_error
            raise SessionError(f"spawner in {self.container.name!r} failed to start "
                               f"(status {status}{f': {error}' if error else ''})"
                               f"{self.container.log_tail()}")
        kind, pid, version, _ = _RECORD.unpack(data)
        if kind != wire.REC_HELLO or version != wire.VERSION:
            raise SessionError("spawner spoke an unknown protocol")
        self.spawner_pid = pid
        self._spawner_host_pid = spawner.pid
        with open(f"/proc/{spawner.pid}/status") as f:
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
            if isinstance(spawner, _InitSpawner):
                # The container's init: it exits on that EOF, which stops the container; its
                # owner (the sandbox, closed next) stops it anyway, so no wait here.
                spawner.close()
                self._spawner = None
            elif spawner is not None:
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

    def __enter__(self) -> "Session":
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
        if isinstance(spawner, _InitSpawner):
            how = " (the container's init exited)" if spawner.poll() is not None else ""
        return self._fail(f"it is gone{how}")

    # -- spawning -------------------------------------------------------------------------

    def _send(self, argv: list[str], env: Mapping[str, str] | None, cwd: str | None,
              fds: Sequence[int], ctty: bool, user: _users.User | None = None
              ) -> SessionProcess:
        """Send one spawn request; returns the handle with the report socket (START not yet
        read).  ``fds`` = stdin, stdout, stderr, extra...; the caller closes its copies."""
        ctrl = self._ctrl
        if self._closed or ctrl is None:
            raise SessionError("session is closed")
        if self._broken is not None:
            raise self._broken
        if len(fds) - 3 > wire.MAX_EXTRA_FDS:
            raise ValueError(f"pass_fds: at most {wire.MAX_EXTRA_FDS} descriptors per command")
        strings = [os.fsencode(item) for item in (*argv, *environment(self._env, env))]
        flags = 0
        if cwd is not None:
            strings.append(os.fsencode(cwd))
            flags |= wire.FLAG_CWD
        if ctty:
            flags |= wire.FLAG_CTTY
        if user is not None:   # after cwd: "uid:gid:groups", set in the child before exec
            strings.append(user.wire().encode())
            flags |= wire.FLAG_USER
        data = b"\0".join(strings) + b"\0"
        envc = len(strings) - len(argv) - (cwd is not None) - (user is not None)
        memfd = -1
        if len(data) > wire.MAX_INLINE:
            flags |= wire.FLAG_MEMFD
            memfd = os.memfd_create("lxcbind-spawn", os.MFD_CLOEXEC)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            header = wire.HEADER.pack(wire.MAGIC, flags, len(argv), envc, len(fds) - 3,
                                      len(data), 0, 0)
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

    def _pty(self) -> "_pty.PtyPair":
        from lxcbind.proc import pty as _pty  # a terminal's: not on a pipe run's import path

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
              cwd: str | None = None, tty: bool = False, pass_fds: Sequence[int] = (),
              text: bool = False, encoding: str | None = None, errors: str | None = None,
              start_timeout: float = _START_BOUND) -> SessionProcess:
        """Start ``command`` (argv, or a str for ``/bin/sh -c``) and return its handle, shaped
        like ``subprocess.Popen``: ``proc.stdin``/``stdout``/``stderr`` are file objects for
        the streams given as ``PIPE`` (binary; text with ``text=True`` or ``encoding=``),
        ``proc.communicate(input, timeout)``, ``proc.iter_output()``, ``wait``/``poll``/
        ``send_signal``/``kill``; see ``SessionProcess``.

        Streams: ``PIPE``, ``DEVNULL``, an fd or file object, ``STDOUT`` for stderr (merged
        into stdout); ``None`` is /dev/null (never the caller's own fds 0-2), and one of the
        caller's terminals is refused (``ValueError``: the command could type into it).
        ``tty=True``: one pty (from the container's devpts when possible) for all three,
        controlling terminal of the command; its master is ``proc.master`` (a raw fd).
        ``pass_fds``: descriptors that become 3, 4, ... in the command (at most 8).  ``env``
        is merged over the session's environment; ``cwd`` None: the session's default.
        A missing program or cwd is not an exception: ``wait()`` gives 127/126 and
        ``exec_error`` says why.  Raises ``TypeError``/``ValueError`` on bad arguments,
        ``SpawnerDied`` if the spawner is gone or does not answer within ``start_timeout`` s.
        """
        call = "Session.spawn"
        opts = check_call(command, env=env, cwd=cwd, text=text, encoding=encoding,
                          errors=errors, call=call)
        stdio = Stdio(*check_stdio((stdin, stdout, stderr), call))
        bound = check_timeout(start_timeout, call) or _START_BOUND
        proc = self._spawn(opts, stdio, tty=bool(tty), pass_fds=check_fds(pass_fds, call),
                           start_timeout=bound)
        try:
            proc._open_files(opts.encoding, opts.errors)
        except BaseException:
            proc.close()
            raise
        return proc

    def _spawn(self, opts: CallOptions, stdio: Stdio = _PIPES, *, tty: bool = False,
               pass_fds: Sequence[int] = (), start_timeout: float = _START_BOUND,
               user: _users.User | None = None) -> SessionProcess:
        """``spawn`` after its checks, for ``opts.argv``; the handle's pipes stay raw fds
        (``proc._pipes``: the bridge, the shell and asyncio read them directly)."""
        assert opts.argv is not None
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
                for index, value in enumerate(stdio):
                    if value == PIPE:
                        r, w = pipe()
                        child, mine = (r, w) if index == 0 else (w, r)
                        child_fds.append(child)
                        ours.append((("stdin", "stdout", "stderr")[index], mine))
                        fds.append(child)
                    elif value == STDOUT:
                        fds.append(fds[1])
                    elif value == DEVNULL or value is None:
                        fds.append(self._devnull)
                    else:
                        fds.append(fileno_of(value, self._devnull))
            fds += list(pass_fds)
            for index, fd in enumerate(fds):
                if index >= 3 or not tty:  # (our own pty's slave is not the caller's)
                    refuse_host_terminal(fd, ("stdin", "stdout", "stderr")[index]
                                         if index < 3 else "pass_fds")
            env = opts.env if user is None else _users.merged_env(user, opts.env)
            proc = self._send(opts.argv, env, opts.cwd if opts.cwd is not None
                              else self.cwd, fds, ctty=tty, user=user)
            for name, fd in ours:
                proc._pipes[name] = proc._own(fd)
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

    def limit_events(self) -> _cgroups.Events:
        """The container's OOM-kill and refused-fork counters now (see ``with_limit_events``)."""
        return _cgroups.read_events(self._event_files)

    def with_limit_events(self, result: CompletedRun, before: _cgroups.Events) -> CompletedRun:
        """``result`` with ``oom_killed``/``pids_limited`` set from what changed since
        ``before``."""
        after = self.limit_events()
        if after == before:
            return result
        return _replace(result, oom_killed=after.oom_kills > before.oom_kills,
                        pids_limited=after.pids_max > before.pids_max)

    def run(self, command: Command, *, input: bytes | str | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            cwd: str | None = None, max_output: MaxOutput = None, text: bool = False,
            encoding: str | None = None, errors: str | None = None, check: bool = False,
            tty: bool = False, kill_grace: float = 2.0,
            on_output: OutputCallback | None = None, user: str | int | None = None
            ) -> CompletedRun:
        """Run ``command`` to completion and capture it (a str runs as ``/bin/sh -c``).

        The keywords are ``lxcbind.run``'s.  ``input`` is written to stdin, then EOF (None:
        empty stdin).  ``timeout`` (seconds; None: the session's default): SIGTERM to the
        command's process group, SIGKILL ``kill_grace`` s later; ``timed_out=True``.
        ``max_output``: per stream, keep head and tail of this many bytes (None: 16 MiB,
        ``lxcbind.DEFAULT_MAX_OUTPUT``; ``lxcbind.UNLIMITED``: everything).  ``text`` (or
        ``encoding``/``errors``): str results.  ``on_output(stream, chunk)`` is called on this
        thread as output arrives (``"stdout"``/``"stderr"``; str in text mode), whatever the
        cap keeps.  ``tty``: a pty, merged output in ``stdout``.  ``check``: raise
        ``lxcbind.CalledProcessError``/``TimeoutExpired``.  A missing program is a result (127,
        ``exec_error``); ``oom_killed``/``pids_limited`` say whether the container's limits
        struck while it ran.  The I/O is the bridge's, exactly as for ``Container.run``.

        Raises ``TypeError``/``ValueError`` on bad arguments (naming ``Session.run``),
        ``SpawnerDied``/``SessionError`` when the session cannot run commands.

        ``user``: run as another user of the container, a name, a uid or ``"uid:gid"``
        (``lxcbind.proc.users``): uid, gid, supplementary groups and HOME/USER/LOGNAME come
        from the container's own ``/etc/passwd`` and ``/etc/group``.  A session with a fixed
        ``uid`` (a policy's ``lxc.uid``) accepts only that user (``ValueError`` otherwise);
        an unknown name is a ``ValueError``.
        """
        opts = check_call(command, env=env, cwd=cwd, input=input, timeout=timeout,
                          max_output=max_output, text=text, encoding=encoding, errors=errors,
                          call="Session.run")
        if on_output is not None and not callable(on_output):
            raise TypeError("Session.run(): on_output must be a callable (stream, chunk)")
        spec = _users.check_user(user, "Session.run")
        return self._run(opts, check=check, tty=bool(tty),
                         kill_grace=check_grace(kill_grace, "Session.run"), on_output=on_output,
                         user=None if spec is None else self._user(spec, "Session.run"))

    def _user(self, spec: str, call: str) -> _users.User | None:
        """The user ``spec`` names in this container (None: the session's own user)."""
        files = [self._account_file(path, call) for path in ("/etc/passwd", "/etc/group")]
        return self._user_from(spec, files[0], files[1], call)

    def _user_from(self, spec: str, passwd: bytes, group: bytes,
                   call: str) -> _users.User | None:
        resolved = _users.resolve(spec, passwd, group, call)
        refusal = _users.refusal(spec, resolved, self.uid, self.gid, call)
        if refusal is not None:
            raise refusal
        return None if self.uid is not None else resolved

    def _account_file(self, path: str, call: str) -> bytes:
        """An account file of the container, read through this spawner (``b""`` if
        missing); ``ValueError`` when it cannot be read as a small regular file."""
        try:
            return self.get(path, timeout=10, max_size=_users.MAX_ACCOUNT_FILE)
        except FileNotFoundError:
            return b""
        except FileTransferError as exc:
            raise ValueError(f"{call}(): user: cannot read the container's {path}: "
                             f"{exc.strerror}") from None

    def _run(self, opts: CallOptions, *, check: bool = False, tty: bool = False,
             kill_grace: float = 2.0, on_output: OutputCallback | None = None,
             forward_signals: bool = False, user: _users.User | None = None) -> CompletedRun:
        """``run`` once checked.  ``forward_signals``: as ``lxcbind.run()`` on the main thread,
        SIGINT/SIGTERM/SIGHUP go to the command's group, then to this process after cleanup."""
        timeout = opts.timeout if opts.timeout is not None else self.timeout
        start = time.monotonic()
        bound = _START_BOUND if timeout is None else min(timeout + EXIT_GRACE, _START_BOUND)
        before = self.limit_events()
        proc = self._spawn(opts, Stdio(PIPE if opts.input else None), tty=tty,
                           start_timeout=bound, user=user)
        try:
            out = OutputBuffer(opts.max_output)
            err = OutputBuffer(opts.max_output)
            tees = [] if on_output is None else [
                Tee(buf, name, on_output, opts.encoding, opts.errors)
                for name, buf in (("stdout", out), ("stderr", err))]
            sinks: list[Writable] = [*tees] if tees else [out, err]
            timed_out, received = _bridge(proc, opts.input, sinks[0], sinks[1], timeout,
                                          kill_grace, forward_signals)
            for tee in tees:
                tee.finish()
            proc.wait()  # bounded: the command is gone, the spawner has EXIT_GRACE to say how
        finally:
            proc.close()
        assert proc.returncode is not None
        result = CompletedRun.captured(proc.args, proc.returncode, out, err,
                                       timed_out=timed_out, started=start,
                                       exec_error=proc.exec_error, timeout=timeout)
        if received is not None:
            signal.raise_signal(received)   # the caller's own disposition, after cleanup
        return self.with_limit_events(result, before).finished(opts.encoding, opts.errors, check)

    def _interact(self, opts: CallOptions, *, stdin: int = 0, stdout: int = 1,
                  stderr: int = 2, kill_grace: float = 2.0) -> CompletedRun:
        """``lxcbind.proc.runner.interact_run``'s pipe mode through this spawner: the caller's
        ``stdin`` copied to the command until EOF (bridged, never handed over), its output
        written to ``stdout``/``stderr`` as it comes; SIGINT/SIGTERM/SIGHUP go to the
        command's group, then to this process after cleanup (main thread).  The result's
        streams are empty: they went to the caller's fds."""
        timeout = opts.timeout if opts.timeout is not None else self.timeout
        start = time.monotonic()
        bound = _START_BOUND if timeout is None else min(timeout + EXIT_GRACE, _START_BOUND)
        before = self.limit_events()
        proc = self._spawn(opts, Stdio(), start_timeout=bound)
        try:
            timed_out, received = _bridge(proc, None, stdout, stderr, timeout, kill_grace,
                                          True, input_fd=stdin)
            proc.wait()
        finally:
            proc.close()
        assert proc.returncode is not None
        result = CompletedRun.captured(proc.args, proc.returncode, OutputBuffer(0),
                                       OutputBuffer(0), timed_out=timed_out, started=start,
                                       exec_error=proc.exec_error, timeout=timeout)
        if received is not None:
            signal.raise_signal(received)
        return self.with_limit_events(result, before)

    def map(self, commands: Iterable[Command], *, workers: int = 4,
            **run_keywords: Unpack[SessionRunKeywords]) -> list[CompletedRun]:
        """Run every command (with ``run``'s keywords) on ``workers`` threads; results in the
        order given.  A command that fails or times out is just its own result (unless
        ``check``: then the first error is raised once all have finished)."""
        check_keywords(run_keywords, "Session.map", SessionRunKeywords)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise TypeError(f"Session.map(): workers must be an int >= 1, not {workers!r}")
        items = list(commands)
        for item in items:   # every command checked before any runs
            check_call(item, call="Session.map")
        if workers <= 1 or len(items) <= 1:
            return [self.run(c, **run_keywords) for c in items]
        from concurrent.futures import ThreadPoolExecutor  # ~5 ms: not on a one-shot run's path

        with ThreadPoolExecutor(max_workers=min(workers, len(items)),
                                thread_name_prefix="lxcbind-map") as pool:
            futures = [pool.submit(self.run, c, **run_keywords) for c in items]
            return [f.result() for f in futures]

    def shell(self, *, program: str = "/bin/sh", env: Mapping[str, str] | None = None,
              cwd: str | None = None, restart: bool = False,
              user: str | int | _users.User | None = None) -> "Shell":
        """A persistent shell whose state (cwd, variables, functions) carries across calls
        (bash, dash, ash; see ``Shell``).  ``restart=True``: a shell that dies is replaced at
        once (its state is lost) and the call's result has ``shell_restarted=True``; otherwise
        calls raise ``ShellDied`` until ``Shell.restart()``.  ``user``: the shell runs as
        that user of the container (``run``'s ``user``), and so does each of its commands."""
        opts = check_call([program], env=env, cwd=cwd, call="Session.shell")
        if not isinstance(user, _users.User):
            spec = _users.check_user(user, "Session.shell")
            user = None if spec is None else self._user(spec, "Session.shell")
        env_ = opts.env if user is None else _users.merged_env(user, opts.env)
        from lxcbind.proc.shell import Shell

        return Shell(self, program=program, env=env_,
                     cwd=opts.cwd if opts.cwd is not None else self.cwd, restart=bool(restart),
                     user=user)

    def put(self, path: str | os.PathLike[str], data: bytes | str, *, parents: bool = False,
            timeout: float | None = 60.0) -> None:
        """Write ``data`` (str: UTF-8) to the file ``path`` in the container, created or
        truncated, as the session's user, through this spawner (no attach: the cost does not
        depend on the caller's memory).  A relative ``path`` is taken against the session's
        ``cwd`` (``/`` when it has none); ``parents``: create missing parent directories
        first (``mkdir -p``).  An existing ``path`` must be a regular file.

        Raises ``FileTransferError`` (the subclass its errno picks: ``FileNotFoundError``,
        ``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError``,
        ``FileExistsError``; ``EROFS`` ... as plain ``FileTransferError``),
        ``TypeError``/``ValueError`` on bad arguments, ``SessionError`` when the session
        cannot run commands."""
        opts, where = _files.put_call(path, data, cwd=self.cwd, parents=bool(parents),
                                      timeout=timeout, call="Session.put")
        _files.put_done(self._run(opts), where, opts.timeout)

    def get(self, path: str | os.PathLike[str], *, timeout: float | None = 60.0,
            max_size: int = 256 << 20) -> bytes:
        """The contents of the regular file ``path`` in the container (relative: against the
        session's ``cwd``), read as the session's user through this spawner; at most
        ``max_size`` bytes (``EFBIG`` beyond).  Raises ``FileTransferError`` as ``put``
        (``IsADirectoryError`` for a directory)."""
        opts, where = _files.get_call(path, cwd=self.cwd, max_size=max_size, timeout=timeout,
                                      call="Session.get")
        return _files.get_done(self._run(opts), where, max_size, opts.timeout)

    def put_file(self, path: str | os.PathLike[str], source: Any, *, parents: bool = False,
                 timeout: float | None = 600.0) -> None:
        """``put``, streamed: the file's contents come from ``source`` (a binary file object
        with ``fileno()``, or an fd), read from its descriptor's current offset to EOF and
        copied by this process's bridge into the command's stdin pipe, a chunk at a time (the
        container never gets the caller's descriptor).  Memory stays bounded whatever the
        size.  Raises as ``put``."""
        call = "Session.put_file"
        opts, where = _files.put_call(path, b"", cwd=self.cwd, parents=bool(parents),
                                      timeout=timeout, call=call)
        fd = _files.stream_fd(source, call, "source")
        _files.put_done(self._transfer(opts, input_fd=fd), where, opts.timeout)

    def get_file(self, path: str | os.PathLike[str], destination: Any, *,
                 timeout: float | None = 600.0, max_size: int = 1 << 62) -> None:
        """``get``, streamed: the contents of ``path`` are written to ``destination`` (a
        binary file object with ``fileno()``, or an fd) as they come, through the bridge;
        a file larger than ``max_size`` bytes is refused before anything is written
        (``EFBIG``).  Raises as ``get``."""
        call = "Session.get_file"
        opts, where = _files.get_call(path, cwd=self.cwd, max_size=max_size, timeout=timeout,
                                      call=call)
        fd = _files.stream_fd(destination, call, "destination")
        # The size is checked first (a regular file's wc -c is its st_size); a file that grows
        # after the check is cut at max_size.
        opts = opts._replace(argv=["/bin/sh", "-c", _files.GET_STREAM.format(max_size=max_size),
                                   "lxcbind-get", where])
        _files.put_done(self._transfer(opts, output_fd=fd), where, opts.timeout, "get")

    def _transfer(self, opts: CallOptions, *, input_fd: int | None = None,
                  output_fd: int | None = None) -> CompletedRun:
        """A file command whose stdin comes from ``input_fd`` / whose stdout goes to
        ``output_fd`` through the bridge (host descriptors never cross into the container);
        stderr is captured (the last 4 KiB)."""
        timeout = opts.timeout if opts.timeout is not None else self.timeout
        start = time.monotonic()
        bound = _START_BOUND if timeout is None else min(timeout + EXIT_GRACE, _START_BOUND)
        proc = self._spawn(opts, Stdio(PIPE if input_fd is not None else None),
                           start_timeout=bound)
        err = OutputBuffer(4096)
        try:
            timed_out, _ = _bridge(proc, None, output_fd if output_fd is not None
                                   else OutputBuffer(0), err, timeout, 2.0,
                                   input_fd=input_fd)
            proc.wait()
        finally:
            proc.close()
        assert proc.returncode is not None
        return CompletedRun.captured(proc.args, proc.returncode, OutputBuffer(0), err,
                                     timed_out=timed_out, started=start,
                                     exec_error=proc.exec_error, timeout=timeout)

    def __repr__(self) -> str:
        return (f"<lxcbind.Session {self.container.name!r} spawner={self.spawner_pid} "
                f"{'closed' if self._closed else 'open'}>")


class _InitSpawner:
    """The spawner when it is the container's init (``lxcbind.sandbox.initspawner``): not a
    child of ours, so watched through a pidfd, and its exit status is not ours to collect."""

    exec_error = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        """None while it runs; -1 once it has exited (the status is its parent's, liblxc's)."""
        if self.returncode is None and self._pidfd >= 0:
            ready, _, _ = select.select([self._pidfd], [], [], 0)
            if ready:
                self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and self._pidfd >= 0:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired("lxcbind-spawner --init", timeout or 0)
            self.returncode = -1
        return -1 if self.returncode is None else self.returncode

    def close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _bridge(proc: SessionProcess, input: bytes | None, out: Writable | int, err: Writable | int,
            timeout: float | None, kill_grace: float,
            forward_signals: bool = False,
            input_fd: int | None = None) -> tuple[bool, int | None]:
    """Drive a session command with the bridge, the one I/O loop of every run (the same
    input, EOF, drain, readiness, timeout and kill rules as ``Container.run``).  The bridge
    watches the host's pidfd of the command and signals its process group from the host, so
    the spawner is needed for nothing but the exit status.  Returns whether it timed out,
    and the signal it intercepted for the caller (``forward_signals``), if any."""
    master = proc.master
    if master is not None:
        outputs = [(master, out)]
        to_child: int | None = master
        input = input if input is not None else b""
    else:
        outputs = [(fd, sink) for fd, sink in ((proc._pipes.get("stdout"), out),
                                               (proc._pipes.get("stderr"), err))
                   if fd is not None]
        to_child = proc._take_pipe("stdin")  # the bridge closes a stdin pipe at input EOF
    pgid = proc.host_pid if proc._alive_leader() else None
    # No pidfd only when the command was reaped before we could open one: an always-readable
    # eventfd tells the bridge it has exited.
    exited = os.eventfd(1, os.EFD_CLOEXEC) if proc._pidfd < 0 else -1
    try:
        bridge = Bridge(proc._pidfd if exited < 0 else exited, pgid=pgid, to_child=to_child,
                        input=input, input_fd=input_fd, outputs=outputs, pty_master=master,
                        timeout=timeout,
                        kill_grace=kill_grace, handle_signals=forward_signals)
        try:
            bridge.run()
        finally:
            if master is None and bridge.to_child is not None:
                os.close(bridge.to_child)
    finally:
        if exited >= 0:
            os.close(exited)
    return bridge.timed_out, bridge.signal_received
