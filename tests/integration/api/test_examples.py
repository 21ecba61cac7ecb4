"""Every policy in examples/ works offline on this machine, with the documented outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]

EXPECTED = {
    "hello.json": (0, "hello from lxcbind-"),
    "busybox.json": (0, "BusyBox"),
    "readonly.json": (0, "read-only, as the policy says"),
    "denied.json": (0, "certificates visible: 0"),
    "timeout.json": (124, "sleeping"),
    "env_cwd.json": (0, "/tmp\nhello, sandbox\n"),
}


def test_every_example_is_covered():
    assert {p.name for p in (ROOT / "examples").glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_offline(name):
    code, text = EXPECTED[name]
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--json", f"examples/{name}"],
                       cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == code and out["exit_code"] == code, r.stderr
    assert text in out["stdout"]


def test_async_agent_example_runs():
    r = subprocess.run([sys.executable, "examples/async_agent.py"], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout.decode()
    assert "'uname -s' -> 0 'Linux'" in out and "runaway: timed_out=True" in out
    assert "sleep processes left: 0" in out
    assert "shell after a cancelled call: /tmp 1" in out


# grade_variants.py and snapshot_fork.py are run in tests/integration/image/test_examples.py.
PY_EXAMPLES = {"agent_bash_tool.py", "async_agent.py", "parallel_grader.py",
               "grade_variants.py", "snapshot_fork.py"}


def test_every_python_example_is_covered():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == PY_EXAMPLES


@pytest.mark.timeout(1200)   # about 30 s here; an emulated host is tens of times slower
def test_parallel_grader_grades_200_hostile_snippets():
    import os

    import lxcbind

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from parallel_grader import POLICY, VERDICTS
    finally:
        sys.path.remove(str(ROOT / "examples"))
    # Only the loop and flood snippets may reach the timeout, whatever the host's speed: 2 s,
    # or 25 times the slowest of three python3 starts in the grader's sandbox when that is
    # more (an emulated VM is tens of times slower: a 'wrong' snippet took 2.2 s there, and a
    # 'crash' one 5.3 s, over ten starts, when two more VMs shared its two cores).
    with lxcbind.Pool(POLICY, size=1) as pool:
        start = max(pool.run(["python3", "-c", "pass"]).duration for _ in range(3))
    timeout = max(2.0, 25 * start)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}   # this checkout's lxcbind
    r = subprocess.run([sys.executable, "examples/parallel_grader.py", "--json", "--count",
                        "200", "--timeout", f"{timeout:.1f}", "--max-output", "4096"],
                       cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=1100)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert len(report["results"]) == 200
    for g in report["results"]:
        assert g["verdict"] == VERDICTS[g["kind"]], g
    kinds = {g["kind"] for g in report["results"]}
    assert kinds == set(VERDICTS)
    marker = len(b"\n[... lxcbind:  bytes omitted ...]\n") + 20   # up to 20 digits
    for g in report["results"]:
        assert g["stdout_bytes"] <= 4096 + marker
        if g["kind"] == "flood":
            assert g["truncated"] and g["duration"] < timeout + 28
        if g["kind"] == "escape":
            assert "Read-only file system" in g["stderr_tail"], g
        if g["kind"] == "network":
            assert "Network is unreachable" in g["stderr_tail"], g
    assert not os.path.exists("/usr/lxcbind-grader-was-here")


def test_agent_bash_tool_example_runs(tmp_path):
    import os

    work = tmp_path / "project"
    work.mkdir()
    os.chown(work, 1000, 1000)
    r = subprocess.run([sys.executable, "examples/agent_bash_tool.py", str(work)], cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout.decode()
    assert "\n42\n" in out and "hi from /tmp" in out and "still hi" in out
    assert "[stderr]\nto-stderr\n[exit status 1]" in out
    assert "bytes omitted" in out and "[timed out after 1s" in out
    assert os.stat(work / "answer.py").st_uid == 1000  # written by the workload, owned by 1000
