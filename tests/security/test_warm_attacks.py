"""Attacks from inside a warm server's clone (``lxcbind warm``, ``run(warm=True)``), as root
in it, with real syscalls: against the next client's clone (its processes, files, sockets,
IPC; forging its result) and against the server (its socket, its process).

The server is the real command line in a child process (``tests/warmserver``); the clients
here use ``run(warm=True)``'s warm path without its fallback (``WarmClient``), so every
command surely ran in a clone the server handed over."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _NAMES_MADE, new_name, requires_clones, requires_lxc, requires_root
from tests.warmserver import ROOT, Server, WarmClient

from .sandbox_probes import Held, hold_script, host_pids, namespaces, parse, script, template_of
from .test_clone_attacks import check_out_of_reach

pytestmark = [requires_clones, requires_root, requires_lxc]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    policy = {"version": "0.8.0", "containerId": new_name("warm-sec-"),
              "process": {"commandLine": "true"}}
    _NAMES_MADE.add(f"{policy['containerId']}-warm")   # the template's, for the leftover check
    s = Server(policy, tmp_path, "--ready", "2")
    try:
        yield s
    finally:
        s.close()


REACH_SERVER = """
    import socket
    path, pid = %(path)r, %(pid)d
    print("EXISTS=" + str(os.path.exists(path)))
    for folder in ("/run/lxcbind", "/run/lxcbind/warm"):
        try:
            print(f"LIST_{os.path.basename(folder)}=" + ",".join(os.listdir(folder)))
        except OSError as exc:
            print(f"LIST_{os.path.basename(folder)}=" + errno.errorcode[exc.errno])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
        print("CONNECT=OK")
    except OSError as exc:
        print("CONNECT=" + errno.errorcode[exc.errno])
    with open("/proc/net/unix") as f:
        print("UNIX_NAMED=" + str("lxcbind" in f.read()))
    try:
        os.kill(pid, 0)   # the server's host pid: another process, if anything, in here
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            print("SERVER_PID=" + str(b"warm" in f.read()))
    except OSError as exc:
        print("SERVER_PID=" + errno.errorcode[exc.errno])
    found = []
    for folder, dirs, files in os.walk("/"):
        if folder == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "usr")]
        found += [os.path.join(folder, n) for n in files if n.endswith(".sock") and
                  %(key)r in n]
    print("FOUND=" + ",".join(found))
"""


def test_the_servers_socket_and_process_are_out_of_reach(server: Server) -> None:
    """Inside a warm clone, as root: the server's socket is not there (not by its path, not
    by a walk of the filesystem, not in the clone's /proc/net/unix) and its process is not
    either; so no clone can ask for clones, or see another client's."""
    client = WarmClient(server.policy)
    key = os.path.basename(server.path)[:-5]
    r = client.run(script(REACH_SERVER % {"path": server.path, "pid": server.proc.pid,
                                          "key": key}), timeout=120)
    out = parse(r)
    assert out["EXISTS"] == "False" and out["CONNECT"] == "ENOENT", out
    assert out["LIST_warm"] == "ENOENT" and out["FOUND"] == "", out
    assert out["UNIX_NAMED"] == "False", out
    assert out["SERVER_PID"] in ("ESRCH", "False"), out
    # the host's view: the command ran in a clone of the server's template
    assert os.path.exists(server.path)


def test_a_warm_clone_cannot_reach_the_next_clients_clone(server: Server) -> None:
    """Two clients' clones alive at once: the attacks of test_clone_attacks'
    test_another_sandbox_is_out_of_reach (processes, files, sockets, SysV IPC, hostname,
    network, keyrings, namespaces), from one client's clone against the other's."""
    check_out_of_reach(WarmClient(server.policy))


@pytest.mark.parametrize("mode", ["ptrace", "mem", "SIGKILL"])
def test_a_leftover_cannot_forge_the_next_clients_result(server: Server, mode: str) -> None:
    """test_command_integrity's forger, left by one client's command, against the next
    client's (a clone of the same template, made ahead by the same server)."""
    from .test_command_integrity import _check_script, _plant

    token = secrets.token_hex(8)
    client = WarmClient(server.policy)
    _plant(client.run, token, mode)
    r = client.run(["/bin/sh", "-c", _check_script(token)], timeout=60)
    assert (r.returncode, r.stdout) == (3, f"REAL-RESULT-{token}\n".encode()), r
    assert not host_pids(token.encode())


def test_clones_of_one_server_share_its_template_and_nothing_else(server: Server) -> None:
    """What the README says of a warm server's clones: the same template (one cloner, one
    host id range), and each its own namespaces."""
    client = WarmClient(server.policy)
    first = Held(client, hold_script(""))
    try:
        second = Held(client, hold_script(""))
        try:
            a, b = first.pid, second.pid
            assert template_of(a) == template_of(b) is not None
            na, nb = namespaces(a), namespaces(b)
            assert all(na[n] != nb[n] for n in na), (na, nb)
            with open(f"/proc/{a}/uid_map") as f, open(f"/proc/{b}/uid_map") as g:
                host_a, host_b = f.read().split()[1], g.read().split()[1]
            assert host_a == host_b != "0"
        finally:
            second.release()
    finally:
        first.release()


def test_a_warm_clones_privileges_are_a_fresh_containers(server: Server) -> None:
    """The command of a warm run has what the same command in a fresh container of the policy
    has: capability sets, no_new_privs, seccomp mode, uid/gid maps' width, and it is refused
    the same namespace and mount operations."""
    import lxcbind

    probe = ("grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "
             "/proc/self/status; awk '{print $1, $3}' /proc/self/uid_map /proc/self/gid_map; "
             "id -u; unshare -U true 2>/dev/null; echo unshare=$?; "
             "mount -t tmpfs x /mnt 2>/dev/null; echo mount=$?")
    warm = WarmClient(server.policy).run(probe, timeout=60)
    cold = lxcbind.run(probe, policy=server.policy, timeout=120)
    assert warm.returncode == cold.returncode == 0, (warm, cold)
    assert warm.stdout == cold.stdout, (warm.stdout, cold.stdout)
    assert b"NoNewPrivs:\t1" in warm.stdout and b"unshare=1" in warm.stdout


