"""Where a fresh container's machine CPU goes: ``perf record -a`` around N sequential
``lxcbind.run()`` calls, every sample attributed to a phase of the run and a mechanism.

Why perf and not /proc/stat: the machine is shared (another job's VM can take a whole core),
/proc/stat counts in 10 ms ticks and cannot tell whose CPU it was.  perf samples every CPU
every 0.25 ms of CPU time (``cpu-clock``, a software event: it works in a VM, an emulated one
(TCG) included, which has no hardware counters) with the task and its kernel call chain, and
follows forks: a sample counts when its process descends from this one (the
runner, ``lxcbind-starter``, liblxc's monitor, the container's init and command) or is a
kernel thread (the cgroup, RCU, loop device and writeback work a run hands off).  Other
processes' samples are dropped, so the figures hold on a loaded machine too (the kernel
threads also serve the other jobs: that column is an upper bound; the machine's own kernel
work, DAMON and vsock, is left out and reported apart).

Phases: this process marks the entry and exit of the sandbox's steps (monkeypatched around
the functions below, CLOCK_MONOTONIC, which perf stamps its samples with too); a sample of any
process counts for the innermost step this process was in at that instant.  The starter's
work happens inside ``start``, the container's teardown inside ``stop``/``destroy``; what a
run leaves to the kernel after it returns (a released loop device, RCU callbacks) lands in
"after the run" (the runs are 0.1 s apart).

Mechanisms: the first matching kernel frame of the sample's call chain (cgroup fs, mounts,
namespaces, exec, exit, fork, page faults, seccomp ...), else the syscall, else the shared
object in user space (libseccomp's compiler, liblxc, the interpreter, the dynamic loader).
"""

from __future__ import annotations

import bisect
import collections
import functools
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

PERIOD_NS = 250_000   # one sample per 0.25 ms of CPU time, per CPU

# (category, kernel frame prefixes): the first category any frame of the chain matches, in
# this order (an exec's page faults count as exec, a cgroup mkdir's kernfs work as cgroup).
_KERNEL = (
    ("seccomp load", ("do_seccomp", "__x64_sys_seccomp", "seccomp_attach")),
    ("cgroup fs", ("cgroup_", "css_", "cgroup1_", "__cgroup", "mem_cgroup_css", "kill_css",
                   "cpuset_", "memcg_", "pids_", "blkcg", "freezer_")),
    ("namespaces", ("create_new_namespaces", "copy_namespaces", "unshare_nsproxy", "setup_net",
                    "cleanup_net", "free_nsproxy", "put_pid_ns", "put_ipc_ns", "free_ipc",
                    "copy_net_ns", "copy_ipcs", "copy_utsname", "create_user_ns",
                    "free_user_ns", "switch_task_namespaces", "exit_task_namespaces")),
    ("mounts", ("__x64_sys_mount", "__x64_sys_move_mount", "__x64_sys_open_tree",
                "__x64_sys_fsmount", "__x64_sys_fsconfig", "__x64_sys_fsopen",
                "__x64_sys_mount_setattr", "__x64_sys_umount", "__x64_sys_pivot_root",
                "cleanup_mnt", "put_mnt_ns", "free_mnt_ns", "copy_mnt_ns", "mntput_no_expire",
                "delayed_mntput", "ovl_")),
    ("exec", ("__x64_sys_execve", "load_elf_binary", "begin_new_exec", "bprm_execve")),
    ("exit", ("do_exit", "exit_mmap", "do_group_exit")),
    ("fork/clone", ("kernel_clone", "copy_process", "__x64_sys_clone", "dup_mm")),
    ("page faults", ("asm_exc_page_fault", "exc_page_fault", "handle_mm_fault")),
    ("file removal", ("__x64_sys_unlinkat", "__x64_sys_rmdir", "__x64_sys_unlink",
                      "do_unlinkat", "do_rmdir", "ext4_evict_inode", "evict")),
    ("loop/ext4 I/O", ("loop_", "ext4_", "jbd2", "blk_", "submit_bio")),
    # A path walk, stat or open in cgroupfs or sysfs that no cgroup_ frame names (liblxc's
    # recursive removal of a v1 cgroup stats every control file of every hierarchy).
    ("kernfs (cgroup/sys files)", ("kernfs_",)),
)
_SYSCALL_PREFIX = re.compile(r"^(__x64_sys_|__do_sys_|__se_sys_|ksys_|__sys_|do_sys_)")
# Debian's python3 has libpython linked in: its frames name the program (/usr/bin/python3.11).
_USER = (("libseccomp", "seccomp compile (libseccomp)"), ("liblxc", "liblxc (user)"),
         ("libpython", "python (interpreter)"), ("bin/python3", "python (interpreter)"),
         ("ld-linux", "dynamic loader"), ("libc.so", "libc"))
