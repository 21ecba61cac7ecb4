"""Least privilege and resource limits for every workload process, as liblxc config items.

What a container gets (``../shared/notes/isolation.md`` has the measurements behind each):

* **Capabilities**: only ``KEEP_CAPS`` (Docker's default set without ``setfcap``: a root
  workload must not be able to write file capabilities through an idmapped bind, where they
  would be valid on the host).  Never ``sys_admin`` or ``sys_ptrace`` unless an opt-in says so.
  liblxc applies the list at start and again on every attach.
* **no_new_privs** (``lxc.no_new_privs``): setuid binaries and file capabilities do nothing.
* **seccomp**: a deny-list at least as strict as Docker's default profile for what Docker
  denies to a container without extra capabilities: the mount family, keyrings, bpf,
  perf_event_open, new namespaces (unshare, setns, clone with namespace flags; clone3 answers
  ENOSYS so libc falls back to clone, whose flags can be checked), open_by_handle_at, kexec,
  modules, userfaultfd, io_uring, clock and swap changes, reboot, syslog, quotactl, acct; and
  ptrace, process_vm_readv/writev and pidfd_getfd (one workload process steering another).  When a
  read-write bind maps host root to the container's root (a root-owned directory granted
  read-write), setuid/setgid mode bits are refused too (chmod family, open/creat/mknod modes;
  openat2, whose mode seccomp cannot read, answers ENOSYS), so no setuid-root file can be made
  on the host.  Sockets: only AF_UNIX, AF_INET, AF_INET6, AF_NETLINK and AF_PACKET
  (``socket_family_rules``; AF_VSOCK reaches the hypervisor, no namespace isolates it).  The
  32-bit x86 entry points, which liblxc cannot filter by argument, are filtered by the spawner.
* **Limits**: memory (with swap), pids and CPU, from the policy's ``lxc.limits`` or the defaults
  below, and a CPU weight of half the kernel's default (``DEFAULT_CPU_WEIGHT``), set before
  start on the hierarchy family the host actually has (v1 or v2; liblxc ignores the other
  family without an error) and read back after start (``verify_limits``),
  compared with what the kernel keeps of the value written (memory: whole pages, rounded
  down; the default is whole pages already): a limit that did not take fails the run (exit
  125) instead of running unlimited or otherwise limited.

Opt-ins (``lxc.allow``), each giving something up:

* ``nesting``: keeps ``sys_admin`` and allows mount/unshare/setns/new namespaces, for nested
  containers, and on an AppArmor host asks for liblxc's generated profile with nesting (the
  default profile denies mounts).  The workload can then unmount the masks of denied paths and
  remount read-only binds where its ids may write: the filesystem policy is no longer
  enforced against it.
* ``perf``: allows ``perf_event_open`` (subject to the host's ``perf_event_paranoid``): more
  kernel attack surface and a side channel on other processes of the host.
* ``ptrace``: allows ``ptrace``, ``process_vm_readv``/``process_vm_writev`` and
  ``pidfd_getfd`` (gdb, strace): a workload process can then trace and rewrite another of the
  same uid that runs at the same time (a persistent shell's next command, a concurrent one).
"""

from __future__ import annotations

import os

from lxcbind._lite import record, sha256_hex
from lxcbind.errors import SandboxError
from lxcbind.lxc import cgroups
from lxcbind.lxc.cgroups import Events as Events
from lxcbind.lxc.cgroups import events as events
from lxcbind.policy.model import UNLIMITED, Limits
from lxcbind.sandbox.idmap import IdRange
from lxcbind.state import STATE_ROOT

KEEP_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
             "net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write")

DEFAULT_PIDS = 1024
DEFAULT_MEMORY_CAP = 4 << 30          # at most 4 GiB, and at most half the host's memory
CPU_PERIOD_US = 100_000
# Under contention a container gets half the CPU of a cgroup at the kernel's default weight
# (v2 cpu.weight 100, v1 cpu.shares 1024): busy workloads slow the host's own work less.
DEFAULT_CPU_WEIGHT = 50

