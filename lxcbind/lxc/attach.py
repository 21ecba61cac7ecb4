"""One process attached to a running container: options, descriptors, exit status.

``build_attach`` turns Python arguments into the C payload and liblxc options; ``Process`` owns
the resulting child.  The exec function is ``lxcbind_exec`` in ``_cdefs/shim.c``: no Python runs
in the forked child.  The attached process is the caller's own child (liblxc clones it with
CLONE_PARENT), so it is watched through a pidfd and must be reaped: an unreaped zombie makes the
container's ``stop()`` hang forever.  ``Process`` guarantees the reap (``wait``/``kill``/``close``
and, as a last resort, its finalizer).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import IO, Any

from lxcbind._lite import record
from lxcbind.errors import ExecError
from lxcbind.lxc._native import ffi, lib
from lxcbind.lxc.spawner_wire import STAGES
from lxcbind.result import exit_status as exit_status

FileArg = int | IO[Any] | None

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SANDBOX_UID = 1000  # the host rootfs's non-root user ("sandbox", home /home/sandbox)


def baseline_env(uid: int | None = None) -> dict[str, str]:
    """The environment every cleared-env command starts from (``env`` entries override it)."""
    return {
        "PATH": DEFAULT_PATH,
        "HOME": "/root" if not uid else ("/home/sandbox" if uid == SANDBOX_UID else "/"),
        "TERM": "dumb",
        "container": "lxc",
    }


def environment(base: Mapping[str, str], env: Mapping[str, str] | None) -> list[str]:
    """``KEY=VALUE`` entries of ``base`` with ``env`` merged over it (the one check of an
    entry before it reaches C: the public API checks names earlier, ``command.check_env``)."""
    merged = base
    if env:
        merged = dict(base)
        for key, value in env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                raise ValueError(f"invalid environment entry {key!r}")
            merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def decode_status_record(data: bytes, program: str,
                         cwd: str | None) -> tuple[bool, ExecError | None]:
    """Decode what the C exec function wrote on the status pipe.

    Returns ``(reached, error)``: ``reached`` is False when liblxc failed before our exec
    function ran (its setup failures exit 1, indistinguishable by status alone); ``error`` is
    set when the cwd, terminal or program could not be set up.
    """
    if not data:
        return False, None
    reached = data[:1] == bytes((lib.LXCBIND_STAGE_REACHED,))
    record = data[1:9]
    if len(record) < 8:
        return reached, None
    stage, err = struct.unpack("=ii", record)
    name = STAGES.get(stage, "exec")
    filename = cwd if name == "chdir" else program
    return reached, ExecError(name, err, filename or "")


# Unix98 pty slaves (/dev/pts/N) have majors 136-143 (the kernel's UNIX98_PTY_SLAVE_MAJOR and
# UNIX98_PTY_MAJOR_COUNT).  Their numbers are local to a devpts instance: the host's pts/1
# and a container's pts/1 share a device number, and the kernel opens a pts node only on
# its own devpts mount, so the mount (the file's st_dev) is part of which terminal it is.
_PTS_MAJORS = range(136, 144)
_TIOCGSID = 0x5429   # asm-generic/ioctls.h (x86, arm, riscv ...); Python's termios lacks it


def terminal_id(st: os.stat_result) -> tuple[int, int]:
    """Which terminal a stat of a terminal file names: ``(devpts instance, device)`` for a
    pty slave; ``(0, device)`` for every other terminal (a VT, a serial line, /dev/tty,
    /dev/console: one device number, one terminal, wherever the node lives)."""
    return (st.st_dev if os.major(st.st_rdev) in _PTS_MAJORS else 0, st.st_rdev)


def host_terminals() -> set[tuple[int, int]]:
    """The caller's terminals (``terminal_id``): any of its fds 0-2 that is a terminal, and
    /dev/tty itself (an fd opened on it acts on the opener's controlling terminal).  The
    controlling terminal is recognised by ``is_controlling_terminal``: opening /dev/tty
    gives /dev/tty's own inode, not the terminal's."""
    terminals = set()
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                terminals.add(terminal_id(os.fstat(fd)))
        except OSError:
            pass
    try:
        terminals.add(terminal_id(os.stat("/dev/tty")))
    except OSError:
        pass
    return terminals


def is_controlling_terminal(fd: int) -> bool:
    """True if ``fd`` is the caller's controlling terminal, or the master of the pty that
    is: TIOCGSID answers for a slave only when it is the caller's own controlling terminal,
    for a master with the session its slave controls."""
    try:
        sid = struct.unpack("i", fcntl.ioctl(fd, _TIOCGSID, b"\0" * 4))[0]
    except OSError:
        return False   # ENOTTY: not ours (or no session at all)
    return bool(sid > 0 and sid == os.getsid(0))


def refuse_host_terminal(fd: int, field: str) -> None:
    """Raise ``ValueError`` if ``fd`` is one of the caller's terminals: its controlling
    terminal, a terminal at its fds 0-2, or /dev/tty (``host_terminals``).

    A container process holding the host's terminal can type into it (TIOCSTI: the injected
    bytes are read by the user's shell once the command ends) and read what the user types.
    A pty created for the command (``tty=True``, the CLI's bridge) is not the caller's and
    is accepted, whatever its number (another devpts instance)."""
    if fd < 0 or not os.isatty(fd):
        return
    if terminal_id(os.fstat(fd)) in host_terminals() or is_controlling_terminal(fd):
        raise ValueError(f"{field}: fd {fd} is the caller's terminal, which a container "
                         "process must never get (it could type into it); use tty=True "
                         "for a terminal of its own, or pipes")


def cstrings(items: Sequence[str | bytes]) -> tuple[Any, list[Any]]:
    """A NULL-terminated ``char *[]`` and the buffers it points into (keep both alive)."""
    keep = [ffi.new("char[]", os.fsencode(item)) for item in items]
    array = ffi.new("char *[]", keep + [ffi.NULL])
    return array, keep


def fileno_of(value: FileArg, default: int) -> int:
    """The descriptor of an fd or file object; ``default`` for None."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    return value.fileno()


def pipe(size: int | None = None) -> tuple[int, int]:
    """A close-on-exec pipe, its capacity raised to ``size`` bytes when given (best effort:
    ``/proc/sys/fs/pipe-max-size`` may be lower)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    if size is not None:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            pass
    return r, w


@record(frozen=False)
class AttachRequest:
    """Everything one attach call needs, already marshalled for C (kept alive by this object)."""

    options: Any
    payload: Any
    keepalive: list[Any]
    # C memory (``int[nfds]``): [status pipe's read end, pidfd slot (-1), fds closed once
    # liblxc has forked...].  Kept there, and closed by ``lib.lxcbind_close_held``, so that a
    # signal handler raising mid-attach finds each one either open and listed or closed and
    # -1: ``Container.attach_request`` closes what is left, never one twice.
    fds: Any
    nfds: int
    program: str
    cwd: str | None

    def close(self) -> None:
        """Close what of the request is still open (for a caller whose attach never ran, or
        raised): idempotent, and never a descriptor twice."""
        lib.lxcbind_close_held(self.fds, self.nfds)


def build_attach(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    clear_env: bool,
    cwd: str | None,
    uid: int | None,
    gid: int | None,
    stdin: FileArg,
    stdout: FileArg,
    stderr: FileArg,
    namespaces: int | None,
    flags: int | None,
    ctty: int | None,
) -> AttachRequest:
    """Marshal an attach: fresh default options, the exec payload and a CLOEXEC status pipe."""
    if not argv:
        raise ValueError("argv must not be empty")
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of strings, not a single string")
    owned: list[int] = []
    keep: list[Any] = []
    try:
        # stdin is never fd 0 as liblxc sees it: with stdin_fd == 0 liblxc sets SIGINT and
        # SIGQUIT to SIG_IGN in the *calling* process, for good (lxc/lxc#1137).
        in_fd = fileno_of(stdin, -1)
        if in_fd < 0:
            in_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            owned.append(in_fd)
        elif in_fd == 0:
            in_fd = os.dup(0)
            owned.append(in_fd)
        # Never the caller's own stdout/stderr by default: they may be the host's terminal.
        out_fd = fileno_of(stdout, -1)
        err_fd = fileno_of(stderr, -1)
        if out_fd < 0 or err_fd < 0:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            owned.append(null)
            out_fd = null if out_fd < 0 else out_fd
            err_fd = null if err_fd < 0 else err_fd
        for field, fd in (("stdin", in_fd), ("stdout", out_fd), ("stderr", err_fd),
                          ("ctty", -1 if ctty is None else ctty)):
            refuse_host_terminal(fd, field)

        if clear_env:
            base = baseline_env(uid)
        else:
            base = dict(os.environ)
            base["container"] = "lxc"
        envp, env_keep = cstrings(environment(base, env))
        argv_c, argv_keep = cstrings(list(argv))
        keep += [envp, env_keep, argv_c, argv_keep]

        status_read, status_write = pipe()
        owned += (status_write, status_read)   # the read end too, until it is in ``held``

        payload = ffi.new("struct lxcbind_exec *")
        payload.file = argv_keep[0]
        payload.argv = argv_c
        payload.envp = envp
        if cwd is not None:
            cwd_c = ffi.new("char[]", os.fsencode(cwd))
            keep.append(cwd_c)
            payload.cwd = cwd_c
        else:
            payload.cwd = ffi.NULL
        payload.ctty_fd = -1 if ctty is None else ctty
        payload.status_fd = status_write
        payload.exe_fd = -1

        options = ffi.new("lxc_attach_options_t *")
        lib.lxcbind_attach_options_init(options)
        if flags is not None:
            options.attach_flags = flags
        if namespaces is not None:
            options.namespaces = namespaces
        # The host environment never reaches the container: liblxc clears it, and the exec
        # function hands the exact environment to execve (so values never sit in an argv).
        options.env_policy = lib.LXC_ATTACH_CLEAR_ENV
        root = ffi.new("char[]", b"/")  # liblxc would otherwise try the caller's host cwd
        keep.append(root)
        options.initial_cwd = root
        if uid is not None:
            options.uid = uid
        if gid is not None:
            options.gid = gid
        options.stdin_fd = in_fd
        options.stdout_fd = out_fd
        options.stderr_fd = err_fd
        held = ffi.new("int[]", [status_read, -1, *owned[:-1]])
        return AttachRequest(options, payload, keep, held, len(owned) + 1, str(argv[0]), cwd)
    except BaseException:
        for fd in owned:
            os.close(fd)
        raise


def _reap(pid: int) -> int | None:
    """waitpid retried on EINTR; None when the child was already reaped elsewhere."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)  # -N for signal N, as subprocess


class Process:
    """A command running in a container: the caller's child, watched through a pidfd.

    ``returncode`` follows ``subprocess``: the exit code, or ``-N`` after signal N;
    ``exit_status`` is the shell form (128+N).  When the command never started (missing cwd,
    program not found or not executable) ``returncode`` is 126/127 and ``exec_error`` says why,
    which is how a missing program is told apart from a program that itself exits 127.
    ``attach_failed`` is True when liblxc failed inside the child before the command could be
    set up (its status is then 1).

    Thread-safety: ``wait``/``poll`` may be called from several threads; exactly one reaps.
    """

    def __init__(self, pid: int, held: Any, program: str, cwd: str | None) -> None:
        """``held``: an attach request's ``fds`` (C ``int[]``), whose first two the Process
        owns from here: the status pipe's read end, and the slot its pidfd is opened into
        (in C, so that no raising signal handler can come between the open and the record)."""
        self.pid = pid
        self.args: Sequence[str] = ()
        self.returncode: int | None = None
        self.exec_error: ExecError | None = None
        self.attach_failed = False
        self._program = program
        self._cwd = cwd
        self._held = held
        self._lock = threading.Lock()
        self.pidfd = -1
        # Before the pidfd exists: from here on a dropped Process closes both.
        self._finalizer = weakref.finalize(self, Process._finalize, pid, held)
        lib.lxcbind_pidfd_open_into(pid, held + 1)
        self.pidfd = held[1]

    @property
    def _status_read(self) -> int:
        return int(self._held[0])

    @staticmethod
    def _finalize(pid: int, held: Any) -> None:
        # Backstop for a leaked handle: never leave a zombie (it would block stop()).
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)
        lib.lxcbind_close_held(held, 2)

    def fileno(self) -> int:
        """The pidfd: readable once the process has exited (for select/epoll)."""
        return self.pidfd

    @property
    def exit_status(self) -> int | None:
        return None if self.returncode is None else exit_status(self.returncode)

    def _finish(self, returncode: int | None) -> None:
        if returncode is None:  # reaped by someone else (a waitpid(-1) elsewhere)
            returncode = 255
        try:
            data = os.read(self._status_read, 64)
        except OSError:
            data = b""
        reached, error = decode_status_record(data, self._program, self._cwd)
        self.exec_error = error
        self.attach_failed = not reached
        self.returncode = returncode
        self._finalizer.detach()
        lib.lxcbind_close_held(self._held, 2)
        self.pidfd = -1

    def poll(self) -> int | None:
        """The return code if the process has exited (reaping it), else None."""
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    self._finish(None)
                else:
                    if pid:
                        self._finish(os.waitstatus_to_exitcode(status))
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and reap; ``subprocess.TimeoutExpired`` after ``timeout`` seconds.
        Safe against a concurrent ``close``/``wait`` (which may reap and close the pidfd)."""
        if timeout is None:
            with self._lock:
                if self.returncode is None:
                    self._finish(_reap(self.pid))
                assert self.returncode is not None
                return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            with self._lock:  # our own copy: another thread may close the pidfd meanwhile
                watch = os.dup(self.pidfd) if self.pidfd >= 0 else -1
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(list(self.args), timeout)
                if watch >= 0:
                    select.select([watch], [], [], left)
                else:
                    time.sleep(min(left, 0.01))
            finally:
                if watch >= 0:
                    os.close(watch)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the process (through its pidfd: no pid-reuse race).  No-op once reaped."""
        with self._lock:
            if self.returncode is not None:
                return
            try:
                if self.pidfd >= 0:
                    signal.pidfd_send_signal(self.pidfd, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def signal_group(self, sig: int) -> None:
        """Signal the process's whole process group (the exec function made it a session
        leader, so the group is everything it started that did not leave it)."""
        with self._lock:
            if self.returncode is not None:
                return
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill (if still running) and reap.  Idempotent."""
        if self.returncode is None:
            self.kill()
            self.wait()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lxcbind.Process pid={self.pid} returncode={self.returncode}>"
