"""``lxcbind attach NAME [-- CMD]``: a second process enters a live throwaway sandbox under
the sandbox's own isolation and user; only host root may, and only a live lxcbind sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lxcbind
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[3]
CONFINEMENT = "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp|Uid|Gid):' /proc/self/status"


def attach(*words: str, **kw) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "lxcbind", "attach", *words],
                          capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


@pytest.mark.parametrize("lxc", [{}, {"uid": 1000, "gid": 1000}])
def test_attach_enters_the_live_sandbox_under_its_own_isolation(lxc):
    doc = {"version": "0.8.0", "containerId": new_name("attach-"), "lxc": lxc}
    with lxcbind.Sandbox(doc) as box:
        box.put("/tmp/marker", "from the run")
        r = attach(box.name, "--", "sh", "-c", "cat /tmp/marker; echo; " + CONFINEMENT)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split("\n")
        assert lines[0] == "from the run"
        # the same confinement (and user) as the sandbox's own commands
        assert lines[1:] == box.run(CONFINEMENT, text=True).stdout.split("\n")
        r = attach(box.name, "--", "sh", "-c", "exit 7")
        assert r.returncode == 7
        r = attach(box.name, "--", "no-such-program")
        assert r.returncode == 127 and "no-such-program: No such file" in r.stderr
        assert box.run("echo alive", text=True).stdout == "alive\n"   # the run goes on
        name = box.name
    r = attach(name, "--", "true")     # gone with its run
    assert r.returncode == 125 and "not a live lxcbind sandbox" in r.stderr


def test_only_host_root_may_attach_and_only_to_a_live_lxcbind_sandbox():
    doc = {"version": "0.8.0", "containerId": new_name("attach-")}
    with lxcbind.Sandbox(doc) as box:
        # a non-root caller (a forked child that gave up root) is refused, before liblxc
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:   # pragma: no cover - the child reports through the pipe
            try:
                os.setuid(65534)
                from lxcbind.sandbox.enter import enter
                enter(box.name, ["true"], tty=False)
                os.write(write, b"entered")
            except lxcbind.SandboxError as exc:
                os.write(write, str(exc).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            said = f.read().decode()
        os.waitpid(pid, 0)
        assert "only host root" in said, said
    for bad, code in (("../etc", 2), ("lxcbind-test-never-made", 125)):
        r = attach(bad, "--", "true")
        assert r.returncode == code, r.stderr
        assert "Traceback" not in r.stderr


def test_a_suspended_attach_cannot_hold_up_the_sandboxs_teardown():
    # Ctrl-Z (SIGTSTP) would stop attach with its command's zombie unreaped, and the
    # container's pid namespace would wait for it forever: attach ignores job-control stops
    import signal
    import time

    doc = {"version": "0.8.0", "containerId": new_name("attach-")}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    box = lxcbind.Sandbox(doc)
    box.open()
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "attach", box.name, "--",
                                 "sleep", "60"], env=env, stdin=subprocess.DEVNULL)
        for _ in range(100):   # until the command runs in the sandbox
            if "sleep 60" in box.run("ps -eo args", text=True).stdout:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTSTP)
        time.sleep(0.3)
        with open(f"/proc/{proc.pid}/stat") as f:
            assert f.read().split(") ")[1][0] in "RSD"   # not stopped
    finally:
        box.close()   # would hang here
        if proc is not None:
            assert proc.wait(timeout=30) == 137   # its command was killed with the sandbox
    assert box.name not in lxcbind.list_containers()