_KTHREAD = re.compile(r"^(kworker|ksoftirqd|rcu|kthreadd|migration|loop\d|jbd2|kcompactd|"
                      r"kswapd|khugepaged|kdamond|irq/|cpuhp|kauditd|writeback|oom_reaper)")
# Kernel work that is the machine's own, never a run's: DAMON's memory monitor and a VM's vsock
# channel to its host (together about 4 ms per run on the cgroup v1 VM when this was written, none
# of it a run's work; the emulated test VMs have neither).  Left out of the total like other
# jobs' CPU, and reported apart.
_MACHINE_COMM = ("kdamond",)
_MACHINE_FRAME = ("virtio_transport_", "vsock_")
_HEADER = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+(\d+\.\d+):")
_FORK = re.compile(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)")


class Marks:
    """The runner's steps as (CLOCK_MONOTONIC ns, stack of labels) transitions."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.timeline: list[tuple[int, str]] = []   # (ns, innermost label from then on)
        self.restore: list[tuple[Any, str, Any]] = []

    def _mark(self) -> None:
        self.timeline.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC),
                              self.stack[-1] if self.stack else "after the run (background)"))

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def marked(*a: Any, **k: Any) -> Any:
            self.stack.append(label)
            self._mark()
            try:
                return original(*a, **k)
            finally:
                self.stack.pop()
                self._mark()
        setattr(owner, name, marked)
        self.restore.append((owner, name, original))

    def undo(self) -> None:
        for owner, name, original in reversed(self.restore):
            setattr(owner, name, original)
        self.restore.clear()

    def label_at(self, ns: int) -> str:
        i = bisect.bisect_right(self.timeline, (ns, "\uffff")) - 1
        return self.timeline[i][1] if i >= 0 else "after the run (background)"


def install(marks: Marks) -> None:
    """Mark the steps of a fresh sandbox's life (``Sandbox.open``/``close`` and what they call)."""
    from lxcbind.lxc import cgroups, container, rmtree
    from lxcbind.proc import session
    from lxcbind.sandbox import cleanup, core, disk, idmap, initspawner, rootfs, security
    steps = [
        (core, "run", "run(): policy, result (Python)"),
        (core.Sandbox, "open", "open: rest (policy, Python)"),
        (cleanup, "collect_garbage", "open: gc of dead runs"),
        (core, "_reap_stale_leases", "open: gc of dead runs"),
        (cleanup.OwnershipRecord, "save", "ownership record"),
        (cleanup.OwnershipRecord, "remove", "ownership record"),
        (idmap, "acquire", "id range (acquire/release)"),
        (idmap, "release", "id range (acquire/release)"),
        (rootfs, "define_container", "config: define (Python)"),
        (rootfs, "ensure_base", "config: base/shifted lower"),
        (rootfs, "shifted_lower", "config: base/shifted lower"),
        (container.Container, "set_config_item", "config: liblxc parse+save"),
        (container.Container, "save_config", "config: liblxc parse+save"),
        (disk, "prepare", "disk layer (image, loop, mount)"),
        (disk, "detach", "disk layer (image, loop, mount)"),
        (disk, "wait_released", "disk layer (image, loop, mount)"),
        (disk, "retire", "disk layer (image, loop, mount)"),
        (disk, "sweep", "disk layer (image, loop, mount)"),
        (disk.Layer, "close", "disk layer (image, loop, mount)"),
        (initspawner.InitChannel, "__init__", "init channel: listen"),
        (container.Container, "start", "start (starter, monitor, init exec)"),
        (initspawner.InitChannel, "accept", "init channel: accept (spawner hello)"),
        (security, "verify_limits", "limits read back"),
        (cgroups, "event_files", "limits read back"),
        (session.Session, "_run", "command (/bin/true via spawner)"),
        (session.Session, "close", "session close"),
        (core.Sandbox, "close", "close: rest (Python)"),
        (rootfs, "remove_container", "close: rest (Python)"),
        (container.Container, "stop", "stop (liblxc, monitor exit)"),
        (container.Container, "destroy", "destroy (liblxc)"),
        (rmtree, "remove_tree", "rmtree of upper layer"),
    ]
    for owner, name, label in steps:
        marks.wrap(owner, name, label)


