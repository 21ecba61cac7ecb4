"""`python -m lxcbind run` end to end: exit codes, --json, filesystem policy, lifecycle,
signals, SIGKILL + gc, concurrency.  Every check includes "nothing was left behind"."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]
INVALID = sorted((ROOT / "tests/data/policies/invalid").glob("*.json"))
STATE = Path("/var/lib/lxcbind/owners")
_REAL_POPEN = subprocess.Popen   # another suite's runs, which clean_machine must not count


def lxcbind_containers() -> set[str]:
    """Containers this test session could have made: default-named runs and our own names
    (not other sessions' ``lxcbind-test-*``/``lxcbind-bench-*`` ones)."""
    from lxcbind import list_containers
    from tests.conftest import _NAMES_MADE

    return {n for n in list_containers() if n in _NAMES_MADE or (
        n.startswith("lxcbind-") and not n.startswith(("lxcbind-test-", "lxcbind-bench-")))}


def records() -> set[str]:
    """Ownership records of the containers ``lxcbind_containers`` would count."""
    from tests.conftest import _NAMES_MADE

    names = {p.stem for p in STATE.glob("*.json")} if STATE.exists() else set()
    return {f"{n}.json" for n in names if n in _NAMES_MADE or not n.startswith("lxcbind-test-")}


def _runner(record: str) -> tuple[int, int] | None:
    """(runner_pid, runner_start) of an ownership record; None once it is gone."""
    try:
        data = json.loads((STATE / record).read_text())
    except (OSError, ValueError):
        return None
    return int(data.get("runner_pid", 0)), int(data.get("runner_start", 0))


class _Made:
    """What one test's own runs are: the CLI processes it started (pid and start time, the
    pair ownership records name their runner by), and the container names their ``--json``
    results gave.  Another suite's default-named runs on the machine meanwhile are neither."""

    def __init__(self) -> None:
        self.runners: set[tuple[int, int]] = set()
        self.names: set[str] = set()
        self.before: tuple[set[str], set[str]] = (set(), set())

    def ours(self, name: str, record: tuple[int, int] | None) -> bool:
        from tests.conftest import _NAMES_MADE

        return name in _NAMES_MADE or name in self.names or record in self.runners

    def left(self) -> tuple[set[str], set[str]]:
        """(containers, records) of this test's runs that exist now and did not before."""
        before_c, before_r = self.before
        new_r = {r: _runner(r) for r in records() - before_r}
        left_r = {r for r, runner in new_r.items() if self.ours(r[:-len(".json")], runner)}
        left_c = {n for n in lxcbind_containers() - before_c
                  if self.ours(n, new_r.get(f"{n}.json")) or f"{n}.json" in left_r}
        return left_c, left_r


_MADE: list[_Made] = []   # the running test's, while clean_machine is active


@pytest.fixture
def clean_machine(monkeypatch):
    """Assert the test created no container and no ownership record that outlived it: of
    those that appeared meanwhile, the ones its own runs made (their records name one of its
    CLI processes as runner, or the name is one it chose or was told), so that other suites
    running at the same time do not count."""
    from lxcbind.state import process_start_time

    made = _Made()
    real = subprocess.Popen

    class Tracked(real):   # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.runners.add((self.pid, process_start_time(self.pid) or 0))

    monkeypatch.setattr(subprocess, "Popen", Tracked)
    _MADE.append(made)
    made.before = lxcbind_containers(), records()
    try:
        yield made
    finally:
        _MADE.remove(made)
        monkeypatch.setattr(subprocess, "Popen", real)
    assert made.left() == (set(), set())


def _learn(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The container names a ``--json`` run reports: the running test's own."""
    for line in r.stdout.decode(errors="replace").splitlines():
        try:
            name = json.loads(line).get("container")
        except (ValueError, AttributeError):
            continue
        if isinstance(name, str) and _MADE:
            _MADE[-1].names.add(name)
    return r


def policy(command: str, **extra) -> dict:
    doc = {"version": "0.8.0", "containment": "lxc", "process": {"commandLine": command}}
    for key, value in extra.items():
        doc[key] = value if not isinstance(value, dict) else {**doc.get(key, {}), **value}
    return doc


def cli(doc: dict | None, *args: str, input: bytes | None = None, timeout: float = 60,
        path: Path | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "lxcbind", "run", *args]
    if path is not None:
        argv.append(str(path))
    elif doc is not None:
        argv.append("-")
        input = json.dumps(doc).encode()
    if input is None:  # never the test runner's own stdin (CI may have none)
        return _learn(subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                     timeout=timeout, cwd=ROOT))
    return _learn(subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                                 cwd=ROOT))


