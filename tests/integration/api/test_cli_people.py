"""The CLI for people: `lxcbind run [POLICY] -- CMD` with options that build or override a
policy, `--version`, help with exit codes and examples, `ls`/`exec`/`rm` of kept containers,
and the warning when a run waits on another run's containerId.  On real containers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import destroy_quietly, new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]


def lx(*args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lxcbind", *args], input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, cwd=ROOT)


def test_run_without_a_policy_runs_the_argv_as_given():
    r = lx("run", "--no-tty", "--", "printf", "%s|", "a b", "$HOME", "it's")
    assert (r.returncode, r.stdout) == (0, b"a b|$HOME|it's|"), r.stderr
    assert lx("run", "--", "sh", "-c", "exit 7").returncode == 7
    assert lx("run", "--", "no-such-program-i12").returncode == 127
    r = lx("run", "--json", "--", "sh", "-c", "ls /sys/class/net; touch /usr/x-i12")
    out = json.loads(r.stdout)
    assert out["stdout"] == "lo\n" and "Read-only file system" in out["stderr"]
    assert not Path("/usr/x-i12").exists()


def test_options_build_the_filesystem_and_process_policy(tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("read me")
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    script = (f"pwd; echo $A $B; cat {ro}/data; echo; cat {secret}; "
              f"echo written > {rw}/out; echo x > {ro}/new || echo ro-refused")
    r = lx("run", "--json", "--cwd", str(rw), "--env", "A=1", "--env", "B=2", "--env", "B=3",
           "--rw", str(rw), "--ro", str(ro), "--deny", str(secret), "--", "sh", "-c", script)
    out = json.loads(r.stdout)
    assert r.returncode == 0, out
    assert out["stdout"] == f"{rw}\n1 3\nread me\nro-refused\n"
    assert (rw / "out").read_text() == "written\n"
    assert not (ro / "new").exists() and secret.read_text() == "host secret"


def test_options_override_a_policy_file(tmp_path):
    doc = {"version": "0.8.0", "containerId": new_name("i12-"),
           "process": {"commandLine": "echo policy command", "env": ["P=policy", "Q=policy"]}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert lx("run", str(path)).stdout == b"policy command\n"
    r = lx("run", str(path), "--env", "Q=cli", "--", "sh", "-c", "echo $P $Q")
    assert r.stdout == b"policy cli\n", r.stderr
    # a policy with no command at all: the command comes from the command line
    path.write_text(json.dumps({"version": "0.8.0", "containerId": new_name("i12-")}))
    assert lx("run", str(path), "--", "echo", "from cli").stdout == b"from cli\n"
    r = lx("run", str(path))
    assert r.returncode == 2 and b"process" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--env", "NOEQUALS", "--", "true"], b"--env: expected K=V, got 'NOEQUALS'"),
    (["--rw", "relative/dir", "--", "true"], b"filesystem.readwritePaths[0]"),
    (["--cwd", "tmp", "--", "true"], b"process.cwd"),
    (["--"], b"no command after --"),
    ([], b"no policy and no command"),
])
def test_bad_options_exit_2_with_one_line(args, words):
    r = lx("run", *args)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr


def test_net_opens_egress_with_an_enforced_policy():
    r = lx("run", "--net", "--dry-run", "--json", "--", "true")
    plan = json.loads(r.stdout)["plan"]
    assert plan["networkEnforced"] is True and plan["network"]["egressDefault"] == "allow"
    assert plan["network"]["ingressDeny"] is True
    # a network device besides lo; without --net there is none (no packet is sent)
    r = lx("run", "--net", "--json", "--", "ls", "/sys/class/net")
    assert json.loads(r.stdout)["stdout"].split() != ["lo"], r.stderr
    legacy = lx("run", "--net", "--dry-run", "--json", "-",
                input=b'{"version": "0.7.0", "process": {"commandLine": "true"}}')
    plan = json.loads(legacy.stdout)["plan"]
    assert plan["networkEnforced"] is True and plan["network"]["egressDefault"] == "allow"


def test_version_help_and_log_level():
    from lxcbind import __version__

    r = lx("--version")
    assert (r.returncode, r.stdout.decode()) == (0, f"lxcbind {__version__}\n")
    for args in (["--help"], ["run", "-h"]):
        r = lx(*args)
        text = r.stdout.decode()
        assert r.returncode == 0
        for words in ("exit codes:", "124", "125", "126 / 127", "examples:", "lxcbind run --"):
            assert words in text, (args, words)
    r = lx("run", "--log-level", "info", "--", "true")
    assert r.returncode == 0 and b"lxcbind: starting" in r.stderr
    assert lx("run", "--log-level", "loud", "--", "true").returncode == 2


def test_kept_container_ls_exec_rm(tmp_path):
    name = new_name("i12-")
    doc = {"version": "0.8.0", "containerId": name, "lifecycle": {"destroyOnExit": False},
           "process": {"commandLine": "echo state > /root/state"}}
    path = tmp_path / "keep.json"
    path.write_text(json.dumps(doc))
    try:
        assert lx("run", str(path)).returncode == 0
        listed = {c["name"]: c for c in json.loads(lx("ls", "--json").stdout)["containers"]}
        assert listed[name]["policy"] == str(path) and listed[name]["state"] == "RUNNING"
        assert name in lx("ls").stdout.decode()
        r = lx("exec", name, "--", "cat", "/root/state")
        assert (r.returncode, r.stdout) == (0, b"state\n"), r.stderr
        # the same isolation: the policy it was kept with (no network, /usr read-only)
        r = lx("exec", name, "--json", "--", "sh", "-c", "ls /sys/class/net; touch /usr/x-i12")
        out = json.loads(r.stdout)
        assert out["stdout"] == "lo\n" and "Read-only" in out["stderr"] and r.returncode == 1
        r = lx("rm", name)
        assert (r.returncode, r.stdout) == (0, f"removed {name}\n".encode())
        assert name not in lx("ls").stdout.decode()
        r = lx("exec", name, "--", "true")
        assert r.returncode == 2 and b"no kept container" in r.stderr
        assert lx("rm", name).returncode == 1
    finally:
        destroy_quietly(name)


def test_rm_and_exec_refuse_containers_lxcbind_did_not_make(shared_busybox):
    r = lx("rm", shared_busybox.name)
    assert r.returncode == 1 and b"made by lxcbind" in r.stderr
    assert shared_busybox.defined and shared_busybox.running
    r = lx("exec", shared_busybox.name, "--", "true")
    assert r.returncode == 2
    assert shared_busybox.name not in lx("ls").stdout.decode()
    assert lx("rm", "../etc").returncode == 2


def test_a_run_waiting_on_another_runs_container_id_says_so_once():
    name = new_name("i12-")
    doc = json.dumps({"version": "0.8.0", "containerId": name,
                      "process": {"commandLine": "sleep 2"}}).encode()
    first = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first.stdin.write(doc)
    first.stdin.close()
    first.stdin = None
    try:
        deadline = time.monotonic() + 60
        while not Path(f"/var/lib/lxcbind/owners/{name}.json").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        second = lx("run", "-", input=doc)
        assert second.returncode == 0
        assert second.stderr.count(b"lxcbind: containerId") == 1, second.stderr
        assert b"is in use by another run; waiting" in second.stderr
    finally:
        first.communicate(timeout=60)
        destroy_quietly(name)
    assert first.returncode == 0


def test_gc_drops_records_of_kept_containers_that_are_gone():
    from lxcbind.sandbox import kept
    from lxcbind.state import STATE_DIR

    name = new_name("i12-")   # never created: its record is stale from the start
    kept.save(name, {"version": "0.8.0"}, "<test>")
    record = STATE_DIR / "kept" / f"{name}.json"
    assert kept.load(name)["policy"]["containerId"] == name
    assert lx("gc").returncode == 0
    assert not record.exists()
