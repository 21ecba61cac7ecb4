"""``lxcbind run --warm`` handed to a warm server's CLI process (issue #23: the command line
within ``python3 -c pass`` + 25 ms, from an installed wheel too).

A one-shot CLI spends most of its time importing: the run itself, in a warm clone, costs a few
milliseconds, the modules it needs (the policy parser, the session, json, socket, typing) about
thirty.  ``lxcbind warm`` therefore also starts a *CLI server* (``lxcbind.cliserver``): a
process that has imported all of it once and forks a copy of itself for each run.  This module
is the other side, reached from ``_entry.main`` before anything else of lxcbind is imported:
when the caller asked for a warm run and a CLI server of the same installation answers, it
sends the server its command line, environment, umask, working directory and stdin, stdout and
stderr (``SCM_RIGHTS``), and waits.  The forked CLI runs ``lxcbind.cli`` exactly as this
process would have, on those descriptors, and the run's exit status comes back to become this
process's own (a death by signal N is re-raised here).  Signals sent to this process (SIGINT,
SIGTERM, SIGHUP, SIGQUIT) are forwarded to the forked CLI; if this process dies, the server
sends it SIGHUP, and it cleans up as after any fatal signal.

Not served, so that this process runs the CLI itself as before: no ``--warm`` (nor
``LXCBIND_WARM=1``), ``LXCBIND_WARM_CLI=0``, a terminal on stdin, stdout or stderr (an
interactive run keeps its own controlling terminal and job control), no CLI server of this
installation (``key``), a non-root caller, or a forked CLI that declines before reading or
writing anything: any command but ``run``, a policy on stdin, a policy with network access or
no warm server for the policy (a fresh container then starts in the caller's own process, with
its cgroup and limits).

Which server: ``<WARM_DIR>/cli-<key>-<pid>.sock``, where ``key()`` digests what the forked CLI
must share with this process to behave as it would: the interpreter (version, prefix,
optimization), this package's directory and a stamp of its files (count, size, modification
times: an edited or reinstalled lxcbind is not served by a server that imported the old one), the
environment variables read at import time (``LXCBIND_*`` but the per-run ones, ``PYTHON*``,
the locale's), the root directory and the mount, pid, network, user, ipc and uts namespaces.

Only modules built into the interpreter are imported here (``_socket``, ``_signal``,
``marshal``, ``_sha256``): Python's ``socket`` alone costs more than the rest of this path.
"""

import _socket
import marshal
import os
import sys

TYPE_CHECKING = False   # (typing itself costs milliseconds of import)
if TYPE_CHECKING:
    import signal as _signal  # the same functions, with stubs
else:
    import _signal

VERSION = 1
PREFIX = "cli-"
# Read per run, not at import (``cli._wants_warm``, this module): not part of ``key()``.
_PER_RUN = ("LXCBIND_WARM", "LXCBIND_WARM_CLI")
_FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# Replies: the forked CLI's pidfd (from the server), its wait status (from the server), or
# "not served" (from the forked CLI itself, before it read or wrote anything).
PIDFD, STATUS, DECLINED = b"P", b"S", b"D"


def warm_dir() -> str:
    """Where warm servers and CLI servers listen (``proc.warm.WARM_DIR``: root's, 0700)."""
    return os.environ.get("LXCBIND_WARM_DIR", "/run/lxcbind/warm")


def _stamp(path: str) -> tuple[int, int, int]:
    """(files, bytes, sum of their mtimes in ns) of the tree at ``path``, ``__pycache__``
    aside: any file added, removed, rewritten or touched changes it."""
    files = size = mtimes = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    f, s, m = _stamp(entry.path)
                    files, size, mtimes = files + f, size + s, mtimes + m
            else:
                st = entry.stat(follow_symlinks=False)
                files, size, mtimes = files + 1, size + st.st_size, mtimes + st.st_mtime_ns
    return files, size, mtimes


def key() -> str:
    """The digest described in the module docstring (32 hex digits)."""
    env = sorted((k, v) for k, v in os.environ.items()
                 if (k.startswith(("LXCBIND_", "PYTHON", "LC_")) or k == "LANG")
                 and k not in _PER_RUN)
    root = os.stat("/")
    spaces = tuple(os.readlink(f"/proc/self/ns/{ns}")
                   for ns in ("mnt", "pid", "net", "user", "ipc", "uts"))
    parts = (VERSION, sys.version, sys.prefix, sys.flags.optimize, _PACKAGE, _stamp(_PACKAGE),
             env, (root.st_dev, root.st_ino), spaces)
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # >= 3.12
    except ImportError:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    return str(sha256(marshal.dumps(parts)).hexdigest()[:32])


