"""A Pool's warm template: one real container whose init makes light clones (issue #23).

``Template(policy)`` starts one unprivileged LXC container of the policy through the usual
sandbox machinery (``Sandbox``: its own host id range, root filesystem overlay, filesystem
policy, ownership record, cleanup, ``lxcbind gc`` after a SIGKILL), with three differences:

* its init is ``lxcbind-cloner`` (``_cdefs/cloner.c``), not the session spawner, and it
  connects to the host over the same checked channel (``InitChannel``: SO_PEERCRED of the
  container's init, one connection ever);
* it has no ``lxc.seccomp.profile`` (the cloner must create namespaces and mount), no
  AppArmor profile (unconfined on an AppArmor host: every clone changes to liblxc's
  container default at its exec) and keeps ``setfcap`` besides ``security.KEEP_CAPS`` (the
  kernel lets only a holder of it map the template's root into a clone's user namespace);
  no_new_privs is set as for any container.
  No workload ever runs in the template: the cloner is all that runs there, the host is the
  only one that talks to it, and every clone drops back to a container's privileges;
* its own limits are none (every workload process lives in a clone's limited cgroup), it has
  no writable disk layer of its own (nothing writes to its root), and it shows a whole
  ``proc`` and ``sysfs`` at ``/dev/.lxcbind-proc`` and ``/dev/.lxcbind-sys`` (the kernel
  lets a clone mount its own /proc and /sys only where such a mount is visible; no clone
  can reach them: a clone detaches the template's root).

The seccomp profile (the same text ``security.seccomp_profile`` gives liblxc for a container
of the policy) is sent to the cloner once, which compiles it (``_cdefs/seccompile.h``) and
loads it into every clone.  ``request`` asks for one clone (``sandbox.clone`` does the rest);
requests are serialized (one round trip of ~0.1 ms).  ``close`` stops and destroys the
template, and with it every clone still running (their pid namespaces are nested in its).
"""

from __future__ import annotations

import array
import os
import socket
import struct
import threading

import lxcbind
from lxcbind.command import CommandDefaults
from lxcbind.errors import SandboxError
from lxcbind.lxc import cgroups
from lxcbind.policy.model import Policy
from lxcbind.sandbox import mounts, security
from lxcbind.sandbox.core import Sandbox
from lxcbind.sandbox.initspawner import INSIDE, InitChannel
from lxcbind.sandbox.mounts import MountEntry

__all__ = ["Template", "refusal", "host_refusal", "CLONER_PROGRAM"]

CLONER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(lxcbind.__file__)),
                              "lxcbind-cloner")
_CLONER = "lxcbind-cloner"
_LAYERS = "/dev/.lxcbind-layers"   # the template's root's layers (see _make_init_channel)

# The wire format of _cdefs/cloner.c (struct lxcbind_clone_request / _reply).
_MAGIC = 0x4C58434C
_OP_PROFILE, _OP_CLONE = 1, 2
_REQUEST = struct.Struct("=IIQQqq64s")
_REPLY = struct.Struct("=Iiii")
_STEPS = {0: "request", 1: "clone3", 2: "write the uid map", 3: "seccomp profile",
          4: "write the gid map"}
_KINDS = ("host", "busybox", "dir", "image")


def refusal(policy: Policy) -> tuple[str, str] | None:
    """(policy field, why) when clones cannot serve ``policy`` with a full container's
    guarantees, else None."""
    if not policy.network.effective().is_deny_all():
        return ("network", "a clone has no network device; use a policy without network "
                "access (network deny-all) or clones=False")
    if policy.filesystem.readwrite_paths:
        return ("filesystem.readwritePaths", "clones of one template share its host ids, so "
                "a read-write host bind would be shared between them; use clones=False")
    opted = [name for name in policy.lxc.allow if name in ("nesting", "ptrace", "perf")]
    if opted:
        return ("lxc.allow", f"{', '.join(opted)} cannot be given to a clone; use "
                "clones=False")
    if policy.lxc.privileged:
        return ("lxc.privileged", "a template is unprivileged (its own id range)")
    if policy.lxc.rootfs.kind not in _KINDS:
        return ("lxc.rootfs", f"clones serve the bases {', '.join(_KINDS)}, not "
                f"{policy.lxc.rootfs.kind!r}")
    if not policy.lifecycle.destroy_on_exit:
        return ("lifecycle.destroyOnExit", "a Pool's clones are never kept")
    return None


_HOST_REFUSAL: list[str | None] = []


