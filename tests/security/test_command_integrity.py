"""A command's result is its own (issue 20, item 2), and a kept container's workload stops with
its run (item 6).

The red-team pattern: a grader runs untrusted code, then its trusted check, in the same
sandbox.  The untrusted command leaves a ``setsid``'d, double-forked daemon (the *forger*)
behind; the forger waits for the next command and changes what it runs or reports: it
rewrites the not-yet-parsed rest of the check's script in its memory (``ptrace``
PEEK/POKEDATA, ``/proc/PID/mem``, ``process_vm_writev``) so that it prints ``ALL TESTS
PASSED`` and exits 0, or it stops or kills the check.  Every case runs against both spawners:
the init of a fresh sandbox (``Session.from_policy``) and one attached to a running container
(``box.session()``).  The check's script waits until the forger says it is done, or is gone:
so on a build where the forger survives it certainly attacks first, and no assertion depends
on timing.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

import lxcbind
from lxcbind.lxc.container import Container
from lxcbind.proc.runner import run as run_attached
from lxcbind.sandbox.core import Sandbox, Session, delete_container

from ..conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(240)]

PY = "/usr/bin/python3"

FORGER = r"""
import ctypes, os, signal, sys, time
token, mode = sys.argv[1], sys.argv[2]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
null = os.open("/dev/null", os.O_RDWR)
for fd in range(3):
    os.dup2(null, fd)
with open("/tmp/forger.pid", "w") as f:
    f.write(str(os.getpid()))
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
OLD = ("echo REAL-" + "RESULT-" + token + "\nexit 3").encode()
NEW = b"echo ALL TESTS PASSED".ljust(len(OLD) - 7) + b"\nexit 0"
WANT = ("REAL-" + "RESULT-" + token).encode()

class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def regions(pid):
    # its writable mappings: where the shell keeps the script it has not run yet
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if fields[1].startswith("rw"):
                yield [int(x, 16) for x in fields[0].split("-")]

def vm(pid, start, data, write):
    local = IoVec(ctypes.cast(data, ctypes.c_void_p), len(data))
    remote = IoVec(start, len(data))
    call = libc.process_vm_writev if write else libc.process_vm_readv
    return call(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)

def hits(data):
    at = data.find(OLD)
    while at >= 0:
        yield at
        at = data.find(OLD, at + 1)

def attack(pid):
    if mode == "SIGKILL":
        os.kill(pid, signal.SIGKILL)
        return
    if mode == "SIGSTOP":
        os.kill(pid, signal.SIGSTOP)
        return
    if mode == "ptrace":
        assert libc.ptrace(16, pid, None, None) == 0    # PTRACE_ATTACH
        os.waitpid(pid, 0x40000000)                     # __WALL: the attach stop
    for start, end in list(regions(pid)):
        if mode == "mem":
            with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
                mem.seek(start)
                for at in hits(mem.read(end - start)):
                    mem.seek(start + at)
                    mem.write(NEW)
        elif mode == "process_vm_writev":
            buf = ctypes.create_string_buffer(end - start)
            if vm(pid, start, buf, False) != end - start:
                continue
            new = ctypes.create_string_buffer(NEW, len(NEW))
            for at in hits(buf.raw):
                assert vm(pid, start + at, new, True) == len(NEW)
        elif mode == "ptrace":
            words = bytearray()
            for addr in range(start, end, 8):               # PTRACE_PEEKDATA
                words += (libc.ptrace(2, pid, addr, None) & (2**64 - 1)).to_bytes(8, "little")
            for at in hits(bytes(words)):
                words[at:at + len(NEW)] = NEW
                for off in range(at - at % 8, at + len(NEW), 8):   # PTRACE_POKEDATA
                    word = int.from_bytes(words[off:off + 8], "little")
                    libc.ptrace(5, pid, start + off, ctypes.c_void_p(word))
    if mode == "ptrace":
        libc.ptrace(17, pid, None, None)                # PTRACE_DETACH

deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found = WANT in f.read()
        except OSError:
            continue
        if found:
            try:
                attack(int(entry))
                note = "attacked"
            except Exception as exc:
                note = f"failed {exc!r}"
            with open("/tmp/forger.log", "w") as f:
                f.write(note)
            open("/tmp/attacked", "w").close()
            sys.exit(0)
    time.sleep(0.005)
