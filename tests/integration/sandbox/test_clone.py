"""Pool(clones=True): a light clone of a warm template per command (issue #23).

Real containers: the template is a liblxc container of the policy, every clone a real set of
namespaces made by lxcbind-cloner in it.  The attack suite is tests/security/
test_clone_attacks.py; here: results are exact, every run is fresh, limits hold per clone,
and nothing is left behind (close, 200 runs, a SIGKILLed owner + gc)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lxcbind
from lxcbind.lxc import cgroups
from tests.conftest import IS_ROOT, NATIVE_ERROR, new_name, requires_clones
from tests.integration.sandbox.conftest import ready_session, wait_full

pytestmark = [requires_clones, pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

ROOT = Path(__file__).resolve().parents[3]


def policy(**lxc: object) -> dict[str, object]:
    """A deny-all policy (no network device) named for the leftover check."""
    return {"version": "0.8.0", "containerId": new_name("clone-"),
            "process": {"commandLine": "true"}, "lxc": dict(lxc)}


def cloner_pids(name: str) -> set[int]:
    """The cloners of template ``name`` (other suites may run templates meanwhile)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
                with open(f"/proc/{entry}/cgroup") as f:
                    mine = f"lxc.payload.{name}" in f.read()
            except OSError:
                continue
            if comm == "lxcbind-cloner" and mine:
                pids.add(int(entry))
    return pids


def payload_dirs(name: str) -> list[str]:
    """Every cgroup directory (any hierarchy) named for container ``name``."""
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if name in d:
                found.append(os.path.join(top, d))
        dirs[:] = [d for d in dirs if d.startswith(("lxc", "unified")) or
                   top == "/sys/fs/cgroup"]
    return found


def clone_dirs(pool: lxcbind.Pool) -> dict[str, list[str]]:
    """The clones' cgroups below the template's, per controller (host paths)."""
    template = pool._template
    assert template is not None
    out: dict[str, list[str]] = {}
    for controller, base in template.cgroup_parents.items():
        out[controller] = sorted(os.path.join(base, d) for d in os.listdir(base)
                                 if d.startswith("clone-"))
    return out


def procs(cgroup: str) -> list[str]:
    """The processes of a clone's cgroup ([] once the clone is gone: they come and go)."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def host_state(name: str) -> tuple[list[str], list[str], set[int]]:
    """What template ``name`` and its clones could leave on the host: mounts and loop
    devices naming it, its cloner processes."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line for line in f if name in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return mounts, [line for line in loops.splitlines() if name in line], cloner_pids(name)


@pytest.fixture
def pool() -> Iterator[lxcbind.Pool]:
    with lxcbind.Pool(policy(), size=2, clones=True) as p:
        yield p


