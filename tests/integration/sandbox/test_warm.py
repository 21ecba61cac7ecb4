"""A warm server (``python -m lxcbind warm``) and its clients (``run(warm=True)``, ``run
--warm``): issue #23's template that outlives the call.

Real containers: the server is the real command line in a child process (``tests/warmserver``),
its template a liblxc container, every client's sandbox a clone of it.  Here: results are
exact and the same as a fresh container's, each run is fresh, a client's own policy (limits,
process, user) holds in its clone, and nothing is left behind (a client SIGKILLed mid-command,
the server's idle exit, SIGTERM, SIGKILL + gc).  The attacks are tests/security/
test_warm_attacks.py."""

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
from tests.conftest import _NAMES_MADE, IS_ROOT, NATIVE_ERROR, new_name, requires_clones
from tests.integration.sandbox.test_clone import host_state, payload_dirs
from tests.security.sandbox_probes import host_pids
from tests.warmserver import ROOT, Server, WarmClient, lock_and_socket

pytestmark = [requires_clones, pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]


def policy(**lxc: object) -> dict[str, object]:
    """A deny-all policy (no network device) named for the leftover check."""
    p: dict[str, object] = {"version": "0.8.0", "containerId": new_name("warm-"),
                            "process": {"commandLine": "echo policy-command"}}
    if lxc:
        p["lxc"] = dict(lxc)
    template(p)
    return p


