"""A warm server: a Pool's template that outlives the call, for ``run(warm=True)`` and
``lxcbind run --warm`` (issue #23).

``WarmServer(policy, ready=N, idle=S)`` starts one template of ``policy`` (named
``<containerId>-warm``, so that a fresh container of the policy can run meanwhile) and keeps
``N`` clones of it made ahead (a ``Pool(policy, size=N, clones=True)``: the same template, clones,
limits, seccomp filter, ownership record and teardown as any Pool's), and listens on
``proc.warm.socket_path(key)`` in ``proc.warm.WARM_DIR`` (root's, 0700).  ``serve()`` answers
clients until ``stop()``, a fatal signal (the caller's ``cleanup.FatalSignals``), or ``idle``
seconds without a client; ``close()`` then removes everything: the clients' clones, the ready
ones, the template (with every cgroup of it), the socket and the lock.

One client connection, on a thread of its own: the peer must be uid 0 (``SO_PEERCRED``);
its request (``proc.warm.request``) must carry this server's key; its policy is this server's
with the client's process, limits and user.  A client of the server's own shape gets a ready
clone, any other a clone made for it (its limits written into its cgroup and read back).
The reply hands the clone's spawner channel, a pidfd of its init, its devpts and its root
over (``SCM_RIGHTS``); the server keeps no copy of the channel.  When the connection closes
(the client is done, crashed or was SIGKILLed) the clone is torn down (SIGKILL of its init,
its cgroup removed) by the Pool's reaper or this thread: never on the client's path.

A second server for the same key is refused (``SandboxError``): the server holds an ``flock``
on ``<key>.lock`` for its life.  A SIGKILLed server leaves its template's ownership record
(``lxcbind gc``, or the next run's garbage collection, destroys the template and every clone
in it), its socket and its lock file (``proc.warm.sweep``, from ``lxcbind gc``: a socket
nobody listens on only makes clients fall back to a fresh container meanwhile).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import select
import socket
import stat
import threading
import time
from typing import Any

from lxcbind._lite import replace
from lxcbind.errors import LxcbindError, SandboxError
from lxcbind.policy.model import Limits, Policy, Process
from lxcbind.proc import warm as wire
from lxcbind.sandbox.core import Log, PolicyLike, Session, _warning, as_policy
from lxcbind.sandbox.pool import Pool

__all__ = ["WarmServer"]

_NAME_MAX = 4096


class _Refused(Exception):
    """A request this server does not serve: (message, policy field or None)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _private_dir() -> str:
    """``WARM_DIR``, made if missing; refused unless it is a root-owned 0700 directory (a
    socket in a directory others may write could be replaced by theirs)."""
    path = wire.WARM_DIR
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise SandboxError(f"{path} must be a directory of root's with mode 0700 "
                           f"(it is {stat.filemode(st.st_mode)}, uid {st.st_uid})")
    return path


