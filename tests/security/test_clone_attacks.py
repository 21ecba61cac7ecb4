"""The attack suite of issue #23: a clone of a warm template (``Pool(clones=True)``) keeps every
isolation property of a pooled container (``Pool(clones=False)``).

Every attack runs as the workload, container root, with real syscalls (python3's ctypes on the
host rootfs), in both modes (``container`` and ``clone`` ids), and asserts both the refusal and
that the host, another sandbox running at the same time, and (for clones) the template are
unchanged.  Attack scripts print ``NAME=RESULT`` lines (``OK`` or an errno name) that the tests
parse.  ``sandbox_probes`` has the host side: holding a sandbox alive while the host looks at
it, fingerprints, namespaces and cgroups of a host pid.  Limits, quotas, deadlines and what a
pool leaves behind are in ``test_clone_resources.py``.
"""

from __future__ import annotations

import json
import os
import secrets
import textwrap
from typing import Any

import pytest

import lxcbind
from lxcbind.sandbox import security

from ..conftest import requires_clones, requires_lxc, requires_root
from .sandbox_probes import (
    MODES,
    REFUSED,
    Held,
    container_name,
    fingerprint,
    hold_script,
    host_pids,
    make_pool,
    namespaces,
    ours,
    parse,
    root_lowerdirs,
    sandbox_init,
    script,
    template_of,
)
from .test_socket_families import COMPAT

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(600)]
NAMESPACE_FLAGS = {"NEWNS": 0x00020000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000,
                   "NEWIPC": 0x08000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
                   "NEWNET": 0x40000000, "NEWTIME": 0x00000080}


# -- namespaces, mounts, privileges -----------------------------------------------------------

NAMESPACE_ATTACK = """
    import struct
    FLAGS = %(flags)r
    for name, flag in FLAGS.items():
        sc("UNSHARE_" + name, 272, flag)
        if name != "NEWTIME":   # 0x80 is in clone()'s exit-signal byte: clone3/unshare only
            rc = libc.syscall(56, ctypes.c_long(flag | 17), 0, 0, 0, 0)   # clone(flag|SIGCHLD)
            if rc == 0:
                os._exit(0)                                          # a child: it got through
            report("CLONE_" + name, rc)
            if rc > 0:
                os.waitpid(rc, 0x40000000)
        args = (ctypes.c_uint64 * 11)(flag, 0, 0, 0, 17)             # clone3, exit_signal SIGCHLD
        rc = libc.syscall(435, args, ctypes.c_long(88))
        if rc == 0:
            os._exit(0)
        report("CLONE3_" + name, rc)
        if rc > 0:
            os.waitpid(rc, 0x40000000)
    for ns in ("user", "pid", "mnt", "ipc", "uts", "net", "cgroup", "time"):
        fd = os.open(f"/proc/self/ns/{ns}", os.O_RDONLY)
        sc("SETNS_" + ns, 308, fd, 0)
        os.close(fd)
    pidfd = libc.syscall(434, 1, 0)                                  # pidfd_open(1): its init
    sc("SETNS_PIDFD_INIT", 308, pidfd, 0x7E020000 | 0x80)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    os.makedirs("/tmp/m", exist_ok=True)
    report("MOUNT_PROC", libc.mount(b"proc", b"/tmp/m", b"proc", 0, None))
    report("MOUNT_TMPFS", libc.mount(b"t", b"/tmp/m", b"tmpfs", 0, None))
    report("MOUNT_BIND_ROOT", libc.mount(b"/", b"/tmp/m", None, 4096 | 16384, None))
    report("REMOUNT_ROOT_RO", libc.mount(None, b"/", None, 32 | 1, None))
    report("REMOUNT_USR_RW", libc.mount(None, b"/usr", None, 32 | 4096, None))
    report("REMOUNT_SYS_RW", libc.mount(None, b"/sys", None, 32, None))
    report("REMOUNT_PROCSYS_RW", libc.mount(None, b"/proc/sys", None, 32 | 4096, None))
    report("MAKE_SHARED", libc.mount(None, b"/", None, 1 << 20 | 16384, None))
    for target in (b"/proc", b"/proc/sys", b"/sys", b"/sys/fs/cgroup", b"/dev/.lxcbind",
                   b"/usr", b"/tmp", b"/dev/shm", b"/dev/pts", b"/"):
        report("UMOUNT_" + target.decode().strip("/").replace("/", "_").upper(),
               libc.umount2(target, 2))                               # MNT_DETACH
    os.chdir("/")
    sc("PIVOT_ROOT", 155, b".", b".")
    sc("CHROOT_THEN_PIVOT", 155, b"/tmp", b"/tmp/m")
    sc("OPEN_TREE_CLONE", 428, -100, b"/", 1 | 0x8000)                # OPEN_TREE_CLONE|RECURSIVE
    sc("OPEN_TREE_PLAIN", 428, -100, b"/usr", 0)
    sc("MOVE_MOUNT", 429, -100, b"/usr", -100, b"/tmp/m", 0)
    sc("FSOPEN_TMPFS", 430, b"tmpfs", 0)
    sc("FSOPEN_PROC", 430, b"proc", 0)
    sc("FSCONFIG", 431, 3, 6, 0, 0, 0)                                # fd 3, CMD_CREATE
    sc("FSMOUNT", 432, 3, 0, 0)
    sc("FSPICK_ROOT", 433, -100, b"/", 0)
    attr = (ctypes.c_uint64 * 4)(0, 1, 0, 0)                          # clear MOUNT_ATTR_RDONLY
    sc("MOUNT_SETATTR_USR", 442, -100, b"/usr", 0, attr, 32)
"""