def spawn(doc: dict, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", *args, "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(json.dumps(doc).encode())
    proc.stdin.close()
    proc.stdin = None  # so communicate() does not flush a closed pipe
    return proc


# -- exit codes ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_every_bad_policy_exits_2_naming_the_field_and_creates_nothing(path, capsys, clean_machine):
    from lxcbind.cli import main
    from lxcbind.errors import PolicyError
    from lxcbind.policy.parse import load_policy_file

    with pytest.raises(PolicyError) as expected:
        load_policy_file(path)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lxcbind: ")
    assert f"{expected.value.path}:" in err if expected.value.path else True
    assert main(["run", "--json", str(path)]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 2 and out["error"]["code"] == "policy"
    assert out["error"]["path"] == expected.value.path


def test_bad_policy_through_the_real_process_prints_one_line_no_traceback(tmp_path, clean_machine):
    bad = tmp_path / "bad.json"
    bad.write_text('{"process": {"commandLine": "true", "env": ["A=1", "NOEQUALS"]}}')
    r = cli(None, path=bad)
    assert r.returncode == 2
    assert r.stderr.decode() == "lxcbind: process.env[1]: expected KEY=VALUE (no '=' found)\n"
    assert r.stdout == b""
    r = cli(None, "--bogus-flag", path=bad)
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    r = cli(None, path=tmp_path / "missing.json")
    assert r.returncode == 2 and b"not found" in r.stderr and b"Traceback" not in r.stderr


def test_embedded_example_runs(clean_machine):
    r = cli(None, "--no-tty", path=ROOT / "examples/hello.json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"hello from lxcbind-") and b" as root\n" in r.stdout


# What a pipe-mode run without a network never needs (each cost the CLI 0.2-3 ms at import):
# OpenSSL's hashlib (through secrets/hmac), the BOM codec, argparse, logging, the network layer,
# the terminal-only modules, the persistent shell, libnftables' module, shutil (and the
# compression modules it loads), pathlib (with urllib.parse, ipaddress and fnmatch: ~3 ms in an
# installed package), the egress semantics (NamedTuples built at import).
_NOT_IMPORTED_BY_A_RUN = {
    "argparse", "logging", "concurrent.futures", "hashlib", "_hashlib", "hmac", "secrets",
    "base64", "encodings.utf_8_sig", "termios", "lxcbind.net", "lxcbind.net.network",
    "lxcbind.proc.shell", "lxcbind.proc.pty", "lxcbind.proc.escapes", "lxcbind._nft",
    "shutil", "zlib", "bz2", "lzma", "binascii", "pathlib", "urllib.parse", "ipaddress",
    "fnmatch", "lxcbind.policy.egress",
}


def _imported(*args: str, input: bytes | None = None,
              env: dict[str, str] | None = None) -> tuple[set[str], int]:
    """The modules ``python3 -X importtime ARGS`` imports, and its exit status."""
    r = subprocess.run([sys.executable, "-X", "importtime", *args], input=input,
                       stdin=None if input is not None else subprocess.DEVNULL,
                       capture_output=True, timeout=60, cwd=ROOT, env=env)
    names = {line.split("|")[2].strip() for line in r.stderr.decode().splitlines()
             if line.startswith("import time:") and "self [us]" not in line}
    return names, r.returncode


def test_a_pipe_run_imports_only_what_it_needs(clean_machine):
    """The CLI's start-up is most of its cost over the interpreter's: a run through pipes with
    no network loads none of the modules only other paths use (the interpreter's own start-up,
    ``python3 -c pass`` here, may load some of them itself: those are not counted)."""
    at_start, code = _imported("-c", "pass")
    assert code == 0
    doc = json.dumps(policy("echo ran")).encode()
    names, code = _imported("-m", "lxcbind", "run", "--no-tty", "-", input=doc)
    assert code == 0
    assert "lxcbind.sandbox.core" in names   # it did run
    assert (names & _NOT_IMPORTED_BY_A_RUN) - at_start == set()


def test_a_pipe_run_imports_only_what_it_needs_without_site(clean_machine):
    """The same without ``site`` (``-S``), as an installed wheel starts: this machine's
    editable-install finder imports pathlib (and more) at start-up, which would hide pathlib
    on the run path in the test above.  Only lxcbind and cffi's backend are on the path."""
    import importlib.util

    backend = importlib.util.find_spec("_cffi_backend")
    assert backend is not None and backend.origin
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.path.dirname(backend.origin)])}
    at_start, code = _imported("-S", "-c", "pass", env=env)
    assert code == 0
    assert "pathlib" not in at_start   # else this test could not see it
    doc = json.dumps(policy("echo ran")).encode()
    names, code = _imported("-S", "-m", "lxcbind", "run", "--no-tty", "-", input=doc, env=env)
    assert code == 0
    assert "lxcbind.sandbox.core" in names
    assert (names & _NOT_IMPORTED_BY_A_RUN) - at_start == set()


