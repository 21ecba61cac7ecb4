"""``Container``: one ``struct lxc_container *`` with an explicit owner.

Every liblxc call on a handle runs under that handle's lock.  liblxc guards a handle with a
private semaphore; a thread that fork()s inside ``attach`` while another thread holds that
semaphore hands the child a locked copy, and the child deadlocks in ``lxc_container_put``
(measured with two threads on one handle).  The lock makes calls on one handle sequential
(``attach`` only until the child is running, not until it exits); separate ``Container``
objects for the same name run in parallel.

Lifecycle rules kept here: ``start`` always daemonizes (a non-daemonized start runs liblxc's
monitor in the caller and refuses threaded callers), and runs liblxc's start in the small
``lxcbind-starter`` program when the config on disk is the handle's (``_cdefs/starter.c`` says
why: the monitor would otherwise be a fork of this whole process); ``stop`` is the hard,
immediate kill (never the graceful ``shutdown`` with its timeout), and it first kills and reaps
every process this handle attached, because an unreaped attached child blocks the container's
init forever.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lxcbind.errors import ContainerNotFound, LxcError
from lxcbind.lxc import cgroups, rmtree, sigmask
from lxcbind.lxc._native import HAS_DEVPTS_FD, HAS_INIT_PIDFD, ffi, lib
from lxcbind.lxc.attach import AttachRequest, FileArg, Process, build_attach, cstrings

LOG_NAME = "lxcbind.log"
# liblxc's start in a process of its own (``_cdefs/starter.c``), built by setup.py.
STARTER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "lxcbind-starter")
# Where a Debian-like host has shadow's newuidmap and newgidmap (the uidmap package, which lxc
# recommends), liblxc runs ``/bin/sh -c "newuidmap PID ..."`` and the same for gids at every
# start: four program starts, a fifth of a container start's CPU on such a host.  It does so
# only when the newuidmap first on PATH is privileged (setuid or file capabilities); else it
# writes /proc/PID/[ug]id_map itself, which root may, with the same maps.  ``nouidmap/``
# holds unprivileged stand-ins of both, first on the starter's PATH; lxcbind reserves its id
# range for root in /etc/subuid and /etc/subgid all the same (``sandbox.idmap``).
NO_IDMAP_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "nouidmap")
STARTER_PATH = f"{NO_IDMAP_TOOLS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STARTER_ENV = {"PATH": STARTER_PATH}

# Signals a Python handler may be installed for (blocked across the attach window).
_HANDLED_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}


def default_lxcpath() -> str:
    """Where liblxc keeps containers when no lxcpath is given (``lxc.lxcpath``)."""
    value = lib.lxc_get_global_config_item(b"lxc.lxcpath")
    return ffi.string(value).decode() if value != ffi.NULL else "/var/lib/lxc"


def _cstr(value: str | bytes | os.PathLike[str] | None) -> Any:
    return ffi.NULL if value is None else os.fsencode(value)


def list_containers(lxcpath: str | None = None) -> list[str]:
    """Names of the containers defined (or running) under ``lxcpath``, sorted."""
    names = ffi.new("char ***")
    count = lib.list_all_containers(_cstr(lxcpath), names, ffi.NULL)
    if count < 0:
        raise LxcError("list_all_containers", lxcpath or default_lxcpath(), ffi.errno)
    result = []
    for i in range(count):
        result.append(ffi.string(names[0][i]).decode())
        lib.free(names[0][i])
    if names[0] != ffi.NULL:
        lib.free(names[0])
    return sorted(result)


def _is_child(pid: int) -> bool:
    """``pid`` is still an unreaped child of ours (running or a zombie)."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