"""

MODES = ["ptrace", "mem", "process_vm_writev", "SIGSTOP", "SIGKILL"]


def _check_script(token: str) -> str:
    """The trusted check: waits until the forger has attacked or is gone (so a forger that
    survives always strikes first), then says who it is and exits 3.  Lines of ``sh -c`` are
    parsed one at a time from argv: the last two are still in the stack when it waits."""
    return ("while [ ! -e /tmp/attacked ] && kill -0 \"$(cat /tmp/forger.pid)\" 2>/dev/null;"
            " do sleep 0.02; done\n"
            f"echo REAL-RESULT-{token}\nexit 3")


def _host_pids(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _number() -> str:
    """A unique marker that is also a valid ``sleep`` duration's digits."""
    return str(10**6 + secrets.randbelow(10**6))


def _plant(run, token: str, mode: str):
    """Command 1: the untrusted code, which leaves the forger and returns at once."""
    r = run([PY, "-c", FORGER, token, mode])
    assert r.returncode == 0, r
    return r


def _assert_real(run, token: str) -> None:
    r = run(["/bin/sh", "-c", _check_script(token)], timeout=60)
    assert not r.timed_out, r
    assert (r.returncode, r.stdout) == (3, f"REAL-RESULT-{token}\n".encode()), r
    assert not _host_pids(token), "the forger is still running"
    assert run("test -e /tmp/attacked").returncode == 1   # it never struck


def policy(**lxc: object) -> dict[str, object]:
    return {"version": "0.8.0", "containerId": new_name("i20-int-"),
            "process": {"commandLine": "true"}, "lxc": lxc}


@pytest.fixture(scope="module")
def box():
    with Sandbox(policy()) as b:
        yield b


@pytest.fixture(params=["init", "attached", "init-user", "attached-user"])
def runner(request, box):
    """``run`` of both spawners: a fresh sandbox's init (``Session.from_policy``) and one
    attached to the running sandbox (``box.session()``); as container root, and as a user
    (``lxc.uid``: no capabilities at all, forger and check of the same uid)."""
    user = {"uid": 1000, "gid": 1000} if request.param.endswith("user") else {}
    if request.param.startswith("init"):
        s = Session.from_policy(policy(**user))
        assert s.spawner_pid == 1
    else:
        box.run("rm -f /tmp/attacked /tmp/forger.pid /tmp/forger.log")
        s = Session(box.container, **user) if user else box.session()
        assert s.spawner_pid != 1
    try:
        yield s.run
    finally:
        s.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_leftover_daemon_cannot_forge_the_next_commands_result(runner, mode):
    token = secrets.token_hex(8)
    _plant(runner, token, mode)
    _assert_real(runner, token)


@pytest.mark.parametrize("mode", ["ptrace", "mem"])
def test_sandbox_run_result_is_its_own(mode):
    """``Sandbox.run`` (the init spawner), the grader's own call."""
    token = secrets.token_hex(8)
    with Sandbox(policy()) as b:
        _plant(b.run, token, mode)
        _assert_real(b.run, token)


def test_run_and_kill_leave_nothing_before_the_result():
    """``lxcbind.run()``: the leftover is gone when the result comes back, not only later."""
    token = secrets.token_hex(8)
    r = lxcbind.run([PY, "-c", FORGER, token, "SIGKILL"])
    assert r.returncode == 0
    assert not _host_pids(token)


def test_leftovers_of_a_session_command_die_before_its_result(runner):
    """Whatever a command leaves (a setsid daemon, a double fork, a plain background job,
    one that holds the command's stdout) is dead when ``run`` returns."""
    token = _number()
    r = runner(f"setsid sleep 1{token}1 </dev/null >/dev/null 2>&1 &"
               f" (sleep 2{token}2 &) ; sleep 3{token}3 & sleep 0.2; ps -eo args")
    assert r.returncode == 0, r
    assert all(f"sleep {i}{token}{i}".encode() in r.stdout for i in (1, 2, 3)), r
    assert not _host_pids(token), "a leftover outlived its command"