# --------------------------------------------------------------------------- the CLI server

def _served(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    """``python -m lxcbind ARGS`` as a client of the warm CLI server."""
    return subprocess.run([sys.executable, "-m", "lxcbind", *args], capture_output=True,
                          timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL, **kw)  # type: ignore


def test_the_cli_servers_socket_and_process_are_out_of_reach(server: Server) -> None:
    """A workload run by a forked CLI (``run --warm`` handed to the CLI server): the CLI
    server's socket and process are as far out of its reach as the warm server's."""
    pid, path = server.cli_server()
    key = os.path.basename(path)[:-5]
    code = script(REACH_SERVER % {"path": path, "pid": pid, "key": key})
    r = _served(["run", "--warm", "-v", str(server.file), "--", *code])
    assert b"run by the warm CLI server" in r.stderr, r.stderr
    out = dict(line.split("=", 1) for line in r.stdout.decode().splitlines() if "=" in line)
    assert r.returncode == 0, r
    assert out["EXISTS"] == "False" and out["CONNECT"] == "ENOENT", out
    assert out["LIST_warm"] == "ENOENT" and out["FOUND"] == "", out
    assert out["UNIX_NAMED"] == "False", out
    assert out["SERVER_PID"] in ("ESRCH", "False"), out
    assert os.path.exists(path)


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:"):
                found.add(link)
    return found


def test_a_forked_cli_holds_nothing_of_the_server_or_other_runs(server: Server) -> None:
    """Two runs handed over at once: neither forked CLI holds the CLI server's listening
    socket or the other client's connection (only its own stdio, and its clone's channel)."""
    pid, _ = server.cli_server()
    marks = [str(5 * 10**8 + os.getpid() + i) for i in range(2)]
    clients = [subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--warm", "-v",
                                 str(server.file), "--", "sh", "-c", f"sleep {m}"], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for m in marks]
    try:
        forked = []
        for c in clients:
            assert c.stderr is not None
            line = next(line for line in c.stderr if b"run by the warm CLI server" in line)
            forked.append(int(line.rsplit(b" ", 1)[1].strip(b")\n")))
        for m in marks:
            deadline = time.monotonic() + 60
            while not host_pids(f"sleep\0{m}".encode()):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        servers = _socket_inodes(pid)   # the listener, and one connection per client
        assert len(servers) >= 3, servers
        for f in forked:
            assert not _socket_inodes(f) & servers, f
    finally:
        for c in clients:
            c.kill()
            c.communicate(timeout=60)


def test_a_non_root_process_that_reaches_the_cli_server_runs_nothing(server: Server,
                                                                     tmp_path: Path) -> None:
    """A process of another uid that can reach the socket (given CAP_DAC_OVERRIDE: the
    directory is root's, 0700) sends a well-formed request to run a command as root: the
    CLI server closes the connection unanswered (SO_PEERCRED), nothing runs, and it goes on
    serving root's clients."""
    _, path = server.cli_server()
    marker = tmp_path / "ran"
    os.chmod(tmp_path, 0o777)
    request = ["lxcbind", "run", "--warm", str(server.file), "--", "touch", str(marker)]
    code = textwrap.dedent(f"""
        import marshal, os, socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect({path!r})
        argv = {request!r}
        env = dict(os.environ, LXCBIND_STATE_DIR="/tmp/x")
        cwd = os.open(".", os.O_PATH)
        try:
            s.sendmsg([marshal.dumps((1, argv, env, 0o22))],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                        b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd)))])
            print("REPLY=" + repr(s.recv(64)))
        except (BrokenPipeError, ConnectionResetError):   # closed, the request unread
            print("REPLY=b''")
    """)
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                        "--inh-caps", "+dac_override", "--ambient-caps", "+dac_override",
                        sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert "REPLY=b''" in r.stdout, (r.stdout, r.stderr)   # closed, unanswered
    assert not marker.exists()
    r = _served(["run", "--warm", "-v", str(server.file), "--", "echo", "root"])
    assert (r.returncode, r.stdout) == (0, b"root\n") and b"run by the warm" in r.stderr


@pytest.mark.parametrize("garbage", ["not-marshal", "three-fds", "old-version", "no-fds"])
def test_a_malformed_request_is_dropped_and_the_cli_server_goes_on(server: Server,
                                                                    garbage: str) -> None:
    import marshal
    import socket

    _, path = server.cli_server()
    argv = ["lxcbind", "run", "--warm", str(server.file), "--", "true"]
    good = marshal.dumps((1, argv, dict(os.environ), 0o22))
    data, fds = {"not-marshal": (b"\xff" * 64, (0, 1, 2, 0)),
                 "three-fds": (good, (0, 1, 2)),
                 "old-version": (marshal.dumps((0, argv, dict(os.environ), 0o22)), (0, 1, 2, 0)),
                 "no-fds": (good, ())}[garbage]
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                   b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))] if fds else []
        s.sendmsg([data], rights)
        s.settimeout(30)
        assert s.recv(64) == b""   # closed, nothing forked
    r = _served(["run", "--warm", "-v", str(server.file), "--", "echo", "still"])
    assert (r.returncode, r.stdout) == (0, b"still\n") and b"run by the warm" in r.stderr