_COMPILE_WATCH = """
import os, sys
def hook(event, args):
    # typing's ForwardRef: one compile() per string annotation of a NamedTuple/TypedDict field,
    # and the first compile() of a process builds the AST types (~1 ms)
    if event == "compile" and sys._getframe(1).f_code.co_filename.endswith("typing.py"):
        os.write(2, b"typing compiled " + repr(args[0]).encode() + b"\\n")
sys.addaudithook(hook)
sys.argv = ["lxcbind", "run", "--no-tty", "-"]
import runpy
runpy.run_module("lxcbind", run_name="__main__", alter_sys=True)
"""


def test_a_pipe_run_makes_typing_compile_nothing(clean_machine):
    """No NamedTuple or TypedDict on a pipe run's import path declares its fields as strings
    (``from __future__ import annotations``): typing would compile() each one."""
    doc = json.dumps(policy("echo ran")).encode()
    r = subprocess.run([sys.executable, "-c", _COMPILE_WATCH], input=doc, capture_output=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ran\n"
    assert b"typing compiled" not in r.stderr, r.stderr.decode()


@pytest.mark.parametrize("command,code", [
    ("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143), ("kill -KILL $$", 137),
    ("no-such-program-xyz", 127), ("/etc/passwd", 126),
])
def test_exit_codes_are_the_commands(command, code, clean_machine):
    r = cli(policy(command), "--no-tty")
    assert r.returncode == code, r.stderr


def test_missing_cwd_is_126_with_a_message(clean_machine):
    r = cli(policy("echo ran", process={"commandLine": "echo ran", "cwd": "/no/such/dir"}),
            "--no-tty")
    assert r.returncode == 126
    assert r.stdout == b""
    assert b"process.cwd: /no/such/dir: No such file or directory" in r.stderr


def test_env_has_replace_semantics_and_cwd_applies(clean_machine):
    doc = policy("x", process={"commandLine": "pwd; env | sort", "cwd": "/tmp",
                               "env": ["A=1", "B=two=2"]})
    r = cli(doc, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["exit_code"] == 0
    lines = out["stdout"].splitlines()
    assert lines[0] == "/tmp"
    env = dict(line.split("=", 1) for line in lines[1:])
    assert env["A"] == "1" and env["B"] == "two=2"
    assert set(env) <= {"A", "B", "PATH", "HOME", "TERM", "container", "PWD", "SHLVL", "_",
                        "OLDPWD"}
    assert "LXCBIND_HOST_ONLY" not in env


def test_json_result_object(clean_machine):
    r = cli(policy("echo out; echo err >&2; exit 5"), "--json")
    assert r.returncode == 5
    out = json.loads(r.stdout)  # exactly one object
    assert out["exit_code"] == 5 and out["returncode"] == 5 and out["signal"] is None
    assert out["timed_out"] is False and out["stdout"] == "out\n" and out["stderr"] == "err\n"
    assert out["container"].startswith("lxcbind-") and out["duration"] > 0


def test_timeout_from_policy_and_flag_gives_124_and_kills_children(clean_machine):
    started = time.monotonic()
    r = cli(policy("x", process={"commandLine": "sleep 100 & sleep 100", "timeout": 500}), "--json")
    assert r.returncode == 124 and json.loads(r.stdout)["timed_out"] is True
    assert time.monotonic() - started < 15
    r = cli(policy("sleep 100"), "--no-tty", "--timeout", "0.5")
    assert r.returncode == 124 and b"timed out" in r.stderr


def test_dry_run_creates_nothing(clean_machine):
    r = cli(policy("true"), "--dry-run", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["plan"]["runnable"] is True


def test_unenforceable_network_policy_fails_closed_with_125(clean_machine):
    # Permissive ingress asked of a firewall stays refused; a policy that asks for no
    # firewall (0.7 capabilities mode) runs, as under mxc (integration/api/test_mxc_dropin.py).
    r = cli(policy("true", network={"egress": {"default": "allow"},
                                    "ingress": {"default": "allow"}}), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 125 and out["error"]["code"] == "sandbox"
    assert "network.ingress.default" in out["error"]["message"]


def test_no_network_device_but_loopback(clean_machine):
    r = cli(policy("ls /sys/class/net"), "--json")
    assert json.loads(r.stdout)["stdout"].split() == ["lo"]


def test_download_rootfs_offline_fails_with_cache_hint(clean_machine):
    doc = policy("true", lxc={"distribution": "nosuchdistro", "release": "1"})
    r = cli(doc, "--no-tty", timeout=120)
    assert r.returncode == 125
    assert b"could not be fetched" in r.stderr and b"/var/cache/lxc/download" in r.stderr


# -- filesystem policy ---------------------------------------------------------------------

def test_filesystem_policy_end_to_end(tmp_path, clean_machine):
    ro, rw, secret_dir = tmp_path / "ro", tmp_path / "rw", tmp_path / "secret"
    for d in (ro, rw, secret_dir):
        d.mkdir()
    (ro / "data").write_text("readable")
    (secret_dir / "key").write_text("TOPSECRET")
    secret_file = tmp_path / "token"
    secret_file.write_text("TOKEN")
    command = (f"cat {ro}/data; echo; (echo x > {ro}/new) 2>/dev/null && echo ro-WRITABLE; "
               f"echo landed > {rw}/out; ls -A {secret_dir}; cat {secret_file}; echo end")
    doc = policy(command, filesystem={"readonlyPaths": [str(ro)], "readwritePaths": [str(rw)],
                                      "deniedPaths": [str(secret_dir), str(secret_file)]})
    r = cli(doc, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert out["stdout"] == "readable\nend\n"
    assert (rw / "out").read_text() == "landed\n"
    assert not (ro / "new").exists()


# -- lifecycle -----------------------------------------------------------------------------

def test_keep_and_reuse_then_destroy(tmp_path):
    name = new_name()
    keep = policy("echo kept > /root/marker", containerId=name, lifecycle={"destroyOnExit": False})
    try:
        assert cli(keep, "--no-tty").returncode == 0
        assert name in lxcbind_containers() | {n for n in __import__("lxcbind").list_containers()}
        shared = tmp_path / "shared"
        shared.mkdir()
        reuse = policy(f"cat /root/marker; echo new > {shared}/f", containerId=name,
                       filesystem={"readwritePaths": [str(shared)]})
        r = cli(reuse, "--json")
        assert json.loads(r.stdout)["stdout"] == "kept\n"
        assert (shared / "f").read_text() == "new\n"  # the current policy's mounts applied
        from lxcbind import list_containers

        assert name not in list_containers()  # second run had destroyOnExit (default true)
    finally:
        from tests.conftest import destroy_quietly

        destroy_quietly(name)


def test_concurrent_runs_with_the_same_id_never_share(clean_machine):
    name = new_name()
    doc = policy("test -e /root/mine && echo SHARED; touch /root/mine; sleep 0.5; echo ok",
                 containerId=name)
    procs = [spawn(doc, "--no-tty") for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out == b"ok\n"


def test_twenty_concurrent_runs(clean_machine):
    doc = policy("hostname")
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: cli(doc, "--json", timeout=180), range(20)))
    names = set()
    for r in results:
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["stdout"].strip() == out["container"]
        names.add(out["container"])
    assert len(names) == 20


# -- signals and SIGKILL -------------------------------------------------------------------

def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_during_command_cleans_up_and_exits_128_plus_n(sig, clean_machine):
    name = new_name()
    proc = spawn(policy("echo started; sleep 100", containerId=name), "--no-tty")
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + sig
    assert b"Traceback" not in proc.stderr.read()
    from lxcbind import list_containers

    assert name not in list_containers()


@pytest.mark.parametrize("delay", [0.05, 0.15, 0.3, 0.45])
def test_signal_during_setup_leaves_nothing(delay, clean_machine):
    name = new_name()
    proc = spawn(policy("true", containerId=name), "--no-tty")
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    # killed before the handler was installed (default action), or cleaned up and 143, or done
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert b"Traceback" not in proc.stderr.read()
    from lxcbind import list_containers

    assert name not in list_containers()


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except FileNotFoundError:
        pass
    return False


@pytest.mark.parametrize("entry", ["python -m lxcbind", "lxcbind-exec"])
def test_signals_at_random_moments_of_startup(entry, tmp_path, clean_machine):
    """30 fatal signals at random moments from the start of the CLI's process to its command
    running: each ends the run quietly (128+N after cleanup, or death by the signal while
    nothing exists yet), never with a traceback, and leaves nothing behind.  SIGTERM/SIGHUP are
    sent from the very first moment.  SIGINT is sent once lxcbind's first instruction has run
    (its handler shows in SigCgt): before that, the interpreter is still in its own start-up
    (``site`` and the ``.pth`` files) and Python itself turns SIGINT into KeyboardInterrupt."""
    import random

    from lxcbind import list_containers
    from lxcbind.sandbox.idmap import held_ranges

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    main = ["-m", "lxcbind", "run", "--no-tty"] if entry.startswith("python") else \
        ["-c", "from lxcbind._entry import exec_main; exec_main()"]
    # The range of delays: how long a whole run of `true` takes here (start-up, setup, command).
    path = tmp_path / "true.json"
    path.write_text(json.dumps(policy("true", containerId=new_name("i15-"))))
    started = time.monotonic()
    subprocess.run([sys.executable, *main, str(path)], capture_output=True, timeout=60,
                   cwd=ROOT, check=True)
    span = time.monotonic() - started
    for trial in range(30):
        sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
        delay = rng.uniform(0, span)
        name = new_name("i15-")
        path.write_text(json.dumps(policy("sleep 100", containerId=name)))
        proc = subprocess.Popen([sys.executable, *main, str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            if sig == signal.SIGINT:
                assert _wait_for(functools.partial(_catches, proc.pid, signal.SIGTERM),
                                 timeout=30)
            time.sleep(delay)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        what = f"trial {trial} (seed {seed}): {sig.name} after {delay * 1000:.0f} ms"
        assert b"Traceback" not in err, f"{what}: {err.decode(errors='replace')}"
        assert proc.returncode in (-sig, 128 + sig), f"{what}: exit {proc.returncode}"
        assert name not in list_containers(), what
        assert name not in held_ranges(), what


def test_json_gets_one_object_whenever_the_signal_comes(tmp_path, clean_machine):
    """--json: a SIGTERM at any moment after lxcbind's first instruction (import, setup, the
    command running) still gives exactly one JSON object and exit status 143."""
    import random

    from lxcbind import list_containers

    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    path = tmp_path / "p.json"
    for trial in range(10):
        name = new_name("i15-")
        path.write_text(json.dumps(policy("sleep 100", containerId=name)))
        proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--json", str(path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)
        try:
            assert _wait_for(functools.partial(_catches, proc.pid, signal.SIGTERM), timeout=30)
            delay = rng.uniform(0, 0.3)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        what = f"trial {trial}: SIGTERM after {delay * 1000:.0f} ms"
        objects = [json.loads(line) for line in out.decode().splitlines()]
        assert len(objects) == 1 and objects[0]["exit_code"] == 143, (what, out)
        assert objects[0]["error"]["code"] == "signal", what
        assert proc.returncode == 143 and b"Traceback" not in err, (what, err)
        assert name not in list_containers(), what


def test_sigkill_of_the_runner_then_gc_leaves_nothing(clean_machine):
    from lxcbind import list_containers

    name = new_name()
    proc = spawn(policy("echo started; sleep 100", containerId=name), "--no-tty")
    assert proc.stdout.readline() == b"started\n"
    proc.kill()
    proc.wait(timeout=10)
    assert name in list_containers()  # SIGKILL cannot be caught: left behind ...
    assert f"{name}.json" in records()
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0 and f"removed {name}".encode() in r.stdout
    assert name not in list_containers()  # ... until gc reaps it
    assert f"{name}.json" not in records()


# -- clean_machine itself: only the test's own runs count ----------------------------------

def _default_named_run(popen, command: str) -> subprocess.Popen:
    """A run without a containerId (a default ``lxcbind-<hex>`` name), started by ``popen``."""
    proc = popen([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 cwd=ROOT)
    proc.stdin.write(json.dumps(policy(command)).encode())
    proc.stdin.close()
    proc.stdin = None
    assert proc.stdout.readline() == b"started\n"
    return proc


@pytest.fixture
def other_suite():
    """Another suite's run on the machine, started by the test (after clean_machine looked)
    and ended only after clean_machine's own check (fixtures end in reverse order)."""
    procs: list[subprocess.Popen] = []
    yield lambda: procs.append(_default_named_run(_REAL_POPEN, "echo started; sleep 100"))
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM


def test_clean_machine_ignores_another_suites_runs(other_suite, clean_machine):
    before = lxcbind_containers()
    other_suite()
    assert lxcbind_containers() - before   # a default-named container appeared meanwhile ...
    assert clean_machine.left() == (set(), set())   # ... and is not this test's


def test_clean_machine_still_finds_what_a_test_left(clean_machine):
    """A default-named run of the test itself, SIGKILLed: its container and record count."""
    proc = _default_named_run(subprocess.Popen, "echo started; sleep 100")
    proc.kill()
    proc.communicate(timeout=10)
    containers, recs = clean_machine.left()
    try:
        assert len(containers) == 1 and recs == {f"{next(iter(containers))}.json"}
    finally:
        r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                           timeout=60, cwd=ROOT)
        assert r.returncode == 0, r.stderr
    assert clean_machine.left() == (set(), set())
