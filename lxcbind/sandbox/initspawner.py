"""The session spawner as a fresh sandbox's init: commands without liblxc's attach.

A one-shot ``run()``, ``Session.from_policy`` and every pooled container run their commands
through a session spawner (``_cdefs/spawner.c``).  Attaching it costs a whole liblxc attach,
about 5 ms (monitor round trips, the seccomp profile parsed and compiled again, three forks of
the caller, a cgroup migration), a fifth of a one-shot run.  A fresh sandbox therefore makes
the spawner its init: ``lxc.init.cmd`` runs ``lxcbind-spawner --init`` from a directory bound
read-only at ``/dev/.lxcbind`` (on the container's own /dev tmpfs, so nothing is written into
its root filesystem), and the spawner connects its control socket to a listener the host bound
in that directory.  ``accept`` takes exactly one connection, checks that it comes from the
container's init (``SO_PEERCRED``), then closes the listener and empties the directory: nothing
listens there by the time any workload runs, and nothing can reach the host through it.

What the spawner has as init is what liblxc gives any init: the container's namespaces, cgroup,
capabilities (``lxc.cap.keep``), no_new_privs, seccomp and LSM label, as the container's root;
each command it starts gets the same clean state as from an attached spawner (the security
tests check both paths).  As pid 1 it cannot be killed or stopped from inside the container
(the kernel drops such a signal to a namespace's init that has no handler for it), it reaps
every orphan, and when it exits (its control socket closed: the sandbox's teardown, or the
host process gone) the container stops.

Only for containers this run creates and destroys: a kept container keeps the init it was
defined with, and attached spawners.  With ``lxc.uid``/``lxc.gid`` the spawner becomes that
user once connected (no supplementary groups, then the gid, then the uid, as liblxc's attach
does), so its commands, and itself, run without capabilities.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct

from lxcbind.errors import SandboxError
from lxcbind.proc.spawner import SPAWNER_PROGRAM
from lxcbind.sandbox.mounts import MountEntry

__all__ = ["InitChannel", "INSIDE"]

INSIDE = "/dev/.lxcbind"           # where the container sees the directory
_FOLDER = ".lxcbind-init"          # in the container's directory: destroyed with it
_PROGRAM = "lxcbind-spawner"
_SOCKET = "control"


class InitChannel:
    """The directory, the program and the listener one fresh container's init needs.

    ``InitChannel.config(cdir)`` is what the container's config needs; ``InitChannel(cdir)``
    makes the rest once the container is defined, before it starts; ``accept(init_pid,
    timeout)`` returns the spawner's control socket once it has connected; ``close()``
    removes what is left (idempotent)."""

    _names: tuple[str, ...] = (_PROGRAM, _SOCKET)   # what close() removes

    def __init__(self, cdir: str) -> None:
        self.folder = os.path.join(cdir, _FOLDER)
        self._listener: socket.socket | None = None
        try:
            os.mkdir(self.folder, 0o755)
            os.chmod(self.folder, 0o755)  # whatever the umask: the container's root enters
            _place_program(os.path.join(self.folder, _PROGRAM))
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._listener = listener
            path = os.path.join(self.folder, _SOCKET)
            listener.bind(path)
            os.chmod(path, 0o666)   # connect() needs write permission; the folder stays 0755
            listener.listen(1)
        except OSError as exc:
            self.close()
            raise SandboxError(f"could not prepare the container's init ({exc})") from None

    @staticmethod
    def config(cdir: str, uid: int | None = None,
               gid: int | None = None) -> list[tuple[str, str]]:
        """The config items of a container in ``cdir`` whose init is the spawner, serving as
        ``uid``/``gid`` (None: the container's root) once connected (set when the container
        is defined; the channel itself is made once the directory exists)."""
        entry = MountEntry(os.path.join(cdir, _FOLDER), INSIDE.lstrip("/"), "none",
                           "bind,ro,create=dir")
        command = f"{INSIDE}/{_PROGRAM} --init {INSIDE}/{_SOCKET}"
        if uid is not None or gid is not None:
            command += f" {-1 if uid is None else int(uid)} {-1 if gid is None else int(gid)}"
        return [("lxc.init.cmd", command), ("lxc.mount.entry", entry.config_value())]

    def accept(self, init_pid: int, timeout: float) -> socket.socket:
        """The spawner's control socket, once the container's init (host pid ``init_pid``)
        has connected; ``SandboxError`` if it does not within ``timeout`` seconds."""
        listener = self._listener
        if listener is None:
            raise SandboxError("the container's init channel is closed")
        try:
            pidfd = os.pidfd_open(init_pid)
        except OSError:
            raise SandboxError("the container's init exited right after it started") from None
        try:
            # Wakes for the connection, or for the init's exit (it could not connect).
            ready, _, _ = select.select([listener.fileno(), pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        if listener.fileno() not in ready:
            why = "exited" if ready else f"did not connect within {timeout:g}s"
            raise SandboxError(f"the container's init (the session spawner) {why}")
        control, _ = listener.accept()
        try:
            creds = control.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            peer = struct.unpack("=3i", creds)[0]   # struct ucred: pid, uid, gid
            if peer != init_pid:   # nothing else exists in the container yet; be sure
                raise SandboxError(f"the container's init channel was connected by pid {peer}, "
                                   f"not the init ({init_pid})")
        except BaseException:
            control.close()
            raise
        self.close()   # one connection, ever: nothing listens once a workload can run
        return control

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        # Its two entries by name, not ``shutil`` (~2 ms of imports for every CLI run, zlib,
        # bz2 and lzma included); anything else in it is removed with the container.
        for name in self._names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.folder, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)


def _place_program(target: str) -> None:
    """The spawner program at ``target``: a hard link to the package's copy (the container's
    directory is usually on the same filesystem), else a copy.  Host root owns it either way,
    and the bind is read-only: the container's root can run it but not change it."""
    try:
        os.link(SPAWNER_PROGRAM, target)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.exists(SPAWNER_PROGRAM):
            raise SandboxError(f"the session spawner program {SPAWNER_PROGRAM!r} is "
                               "missing: rebuild lxcbind (python3 setup.py build_ext)") from None
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        import shutil  # a copy only across filesystems: not on a run's import path

        shutil.copyfile(SPAWNER_PROGRAM, target)
        os.chmod(target, 0o755)
