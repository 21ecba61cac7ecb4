"""``lxcbind run --warm`` through the warm CLI server (``lxcbind.cliserver``, ``lxcbind.
_cliclient``): issue #23's command line at the interpreter's floor.

Real processes throughout: ``lxcbind warm`` (``tests/warmserver``) starts its CLI server, and
each client here is ``python -m lxcbind`` in a child process.  What a user checks: the same
results as the CLI run in its own process (``LXCBIND_WARM_CLI=0``), what is not handed over
(a terminal, a policy on stdin, no server for the policy, other commands), the client importing
nothing but builtins, signals reaching the run, a killed client's run ending, an edited
package not served by a server that loaded the old one, and nothing left behind.  Attacks on
the CLI server's socket: tests/security/test_warm_attacks.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lxcbind import _cliclient
from tests.conftest import IS_ROOT, NATIVE_ERROR, requires_clones
from tests.integration.sandbox import test_warm
from tests.security.sandbox_probes import host_pids
from tests.warmserver import ROOT, Server

pytestmark = [requires_clones, pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

SERVED = b"run by the warm CLI server"
policy = test_warm.policy
server = test_warm.server   # the fixture: a warm server (``lxcbind warm``) of a new policy


def cli(args: list[str], *, in_process: bool = False, input: bytes | None = None,
        env: dict[str, str] | None = None, cwd: Path | str = ROOT,
        ) -> subprocess.CompletedProcess[bytes]:
    environ = {**os.environ, **(env or {})}
    if in_process:
        environ["LXCBIND_WARM_CLI"] = "0"
    return subprocess.run([sys.executable, "-m", "lxcbind", *args], capture_output=True,
                          timeout=300, cwd=cwd, env=environ, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def wait_for(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_lxcbind_warm_starts_a_cli_server_and_stops_it(tmp_path: Path) -> None:
    s = Server(policy(), tmp_path, "--ready", "1")
    try:
        pid, path = s.cli_server()
        assert pid and os.path.basename(path).startswith(f"cli-{_cliclient.key()}-")
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
        code, err = s.stop(signal.SIGTERM)
    finally:
        s.close()
    assert code == 0, err
    assert not os.path.exists(f"/proc/{pid}") and not os.path.exists(path)


def test_a_served_run_gives_what_the_cli_in_its_own_process_gives(server: Server,
                                                                   tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    cases: list[tuple[list[str], bytes | None]] = [
        (["--", "sh", "-c", "echo out; echo err >&2; exit 7"], None),
        (["--", "sh", "-c", "kill -TERM $$"], None),
        (["--", "sh", "-c", "pwd; umask; cat | sha256sum"], data),
        (["--json", "--", "sh", "-c", "printf 'a\\0b'; exit 3"], None),
        (["--timeout", "1", "--", "sleep", "30"], None),
        (["--", "/no/such/program"], None),
    ]
    for args, stdin in cases:
        full = ["run", "--warm", "-v", str(server.file), *args]
        hot = cli(full, input=stdin)
        own = cli(full, input=stdin, in_process=True)
        assert SERVED in hot.stderr and SERVED not in own.stderr, (args, hot.stderr)
        assert hot.returncode == own.returncode, (args, hot, own)
        if "--json" in args:
            a, b = json.loads(hot.stdout), json.loads(own.stdout)
            assert a["exit_code"] == b["exit_code"] == 3 and a["stdout"] == b["stdout"] == "a\0b"
        else:
            assert hot.stdout == own.stdout, args
        said = [line for line in hot.stderr.splitlines() if not line.startswith(b"lxcbind: ")]
        assert said == [line for line in own.stderr.splitlines()
                        if not line.startswith(b"lxcbind: ")], args
    # the environment's LXCBIND_WARM=1 asks for it too; the client's directory and umask are
    # the forked CLI's (a relative policy path)
    os.chdir(tmp_path)
    try:
        r = cli(["run", "-v", server.file.name, "--", "echo", "env"],
                env={"LXCBIND_WARM": "1"}, cwd=server.file.parent)
    finally:
        os.chdir(ROOT)
    assert (r.returncode, r.stdout) == (0, b"env\n") and SERVED in r.stderr, r.stderr


def test_the_client_imports_nothing_but_builtins(server: Server) -> None:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lxcbind", "run", "--warm",
                        "-v", str(server.file), "--", "true"], capture_output=True, timeout=120,
                       cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and SERVED in r.stderr, r.stderr[-2000:]
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "import runpy"],
                          capture_output=True, timeout=60, cwd=ROOT)

    def modules(err: bytes) -> set[str]:
        return {line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines()
                if line.startswith("import time:") and "|" in line} - {"imported package"}

    extra = modules(r.stderr) - modules(bare.stderr)
    assert extra <= {"lxcbind", "lxcbind._early", "lxcbind._entry", "lxcbind._cliclient",
                     "lxcbind.__main__", "_socket", "_sha2", "_sha256"}, extra


def test_what_is_not_handed_over_runs_in_the_client(server: Server, tmp_path: Path) -> None:
    # a policy on stdin: read by the client's own CLI (a forked one would have taken stdin)
    doc = json.dumps(server.policy).encode()
    r = cli(["run", "--warm", "-v", "-", "--", "echo", "stdin-policy"], input=doc)
    assert (r.returncode, r.stdout) == (0, b"stdin-policy\n") and SERVED not in r.stderr
    assert b"running in clone" in r.stderr   # still a warm run, in the client's process
    # no server for the policy: a fresh container, started by the client itself
    other = tmp_path / "other.json"
    other.write_text(json.dumps(policy()))
    r = cli(["run", "--warm", "-v", str(other), "--", "echo", "cold"])
    assert (r.returncode, r.stdout) == (0, b"cold\n") and SERVED not in r.stderr, r.stderr
    assert b"no warm server for this policy" in r.stderr
    # a closed stdin (whose number the client's own descriptors would otherwise take)
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--warm", "-v",
                        str(server.file), "--", "echo", "closed"], capture_output=True,
                       timeout=300, cwd=ROOT, preexec_fn=lambda: os.close(0))
    assert (r.returncode, r.stdout) == (0, b"closed\n") and SERVED not in r.stderr, r.stderr
    # another command, with LXCBIND_WARM=1 in the environment
    r = cli(["-v", "ls"], env={"LXCBIND_WARM": "1"})
    assert r.returncode == 0 and SERVED not in r.stderr, r.stderr
    # a usage error is the forked CLI's to report, as the client's would
    hot, own = (cli(["run", "--warm", "--bogus", str(server.file)], in_process=flag)
                for flag in (False, True))
    assert hot.returncode == own.returncode == 2 and hot.stderr == own.stderr, hot
    # a policy error too, naming the field
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**server.policy, "process": {"commandLine": 5}}))
    hot, own = (cli(["run", "--warm", str(bad)], in_process=flag) for flag in (False, True))
    assert hot.returncode == own.returncode == 2 and hot.stderr == own.stderr, hot
    assert b"process.commandLine" in hot.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_client_reaches_the_run(server: Server, sig: int) -> None:
    mark = str(3 * 10**8 + os.getpid() + sig)
    client = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--warm", "-v",
                               str(server.file), "--", "sh", "-c", f"sleep {mark}"], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: host_pids(f"sleep\0{mark}".encode()), "the command")
        client.send_signal(sig)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate(timeout=60)
    assert SERVED in err, err
    assert client.returncode == 128 + sig, err   # the CLI's own: cleaned up, then 128+N
    assert b"cleaned up after" in err
    wait_for(lambda: not host_pids(f"sleep\0{mark}".encode()), "the command to go", 30)


def test_a_sigkilled_clients_run_ends(server: Server) -> None:
    mark = str(4 * 10**8 + os.getpid())
    client = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--warm", "-v",
                               str(server.file), "--", "sh", "-c", f"sleep {mark}"], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    forked = 0
    try:
        assert client.stderr is not None
        for line in client.stderr:
            if SERVED in line:
                forked = int(line.rsplit(b" ", 1)[1].strip(b")\n"))
                break
        wait_for(lambda: host_pids(f"sleep\0{mark}".encode()), "the command")
    finally:
        client.kill()
        client.communicate(timeout=60)
    assert forked
    wait_for(lambda: not os.path.exists(f"/proc/{forked}"), "the forked CLI to end", 60)
    wait_for(lambda: not host_pids(f"sleep\0{mark}".encode()), "the command to go", 60)
    r = cli(["run", "--warm", "-v", str(server.file), "--", "echo", "again"])
    assert (r.returncode, r.stdout) == (0, b"again\n") and SERVED in r.stderr


def test_an_edited_package_is_not_served_by_the_old_server(server: Server) -> None:
    """A CLI server serves the code it imported: a file of the package changed since (here
    its mtime, as any edit or reinstall changes it) makes clients run the CLI themselves."""
    target = Path(_cliclient.__file__).with_name("_early.py")
    st = os.stat(target)
    try:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        r = cli(["run", "--warm", "-v", str(server.file), "--", "echo", "edited"])
        assert (r.returncode, r.stdout) == (0, b"edited\n") and SERVED not in r.stderr
    finally:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = cli(["run", "--warm", "-v", str(server.file), "--", "echo", "same"])
    assert (r.returncode, r.stdout) == (0, b"same\n") and SERVED in r.stderr


def test_a_sigkilled_cli_servers_socket_goes_with_gc(server: Server) -> None:
    pid, path = server.cli_server()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/cmdline")
             or not open(f"/proc/{pid}/cmdline", "rb").read(), "the CLI server to die")
    assert os.path.exists(path)   # nobody listens: clients run the CLI themselves
    r = cli(["run", "--warm", "-v", str(server.file), "--", "echo", "fallback"])
    assert (r.returncode, r.stdout) == (0, b"fallback\n") and SERVED not in r.stderr
    assert b"running in clone" in r.stderr
    gc = cli(["gc"])
    assert gc.returncode == 0 and not os.path.exists(path), gc.stderr


def test_the_key_follows_what_a_forked_cli_shares(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure logic of ``_cliclient.key``: the variables read at import count, the per-run
    ones do not; the stamp sees a new, changed or removed file."""
    base = _cliclient.key()
    monkeypatch.setenv("LXCBIND_WARM", "1")
    monkeypatch.setenv("LXCBIND_WARM_CLI", "1")
    assert _cliclient.key() == base
    monkeypatch.setenv("LXCBIND_STATE_DIR", str(tmp_path))
    assert _cliclient.key() != base
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    first = _cliclient._stamp(str(tmp_path))
    (tmp_path / "__pycache__" / "a.pyc").write_bytes(b"ignored")
    assert _cliclient._stamp(str(tmp_path)) == first
    os.utime(tmp_path / "a.py", ns=(0, os.stat(tmp_path / "a.py").st_mtime_ns + 1))
    assert _cliclient._stamp(str(tmp_path)) != first
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("")
    assert _cliclient._stamp(str(tmp_path))[0] == 2