def _perf() -> str | None:
    from shutil import which
    return which("perf")


def profile(workload: Callable[[Marks], int]) -> dict[str, Any] | None:
    """Run ``workload(marks)`` (returns how many containers it made) under ``perf record -a``;
    the per-container CPU (ms) by phase, by mechanism, by process and in all, or None without
    perf (or when it records nothing: not root, ``perf_event_paranoid``)."""
    perf = _perf()
    if perf is None:
        return None
    marks = Marks()
    with tempfile.TemporaryDirectory(prefix="lxcbind-perf-") as tmp:
        data = os.path.join(tmp, "perf.data")
        # perf starts with its events off and says "ack" once they are on.  A fixed wait is a
        # guess (an emulated VM starts perf many times slower), and the forks perf would miss
        # before it records would make this run's processes foreign.
        ctl_r, ctl_w = os.pipe()
        ack_r, ack_w = os.pipe()
        try:
            rec = subprocess.Popen([perf, "record", "-a", "-g", "-e", "cpu-clock",
                                    "-c", str(PERIOD_NS), "-k", "CLOCK_MONOTONIC", "-q",
                                    "-D", "-1", f"--control=fd:{ctl_r},{ack_w}",
                                    "-o", data], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   pass_fds=(ctl_r, ack_w))
        finally:
            os.close(ctl_r)
            os.close(ack_w)
        try:
            os.write(ctl_w, b"enable\n")
            ready = select.select([ack_r], [], [], 120)[0]
            if not ready or not os.read(ack_r, 64).startswith(b"ack"):
                return None   # perf exited (or never answered): nothing recorded
            start_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            try:
                count = workload(marks)
            finally:
                marks.undo()
            end_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        finally:
            rec.send_signal(signal.SIGINT)
            rec.wait()
            os.close(ctl_w)
            os.close(ack_r)
        script = subprocess.run([perf, "script", "-i", data, "--show-task-events",
                                 "-F", "comm,pid,tid,time,ip,sym,dso"],
                                capture_output=True, text=True, errors="replace").stdout
    if not script.strip():
        return None
    return _attribute(script, marks, start_ns, end_ns, count)


def cpu_per_call(fn: Callable[[], object], n: int) -> float | None:
    """Machine CPU (ms, this process's descendants and kernel threads) per call of ``fn``."""
    def workload(marks: Marks) -> int:
        for _ in range(n):
            fn()
        return n
    fn()   # warm
    result = profile(workload)
    return None if result is None else float(result["total"])