def test_a_fork_bombing_leftover_is_gone_before_the_result():
    """A leftover that forks as fast as it can (up to the pids limit) is still killed to the
    last process, by both spawners, and the next command runs normally."""
    bomb = ("setsid sh -c 'f() { f | f & }; f' </dev/null >/dev/null 2>&1 &"
            " sleep 0.5; echo planted")
    with Sandbox(policy(limits={"pids": 128})) as b:
        with b.session() as attached:
            for run in (b.run, attached.run):
                r = run(bomb, timeout=60)
                assert (r.returncode, r.stdout) == (0, b"planted\n"), r
                r = run("ps -e -o args | grep -c '^sh -c f'", timeout=60)
                assert r.stdout == b"0\n", r   # ... none of it left
                assert run("echo next", timeout=60).stdout == b"next\n"


def test_concurrent_commands_do_not_kill_each_other(box):
    """Leftovers go only when no command of the spawner runs: a command started meanwhile
    (``spawn``, ``map`` with workers) is not cut short by another's end."""
    with box.session() as s:
        token = secrets.token_hex(4)
        slow = s.spawn(f"sleep 1 & sleep 1.5; wait; echo slow-{token}")
        results = s.map([f"(sleep 0.{i} &); echo {i}" for i in range(6)], workers=3)
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(6)]
        out, _ = slow.communicate(timeout=60)
        assert (slow.returncode, out) == (0, f"slow-{token}\n".encode())


def test_attached_spawners_and_file_copies_survive_the_inits_cleanup():
    """The init spawner kills only its own subtree: a session attached into the same sandbox
    (and its running command) outlive ``box.run``."""
    with Sandbox(policy()) as b, b.session() as s:
        token = secrets.token_hex(4)
        proc = s.spawn(f"read x; echo got-$x-{token}")
        assert b.run("setsid sleep 1000 & echo hi").stdout == b"hi\n"
        b.put("/tmp/f", b"data")
        assert b.get("/tmp/f") == b"data"
        assert s.alive
        out, _ = proc.communicate(b"it\n", timeout=60)
        assert out == f"got-it-{token}\n".encode()


def test_an_attached_spawner_spares_what_it_did_not_start(box):
    """Only the spawner's own subtree goes: the container's init and a process attached by
    liblxc meanwhile (someone else's, in a shared container) outlive its cleanups."""
    token = _number()
    other = box.container.attach(["sleep", f"1{token}1"])
    try:
        init = box.container.init_pid
        with box.session() as s:
            assert s.run("setsid sleep 1000 & echo x").stdout == b"x\n"
            assert s.run("true").returncode == 0
        assert other.poll() is None and _host_pids(token)
        assert box.container.init_pid == init and box.container.running
    finally:
        other.close()


def test_persistent_shell_keeps_its_background_jobs(box):
    """The shell is one long-running command: its jobs live across calls (and its commands
    share one trust domain: an earlier call can redefine any command anyway)."""
    with box.session() as s, s.shell(program="/bin/bash") as sh:
        token = _number()
        assert sh.run(f"sleep 1{token}1 &").returncode == 0
        r = sh.run("jobs")
        assert b"Running" in r.stdout and f"sleep 1{token}1".encode() in r.stdout, r
        assert s.run("true").returncode == 0   # another command ends: the job stays
        assert b"Running" in sh.run("jobs").stdout
        assert _host_pids(token)
    assert not _host_pids(token), "the shell's job outlived the session"


# -- ptrace is denied by default, and the opt-in gives it back ------------------------------

PTRACE_PROBE = r"""
import ctypes, json, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
child = os.fork()
if child == 0:
    time.sleep(100)
    os._exit(0)
out = {}
out["attach"] = libc.ptrace(16, child, None, None)
out["attach_errno"] = ctypes.get_errno()
if out["attach"] == 0:
    os.waitpid(child, 0)
    libc.ptrace(17, child, None, None)
buf = ctypes.create_string_buffer(8)
iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
here = ctypes.create_string_buffer(b"12345678")
remote = IoVec(ctypes.cast(here, ctypes.c_void_p), 8)
out["readv"] = libc.process_vm_readv(os.getpid(), ctypes.byref(iov), 1, ctypes.byref(remote), 1, 0)
out["readv_errno"] = ctypes.get_errno()
out["writev"] = libc.process_vm_writev(child, ctypes.byref(iov), 1, ctypes.byref(remote), 1, 0)
out["writev_errno"] = ctypes.get_errno()
os.kill(child, signal.SIGKILL)
print(json.dumps(out))
"""


