"""The session spawner as a fresh sandbox's init (``lxcbind.sandbox.initspawner``), attacked by
its workload, container root, with real syscalls (python3 + ctypes from the host root
filesystem).  Each test asserts the refusal *and* what the host sees.

The init connects its control socket to a listener the host bound in a directory of the
container's own; the host accepts one connection and removes everything before a command can
run.  What a command could try: reach that channel, change the program, kill or stop its
parent (pid 1), or find its isolation weaker than an attached command's.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap

import pytest

import lxcbind
from lxcbind.lxc.container import default_lxcpath
from lxcbind.proc.spawner import SPAWNER_PROGRAM
from lxcbind.sandbox import initspawner
from lxcbind.sandbox.core import Sandbox, Session

from ..conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(180)]

PY = "/usr/bin/python3"


def policy(**lxc: object) -> dict[str, object]:
    return {"version": "0.8.0", "containerId": new_name("i15-init-"),
            "process": {"commandLine": "true"}, "lxc": lxc}


def _digest(path: os.PathLike[str] | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _listeners(fragment: str) -> list[str]:
    """Unix sockets bound on the host whose path contains ``fragment``: a path of the test's
    own container (other suites on the machine have channels of their own meanwhile)."""
    with open("/proc/net/unix") as f:
        return [line.split()[-1] for line in f if fragment in line]


def _state(pid: int) -> str:
    """The one-letter state of a host process (R running, S sleeping, T stopped, Z zombie)."""
    with open(f"/proc/{pid}/status") as f:
        return next(line for line in f if line.startswith("State:")).split()[1]


PROBE_CHANNEL = r"""
    import ctypes, errno, json, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    out = {"listing": sorted(os.listdir("/dev/.lxcbind"))}
    def attempt(fn):
        try:
            fn()
            return 0
        except OSError as exc:
            return exc.errno
    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect("/dev/.lxcbind/control")
    def bind():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.bind("/dev/.lxcbind/control")
    out["connect"] = attempt(connect)
    out["bind"] = attempt(bind)   # a listener of our own, for a later spawner to reach
    out["write"] = attempt(lambda: open("/dev/.lxcbind/lxcbind-spawner", "wb"))
    out["mkdir"] = attempt(lambda: os.mkdir("/dev/.lxcbind/x"))
    rc = libc.umount2(b"/dev/.lxcbind", 2)   # MNT_DETACH: uncover whatever is below
    out["umount"] = 0 if rc == 0 else ctypes.get_errno()
    rc = libc.mount(b"tmpfs", b"/dev/.lxcbind", b"tmpfs", 0, None)
    out["mount"] = 0 if rc == 0 else ctypes.get_errno()
    out["init"] = open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode()
    out["options"] = [l.split()[5] for l in open("/proc/self/mountinfo")
                      if l.split()[4] == "/dev/.lxcbind"][0]
    print(json.dumps(out))
"""


def test_the_init_channel_is_gone_before_a_command_runs_and_cannot_be_reopened():
    program = _digest(SPAWNER_PROGRAM)
    with Sandbox(policy()) as box:
        cdir = os.path.join(box.container.lxcpath, box.name)
        # Host side, before any command: no folder, no listener.
        channel = os.path.join(cdir, ".lxcbind-init")
        assert not os.path.exists(channel)
        assert _listeners(channel) == []
        r = box.run([PY, "-c", textwrap.dedent(PROBE_CHANNEL)], timeout=60)
        assert r.returncode == 0, r
        out = json.loads(r.stdout)
        assert out["init"] == f"{initspawner.INSIDE}/lxcbind-spawner"
        assert out["listing"] == []                        # program and socket removed
        assert out["connect"] == 2                         # ENOENT: nobody to talk to
        # The folder was deleted on the host after the accept: nothing can be created in it
        # (ENOENT), and the bind is read-only anyway.
        assert out["bind"] == out["write"] == out["mkdir"] == 2
        assert out["options"].split(",")[0] == "ro"
        assert out["umount"] == 1 and out["mount"] == 1    # EPERM: no CAP_SYS_ADMIN
        assert box.run("echo still served").stdout == b"still served\n"
        assert not os.path.exists(os.path.join(cdir, ".lxcbind-init"))
    assert _digest(SPAWNER_PROGRAM) == program             # the host's program untouched
    assert _listeners(channel) == []


WRITE_INIT_PROGRAM = r"""
    import json, os
    out = {}
    for path in ("/proc/1/exe", "/proc/1/root/dev/.lxcbind/lxcbind-spawner"):
        try:
            with open(path, "r+b") as f:
                f.write(b"\x7fELF-overwritten")
            out[path] = 0
        except OSError as exc:
            out[path] = exc.errno
    print(json.dumps(out))
