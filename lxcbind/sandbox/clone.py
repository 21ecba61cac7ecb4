"""One clone of a Pool's warm template: a fresh light sandbox for one command (issue #23).

``Clone(template).open()`` returns a ``Session`` (the same class a pooled container hands
out, so the Pool's run path is unchanged) whose spawner is the clone's init:

1. a socketpair for the spawner's channel; the clone's end goes to the template's cloner
   (``Template.request``), which ``clone3``s the clone's init with new user, pid, mount, ipc,
   uts and network namespaces and writes its id maps (the template's ids 0..65535, one to
   one); the host finds the init among the cloner's children and opens a pidfd of it (the
   cloner sends no descriptor: see ``_cdefs/cloner.c``); the init waits;
2. the host creates the clone's own cgroup below the template's (memory with swap, pids,
   cpu: the values ``security`` gives a container of the policy, read back afterwards),
   moves the init into it, and says go on the channel;
3. the init makes its cgroup namespace, hostname, loopback, its root (an overlay of the
   template's root under a tmpfs of its own, the template's read-only binds and masks again,
   a fresh /dev, devpts, /dev/shm, /dev/mqueue, /proc as proc:mixed, /sys read-only, /tmp),
   pivots into it and detaches the template's, drops to the capabilities of a container's
   init, sets no_new_privs, loads the policy's seccomp filter and execs the spawner
   (``_cdefs/cloner.c``), which says HELLO as any init spawner does.

Teardown (``close``, the session's owner: after the session closed the channel): SIGKILL the
init through its pidfd (its pid namespace dies with it, and the cloner's kernel-reaped child is
gone once the pidfd says so), then remove its cgroup.  Nothing of a clone is on the host
but that cgroup: its writable layer is a tmpfs in its own mount namespace (charged to its
memory cgroup).  A request that fails half-way undoes what it made in the same way; a
SIGKILLed owner leaves the template's ownership record, and ``lxcbind gc`` destroys the
template, with every clone and clone cgroup in it.

Deviations from the design sketch (issue #23's CLONE-SPEC), each for a reason: the writable
layer is a tmpfs in the clone's own mount namespace, not a per-clone ext4 from
``sandbox.diskpool`` (nothing to mount, hand over or give back on the host, and nothing left
by a SIGKILL; ``lxc.limits.disk`` is its size, one inode per 16 KiB, charged to the memory
limit); the spawner is exec'd from a descriptor the cloner opened, not from
``/dev/.lxcbind``; the host opens the clone's pidfd itself; a clone's commands get half the
spawner's ``RLIMIT_NOFILE`` (descriptors in flight are counted per host uid, which clones
share).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
from typing import Any

from lxcbind._lite import record
from lxcbind.command import CommandDefaults
from lxcbind.errors import SandboxError
from lxcbind.lxc import cgroups
from lxcbind.lxc.container import Container
from lxcbind.policy.model import UNLIMITED, Limits, Policy
from lxcbind.proc.session import _START_BOUND, _InitSpawner
from lxcbind.sandbox import core, disk, security
from lxcbind.sandbox.template import Template

__all__ = ["Clone", "CloneSession", "Shape"]

_HELLO_SIZE = struct.calcsize("=4i")


class _TmpfsLayer(disk.Layer):
    """A clone's writable layer seen from the host, for ``disk_limited``: its root, whose
    statfs is its upper layer's (the tmpfs), through a descriptor (``disk.Layer.full``)."""

    def __init__(self, pid: int) -> None:   # not Layer's: no image, no loop device
        self._fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self, background: bool = False) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class CloneSession(core.Session):
    """A Session whose spawner is a clone's init (the channel is a socketpair: its peer
    credentials are the host's, so the init's host pid is given, not read from it)."""

    def __init__(self, container: Container, *, init_pid: int, control: socket.socket,
                 cgroup: dict[str, str], **kwargs: Any) -> None:
        self._clone_pid = init_pid
        self._cgroup_dirs = cgroup
        super().__init__(container, init_control=control, **kwargs)

    def _adopt(self, control: socket.socket, start_timeout: float) -> None:
        self._ctrl = control
        control.settimeout(_START_BOUND)
        try:
            self._spawner = _InitSpawner(self._clone_pid)
        except ProcessLookupError:
            raise SandboxError("the clone's init is gone") from None
        self._hello(start_timeout)
        # tty=True: ptys of the clone's own devpts.  The template's, which a Session asks
        # liblxc for, names no /dev/pts/N inside the clone (``tty`` says "not a tty").
        self._devpts = _own_devpts(self._clone_pid)
        # The clone's own cgroup, which the host made and put it in (as event_files would
        # find it through /proc, twice).
        memory, pids = self._cgroup_dirs["memory"], self._cgroup_dirs["pids"]
        self._event_files = (
            os.path.join(memory, "memory.events" if cgroups.controller_version("memory") ==
                         "v2" else "memory.oom_control"),
            os.path.join(pids, "pids.events"))


def _own_devpts(pid: int) -> int:
    """An O_PATH fd of the /dev/pts of the clone whose init is ``pid``, or -1 (ptys then come
    from the host, as for a container whose devpts is unavailable).  Opened before any command
    of the clone ran, one name at a time, following no link."""
    fds: list[int] = []
    try:
        fds.append(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        for name in ("dev", "pts"):
            fds.append(os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=fds[-1]))
        return fds.pop()
    except OSError:
        return -1
    finally:
        for fd in fds:
            os.close(fd)


