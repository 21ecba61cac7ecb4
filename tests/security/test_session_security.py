"""A Session's commands are hostile: they run as the workload (container root) and attack the
spawner, the caller and the session's bookkeeping with real syscalls (python3 + ctypes from
the host root filesystem).  Each test asserts the refusal *and* what the host sees.

Issue #10: the spawner was a fork of the caller (its environment, argv and heap were
readable), its control socket could be stolen with pidfd_getfd and answered by a background
process, a stopped spawner hung every call, and setsid'd commands outlived close()."""

from __future__ import annotations

import array
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from lxcbind.policy.model import Rootfs
from lxcbind.proc.session import SessionError, SpawnerDied
from lxcbind.sandbox.core import Session
from lxcbind.sandbox.rootfs import define_container, remove_container

from ..conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(180)]

PY = "/usr/bin/python3"

# Planted in this (the caller's) process before any session starts: a spawner that is a
# fork of the caller holds both in its environment and heap.
SECRET = "i10-secret-" + secrets.token_hex(16)
os.environ["LXCBIND_TEST_SECRET"] = SECRET
_HEAP_SECRET = bytearray(SECRET.encode() * 64)


@pytest.fixture(scope="module", params=["default", "privileged"])
def host_container(request):
    """A running container on the host root filesystem (python3 inside), shared here: under
    the default isolation (unprivileged, capability keep-list, seccomp), and bare privileged
    (root inside is root outside, CAP_SYS_PTRACE and all): the protections must hold on
    their own, not because the workload lacks a capability."""
    if request.param == "privileged":
        c = define_container(new_name("i10-sec-"), Rootfs("host"))
        try:
            c.start()
            yield c
        finally:
            remove_container(c)
            c.close()
        return
    from lxcbind.sandbox.core import Sandbox

    box = Sandbox({"version": "0.8.0", "containerId": new_name("i10-sec-"),
                   "process": {"commandLine": "true"}})
    box.__enter__()
    try:
        yield box.container
    finally:
        box.close()


@pytest.fixture
def attached_session(host_container):
    s = Session(host_container)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["attached", "init"])
def session(request, host_container):
    """Both spawners: attached into ``host_container``, and the init of a fresh sandbox of the
    same isolation (``Session.from_policy``: ``lxcbind.sandbox.initspawner``)."""
    if request.param == "attached":
        s = Session(host_container)
    else:
        privileged = request.node.callspec.params["host_container"] == "privileged"
        s = Session.from_policy({"version": "0.8.0", "containerId": new_name("i10-init-"),
                                 "process": {"commandLine": "true"},
                                 "lxc": {"privileged": privileged}})
        assert s.spawner_pid == 1 and s.container.init_pid == s._spawner_host_pid
    try:
        yield s
    finally:
        s.close()


def _py(session: Session, script: str, *, stdin: bytes | None = None, timeout: float = 60):
    r = session.run([PY, "-c", textwrap.dedent(script)], input=stdin, timeout=timeout)
    assert r.returncode == 0, r
    return json.loads(r.stdout)


