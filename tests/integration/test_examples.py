"""Every policy in examples/ works offline on this machine, with the documented outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[2]

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
