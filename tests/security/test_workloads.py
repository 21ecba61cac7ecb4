"""Normal work still runs under the default (unprivileged, least-privilege) policy, and the
opt-ins, limits and cleanup behave as documented."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lxcbind
from lxcbind.errors import SandboxError
from lxcbind.lxc import mountinfo
from lxcbind.sandbox import idmap, security
from tests.conftest import IS_ROOT, NATIVE_ERROR, new_name

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

ROOT = Path(__file__).resolve().parents[2]


def run(command: str, **extra: object) -> lxcbind.CompletedRun:
    policy: dict[str, object] = {"version": "0.8.0", "process": {"commandLine": command}}
    policy.update(extra)
    return lxcbind.run(policy, timeout=120)


@pytest.mark.parametrize("name, command", [
    ("c program", "cd /tmp && printf '#include <stdio.h>\\nint main(void){puts(\"compiled\");"
                  "return 0;}\\n' > m.c && gcc -o m m.c && ./m"),
    ("python venv", "python3 -m venv --without-pip /tmp/v && /tmp/v/bin/python -c "
                    "'import sys, sqlite3, ssl; print(sys.prefix)'"),
    ("git", "cd /tmp && git init -q r && cd r && echo x > f && git add f && "
            "git -c user.name=a -c user.email=a@b commit -qm m && git log --oneline | wc -l"),
    ("tar", "cd /tmp && mkdir d && echo x > d/f && tar czf d.tgz d && rm -r d && "
            "tar xzf d.tgz && cat d/f"),
    ("ps and kill", "sleep 30 & p=$!; ps -o pid= -p $p >/dev/null && kill $p && wait $p; "
                    "echo status=$?"),
    ("threads and multiprocessing", "python3 -c 'import multiprocessing as m; "
                                    "print(sum(m.Pool(2).map(abs, range(10))))'"),
    ("setpriv to a user", "setpriv --reuid 1000 --regid 1000 --clear-groups id -u"),
])
def test_ordinary_work_runs(name: str, command: str) -> None:
    if name == "c program" and not os.path.exists("/usr/bin/gcc"):
        pytest.skip("gcc not installed on the host")
    if name == "git" and not os.path.exists("/usr/bin/git"):
        pytest.skip("git not installed on the host")
    r = run(command)
    assert r.returncode == 0, (r.stdout, r.stderr)
    expected = {"c program": b"compiled", "git": b"1", "tar": b"x", "ps and kill": b"status=143",
                "threads and multiprocessing": b"45", "setpriv to a user": b"1000"}
    if name in expected:
        assert expected[name] in r.stdout


def test_a_pty_shell_works() -> None:
    policy = {"version": "0.8.0", "process": {"commandLine": "tty; stty size"}}
    r = lxcbind.run(policy, tty=True, timeout=60)
    assert r.returncode == 0
    assert b"/dev/pts/" in r.stdout


def test_nesting_opt_in_gives_mounts_back() -> None:
    cmd = "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo mounted"
    assert b"mounted" not in run(cmd).stdout
    r = run(cmd, lxc={"allow": ["nesting"]})
    assert b"mounted" in r.stdout, r.stderr


def _apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def test_apparmor_items_only_for_nesting() -> None:
    assert not [k for k, _ in security.hardening_config() if k.startswith("lxc.apparmor")]
    items = dict(security.hardening_config(("nesting",)))
    assert items["lxc.apparmor.profile"] == "generated"
    assert items["lxc.apparmor.allow_nesting"] == "1"


def _label(pid: int) -> str:
    """The AppArmor label of ``pid`` as the host sees it (inside liblxc's AppArmor namespace of
    a nesting container, the workload sees only its namespace's part: ``unconfined``)."""
    with open(f"/proc/{pid}/attr/current") as f:
        return f.read().strip()


@pytest.mark.skipif(not _apparmor_enabled(), reason="AppArmor is not enabled on this host")
def test_on_an_apparmor_host_the_documented_profiles_confine_the_workload() -> None:
    """The default: liblxc's lxc-container-default-cgns, enforced (its mount denial stands
    behind seccomp's).  ``nesting``: liblxc's generated profile, which allows the mounts and is
    unloaded from the kernel when the container is gone."""
    doc = {"version": "0.8.0", "process": {"commandLine": "true"}}
    with lxcbind.Sandbox(doc) as box:
        assert box.container.init_pid
        assert _label(box.container.init_pid) == "lxc-container-default-cgns (enforce)"
    name = new_name("aa-")
    with lxcbind.Sandbox({**doc, "containerId": name, "lxc": {"allow": ["nesting"]}}) as box:
        assert box.container.init_pid
        label = _label(box.container.init_pid)
        assert label.startswith(f"lxc-{name}_") and label.endswith("(enforce)"), label
        r = box.run("mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && "
                    "mount -o remount,bind,ro /tmp/m && echo remounted")
        assert r.stdout == b"remounted\n", r.stderr
    with open("/sys/kernel/security/apparmor/profiles") as f:
        assert name not in f.read()


def test_profile_lists_what_each_opt_in_gives_up() -> None:
    default = security.seccomp_profile()
    assert "perf_event_open errno 1" in default and "mount errno 1" in default
    assert "perf_event_open" not in security.seccomp_profile(("perf",))
    nesting = security.seccomp_profile(("nesting",))
    assert "mount errno" not in nesting and "unshare errno" not in nesting
    assert "keyctl errno 1" in nesting  # an opt-in gives up only what it names


def test_limits_that_do_not_take_fail_closed() -> None:
    """verify_limits reads the container's real cgroup files: a value other than the one
    asked for (simulated by asking for a different one) is refused, not ignored."""
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"},
                          "lxc": {"limits": {"pids": 100}}}) as box:
        assert box.container.init_pid
        pid = box.container.init_pid
        security.verify_limits(pid, security.ResolvedLimits(None, 100, None))
        with pytest.raises(SandboxError, match="pids.max"):
            security.verify_limits(pid, security.ResolvedLimits(None, 101, None))