def test_profile_text_denies_the_ptrace_family_unless_allowed():
    from lxcbind.sandbox import security

    names = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd")
    default = security.seccomp_profile().splitlines()
    assert all(f"{name} errno 1" in default for name in names)
    allowed = security.seccomp_profile(("ptrace",)).splitlines()
    assert not any(line.split()[0] in names for line in allowed if line.split())
    assert "perf_event_open errno 1" in allowed   # only what the opt-in names


@pytest.mark.parametrize("allow", [[], ["ptrace"]])
def test_ptrace_family_is_denied_unless_the_policy_allows_it(allow):
    with Sandbox(policy(allow=allow)) as b:
        r = b.run([PY, "-c", PTRACE_PROBE])
    assert r.returncode == 0, r
    out = json.loads(r.stdout)
    if allow:
        assert out["attach"] == 0 and out["readv"] == 8, out       # gdb and strace work
    else:
        assert (out["attach"], out["attach_errno"]) == (-1, 1), out  # EPERM
        assert (out["readv"], out["readv_errno"]) == (-1, 1), out
        assert (out["writev"], out["writev_errno"]) == (-1, 1), out


def test_pool_commands_never_share_a_container():
    """Pool: each command has a fresh container; a forger left by one never sees another."""
    token = secrets.token_hex(8)
    with lxcbind.Pool(policy(), size=1) as pool:
        _plant(pool.run, token, "ptrace")
        r = pool.run(["/bin/sh", "-c", _check_script(token)], timeout=60)
        assert (r.returncode, r.stdout) == (3, f"REAL-RESULT-{token}\n".encode()), r
    assert not _host_pids(token)


# -- item 6: a kept container's workload stops with its run ---------------------------------

def _size(path: os.PathLike[str]) -> int:
    return os.stat(path).st_size


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kept(name: str, command: str = "true", **extra: object) -> dict[str, object]:
    return {"version": "0.8.0", "containerId": name, "process": {"commandLine": command},
            "lifecycle": {"destroyOnExit": False}, **extra}


@pytest.mark.parametrize("mode", ["ptrace", "SIGKILL"])
def test_kept_container_sandbox_run_result_is_its_own(mode):
    """A kept container's ``Sandbox.run`` goes through one attached spawner: the forger is
    gone before the check starts there too."""
    name = new_name("i20-kept-")
    token = _number()
    try:
        with Sandbox(_kept(name)) as b:
            _plant(b.run, token, mode)
            _assert_real(b.run, token)
    finally:
        delete_container(name)


@pytest.mark.parametrize("how", ["setsid", "double-fork"])
@pytest.mark.parametrize("via", ["Sandbox.run", "attach", "cli"])
def test_kept_containers_workload_stops_with_its_run(tmp_path, how, via):
    """``lifecycle.destroyOnExit: false``: the container stays, its workload does not.  A
    daemon writes to a read-write host path; once the run returned the file stops growing.
    Through ``Sandbox.run`` (the kept container's spawner), the bare binding's attach
    (``box.container``) and the CLI (a kept run's command is attached by liblxc)."""
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    name = new_name("i20-kept-")
    token = _number()
    loop = f"while :; do echo {token} >> {out}/log; sleep 0.01; done"
    start = {"setsid": f"setsid sh -c '{loop}' </dev/null >/dev/null 2>&1 &",
             "double-fork": f"(sh -c '{loop}' </dev/null >/dev/null 2>&1 &) ;"}[how]
    command = f"{start} while [ ! -s {out}/log ]; do sleep 0.01; done; echo started"
    doc = _kept(name, command, filesystem={"readwritePaths": [str(out)]})
    try:
        if via == "cli":
            policy_file = tmp_path / "kept.json"
            policy_file.write_text(json.dumps(doc))
            r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--no-tty",
                                str(policy_file)], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=120, cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=ROOT))
            assert (r.returncode, r.stdout) == (0, b"started\n"), r
        else:
            with Sandbox(doc) as b:
                init = b.container.init_pid
                if via == "attach":
                    r = run_attached(b.container, ["/bin/sh", "-c", command], timeout=60)
                else:
                    r = b.run(timeout=60)
                assert r.stdout == b"started\n", r
        first = _size(out / "log")
        assert first > 0
        time.sleep(0.5)
        assert _size(out / "log") == first, "the daemon kept writing after the run returned"
        assert not _host_pids(f"echo {token}")
        # ... and the container itself still runs, with its own init.
        with Container(name) as c:
            assert c.running
            if via != "cli":
                assert c.init_pid == init
    finally:
        delete_container(name)