_EPERM, _ENOSYS = 1, 38
_S_ISUID, _S_ISGID = 0o4000, 0o2000
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                    0x40000000)  # CLONE_NEW{NS,CGROUP,UTS,IPC,USER,PID,NET}
_MOUNT_FAMILY = ("mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen",
                 "fsconfig", "fsmount", "fspick", "mount_setattr")
_ALWAYS_DENIED = ("keyctl", "add_key", "request_key", "bpf", "userfaultfd", "open_by_handle_at",
                  "name_to_handle_at", "kexec_load", "kexec_file_load", "init_module",
                  "finit_module", "delete_module", "acct", "swapon", "swapoff", "reboot",
                  "syslog", "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl", "iopl",
                  "ioperm", "uselib", "ustat", "sysfs", "_sysctl", "vm86", "vm86old",
                  "clock_settime", "settimeofday", "stime", "clock_adjtime", "fanotify_init",
                  "vhangup", "io_uring_setup", "io_uring_enter", "io_uring_register")
# Socket address families a workload may create (socket, socketpair): AF_UNIX, AF_INET,
# AF_INET6, AF_NETLINK, AF_PACKET (all confined to the container's network namespace).  Every
# other family up to 63 is refused with EPERM (README, "Socket families", has each verdict):
# AF_VSOCK reaches the hypervisor, whose vsock ports no namespace isolates; the rest are kernel
# attack surface no agent workload needs.  The kernel itself refuses 0, negatives and >= 46.
_SOCKET_FAMILIES_ALLOWED = (1, 2, 10, 16, 17)
_SOCKET_FAMILY_LIMIT = 64
# One workload process steering another of the same uid (a command left running by an earlier
# one, rewriting a later one's result): tracing, and reading or writing its memory or fds.
_PTRACE_FAMILY = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd")
# (syscall, index of its mode argument): setuid/setgid bits refused when host root is mapped.
_MODE_ARGS = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("open", 2),
              ("openat", 3), ("creat", 1), ("mknod", 1), ("mknodat", 2))


def _masked_blocks(low: int, high: int) -> list[tuple[int, int]]:
    """[low, high) as aligned power-of-two blocks (value, mask): n is in a block exactly when
    ``n & mask == value``.  A masked compare also ignores the upper 32 bits of the register
    (the kernel reads ``int domain``; a plain compare could be dodged with 0x1_0000_0028)."""
    blocks = []
    while low < high:
        size = low & -low if low else 1 << 31
        while low + size > high:
            size //= 2
        blocks.append((low, 0xFFFFFFFF & ~(size - 1)))
        low += size
    return blocks


def socket_family_rules() -> list[str]:
    """Deny-list lines refusing every socket family but ``_SOCKET_FAMILIES_ALLOWED``."""
    allowed = sorted(_SOCKET_FAMILIES_ALLOWED) + [_SOCKET_FAMILY_LIMIT]
    blocks = []
    for before, after in zip(allowed, allowed[1:], strict=False):
        blocks += _masked_blocks(before + 1, after)
    return [f"{name} errno {_EPERM} [0,{value},SCMP_CMP_MASKED_EQ,{mask}]"
            for name in ("socket", "socketpair") for value, mask in blocks]


def seccomp_profile(allow: tuple[str, ...] = (), deny_setid: bool = False) -> str:
    """The profile text (liblxc's v2 deny-list format)."""
    lines = ["2", "denylist", "reject_force_umount", "[all]"]
    denied = list(_ALWAYS_DENIED)
    if "perf" not in allow:
        denied.append("perf_event_open")
    if "ptrace" not in allow:
        denied += list(_PTRACE_FAMILY)
    if "nesting" not in allow:
        denied += list(_MOUNT_FAMILY) + ["unshare", "setns"]
    lines += [f"{name} errno {_EPERM}" for name in denied]
    lines += socket_family_rules()
    if "nesting" not in allow:
        lines += [f"clone errno {_EPERM} [0,{flag},SCMP_CMP_MASKED_EQ,{flag}]"
                  for flag in _NAMESPACE_FLAGS]
        lines.append(f"clone3 errno {_ENOSYS}")
    if deny_setid:
        lines += [f"{name} errno {_EPERM} [{index},{bit},SCMP_CMP_MASKED_EQ,{bit}]"
                  for name, index in _MODE_ARGS for bit in (_S_ISUID, _S_ISGID)]
        lines.append(f"openat2 errno {_ENOSYS}")
    return "\n".join(lines) + "\n"


