"""The one command model through the public API, on real containers: ``lxcbind.run(cmd,
policy=...)``, ``Sandbox.run``/``put``/``get``, ``Session.from_policy`` without a command, the
``check=True`` exceptions and capped output.  Every test checks that nothing was left behind."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest

import lxcbind
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]


def pol(command: str | None = None, **extra) -> dict:
    """A 0.8 deny-all policy with a test container name; ``process`` fields via ``process=``."""
    doc: dict = {"version": "0.8.0", "containerId": new_name("i12-")}
    if command is not None:
        doc["process"] = {"commandLine": command}
    for key, value in extra.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


@pytest.fixture
def left_behind():
    """The test made no container that outlived it.  Only our own names are checked
    (``lxcbind-test-i12-*``): other runs on this machine make default-named ones meanwhile."""
    def ours() -> set[str]:
        return {n for n in lxcbind.list_containers() if n.startswith("lxcbind-test-i12-")}

    before = ours()
    yield
    assert ours() - before == set()


# -- lxcbind.run --------------------------------------------------------------------------

def test_run_a_shell_string_or_an_argv_with_env_cwd_and_text(left_behind):
    r = lxcbind.run("pwd; echo $GREETING", policy=pol(), env={"GREETING": "hi there"},
                    cwd="/tmp", text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "/tmp\nhi there\n", "")
    assert isinstance(r.stdout, str)
    r = lxcbind.run(["printf", "%s|", "a b", "$HOME"], policy=pol())
    assert r.stdout == b"a b|$HOME|"   # an argv is not re-split or expanded
    assert r.args == ["printf", "%s|", "a b", "$HOME"]


def test_a_run_leaves_no_lock_or_record_file(left_behind):
    """Its name's lock file goes with the run (it used to stay: one file per run)."""
    from lxcbind.state import STATE_DIR

    doc = pol("true")
    r = lxcbind.run(policy=doc)
    assert r.returncode == 0
    name = doc["containerId"]
    assert not (STATE_DIR / "locks" / f"{name}.lock").exists()
    assert not (STATE_DIR / "owners" / f"{name}.json").exists()


def test_default_policy_is_deny_all_on_the_host_rootfs(left_behind):
    # No policy: schema 0.8 deny-all (no network device but lo), the host's /usr read-only.
    r = lxcbind.run("ls /sys/class/net; touch /usr/lxcbind-i12 2>&1; id -u", text=True)
    lines = r.stdout.split("\n")
    assert lines[0] == "lo", r.stdout
    assert "Read-only file system" in r.stdout
    assert not os.path.exists("/usr/lxcbind-i12")
    assert lxcbind.default_policy().network.effective().is_deny_all()


def test_env_merges_over_the_policy_env_and_cwd_timeout_override(left_behind):
    doc = pol("unused", process={"env": ["A=policy", "B=policy"], "cwd": "/tmp",
                                 "timeout": 60000})
    r = lxcbind.run("echo $A $B; pwd", policy=doc, env={"B": "call"}, cwd="/", text=True)
    assert r.stdout == "policy call\n/\n"
    r = lxcbind.run("sleep 30", policy=doc, timeout=0.5)
    assert r.timed_out and r.timeout == 0.5 and r.duration < 20


def test_without_cmd_the_policys_own_command_runs(left_behind):
    doc = pol("echo from the policy $X; pwd", process={"env": ["X=1"], "cwd": "/tmp"})
    assert lxcbind.run(policy=doc).stdout == b"from the policy 1\n/tmp\n"
    # cmd wins over process.commandLine; the rest of process still applies
    assert lxcbind.run("echo $X", policy=doc).stdout == b"1\n"


def test_old_positional_policy_forms_still_work(tmp_path, left_behind):
    doc = pol("echo old form")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    for form in (doc, json.dumps(doc), json.dumps(doc).encode(), path, str(path),
                 lxcbind.load_policy(doc)):
        r = lxcbind.run(form, timeout=30)
        assert r.stdout == b"old form\n", (type(form), r)
    with pytest.raises(TypeError, match="both as its first argument and as policy="):
        lxcbind.run(doc, policy=doc)
    # a str that is neither a JSON object nor an existing *.json file is a command
    r = lxcbind.run("{ echo brace group; }", policy=pol())
    assert r.stdout == b"brace group\n"
    assert lxcbind.run(str(tmp_path / "missing.json"), policy=pol()).returncode == 127