"""


@pytest.mark.parametrize("privileged", [False, True])
def test_container_root_cannot_write_the_program_its_init_runs(privileged):
    # The init runs a hard link of the host package's spawner: the one file the container's
    # init shares with the host.  Non-dumpable (no /proc/1/exe for anyone without
    # CAP_SYS_PTRACE), on a read-only bind, and owned by host root.
    program = _digest(SPAWNER_PROGRAM)
    r = lxcbind.run([PY, "-c", textwrap.dedent(WRITE_INIT_PROGRAM)],
                    policy=policy(privileged=privileged), timeout=60)
    assert r.returncode == 0, r
    assert all(code in (1, 2, 13, 30) for code in json.loads(r.stdout).values()), r.stdout
    assert _digest(SPAWNER_PROGRAM) == program


SIGNAL_INIT = r"""
    import json, os, signal
    out = {}
    for name in ("SIGKILL", "SIGSTOP", "SIGTERM", "SIGINT", "SIGHUP", "SIGSEGV", "SIGUSR1"):
        try:
            os.kill(1, getattr(signal, name))
            out[name] = 0
        except OSError as exc:
            out[name] = exc.errno
    print(json.dumps(out))
"""


@pytest.mark.parametrize("privileged", [False, True])
def test_container_root_cannot_kill_or_stop_its_init_spawner(privileged):
    with Session.from_policy(policy(privileged=privileged)) as session:
        host_pid = session._spawner_host_pid
        assert session.spawner_pid == 1 and host_pid == session.container.init_pid
        r = session.run([PY, "-c", textwrap.dedent(SIGNAL_INIT)], timeout=60)
        assert r.returncode == 0, r
        # The kernel takes the signals and drops them: pid 1 of the namespace has no handler.
        assert set(json.loads(r.stdout).values()) == {0}
        r = session.run("kill -9 $PPID; kill -STOP 1; echo $PPID", timeout=30)
        assert (r.returncode, r.stdout) == (0, b"1\n")
        assert _state(host_pid) in "RSD", _state(host_pid)   # neither stopped nor dead
        assert session.alive
        assert session.run(["echo", "alive"]).stdout == b"alive\n"


ISOLATION = r"""
    import json, os
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    keys = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp", "Seccomp_filters")
    out = {k: status[k].strip() for k in keys}
    out["ns"] = {n: os.readlink("/proc/self/ns/" + n) for n in sorted(os.listdir("/proc/self/ns"))}
    out["cgroup_v1"] = sorted(l for l in open("/proc/self/cgroup").read().split() if l[0] != "0")
    out["personality"] = open("/proc/self/personality").read().strip()
    print(json.dumps(out))