def _profile_file(text: str) -> str:
    """Write ``text`` once, content-addressed (liblxc re-reads it on every attach, so it must
    outlive the container; identical profiles share one file)."""
    folder = os.path.join(STATE_ROOT, "seccomp")
    name = f"{sha256_hex(text.encode())[:16]}.seccomp"
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def hardening_config(allow: tuple[str, ...] = (), deny_setid: bool = False,
                     template: bool = False) -> list[tuple[str, str]]:
    """Capabilities, no_new_privs and seccomp items for one container.

    ``template``: a Pool's template (``sandbox.template``), whose init, the cloner, runs no
    workload: no seccomp profile (it makes namespaces and mounts), and ``setfcap`` kept
    (the kernel maps a parent's root into a new user namespace, each clone's, only for a
    writer holding it); every clone drops both back to a container's."""
    caps = list(KEEP_CAPS) + (["sys_admin"] if "nesting" in allow else []) + \
        (["setfcap"] if template else [])
    items = [
        ("lxc.cap.drop", ""),  # keep and drop are exclusive in liblxc: clear any drop list
        ("lxc.cap.keep", " ".join(caps)),
        ("lxc.no_new_privs", "1"),
    ]
    if not template:
        items.append(("lxc.seccomp.profile", _profile_file(seccomp_profile(allow, deny_setid))))
    if template:
        # The cloner mounts (each clone's root): on an AppArmor host it runs unconfined (the
        # default profile denies those mounts, and liblxc's generated one with nesting puts
        # the container in an AppArmor namespace where the default profile cannot be
        # named); every clone changes to the container default, lxc-container-default-cgns,
        # at its exec (_cdefs/cloner.c).  Without AppArmor liblxc ignores the item.
        items.append(("lxc.apparmor.profile", "unconfined"))
    if "nesting" in allow:
        # On an AppArmor host every container otherwise runs under liblxc's default profile
        # (lxc-container-default-cgns), which denies the mounts this opt-in exists to give.
        # liblxc's generated profile with nesting allows mounts and keeps the profile's other
        # denials (/proc/sysrq-trigger, /sys/kernel/security, ...); it is compiled by
        # apparmor_parser at every start.  Without AppArmor, liblxc ignores both items.
        items += [("lxc.apparmor.profile", "generated"), ("lxc.apparmor.allow_nesting", "1")]
    return items


# -- limits -----------------------------------------------------------------------------------

