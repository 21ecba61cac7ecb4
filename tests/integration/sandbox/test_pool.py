"""Pool: a fresh, pre-started container per command, nothing reused, nothing left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lxcbind
from lxcbind.errors import SandboxError
from tests.conftest import IS_ROOT, NATIVE_ERROR

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

ROOT = Path(__file__).resolve().parents[3]
POLICY = {"version": "0.8.0", "process": {"commandLine": "true"}}


def pool_containers(names: set[str]) -> set[str]:
    return names & set(lxcbind.list_containers())


def test_every_run_gets_a_fresh_container() -> None:
    with lxcbind.Pool(POLICY, size=2) as pool:
        first = pool.run("hostname; echo planted > /tmp/mark; sleep 301 >/dev/null 2>&1 & true")
        second = pool.run("hostname; cat /tmp/mark 2>&1; ps -eo args | grep -c '^sleep 301'")
        assert first.returncode == 0
        a, b = first.stdout.split()[0], second.stdout.split(b"\n")[0]
        assert a != b  # never the same container twice
        assert b"planted" not in second.stdout
        assert second.stdout.split()[-1] == b"0"  # the first run's background process is gone
        names = {a.decode(), b.decode()}
    assert not pool_containers(names)


def test_map_keeps_input_order_and_uses_distinct_containers() -> None:
    with lxcbind.Pool(POLICY, size=3) as pool:
        results = pool.map([f"echo {i}; hostname" for i in range(8)], workers=3)
    assert [r.stdout.split()[0] for r in results] == [str(i).encode() for i in range(8)]
    hosts = {r.stdout.split()[1] for r in results}
    assert len(hosts) == 8
    assert not pool_containers({h.decode() for h in hosts})


def test_map_takes_runs_keywords_tty_too() -> None:
    with lxcbind.Pool(POLICY, size=2) as pool:
        on_tty = pool.map(["test -t 0 && test -t 1 && tty"] * 2, tty=True, timeout=60)
        piped = pool.map(["test -t 1 || echo pipe"] * 2, timeout=60)
        with pytest.raises(TypeError, match="unexpected keyword argument 'ttty'"):
            pool.map(["true"], ttty=True)  # type: ignore[call-arg]
    assert [r.returncode for r in on_tty] == [0, 0], on_tty
    assert all(r.stdout.startswith(b"/dev/pts/") for r in on_tty), on_tty
    assert [r.stdout for r in piped] == [b"pipe\n"] * 2


def test_pool_runs_under_the_policy_isolation(tmp_path: Path) -> None:
    policy = {**POLICY, "lxc": {"limits": {"pids": 99}}}
    with lxcbind.Pool(policy, size=1) as pool:
        r = pool.run("head -1 /proc/self/uid_map; cat /sys/fs/cgroup/pids/pids.max "
                     "/sys/fs/cgroup/pids.max 2>/dev/null; true", timeout=30)
    fields = r.stdout.split()
    assert fields[0] == b"0" and int(fields[1]) >= 1 << 30
    assert b"99" in fields


def test_setup_failure_is_raised_not_hung(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    missing.mkdir()
    policy = {**POLICY, "filesystem": {"readwritePaths": [str(missing)]}}
    pool = lxcbind.Pool(policy, size=1, start_timeout=30)
    try:
        pool.run("true")  # the first container may have started before the path vanished
        missing.rmdir()
        with pytest.raises(SandboxError, match="does not exist|No such file"):
            for _ in range(3):
                pool.run("true")
    finally:
        pool.close()
    with pytest.raises(lxcbind.PoolClosed):
        pool.run("true")


def test_sigkilled_owner_leaves_nothing_after_gc() -> None:
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import lxcbind
        pool = lxcbind.Pool({json.dumps(POLICY)}, size=2)
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
    from lxcbind.sandbox import cleanup

    owned = {r.container for r in cleanup._load_records() if r.runner_pid == proc.pid}
    assert owned  # the pool's containers have ownership records like any other run
    assert pool_containers(owned)
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert not pool_containers(owned)
    assert not {r.container for r in cleanup._load_records() if r.runner_pid == proc.pid}