def host_refusal() -> str | None:
    """Why this kernel cannot make clones, or None (probed once per process).

    A clone's writable layer is an overlay whose upper directory is on a tmpfs, mounted in the
    clone's user namespace, where overlayfs keeps its whiteouts' and opaque directories'
    marks in ``user.*`` extended attributes (``userxattr``).  tmpfs has those only since
    Linux 6.6: on older kernels (Debian 12's 6.1) the overlay mounts, but removing a directory
    of the image, or making one where such a directory was, fails with EIO.  Probed on a
    memfd (the kernel's internal tmpfs: the same extended-attribute handlers)."""
    if not _HOST_REFUSAL:
        why = None
        fd = os.memfd_create("lxcbind-xattr-probe", os.MFD_CLOEXEC)
        try:
            os.setxattr(fd, "user.lxcbind", b"1")
        except OSError as exc:
            why = (f"a clone's writable layer needs user extended attributes on tmpfs (Linux "
                   f"6.6 or later; this kernel, {os.uname().release}, says "
                   f"{os.strerror(exc.errno or 0)}): without them, removing a directory of "
                   f"the image would fail with EIO in a clone; use clones=False here")
        finally:
            os.close(fd)
        _HOST_REFUSAL.append(why)
    return _HOST_REFUSAL[0]


def caps_mask() -> int:
    """``security.KEEP_CAPS`` as the kernel's capability bits."""
    numbers = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "kill": 5,
               "setgid": 6, "setuid": 7, "setpcap": 8, "net_bind_service": 10, "net_raw": 13,
               "sys_chroot": 18, "mknod": 27, "audit_write": 29}
    return sum(1 << numbers[name] for name in security.KEEP_CAPS)


class _ClonerChannel(InitChannel):
    """The init channel with the cloner next to the spawner (the clones' init program, which
    the cloner opens before it connects; both go with the channel once it has)."""

    _names = (*InitChannel._names, _CLONER)

    def __init__(self, cdir: str) -> None:
        super().__init__(cdir)
        try:
            target = os.path.join(self.folder, _CLONER)
            try:
                os.link(CLONER_PROGRAM, target)
            except FileNotFoundError:
                raise SandboxError(f"the cloner program {CLONER_PROGRAM!r} is missing: "
                                   "rebuild lxcbind (python3 setup.py build_ext)") from None
            except OSError:
                import shutil  # across filesystems only

                shutil.copyfile(CLONER_PROGRAM, target)
                os.chmod(target, 0o755)
        except BaseException:
            self.close()
            raise


class _TemplateSandbox(Sandbox):
    """A Sandbox whose init is the cloner (see the module docstring)."""

    _template = True
    control: socket.socket | None = None

    def __init__(self, policy: Policy, **kwargs: object) -> None:
        super().__init__(policy, **kwargs)  # type: ignore[arg-type]
        self._limits = security.ResolvedLimits(None, None, None)
        self._disk_size = None

    def _init_config(self, cdir: str, d: CommandDefaults) -> list[tuple[str, str]]:
        # The spawner's init channel (its bind at /dev/.lxcbind), with the cloner as init.
        items = [item for item in InitChannel.config(cdir) if item[0] != "lxc.init.cmd"]
        whole = [MountEntry("proc", "dev/.lxcbind-proc", "proc",
                            "rw,nosuid,nodev,noexec,create=dir"),
                 MountEntry("sysfs", "dev/.lxcbind-sys", "sysfs",
                            "ro,nosuid,nodev,noexec,create=dir"),
                 # where a clone mounts its own root (in its own mount namespace)
                 MountEntry("tmpfs", "dev/.lxcbind-clone", "tmpfs",
                            "ro,nosuid,nodev,noexec,size=4k,mode=0755,create=dir")]
        return [("lxc.init.cmd", f"{INSIDE}/{_CLONER} --init {INSIDE}/control"), *items,
                *[("lxc.mount.entry", entry.config_value()) for entry in whole]]

    def _make_init_channel(self, cdir: str) -> InitChannel:
        # The lower layers of the template's root, each bound read-only at
        # /dev/.lxcbind-layers/N, top first: a clone stacks its overlay on them.  Not on
        # "/": the kernel refuses a mount with locked mounts below it as an overlay layer.
        # Not the template's upper either (in use by its overlay; nothing but the mount
        # points liblxc makes is ever written there, and a clone makes those itself).
        container = self._running("run")
        layers = container.get_config_item("lxc.rootfs.path").split(":")
        if layers and layers[0] in ("overlay", "overlayfs"):
            layers = layers[1:]
        if len(layers) < 2:
            raise SandboxError("a Pool's template needs an overlay root filesystem, not "
                               f"{container.get_config_item('lxc.rootfs.path')!r}")
        for index, path in enumerate(layers[:-1]):
            entry = MountEntry(path, f"{_LAYERS.lstrip('/')}/{index}", "none",
                               "bind,ro,create=dir")
            container.set_config_item("lxc.mount.entry", entry.config_value())
        container.save_config()
        return _ClonerChannel(cdir)

    def _adopt_init(self, control: socket.socket) -> None:
        self.control = control

    def close(self, failed: bool = False) -> None:
        control, self.control = self.control, None
        if control is not None:
            control.close()   # the cloner exits; stop() below ends the rest
        super().close(failed)