@pytest.mark.parametrize("clones", MODES)
def test_namespaces_and_mounts_refused(clones: bool) -> None:
    """Every way to a new namespace, into another one, or to change the mount table."""
    with make_pool(clones, size=1) as pool:
        r = parse(pool.run(script(NAMESPACE_ATTACK % {"flags": NAMESPACE_FLAGS}), timeout=120))
    for name in NAMESPACE_FLAGS:
        assert r["UNSHARE_" + name] == "EPERM", (name, r)
        assert r.get("CLONE_" + name, "EPERM") == "EPERM", (name, r)
        assert r["CLONE3_" + name] == "ENOSYS", (name, r)   # libc then falls back to clone
    others = {k: v for k, v in r.items() if not k.startswith(("UNSHARE_", "CLONE"))}
    assert len(others) == 38, others   # every attempt above reported
    for name, outcome in others.items():
        assert outcome == "EPERM", (name, r)


STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                 "Seccomp_filters")
STATUS = "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status /proc/1/status; id -u"


def _keep_mask() -> int:
    names = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6,
             "setuid": 7, "setpcap": 8, "net_bind_service": 10, "net_raw": 13,
             "sys_chroot": 18, "mknod": 27, "audit_write": 29}
    return sum(1 << names[cap] for cap in security.KEEP_CAPS)


@pytest.mark.parametrize("clones", MODES)
def test_privileges_of_the_workload(clones: bool) -> None:
    """Root inside with exactly KEEP_CAPS (effective, permitted, bounding), no ambient or
    inheritable, no_new_privs, a seccomp filter; the same for the sandbox's init."""
    with make_pool(clones, size=1) as pool:
        r = pool.run(STATUS, timeout=60)
    assert r.returncode == 0, r
    lines = r.stdout.decode().splitlines()
    assert lines[-1] == "0"
    for who in ("/proc/self/status", "/proc/1/status"):
        fields = dict(line[len(who) + 1:].split(":\t") for line in lines if line.startswith(who))
        for cap in ("CapPrm", "CapEff", "CapBnd"):
            assert int(fields[cap], 16) == _keep_mask(), (who, cap, fields)
        assert int(fields["CapAmb"], 16) == int(fields["CapInh"], 16) == 0, (who, fields)
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", (who, fields)


@requires_clones
def test_clone_privileges_equal_a_pooled_containers() -> None:
    """Field by field: the capability sets, no_new_privs and the seccomp mode and number of
    filters of a clone's command and of its init are those of a pooled container's."""
    seen = {}
    for clones in (False, True):
        with make_pool(clones, size=1) as pool:
            r = pool.run(STATUS, timeout=60)
        assert r.returncode == 0, r
        seen[clones] = sorted(r.stdout.decode().splitlines())
    assert seen[True] == seen[False]
    assert len(seen[True]) == 2 * len(STATUS_FIELDS) + 1


SYSCALL_SURVEY = """
    sc("KEYCTL_SESSION", 250, 0, -3)
    sc("KEYCTL_USER", 250, 0, -4)
    sc("ADD_KEY", 248, b"user", b"k", b"v", 1, -4)
    sc("REQUEST_KEY", 249, b"user", b"k", 0, 0)
    attr = (ctypes.c_uint32 * 30)(1, 4, 4, 1)
    sc("BPF", 321, 0, attr, 120)
    pattr = (ctypes.c_uint32 * 32)(0, 128, 0)
    sc("PERF", 298, pattr, 0, -1, -1, 0)
    sc("PTRACE_TRACEME", 101, 0, 0, 0, 0)
    sc("PROCESS_VM_READV", 310, os.getpid(), 0, 0, 0, 0, 0)
    sc("PIDFD_GETFD", 438, libc.syscall(434, os.getpid(), 0), 0, 0)
    handle = (ctypes.c_char * 136)()
    ctypes.memmove(handle, (ctypes.c_uint32 * 2)(8, 1), 8)
    sc("OPEN_BY_HANDLE_AT", 304, os.open("/", os.O_RDONLY), handle, 0)
    sc("NAME_TO_HANDLE_AT", 303, -100, b"/", handle, (ctypes.c_int * 1)(), 0)
    sc("USERFAULTFD", 323, 0)
    sc("IO_URING_SETUP", 425, 1, (ctypes.c_char * 120)())
    sc("KEXEC_LOAD", 246, 0, 0, 0, 0)
    sc("INIT_MODULE", 175, 0, 0, b"")
    sc("DELETE_MODULE", 176, b"loop", 0)
    sc("SWAPOFF", 168, b"/dev/null")
    sc("REBOOT", 169, 0xfee1dead, 672274793, 0x4321FEDC, 0)
    sc("SYSLOG", 103, 3, 0, 0)
    sc("ACCT", 163, 0)
    sc("SETTIMEOFDAY", 164, 0, 0)
    sc("CLOCK_SETTIME", 227, 0, (ctypes.c_long * 2)(0, 0))
    sc("IOPL", 172, 3)
    sc("SETHOSTNAME", 170, b"evil", 4)
    sc("SETDOMAINNAME", 171, b"evil", 4)
    sc("FANOTIFY_INIT", 300, 0, 0)
    sc("VHANGUP", 153)
    sc("QUOTACTL", 179, 0, b"/", 0, 0)
    sc("SETNS_BAD_FD", 308, 9999, 0)
    sc("MKNOD_BLOCK", 133, b"/tmp/sda", 0o60600, os.makedev(8, 0))
    sc("MKNOD_CHAR_MEM", 133, b"/tmp/mem", 0o20600, os.makedev(1, 1))
    sc("SOCKET_VSOCK", 41, 40, 1, 0)
    sc("SOCKET_ALG", 41, 38, 5, 0)
    sc("SOCKET_UNIX", 41, 1, 1, 0)
    sc("SOCKET_INET", 41, 2, 2, 0)
    sc("SOCKET_PACKET", 41, 17, 3, 0)
    sc("SOCKET_NETLINK", 41, 16, 3, 0)
    sc("CHROOT", 161, b"/tmp")                       # allowed (sys_chroot): last, it moves /
    sc("SETUID_1000", 105, 1000)
"""


