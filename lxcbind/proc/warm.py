"""The client of a warm server: one clone of a template that outlives the call (issue #23).

A warm server (``lxcbind.sandbox.warm``, ``python -m lxcbind warm POLICY.json``) keeps one
template container of a policy and clones made ahead.  ``open_clone(policy)`` asks the server
for that policy for one clone and returns a ``WarmSession`` on it: the clone's spawner channel
and a pidfd of its init come over the server's socket (``SCM_RIGHTS``), and the commands run
through the same ``Session`` code as a Pool clone's, in this process.  Closing the session
closes the channel (the spawner kills what its commands left and exits) and the connection,
and the server tears the clone down: this process never waits for it, and a client that dies
closes both all the same (the kernel closes its descriptors).  ``None`` when no server serves
the policy: the caller runs a fresh container instead.

Which server: the socket ``<WARM_DIR>/<key>.sock``, ``key = template_key(policy)``, a digest of
every part of the policy the template depends on: all of it but ``process`` (command, env,
cwd, timeout), ``lxc.limits`` and ``lxc.uid``/``lxc.gid``, which each clone may have of its
own (the server makes such a clone on demand; the ready ones are its own policy's).  Image
references are compared as written.

Who may talk to whom: ``WARM_DIR`` is root's, mode 0700; the client checks that the server is
uid 0 (``SO_PEERCRED``), the server that the client is.  Nothing here loads liblxc's binding
beyond what ``proc.session`` imports; the policy is not sent, only the key and the parts a
clone may have of its own (the server rebuilds the policy from its own).

Wire (``SOCK_SEQPACKET``, one datagram each way): the request is JSON (``request``); the
reply JSON (``Reply``) with four descriptors: the spawner channel, a pidfd of the clone's
init, its ``/dev/pts`` (-1 if unavailable: a host pty is used) and its root (for
``disk_limited``), or ``{"error": ..., "field": ...}`` without descriptors.  Then the client
sends nothing more; its close (or death) is the end of the clone.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from lxcbind._cliclient import PREFIX as CLI_PREFIX
from lxcbind._cliclient import peer_uid, received_fds, warm_dir
from lxcbind._lite import replace, sha256_hex
from lxcbind.command import CallOptions, CommandDefaults
from lxcbind.errors import LxcError, SessionError
from lxcbind.lxc.container import Container
from lxcbind.policy.model import Limits, Policy, Process
from lxcbind.proc.session import Session, _InitSpawner
from lxcbind.result import CompletedRun, filesystem_full

__all__ = ["WARM_DIR", "WarmSession", "open_clone", "socket_path", "sweep", "template_key"]

WARM_DIR = warm_dir()
VERSION = 1
MAX_MESSAGE = 1 << 20        # a request or reply (the env of a policy can be large)
_FDS = 4                     # channel, pidfd, devpts, root

Log = Callable[[str], None]


def template_key(policy: Policy) -> str:
    """The digest of what a warm template of ``policy`` depends on (the module docstring)."""
    base = replace(policy, process=Process(""), origin="", warnings=(),
                   lxc=replace(policy.lxc, limits=Limits(), uid=None, gid=None))
    return sha256_hex(repr(base).encode())[:32]


def socket_path(key: str) -> str:
    return os.path.join(WARM_DIR, f"{key}.sock")


def request(policy: Policy, key: str) -> dict[str, Any]:
    """What a client sends: the key and the parts of its policy a clone may have of its own."""
    process, lxc = policy.process, policy.lxc
    return {"v": VERSION, "key": key,
            "process": {"commandLine": process.command_line, "cwd": process.cwd,
                        "env": [list(item) for item in process.env],
                        "timeoutMs": process.timeout_ms},
            "limits": {"memory": lxc.limits.memory, "pids": lxc.limits.pids,
                       "cpu": lxc.limits.cpu, "disk": lxc.limits.disk},
            "uid": lxc.uid, "gid": lxc.gid}


def sweep() -> list[str]:
    """Remove the sockets and lock files of servers that are gone (SIGKILLed): those whose
    lock nobody holds, and the CLI servers' sockets nobody listens on.  Returns the paths
    removed."""
    removed: list[str] = []
    try:
        names = os.listdir(WARM_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in names:
        if name.startswith(CLI_PREFIX) and name.endswith(".sock"):   # lxcbind.cliserver's
            path = os.path.join(WARM_DIR, name)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
                try:
                    probe.connect(path)
                except ConnectionRefusedError:   # nobody listens: its server was SIGKILLed
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed.append(path)
                except OSError:
                    pass
            continue
        if not name.endswith(".lock"):
            continue
        lock = os.path.join(WARM_DIR, name)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue   # a live server's
        try:
            for path in (lock[:-5] + ".sock", lock):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
        finally:
            os.close(fd)
    return removed


class _CloneName(Container):
    """What a Session needs of its container, for a clone this process has no liblxc handle
    of: its name (for messages) and its devpts (for ptys that are ``/dev/pts/N`` inside)."""

    def __init__(self, name: str, devpts: int) -> None:   # no liblxc handle: not Container's
        self.name = name
        self._devpts = devpts
        self._c = None

    @property
    def init_pid(self) -> int | None:
        return None

    @property
    def defined(self) -> bool:
        return False

    def devpts_fd(self) -> int:
        if self._devpts < 0:
            raise LxcError("devpts_fd", self.name, errno.ENODEV)   # a host pty then
        return os.dup(self._devpts)

    def log_tail(self, lines: int = 20) -> str:
        return ""

    def close(self) -> None:
        fd, self._devpts = self._devpts, -1
        if fd >= 0:
            os.close(fd)


class _HandedSpawner(_InitSpawner):
    """The clone's init, watched through the pidfd the server handed over."""

    def __init__(self, pid: int, pidfd: int) -> None:   # the pidfd is given: not opened here
        self.pid = pid
        self.returncode = None
        self._pidfd = pidfd