def test_no_command_anywhere_is_a_policy_error_naming_the_call(left_behind):
    with pytest.raises(lxcbind.PolicyError, match=r'lxcbind.run\("echo hi"\)') as info:
        lxcbind.run(policy={"version": "0.8.0"})
    assert info.value.path == "process.commandLine"
    with pytest.raises(lxcbind.PolicyError):
        lxcbind.run()


def test_bad_keywords_raise_before_anything_is_set_up(left_behind):
    for kw, exc in [({"timeout": "3"}, TypeError), ({"timeout": -1}, ValueError),
                    ({"timeout": True}, TypeError), ({"env": ["A=1"]}, TypeError),
                    ({"env": {"A": 1}}, TypeError), ({"env": {"1A": "x"}}, ValueError),
                    ({"cwd": "relative"}, ValueError), ({"max_output": "9"}, TypeError),
                    ({"input": 5}, TypeError)]:
        with pytest.raises(exc, match=r"^run\(\): " + next(iter(kw))):
            lxcbind.run("true", **kw)
    with pytest.raises(TypeError, match="not bytes"):
        lxcbind.run([b"ls"])
    with pytest.raises(TypeError, match="Session.from_policy"):
        lxcbind.Session({"version": "0.8.0"})


def test_check_raises_lxcbind_errors_that_are_also_subprocess_errors(left_behind):
    with pytest.raises(lxcbind.CalledProcessError) as info:
        lxcbind.run("echo out; echo err >&2; exit 3", policy=pol(), check=True, text=True)
    exc = info.value
    assert isinstance(exc, subprocess.CalledProcessError) and isinstance(exc, lxcbind.LxcbindError)
    assert (exc.returncode, exc.output, exc.stderr) == (3, "out\n", "err\n")
    assert exc.result.returncode == 3
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), back.returncode, back.cmd, back.output) == \
        (lxcbind.CalledProcessError, 3, exc.cmd, "out\n")
    with pytest.raises(lxcbind.TimeoutExpired) as info:
        lxcbind.run("echo partial; sleep 30", policy=pol(), timeout=0.5, check=True)
    exc = info.value
    assert isinstance(exc, subprocess.TimeoutExpired)
    assert isinstance(exc, lxcbind.CommandTimeout) and isinstance(exc, lxcbind.LxcbindError)
    assert exc.output == b"partial\n" and exc.timeout == 0.5 and exc.result.timed_out
    assert type(pickle.loads(pickle.dumps(exc))) is lxcbind.TimeoutExpired


def test_capped_output_has_a_marker_and_per_stream_flags(left_behind):
    r = lxcbind.run("printf HEAD; head -c 50000 /dev/zero | tr '\\0' x; printf TAIL; "
                    "printf short >&2", policy=pol(), max_output=8)
    assert r.stdout == b"HEAD\n[... lxcbind: 50000 bytes omitted ...]\nTAIL"
    assert r.truncated and r.stdout_truncated and not r.stderr_truncated
    assert (r.stdout_omitted, r.stderr_omitted, r.stderr) == (50000, 0, b"short")


# -- Sandbox ------------------------------------------------------------------------------

def test_sandbox_run_applies_the_policy_to_every_command(left_behind):
    doc = pol(process={"env": ["P=policy"], "cwd": "/tmp", "timeout": 1000})
    with lxcbind.Sandbox(doc) as box:   # no commandLine: the commands come from box.run
        assert box.run("pwd; echo $P $Q", env={"Q": "call"}).stdout == b"/tmp\npolicy call\n"
        r = box.run("sleep 30")
        assert r.timed_out and r.timeout == 1.0       # process.timeout, in seconds
        assert box.run("sleep 0.1; echo ok", timeout=20).stdout == b"ok\n"
        assert box.run("cat", input="fed in", text=True).stdout == "fed in"
        with pytest.raises(lxcbind.PolicyError, match="process.commandLine"):
            box.run()
    with pytest.raises(lxcbind.SandboxError, match=r"not running; use `with lxcbind.Sandbox"
                                                   r"\(policy\) as box: box.run\(...\)`"):
        box.run("true")