def wait_for(predicate: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def template(p: dict[str, object]) -> str:
    """The name of the warm server's template of ``p`` (not its containerId: a fresh
    container of the policy may run meanwhile)."""
    name = f"{p['containerId']}-warm"
    _NAMES_MADE.add(name)   # for the end-of-session leftover check
    return name


def assert_nothing_left(p: dict[str, object]) -> None:
    name = str(p["containerId"])   # the template's and the fresh runs' names start with it
    assert not [n for n in lxcbind.list_containers() if n.startswith(name)]
    assert not payload_dirs(name)
    assert host_state(name) == ([], [], set())
    assert not lock_and_socket(p)
    assert not os.path.exists(f"/var/lib/lxcbind/owners/{name}.json")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(policy(), tmp_path, "--ready", "1")
    try:
        yield s
    finally:
        s.close()


def run(server: Server, command: object, **keywords: object) -> lxcbind.CompletedRun:
    """``run(warm=True)``'s warm path, failing instead of falling back to a container."""
    return WarmClient(server.policy).run(command, **keywords)


def test_results_are_exact_and_come_from_a_clone(server: Server) -> None:
    r = run(server, ["sh", "-c", "printf 'a\\nb'; printf err >&2; exit 7"], timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (7, b"a\nb", b"err")
    r = run(server, "cat", input=b"x" * 100_000, timeout=30)
    assert (r.returncode, r.stdout) == (0, b"x" * 100_000)
    r = run(server, ["/nonexistent"], timeout=30)
    assert r.returncode == 127 and r.exec_error is not None
    r = run(server, None, timeout=30)     # the policy's own command
    assert r.stdout == b"policy-command\n"
    r = run(server, "sleep 30", timeout=1)
    assert r.timed_out
    with pytest.raises(lxcbind.CalledProcessError):
        run(server, "exit 3", check=True, timeout=30)
    r = lxcbind.run("hostname; cat /proc/1/comm", policy=server.policy, warm=True, text=True,
                    timeout=30)
    host, init = r.stdout.split()
    # a clone's hostname and init; a fresh container would be named after the containerId
    assert host.startswith("lxcbind-") and host != server.name and init == "lxcbind-init"


def test_a_file_written_by_one_run_is_gone_in_the_next(server: Server) -> None:
    first = run(server, "hostname; echo planted > /tmp/mark; echo planted > /etc/mark; "
                        "sleep 301 >/dev/null 2>&1 & true", timeout=30)
    assert first.returncode == 0, first
    second = run(server, "hostname; cat /tmp/mark /etc/mark 2>&1; "
                         "ps -eo args | grep -c '^sleep 301'; true", timeout=30)
    assert first.stdout.split()[0] != second.stdout.split()[0]
    assert b"planted" not in second.stdout and second.stdout.split()[-1] == b"0"
    assert not host_pids(b"sleep\x00301")


def test_the_clients_policy_holds_in_its_clone(server: Server) -> None:
    """Limits, process and user of the client's policy, not the server's."""
    mine = dict(server.policy, lxc={"limits": {"memory": 96 << 20, "pids": 40, "cpu": 0.5},
                                    "uid": 1000, "gid": 1000},
                process={"commandLine": "echo mine", "env": ["A=from-client"], "cwd": "/tmp"})
    v2 = cgroups.controller_version("memory") == "v2"
    files = ("memory.max pids.max cpu.max" if v2 else
             "memory/memory.limit_in_bytes pids/pids.max cpu*/cpu.cfs_quota_us")
    r = WarmClient(mine).run(f"cd /sys/fs/cgroup && cat {files}; id -u; echo $A; "
                             "cd - >/dev/null; pwd", timeout=30, text=True)
    assert r.stdout.splitlines() == [str(96 << 20), "40", "50000 100000" if v2 else "50000",
                                     "1000", "from-client", "/tmp"], r
    assert WarmClient(mine).run(None, timeout=30).stdout == b"mine\n"
    # another process (command, env, cwd) alone: a ready clone; other limits: one made for it
    other = dict(server.policy, process={"commandLine": "echo other", "env": ["A=2"],
                                         "cwd": "/tmp"})
    r = WarmClient(other).run("echo $A; pwd", timeout=30)
    assert r.stdout == b"2\n/tmp\n"
    log = server.stderr().splitlines()
    said = [line.split(": ", 2)[-1] for line in log if ": client pid " in line]
    assert said == ["a clone made for its limits and user"] * 2 + ["a ready clone"], log
    # the server's own policy's clones still have its limits (the default: 1024 processes)
    r = run(server, "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; "
                    "id -u", timeout=30, text=True)
    assert r.stdout.split() == ["1024", "0"], r
    # a limit that strikes is reported as in a fresh container
    few = dict(server.policy, lxc={"limits": {"pids": 8}})
    r = WarmClient(few).run("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 2 & done; wait",
                            timeout=60)
    assert r.pids_limited, r
    tight = dict(server.policy, lxc={"limits": {"memory": 64 << 20}})
    r = WarmClient(tight).run(["/usr/bin/python3", "-c", "b = bytearray(300 << 20)"],
                              timeout=60)
    assert r.oom_killed and r.returncode != 0, r
    small = dict(server.policy, lxc={"limits": {"disk": 16 << 20}})
    r = WarmClient(small).run("dd if=/dev/zero of=/fill bs=1M count=40 2>&1; true", timeout=60)
    assert r.disk_limited and b"No space left" in r.stdout, r
    assert not run(server, "true", timeout=30).disk_limited


def test_a_sigkilled_client_leaves_no_process_or_cgroup(server: Server) -> None:
    mark = str(10**8 + os.getpid())
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import lxcbind
        lxcbind.run("sleep {mark}", policy={json.dumps(server.policy)}, warm=True)
    """)], cwd=ROOT)
    try:
        wait_for(lambda: host_pids(f"sleep\0{mark}".encode()), "the command")
        pid = host_pids(f"sleep\0{mark}".encode())[0]
        dirs = [cgroups.process_dir(pid, c) for c in ("memory", "pids", "cpu")]
        assert all(d and "clone-" in d for d in dirs), dirs
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
        assert len(nspid) == 3   # host, template, clone (a container's command: 2)
    finally:
        client.kill()
        client.wait(timeout=30)
    wait_for(lambda: not host_pids(f"sleep\0{mark}".encode()), "the command to go")
    wait_for(lambda: not any(os.path.exists(d) for d in dirs if d), "the clone's cgroup")
    # and the server goes on serving
    assert run(server, "echo again", timeout=30).stdout == b"again\n"


def test_the_idle_exit_leaves_nothing(tmp_path: Path) -> None:
    p = policy()
    s = Server(p, tmp_path, "--ready", "2", "--idle", "2")
    try:
        assert lxcbind.run("echo hi", policy=p, warm=True, timeout=30).stdout == b"hi\n"
        assert lock_and_socket(p)
        code, err = s.wait(timeout=120)   # it stops by itself
    finally:
        s.close()
    assert code == 0, err
    assert_nothing_left(p)


def test_sigterm_with_a_client_running_leaves_nothing(tmp_path: Path) -> None:
    p = policy()
    s = Server(p, tmp_path, "--ready", "2")
    outcome: list[object] = []
    mark = str(2 * 10**8 + os.getpid())

    def client() -> None:
        try:
            outcome.append(lxcbind.run(f"sleep {mark}", policy=p, warm=True, timeout=300))
        except lxcbind.LxcbindError as exc:   # its spawner went with the server
            outcome.append(exc)

    worker = threading.Thread(target=client, daemon=True)
    try:
        worker.start()
        wait_for(lambda: host_pids(f"sleep\0{mark}".encode()), "the command")
        code, err = s.stop(signal.SIGTERM)
    finally:
        s.close()
    worker.join(60)
    assert not worker.is_alive() and outcome
    assert code == 0, err
    assert not host_pids(f"sleep\0{mark}".encode())
    assert_nothing_left(p)


def test_a_sigkilled_server_leaves_what_gc_removes(tmp_path: Path) -> None:
    p = policy()
    s = Server(p, tmp_path, "--ready", "2")
    try:
        assert lxcbind.run("true", policy=p, warm=True, timeout=30).returncode == 0
        s.stop(signal.SIGKILL)
    finally:
        s.close()
    name = template(p)
    assert name in lxcbind.list_containers()   # (its cgroups may be gone with its cloner)
    assert len(lock_and_socket(p)) == 2
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(p)


def test_a_sigkilled_servers_template_goes_with_the_next_run(tmp_path: Path) -> None:
    """Every run's own garbage collection destroys a dead owner's containers: the template
    of a SIGKILLed server too (its socket and lock stay for ``gc``; clients fall back)."""
    p = policy()
    s = Server(p, tmp_path, "--ready", "1")
    try:
        s.stop(signal.SIGKILL)
    finally:
        s.close()
    name = template(p)
    assert name in lxcbind.list_containers()
    r = lxcbind.run("echo fresh", policy=p, warm=True, timeout=60)   # falls back: cold
    assert r.stdout == b"fresh\n"
    assert name not in lxcbind.list_containers() and not payload_dirs(name)
    assert host_state(name) == ([], [], set())
    subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True, timeout=300,
                   cwd=ROOT, check=True)
    assert_nothing_left(p)


def test_a_server_whose_template_stopped_exits_and_leaves_nothing(tmp_path: Path) -> None:
    """The template killed from the host (its cloner SIGKILLed): the server says so, exits
    125 and removes the rest; a client meanwhile falls back to a fresh container."""
    from tests.integration.sandbox.test_clone import cloner_pids

    p = policy()
    s = Server(p, tmp_path, "--ready", "1")
    try:
        def is_init(pid: int) -> bool:   # not a clone being made (a child, until it execs)
            with open(f"/proc/{pid}/status") as f:
                return next(line for line in f if line.startswith("NSpid:")).split()[-1] == "1"

        cloners = [pid for pid in cloner_pids(template(p)) if is_init(pid)]
        assert len(cloners) == 1
        os.kill(cloners[0], signal.SIGKILL)
        code, err = s.wait(timeout=120)
    finally:
        s.close()
    assert code == 125, err
    said = [line for line in err.splitlines() if "stopped (its cloner exited)" in line]
    assert said[-1].startswith("lxcbind: the warm server's template"), err
    assert_nothing_left(p)


def cli(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "lxcbind", *args], capture_output=True,
                          timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL, **kw)  # type: ignore


def test_cli_warm_with_and_without_a_server_gives_the_same_result(tmp_path: Path) -> None:
    p = policy()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(p))
    command = ["--", "sh", "-c", "echo out; echo err >&2; exit 7"]
    cold = cli(["run", "--warm", str(path), *command])
    cold_v = cli(["run", "--warm", "-v", str(path), *command])
    cold_json = json.loads(cli(["run", "--warm", "--json", str(path)]).stdout)
    env_cold = cli(["run", str(path), *command], env={**os.environ, "LXCBIND_WARM": "1"})
    s = Server(p, tmp_path, "--ready", "1")
    try:
        hot = cli(["run", "--warm", str(path), *command])
        hot_v = cli(["run", "--warm", "-v", str(path), *command])
        hot_json = json.loads(cli(["run", "--warm", "--json", str(path)]).stdout)
        env_hot = cli(["run", "-v", str(path), *command],
                      env={**os.environ, "LXCBIND_WARM": "1"})
        # a run without --warm meanwhile: a fresh container of the policy, named by it
        cold_meanwhile = json.loads(cli(["run", "--json", str(path)]).stdout)
    finally:
        s.close()
    for r in (cold, hot, env_cold):
        assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n"), r
    assert (hot_v.returncode, hot_v.stdout) == (cold_v.returncode, cold_v.stdout) == (7, b"out\n")
    assert b"no warm server for this policy" in cold_v.stderr
    assert b"running in clone lxcbind-" in hot_v.stderr and b"err\n" in hot_v.stderr
    assert b"running in clone" in env_hot.stderr and env_hot.returncode == 7
    assert cold_json["container"] == cold_meanwhile["container"] == p["containerId"]
    assert cold_meanwhile["stdout"] == "policy-command\n"
    assert hot_json["container"].startswith("lxcbind-")
    for key in ("exit_code", "stdout", "stderr", "timed_out", "oom_killed", "pids_limited",
                "disk_limited"):
        assert cold_json[key] == hot_json[key], key
    assert hot_json["stdout"] == "policy-command\n"
    assert_nothing_left(p)


def test_a_second_server_for_the_same_key_is_refused(server: Server) -> None:
    r = cli(["warm", str(server.file)])
    assert r.returncode == 125 and r.stdout == b""
    assert b"a warm server for this policy is already running" in r.stderr, r.stderr
    assert b"Traceback" not in r.stderr
    assert run(server, "echo still", timeout=30).stdout == b"still\n"


@pytest.mark.parametrize(("extra", "field"), [
    ({"network": {"egress": {"default": "allow"}}}, "network"),
    ({"filesystem": {"readwritePaths": ["/srv"]}}, "filesystem.readwritePaths"),
    ({"lxc": {"privileged": True}}, "lxc.privileged"),
])
def test_a_policy_clones_refuse_is_refused_by_field(tmp_path: Path, extra: dict[str, object],
                                                    field: str) -> None:
    p = {**policy(), **extra}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(p))
    r = cli(["warm", str(path)])
    assert r.returncode == 2 and r.stdout == b"", r
    assert r.stderr.splitlines()[-1].startswith(f"lxcbind: warm server: {field}: ".encode())
    assert not lock_and_socket(p) and str(p["containerId"]) not in lxcbind.list_containers()
    with pytest.raises(ValueError, match=field):
        from lxcbind.sandbox.warm import WarmServer

        WarmServer(p)


def test_a_non_root_client_is_refused(server: Server) -> None:
    """A client of another uid that can reach the socket (given CAP_DAC_OVERRIDE: the
    directory is root's, 0700) is refused by the server's SO_PEERCRED check."""
    st = os.stat(os.path.dirname(server.path))
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    assert os.stat(server.path).st_mode & 0o777 == 0o600
    code = textwrap.dedent(f"""
        import os
        from lxcbind.policy.parse import load_policy
        from lxcbind.proc.warm import open_clone
        print("UID", os.getuid())
        said = []
        session = open_clone(load_policy({json.dumps(server.policy)}), log=said.append)
        print("SESSION", session)
        print("SAID", said)
    """)
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        "--inh-caps", "+dac_override", "--ambient-caps", "+dac_override",
                        sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert "UID 65534" in r.stdout and "SESSION None" in r.stdout, (r.stdout, r.stderr)
    assert "only root may use a warm server" in r.stdout, r.stdout
    assert run(server, "echo root", timeout=30).stdout == b"root\n"


def on_a_terminal(args: list[str]) -> tuple[bytes, int]:
    """``python -m lxcbind ARGS`` on a pty of its own (as typed in a terminal): its output
    and exit status."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:   # the child: the CLI, on the pty
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "lxcbind", *args])
    out = b""
    try:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:   # EIO: the CLI is gone
                break
            if not data:
                break
            out += data
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return out, os.waitstatus_to_exitcode(status)


def test_cli_warm_on_a_terminal_gets_a_terminal(server: Server) -> None:
    """On a terminal the CLI runs the command on a pty (from the clone's own devpts), in the
    terminal's size, as a fresh container's run does."""
    command = ["--", "sh", "-c", "test -t 0 && test -t 1 && echo tty; stty size; "
                                 "ls /dev/pts/ | grep -c '^[0-9]'; exit 4"]
    warm_out, warm_code = on_a_terminal(["run", "--warm", "-v", str(server.file), *command])
    cold_out, cold_code = on_a_terminal(["run", str(server.file), *command])
    assert warm_code == cold_code == 4, (warm_out, cold_out)
    assert b"running in clone" in warm_out
    assert b"run by the warm CLI server" not in warm_out   # a terminal: the CLI's own run
    lines = [line for line in warm_out.split(b"\r\n") if not line.startswith(b"lxcbind:")]
    assert lines[:2] == cold_out.split(b"\r\n")[:2] == [b"tty", b"24 80"], (warm_out, cold_out)
    assert lines[2] == b"1"   # the pty is the only one in the clone's own devpts


def test_the_cli_warm_path_loads_no_sandbox_layer(server: Server) -> None:
    """``run --warm`` in the CLI's own process (not handed to the warm CLI server: tests/
    integration/api/test_warm_cli.py) runs through ``lxcbind.proc.warm``: none of the sandbox
    layer (rootfs, security, liblxc's start, the network) is imported when a server answers."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lxcbind", "run", "--warm",
                        "-v", str(server.file), "--", "true"], capture_output=True, timeout=120,
                       cwd=ROOT, stdin=subprocess.DEVNULL,
                       env={**os.environ, "LXCBIND_WARM_CLI": "0"})
    assert r.returncode == 0 and b"running in clone" in r.stderr, r.stderr[-2000:]
    modules = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.decode().splitlines()
               if line.startswith("import time:")]
    assert "lxcbind.proc.warm" in modules
    assert not [m for m in modules if m.startswith(("lxcbind.sandbox", "lxcbind.net"))], modules