class _Connection:
    """The session's owner: closing it tells the server the clone can go."""

    def __init__(self, sock: socket.socket, root: int) -> None:
        self.sock = sock
        self.root = root

    def close(self) -> None:
        root, self.root = self.root, -1
        if root >= 0:
            os.close(root)
        self.sock.close()


class WarmSession(Session):
    """A Session on a clone a warm server handed over (``open_clone``).  ``defaults``: its
    commands' env, cwd, timeout and user (the client's policy's, as the server resolved
    them); ``argv``: the policy's own command; ``image``: the image id for results."""

    def __init__(self, reply: dict[str, Any], fds: list[int], conn: socket.socket) -> None:
        # ``reply`` was checked (``_checked``); from here on every descriptor has an owner
        # that closes it, also when the Session cannot be set up.
        channel, pidfd, devpts, root = fds
        if not reply["devpts"]:   # a stand-in descriptor: the clone's devpts could not be had
            os.close(devpts)
            devpts = -1
        self._reply = reply
        self._handed = (reply["pid"], pidfd)
        self.defaults = CommandDefaults(reply["env"], reply["cwd"], reply["timeout"],
                                        reply["uid"], reply["gid"])
        self.argv: list[str] | None = reply["argv"]
        self.image: str | None = reply["image"]
        self._root_fd = root
        self._taken = False   # the pidfd: _adopt's once it ran
        owner = _Connection(conn, root)
        d = self.defaults
        try:
            super().__init__(_CloneName(reply["clone"], devpts),
                             init_control=socket.socket(fileno=channel),
                             env=d.env or None, cwd=d.cwd, timeout=d.timeout, uid=d.uid,
                             gid=d.gid)
        except BaseException:
            if not self._taken:
                os.close(pidfd)
            owner.close()
            raise
        self._owner = owner

    def _adopt(self, control: socket.socket, start_timeout: float) -> None:
        # The server read the spawner's HELLO when it made the clone, and says what it said.
        pid, pidfd = self._handed
        self._spawner = _HandedSpawner(pid, pidfd)
        self._taken = True
        self._ctrl = control
        control.settimeout(10.0)
        reply = self._reply
        self.spawner_pid = int(reply["spawner_pid"])
        self._spawner_host_pid = pid
        self._nsdepth = int(reply["nsdepth"])
        memory, pids = reply["events"]
        self._event_files = (memory, pids)

    def _teardown(self) -> None:
        try:
            super()._teardown()
        finally:
            container = self.container
            if isinstance(container, _CloneName):
                container.close()

    def with_limit_events(self, result: CompletedRun, before: Any) -> CompletedRun:
        result = super().with_limit_events(result, before)
        if filesystem_full(self._root_fd):
            result = replace(result, disk_limited=True)
        return result if self.image is None else replace(result, image=self.image)

    def call(self, opts: CallOptions) -> tuple[CallOptions, CommandDefaults]:
        """``opts`` with the command (the policy's own when it names none), env, cwd and
        timeout resolved against the defaults, as ``Sandbox._run`` does."""
        argv = opts.argv if opts.argv is not None else self.argv
        if argv is None:
            from lxcbind.errors import PolicyError

            raise PolicyError("process.commandLine", "missing, and no command given")
        d = self.defaults.overridden(opts)
        return opts._replace(argv=argv, env=d.env, cwd=d.cwd, timeout=d.timeout), d

    def run_call(self, opts: CallOptions, *, check: bool = False,
                 tty: bool = False) -> CompletedRun:
        """``lxcbind.run``'s command, captured (``Sandbox._run`` on an init spawner)."""
        resolved, _ = self.call(opts)
        return self._run(resolved, check=check, tty=tty, forward_signals=True)

    def interact_call(self, opts: CallOptions, *, tty: bool) -> CompletedRun:
        """The CLI's command bridged to this process's stdio (``Sandbox.interact``): pipes,
        or with ``tty`` a pty (from the clone's devpts) in raw mode that follows the host
        terminal's size."""
        resolved, _ = self.call(opts)
        if not tty:
            return self._interact(resolved)
        return self._interact_tty(resolved)

    def _interact_tty(self, opts: CallOptions) -> CompletedRun:
        import signal
        import time

        from lxcbind.proc import pty as _pty
        from lxcbind.proc.bridge import Bridge
        from lxcbind.proc.spawned import Stdio
        from lxcbind.result import OutputBuffer

        env = dict(opts.env)
        if "TERM" not in env and os.environ.get("TERM"):
            env["TERM"] = os.environ["TERM"]   # the program draws on the caller's terminal
        host_tty = 0 if os.isatty(0) else (1 if os.isatty(1) else None)
        start = time.monotonic()
        before = self.limit_events()
        proc = self._spawn(opts._replace(env=env), Stdio(), tty=True)
        try:
            master = proc.master
            assert master is not None
            _pty.set_winsize(master, *_pty.terminal_size(0, 1))
            raw = _pty.RawMode(0) if os.isatty(0) else None
            bridge = Bridge(proc._pidfd, pgid=proc.host_pid, to_child=master, input_fd=0,
                            outputs=[(master, 1)], pty_master=master, timeout=opts.timeout,
                            kill_grace=2.0, handle_signals=True, raw_mode=raw,
                            winsize_from=host_tty)
            if raw is not None:
                with raw:
                    bridge.run()
            else:
                bridge.run()
            proc.wait()
        finally:
            proc.close()
        assert proc.returncode is not None
        result = CompletedRun.captured(proc.args, proc.returncode, OutputBuffer(0),
                                       OutputBuffer(0), timed_out=bridge.timed_out,
                                       started=start, exec_error=proc.exec_error,
                                       timeout=opts.timeout)
        if bridge.signal_received is not None:
            signal.raise_signal(bridge.signal_received)
        return self.with_limit_events(result, before)