class Template:
    """One warm template container of ``policy`` and its cloner (see the module docstring).
    ``ValueError`` naming the policy field when clones cannot serve the policy."""

    def __init__(self, policy: Policy, *, start_timeout: float = 10.0) -> None:
        why = refusal(policy)
        if why is not None:
            raise ValueError(f"Pool(clones=True): {why[0]}: {why[1]}")
        host = host_refusal()
        if host is not None:
            raise SandboxError(f"Pool(clones=True): {host}")
        self.policy = policy
        planned = mounts.plan_mounts(policy.filesystem.readwrite_paths,
                                     policy.filesystem.readonly_paths,
                                     policy.filesystem.denied_paths,
                                     rootfs_kind=policy.lxc.rootfs.kind, idmapped=True)
        profile = security.seccomp_profile(policy.lxc.allow,
                                           mounts.maps_host_root_writable(planned))
        self._lock = threading.Lock()
        self._timeout = start_timeout
        self._broken = ""   # why no more requests go to the cloner
        # A policy's containerId names the template (clones have hostnames of their own).
        self.box = _TemplateSandbox(policy, start_timeout=start_timeout)
        try:
            self.box.open()
            self.limits = security.resolve(policy.lxc.limits)
            self.limit_files = security.limit_files(self.limits)   # what each clone gets
            self.defaults = self.box.command_defaults()
            init = self.box.container.init_pid
            if init is None or self.box.control is None:
                raise SandboxError("the template's cloner did not start")
            self.init_pid = init
            # Where the clones' cgroups go: below the template's own (on v2 its init then
            # moves to an inner leaf, so that the controllers can be given to children).
            self.cgroup_parents = cgroups.parent_dirs(init)
            cgroups.delegate_v2(init)
            self._ask(_OP_PROFILE, profile.encode())
        except BaseException:
            self.box.close(failed=True)
            raise

    @property
    def name(self) -> str:
        return self.box.name

    def _ask(self, op: int, data: bytes = b"", *, hostname: str = "", tmpfs_size: int = 0,
             uid: int = -1, gid: int = -1, fd: int = -1) -> tuple[int, int]:
        """One request and its reply: (pid of the clone in the template, pidfd or -1)."""
        control = self.box.control
        if control is None:
            raise SandboxError("the Pool's template is closed")
        if self._broken:
            raise SandboxError(self._broken)
        head = _REQUEST.pack(_MAGIC, op, caps_mask(), tmpfs_size, uid, gid,
                             hostname.encode()[:63])
        fds = [fd] if fd >= 0 else []
        with self._lock:
            try:
                control.settimeout(self._timeout)
                control.sendmsg([head + data],
                                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                                if fds else [])
                message = control.recv(_REPLY.size + 1)
            except OSError as exc:
                # A reply that comes later would answer the next request: no more requests.
                self._broken = f"the Pool's template does not answer ({exc})"
                raise SandboxError(self._broken) from None
            if len(message) != _REPLY.size:
                self._broken = "the Pool's template hung up (its cloner exited)"
                raise SandboxError(self._broken)
            magic, status, pid, step = _REPLY.unpack(message)
            if magic != _MAGIC or status != 0:
                what = _STEPS.get(step, f"step {step}")
                reason = os.strerror(status) if status else "a malformed reply"
                raise SandboxError(f"the Pool's template refused a clone: {what}: {reason}")
            return pid, self._pidfd_of_child(pid) if op == _OP_CLONE else -1

    def _pidfd_of_child(self, pid: int) -> int:
        """A pidfd of the cloner's child whose pid in the template is ``pid`` (it waits for
        its go, so it cannot exit meanwhile; checked again once the pidfd pins it)."""
        def matches(host_pid: str) -> bool:
            try:
                with open(f"/proc/{host_pid}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                return False
            nspid = fields.get("NSpid", "").split()
            return fields.get("PPid", "").strip() == str(self.init_pid) and \
                len(nspid) >= 2 and nspid[1] == str(pid)

        try:
            with open(f"/proc/{self.init_pid}/task/{self.init_pid}/children") as f:
                children = f.read().split()
        except OSError as exc:
            raise SandboxError(f"cannot find the clone in the template ({exc})") from None
        for child in children:
            if not matches(child):
                continue
            try:
                pidfd = os.pidfd_open(int(child))
            except OSError:
                break
            if matches(child):
                return pidfd
            os.close(pidfd)
            break
        raise SandboxError("the clone's init exited before it could be started")

    def request(self, channel: socket.socket, hostname: str, tmpfs_size: int,
                defaults: CommandDefaults | None = None) -> int:
        """Ask for one clone whose spawner talks over ``channel`` (the clone's end: sent,
        then closed here) and whose commands run as ``defaults``' user (default: the
        template's policy's); returns a pidfd of the clone's init, which waits for the
        host's go (``sandbox.clone``)."""
        try:
            d = defaults or self.defaults
            return self._ask(_OP_CLONE, hostname=hostname, tmpfs_size=tmpfs_size,
                             uid=-1 if d.uid is None else d.uid,
                             gid=-1 if d.gid is None else d.gid, fd=channel.fileno())[1]
        finally:
            channel.close()

    @property
    def alive(self) -> bool:
        return self.box.control is not None

    def close(self) -> None:
        """Stop and destroy the template and every clone still in it; idempotent."""
        self.box.close()