SURVEY_ALLOWED = {"SOCKET_UNIX", "SOCKET_INET", "SOCKET_PACKET", "SOCKET_NETLINK", "CHROOT",
                  "SETUID_1000"}


@pytest.mark.parametrize("clones", MODES)
def test_kernel_interfaces_refused(clones: bool) -> None:
    """Keyrings, bpf, perf, the ptrace family, handles, kexec, modules, clocks, io_uring,
    block devices, uts names, socket families: refused; ordinary root work still allowed."""
    with make_pool(clones, size=1) as pool:
        r = parse(pool.run(script(SYSCALL_SURVEY), timeout=60))
    for name, outcome in r.items():
        if name in SURVEY_ALLOWED:
            assert outcome == "OK", (name, r)
        elif name == "SETNS_BAD_FD":
            assert outcome in ("EPERM", "EBADF"), outcome
        else:
            assert outcome in ("EPERM", "EACCES", "ENOSYS"), (name, outcome, r)
    assert len(r) == SYSCALL_SURVEY.count('sc("')   # every attempt reported


@requires_clones
def test_clone_answers_every_syscall_as_a_container() -> None:
    """The same survey: the same outcome, errno for errno, in a clone as in a pooled
    container (the same seccomp profile, capabilities and device rules)."""
    seen = {}
    for clones in (False, True):
        with make_pool(clones, size=1) as pool:
            seen[clones] = parse(pool.run(script(SYSCALL_SURVEY), timeout=60))
    assert seen[True] == seen[False]


@pytest.mark.parametrize("clones", MODES)
def test_vsock_refused_native_and_int80(clones: bool) -> None:
    """AF_VSOCK reaches the hypervisor from any namespace: refused through socket(),
    socketpair(), garbage high bits and both i386 entry points."""
    with make_pool(clones, size=1) as pool:
        r = parse(pool.run(script(COMPAT + textwrap.dedent("""
            pair = (ctypes.c_int * 2)()
            sc("STREAM", 41, 40, 1, 0)
            sc("DGRAM", 41, 40, 2, 0)
            sc("PAIR", 53, 40, 1, 0, pair)
            sc("HIGH_BITS", 41, 0x1_0000_0028, 1, 0)
            compat_socket("COMPAT", 40, 1)
            compat_socket("COMPAT_INET", 2, 1)
        """)), timeout=60))
    for key in ("STREAM", "DGRAM", "PAIR", "HIGH_BITS", "COMPAT_SOCKETCALL", "COMPAT_SOCKET32"):
        assert r[key] == "EPERM", (key, r)
    assert r["COMPAT_INET_SOCKET32"] == "OK", r   # the filter is a filter, not a broken ABI


# -- another sandbox of the same pool, alive at the same time ---------------------------------

SYSV = """
    libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long,
                            ctypes.c_int]
    IPC_CREAT, IPC_EXCL, IPC_NOWAIT = 0o1000, 0o2000, 0o4000
"""

VICTIM = """
    import socket
    T, KEY, PORT = %(token)r, %(key)d, %(port)d
    for path in (f"/tmp/{T}", f"/dev/shm/{T}", f"/{T}", f"/root/{T}", f"/etc/{T}"):
        with open(path, "w") as f:
            f.write(T)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\\0" + T)
    abstract.listen()
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(f"/tmp/{T}.sock")
    named.listen()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", PORT))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", PORT))
    shm = libc.shmget(KEY, 4096, IPC_CREAT | 0o666)
    at = libc.shmat(shm, None, 0)
    ctypes.memmove(at, T.encode(), len(T))
    msq = libc.msgget(KEY, IPC_CREAT | 0o666)
    sem = libc.semget(KEY, 1, IPC_CREAT | 0o666)
    report("SHM", shm)
    report("MSG", msq)
    report("SEM", sem)
    node = os.uname().nodename
    print("NODE=" + node, flush=True)
    print("NS=" + " ".join(os.readlink(f"/proc/self/ns/{n}") for n in
                           ("user", "pid", "mnt", "ipc", "uts", "net", "cgroup")), flush=True)
"""

VICTIM_AFTER = """
    # the host let the command go on: is everything as it was left?
    for s in (abstract, named, tcp, udp):
        s.setblocking(False)
        try:
            s.recv(1) if s is udp else s.accept()
            print("VISITED=" + str(s), flush=True)
        except BlockingIOError:
            pass
    intact = all(open(p).read() == T for p in
                 (f"/tmp/{T}", f"/dev/shm/{T}", f"/{T}", f"/root/{T}", f"/etc/{T}"))
    print("FILES_INTACT=" + str(intact))
    print("SHM_INTACT=" + str(ctypes.string_at(at, len(T)) == T.encode()))
    buf = ctypes.create_string_buffer(64)
    report("MSGRCV", libc.msgrcv(msq, buf, 32, 0, IPC_NOWAIT))
    print("NODE_AFTER=" + os.uname().nodename)
    planted = [os.path.join(d, n) for d in ("/", "/tmp", "/dev/shm", "/root", "/etc")
               for n in os.listdir(d) if "evil" in n]
    print("PLANTED=" + ",".join(planted))
"""