def wanted(argv: list[str]) -> bool:
    """Whether to try a CLI server: a warm run was asked for (``--warm`` before any ``--``, or
    ``LXCBIND_WARM=1``), not refused (``LXCBIND_WARM_CLI=0``), and stdin, stdout and stderr
    are open and none is a terminal."""
    if os.environ.get("LXCBIND_WARM_CLI") == "0":
        return False
    words = argv[:argv.index("--")] if "--" in argv else argv
    if "--warm" not in words and os.environ.get("LXCBIND_WARM") != "1":
        return False
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)   # a closed one: the CLI's own handling (and no other fd takes its number)
        return not any(os.isatty(fd) for fd in (0, 1, 2))
    except OSError:
        return False


def _connect() -> "_socket.socket | None":
    """A connection to a live CLI server of this installation whose peer is root."""
    directory = warm_dir()
    prefix = f"{PREFIX}{key()}-"
    try:
        names = sorted(n for n in os.listdir(directory) if n.startswith(prefix))
    except OSError:   # none made yet, or not root's to read
        return None
    for name in names:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(os.path.join(directory, name))
            if peer_uid(sock) == 0:
                return sock
        except OSError:   # a server that is gone (lxcbind gc removes its socket)
            pass
        sock.close()
    return None


def peer_uid(sock: "_socket.socket") -> int:
    """The uid of a unix socket's peer (``SO_PEERCRED``: struct ucred is pid, uid, gid)."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[4:8], sys.byteorder)


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, usable, 4)]
    return fds


def hand_over(argv: list[str]) -> None:
    """Run this command line in a CLI server and end this process with its status; return
    (having changed nothing) when it is not served."""
    if os.getuid() != 0 or not wanted(argv):
        return
    sock = _connect()
    if sock is None:
        return
    try:
        try:
            cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        mask = os.umask(0o077)
        os.umask(mask)
        request = marshal.dumps((VERSION, list(sys.argv), dict(os.environ), mask))
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))
        try:
            sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        except OSError:   # a closed stdio descriptor, an environment too large for a datagram
            return
        finally:
            os.close(cwd)
        _wait(sock)
    finally:
        sock.close()


def _wait(sock: "_socket.socket") -> None:
    """Forward signals to the forked CLI until its status comes; end with that status."""
    child = -1
    pending: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child < 0:
            pending.append(signum)   # sent once the server says which process it is
        else:
            try:
                _signal.pidfd_send_signal(child, signum)
            except OSError:   # it has just ended: its status is on the way
                pass

    previous = {sig: _signal.signal(sig, forward) for sig in _FORWARDED
                if _signal.getsignal(sig) != _signal.SIG_IGN}
    while True:
        try:
            data, ancillary, _, _ = sock.recvmsg(64, _socket.CMSG_SPACE(4))
        except OSError:
            data, ancillary = b"", []
        kind = data[:1]
        if kind == PIDFD and child < 0:
            fds = received_fds(ancillary)
            if fds:
                child = fds[0]
                for signum in pending:
                    forward(signum, None)
            continue
        if kind == DECLINED:
            for sig, handler in previous.items():   # nothing was read or written: run here
                _signal.signal(sig, handler)
            if child >= 0:
                os.close(child)
            for signum in pending:   # what arrived before the forked CLI was known: ours
                _signal.raise_signal(signum)
            return
        if kind == STATUS:
            status = marshal.loads(data[1:])
            break
        # The server ended before the run did (SIGKILLed): nobody can report its status.
        if child >= 0:
            forward(_signal.SIGHUP, None)   # it cleans up as on any fatal signal
        os.write(2, b"lxcbind: the warm CLI server ended before the run did; the run was "
                    b"stopped\n")
        os._exit(125)
    if os.WIFSIGNALED(status):   # as the CLI itself would have ended: by the same signal
        signum = os.WTERMSIG(status)
        _signal.signal(signum, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {signum})
        _signal.raise_signal(signum)
        os._exit(128 + signum)
    os._exit(os.waitstatus_to_exitcode(status))
