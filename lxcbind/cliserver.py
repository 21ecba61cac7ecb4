"""The warm CLI server: ``lxcbind run --warm`` without the interpreter's import cost (issue #23).

``lxcbind warm POLICY`` starts one (``cli._start_cli_server``) beside its warm server: a
process of its own session that imports what the command line's warm path needs once, listens on
``<WARM_DIR>/cli-<key>-<pid>.sock`` (mode 0600 in root's 0700 directory; ``key`` as
``lxcbind._cliclient.key``, computed before and after those imports: a package changed
meanwhile is not served) and forks a copy of itself for each client (``lxcbind._cliclient``,
which says when a run is handed over and when not).

One thread, one epoll, watching:

* the listening socket: a client (``SO_PEERCRED`` uid 0, else closed at once);
* a pidfd of the ``lxcbind warm`` process that started it: when that ends (or on SIGTERM) it
  stops accepting, removes its socket, and exits once the runs in progress have ended;
* per run, the client's connection: the request (argv, environment, umask; stdin, stdout,
  stderr and the working directory as descriptors), then only its hang-up, on which the
  forked CLI gets SIGHUP and cleans up as after any fatal signal;
* per run, a pidfd of the forked CLI: when it ends, its wait status goes to the client.

The forked CLI (``_child``) takes a session of its own (no controlling terminal: the client's
stdio are not terminals), the client's descriptors at 0-2, its directory, umask, environment
and argv, the command line's signal handling, and runs ``lxcbind.cli`` as ``python -m
lxcbind`` would.  Before it reads or writes anything, ``cli`` tells it whether the run is
served (``cli.forked``): if not, it says so to the client, which then runs the CLI itself,
and exits.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import signal
import socket
import sys
import threading
from typing import NoReturn

from lxcbind import _cliclient as client
from lxcbind.errors import SandboxError

__all__ = ["main"]

_FATAL = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_MAX_REQUEST = 1 << 20   # argv and environment


class _Run:
    __slots__ = ("conn", "pid", "pidfd")

    def __init__(self, conn: socket.socket, pid: int, pidfd: int) -> None:
        self.conn: socket.socket | None = conn
        self.pid = pid
        self.pidfd = pidfd


class _Forked:
    """``cli.forked`` in a forked CLI: ``decide(served)`` before the run reads or writes."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn: socket.socket | None = conn

    def decide(self, served: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if not served:   # the client runs the CLI itself; nothing was read or written here
            try:
                conn.send(client.DECLINED)
            finally:
                os._exit(0)
        conn.close()   # (the client sees the server's death only once no copy is left)


def _preload() -> None:
    """What a warm run of the CLI imports and compiles (``run --warm -v`` with ``-X
    importtime`` lists the modules), then out of the garbage collector's reach: a collection
    in a forked CLI would otherwise touch, and so copy, every page of it."""
    import argparse  # noqa: F401  (the parser, for shapes cli._fast_run leaves to it)
    import atexit  # noqa: F401
    import gc
    import json  # noqa: F401
    import shlex  # noqa: F401
    import types  # noqa: F401

    import lxcbind.cli  # noqa: F401
    import lxcbind.command  # noqa: F401
    import lxcbind.lxc.cgroups  # noqa: F401
    import lxcbind.policy.defaults  # noqa: F401
    import lxcbind.policy.parse  # noqa: F401
    import lxcbind.proc.warm  # noqa: F401
    import lxcbind.result  # noqa: F401
    from lxcbind._lite import compile_all

    compile_all()
    gc.collect()
    gc.freeze()


class _Server:
    def __init__(self, parent: int) -> None:
        key = client.key()
        _preload()
        if client.key() != key:
            raise SandboxError("lxcbind's files changed while the CLI server was loading them")
        self.path = os.path.join(client.warm_dir(), f"{client.PREFIX}{key}-{os.getpid()}.sock")
        self.parent = os.pidfd_open(parent)
        if os.getppid() != parent:   # it ended before the pidfd was open
            raise SandboxError("lxcbind warm ended before its CLI server started")
        self.listener = socket.socket(socket.AF_UNIX,
                                      socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK)
        with contextlib.suppress(FileNotFoundError):   # a SIGKILLed one's, whose pid was ours
            os.unlink(self.path)
        old = os.umask(0o177)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.poll = select.epoll()
        self.poll.register(self.listener, select.EPOLLIN)
        self.poll.register(self.parent, select.EPOLLIN)
        # SIGTERM (from lxcbind warm as it stops): its number, written here by Python's own
        # handler, wakes the epoll.
        self.wakeup, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poll.register(self.wakeup, select.EPOLLIN)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        self.runs: dict[int, _Run] = {}        # by pidfd
        self.clients: dict[int, _Run] = {}     # by connection fd, once forked
        self.waiting: dict[int, socket.socket] = {}   # accepted, request not read yet
        self.accepting = True

    def stop(self, *_: object) -> None:
        if self.accepting:
            self.accepting = False
            self.poll.unregister(self.listener)
            self.listener.close()
            os.unlink(self.path)
            for conn in self.waiting.values():
                conn.close()
            self.waiting.clear()

    def serve(self) -> None:
        while self.accepting or self.runs:
            for fd, _ in self.poll.poll():
                if self.accepting and fd == self.listener.fileno():
                    self._accept()
                elif fd == self.parent:
                    self.poll.unregister(self.parent)
                    self.stop()
                elif fd == self.wakeup:
                    if signal.SIGTERM in os.read(self.wakeup, 64):
                        self.stop()
                elif fd in self.waiting:
                    self._start(self.waiting.pop(fd))
                elif fd in self.clients:
                    self._hang_up(self.clients.pop(fd))
                elif fd in self.runs:
                    self._ended(self.runs.pop(fd))

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        if client.peer_uid(conn) != 0:
            conn.close()   # only root may run lxcbind (the directory is root's, 0700)
            return
        self.waiting[conn.fileno()] = conn
        self.poll.register(conn, select.EPOLLIN | select.EPOLLRDHUP)

    def _start(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            data, ancillary, flags, _ = conn.recvmsg(
                _MAX_REQUEST, socket.CMSG_SPACE(4 * 4), socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:   # (a stale event: its descriptor number was reused)
            self.waiting[conn.fileno()] = conn
            return
        except OSError:
            data, ancillary, flags = b"", [], 0
        self.poll.unregister(conn)
        try:
            fds = client.received_fds(ancillary)
            request = marshal.loads(data) if not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) \
                else None
            if not (isinstance(request, tuple) and len(request) == 4 and len(fds) == 4
                    and request[0] == client.VERSION):
                raise ValueError("not a request of this version")
            _, argv, env, mask = request
            self._fork(conn, fds, argv, env, mask)
        except (OSError, ValueError, EOFError, TypeError):
            conn.close()   # the client sees the end without a status: it reports 125
        finally:
            for fd in fds:
                os.close(fd)

    def _fork(self, conn: socket.socket, fds: list[int], argv: list[str],
              env: dict[str, str], mask: int) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _FATAL)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(conn, fds, argv, env, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        pidfd = os.pidfd_open(pid)
        run = _Run(conn, pid, pidfd)
        self.runs[pidfd] = run
        self.clients[conn.fileno()] = run
        self.poll.register(pidfd, select.EPOLLIN)
        self.poll.register(conn, select.EPOLLIN | select.EPOLLRDHUP)
        try:
            conn.sendmsg([client.PIDFD], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           pidfd.to_bytes(4, sys.byteorder))])
        except OSError:   # the client is gone: its hang-up is on the epoll
            pass

    def _hang_up(self, run: _Run) -> None:
        """The client hung up (it sends nothing after its request): end its run."""
        conn, run.conn = run.conn, None
        if conn is not None:
            self.poll.unregister(conn)
            conn.close()
        try:
            signal.pidfd_send_signal(run.pidfd, signal.SIGHUP)
        except ProcessLookupError:
            pass

    def _ended(self, run: _Run) -> None:
        self.poll.unregister(run.pidfd)
        _, status = os.waitpid(run.pid, 0)
        os.close(run.pidfd)
        conn, run.conn = run.conn, None
        if conn is not None:
            self.clients.pop(conn.fileno(), None)
            self.poll.unregister(conn)
            try:
                conn.send(client.STATUS + marshal.dumps(status))
            except OSError:
                pass
            conn.close()

    def _child(self, conn: socket.socket, fds: list[int], argv: list[str],
               env: dict[str, str], mask: int) -> NoReturn:
        code = 125
        try:
            os.setsid()
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            os.fchdir(fds[3])
            for fd in fds:
                os.close(fd)
            fds.clear()
            self.poll.close()
            if self.accepting:
                self.listener.close()
            os.close(self.parent)
            os.close(signal.set_wakeup_fd(-1))
            os.close(self.wakeup)
            for run in self.runs.values():
                os.close(run.pidfd)
                if run.conn is not None:
                    run.conn.close()
            for other in self.waiting.values():
                other.close()
            os.umask(mask)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = list(argv)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)   # (install_early_signals: its own)
            from lxcbind import cli
            from lxcbind._early import install_early_signals

            install_early_signals()
            cli.forked = _Forked(conn)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            cli.main_entry()   # ends the process (exit_now), or raises SystemExit
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            for thread in threading.enumerate():   # as the interpreter's own exit would
                if thread is not threading.main_thread() and not thread.daemon:
                    thread.join()
        except BaseException:   # never back into the server's loop
            pass
        os._exit(code)


def main() -> None:
    """The CLI server (``cli._start_cli_server`` runs it): serve until the process that
    started it ends.
    SIGTERM stops it as its parent's end does; a SIGKILLed server leaves its clients' runs to
    end on SIGHUP (from each client), and its socket to ``lxcbind gc``."""
    server = None
    try:
        server = _Server(os.getppid())
        sys.stdout.write(f"ready {server.path}\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        server.serve()
    except (OSError, SandboxError) as exc:
        sys.stderr.write(f"lxcbind: the warm CLI server stopped: {exc}\n")
        if server is not None:
            server.stop()
        sys.exit(1)


if __name__ == "__main__":
    main()