def test_exit_status_stdout_and_stderr_are_exact(pool: lxcbind.Pool) -> None:
    r = pool.run(["sh", "-c", "printf 'a\\nb'; printf err >&2; exit 7"], timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (7, b"a\nb", b"err")
    r = pool.run("cat", input=b"x" * 100_000, timeout=30)
    assert r.returncode == 0 and r.stdout == b"x" * 100_000
    r = pool.run(["/nonexistent"], timeout=30)
    assert r.returncode == 127


def test_clone_is_a_container_init_with_the_policy_filter(pool: lxcbind.Pool) -> None:
    r = pool.run("grep -E '^(NoNewPrivs|Seccomp|CapBnd|CapEff):' /proc/self/status; "
                 "cat /proc/1/comm; id -u; ls /dev/.lxcbind* 2>&1 | head -1; "
                 "unshare -U true; echo unshare=$?; mount -t tmpfs x /mnt 2>/dev/null; "
                 "echo mount=$?", timeout=30)
    out = r.stdout.decode()
    status = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    keep = 0x280425FB & ~(1 << 31)   # security.KEEP_CAPS: no setfcap, sys_admin, sys_ptrace
    from lxcbind.sandbox.template import caps_mask

    assert int(status["CapBnd"], 16) == caps_mask() == int(status["CapEff"], 16)
    assert caps_mask() & ~keep == 0
    assert "lxcbind-init" in out and "\n0\n" in out
    assert "No such file" in out            # nothing of the template's /dev is reachable
    assert "unshare=1" in out and ("mount=32" in out or "mount=1" in out)


def test_each_run_sees_a_fresh_filesystem_and_host(pool: lxcbind.Pool) -> None:
    first = pool.run("hostname; echo planted > /tmp/mark; echo planted > /root/mark; "
                     "echo planted > /dev/shm/mark; echo planted > /etc/mark; "
                     "sleep 301 >/dev/null 2>&1 & true", timeout=30)
    assert first.returncode == 0, first.stderr
    second = pool.run("hostname; cat /tmp/mark /root/mark /dev/shm/mark /etc/mark 2>&1; "
                      "ps -eo args 2>/dev/null | grep -c '^sleep 301'; true", timeout=30)
    assert first.stdout.split()[0] != second.stdout.split()[0]
    assert b"planted" not in second.stdout
    assert second.stdout.split()[-1] == b"0"


def test_each_clone_has_a_boot_id_of_its_own(pool: lxcbind.Pool) -> None:
    with open("/proc/sys/kernel/random/boot_id") as f:
        host = f.read()
    ids = [pool.run("cat /proc/sys/kernel/random/boot_id", timeout=30).stdout.decode()
           for _ in range(2)]
    assert len(set(ids)) == 2 and host not in ids
    assert all(len(i.strip()) == 36 for i in ids)


def test_root_is_the_template_base_and_writable_per_clone(pool: lxcbind.Pool) -> None:
    r = pool.run("test -x /usr/bin/env && echo usr; touch /usr/x 2>/dev/null || echo usr-ro; "
                 "echo hi > /newfile && cat /newfile; grep -c . /etc/passwd >/dev/null && "
                 "echo etc", timeout=30)
    assert r.stdout.split() == [b"usr", b"usr-ro", b"hi", b"etc"], r.stderr


def test_limits_are_in_the_clones_own_cgroup() -> None:
    limits = {"memory": 96 << 20, "pids": 40, "cpu": 0.5}
    with lxcbind.Pool(policy(limits=limits), size=1, clones=True) as pool:
        done = threading.Event()
        result: list[lxcbind.CompletedRun] = []
        worker = threading.Thread(target=lambda: (result.append(
            pool.run("sleep 3; cat /proc/self/cgroup | head -3", timeout=30)), done.set()))
        worker.start()
        try:
            deadline = time.monotonic() + 20
            busy: dict[str, str] = {}
            while time.monotonic() < deadline and len(busy) < 3:
                for controller, dirs in clone_dirs(pool).items():
                    for d in dirs:
                        if len(procs(d)) >= 2:   # the spawner and `sleep`
                            busy[controller] = d
                time.sleep(0.05)
            assert len(busy) == 3, busy
            v2 = cgroups.controller_version("memory") == "v2"

            def read(controller: str, name: str) -> str:
                with open(os.path.join(busy[controller], name)) as f:
                    return f.read().strip()

            if v2:
                assert read("memory", "memory.max") == str(96 << 20)
                assert read("memory", "memory.swap.max") == "0"
                assert read("cpu", "cpu.max") == "50000 100000"
            else:
                assert read("memory", "memory.limit_in_bytes") == str(96 << 20)
                assert read("cpu", "cpu.cfs_quota_us") == "50000"
            assert read("pids", "pids.max") == "40"
        finally:
            worker.join(60)
        assert done.is_set() and result[0].returncode == 0
        assert all(line.endswith(b":/") for line in result[0].stdout.splitlines())
        # and inside, read-only, as the clone's cgroup namespace shows them
        v2 = cgroups.controller_version("memory") == "v2"
        files = ("memory.max pids.max cpu.max" if v2 else
                 "memory/memory.limit_in_bytes pids/pids.max cpu*/cpu.cfs_quota_us")
        r = pool.run(f"cd /sys/fs/cgroup && cat {files}; mkdir pids/x x 2>&1; true",
                     timeout=30)
        lines = r.stdout.decode().splitlines()
        assert lines[:3] == ([str(96 << 20), "40", "50000 100000"] if v2 else
                             [str(96 << 20), "40", "50000"]), r.stdout
        assert "Read-only file system" in r.stdout.decode()


def test_a_bomb_is_stopped_in_its_clone_while_another_works() -> None:
    limits = {"memory": 64 << 20, "pids": 30}
    with lxcbind.Pool(policy(limits=limits), size=2, clones=True) as pool:
        out: dict[str, lxcbind.CompletedRun] = {}

        def bomb() -> None:
            out["memory"] = pool.run(
                ["python3", "-c", "a = []\nwhile True: a.append(bytearray(1 << 20))"],
                timeout=60)

        worker = threading.Thread(target=bomb)
        worker.start()
        calm = pool.run("echo ok", timeout=60)
        worker.join(90)
        assert calm.stdout == b"ok\n"
        assert out["memory"].returncode != 0 and out["memory"].oom_killed
        forks = pool.run("for i in $(seq 60); do sleep 5 & done 2>/dev/null; wait; true",
                         timeout=60)
        assert forks.pids_limited
        assert pool.run("echo ok", timeout=60).stdout == b"ok\n"


def test_200_runs_leave_nothing_behind() -> None:
    p = policy()
    name = str(p["containerId"])
    with lxcbind.Pool(p, size=4, clones=True) as pool:
        results = pool.map(["echo $$; hostname"] * 200, workers=4)
        assert [r.stdout.split()[0] for r in results] == [b"2"] * 200   # 1 is the spawner
        assert len({r.stdout.split()[1] for r in results}) == 200
        wait_full(pool)
        # the ready clones only: none of the 200 used ones left a cgroup
        assert all(len(dirs) == 4 for dirs in clone_dirs(pool).values())
        template_pid = pool._template.init_pid if pool._template else 0
    assert not os.path.exists(f"/proc/{template_pid}")
    assert host_state(name) == ([], [], set())
    assert not payload_dirs(name)
    assert name not in lxcbind.list_containers()


def test_close_with_a_command_still_running_leaves_nothing() -> None:
    p = policy()
    name = str(p["containerId"])
    pool = lxcbind.Pool(p, size=2, clones=True)
    outcome: list[object] = []

    def long_run() -> None:
        try:
            outcome.append(pool.run("sleep 300", timeout=120))
        except lxcbind.LxcbindError as exc:   # the spawner went with the template
            outcome.append(exc)

    worker = threading.Thread(target=long_run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while pool._template and not any(clone_dirs(pool)["pids"]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    pool.close()
    worker.join(30)
    assert not worker.is_alive() and outcome
    assert host_state(name) == ([], [], set())
    assert not payload_dirs(name)
    assert name not in lxcbind.list_containers()


def test_sigkilled_owner_leaves_nothing_after_gc() -> None:
    p = policy()
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import lxcbind
        pool = lxcbind.Pool({json.dumps(p)}, size=2, clones=True)
        print(pool.run("hostname").stdout.decode().strip(), flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    name = str(p["containerId"])
    # Left: the template's definition (its cloner may already have ended with the owner's
    # connection, and liblxc removed its cgroups meanwhile: no check of those here).
    assert name in lxcbind.list_containers()
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert name not in lxcbind.list_containers()
    assert not payload_dirs(name)
    assert host_state(name) == ([], [], set())


@pytest.mark.parametrize(("extra", "field"), [
    ({"network": {"egress": {"default": "allow"}}}, "network"),
    ({"filesystem": {"readwritePaths": ["/srv"]}}, "filesystem.readwritePaths"),
    ({"lxc": {"allow": ["ptrace"]}}, "lxc.allow"),
    ({"lxc": {"privileged": True}}, "lxc.privileged"),
])
def test_a_policy_clones_cannot_serve_is_refused_by_field(extra: dict[str, object],
                                                          field: str) -> None:
    p = {**policy(), **extra}
    with pytest.raises(ValueError, match=f"clones=True\\): {field}:"):
        lxcbind.Pool(p, size=1, clones=True)
    assert str(p["containerId"]) not in lxcbind.list_containers()


@pytest.mark.parametrize("limits", [{}, {"pids": 64}])
def test_clone_loads_the_filters_a_container_of_the_policy_has(tmp_path: Path,
                                                               limits: dict[str, int]) -> None:
    """The BPF programs on a clone's init (the spawner) are byte for byte those on a pooled
    container's init for the same policy: liblxc's compiled profile, then the spawner's
    i386 socket filter."""
    from tests.integration.lxc.test_seccompile import Tools

    tools = Tools(tmp_path)
    p = policy(limits=limits)
    with lxcbind.Session.from_policy({**p, "containerId": new_name("clone-")}) as container:
        want = tools.filters(container._spawner_host_pid)
    with lxcbind.Pool(p, size=1, clones=True) as pool:
        session = ready_session(pool)
        got = tools.filters(session._spawner_host_pid)
    assert len(want) == 2 and len(got) == 2
    assert got == want


def test_clone_init_has_the_stdio_of_a_container_init() -> None:
    """The spawner as a clone's init holds the channel on fd 0 and /dev/null on 1 and 2, as a
    container's init does (the cloner hands it 0-2 closed: closing its /dev/null, then fd 1,
    left 1 free for the next file the spawner opened)."""
    p = policy()
    with lxcbind.Session.from_policy({**p, "containerId": new_name("clone-")}) as container:
        want = [os.readlink(f"/proc/{container._spawner_host_pid}/fd/{n}") for n in (1, 2)]
    with lxcbind.Pool(p, size=1, clones=True) as pool:
        session = ready_session(pool)
        pid = session._spawner_host_pid
        got = [os.readlink(f"/proc/{pid}/fd/{n}") for n in (1, 2)]
        assert os.readlink(f"/proc/{pid}/fd/0").startswith("socket:")
    assert want == ["/dev/null", "/dev/null"]
    assert got == want


def test_async_pool_takes_clones() -> None:
    import asyncio

    async def main() -> list[bytes]:
        pool = lxcbind.AsyncPool(policy(), size=2, clones=True)
        try:
            return [r.stdout for r in await pool.map(["hostname"] * 4)]
        finally:
            await pool.close()

    names = asyncio.run(main())
    assert len(set(names)) == 4


def test_read_only_and_denied_paths_hold_in_a_clone(tmp_path: Path) -> None:
    """The template's binds and masks again in every clone, also below /tmp (the clone's own
    tmpfs goes under them, not over them)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("hi\n")
    (shared / "secret").write_text("s3cret\n")
    (shared / "hidden").mkdir()
    (shared / "hidden" / "key").write_text("k3y\n")
    p = policy()
    p["filesystem"] = {"readonlyPaths": [str(shared)],
                       "deniedPaths": [str(shared / "secret"), str(shared / "hidden")]}
    with lxcbind.Pool(p, size=1, clones=True) as pool:
        r = pool.run(f"cd {shared} && cat hello; cat secret; ls hidden; echo x > new; "
                     "mount -o remount,rw . ; echo x > hello; true", timeout=30)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.stdout.startswith(b"hi\n"), out
    assert "s3cret" not in out and "key" not in out
    assert "Read-only file system" in out
    assert (shared / "hello").read_text() == "hi\n" and not (shared / "new").exists()


def test_clone_runs_under_the_lsm_label_of_a_container() -> None:
    """On an AppArmor host, the profile a container's command runs under (liblxc's default),
    not the template's nesting one; elsewhere the same nothing."""
    probe = "cat /proc/self/attr/apparmor/current 2>/dev/null || cat /proc/self/attr/current"
    p = policy()
    with lxcbind.Session.from_policy({**p, "containerId": new_name("clone-")}) as container:
        want = container.run(probe, timeout=30).stdout
    with lxcbind.Pool(p, size=1, clones=True) as pool:
        got = pool.run(probe, timeout=30).stdout
    assert got == want


HOG = r'''
import array, os, signal, socket, time
released = []
signal.signal(signal.SIGUSR1, lambda *_: released.append(1))
fd = os.open("/dev/null", os.O_RDONLY)
held, n, err = [], 0, None
while err is None or err == 11:          # EAGAIN: this socket is full, take another
    x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    x.setblocking(False)
    held.append((x, y))
    try:
        while True:
            x.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [fd] * 250))])
            n += 250
    except OSError as exc:
        err = exc.errno
open("/tmp/filled", "w").close()
while not released:
    time.sleep(0.05)
print(n, err)
'''


def test_descriptors_in_flight_in_one_clone_do_not_stop_another() -> None:
    """The kernel counts descriptors in flight over unix sockets per host uid, which the clones
    of a template share: a clone that holds as many as it may (ETOOMANYREFS) must leave the
    spawner of another clone able to send its START records (each a pidfd)."""
    with lxcbind.Pool(policy(), size=2, clones=True) as pool:
        out: list[lxcbind.CompletedRun] = []
        hog = threading.Thread(target=lambda: out.append(
            pool.run(["python3", "-c", HOG], timeout=120)))
        hog.start()
        hog_pid = 0
        try:
            deadline = time.monotonic() + 90
            while not hog_pid and time.monotonic() < deadline:
                for d in clone_dirs(pool)["pids"]:
                    for pid in procs(d):
                        try:
                            with open(f"/proc/{pid}/cmdline", "rb") as c:
                                python = c.read().startswith(b"python3")
                            filled = os.path.exists(f"/proc/{pid}/root/tmp/filled")
                        except OSError:
                            continue
                        if python and filled:
                            hog_pid = int(pid)
                time.sleep(0.05)
            assert hog_pid, "the hog did not fill its quota"
            victim = pool.run("echo ok", timeout=60)
            assert (victim.returncode, victim.stdout) == (0, b"ok\n")
        finally:
            if hog_pid:
                os.kill(hog_pid, signal.SIGUSR1)
            hog.join(120)
        assert out and out[0].stdout.split()[1] == b"109", out   # ETOOMANYREFS: it was full


# What a command on a tty checks of it: stdio all one terminal, named in the clone's own
# /dev/pts (fresh devpts: nothing there but ptmx and this pty), and usable (stty).
_TTY_PROBE = ("t=$(tty) && echo \"tty $t\"; for fd in 0 1 2; do test -t $fd || "
              "echo \"no tty $fd\"; done; echo \"pts $(ls /dev/pts | tr '\\n' ' ')\"; "
              "stty size >/dev/null && echo stty")


def _tty_report(out: bytes) -> dict[str, str]:
    lines = out.replace(b"\r\n", b"\n").decode().splitlines()
    return {line.split(" ", 1)[0]: line.split(" ", 1)[-1].strip() for line in lines if line}


def _check_tty(out: bytes) -> None:
    got = _tty_report(out)
    assert "no" not in got, out
    assert got.get("tty", "").startswith("/dev/pts/"), out
    assert got["pts"].split() == sorted(["ptmx", got["tty"].rsplit("/", 1)[1]]), out
    assert "stty" in got, out


def test_clones_run_commands_on_a_tty_of_their_own_devpts() -> None:
    """tty=True on a clone, through Pool.run and through a clone's Session (run, and an
    interactive spawn): the pty comes from the clone's own devpts, not the template's."""
    from lxcbind.sandbox.clone import Clone

    with lxcbind.Pool(policy(), size=1, clones=True) as pool:
        r = pool.run(_TTY_PROBE, tty=True, timeout=60)
        assert r.returncode == 0, r
        _check_tty(r.stdout)
        assert pool._template is not None
        session = Clone(pool._template).open()
        try:
            r = session.run(_TTY_PROBE, tty=True, timeout=60)
            assert r.returncode == 0, r
            _check_tty(r.stdout)
            with session.spawn(["/bin/sh", "-c", _TTY_PROBE + "; read x; echo got $x"],
                               tty=True) as proc:
                out = b""
                for want, then in ((b"stty\r\n", b"hello\n"), (b"got hello\r\n", b"")):
                    while not out.endswith(want):
                        chunk = os.read(proc.master, 4096)
                        assert chunk, out
                        out += chunk
                    os.write(proc.master, then)
                assert proc.wait(timeout=60) == 0
            _check_tty(out.split(b"stty\r\n", 1)[0] + b"stty\n")
        finally:
            session.close()