ATTACKER = """
    import socket
    T, KEY, PORT = %(token)r, %(key)d, %(port)d
    mine = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    seen = []
    for pid in mine - {os.getpid()}:    # its own argv holds the token
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                data = f.read()
            if T.encode() in data or b"%(mark)s" in data:
                seen.append(pid)
        except OSError:
            pass
    print("PROC_SEEN=" + ",".join(map(str, seen)))
    alive = []
    for pid in range(1, 4097):
        if libc.kill(pid, 0) == 0 or ctypes.get_errno() == errno.EPERM:
            alive.append(pid)
    after = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    print("KILL_FOUND_OTHERS=" + ",".join(str(p) for p in alive if p not in mine | after))
    found = []
    for top in ("/", "/tmp", "/dev", "/run", "/var", "/root", "/etc", "/home"):
        for folder, dirs, files in os.walk(top):
            if folder == "/":
                dirs[:] = [d for d in dirs if d not in ("proc", "sys", "usr")]
            found += [os.path.join(folder, n) for n in dirs + files if T in n]
    print("FILES_FOUND=" + ",".join(sorted(set(found))))
    def connect(name, family, kind, address):
        s = socket.socket(family, kind)
        try:
            s.connect(address)
            if kind == socket.SOCK_DGRAM:
                s.send(b"x")
                s.recv(1)
            print(f"{name}=OK")
        except OSError as exc:
            print(f"{name}=" + errno.errorcode[exc.errno])
    connect("ABSTRACT", socket.AF_UNIX, socket.SOCK_STREAM, "\\0" + T)
    connect("NAMED", socket.AF_UNIX, socket.SOCK_STREAM, f"/tmp/{T}.sock")
    connect("TCP", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", PORT))
    connect("UDP", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", PORT))
    with open("/proc/net/unix") as f:
        print("UNIX_LISTED=" + str(T in f.read()))
    # the same names are free here: a separate namespace, not a refusal that hides a share
    for name, make, address in (("BIND_ABSTRACT", socket.AF_UNIX, "\\0" + T),
                                ("BIND_TCP", socket.AF_INET, ("127.0.0.1", PORT))):
        try:
            socket.socket(make, socket.SOCK_STREAM).bind(address)
            print(f"{name}=OK")
        except OSError as exc:
            print(f"{name}=" + errno.errorcode[exc.errno])
    report("SHMGET", libc.shmget(KEY, 0, 0))
    report("MSGGET", libc.msgget(KEY, 0))
    report("SEMGET", libc.semget(KEY, 0, 0))
    listed = ""
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as f:
            listed += f.read()
    print("SYSV_LISTED=" + str(str(KEY) in listed.split()))
    report("SHM_OWN", libc.shmget(KEY, 4096, IPC_CREAT | IPC_EXCL | 0o600))
    report("SETHOSTNAME", libc.sethostname(b"evil-" + T.encode(), 5 + len(T)))
    print("NODE=" + os.uname().nodename)
    print("NETDEVS=" + ",".join(sorted(os.listdir("/sys/class/net"))))
    print("IFNAMES=" + ",".join(n for _, n in socket.if_nameindex()))
    sc("KEYCTL", 250, 0, -3)
    sc("ADD_KEY", 248, b"user", T.encode(), b"v", 1, -3)
    print("NS=" + " ".join(os.readlink(f"/proc/self/ns/{n}") for n in
                           ("user", "pid", "mnt", "ipc", "uts", "net", "cgroup")), flush=True)
    for path in ("/", "/tmp", "/dev/shm", "/root", "/etc"):
        with open(os.path.join(path, f"evil-{T}"), "w") as f:
            f.write("evil")
"""


@pytest.mark.parametrize("clones", MODES)
def test_another_sandbox_is_out_of_reach(clones: bool) -> None:
    """Two sandboxes of one pool alive at once: the second one, as root, cannot see or touch
    the first's processes (/proc, kill -0 on pids 1..4096), files (/, /tmp, /dev/shm, /root,
    /etc: each its own upper layer and tmpfs), sockets (abstract and named unix, TCP, UDP on
    loopback), SysV IPC (shm, msg, sem by key), hostname, network (lo only), keyrings; it finds
    the same names free in its own namespaces; the first one finds everything as it left it.
    The host checks that every namespace of the two differs, and from the host's."""
    with make_pool(clones, size=2) as pool:
        check_out_of_reach(pool)