def test_sandbox_sessions_get_the_policy_and_close_before_the_container(left_behind):
    doc = pol(process={"env": ["P=policy"], "cwd": "/tmp"})
    with lxcbind.Sandbox(doc) as box:
        first, second = box.session(), box.session()
        assert first.run("pwd; echo $P").stdout == b"/tmp\npolicy\n"
        first.close()                      # one session closing leaves the sandbox up
        assert second.run("echo still").stdout == b"still\n"
        assert box.run("echo box").stdout == b"box\n"
    assert "closed" in repr(second)       # the sandbox closed the session it owned
    with pytest.raises(lxcbind.SessionError, match="session is closed"):
        second.run("true")
    with pytest.raises(lxcbind.SandboxError, match="box.session"):
        box.session()


def test_put_and_get_copy_bytes_as_the_policys_user(left_behind):
    blob = bytes(range(256)) * 1000
    doc = pol(lxc={"uid": 1000, "gid": 1000})
    with lxcbind.Sandbox(doc) as box:
        box.put("/tmp/blob", blob)
        assert box.get("/tmp/blob") == blob
        assert box.run("stat -c '%u %g %s' /tmp/blob").stdout == b"1000 1000 256000\n"
        box.put("/tmp/text", "héllo")
        assert box.run("cat /tmp/text").stdout == "héllo".encode()
        # the user's own permissions apply: /root is not its to write
        with pytest.raises(lxcbind.FileTransferError) as info:
            box.put("/root/x", b"x")
        assert info.value.errno == 13 and info.value.filename == "/root/x"
        with pytest.raises(lxcbind.FileTransferError) as info:
            box.get("/tmp/missing")
        assert info.value.errno == 2
        with pytest.raises(ValueError, match="absolute"):
            box.put("", b"")


def test_put_and_get_obey_the_filesystem_policy_and_leave_the_host_alone(tmp_path, left_behind):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep").write_text("host data")
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    denied_dir = tmp_path / "denied"
    denied_dir.mkdir()
    (denied_dir / "inner").write_text("hidden")
    doc = pol(filesystem={"readonlyPaths": [str(ro)],
                          "deniedPaths": [str(secret), str(denied_dir)]})
    with lxcbind.Sandbox(doc) as box:
        assert box.get(str(ro / "keep")) == b"host data"
        for target, code in ((ro / "keep", 30), (ro / "new", 30),       # EROFS
                             (secret, 1), (denied_dir / "inner", 30)):  # EPERM, EROFS
            with pytest.raises(lxcbind.FileTransferError) as info:
                box.put(str(target), b"overwritten by the container")
            assert info.value.errno == code, info.value
        with pytest.raises(lxcbind.FileTransferError) as info:
            box.get(str(secret))                    # masked by /dev/null: not a regular file
        assert info.value.errno == 1
        with pytest.raises(lxcbind.FileTransferError) as info:
            box.get(str(denied_dir / "inner"))      # a denied directory is empty
        assert info.value.errno == 2
        # a workload cannot make get() read forever: devices and FIFOs are refused, and a
        # huge file is cut at max_size
        box.run("ln -s /dev/zero /tmp/endless; mkfifo /tmp/fifo; truncate -s 5M /tmp/big")
        for path in ("/tmp/endless", "/tmp/fifo"):
            with pytest.raises(lxcbind.FileTransferError, match="not a regular file"):
                box.get(path)
        with pytest.raises(lxcbind.FileTransferError) as info:
            box.get("/tmp/big", max_size=1 << 20)
        assert info.value.errno == 27   # EFBIG
        assert len(box.get("/tmp/big")) == 5 << 20
    assert (ro / "keep").read_text() == "host data" and not (ro / "new").exists()
    assert secret.read_text() == "host secret"
    assert (denied_dir / "inner").read_text() == "hidden"


def test_session_from_policy_needs_no_command_line(left_behind):
    with lxcbind.Session.from_policy(pol(process={"env": ["S=1"]})) as s:
        assert s.run("echo $S").stdout == b"1\n"


def test_pool_takes_a_policy_without_a_command(left_behind):
    with lxcbind.Pool(pol(), size=1) as pool:
        assert pool.run("echo pooled").stdout == b"pooled\n"


def test_sandbox_container_is_the_running_container_or_an_error(left_behind):
    box = lxcbind.Sandbox(pol())
    with pytest.raises(lxcbind.SandboxError, match="not running"):
        _ = box.container
    with box:
        assert box.container.running     # typed Container, not Optional, once entered
    with pytest.raises(lxcbind.SandboxError, match="not running"):
        _ = box.container