@record
class ResolvedLimits:
    """Limits with defaults applied; None = unlimited."""

    memory: int | None
    pids: int | None
    cpu: float | None


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve(limits: Limits) -> ResolvedLimits:
    """Apply defaults: memory min(4 GiB, half the host), 1024 processes, CPU unlimited (the
    scheduler shares it fairly; a policy sets ``cpu`` to cap it)."""
    page = os.sysconf("SC_PAGE_SIZE")   # whole pages: what the kernel would keep anyway
    memory = limits.memory if limits.memory is not None else \
        min(DEFAULT_MEMORY_CAP, _host_memory() // 2 // page * page)
    pids = limits.pids if limits.pids is not None else DEFAULT_PIDS
    cpu = limits.cpu
    return ResolvedLimits(None if memory == UNLIMITED else memory,
                          None if pids == UNLIMITED else pids,
                          None if cpu is None or cpu == UNLIMITED else cpu)


def _memsw_available() -> bool:
    memory = cgroups.process_dir(os.getpid(), "memory")
    return bool(memory) and os.path.exists(os.path.join(memory or "",
                                                        "memory.memsw.limit_in_bytes"))


def _expected(limits: ResolvedLimits) -> list[tuple[str, str, str]]:
    """(controller, file, value) for every limit, on the family this host has."""
    out: list[tuple[str, str, str]] = []
    if limits.memory is not None:
        if cgroups.controller_version("memory") == "v2":
            out += [("memory", "memory.max", str(limits.memory)),
                    ("memory", "memory.swap.max", "0")]
        else:
            out.append(("memory", "memory.limit_in_bytes", str(limits.memory)))
            if _memsw_available():
                out.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory)))
    if limits.pids is not None:
        out.append(("pids", "pids.max", str(limits.pids)))
    weight = cgroups.controller_version("cpu")   # a default, not a limit: only where it can be
    if weight == "v2":
        out.append(("cpu", "cpu.weight", str(DEFAULT_CPU_WEIGHT)))
    elif weight == "v1":
        out.append(("cpu", "cpu.shares", str(DEFAULT_CPU_WEIGHT * 1024 // 100)))
    if limits.cpu is not None:
        quota = max(1000, round(limits.cpu * CPU_PERIOD_US))
        if cgroups.controller_version("cpu") == "v2":
            out.append(("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}"))
        else:
            out += [("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                    ("cpu", "cpu.cfs_quota_us", str(quota))]
    return out


def limit_files(limits: ResolvedLimits) -> list[tuple[str, str, str]]:
    """(controller, file, value) of every limit on this host's cgroup family, in the order
    they must be written (a clone's cgroup is written by the host: ``sandbox.clone``)."""
    return _expected(limits)


def limit_config(limits: ResolvedLimits) -> list[tuple[str, str]]:
    """The ``lxc.cgroup[2].*`` items; fails closed if a controller is missing here."""
    items = []
    for controller, name, value in _expected(limits):
        version = cgroups.controller_version(controller)
        if version is None:
            raise SandboxError(f"lxc.limits: the {controller} cgroup controller is not "
                               "available on this host, so the limit cannot be enforced")
        prefix = "lxc.cgroup2" if version == "v2" else "lxc.cgroup"
        items.append((f"{prefix}.{name}", value))
    return items


def verify_limits(init_pid: int, limits: ResolvedLimits) -> None:
    """Read every limit back from the running container's cgroups and compare it with what
    the kernel keeps of the value written (``cgroups.stored_limit``: memory is rounded down to
    whole pages); ``SandboxError`` if one differs: it did not take, and the run must not go
    on with a limit other than the policy's."""
    folders: dict[str, str | None] = {}   # /proc/PID/cgroup read once per controller
    for controller, name, value in _expected(limits):
        if controller not in folders:
            folders[controller] = cgroups.process_dir(init_pid, controller)
        folder = folders[controller]
        try:
            with open(os.path.join(folder or "/nonexistent", name)) as f:
                actual = " ".join(f.read().split())
        except OSError as exc:
            raise SandboxError(f"lxc.limits: cannot read back {controller} {name} of the "
                               f"container ({exc.strerror}); refusing to run unlimited") from None
        stored = cgroups.stored_limit(name, value)
        if actual == stored:
            continue
        asked = repr(stored) if stored == value else \
            f"{stored!r} ({value!r} rounded down to whole pages)"
        what = ("no limit: it did not take; refusing to run unlimited"
                if cgroups.unlimited(name, actual) else
                "a different limit: refusing to run with a limit other than the policy's")
        raise SandboxError(f"lxc.limits: {controller} {name} is {actual!r} in the container, "
                           f"not {asked}, i.e. {what}")


@record
class Isolation:
    """Everything that confines one container's workload, as config items."""

    ids: IdRange | None = None               # None: privileged (root inside is root outside)
    allow: tuple[str, ...] = ()
    limits: ResolvedLimits | None = None      # None: no limits at all (binding-level callers)
    deny_setid: bool = False
    template: bool = False                    # a Pool's template (see hardening_config)

    def config(self) -> list[tuple[str, str]]:
        items = self.ids.config() if self.ids is not None else []
        items += hardening_config(self.allow, self.deny_setid, self.template)
        if self.limits is not None:
            items += limit_config(self.limits)
        return items