def _attribute(script: str, marks: Marks, start_ns: int, end_ns: int,
               count: int, me: int | None = None) -> dict[str, Any]:
    """Sum ``perf script``'s samples in order (pids are recycled: a process's parent is the
    one its latest fork event names, as of the sample)."""
    me = os.getpid() if me is None else me
    parent: dict[int, int] = {}
    ms = PERIOD_NS / 1e6 / count
    by_phase: dict[str, float] = collections.Counter()
    by_mech: dict[str, dict[str, float]] = collections.defaultdict(collections.Counter)
    by_proc: dict[str, float] = collections.Counter()
    by_phase_proc: dict[str, dict[str, float]] = collections.defaultdict(collections.Counter)
    by_proc_mech: dict[str, dict[str, float]] = collections.defaultdict(collections.Counter)
    dropped = machine = 0.0
    for block in script.split("\n\n"):
        lines = block.strip("\n").split("\n")
        sample = None
        for i, line in enumerate(lines):   # task events may precede a sample in a block
            fork = _FORK.search(line)
            if fork:
                child, father = int(fork.group(1)), int(fork.group(2))
                if child != father:   # not a new thread of the same process
                    parent[child] = father
                continue
            head = _HEADER.match(line)
            if head and "PERF_RECORD" not in line:
                sample = (head.group(1), int(head.group(2)), int(float(head.group(4)) * 1e9),
                          lines[i + 1:])
                break
        if sample is None:
            continue
        comm, pid, ns, chain = sample
        if not start_ns <= ns <= end_ns or comm in ("swapper", "perf") or pid == 0:
            continue
        depth = _depth(pid, parent, me)
        if depth is not None:
            proc = f"{comm} [{depth}]" if comm == "lxcbind-starter" else comm
        elif comm.startswith(_MACHINE_COMM) or (_KTHREAD.match(comm) and any(
                f in line for line in chain for f in _MACHINE_FRAME)):
            machine += ms
            continue
        elif _KTHREAD.match(comm):
            proc = "kernel threads"
        else:
            dropped += ms
            continue
        phase, mech = marks.label_at(ns), _mechanism(chain)
        by_phase[phase] += ms
        by_proc[proc] += ms
        by_mech[phase][mech] += ms
        by_phase_proc[phase][proc] += ms
        by_proc_mech[proc][mech] += ms
    return {"phase": dict(by_phase), "mechanism": {k: dict(v) for k, v in by_mech.items()},
            "process": dict(by_proc),
            "phase_process": {k: dict(v) for k, v in by_phase_proc.items()},
            "process_mechanism": {k: dict(v) for k, v in by_proc_mech.items()},
            "total": sum(by_phase.values()), "foreign": dropped, "machine": machine,
            "count": count}


def _depth(pid: int, parent: dict[int, int], me: int) -> int | None:
    """How many forks below this process ``pid`` is (None: not below it).  For a starter
    process: 1 the starter, 2 its daemonizing fork, 3 liblxc's monitor, 4+ the container's
    init before its exec (liblxc's clone and what it forks)."""
    depth = 0
    while pid != me:
        if pid not in parent or depth > 64:
            return None
        pid, depth = parent[pid], depth + 1
    return depth


def _mechanism(chain: list[str]) -> str:
    syms = []
    dso_first = ""
    for line in chain:
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        sym, _, dso = parts[1].rpartition(" (")
        syms.append(sym.split("+")[0])
        if not dso_first:
            dso_first = dso
    for category, prefixes in _KERNEL:
        if any(s.startswith(prefixes) for s in syms):
            return category
    if "do_syscall_64" in syms:   # the handler is the frame the entry code called
        for s in reversed(syms[:syms.index("do_syscall_64")]):
            if s != "x64_sys_call":
                return "syscall " + _SYSCALL_PREFIX.sub("", s)
    for needle, category in _USER:
        if needle in dso_first:
            return category
    if "kernel" in dso_first:
        return "kernel (other)"
    return "user (other)"