"""


@pytest.mark.parametrize("lxc", [{}, {"privileged": True}, {"uid": 1000, "gid": 1000},
                                 {"uid": 1000, "gid": 1000, "privileged": True}],
                         ids=["default", "privileged", "uid", "uid-privileged"])
def test_a_command_of_the_init_spawner_has_exactly_an_attached_commands_isolation(lxc):
    with Sandbox(policy(**lxc)) as box:
        script = textwrap.dedent(ISOLATION)
        spawned = box.run([PY, "-c", script], timeout=60)           # through the init spawner
        user = {"uid": lxc.get("uid"), "gid": lxc.get("gid")}
        attached = box.container.run([PY, "-c", script], timeout=60, **user)  # liblxc's attach
        assert spawned.returncode == attached.returncode == 0, (spawned, attached)
        a, b = json.loads(spawned.stdout), json.loads(attached.stdout)
        assert a == b
        assert not int(a["CapEff"], 16) & (1 << 19) and not int(a["CapBnd"], 16) & (1 << 19)
        assert a["NoNewPrivs"] == "1" and a["Seccomp"] == "2"
        assert a["Uid"].split() == [str(lxc.get("uid", 0))] * 4
        if "uid" in lxc:   # a user: no capability at all, and no group of root's
            assert int(a["CapEff"], 16) == int(a["CapPrm"], 16) == 0
            assert a["Gid"].split() == ["1000"] * 4 and a["Groups"] == ""


def test_an_init_spawner_serving_as_a_user_cannot_be_signalled_or_read_by_its_commands():
    # The spawner runs as the same uid as its commands here: pid 1's protection, not the uid,
    # keeps them from signalling it, and PR_SET_DUMPABLE (set again after the uid change)
    # from reading it.
    with Session.from_policy(policy(uid=1000, gid=1000)) as session:
        r = session.run([PY, "-c", textwrap.dedent(SIGNAL_INIT)], timeout=60)
        assert r.returncode == 0, r
        assert set(json.loads(r.stdout).values()) == {0}
        r = session.run("cat /proc/1/environ; ls /proc/1/fd; echo rc=$?", timeout=30)
        assert b"Permission denied" in r.stderr and r.stdout.endswith(b"rc=2\n"), r
        assert _state(session._spawner_host_pid) in "RSD"   # neither stopped nor dead
        assert session.run(["id", "-u"]).stdout == b"1000\n"


@pytest.mark.parametrize("blocked", ["folder", "socket"])
def test_an_init_that_cannot_reach_the_host_fails_the_run_clearly_and_leaves_nothing(
        monkeypatch, blocked):
    # The container's root cannot enter the channel's folder (liblxc cannot exec the spawner
    # there) or cannot connect to its socket (the spawner exits 125 before it serves
    # anything): either way the run fails with the reason, and nothing is left.
    made = initspawner.InitChannel.__init__

    def unreachable(self: initspawner.InitChannel, cdir: str) -> None:
        made(self, cdir)
        os.chmod(self.folder if blocked == "folder" else os.path.join(self.folder, "control"),
                 0o700)

    monkeypatch.setattr(initspawner.InitChannel, "__init__", unreachable)
    doc = policy()
    with pytest.raises(lxcbind.SandboxError) as caught:
        lxcbind.run("echo never", policy=doc)
    if blocked == "folder":   # liblxc's own reason, from the container's log
        assert "failed to start" in str(caught.value)
        assert f"{initspawner.INSIDE}/lxcbind-spawner" in str(caught.value)
    else:
        assert "init" in str(caught.value)
    assert doc["containerId"] not in lxcbind.list_containers()
    cdir = os.path.join(default_lxcpath(), str(doc["containerId"]))
    assert not os.path.exists(cdir)
    assert _listeners(os.path.join(cdir, ".lxcbind-init")) == []


def test_a_run_whose_caller_sigkills_itself_leaves_the_init_spawner_to_stop_the_container():
    """The host end of the control socket dies with its process: the init sees EOF, kills
    what it started, exits, and the container stops (gc then removes its records)."""
    import subprocess
    import sys

    name = new_name("i15-init-kill-")
    script = textwrap.dedent(f"""
        import os, signal, lxcbind
        box = lxcbind.Sandbox({{"version": "0.8.0", "containerId": {name!r},
                                "process": {{"commandLine": "true"}}}})
        box.open()
        box.run("sleep 1000 &")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == -signal.SIGKILL
    c = lxcbind.Container(name)
    try:
        c.wait("STOPPED", timeout=30)   # on its own: nothing stopped it from the host
        assert not c.running
    finally:
        c.close()
    assert name in lxcbind.gc()
    assert name not in lxcbind.list_containers()


def test_the_listener_check_sees_a_live_channel(tmp_path):
    """The per-container ``_listeners`` check above can fail: a channel's listener shows by
    its container's path while it exists, and only its own."""
    channel = initspawner.InitChannel(str(tmp_path))
    try:
        assert _listeners(os.path.join(str(tmp_path), ".lxcbind-init")) != []
        assert _listeners(os.path.join(str(tmp_path) + "x", ".lxcbind-init")) == []
    finally:
        channel.close()
    assert _listeners(os.path.join(str(tmp_path), ".lxcbind-init")) == []