def _lock(path: str) -> int:
    """An ``flock``ed descriptor of ``path`` (still the file at ``path`` once locked), or
    ``SandboxError`` naming the server that holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SandboxError(f"a warm server for this policy is already running (pid "
                               f"{holder}, {path[:-5]}.sock); stop it first") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:   # not a file a closing server unlinked after we opened it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _number(value: Any, kinds: tuple[type, ...], field: str) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise _Refused(f"expected a number or null, got {type(value).__name__}", field)
    return value


class WarmServer:
    """See the module docstring.  ``ValueError`` naming the policy field when clones cannot
    serve ``policy``; ``SandboxError`` when another server serves its key."""

    def __init__(self, policy: PolicyLike, *, ready: int = 2, idle: float | None = None,
                 log: Log | None = None, start_timeout: float = 30.0) -> None:
        from lxcbind.sandbox.template import refusal

        if isinstance(ready, bool) or not isinstance(ready, int) or ready < 1:
            raise ValueError(f"warm server: ready must be an int >= 1, got {ready!r}")
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float))
                                 or not idle > 0):
            raise ValueError(f"warm server: idle must be > 0 seconds, got {idle!r}")
        self.policy = as_policy(policy, command_required=False)
        why = refusal(self.policy)
        if why is not None:
            raise ValueError(f"warm server: {why[0]}: {why[1]}")
        self.key = wire.template_key(self.policy)   # before Pool resolves an image reference
        self.path = wire.socket_path(self.key)
        self.idle = idle
        self._log = log or (lambda message: None)
        self._lock = threading.Lock()
        self._active: dict[socket.socket, threading.Thread] = {}
        self._last = time.monotonic()
        self._stopping = False
        self._closed = False
        self.served = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._pool: Pool | None = None
        self._template_gone = -1
        self._listener: socket.socket | None = None
        self._lock_fd = -1
        try:
            self._lock_fd = _lock(os.path.join(_private_dir(), f"{self.key}.lock"))
            self._log(f"starting the template of {self.policy.origin} (key {self.key})")
            # Not the policy's containerId: a fresh container of the policy (a run without
            # --warm) would wait for that name as long as the server runs.
            cid = self.policy.container_id
            named = replace(self.policy, container_id=f"{cid[:59]}-warm" if cid else None)
            self._pool = Pool(named, size=ready, clones=True, start_timeout=start_timeout)
            assert self._pool._template is not None
            self.template = self._pool._template
            from lxcbind.sandbox.clone import Shape

            self._shape = Shape.of(self.template)
            # Readable once the template's init (the cloner) is gone: no more clones.
            self._template_gone = os.pidfd_open(self.template.init_pid)
            listener = socket.socket(socket.AF_UNIX,
                                     socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            self._listener = listener
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)   # a SIGKILLed server's (we hold the key's lock)
            listener.bind(self.path)
            os.chmod(self.path, 0o600)
            listener.listen(64)
        except BaseException:
            self.close()
            raise
        self._log(f"serving {self.path}")

    # -- serving -------------------------------------------------------------------------------

    def serve(self) -> None:
        """Answer clients until ``stop()``, or ``idle`` seconds without one (the caller's
        signal handling may interrupt it: ``close()`` follows either way); ``SandboxError``
        when the template stops (killed from the host: it never runs a workload)."""
        listener = self._listener
        if listener is None:
            raise SandboxError("the warm server is closed")
        while not self._stopping:
            wait = None
            if self.idle is not None:
                with self._lock:
                    quiet = not self._active
                    left = self._last + self.idle - time.monotonic()
                if quiet and left <= 0:
                    self._log(f"no client for {self.idle:g}s: stopping")
                    return
                wait = max(left, 0.05) if quiet else self.idle
            ready, _, _ = select.select([listener.fileno(), self._wake_r,
                                         self._template_gone], [], [], wait)
            if self._template_gone in ready:
                raise SandboxError(f"the warm server's template {self.template.name!r} "
                                   "stopped (its cloner exited): no more clones")
            if listener.fileno() in ready:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.set_inheritable(False)
                thread = threading.Thread(target=self._serve_one, args=(conn,),
                                          name="lxcbind-warm-client", daemon=True)
                with self._lock:
                    self._active[conn] = thread
                    self._last = time.monotonic()
                thread.start()

    def stop(self) -> None:
        """Make ``serve()`` return (from any thread)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _serve_one(self, conn: socket.socket) -> None:
        session: Session | None = None
        pooled = False
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid, uid, _ = array.array("i", creds)
            conn.settimeout(10.0)
            data = conn.recv(wire.MAX_MESSAGE)   # first: a reply before it would reset it
            if uid != 0:
                self._log(f"refused a client of uid {uid} (pid {pid}): only root may connect")
                self._reply(conn, {"error": "only root may use a warm server"})
                return
            try:
                policy = self._client_policy(data)
                shape = self._shape_of(policy)
                pooled = shape is None
                session = self._clone(shape)
            except _Refused as exc:
                self._reply(conn, {"error": str(exc), "field": exc.field})
                return
            except (LxcbindError, OSError) as exc:
                self._log(f"could not make a clone: {exc}")
                self._reply(conn, {"error": f"could not make a clone: {exc}"})
                return
            self._hand_over(conn, session, policy)
            self.served += 1
            kind = "a ready clone" if pooled else "a clone made for its limits and user"
            self._log(f"client pid {pid}: {kind}")
            conn.settimeout(None)
            while conn.recv(16):   # the client sends nothing more: EOF is its end
                pass
        except OSError:
            pass   # the client went away (or stop() shut the connection): the clone goes
        except Exception as exc:  # noqa: BLE001 - one client's failure is not the server's
            _warning(f"warm server: a client's request failed: {type(exc).__name__}: {exc}")
        finally:
            if session is not None:
                self._retire(session, pooled)
            conn.close()
            with self._lock:
                self._active.pop(conn, None)
                self._last = time.monotonic()

    def _client_policy(self, data: bytes) -> Policy:
        """This server's policy with the client's process, limits and user."""
        try:
            request = json.loads(data)
        except ValueError:
            raise _Refused("a malformed request") from None
        if not isinstance(request, dict) or request.get("v") != wire.VERSION:
            raise _Refused("a request of another version of lxcbind")
        if request.get("key") != self.key:
            raise _Refused("the client's policy is not this server's (another template key)")
        process, limits = request.get("process"), request.get("limits")
        if not isinstance(process, dict) or not isinstance(limits, dict):
            raise _Refused("a malformed request")
        env = process.get("env")
        if not isinstance(env, list) or not all(
                isinstance(item, list) and len(item) == 2 and all(isinstance(x, str)
                                                                   for x in item)
                for item in env):
            raise _Refused("expected [[key, value], ...]", "process.env")
        line, cwd = process.get("commandLine"), process.get("cwd")
        if not isinstance(line, str) or not (cwd is None or isinstance(cwd, str)):
            raise _Refused("a malformed request", "process")
        timeout = _number(process.get("timeoutMs"), (int,), "process.timeoutMs") or 0
        mine = self.policy
        return replace(mine, process=Process(line, cwd, tuple(tuple(i) for i in env),
                                             timeout),
                       lxc=replace(mine.lxc, limits=Limits(
                           _number(limits.get("memory"), (int,), "lxc.limits.memory"),
                           _number(limits.get("pids"), (int,), "lxc.limits.pids"),
                           _number(limits.get("cpu"), (int, float), "lxc.limits.cpu"),
                           _number(limits.get("disk"), (int,), "lxc.limits.disk")),
                                   uid=_number(request.get("uid"), (int,), "lxc.uid"),
                                   gid=_number(request.get("gid"), (int,), "lxc.gid")))

    def _shape_of(self, policy: Policy) -> Any:
        """None when a ready clone fits ``policy`` (the same limits, writable layer size and
        user: its env, cwd and timeout are the client's to apply), else the shape to make
        one of."""
        from lxcbind.sandbox.clone import Shape

        def made(shape: Shape) -> tuple[Any, ...]:   # what making a clone depends on
            return (shape.limits, shape.limit_files, shape.tmpfs_size, shape.defaults.uid,
                    shape.defaults.gid)

        shape = Shape.of(self.template, policy)
        return None if made(shape) == made(self._shape) else shape

    def _clone(self, shape: Any) -> Session:
        """A ready clone (``shape`` None), or one made now in ``shape``."""
        pool = self._pool
        if pool is None:
            raise SandboxError("the warm server is closed")
        if shape is None:
            return pool._take()
        from lxcbind.sandbox.clone import Clone

        return Clone(self.template, shape=shape).open()

    def _retire(self, session: Session, pooled: bool) -> None:
        """A used clone goes: through the Pool's reaper (which orders its replacement), or
        here (a clone made for one client)."""
        pool = self._pool
        if pooled and pool is not None:
            pool._give_back(session)
            return
        try:
            session.close()
        except Exception as exc:  # noqa: BLE001 - the template's teardown removes the rest
            _warning(f"warm server: tearing a clone down failed: {exc}")

    def _hand_over(self, conn: socket.socket, session: Session, policy: Policy) -> None:
        """The clone's channel, init pidfd, devpts and root to the client, and what it needs
        to run commands there; the server keeps no copy of the channel."""
        from lxcbind.sandbox import imagefs
        from lxcbind.sandbox.clone import Clone, CloneSession

        clone = session._owner
        assert isinstance(clone, Clone) and isinstance(session, CloneSession)
        channel = session._ctrl
        assert channel is not None and clone._layer is not None
        d = self.template.box.command_defaults(policy)
        try:
            argv: list[str] | None = imagefs.argv(self.template.box.image, policy, "run")
        except LxcbindError:
            argv = None
        # The clone's own devpts: opened by its session (``clone._own_devpts``) before any
        # workload ran there, one name at a time; the session keeps it and closes it.
        devpts = getattr(session, "_devpts", -1)
        reply = {"v": wire.VERSION, "clone": clone.name, "pid": clone.pid,
                 "spawner_pid": session.spawner_pid, "nsdepth": session._nsdepth,
                 "events": list(session._event_files), "env": d.env, "cwd": d.cwd,
                 "timeout": d.timeout, "uid": d.uid, "gid": d.gid, "argv": argv,
                 "image": session._image}
        self._reply(conn, reply, [channel.fileno(), clone._pidfd, devpts, clone._layer._fd])
        session._ctrl = None   # the client's now: its close is the spawner's end
        channel.close()

    @staticmethod
    def _reply(conn: socket.socket, reply: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(reply).encode()
        if fds:
            # -1 cannot travel: an unavailable devpts goes as /dev/null's descriptor...
            sent = [fd if fd >= 0 else -1 for fd in fds]
            placeholder = -1
            if -1 in sent:
                placeholder = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                sent = [fd if fd >= 0 else placeholder for fd in sent]
                reply = {**reply, "devpts": False}
                data = json.dumps(reply).encode()
            try:
                conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", sent))])
            finally:
                if placeholder >= 0:
                    os.close(placeholder)
        else:
            conn.send(data)

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Tear everything down: the clients' clones (their commands die), the ready clones,
        the template, the socket and the lock.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        listener, self._listener = self._listener, None
        try:
            if listener is not None:
                listener.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            with self._lock:
                active = dict(self._active)
            for conn in active:   # their threads wake up and tear their clones down
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            for conn, thread in active.items():
                if thread.ident is None:   # a signal came between accept and start
                    conn.close()
                else:
                    thread.join(timeout=30)
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()   # the ready clones, then the template and all left in it
        finally:
            if self._lock_fd >= 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path[:-5] + ".lock")
                os.close(self._lock_fd)
                self._lock_fd = -1
            for fd in (self._wake_r, self._wake_w, self._template_gone):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = self._template_gone = -1
        self._log("stopped; nothing left")

    def __enter__(self) -> WarmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