class Container:
    """A named LXC container (defined or not) and the liblxc handle that reaches it.

    Use as a context manager or call ``close()``; the finalizer is only a backstop.
    Failures raise ``LxcError`` (an ``OSError``); nothing returns False.
    """

    def __init__(self, name: str, lxcpath: str | os.PathLike[str] | None = None) -> None:
        if not name or "/" in name or "\0" in name:
            raise ValueError(f"invalid container name {name!r}")
        self.name = name
        self._lock = threading.RLock()
        self._attached: weakref.WeakSet[Process] = weakref.WeakSet()
        # The pid buffers of attaches not yet owned by a Process (see attach_request).
        self._unowned: list[Any] = []
        self._init_pid: int | None = None  # cached: liblxc's leaked init pidfd is matched on it
        # Whether the handle holds config items its config file lacks (then only an in-process
        # start starts what the handle describes).
        self._unsaved = False
        ptr = lib.lxc_container_new(name.encode(), _cstr(lxcpath))
        if ptr == ffi.NULL:
            raise LxcError("lxc_container_new", name, ffi.errno)
        self._c = ffi.gc(ptr, lib.lxc_container_put)
        self.lxcpath = ffi.string(self._c.config_path).decode()

    # -- ownership ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the liblxc handle (the container itself is untouched).  Idempotent."""
        with self._lock:
            c = getattr(self, "_c", None)
            if c is None:
                return
            self._c = None
            ffi.gc(c, None)
            lib.lxc_container_put(c)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` released the liblxc handle."""
        return self._c is None

    def _handle(self) -> Any:
        c = self._c
        if c is None:
            raise ValueError(f"container handle {self.name!r} is closed")
        return c

    def _error(self, operation: str, err: int | None = None, detail: str = "") -> LxcError:
        c = self._c
        if not err and c is not None and c.error_num:
            err = abs(c.error_num) if abs(c.error_num) < 4096 else None
        if not detail and c is not None and c.error_string != ffi.NULL:
            detail = ffi.string(c.error_string).decode(errors="replace")
        return LxcError(operation, self.name, err, detail, self.log_tail())

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of liblxc's log for this container (set up by ``start``), if any."""
        path = os.path.join(self.lxcpath, self.name, LOG_NAME)
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- state -------------------------------------------------------------------------------

    @property
    def defined(self) -> bool:
        with self._lock:
            c = self._handle()
            return bool(c.is_defined(c))

    @property
    def running(self) -> bool:
        with self._lock:
            c = self._handle()
            return bool(c.is_running(c))

    @property
    def state(self) -> str:
        """``STOPPED``, ``STARTING``, ``RUNNING``, ``STOPPING``, ``ABORTING``, ``FREEZING`` ..."""
        with self._lock:
            c = self._handle()
            state: str = ffi.string(c.state(c)).decode()
            return state

    @property
    def init_pid(self) -> int | None:
        """The container's init as seen from the host, or None when not running."""
        with self._lock:
            c = self._handle()
            pid = c.init_pid(c)
            return pid if pid > 0 else None

    def init_pidfd(self) -> int:
        """A new pidfd for the container's init (the caller owns and closes it)."""
        if not HAS_INIT_PIDFD:
            raise LxcError("init_pidfd", self.name, errno.ENOSYS)
        with self._lock:
            fd: int = lib.lxcbind_init_pidfd(self._handle())
        if fd < 0:
            pid = self.init_pid
            if pid is None:
                raise LxcError("init_pidfd", self.name, errno.ESRCH, "container is not running")
            return os.pidfd_open(pid)
        return fd

    def devpts_fd(self) -> int:
        """An fd of the container's devpts mount (for ptys that are ``/dev/pts/N`` inside)."""
        if not HAS_DEVPTS_FD:
            raise LxcError("devpts_fd", self.name, errno.ENOSYS)
        with self._lock:
            fd: int = lib.lxcbind_devpts_fd(self._handle())
        if fd < 0:
            raise LxcError("devpts_fd", self.name, -fd if fd < -1 else errno.ENODEV)
        return fd

    # -- configuration -----------------------------------------------------------------------

    def get_config_item(self, key: str) -> str:
        """The value of ``key`` (multi-valued keys: newline-separated); KeyError if invalid."""
        with self._lock:
            c = self._handle()
            bkey = key.encode()
            size = c.get_config_item(c, bkey, ffi.NULL, 0)
            if size < 0:
                raise KeyError(key)
            buf = ffi.new("char[]", size + 1)
            c.get_config_item(c, bkey, buf, size + 1)
            value: str = ffi.string(buf).decode()
            return value

    def set_config_item(self, key: str, value: str) -> None:
        with self._lock:
            c = self._handle()
            if "\n" in value or "\0" in value:
                raise ValueError(f"config value for {key} must be a single line")
            self._unsaved = True
            if not c.set_config_item(c, key.encode(), value.encode()):
                raise self._error(f"set_config_item({key}={value})", errno.EINVAL)

    def clear_config_item(self, key: str) -> None:
        with self._lock:
            c = self._handle()
            self._unsaved = True
            if not c.clear_config_item(c, key.encode()):
                raise self._error(f"clear_config_item({key})", errno.EINVAL)

    def set_config(self, items: Iterable[tuple[str, str]]) -> None:
        for key, value in items:
            self.set_config_item(key, value)

    def save_config(self, path: str | None = None) -> None:
        with self._lock:
            c = self._handle()
            if not c.save_config(c, _cstr(path)):
                raise self._error("save_config")
            if path is None:
                self._unsaved = False

    def load_config(self, path: str | None = None) -> None:
        with self._lock:
            c = self._handle()
            self._unsaved = path is not None
            if not c.load_config(c, _cstr(path)):
                raise self._error("load_config", errno.ENOENT)

    @property
    def config_file_name(self) -> str:
        with self._lock:
            c = self._handle()
            raw = c.config_file_name(c)
            try:
                path: str = ffi.string(raw).decode()
                return path
            finally:
                lib.free(raw)

    # -- lifecycle ---------------------------------------------------------------------------

    def create(self, template: str | None, args: Sequence[str] = (), *, bdevtype: str | None = None,
               quiet: bool = True) -> None:
        """Create the container's rootfs and config with a template (``busybox``, ``download``
        ...), or with ``template=None`` just write the config (for a prepared rootfs)."""
        argv, keep = cstrings(args or ())
        with self._lock:
            c = self._handle()
            ok = c.create(c, _cstr(template), _cstr(bdevtype), ffi.NULL,
                          lib.LXC_CREATE_QUIET if quiet else 0, argv)
            del keep
            if not ok:
                raise self._error(f"create(template={template})")

    def start(self, argv: Sequence[str] | None = None, *, useinit: bool = False) -> None:
        """Start daemonized (always); ``argv`` replaces the container's init (app container).

        When the config file is this handle's (no item set since the last save or load) and
        neither ``argv`` nor ``useinit`` is given, liblxc's start runs in ``lxcbind-starter``
        (``_start_apart``), not in this process; otherwise here.  liblxc's log for this
        container goes to ``<lxcpath>/<name>/lxcbind.log`` so that a failed start carries its
        reason.
        """
        if not argv and not useinit and not self._unsaved and os.access(STARTER, os.X_OK):
            self._start_apart()
            return
        cargv, keep = cstrings(argv) if argv else (ffi.NULL, None)
        with self._lock:
            c = self._handle()
            self._ensure_log()
            c.want_daemonize(c, True)
            self._init_pid = None
            # liblxc 5.0 records the *caller* as the monitor and moves it into the
            # container's lxc.monitor.<name> cgroup; ``starting`` moves it back home.
            with cgroups.starting:
                ok = c.start(c, 1 if useinit else 0, cargv)
            del keep
            if not ok:
                raise self._error("start")

    def _start_apart(self) -> None:
        """liblxc's start of the saved config in ``lxcbind-starter`` (see ``_cdefs/starter.c``):
        spawned without copying this process, in a process group of its own (a Ctrl-C on the
        terminal is this process's to handle), with signals blocked here meanwhile, so that a
        Python handler cannot leave a start half-watched (as for the in-process start, which
        runs no Python code until liblxc returns)."""
        log = os.path.join(self.lxcpath, self.name, LOG_NAME)
        try:
            with sigmask.blocked(_HANDLED_SIGNALS), self._lock:
                self._handle()   # a closed handle raises, as for every call
                self._init_pid = None
                pid = os.posix_spawn(STARTER, [STARTER, self.name, self.lxcpath, log],
                                     _STARTER_ENV, setpgroup=0, setsigmask=(),
                                     setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                                     file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull,
                                                    os.O_RDWR, 0),
                                                   (os.POSIX_SPAWN_DUP2, 0, 1),
                                                   (os.POSIX_SPAWN_DUP2, 0, 2)])
                try:
                    _, status = os.waitpid(pid, 0)
                except ChildProcessError:   # reaped by someone else's waitpid(-1): ask liblxc
                    status = 0 if self.running else 1 << 8
        finally:
            # The starter's migrations kept the kernel's fast path armed: the primer may rest.
            cgroups.started()
        if status != 0:
            code = os.waitstatus_to_exitcode(status)
            raise self._error("start", detail="" if code == 1 else f"lxcbind-starter: {code}")

    def _ensure_log(self) -> None:
        c = self._handle()
        if c.get_config_item(c, b"lxc.log.file", ffi.NULL, 0) <= 0:
            log = os.path.join(self.lxcpath, self.name, LOG_NAME)
            if os.path.isdir(os.path.dirname(log)):
                c.set_config_item(c, b"lxc.log.file", log.encode())
                c.set_config_item(c, b"lxc.log.level", b"ERROR")

    def wait(self, state: str, timeout: float = -1) -> None:
        """Wait until the container reaches ``state``; ``TimeoutError`` after ``timeout`` s."""
        with self._lock:
            c = self._handle()
            ok = c.wait(c, state.upper().encode(), int(timeout) if timeout >= 0 else -1)
        if not ok:
            raise TimeoutError(f"container {self.name!r} did not reach {state} within {timeout}s")

    def stop(self) -> None:
        """Kill the container now (no graceful shutdown).  Attached processes are killed and
        reaped first; stopping a stopped container is a no-op."""
        self.kill_attached()
        with self._lock:
            c = self._handle()
            if not c.is_running(c):
                return
            self._init_pid = None
            if not c.stop(c) and c.is_running(c):
                raise self._error("stop")
        cgroups.remove_monitor_cgroups(self.name)

    def destroy(self) -> None:
        """Remove the container's rootfs and config (stopping it first if it runs).

        The layers a workload wrote (an overlay's upper and work directories inside the
        container's directory) are emptied first by ``rmtree``: liblxc's removal recurses once
        per directory level on this thread's stack, and a tree a few thousand levels deep
        crashed the caller.  ``rmtree.RemovalError`` (nothing destroyed) if one cannot be."""
        self.stop()
        with self._lock:
            c = self._handle()
            if not c.is_defined(c):
                raise ContainerNotFound(f"container {self.name!r} is not defined")
            for layer in self._written_layers():
                rmtree.remove_tree(layer, keep_root=True)
            if not c.destroy(c):
                raise self._error("destroy")

    def _written_layers(self) -> list[str]:
        """The directory the rootfs writes to (an overlay's upper layer: the last of
        ``lower:upper``, which liblxc reports without its ``overlay:`` type; a ``dir``
        rootfs itself) and overlayfs' work directory, when they live in the container's own
        directory: liblxc's destroy removes those recursively."""
        try:
            spec = self.get_config_item("lxc.rootfs.path")
        except KeyError:
            return []
        cdir = os.path.realpath(os.path.join(self.lxcpath, self.name))
        written = os.path.realpath(spec.rsplit(":", 1)[-1]) if spec else ""
        layers = [written] if os.path.dirname(written) == cdir else []
        return layers + [os.path.join(cdir, work) for work in ("work", "olwork")]

    def kill_attached(self) -> None:
        """SIGKILL and reap every process attached through this handle that still runs."""
        owned = {proc.pid for proc in self._attached}
        for proc in list(self._attached):
            proc.close()
        for pid_out in list(self._unowned):   # children of interrupted attaches
            self._reap_unowned(pid_out, owned)

    def _reap_unowned(self, pid_out: Any, owned: set[int]) -> None:
        pid = int(pid_out[0])
        # Only a child no Process has reaped: an interrupted attach may have got as far as
        # making one (then it, or its finalizer, owns the pid and its reuse is not ours).
        if pid > 0 and pid not in owned and _is_child(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        with contextlib.suppress(ValueError):
            self._unowned.remove(pid_out)

    # -- attach ------------------------------------------------------------------------------

    def attach(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        clear_env: bool = True,
        cwd: str | None = "/",
        uid: int | None = None,
        gid: int | None = None,
        stdin: FileArg = None,
        stdout: FileArg = None,
        stderr: FileArg = None,
        namespaces: int | None = None,
        flags: int | None = None,
        ctty: int | None = None,
    ) -> Process:
        """Start ``argv`` inside the running container and return its ``Process``.

        ``env`` is exact under ``clear_env`` (on top of ``attach.baseline_env``: PATH, HOME,
        TERM, container); values are handed to execve, never put on a command line.  ``cwd``
        is strict: a missing directory makes the process fail with ``exec_error`` set and
        status 126.  ``stdin``, ``stdout`` and ``stderr`` default to /dev/null (never the
        caller's own fds 0-2), and one of the caller's terminals is refused (``ValueError``):
        a container process could type into it.  ``ctty`` makes a tty fd the controlling
        terminal when stdin is not that tty.  ``flags``/``namespaces`` override
        LXC_ATTACH_DEFAULT / "all".

        Raises ``LxcError`` when liblxc cannot attach (e.g. the container is not running).
        """
        request = build_attach(argv, env=env, clear_env=clear_env, cwd=cwd, uid=uid, gid=gid,
                               stdin=stdin, stdout=stdout, stderr=stderr,
                               namespaces=namespaces, flags=flags, ctty=ctty)
        try:
            return self.attach_request(request, list(argv))
        except BaseException:   # one raised before attach_request's own guard: idempotent
            request.close()
            raise

    def attach_request(self, request: AttachRequest, args: Sequence[str],
                       mode: int = lib.LXCBIND_EXEC_COMMAND) -> Process:
        """Attach a prepared ``attach.build_attach`` request (``mode``: the C exec function,
        ``LXCBIND_EXEC_COMMAND`` or, for ``Session``, ``LXCBIND_EXEC_SPAWNER``).  The request's
        fds are closed; the returned ``Process`` is tracked so ``stop()`` kills and reaps it."""
        # From the moment liblxc has forked until the child is owned by a registered Process,
        # an exception (a signal handler that raises: Ctrl-C, the CLI's SIGTERM handler)
        # would drop the pid on the floor, and an unreaped child makes stop() hang forever.
        # Two guards: signals are blocked in this thread, so they normally wait until the
        # child is owned (the exec function gives the child an empty mask); and since another
        # thread may still take a signal, whose Python handler then runs here anyway, the
        # buffer liblxc writes the pid into is listed on the container *before* the fork:
        # wherever an exception lands, kill_attached() finds the child and reaps it.
        # The request's descriptors live in C memory and are closed by one C call each
        # (lib.lxcbind_close_held sets them to -1), and the pidfd is opened into it by C: so
        # wherever a raising handler lands, each is either still listed there or closed, and
        # the ``except`` below closes exactly what is left, never one twice.
        held, nfds = request.fds, request.nfds
        proc: Process | None = None
        pid_out: Any = None
        try:
            pid_out = ffi.new("pid_t *")
            self._unowned.append(pid_out)
            with sigmask.blocked(_HANDLED_SIGNALS):
                try:
                    with self._lock:
                        c = self._handle()
                        if self._init_pid is None:
                            self._init_pid = max(c.init_pid(c), 0)
                        rc = lib.lxcbind_attach(c, request.payload, request.options, pid_out,
                                                self._init_pid, mode)
                finally:
                    lib.lxcbind_close_held(held + 2, nfds - 2)   # the child has its copies
                if rc < 0 or pid_out[0] <= 0:
                    self._unowned.remove(pid_out)
                    self._init_pid = None
                    err = -rc if rc < 0 else errno.EIO
                    detail = "container is not running" if err == errno.ECONNREFUSED else ""
                    raise self._error("attach", err, detail)
                proc = Process(pid_out[0], held, request.program, request.cwd)
                proc.args = list(args)
                self._attached.add(proc)
                self._unowned.remove(pid_out)
        except BaseException:
            # The caller gets no Process: its child goes now.  One made but not yet bound to
            # ``proc`` was dropped already (its finalizer killed, reaped and closed).
            if proc is not None:
                proc.close()
            lib.lxcbind_close_held(held, nfds)
            if pid_out is not None:
                self._reap_unowned(pid_out, {p.pid for p in self._attached})
            raise
        return proc

    def __repr__(self) -> str:
        return f"<lxcbind.Container {self.name!r} lxcpath={getattr(self, 'lxcpath', '?')!r}>"


