"""The liblxc binding against real busybox containers: lifecycle, config, attach, traps."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time

import pytest

from lxcbind.errors import LxcError
from tests.conftest import make_busybox, new_name, requires_lxc, requires_root, run_threads
from tests.signal_arrival import each_arrival

pytestmark = [requires_root, requires_lxc]


def capture(c, argv, **kwargs):
    """Attach with stdout+stderr on one pipe; return (Process, output bytes)."""
    r, w = os.pipe()
    try:
        proc = c.attach(argv, stdout=w, stderr=w, **kwargs)
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    proc.wait()
    return proc, b"".join(chunks)


def test_lifecycle_round_trip(container_name):
    from lxcbind import Container, list_containers

    with Container(container_name) as c:
        assert not c.defined and c.state == "STOPPED" and c.init_pid is None
        c.create("busybox")
        c.clear_config_item("lxc.net")
        c.set_config_item("lxc.net.0.type", "empty")
        c.clear_config_item("lxc.apparmor.profile")   # as make_busybox: no compile per start
        c.clear_config_item("lxc.apparmor.allow_nesting")
        c.save_config()
        assert c.defined and container_name in list_containers()
        c.start()
        assert c.running and c.state == "RUNNING"
        pid = c.init_pid
        assert pid and os.path.exists(f"/proc/{pid}")
        pidfd = c.init_pidfd()
        try:
            assert os.readlink(f"/proc/self/fd/{pidfd}") == "anon_inode:[pidfd]"
        finally:
            os.close(pidfd)
        c.wait("RUNNING", 1)
        c.stop()
        assert not c.running and c.state == "STOPPED"
        c.stop()  # stopping a stopped container is a no-op
        c.destroy()
        assert not c.defined and container_name not in list_containers()


def test_start_leaves_caller_in_its_cgroups_and_stop_removes_monitor_cgroup(container_name):
    with open("/proc/self/cgroup") as f:
        before = f.read()
    c = make_busybox(container_name)
    try:
        with open("/proc/self/cgroup") as f:
            assert f.read() == before
        assert "lxc.monitor" not in before
        c.stop()
        left = [d for d in os.listdir("/sys/fs/cgroup") if os.path.isdir(
            f"/sys/fs/cgroup/{d}/lxc.monitor.{container_name}")]
        assert left == []
    finally:
        c.destroy()
        c.close()


def test_config_items_round_trip_and_bad_keys(busybox):
    from lxcbind import LxcError

    busybox.set_config_item("lxc.environment", "FOO=bar")
    assert "FOO=bar" in busybox.get_config_item("lxc.environment")
    busybox.clear_config_item("lxc.environment")
    assert busybox.get_config_item("lxc.environment") == ""
    assert busybox.get_config_item("lxc.uts.name") == busybox.name
    with pytest.raises(KeyError):
        busybox.get_config_item("lxc.no.such.key")
    with pytest.raises(LxcError) as info:
        busybox.set_config_item("lxc.no.such.key", "1")
    assert isinstance(info.value, OSError) and "lxc.no.such.key" in str(info.value)


def test_save_and_load_config(busybox, tmp_path):
    from lxcbind import Container

    busybox.set_config_item("lxc.environment", "SAVED=1")
    alt = tmp_path / "config"
    busybox.save_config(str(alt))
    assert "SAVED=1" in alt.read_text()
    with Container(busybox.name) as other:
        other.load_config(str(alt))
        assert "SAVED=1" in other.get_config_item("lxc.environment")


@pytest.mark.parametrize("argv,code,sig", [
    (["true"], 0, None),
    (["false"], 1, None),
    (["sh", "-c", "exit 42"], 42, None),
    (["sh", "-c", "kill -TERM $$"], -15, 15),
    (["sh", "-c", "kill -KILL $$"], -9, 9),
])
def test_attach_exit_statuses(shared_busybox, argv, code, sig):
    proc, _ = capture(shared_busybox, argv)
    assert proc.returncode == code
    assert proc.exec_error is None and not proc.attach_failed
    assert proc.exit_status == (128 + sig if sig else code)


def test_missing_program_is_127_and_told_apart_from_a_program_exiting_127(shared_busybox):
    missing, _ = capture(shared_busybox, ["no-such-program"])
    assert missing.returncode == 127
    assert missing.exec_error is not None and missing.exec_error.errno == errno.ENOENT
    own, _ = capture(shared_busybox, ["sh", "-c", "exit 127"])
    assert own.returncode == 127 and own.exec_error is None


def test_non_executable_file_is_126(shared_busybox):
    proc, _ = capture(shared_busybox, ["/etc/passwd"])
    assert proc.returncode == 126 and proc.exec_error.errno == errno.EACCES
    own, _ = capture(shared_busybox, ["sh", "-c", "exit 126"])
    assert own.returncode == 126 and own.exec_error is None


def test_missing_cwd_is_an_error_not_a_silent_run_in_root(shared_busybox):
    proc, out = capture(shared_busybox, ["sh", "-c", "echo ran"], cwd="/no/such/dir")
    assert out == b""
    assert proc.returncode == 126
    assert proc.exec_error.stage == "chdir" and proc.exec_error.filename == "/no/such/dir"
    proc, out = capture(shared_busybox, ["pwd"], cwd="/tmp")
    assert out == b"/tmp\n"


def test_environment_is_exactly_env_plus_baseline(shared_busybox):
    from lxcbind.lxc.attach import baseline_env

    proc, out = capture(shared_busybox, ["env"], env={"A": "1", "WITH_EQ": "x=y", "TERM": "vt100"})
    assert proc.returncode == 0
    seen = dict(line.split("=", 1) for line in out.decode().splitlines())
    expected = baseline_env() | {"A": "1", "WITH_EQ": "x=y", "TERM": "vt100"}
    # busybox env adds nothing; PWD/SHLVL come only from shells, and `env` is no shell
    assert seen == expected


def test_secret_env_values_never_appear_on_a_command_line(shared_busybox):
    secret = "s3cr3t-" + os.urandom(6).hex()
    r, w = os.pipe()
    proc = shared_busybox.attach(["sh", "-c", "sleep 5"], env={"TOKEN": secret}, stdout=w)
    os.close(w)
    try:
        time.sleep(0.2)
        # every process on the host, the container's included
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert secret.encode() not in f.read()
            except (FileNotFoundError, ProcessLookupError):
                pass
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            assert f"TOKEN={secret}".encode() in f.read().split(b"\0")
    finally:
        proc.kill()
        proc.wait()
        os.close(r)


def test_uid_and_gid(shared_busybox):
    proc, out = capture(shared_busybox, ["id"], uid=1234, gid=4321)
    assert proc.returncode == 0
    assert "uid=1234" in out.decode() and "gid=4321" in out.decode()


def test_attached_process_is_its_own_session_with_default_signals(shared_busybox):
    # cat is exec'd directly by the exec function, so /proc/self is the attached process
    _, stat = capture(shared_busybox, ["cat", "/proc/self/stat"])
    pid_in_ns = int(stat.split()[0])
    fields = stat.rsplit(b")", 1)[1].split()
    pgrp, session = int(fields[2]), int(fields[3])
    assert pgrp == pid_in_ns and session == pid_in_ns
    _, status = capture(shared_busybox, ["cat", "/proc/self/status"])
    masks = dict(line.split(":\t") for line in status.decode().splitlines()
                 if line.startswith("Sig"))
    assert int(masks["SigBlk"], 16) == 0
    assert int(masks["SigIgn"], 16) == 0  # Python's ignored SIGPIPE is not inherited


def test_no_inherited_descriptors_reach_the_command(shared_busybox):
    leak = os.open("/dev/null", os.O_RDONLY)  # deliberately inheritable
    os.set_inheritable(leak, True)
    try:
        proc, out = capture(shared_busybox, ["ls", "/proc/self/fd"])
    finally:
        os.close(leak)
    fds = sorted(int(x) for x in out.split())
    assert fds == [0, 1, 2, 3]  # 3 is ls's own directory handle


def test_caller_keeps_sigint_after_attach(shared_busybox):
    before = signal.getsignal(signal.SIGINT)
    capture(shared_busybox, ["true"], stdin=0)
    with open("/proc/self/status") as f:
        ign = int(next(line for line in f if line.startswith("SigIgn")).split()[1], 16)
    assert not ign & (1 << (signal.SIGINT - 1)) and not ign & (1 << (signal.SIGQUIT - 1))
    assert signal.getsignal(signal.SIGINT) is before


def test_concurrent_attaches_from_four_threads_on_one_handle(shared_busybox):
    codes: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(25):
            proc, out = capture(shared_busybox, ["sh", "-c", f"echo {n}-{i}; exit {i % 7}"])
            assert out == f"{n}-{i}\n".encode()
            with lock:
                codes.append(proc.returncode - i % 7)

    assert run_threads(worker, 4) == []
    assert codes == [0] * 100


def test_thousand_attaches_leak_no_descriptors(shared_busybox):
    for _ in range(5):
        shared_busybox.attach(["true"]).wait()
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(1000):
        assert shared_busybox.attach(["true"]).wait() == 0
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_attach_to_stopped_container_raises_clear_error(container_name):
    from lxcbind import LxcError

    c = make_busybox(container_name, start=False)
    try:
        with pytest.raises(LxcError) as info:
            c.attach(["true"])
        assert info.value.errno == errno.ECONNREFUSED
        assert "not running" in str(info.value) and container_name in str(info.value)
    finally:
        c.destroy()
        c.close()


def test_stop_kills_and_reaps_attached_processes_first(container_name):
    c = make_busybox(container_name)
    try:
        procs = [c.attach(["sleep", "1000"]) for _ in range(3)]
        started = time.monotonic()
        c.stop()
        assert time.monotonic() - started < 10
        assert not c.running
        for p in procs:
            assert p.returncode == -9
            with pytest.raises(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
    finally:
        c.destroy()
        c.close()


def test_wait_with_timeout_and_kill(shared_busybox):
    import subprocess

    proc = shared_busybox.attach(["sleep", "100"])
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    assert proc.poll() is None
    proc.kill()
    assert proc.wait(timeout=5) == -9
    assert proc.exit_status == 137


def test_create_failure_raises_and_leaves_nothing(container_name):
    from lxcbind import Container, LxcError, list_containers

    with Container(container_name) as c:
        with pytest.raises(LxcError) as info:
            c.create("no-such-template-xyz")
        assert "create" in str(info.value)
        assert not c.defined
    assert container_name not in list_containers()


def test_closed_handle_refuses_calls(container_name):
    from lxcbind import Container

    c = Container(container_name)
    c.close()
    c.close()
    with pytest.raises(ValueError):
        _ = c.defined


class _Interrupt(Exception):
    pass


def test_a_signal_handler_raising_mid_attach_never_orphans_a_child(container_name):
    """Ctrl-C (any raising handler) at any moment of attach: every child stays owned, so
    stop() kills and reaps it instead of hanging on a zombie."""
    def interrupt(signum, frame):
        raise _Interrupt()

    c = make_busybox(container_name)
    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupted = 0
    kept = []
    try:
        for i in range(300):
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.0005 + (i % 40) * 0.0001)
                try:
                    kept.append(c.attach(["sleep", "100"]))
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _Interrupt:
                interrupted += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    try:
        assert interrupted > 0  # the handler did fire around attaches
        stopper = threading.Thread(target=c.stop)
        stopper.start()
        stopper.join(timeout=20)
        assert not stopper.is_alive(), "stop() hangs: an attached child was never reaped"
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            assert f.read().split() == []  # nothing left unreaped
    finally:
        # If the feature is broken, reap the orphans by hand so teardown can stop the container.
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            for pid in map(int, f.read().split()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
        c.destroy()
        c.close()


def test_a_handler_raising_as_attach_blocks_signals_leaves_no_mask_behind(
        container_name, monkeypatch):
    """A signal whose handler raises, arriving before each of attach's pthread_sigmask calls
    in turn (``tests/signal_arrival.py``): the thread's mask is as it was every time (a CLI
    whose main thread kept every signal blocked would ignore Ctrl-C and SIGTERM for good), and
    every child made meanwhile is still owned: stop() reaps them."""
    c = make_busybox(container_name)
    try:
        assert each_arrival(monkeypatch, lambda: c.attach(["sleep", "100"])) >= 2
        stopper = threading.Thread(target=c.stop)
        stopper.start()
        stopper.join(timeout=60)
        assert not stopper.is_alive(), "stop() hangs: an attached child was never reaped"
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            assert f.read().split() == []
    finally:
        c.destroy()
        c.close()


def test_a_handler_raising_as_the_starters_start_blocks_signals_leaves_no_mask_behind(
        container_name, monkeypatch):
    """The same for a start through lxcbind-starter (signals are blocked while it runs)."""
    c = make_busybox(container_name, start=False)

    def stop_if_started() -> None:
        if c.running:
            c.stop()

    try:
        assert each_arrival(monkeypatch, c.start, stop_if_started) >= 2
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            assert f.read().split() == []   # the starter was waited for on every path
    finally:
        c.destroy()
        c.close()


@pytest.mark.parametrize("where", ["in-process", "starter"])
def test_concurrent_starts_leave_the_caller_in_its_own_cgroups(where):
    """Starts in several threads at once (a Pool's starters): the process must end up where
    it was, not in one of the containers' monitor cgroups.  In process (an unsaved config item
    keeps liblxc's start here, which moves this process), and through the starter."""
    import threading

    before = open("/proc/self/cgroup").read()
    made = [make_busybox(new_name(), start=False) for _ in range(6)]
    if where == "in-process":
        for c in made:
            c.set_config_item("lxc.pty.max", "64")   # unsaved from now on
    barrier = threading.Barrier(len(made))

    def worker(n: int) -> None:
        barrier.wait()
        made[n].start()

    try:
        for _ in range(3):
            assert not run_threads(worker, len(made))
            assert open("/proc/self/cgroup").read() == before
            for c in made:
                c.stop()
    finally:
        for c in made:
            c.destroy()
            c.close()


def _monitor_program(c) -> str:
    """The program of the container's monitor (the parent of its init): what ran liblxc's
    start, since the monitor is a fork of it."""
    with open(f"/proc/{c.init_pid}/status") as f:
        ppid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
    return os.path.basename(os.readlink(f"/proc/{ppid}/exe"))


def _hostname(c) -> bytes:
    proc, out = capture(c, ["hostname"])
    assert proc.returncode == 0
    return out.strip()


def test_a_saved_config_starts_in_the_starter_an_unsaved_item_in_process(container_name):
    c = make_busybox(container_name, start=False)
    try:
        c.start()   # the config on disk is the handle's: liblxc's start runs in the starter
        assert _monitor_program(c) == "lxcbind-starter"
        assert _hostname(c) == container_name.encode()
        c.stop()
        c.set_config_item("lxc.uts.name", "unsaved")   # only in this handle: start it here
        c.start()
        assert _monitor_program(c) != "lxcbind-starter"
        assert _hostname(c) == b"unsaved"
        c.stop()
        c.save_config()
        c.start()
        assert _monitor_program(c) == "lxcbind-starter" and _hostname(c) == b"unsaved"
        c.stop()
    finally:
        c.destroy()
        c.close()


def test_a_start_the_starter_cannot_make_raises_liblxcs_reason_and_leaves_it_stopped(
        container_name):
    c = make_busybox(container_name, start=False)
    try:
        c.set_config_item("lxc.init.cmd", "/no/such/init")
        c.save_config()
        with pytest.raises(LxcError) as caught:
            c.start()
        assert "start" in str(caught.value) and "/no/such/init" in str(caught.value)
        assert not c.running and c.init_pid is None
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)   # the starter was reaped: no child of ours is left
    finally:
        c.destroy()
        c.close()