def _host_pids(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (a unique sleep duration)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _gone(marker: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _host_pids(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _marker() -> str:
    return f"{1000 + secrets.randbelow(10**6)}.{secrets.randbelow(10**6):06d}"


# -- nothing of the caller in the spawner ---------------------------------------------------

READ_PARENT = r"""
    import json, os, sys
    secret = sys.stdin.read()[::-1].encode()  # sent reversed: the spawner never saw it
    ppid = os.getppid()
    out = {}
    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            return exc.errno
    for name in ("cmdline", "environ"):
        data = read(f"/proc/{ppid}/{name}")
        out[name] = data.decode(errors="replace") if isinstance(data, bytes) else data
        out[name + "_has_secret"] = isinstance(data, bytes) and secret in data
    out["own_environ_readable"] = b"PATH=" in read("/proc/self/environ")
    hits = 0
    try:
        with open(f"/proc/{ppid}/maps") as maps, open(f"/proc/{ppid}/mem", "rb") as mem:
            for line in maps:
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                if "r" not in line.split()[1]:
                    continue
                try:
                    mem.seek(start)
                    hits += mem.read(end - start).count(secret)
                except OSError:
                    pass
        out["mem"] = "read"
    except OSError as exc:
        out["mem"] = exc.errno
    out["mem_hits"] = hits
    print(json.dumps(out))
"""


def test_command_cannot_read_the_callers_environ_cmdline_or_memory(session):
    assert SECRET.encode() in _HEAP_SECRET and os.environ["LXCBIND_TEST_SECRET"] == SECRET
    out = _py(session, READ_PARENT, stdin=SECRET[::-1].encode())
    assert out["own_environ_readable"]  # the probe itself works
    # a program of its own, not the caller (as the container's init: its own argv)
    assert out["cmdline"] in ("lxcbind-spawner\0",
                              "/dev/.lxcbind/lxcbind-spawner\0--init\0/dev/.lxcbind/control\0")
    assert not out["cmdline_has_secret"] and not out["environ_has_secret"]
    assert out["environ"] in (13, 1, ""), out  # refused (not dumpable), or empty anyway
    assert out["mem"] in (13, 1), out  # /proc/<spawner>/mem refused
    assert out["mem_hits"] == 0


STEAL_FDS = r"""
    import ctypes, json, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ppid = os.getppid()
    pidfd = libc.syscall(434, ppid, 0)  # pidfd_open
    out = {"pidfd": pidfd, "getfd": {}}
    for target in range(16):
        fd = libc.syscall(438, pidfd, target, 0)  # pidfd_getfd
        out["getfd"][target] = fd if fd >= 0 else -ctypes.get_errno()
    out["ptrace"] = libc.ptrace(16, ppid, None, None)  # PTRACE_ATTACH
    out["ptrace_errno"] = ctypes.get_errno()
    status = open("/proc/self/status").read()
    out["capeff"] = [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0]
    print(json.dumps(out))
"""


def test_command_cannot_pidfd_getfd_or_ptrace_the_spawner(session):
    out = _py(session, STEAL_FDS)
    assert out["pidfd"] >= 0  # it can name the spawner ...
    assert all(v < 0 for v in out["getfd"].values()), out  # ... but take none of its fds
    assert {v for v in out["getfd"].values()} <= {-1, -9}  # EPERM (or EBADF: no such fd)
    assert -1 in out["getfd"].values()  # fd 0 (the control socket) exists and is refused
    assert out["ptrace"] == -1 and out["ptrace_errno"] == 1
    assert not int(out["capeff"], 16) & (1 << 19)  # no CAP_SYS_PTRACE in the workload


FORGER = r"""
    import array, ctypes, os, socket, struct, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    spawner = os.getppid()
    pidfd = libc.syscall(434, spawner, 0)
    log = open("/tmp/forger.log", "w", buffering=1)
    log.write("started\n")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for target in range(8):
            fd = libc.syscall(438, pidfd, target, 0)
            if fd < 0:
                continue
            # The stolen control socket: take the next request, answer it ourselves.
            log.write(f"stole {target}\n")
            sock = socket.socket(fileno=fd)
            msg, anc, _, _ = sock.recvmsg(1 << 17, socket.CMSG_SPACE(64))
            fds = array.array("i")
            for _, _, data in anc:
                fds.frombytes(data[:len(data) - len(data) % 4])
            os.write(fds[2], b"all tests passed\n")
            report = socket.socket(fileno=fds[0])
            report.send(struct.pack("=4i", ord("S"), 4242, 0, 0))
            report.send(struct.pack("=4i", ord("X"), 4242, 0, 0))
        time.sleep(0.01)
    log.write("no fd\n")
"""


def test_background_process_cannot_forge_a_reply(session):
    forger = session.spawn([PY, "-c", textwrap.dedent(FORGER)], stdin=None,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while b"started" not in session.run(["cat", "/tmp/forger.log"]).stdout:
            assert time.monotonic() < deadline
        for _ in range(40):
            r = session.run("echo real output; exit 3")
            assert (r.returncode, r.stdout) == (3, b"real output\n"), r
        assert forger.wait(timeout=30) == 0
        assert session.run(["cat", "/tmp/forger.log"]).stdout == b"started\nno fd\n"
    finally:
        forger.close()


# -- deadlines and kills from the host ------------------------------------------------------


def test_host_finds_a_commands_pidfd_itself(session):
    """The fallback when the spawner sends no pidfd (a seccomp policy denying pidfd_open):
    the host derives it from the spawner's children, and it is the same process."""
    proc = session.spawn(["sleep", "100"])
    try:
        assert proc.host_pid is not None
        fds = session._pidfd_of_child(proc.pid)
        assert len(fds) == 1
        try:
            with open(f"/proc/self/fdinfo/{fds[0]}") as f:
                assert f"Pid:\t{proc.host_pid}\n" in f.read()
        finally:
            os.close(fds[0])
        assert session._pidfd_of_child(999_999) == []
    finally:
        proc.close()


@pytest.mark.parametrize("how", ["STOP", "KILL"])
def test_stopped_or_killed_spawner_cannot_hang_a_run_or_keep_the_command(attached_session,
                                                                       host_container, how):
    session = attached_session
    marker = _marker()
    init = host_container.init_pid
    start = time.monotonic()
    with pytest.raises(SpawnerDied):
        # the short sleep lets the spawner send START (with the pidfd) before it is hit
        session.run(f"sleep 0.2; kill -{how} $PPID; exec sleep {marker}", timeout=2)
    assert time.monotonic() - start < 30  # timeout + grace, not the 1000 s sleep
    assert _gone(marker), "the command outlived its deadline"
    start = time.monotonic()
    with pytest.raises(SpawnerDied):  # every later call fails fast too
        session.run(["true"], timeout=2)
    assert time.monotonic() - start < 30
    session.close()
    assert host_container.init_pid == init and host_container.running


def test_requests_to_a_stopped_spawner_are_bounded(host_container):
    """Many threads sending big requests to a stopped spawner: its socket queue fills, and
    every call still returns (``SpawnerDied``) instead of blocking in sendmsg for ever."""
    import signal
    import threading

    s = Session(host_container)
    outcomes: list[BaseException | None] = []
    try:
        assert s._spawner is not None
        os.kill(s._spawner.pid, signal.SIGSTOP)  # what a command can do with kill -STOP
        big = {"FILLER": "x" * 90_000}  # ~90 KB per request: a few fill the queue

        def call() -> None:
            try:
                s.spawn(["true"], env=big).close()
                outcomes.append(None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcomes.append(exc)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a call blocked on the spawner"
        assert len(outcomes) == 8 and all(isinstance(o, SpawnerDied) for o in outcomes), outcomes
    finally:
        s.close()
    assert not s.alive


def test_setsid_escapee_does_not_outlive_close(host_container):
    """Leftovers normally go when the session has no command left running (see
    test_command_integrity.py); one that runs meanwhile keeps them up to ``close``."""
    marker = _marker()
    with Session(host_container) as s:
        busy = s.spawn(["sleep", "1000"], stdin=None, stdout=None, stderr=None)
        r = s.run(f"setsid sh -c 'sleep {marker}' </dev/null >/dev/null 2>&1 &"
                  f" sleep 0.5; true")
        assert r.returncode == 0
        assert _host_pids(marker), "the escapee should be running before close()"
        assert busy.poll() is None
    assert _gone(marker), "a setsid'd process outlived close()"


def test_setsid_escapee_of_a_killed_spawner_does_not_outlive_close(host_container):
    marker = _marker()
    init = host_container.init_pid
    s = Session(host_container)
    try:
        busy = s.spawn(["sleep", "1000"], stdin=None, stdout=None, stderr=None)  # never idle
        s.run(f"setsid sh -c 'sleep {marker}' </dev/null >/dev/null 2>&1 & sleep 0.5")
        assert _host_pids(marker)
        with pytest.raises(SpawnerDied):
            s.run("kill -KILL $PPID; sleep 5", timeout=10)
        assert _host_pids(marker)  # orphaned to init: only the host can find it now
        busy.close()
    finally:
        s.close()
    assert _gone(marker), "the escapee of a killed spawner outlived close()"
    assert host_container.init_pid == init and host_container.running


# -- malformed requests: refused alone, nothing leaked --------------------------------------

_HEADER = struct.Struct("=8I")
_MAGIC = 0x4C584253


def _raw_request(s: Session, header: tuple[int, ...], data: bytes = b"",
                 extra: list[int] | None = None) -> tuple[int, ...]:
    """Send one hand-made request on the control socket; the spawner's answer record."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        fds = [theirs.fileno(), null, null, null] + (extra or [])
        assert s._ctrl is not None
        s._ctrl.sendmsg([_HEADER.pack(*header), data],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        theirs.close()
        mine.settimeout(10)
        return struct.unpack("=4i", mine.recv(64))
    finally:
        os.close(null)
        mine.close()
        theirs.close()


def _spawner_fds(s: Session) -> int:
    assert s._spawner is not None
    return len(os.listdir(f"/proc/{s._spawner.pid}/fd"))


def _spawner_fds_back_to(s: Session, count: int) -> bool:
    """The spawner holds ``count`` fds again (it closes the last one right after answering)."""
    deadline = time.monotonic() + 10
    while _spawner_fds(s) != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


BAD_HEADERS = {
    # argc + envc + 3 wrapped to 6 in 32 bits (the old parser then wrote far past its array)
    "argc-envc-wrap": (_MAGIC, 0, 0xFFFFFFFF, 4, 0, 2, 0, 0),
    "envc-wrap": (_MAGIC, 0, 1, 0xFFFFFFFD, 0, 2, 0, 0),
    "huge-datalen": (_MAGIC, 0, 1, 0, 0, 0xFFFFFFFF, 0, 0),
    "huge-nextra": (_MAGIC, 0, 1, 0, 0xFFFFFFFF, 2, 0, 0),
    "unknown-flags": (_MAGIC, 0x80000000, 1, 0, 0, 2, 0, 0),
    "bad-magic": (0xDEADBEEF, 0, 1, 0, 0, 2, 0, 0),
    "missing-nul": (_MAGIC, 0, 2, 0, 0, 2, 0, 0),
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_crafted_request_is_refused_alone(session, name):
    before = _spawner_fds(session)
    kind, *_ = _raw_request(session, BAD_HEADERS[name], b"x\0")
    assert kind == ord("E")  # REFUSED
    assert _spawner_fds_back_to(session, before)
    assert session.run(["echo", "still fine"]).stdout == b"still fine\n"


@pytest.mark.parametrize("count", [10, 13, 100])
def test_too_many_fds_are_refused_and_none_leaks(session, count):
    """Extra fds beyond what the header announces (the 14th used to stay open in the
    spawner for good, and a pipe passed that way never saw EOF)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        before = _spawner_fds(session)
        kind, *_ = _raw_request(session, (_MAGIC, 0, 1, 0, 9, 5, 0, 0), b"true\0",
                                extra=[w] * count)
        assert kind == ord("E")
        os.close(w)
        w = -1
        os.set_blocking(r, False)
        deadline = time.monotonic() + 10
        while True:  # EOF only once the spawner dropped every copy of the write end
            try:
                if os.read(r, 1) == b"":
                    break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the spawner kept a passed fd"
                time.sleep(0.01)
        assert _spawner_fds_back_to(session, before)
        assert session.run(["true"]).returncode == 0
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_string_count_wrap_with_enough_data_is_refused(session):
    """The crash of issue #10: counts whose 32-bit sum wraps past the string-table check, with
    enough strings in a memfd that the parser really walks them (the old spawner wrote past
    its table, then crashed or corrupted itself)."""
    argc = 300_000  # more than the table holds
    memfd = os.memfd_create("wrap", os.MFD_CLOEXEC)
    try:
        os.write(memfd, b"\0" * argc)
        header = (_MAGIC, 4, argc, (1 << 32) - argc - 3, 0, argc, 0, 0)
        kind, *_ = _raw_request(session, header, b"", extra=[memfd])
        assert kind == ord("E")
    finally:
        os.close(memfd)
    assert session.alive
    assert session.run(["echo", "intact"]).stdout == b"intact\n"


def test_memfd_request_with_a_lying_size_is_refused(session):
    memfd = os.memfd_create("lie", os.MFD_CLOEXEC)
    try:
        os.write(memfd, b"true\0")
        kind, *_ = _raw_request(session, (_MAGIC, 4, 1, 0, 0, 1 << 20, 0, 0), b"",
                                extra=[memfd])
        assert kind == ord("E")
    finally:
        os.close(memfd)
    assert session.run(["true"]).returncode == 0


def test_closed_session_refuses_cleanly(host_container):
    s = Session(host_container)
    s.close()
    with pytest.raises(SessionError):
        s.run(["true"])


# -- the caller's terminal never reaches a container (issue #9 item 5) ---------------------

TIOCSTI_ATTACK = r"""
    import fcntl, json, os, sys, termios
    out = {}
    for fd in (0, 1, 2):
        out[f"fd{fd}"] = os.readlink(f"/proc/self/fd/{fd}")
        try:
            fcntl.ioctl(fd, termios.TIOCSTI, b"X")
            out[f"sti{fd}"] = "injected"
        except OSError as exc:
            out[f"sti{fd}"] = exc.errno
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        out["devtty"] = "opened"
    except OSError as exc:
        out["devtty"] = exc.errno
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
"""

TERMINAL_DRIVER = r"""
    import fcntl, json, os, pty, sys, termios, textwrap
    sys.path.insert(0, {root!r})
    master, slave = pty.openpty()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # A caller sitting at a terminal: its session, controlling terminal and stdio.
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            from lxcbind import Container
            from lxcbind.sandbox.core import Session
            attack = textwrap.dedent({attack!r})
            result = {{}}
            c = Container({name!r})
            c.attach([{py!r}, "-c", attack, "/tmp/sti-attach.json"]).wait(timeout=60)
            for label, call in (("attach", lambda: c.attach(["true"], stdout=1)),
                                ("attach_stdin", lambda: c.attach(["true"], stdin=0))):
                try:
                    call().wait(timeout=60)
                    result[label] = "accepted"
                except ValueError:
                    result[label] = "refused"
            with Session(c) as s:
                s.spawn([{py!r}, "-c", attack, "/tmp/sti-session.json"], stdin=None,
                        stdout=None, stderr=None).wait(timeout=60)
                try:
                    s.spawn(["true"], stdout=2).wait(timeout=60)
                    result["spawn"] = "accepted"
                except ValueError:
                    result["spawn"] = "refused"
                result["tty_run"] = s.run(["tty"], tty=True).stdout.decode().strip()
            # Anything typed into our terminal would wait in its input queue now.
            queued = fcntl.ioctl(0, termios.FIONREAD, b"\0\0\0\0")
            result["queued"] = int.from_bytes(queued, "little")
            with open({result_path!r}, "w") as f:
                json.dump(result, f)
            code = 0
        finally:
            os._exit(code)
    os.close(slave)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_callers_terminal_never_reaches_a_container(host_container, tmp_path):
    result_path = tmp_path / "result.json"
    driver = textwrap.dedent(TERMINAL_DRIVER).format(
        root=os.getcwd(), attack=TIOCSTI_ATTACK, name=host_container.name, py=PY,
        result_path=str(result_path))
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, timeout=150)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(result_path.read_text())
    assert result["attach"] == result["attach_stdin"] == result["spawn"] == "refused"
    assert result["queued"] == 0, "something was typed into the caller's terminal"
    assert result["tty_run"].startswith("/dev/pts/")  # a terminal of its own still works
    with Session(host_container) as s:
        for where in ("attach", "session"):
            seen = json.loads(s.run(["cat", f"/tmp/sti-{where}.json"]).stdout)
            assert seen["fd0"] == seen["fd1"] == seen["fd2"] == "/dev/null", (where, seen)
            assert "injected" not in seen.values(), (where, seen)
            assert seen["devtty"] != "opened", (where, seen)  # no controlling terminal