def check_out_of_reach(pool: Any) -> None:
    """``test_another_sandbox_is_out_of_reach`` on two sandboxes of ``pool`` (anything with
    a thread-safe ``run(argv, timeout=...)``: a warm server's client too)."""
    token = f"cla{secrets.token_hex(6)}"
    values = {"token": token, "key": 0x10000 + secrets.randbelow(1 << 30),
              "port": 20000 + secrets.randbelow(30000)}
    victim = Held(pool, hold_script(SYSV + VICTIM % values) + textwrap.dedent(VICTIM_AFTER))
    try:
        victim_ns = namespaces(victim.pid)
        attacker = parse(pool.run(script(SYSV + ATTACKER % dict(values, mark=victim.mark)),
                                  timeout=120))
    finally:
        after = parse(victim.release())
    assert after["SHM"] == after["MSG"] == after["SEM"] == "OK", after
    assert attacker["PROC_SEEN"] == "" and attacker["KILL_FOUND_OTHERS"] == "", attacker
    assert attacker["FILES_FOUND"] == "", attacker
    assert attacker["ABSTRACT"] == "ECONNREFUSED" and attacker["TCP"] == "ECONNREFUSED"
    assert attacker["NAMED"] == "ENOENT" and attacker["UDP"] == "ECONNREFUSED", attacker
    assert attacker["UNIX_LISTED"] == "False" and attacker["SYSV_LISTED"] == "False"
    assert attacker["BIND_ABSTRACT"] == attacker["BIND_TCP"] == "OK", attacker
    assert attacker["SHMGET"] == attacker["MSGGET"] == attacker["SEMGET"] == "ENOENT"
    assert attacker["SHM_OWN"] == "OK", attacker
    assert attacker["SETHOSTNAME"] == "EPERM" and attacker["NODE"] != f"evil-{token}"
    assert attacker["NETDEVS"] == attacker["IFNAMES"] == "lo", attacker
    assert attacker["KEYCTL"] in REFUSED and attacker["ADD_KEY"] in REFUSED, attacker
    assert "VISITED" not in after, after
    assert after["FILES_INTACT"] == after["SHM_INTACT"] == "True", after
    assert after["MSGRCV"] == "ENOMSG", after
    assert after["NODE_AFTER"] == after["NODE"] and after["PLANTED"] == "", after
    # namespaces, as the sandboxes saw them and as the host sees them
    theirs = after["NS"].split(), attacker["NS"].split()
    assert all(a != b for a, b in zip(*theirs, strict=True)), theirs
    assert theirs[0] == [victim_ns[n] for n in ("user", "pid", "mnt", "ipc", "uts", "net",
                                                "cgroup")]
    host = namespaces(os.getpid())
    assert not set(host.values()) & (set(theirs[0]) | set(theirs[1])), (host, theirs)


# -- the template (for clones), the sandbox's own init and base ------------------------------

LOOK_AROUND = """
    import socket, stat
    T = %(token)r
    others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in
                    (1, os.getpid()))
    print("OTHER_PROCS=" + ",".join(map(str, others)))
    with open("/proc/1/cmdline", "rb") as f:
        argv = f.read().split(b"\\0")
    print("INIT=" + os.path.basename(argv[0].decode()) + " " + argv[1].decode())
    fds = os.listdir("/proc/1/fd")   # names only (the directory is root's): not the files
    print(f"PROC1_FDS={len(fds)}")
    for what in ("fd", "root", "cwd", "exe", "environ", "mem", "maps"):
        try:
            if what == "fd":
                for fd in fds:
                    os.readlink(f"/proc/1/fd/{fd}")
                    os.open(f"/proc/1/fd/{fd}", os.O_RDONLY)
            elif what in ("root", "cwd", "exe"):
                os.readlink(f"/proc/1/{what}")
            else:
                open(f"/proc/1/{what}").read(1)
            print(f"PROC1_{what}=OK")
        except OSError as exc:
            print(f"PROC1_{what}=" + errno.errorcode[exc.errno])
    print("DEV_LXCBIND=" + ",".join(sorted(os.listdir("/dev/.lxcbind")) if
                                    os.path.isdir("/dev/.lxcbind") else []))
    print("DEV_HIDDEN=" + ",".join(sorted(n for n in os.listdir("/dev") if n.startswith(".")
                                          and n not in (".lxcbind", ".lxc-boot-id"))))
    print("FDS=" + ",".join(sorted(os.listdir("/proc/self/fd"), key=int)))
    found, sockets = [], []
    for folder, dirs, files in os.walk("/"):
        if folder == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "usr")]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if T in name:
                found.append(path)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    sockets.append(path)
            except OSError:
                pass
    print("CANARIES=" + ",".join(found))
    print("SOCKET_FILES=" + ",".join(sockets))
    reached = []
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            name = fields[7]
            address = "\\0" + name[1:] if name.startswith("@") else name
            for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_UNIX, kind)
                try:
                    s.connect(address)
                    reached.append(name)
                except OSError:
                    pass
                s.close()
    print("UNIX_REACHED=" + ",".join(reached))
    with open("/proc/self/mountinfo") as f:
        print("MOUNTINFO=" + f.read().replace("\\n", "|"))
    print("UIDMAP=" + open("/proc/self/uid_map").read().split("\\n")[0])
"""