def _starter_running() -> bool:
    """Whether a child of this (main) thread is lxcbind-starter."""
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        pids = f.read().split()
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "lxcbind-starter":
                return True
    return False


def test_a_signal_during_a_start_in_the_starter_is_handled_once_it_has_returned(
        container_name):
    """A Python handler that raises (Ctrl-C) cannot cut the wait for the starter short: the
    container is started and watched when the exception arrives, and the starter reaped.
    The signal is sent to the main thread once the starter runs (not after a fixed delay,
    which on a slow host lands before the start has begun); a start too quick to be seen
    gets it just after it returned, which must end the same way."""
    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    main = threading.get_ident()
    returned = threading.Event()

    def send_while_the_starter_runs() -> None:
        while not returned.is_set() and not _starter_running():
            time.sleep(0.0002)
        signal.pthread_kill(main, signal.SIGALRM)

    c = make_busybox(container_name, start=False)
    previous = signal.signal(signal.SIGALRM, handler)
    sender = threading.Thread(target=send_while_the_starter_runs)
    try:
        with pytest.raises(Interrupted):
            sender.start()
            try:
                c.start()
            finally:
                returned.set()
            sender.join()
            time.sleep(5)   # the handler runs as soon as the main thread checks for signals
        assert c.running and _monitor_program(c) == "lxcbind-starter"
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
    finally:
        returned.set()
        sender.join()
        signal.signal(signal.SIGALRM, previous)
        c.destroy()
        c.close()