def _host_pid(pidfd: int) -> int:
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                pid = int(line.split()[1])
                if pid > 0:
                    return pid
    raise SandboxError("the clone's init exited before it could be placed in its cgroup")


def writable_size(template: Template) -> int:
    """Bytes of a clone's writable layer (a tmpfs): the policy's disk limit, else its memory
    limit (which the tmpfs is charged to anyway), else the kernel's default (0)."""
    return _writable_size(template.policy.lxc.limits, template.limits)


def _writable_size(limits: Limits, resolved: security.ResolvedLimits) -> int:
    if limits.disk is not None and limits.disk != UNLIMITED:
        return limits.disk
    return resolved.memory or 0


@record
class Shape:
    """What one clone of a template may have of its own (a warm server's client's policy,
    ``sandbox.warm``): its limits (resolved, and as the cgroup files the host writes), its
    commands' defaults (env, cwd, timeout, user) and the size of its writable layer.
    ``Shape.of(template)``: the template's own policy's."""

    limits: security.ResolvedLimits
    limit_files: list[tuple[str, str, str]]
    defaults: CommandDefaults
    tmpfs_size: int

    @classmethod
    def of(cls, template: Template, policy: Policy | None = None) -> Shape:
        """``policy``'s shape (default: the template's own), which must differ from the
        template's policy at most in its process, ``lxc.limits``, ``lxc.uid`` and ``lxc.gid``
        (``proc.warm.template_key`` says so)."""
        if policy is None:
            return cls(template.limits, template.limit_files, template.defaults,
                       writable_size(template))
        limits = security.resolve(policy.lxc.limits)
        return cls(limits, security.limit_files(limits),
                   template.box.command_defaults(policy),
                   _writable_size(policy.lxc.limits, limits))


class Clone:
    """One clone of ``template``; ``open()`` makes it and returns its Session, whose close
    tears the clone down (``close``, idempotent)."""

    def __init__(self, template: Template, *, start_timeout: float = 10.0,
                 shape: Shape | None = None) -> None:
        self.template = template
        self.shape = shape or Shape.of(template)
        tag = os.urandom(4).hex()
        self.name = f"lxcbind-{tag}"              # its hostname
        self._cgroup = f"clone-{tag}"
        self._start_timeout = start_timeout
        self._pidfd = -1
        self.pid = 0                               # the init's host pid, once made
        self._dirs: dict[str, str] = {}
        self._layer: _TmpfsLayer | None = None

    def open(self) -> CloneSession:
        template, shape = self.template, self.shape
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._pidfd = template.request(theirs, self.name, shape.tmpfs_size, shape.defaults)
            self.pid = _host_pid(self._pidfd)
            dirs = cgroups.child_dirs(template.cgroup_parents, self._cgroup)
            try:
                cgroups.make_child(dirs, shape.limit_files)
            except OSError as exc:
                raise SandboxError(f"lxc.limits: cannot set up the clone's cgroup ({exc})"
                                   ) from None
            self._dirs = dirs
            try:
                cgroups.enter_child(dirs, self.pid)
            except OSError as exc:
                raise SandboxError(f"cannot move the clone into its cgroup ({exc})") from None
            try:
                ours.send(b"G")
            except OSError:
                raise SandboxError("a clone's init exited before it was started") from None
            self._wait_hello(ours)
            security.verify_limits(self.pid, shape.limits)
            d = shape.defaults
            self._layer = _TmpfsLayer(self.pid)
            session = CloneSession(template.box.container, init_pid=self.pid, control=ours,
                                   cgroup=dirs, env=d.env or None, cwd=d.cwd,
                                   timeout=d.timeout, uid=d.uid, gid=d.gid,
                                   start_timeout=self._start_timeout)
            session._disk = self._layer
            session._image = template.box.image.id if template.box.image else None
        except BaseException:
            ours.close()
            self.close()
            raise
        session._owner = self
        return session

    def _wait_hello(self, channel: socket.socket) -> None:
        """Until the spawner's HELLO is there (left for the Session to read), or the clone's
        own report of the step that failed."""
        ready, _, _ = select.select([channel.fileno(), self._pidfd], [], [],
                                    self._start_timeout)
        if channel.fileno() in ready:
            first = channel.recv(256, socket.MSG_PEEK)
            if len(first) == _HELLO_SIZE:
                return
            if first:
                raise SandboxError(f"a clone could not be set up: "
                                   f"{first.decode(errors='replace')}")
        why = "exited" if ready else f"did not start within {self._start_timeout:g}s"
        raise SandboxError(f"a clone's init {why}")

    def close(self) -> None:
        """Kill the clone's init (its pid namespace dies with it), wait until it is gone, and
        remove its cgroup.  Idempotent."""
        pidfd, self._pidfd = self._pidfd, -1
        if pidfd >= 0:
            try:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                select.select([pidfd], [], [], 10.0)
            finally:
                os.close(pidfd)
        layer, self._layer = self._layer, None
        if layer is not None:
            layer.close()
        dirs, self._dirs = self._dirs, {}
        if dirs and not cgroups.remove_child(dirs):
            core._warning(f"Pool: the cgroup of clone {self.name} is still busy; it goes "
                          f"with the template {self.template.name!r}")