def _write_as_root_of(pid: int, path: str, text: str) -> None:
    """Write ``path`` as the host uid that is root in ``pid``'s user namespace (host root is
    not mapped there: its files would be EOVERFLOW on the namespace's own mounts)."""
    with open(f"/proc/{pid}/uid_map") as f:
        host_root = int(f.read().split()[1])
    folder = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)  # as host root
    try:
        child = os.fork()
        if child == 0:
            try:
                os.setgroups([])
                os.setresgid(host_root, host_root, host_root)
                os.setresuid(host_root, host_root, host_root)
                fd = os.open(os.path.basename(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o644, dir_fd=folder)
                os.write(fd, text.encode())
                os._exit(0)
            except BaseException:
                os._exit(1)
    finally:
        os.close(folder)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, f"could not plant {path}"


@pytest.mark.parametrize("clones", MODES)
def test_nothing_of_the_template_or_host_is_reachable(clones: bool) -> None:
    """From inside: /proc shows only the sandbox's own init (the spawner, not dumpable: its
    fds, root, memory are closed to root inside) and the command; /dev/.lxcbind holds at most
    the spawner; no socket file, no listed unix socket answers; no fd beyond stdio.  For a
    clone, the host plants canaries in the template's own mounts (/tmp, /dev, /dev/shm) and
    the clone finds none; its namespaces all differ from the template's; its mountinfo never names
    the template; its root maps to an unprivileged host range."""
    token = f"cla{secrets.token_hex(6)}"
    planted: list[str] = []
    with make_pool(clones, size=2) as pool:
        held = Held(pool, hold_script("pass\n"))
        try:
            template = template_of(held.pid)
            assert (template is not None) == clones
            if template is not None:
                # (its root is the clones' lower layer by design: the host writes nothing
                # there; what it mounts over it is its own)
                for folder in ("tmp", "dev", "dev/shm"):
                    path = os.path.join(f"/proc/{template}/root", folder, f"canary-{token}")
                    if os.path.isdir(os.path.dirname(path)):
                        _write_as_root_of(template, path, token)
                        planted.append(path)
                assert planted
                template_ns = namespaces(template)
                name = container_name(template)
            uid_map = open(f"/proc/{held.pid}/uid_map").read().split()
            r = parse(pool.run(script(LOOK_AROUND % {"token": token}), timeout=120))
            if template is not None:
                clone_ns = namespaces(held.pid)
                assert all(clone_ns[n] != template_ns[n] for n in clone_ns), (clone_ns,
                                                                              template_ns)
        finally:
            for path in planted:
                os.unlink(path)
            held.release()
    assert r["OTHER_PROCS"] == "", r
    assert r["INIT"] in ("lxcbind-spawner --init", "lxcbind-spawner --init-fd"), r
    for what in ("fd", "root", "cwd", "exe", "environ", "mem", "maps"):
        assert r[f"PROC1_{what}"] in REFUSED, (what, r)
    assert int(r["PROC1_FDS"]) > 0, r       # so the fd attempt above was made
    assert r["DEV_LXCBIND"] in ("", "lxcbind-spawner"), r
    assert r["DEV_HIDDEN"] == "", r         # the template's /dev/.lxcbind-proc, -sys: not here
    assert r["FDS"] == "0,1,2,3", r          # stdio and the listing's own
    assert r["CANARIES"] == "" and r["SOCKET_FILES"] == "" and r["UNIX_REACHED"] == "", r
    assert uid_map[0] == "0" and int(uid_map[1]) >= 1 << 30 and uid_map[2] == "65536", uid_map
    if clones:
        assert name not in r["MOUNTINFO"], r["MOUNTINFO"]


DESTROY = """
    import shutil
    for top in os.listdir("/"):
        if top not in ("proc", "sys", "usr", "dev"):
            shutil.rmtree(os.path.join("/", top), ignore_errors=True)
    for path in ("/", "/tmp", "/dev/shm", "/dev", "/etc"):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "planted"), "w") as f:
            f.write("x")
        report("CHMOD_" + path, libc.chmod(path.encode(), 0o777))
        report("CHOWN_" + path, libc.chown(path.encode(), 1234, 1234))
        report("XATTR_" + path, libc.setxattr(path.encode(), b"user.x", b"1", 1, 0))
        report("TRUSTED_" + path, libc.setxattr(path.encode(), b"trusted.overlay.opaque", b"y",
                                                1, 0))
    for path in ("/usr/planted", "/usr/bin/planted", "/dev/.lxcbind/planted"):
        try:
            open(path, "w").close()
            print(f"WROTE_{path}=OK")
        except OSError as exc:
            print(f"WROTE_{path}=" + errno.errorcode[exc.errno])
    report("LINK_USR", libc.link(b"/usr/bin/env", b"/tmp/env"))
"""


@pytest.mark.parametrize("clones", MODES)
def test_template_and_base_never_change(clones: bool) -> None:
    """Root deletes everything it can reach, plants files, chmods, chowns and sets xattrs on
    /, /tmp, /dev, /dev/shm, /etc, tries the read-only host paths and /dev/.lxcbind: the
    template's root (for a clone, as the host sees it through the cloner) and the base layer
    under the sandbox's overlay are the same inode for inode before and after, and the next
    sandbox starts from an intact tree."""
    with make_pool(clones, size=2) as pool:
        held = Held(pool, hold_script("pass\n"))
        try:
            template = template_of(held.pid)
            owner = template if template is not None else sandbox_init(held.pid)
            lowers = [p for p in root_lowerdirs(owner) if os.path.isdir(p)]
            assert lowers, root_lowerdirs(owner)
            roots = lowers + ([f"/proc/{template}/root"] if template is not None else [])
            before = [fingerprint(root) for root in roots]
            r = parse(pool.run(script(DESTROY), timeout=120))
            after = [fingerprint(root) for root in roots]
        finally:
            held.release()
        fresh = pool.run("cat /etc/passwd >/dev/null && ls /tmp /dev/shm / | grep -c planted",
                         timeout=60)
    assert before == after
    assert all(before), "nothing fingerprinted"
    for path in ("/usr/planted", "/usr/bin/planted", "/dev/.lxcbind/planted"):
        assert r[f"WROTE_{path}"] in ("EROFS", "EACCES", "EPERM", "ENOENT"), r
        assert not os.path.exists(path)
    assert r["LINK_USR"] in ("EXDEV", "EPERM", "EACCES"), r
    assert (fresh.returncode, fresh.stdout) == (1, b"0\n"), fresh   # grep found nothing


# -- leftovers --------------------------------------------------------------------------------

@pytest.mark.parametrize("clones", MODES)
def test_leftovers_are_gone_before_the_result(clones: bool) -> None:
    """setsid'd, double-forked, SIGTERM-ignoring and plain background processes left by a
    command are gone (on the host) when its result comes back."""
    token = str(10**7 + secrets.randbelow(10**7))
    command = (f"setsid sh -c 'trap \"\" TERM HUP; sleep 1{token}1' </dev/null >/dev/null 2>&1 &"
               f" (sh -c 'trap \"\" TERM; exec sleep 2{token}2' &) ;"
               f" sleep 3{token}3 & sleep 0.2; ps -eo args")
    with make_pool(clones, size=1) as pool:
        r = pool.run(command, timeout=60)
        assert r.returncode == 0, r
        assert all(f"sleep {i}{token}{i}".encode() in r.stdout for i in (1, 2, 3)), r
        assert not host_pids(token.encode()), "a leftover outlived its command"


@pytest.mark.parametrize("mode", ["ptrace", "mem", "SIGKILL"])
@pytest.mark.parametrize("clones", MODES)
def test_a_leftover_cannot_forge_the_next_result(clones: bool, mode: str) -> None:
    """test_command_integrity's forger, left by one pooled command, against the next."""
    from .test_command_integrity import _check_script, _plant

    token = secrets.token_hex(8)
    with make_pool(clones, size=1) as pool:
        _plant(pool.run, token, mode)
        r = pool.run(["/bin/sh", "-c", _check_script(token)], timeout=60)
        assert (r.returncode, r.stdout) == (3, f"REAL-RESULT-{token}\n".encode()), r
    assert not host_pids(token.encode())


DENIED_READ = """
    for path in %(paths)r:
        try:
            with open(path) as f:
                print(f"READ_{os.path.basename(path)}=" + f.read().strip())
        except OSError as exc:
            print(f"READ_{os.path.basename(path)}=" + errno.errorcode[exc.errno])
    try:
        print("LISTED=" + ",".join(sorted(os.listdir(%(sub)r))))
    except OSError as exc:
        print("LISTED=" + errno.errorcode[exc.errno])
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for path in %(paths)r:
        report(f"UMOUNT_{os.path.basename(path)}", libc.umount2(path.encode(), 2))
"""


@pytest.mark.parametrize("clones", MODES)
def test_denied_paths_stay_masked(clones: bool) -> None:
    """A read-only host directory with a denied file and a denied subdirectory: the workload
    reads the allowed file, not the secrets, even after trying to unmount the masks."""
    import shutil
    import tempfile

    work = tempfile.mkdtemp(prefix="lxcbind-cla-", dir="/var/tmp")
    try:
        os.chmod(work, 0o755)
        os.makedirs(os.path.join(work, "sub"))
        for rel, text in (("open", "PUBLIC"), ("secret", "TOPSECRET"),
                          ("sub/key", "SUBSECRET")):
            with open(os.path.join(work, rel), "w") as f:
                f.write(text)
        policy_fs = {"readonlyPaths": [work],
                     "deniedPaths": [os.path.join(work, "secret"), os.path.join(work, "sub")]}
        paths = [os.path.join(work, n) for n in ("open", "secret", "sub/key")]
        doc = {"version": "0.8.0", "process": {"commandLine": "true"}, "filesystem": policy_fs}
        pool = (lxcbind.Pool(doc, size=1, clones=True) if clones  # type: ignore[call-arg]
                else lxcbind.Pool(doc, size=1))
        with pool:
            r = parse(pool.run(script(DENIED_READ % {"paths": paths,
                                                     "sub": os.path.join(work, "sub")}),
                               timeout=60))
        assert r["READ_open"] == "PUBLIC", r
        assert "SECRET" not in json.dumps(r), r
        assert r["LISTED"] in ("", "EACCES", "ENOENT"), r
        assert r["UMOUNT_secret"] == r["UMOUNT_key"] == "EPERM", r
        with open(os.path.join(work, "secret")) as f:
            assert f.read() == "TOPSECRET"
    finally:
        shutil.rmtree(work)


@requires_clones
@pytest.mark.parametrize("field,extra", [
    ("network", {"network": {"defaultPolicy": "allow"}}),
    ("filesystem.readwritePaths", {"filesystem": {"readwritePaths": ["/var/tmp"]}}),
    ("lxc.allow", {"lxc": {"allow": ["nesting"]}}),
    ("lxc.allow", {"lxc": {"allow": ["ptrace"]}}),
    ("lxc.allow", {"lxc": {"allow": ["perf"]}}),
    ("lxc.privileged", {"lxc": {"privileged": True}}),
])
def test_clones_refuse_what_they_cannot_isolate(field: str, extra: dict[str, object]) -> None:
    """A policy whose protection a clone cannot give: ValueError naming the field, and no
    template (nor anything else) made for it."""
    before = ours()
    doc = {"version": "0.8.0", "process": {"commandLine": "true"}, **extra}
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        lxcbind.Pool(doc, size=1, clones=True)  # type: ignore[call-arg]
    assert ours() == before


@pytest.mark.parametrize("clones", MODES)
def test_boot_id_is_the_sandboxs_own(clones: bool) -> None:
    """The host's boot id (a stable machine identifier, which liblxc replaces with a random
    one per container) is not shown to the workload."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        host = f.read().strip()
    with make_pool(clones, size=1) as pool:
        r = pool.run("cat /proc/sys/kernel/random/boot_id", timeout=60)
    assert r.returncode == 0 and len(r.stdout.strip()) == 36, r
    assert r.stdout.decode().strip() != host


# -- the kernel surface a clone shows, against a container's ---------------------------------

SURFACE = """
    import json, stat
    writable, readable = [], []
    def walk(top, skip_pids=True):
        for folder, dirs, files in os.walk(top):
            if skip_pids:
                dirs[:] = [d for d in dirs if not d.isdigit() and d not in ("self", "thread-self")]
            for name in files:
                yield os.path.join(folder, name)
    paths = list(walk("/proc/sys")) + [os.path.join("/proc", n) for n in os.listdir("/proc")
                                       if not n[0].isdigit() and n not in ("self", "thread-self")]
    paths += [os.path.join("/proc/self", n) for n in os.listdir("/proc/self")]
    paths += [os.path.join("/dev", n) for n in os.listdir("/dev")]
    paths += ["/sys/kernel/uevent_helper", "/sys/power/state", "/sys/kernel/mm/ksm/run",
              "/sys/fs/cgroup/cgroup.procs", "/sys/kernel/security", "/sys/firmware/efi"]
    for path in sorted(set(paths)):
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            continue
        for flags, into in ((os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY, writable),
                            (os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, readable)):
            try:
                os.close(os.open(path, flags))
                into.append(path)
            except OSError:
                pass
    print("WRITABLE=" + json.dumps(writable))
    print("READABLE=" + json.dumps(readable))
"""


@requires_clones
def test_clone_kernel_surface_is_no_wider_than_a_containers() -> None:
    """Every file of /proc (its sysctls, its top level, the process's own), of /dev and a few
    of /sys that root can open for writing (or reading) in a clone can be opened so in a pooled
    container too: the clone's proc, sysfs and /dev are mounted no more openly than liblxc's
    (proc:mixed, sys:ro)."""
    seen = {}
    for clones in (False, True):
        with make_pool(clones, size=1) as pool:
            r = parse(pool.run(script(SURFACE), timeout=120))
        seen[clones] = {k: set(json.loads(r[k])) for k in ("WRITABLE", "READABLE")}
    wider = seen[True]["WRITABLE"] - seen[False]["WRITABLE"]
    assert not wider, sorted(wider)
    assert not [p for p in seen[True]["WRITABLE"] if p.startswith("/proc/sys/")], seen[True]
    more = seen[True]["READABLE"] - seen[False]["READABLE"]
    assert not more, sorted(more)
    assert seen[True]["WRITABLE"] and seen[True]["READABLE"]   # the probe did open things


@pytest.mark.parametrize("clones", MODES)
def test_a_non_root_workload_has_no_capabilities(clones: bool) -> None:
    """``lxc.uid``/``lxc.gid`` 1000: the command runs as that user with no capability at all
    (effective, permitted, bounding kept as a container's), no_new_privs and the filter."""
    with make_pool(clones, size=1, uid=1000, gid=1000) as pool:
        r = pool.run(STATUS, timeout=60)
    assert r.returncode == 0, r
    lines = r.stdout.decode().splitlines()
    assert lines[-1] == "1000", lines
    mine = dict(line[len("/proc/self/status") + 1:].split(":\t") for line in lines
                if line.startswith("/proc/self/status"))
    assert int(mine["CapEff"], 16) == int(mine["CapPrm"], 16) == 0, mine
    assert int(mine["CapAmb"], 16) == int(mine["CapInh"], 16) == 0, mine
    assert int(mine["CapBnd"], 16) == _keep_mask(), mine
    assert mine["NoNewPrivs"] == "1" and mine["Seccomp"] == "2", mine


SNAPSHOT_ATTACK = """
    import shutil
    for name in ("snapfile", "snapdir/inner"):
        path = "/" + name
        report("WRITE_" + name, libc.truncate(path.encode(), 0))
        report("CHMOD_" + name, libc.chmod(path.encode(), 0o6777))
        report("CHOWN_" + name, libc.chown(path.encode(), 1234, 1234))
        report("XATTR_" + name, libc.setxattr(path.encode(), b"user.x", b"1", 1, 0))
        report("UTIME_" + name, libc.utime(path.encode(), None))
    report("RENAME_DIR", libc.rename(b"/snapdir", b"/moved"))   # EXDEV: overlay, no redirect
    with open("/snapfile", "w") as f:
        f.write("overwritten")
    shutil.rmtree("/moved" if os.path.exists("/moved") else "/snapdir")
"""


@pytest.mark.parametrize("clones", MODES)
def test_a_snapshot_under_the_sandbox_never_changes(clones: bool) -> None:
    """A pool on a snapshot (its layer stacked under every sandbox, idmapped or shifted):
    root truncates, chmods (setuid), chowns, sets xattrs on, renames and deletes the
    snapshot's files, then the template-or-base attack of ``DESTROY``: the snapshot's stored
    layer is the same inode for inode, and the next sandbox reads the snapshot intact."""
    from lxcbind.image import store

    token = secrets.token_hex(8)
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"}}) as box:
        made = box.run(f"mkdir /snapdir && echo {token} > /snapfile && "
                       f"echo {token} > /snapdir/inner")
        assert made.returncode == 0, made
        snap = box.snapshot()
    try:
        before = fingerprint(snap.layer)
        doc = {"version": "0.8.0", "process": {"commandLine": "true"}}
        pool = (lxcbind.Pool(doc, size=1, image=snap, clones=True)  # type: ignore[call-arg]
                if clones else lxcbind.Pool(doc, size=1, image=snap))
        with pool:
            r = parse(pool.run(script(textwrap.dedent(SNAPSHOT_ATTACK) + textwrap.dedent(DESTROY)),
                               timeout=120))
            after = fingerprint(snap.layer)
            fresh = pool.run("cat /snapfile /snapdir/inner", timeout=60)
        assert r["WRITE_snapfile"] == "OK", r     # the writes happened, in its own layer
        assert before == after
        assert len(before) >= 4, before
        assert fresh.stdout == f"{token}\n{token}\n".encode(), fresh
    finally:
        store.remove(snap.id)