def _memory_limit_file(pid: int) -> str:
    from lxcbind.lxc import cgroups
    folder = cgroups.process_dir(pid, "memory")
    assert folder, "no memory cgroup for the container"
    v2 = cgroups.controller_version("memory") == "v2"
    return os.path.join(folder, "memory.max" if v2 else "memory.limit_in_bytes")


def test_a_memory_limit_that_is_not_whole_pages_runs_rounded_down() -> None:
    """100000001 bytes is not a whole number of pages: the kernel keeps the limit rounded down
    (v1 and v2 alike), and the run goes on with it instead of calling it unlimited."""
    page = os.sysconf("SC_PAGE_SIZE")
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"},
                          "lxc": {"limits": {"memory": "100000001"}}}) as box:
        pid = box.container.init_pid
        assert pid
        with open(_memory_limit_file(pid)) as f:
            assert int(f.read()) == 100000001 // page * page
        r = box.run(["sh", "-c", "echo ran"])
        assert r.returncode == 0 and r.stdout == b"ran\n", r.stderr
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-", "--json"],
                       input=json.dumps({"version": "0.8.0", "process": {"commandLine": "true"},
                                         "lxc": {"limits": {"memory": "100000001"}}}).encode(),
                       capture_output=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["exit_code"] == 0


def test_a_memory_limit_that_did_not_take_is_named_as_such() -> None:
    """A container without a memory limit (``max``), read back as if one had been asked:
    refused, and the message says there is no limit; a different limit is called different."""
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"},
                          "lxc": {"limits": {"memory": "max"}}}) as box:
        pid = box.container.init_pid
        assert pid
        kept = 100000001 // os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PAGE_SIZE")
        with pytest.raises(SandboxError, match=rf"memory\..* is .*, not '{kept}' "
                           r"\('100000001' rounded down .*no limit: it did not take"):
            security.verify_limits(pid, security.ResolvedLimits(100000001, None, None))
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"},
                          "lxc": {"limits": {"memory": "64M"}}}) as box:
        pid = box.container.init_pid
        assert pid
        security.verify_limits(pid, security.ResolvedLimits(64 << 20, None, None))
        with pytest.raises(SandboxError, match="a different limit") as caught:
            security.verify_limits(pid, security.ResolvedLimits(128 << 20, None, None))
        assert "unlimited" not in str(caught.value)


def test_a_container_gets_half_the_default_cpu_weight() -> None:
    """No cap, but a share: under contention the workload yields to the host's default
    cgroups (v2 cpu.weight 100, v1 cpu.shares 1024)."""
    from lxcbind.lxc import cgroups
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"}}) as box:
        pid = box.container.init_pid
        assert pid
        folder = cgroups.process_dir(pid, "cpu")
        assert folder
        v2 = cgroups.controller_version("cpu") == "v2"
        with open(os.path.join(folder, "cpu.weight" if v2 else "cpu.shares")) as f:
            assert int(f.read()) == (50 if v2 else 512)


def test_cli_reports_oom_on_stderr_and_in_json(tmp_path: Path) -> None:
    doc = {"version": "0.8.0", "lxc": {"limits": {"memory": "128M"}},
           "process": {"commandLine": "exec python3 -c 'b = bytearray(400 << 20)'"}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    argv = [sys.executable, "-m", "lxcbind", "run", "--no-tty", str(path)]
    r = subprocess.run(argv, capture_output=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 137
    assert r.stderr.count(b"out of memory") == 1
    r = subprocess.run(argv + ["--json"], capture_output=True, timeout=60, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    out = json.loads(r.stdout)
    assert out["oom_killed"] is True and out["exit_code"] == 137


def test_sigkilled_runner_leaves_nothing_after_gc(tmp_path: Path) -> None:
    """A runner killed between staging and start leaves host mounts and an id range: gc
    removes both (simulated by staging into the kept container's directory by hand)."""
    name = new_name("sec-")
    work = tmp_path / "w"
    work.mkdir()
    doc = {"version": "0.8.0", "containerId": name, "filesystem": {"readwritePaths": [str(work)]},
           "process": {"commandLine": "echo started; sleep 100"}}
    proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(doc).encode())
    proc.stdin.close()
    try:
        assert proc.stdout.readline() == b"started\n"
        cdir = os.path.join(lxcbind.default_lxcpath(), name)
        staged = idmap.stage_bind(cdir, str(work))
        assert any(m.point == staged for m in mountinfo.mounts())
        assert name in idmap.held_ranges()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert name not in lxcbind.list_containers()
    assert not any(m.point.startswith(cdir) for m in mountinfo.mounts())
    assert name not in idmap.held_ranges()


def test_optional_non_root_workload_user() -> None:
    r = run("id; echo home=$HOME; touch ~/f && echo wrote; "
            "touch /etc/x 2>/dev/null || echo no-etc; grep CapEff /proc/self/status",
            lxc={"uid": 1000})
    out = r.stdout.decode()
    assert "uid=1000(sandbox) gid=1000(sandbox)" in out
    assert "home=/home/sandbox" in out and "wrote" in out and "no-etc" in out
    assert "CapEff:\t0000000000000000" in out