def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One reply and the descriptors that came with it (closed here if it is malformed)."""
    message, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE,
                                              socket.CMSG_SPACE(_FDS * 4))
    fds = received_fds(ancdata)
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or not message:
            raise SessionError("the warm server's reply was cut short")
        reply = json.loads(message)
        if not isinstance(reply, dict):
            raise SessionError("the warm server sent a malformed reply")
        if "error" not in reply and len(fds) != _FDS:
            raise SessionError("the warm server sent no clone")
    except (SessionError, ValueError) as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, SessionError):
            raise
        raise SessionError("the warm server sent a malformed reply") from None
    return reply, fds


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply's fields with their types checked (``SessionError`` otherwise)."""
    def typed(value: Any, kinds: Any, name: str) -> Any:
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in (
                kinds if isinstance(kinds, tuple) else (kinds,)):
            raise SessionError(f"the warm server sent a malformed reply ({name})")
        return value

    out = {name: typed(reply.get(name), int, name) for name in ("pid", "spawner_pid",
                                                                 "nsdepth")}
    out["clone"] = typed(reply.get("clone"), str, "clone")
    out["cwd"] = typed(reply.get("cwd"), str, "cwd")
    env = typed(reply.get("env"), dict, "env")
    out["env"] = {typed(k, str, "env"): typed(v, str, "env") for k, v in env.items()}
    timeout = typed(reply.get("timeout"), (int, float, type(None)), "timeout")
    out["timeout"] = None if timeout is None else float(timeout)
    out["uid"] = typed(reply.get("uid"), (int, type(None)), "uid")
    out["gid"] = typed(reply.get("gid"), (int, type(None)), "gid")
    argv = typed(reply.get("argv"), (list, type(None)), "argv")
    out["argv"] = None if argv is None else [typed(a, str, "argv") for a in argv]
    out["image"] = typed(reply.get("image"), (str, type(None)), "image")
    out["devpts"] = reply.get("devpts", True) is not False
    events = typed(reply.get("events"), list, "events")
    if len(events) != 2:
        raise SessionError("the warm server sent a malformed reply (events)")
    out["events"] = [typed(e, (str, type(None)), "events") for e in events]
    return out


def open_clone(policy: Policy, *, log: Log | None = None,
               timeout: float = 30.0) -> WarmSession | None:
    """A session on a clone from the warm server for ``policy``, or None (said through
    ``log``) when there is none, it is not root's, or it could not make the clone: the
    caller then runs a fresh container, with the same result."""
    say = log or (lambda message: None)
    key = template_key(policy)
    path = socket_path(key)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            say(f"no warm server for this policy (key {key}): a fresh container")
            sock.close()
            return None
        if peer_uid(sock) != 0:   # WARM_DIR is root's: only a misconfigured host gets here
            say(f"the warm server at {path} is not root's: a fresh container")
            sock.close()
            return None
        sock.settimeout(timeout)
        sock.send(json.dumps(request(policy, key)).encode())
        reply, fds = _receive(sock)
        if "error" in reply:
            field = reply.get("field")
            say(f"the warm server made no clone ({f'{field}: ' if field else ''}"
                f"{reply['error']}): a fresh container")
            sock.close()
            return None
        try:
            reply = _checked(reply)
        except SessionError:
            for fd in fds:
                os.close(fd)
            raise
        sock.settimeout(None)
    except OSError as exc:
        say(f"the warm server did not answer ({exc}): a fresh container")
        sock.close()
        return None
    except SessionError as exc:
        say(f"{exc}: a fresh container")
        sock.close()
        return None
    return WarmSession(reply, fds, sock)
