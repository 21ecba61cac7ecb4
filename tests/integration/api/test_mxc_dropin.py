"""mxc's LXC end-to-end scenarios, run through lxcbind's CLI against real containers.

Each scenario takes the *shape* of one of the public mxc project's LXC test policies
(``tests/configs/lxc_*.json``, ``tests/examples/*lxc*.json``) and checks what mxc's e2e script
checks, with lxcbind's own words where a diagnostic is grepped.  Scenarios already covered
elsewhere are named in ``ALREADY_COVERED`` rather than repeated.  Network scenarios use the
``remote`` fixture of ``test_network``: a network namespace the test creates, with fake remote
hosts in 198.18.0.0/15; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import new_name, requires_lxc, requires_root

# the network tests' fixtures (registered under the names "remote" and "nothing_left_behind")
from tests.integration.net.test_network import (  # noqa: F401
    PROBE,
    allow,
    nothing_left_behind_fixture,
    remote_fixture,
)

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]


def doc(command: str, names: list[str], version: str | None = "0.8.0", **extra) -> dict:
    """A policy with a fresh ``i14-`` container name recorded for the leftover check."""
    name = new_name("i14-")
    names.append(name)
    d: dict = {"containment": "lxc", "containerId": name, "process": {"commandLine": command}}
    if version is not None:
        d["version"] = version
    d.update(extra)
    return d


def run(policy: dict, *args: str, entry: str = "run", env: dict | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess:
    """``python -m lxcbind run [args] -`` (or the ``lxcbind-exec`` front end) on ``policy``."""
    if entry == "run":
        argv = [sys.executable, "-m", "lxcbind", "run", *args, "-"]
    else:
        argv = [sys.executable, "-c", "from lxcbind.cli import exec_entry; exec_entry()", *args]
    return subprocess.run(argv, input=json.dumps(policy).encode(), capture_output=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def result(r: subprocess.CompletedProcess) -> dict:
    out = json.loads(r.stdout)
    assert "error" not in out, (out, r.stderr)
    return out


# mxc scenarios whose real-packet or end-to-end check lives in another file (not repeated
# here); ``test_already_covered_scenarios_exist`` keeps this map from going stale.
ALREADY_COVERED = {
    "0.7 capabilities (open egress, open inbound)":
        "net/test_network.py::test_matrix_07_without_enforcement_mode_is_open",
    "0.7 firewall and DNS exemption":
        "net/test_network.py::test_matrix_07_firewall_block_allows_only_dns",
    "0.7 firewall allow + blocked host":
        "net/test_network.py::test_matrix_07_firewall_allow_with_blocked_host",
    "0.8 egress allow": "net/test_network.py::test_allow_by_cidr_reachable_everything_else_refused",
    "0.8 egress deny rule": "net/test_network.py::test_matrix_08_default_allow_plus_deny",
    "0.8 egress ports": "net/test_network.py::test_ports_and_ranges_tcp_and_udp",
    "0.8 egress except": "net/test_network.py::test_except_holes",
    "0.8 egress DNS allowed/denied": "net/test_network.py::test_dns_allowed_vs_denied_resolver",
    "deny precedence":
        "net/test_network.py::test_deny_wins_over_overlapping_allow_including_everything",
    "0.8 no network block": "net/test_network.py::test_matrix_08_no_network_block_has_no_device",
    "inbound default deny (0.8)":
        "net/test_network.py::test_ingress_unreachable_even_after_the_workload_flushes_nft",
    "proxy by address": "net/test_network.py::test_proxy_mode_only_the_proxy",
    "preserve policy + gc": "net/test_network.py::test_preserve_policy_keeps_the_table",
    "env replace": "api/test_cli.py::test_env_has_replace_semantics_and_cwd_applies",
    "timeout through run (124)":
        "api/test_cli.py::test_timeout_from_policy_and_flag_gives_124_and_kills_children",
}


def test_already_covered_scenarios_exist():
    import ast

    for where in ALREADY_COVERED.values():
        file, func = where.split("::")
        tree = ast.parse((ROOT / "tests" / "integration" / file).read_text())
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, where


def release(proc: subprocess.Popen, go: Path) -> dict:
    """Let a workload waiting for ``go`` finish; its JSON result and stderr."""
    go.touch()
    out, err = proc.communicate(timeout=60)
    return {**json.loads(out), "stderr": err}


def stop(proc: subprocess.Popen) -> None:
    """End a spawned run that is still going through its SIGTERM path (it cleans up), so a
    failing assertion does not also leave its container and network state behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# -- loopback ----------------------------------------------------------------------------------

LOOPBACK = r'''
import socket
for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((addr, 0)); srv.listen(1)
    cli = socket.create_connection(srv.getsockname()[:2], timeout=2)
    conn, _ = srv.accept(); conn.sendall(b"pong"); print(addr, cli.recv(4).decode())
'''


@pytest.mark.parametrize("network", [None, {"egress": {"default": "allow"}}],
                         ids=["no-device", "networked"])
def test_loopback_is_up_in_every_container(network, nothing_left_behind):
    extra = {"network": network} if network else {}
    r = run(doc(f"python3 -c {shlex.quote(LOOPBACK)}", nothing_left_behind, **extra), "--json")
    assert result(r)["stdout"] == "127.0.0.1 pong\n::1 pong\n", r.stderr


def test_loopback_is_up_in_a_reused_container(nothing_left_behind):
    from tests.conftest import destroy_quietly

    keep = doc("true", nothing_left_behind, lifecycle={"destroyOnExit": False})
    try:
        assert run(keep, "--json").returncode == 0
        again = dict(keep, process={"commandLine": f"python3 -c {shlex.quote(LOOPBACK)}"},
                     lifecycle={"destroyOnExit": True})
        r = run(again, "--json")
        assert result(r)["stdout"] == "127.0.0.1 pong\n::1 pong\n", r.stderr
    finally:
        destroy_quietly(keep["containerId"])


# -- proxy by hostname, proxy reuse (mxc: lxc_network_proxy_hostname, lxc_network_proxy_reuse) ---

PIN_PROBE = ("if grep -q '#mxc-proxy-pin' /etc/hosts; then echo PIN_PRESENT_DURING_RUN; "
             "else echo PIN_ABSENT_DURING_RUN; fi")


def upper_dir(name: str) -> Path:
    """A kept container's overlay upper directory, from its config (``delta0``, or
    ``disk/delta0`` on its disk-limited layer)."""
    for line in Path(f"/var/lib/lxc/{name}/config").read_text().splitlines():
        if line.startswith("lxc.rootfs.path"):
            return Path(line.split("=", 1)[1].strip().rsplit(":", 1)[1])
    raise AssertionError(f"{name}: no lxc.rootfs.path")


def run_with_hosts(policy: dict, hosts_line: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the CLI in a private mount namespace whose /etc/hosts also maps ``hosts_line``:
    the proxy's name resolves on the "host" without touching the machine's /etc/hosts."""
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + hosts_line + "\n")
    script = (f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && "
              f"exec {shlex.quote(sys.executable)} -m lxcbind run --json -")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          input=json.dumps(policy).encode(), capture_output=True, timeout=90,
                          cwd=ROOT)


def test_proxy_by_hostname_pin_is_mxcs_and_gone_after_each_run_and_stale_pins_go(
        remote, tmp_path, nothing_left_behind):
    from tests.conftest import destroy_quietly

    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 3128), ("tcp", b, 3128)])
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    targets = json.dumps([("tcp", "proxy.i14.test", 3128), ("tcp", b, 3128)])
    proxied = doc(f"{PIN_PROBE}; echo $HTTPS_PROXY; python3 {script} {shlex.quote(targets)}",
                  nothing_left_behind, version="0.7.0-alpha",
                  lifecycle={"destroyOnExit": False},
                  filesystem={"readonlyPaths": [str(tmp_path)]},
                  network={"defaultPolicy": "block", "enforcementMode": "firewall",
                           "proxy": {"url": "http://proxy.i14.test:3128"}},
                  # The upper directory on the host's filesystem, where this test reads it: a
                  # disk-limited layer is mounted in the runner's private mount namespace only.
                  lxc={"limits": {"disk": "max"}})
    name = proxied["containerId"]
    try:
        for attempt in ("first run", "reuse"):
            r = run_with_hosts(proxied, f"{a} proxy.i14.test", tmp_path)
            out = result(r)
            pin, proxy_env, probed = out["stdout"].splitlines()
            assert pin == "PIN_PRESENT_DURING_RUN", attempt
            assert proxy_env == "http://proxy.i14.test:3128"
            assert json.loads(probed) == ["ok", "blocked"], attempt
            assert "#mxc-proxy-pin" not in (upper_dir(name) / "etc/hosts").read_text(), attempt
        # a stale pin (either marker) must not survive a run that configures no proxy
        with (upper_dir(name) / "etc/hosts").open("a") as f:
            f.write(f"{b} proxy.i14.test #mxc-proxy-pin\n{b} old.i14.test # lxcbind-proxy-pin\n")
        plain = dict(proxied, process={"commandLine": f"{PIN_PROBE}; cat /etc/hosts"},
                     network={"defaultPolicy": "allow", "enforcementMode": "firewall"})
        out = result(run(plain, "--json"))
        assert out["stdout"].startswith("PIN_ABSENT_DURING_RUN\n")
        assert "proxy-pin" not in out["stdout"]
        assert "proxy-pin" not in (upper_dir(name) / "etc/hosts").read_text()
        assert "localhost" in out["stdout"]   # the rest of the file is kept
    finally:
        destroy_quietly(name)


# -- network state that cannot fail open (preservePolicy and gc, as mxc users use them) -------

def _open_egress() -> object:
    from lxcbind.policy.parse import load_policy

    return load_policy({"version": "0.8.0", "process": {"commandLine": "true"},
                        "network": {"egress": {"default": "allow"}}}).network.effective()


def test_gc_keeps_a_table_installed_while_it_prunes(nothing_left_behind, monkeypatch):
    """A run that takes its lease and installs its table while gc lists the tables must keep
    its table: gc reads the leases, lists and deletes under the network lock."""
    import threading

    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import network

    name = new_name("i14-")
    nothing_left_behind.append(name)
    net = network.ContainerNetwork(name, _open_egress())
    real_list = Nft.list_table_names
    runs: list[threading.Thread] = []

    def listing_while_a_run_starts(self, *args, **kwargs):
        if not runs:   # the run starts inside gc's window: lease, then table
            runs.append(threading.Thread(target=net.prepare))
            runs[0].start()
            runs[0].join(timeout=3)   # returns at once without the lock; blocks with it
        return real_list(self, *args, **kwargs)

    monkeypatch.setattr(Nft, "list_table_names", listing_while_a_run_starts)
    try:
        network.prune_tables()
        monkeypatch.setattr(Nft, "list_table_names", real_list)
        runs[0].join(timeout=60)
        assert net.lease is not None and net.table_installed
        with Nft() as nft:
            assert nft.table_exists("inet", network.table_name(name)), \
                "gc deleted the table of a run that holds its lease"
    finally:
        if runs:
            runs[0].join(timeout=60)
        net.teardown()


def test_gc_of_another_state_dir_never_touches_this_installations_tables(
        tmp_path, nothing_left_behind):
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import network, ruleset

    name = new_name("i14-")
    nothing_left_behind.append(name)
    live = network.ContainerNetwork(name, _open_egress())
    other = {**os.environ, "LXCBIND_STATE_DIR": str(tmp_path / "other")}
    theirs = subprocess.run(
        [sys.executable, "-c", "from lxcbind.net import network; print(network.table_name('x'))"],
        capture_output=True, text=True, env=other, cwd=ROOT, check=True).stdout.strip()
    assert theirs != network.table_name("x")
    try:
        live.prepare()
        with Nft() as nft:
            nft.apply(f"add table inet {theirs}\n")   # a table the other installation kept
        g = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                           timeout=120, env=other, cwd=ROOT)
        assert g.returncode == 0, g.stderr
        with Nft() as nft:
            assert nft.table_exists("inet", live.table), "another installation's gc took it"
            assert not nft.table_exists("inet", theirs), "gc skipped its own leftover"
    finally:
        live.teardown()
        with Nft() as nft:
            nft.apply(ruleset.teardown_script(theirs))


def test_two_state_dirs_run_networked_containers_side_by_side(remote, tmp_path,
                                                             nothing_left_behind):
    """A second installation (another LXCBIND_STATE_DIR) has its own anchor, pool and NAT
    table: its runs neither delete this installation's anchor (whose leases it cannot see)
    nor its live table, and this installation's container keeps its network throughout."""
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import leases, links, network
    from tests.integration.net.test_network import _wait_file, _wait_lease, spawn

    a = remote.addr(2)
    remote.serve([("tcp", a, 80)], ttl=60)
    step, go = tmp_path / "step", tmp_path / "go"
    reach = (f"import socket; socket.create_connection(({a!r},80),timeout=2).close(); "
             "print('reached')")
    ours = doc(f"python3 -c {shlex.quote(reach)}; touch {step}; "
               f"while [ ! -e {go} ]; do sleep 0.05; done; python3 -c {shlex.quote(reach)}",
               nothing_left_behind, network={"egress": {"default": "allow"}},
               filesystem={"readwritePaths": [str(tmp_path)]})
    other_dir = tmp_path / "other-state"
    other = {"LXCBIND_STATE_DIR": str(other_dir)}
    proc = spawn(ours)
    try:
        _wait_lease(ours["containerId"], proc)
        _wait_file(step, proc)
        for _ in range(2):   # the other's first run creates its anchor, its last deletes it
            theirs = doc(f"python3 -c {shlex.quote(reach)}", [],
                         network={"egress": {"default": "allow"}})
            r = run(theirs, "--json", env=other)
            assert result(r)["stdout"] == "reached\n", r.stderr
        assert links.link_exists(leases.ANCHOR)
        with Nft() as nft:
            assert nft.table_exists("inet", network.table_name(ours["containerId"]))
        res = release(proc, go)
    finally:
        go.touch()
        stop(proc)
    assert res["exit_code"] == 0 and res["stdout"] == "reached\nreached\n", res["stderr"]


def test_preserved_table_does_not_match_the_address_the_next_container_gets(
        remote, nothing_left_behind):
    """preservePolicy keeps the table for inspection, without the lease's address: a later
    container given that address is filtered by its own policy only."""
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import network, ruleset

    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80), ("tcp", b, 80)])
    kept = doc("ip -4 -o addr show eth0", nothing_left_behind,
               network={"egress": {"allow": [allow(f"{a}/32")]}},
               lifecycle={"preservePolicy": True})
    table = network.table_name(kept["containerId"])
    try:
        out = result(run(kept, "--json"))
        address = out["stdout"].split()[3].split("/")[0]
        with Nft() as nft:
            assert nft.table_exists("inet", table)
            listing = nft.run(f"list table inet {table}")
        assert "198.18." in listing            # the policy is still there to inspect
        assert address not in listing          # but nothing in it matches the old address
        # the next container, given an address the kept table once named, reaches b
        connect = ("import socket\nfor h in ({a!r}, {b!r}):\n try:\n  socket.create_connection("
                   "(h, 80), timeout=1.5).close(); print('ok')\n except OSError: print('blocked')")
        code = connect.format(a=a, b=b)
        nxt = doc(f"ip -4 -o addr show eth0; python3 -c {shlex.quote(code)}",
                  nothing_left_behind, network={"egress": {"default": "allow"}})
        lines = result(run(nxt, "--json"))["stdout"].splitlines()
        assert lines[1:] == ["ok", "ok"]
        if lines[0].split()[3].split("/")[0] != address:
            pytest.skip("another run took the address meanwhile; the listing check above "
                        "still holds")
    finally:
        with Nft() as nft:
            nft.apply(ruleset.teardown_script(table))


# -- mxc's scenarios through lxcbind-exec, checked the way mxc's e2e scripts check them --------

def lxc_exec(policy: dict | None, tmp_path: Path, *flags: str, timeout: float = 90,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """``lxcbind-exec [flags] <policy file>``, as mxc's scripts call ``lxc-exec``."""
    argv = [sys.executable, "-c", "from lxcbind.cli import exec_entry; exec_entry()", *flags]
    if policy is not None:
        path = tmp_path / f"{policy.get('containerId', 'policy')}.json"
        path.write_text(json.dumps(policy))
        argv.append(str(path))
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def fs_tree(tmp_path: Path) -> dict[str, Path]:
    """The host directories mxc's filesystem scripts prepare, under ``tmp_path``."""
    t = {k: tmp_path / k for k in ("ro", "rw", "objdata", "msp", "mask")}
    for d in t.values():
        d.mkdir()
    (t["ro"] / "test.txt").write_text("READONLY_CONTENT\n")
    (t["objdata"] / "secret.txt").write_text("OBJECT_SECRET\n")
    t["objlink"] = tmp_path / "objlink"
    t["objlink"].symlink_to(t["objdata"])
    (t["msp"] / "secret_child").mkdir()
    (t["msp"] / "secret_child" / "keep.txt").write_text("CHILD_KEPT\n")
    (t["msp"] / "sibling.txt").write_text("PARENT_SECRET\n")
    (t["mask"] / "visible.txt").write_text("VISIBLE_SECRET\n")
    (t["mask"] / "secret_file.txt").write_text("FILE_SECRET\n")
    (t["mask"] / "secret_dir").mkdir()
    (t["mask"] / "secret_dir" / "inner.txt").write_text("DIR_SECRET\n")
    return t


def _hello(t):
    return {"version": "0.6.0-alpha",
            "process": {"commandLine": "echo 'Hello from LXC' && uname -s"}}


def _filesystem(t):
    return {"version": "0.6.0-alpha",
            "process": {"commandLine": f"cat {t['ro']}/test.txt && echo 'write test' > "
                                       f"{t['rw']}/output.txt && (echo x > {t['ro']}/new) "
                                       "2>/dev/null || echo RO_REFUSED"},
            "filesystem": {"readonlyPaths": [str(t["ro"])], "readwritePaths": [str(t["rw"])]}}


def _object_alias(t):
    return {"version": "0.8.0-alpha",
            "process": {"commandLine": f"if cat {t['objdata']}/secret.txt 2>/dev/null; then "
                                       "echo OBJECT_LEAK; else echo OBJECT_MASKED_OK; fi"},
            "filesystem": {"readwritePaths": [str(t["objdata"])],
                           "deniedPaths": [str(t["objlink"])]}}


def _most_specific(t):
    d = t["msp"]
    return {"version": "0.8.0-alpha",
            "process": {"commandLine":
                        f"D={d}; if grep -q CHILD_KEPT $D/secret_child/keep.txt 2>/dev/null; "
                        "then echo CHILD_OK; else echo CHILD_MISSING; fi; "
                        "if echo w > $D/secret_child/written.txt 2>/dev/null; then "
                        "echo CHILD_WRITE_OK; else echo CHILD_WRITE_FAIL; fi; "
                        "if grep -q PARENT_SECRET $D/sibling.txt 2>/dev/null; then "
                        "echo PARENT_LEAK; else echo PARENT_MASKED_OK; fi"},
            "filesystem": {"readwritePaths": [f"{d}/secret_child"], "deniedPaths": [str(d)]}}


def _denied_masking(t):
    b = t["mask"]
    return {"version": "0.8.0-alpha",
            "process": {"commandLine":
                        f"B={b}; if grep -q VISIBLE_SECRET $B/visible.txt 2>/dev/null; then "
                        "echo VISIBLE_OK; else echo VISIBLE_MISSING; fi; "
                        "if grep -q FILE_SECRET $B/secret_file.txt 2>/dev/null; then "
                        "echo FILE_LEAK; else echo FILE_MASKED_OK; fi; "
                        "if ls $B/secret_dir 2>/dev/null | grep -q .; then echo DIR_LEAK; "
                        "else echo DIR_MASKED_OK; fi"},
            "filesystem": {"readwritePaths": [str(b)],
                           "deniedPaths": [f"{b}/secret_file.txt", f"{b}/secret_dir"]}}


def _env_cwd(t):
    return {"version": "0.6.0-alpha",
            "process": {"commandLine":
                        "set -e; [ \"$(pwd)\" = /etc ] || exit 11; "
                        "[ \"${MXC_TEST_FOO:-}\" = 'bar baz' ] || exit 12; "
                        "[ \"${MXC_TEST_EQ:-}\" = 'a=b=c' ] || exit 13; "
                        "[ -z \"${I14_HOST_ONLY:-}\" ] || exit 14; "   # replace semantics
                        "echo \"OK cwd=$(pwd) MXC_TEST_FOO=$MXC_TEST_FOO "
                        "MXC_TEST_EQ=$MXC_TEST_EQ\"",
                        "cwd": "/etc", "env": ["MXC_TEST_FOO=bar baz", "MXC_TEST_EQ=a=b=c"]}}


def _v07_capabilities(t):
    return {"version": "0.7.0-alpha", "process": {"commandLine": "echo MXC_WORKLOAD_RAN"},
            "network": {"defaultPolicy": "block", "blockedHosts": ["example.com"]}}


def _v07_firewall(t):
    return {"version": "0.7.0-alpha", "process": {"commandLine": "echo inbound-default-deny-ok"},
            "network": {"defaultPolicy": "allow", "enforcementMode": "firewall"}}


def _own_status(t):
    return {"version": "0.8.0", "process": {"commandLine": "echo partial; exit 7"}}


def _permissive_07(t):
    return {"version": "0.7.0-alpha", "process": {"commandLine": "echo this-should-never-run"},
            "network": {"defaultPolicy": "allow", "enforcementMode": "firewall",
                        "allowLocalNetwork": True}}


def _permissive_08(t):
    return {"version": "0.8.0-alpha", "process": {"commandLine": "echo this-should-never-run"},
            "network": {"ingress": {"default": "allow", "hostLoopback": "deny"}}}


def _credentials(t):
    return {"version": "0.7.0-alpha", "process": {"commandLine": "echo THIS_MUST_NEVER_RUN"},
            "network": {"defaultPolicy": "block", "enforcementMode": "firewall",
                        "proxy": {"url": "http://alice:hunter2@10.0.3.1:3128"}}}


def _invalid_cidr(t):
    return {"version": "0.8.0", "process": {"commandLine": "echo THIS_MUST_NEVER_RUN"},
            "network": {"egress": {"allow": [{"to": [{"cidr": "198.18.0.0/33"}]}]}}}


# (id, policy, exit code, in stdout, not in stdout or stderr, in stderr)
SCENARIOS = [
    ("hello", _hello, 0, ["Hello from LXC", "Linux"], [], ["not enforced"]),
    ("filesystem-ro-rw", _filesystem, 0, ["READONLY_CONTENT", "RO_REFUSED"], [], []),
    ("object-alias", _object_alias, 0, ["OBJECT_MASKED_OK"], ["OBJECT_LEAK", "OBJECT_SECRET"], []),
    ("most-specific", _most_specific, 0, ["CHILD_OK", "CHILD_WRITE_OK", "PARENT_MASKED_OK"],
     ["CHILD_MISSING", "CHILD_WRITE_FAIL", "PARENT_LEAK"], []),
    ("denied-masking", _denied_masking, 0, ["VISIBLE_OK", "FILE_MASKED_OK", "DIR_MASKED_OK"],
     ["LEAK", "VISIBLE_MISSING"], []),
    ("env-cwd-replace", _env_cwd, 0, ["OK cwd=/etc MXC_TEST_FOO=bar baz MXC_TEST_EQ=a=b=c"], [],
     []),
    ("v07-capabilities", _v07_capabilities, 0, ["MXC_WORKLOAD_RAN"], [],
     ["requests no firewall", "network.enforcementMode"]),
    ("v07-firewall-inbound-deny", _v07_firewall, 0, ["inbound-default-deny-ok"],
     ["not enforced"], []),
    ("own-exit-status", _own_status, 7, ["partial"], ["backend_error"], []),
    ("permissive-07-refused", _permissive_07, 255, [], ["this-should-never-run"],
     ["network.allowLocalNetwork", "backend_error"]),
    ("permissive-08-refused", _permissive_08, 255, [], ["this-should-never-run"],
     ["network.ingress.default", "backend_error"]),
    ("proxy-credentials-refused", _credentials, 1, [],
     ["THIS_MUST_NEVER_RUN", "hunter2", "alice"], ["credentials", "10.0.3.1:3128"]),
    ("invalid-cidr-refused", _invalid_cidr, 1, [], ["THIS_MUST_NEVER_RUN"],
     ["network.egress.allow[0].to[0].cidr"]),
]


@pytest.mark.parametrize("sid,make,code,out_has,never,err_has", SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_mxc_scenario_through_lxcbind_exec(sid, make, code, out_has, never, err_has, tmp_path,
                                           nothing_left_behind):
    t = fs_tree(tmp_path)
    policy = {**doc("", nothing_left_behind, version=None), **make(t)}
    r = lxc_exec(policy, tmp_path, env={"I14_HOST_ONLY": "leak"})
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == code, (out, err)
    for text in out_has:
        assert text in out, (text, out, err)
    for text in never:
        assert text not in out and text not in err, (text, out, err)
    for text in err_has:
        assert text in err, (text, err)
    if code == 255:   # mxc's envelope: the last stderr line, one JSON object
        envelope = json.loads(err.strip().splitlines()[-1])
        assert envelope["error"]["code"] == "backend_error" and envelope["error"]["message"]
    if sid == "filesystem-ro-rw":
        assert (t["rw"] / "output.txt").read_text() == "write test\n"
        assert not (t["ro"] / "new").exists()
    if sid == "most-specific":
        assert (t["msp"] / "secret_child" / "written.txt").read_text() == "w\n"


def test_timeout_is_a_runner_error_saying_timed_out(tmp_path, nothing_left_behind):
    import time

    policy = doc("echo 'Starting long task'; sleep 120; echo 'Should not reach here'",
                 nothing_left_behind, version="0.6.0-alpha")
    policy["process"]["timeout"] = 2000
    started = time.monotonic()
    r = lxc_exec(policy, tmp_path)
    assert time.monotonic() - started < 60
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 255 and "timed out" in err
    assert "Starting long task" in out and "Should not reach here" not in out
    assert "timed out" in json.loads(err.strip().splitlines()[-1])["error"]["message"]


def test_preserve_policy_then_delete_by_name(tmp_path, nothing_left_behind):
    """mxc's preserve-policy shape keeps the container and its rules; ``--delete
    --containername`` removes the container, and with it the table lxcbind kept."""
    from lxcbind import list_containers
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import network
    from tests.conftest import destroy_quietly

    policy = doc("sh -c \"echo MXC_PRESERVE_RAN\"", nothing_left_behind, version="0.7.0-alpha",
                 lifecycle={"destroyOnExit": False, "preservePolicy": True},
                 network={"defaultPolicy": "block", "enforcementMode": "firewall",
                          "allowedHosts": [], "blockedHosts": []})
    name = policy["containerId"]
    try:
        r = lxc_exec(policy, tmp_path)
        assert r.returncode == 0 and b"MXC_PRESERVE_RAN" in r.stdout, r.stderr
        assert name in list_containers()
        with Nft() as nft:
            assert nft.table_exists("inet", network.table_name(name))
        d = lxc_exec(None, tmp_path, "--delete", "--containername", name)
        assert d.returncode == 0, d.stderr
        assert name not in list_containers()
        with Nft() as nft:
            assert not nft.table_exists("inet", network.table_name(name))
    finally:
        destroy_quietly(name)
        with Nft() as nft:
            from lxcbind.net import ruleset
            nft.apply(ruleset.teardown_script(network.table_name(name)))


def test_command_line_contract(tmp_path, nothing_left_behind):
    hello = doc("echo from-$SOURCE", nothing_left_behind, version="0.8.0")
    b64 = __import__("base64").b64encode(json.dumps(
        {**hello, "process": {"commandLine": "echo from-base64"}}).encode()).decode()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**hello, "process": {"commandLine": "echo from-config"}}))
    # precedence: --config-base64 > --config > positional
    r = lxc_exec(hello, tmp_path, "--config-base64", b64, "--config", str(cfg))
    assert (r.returncode, r.stdout) == (0, b"from-base64\n"), r.stderr
    r = lxc_exec(hello, tmp_path, "--config", str(cfg), "--experimental",
                 "--allow-testing-features")
    assert (r.returncode, r.stdout) == (0, b"from-config\n"), r.stderr
    # --dry-run validates and runs nothing
    r = lxc_exec(hello, tmp_path, "--dry-run")
    assert r.returncode == 0 and r.stdout == b"Dry run completed. Result: validation passed\n"
    # --log-file appends the progress lines; --debug shows them on stderr, never on stdout
    log = tmp_path / "log.txt"
    r = lxc_exec(hello, tmp_path, "--debug", "--log-file", str(log))
    assert r.returncode == 0 and r.stdout == b"from-\n"
    assert b"starting" in r.stderr and "starting" in log.read_text()
    # usage and policy errors: 1, one line, no traceback, no envelope
    for args, policy, needle in [((), None, "no config"), (("--bogus",), hello, "--bogus"),
                                 (("--delete",), None, "--containername"),
                                 (("/nonexistent/p.json",), None, "not found"),
                                 ((), {**hello, "extra": 1}, "extra")]:
        r = lxc_exec(policy, tmp_path, *args)
        err = r.stderr.decode()
        assert r.returncode == 1, (args, err)
        assert needle in err and "Traceback" not in err and "backend_error" not in err
    # a sandbox failure: 255 and the envelope
    broken = {**hello, "lxc": {"rootfs": f"dir:{tmp_path}/missing"}}
    r = lxc_exec(broken, tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 255 and "Traceback" not in err
    assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == "backend_error"


def test_lxcbind_exec_is_a_console_script():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lxcbind-exec"] == "lxcbind._entry:exec_main"
    from lxcbind._entry import exec_main  # noqa: F401  (the target exists)


def test_v07_firewall_inbound_default_deny_with_real_packets(remote, tmp_path,
                                                             nothing_left_behind):
    """mxc's lxc_inbound_default_deny shape (0.7, firewall, defaultPolicy allow): egress
    open, a server in the container unreachable from another host."""
    from tests.integration.net.test_network import _wait_file, _wait_lease, spawn

    a = remote.addr(2)
    remote.serve([("tcp", a, 80)])
    ready, go = tmp_path / "ready", tmp_path / "go"
    server = ("import socket,time; s=socket.socket(); s.bind(('0.0.0.0',7000)); s.listen(8); "
              "time.sleep(30)")
    out_check = (f"import socket; socket.create_connection(({a!r},80),timeout=2).close(); "
                 "print('egress-ok')")
    policy = doc(f"python3 -c {shlex.quote(out_check)}; python3 -c {shlex.quote(server)} & "
                 f"sleep 0.5; touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done",
                 nothing_left_behind, version="0.7.0-alpha",
                 network={"defaultPolicy": "allow", "enforcementMode": "firewall"},
                 filesystem={"readwritePaths": [str(tmp_path)]})
    proc = spawn(policy)
    try:
        address = _wait_lease(policy["containerId"], proc)
        _wait_file(ready, proc)
        assert not remote.connect(address, 7000)
        res = release(proc, go)
    finally:
        go.touch()
        stop(proc)
    assert res["exit_code"] == 0 and "egress-ok" in res["stdout"], res["stderr"]
    assert res["network_enforced"] is True


def test_dry_run_plan_says_capabilities_mode_is_runnable_and_not_enforced(tmp_path):
    policy = {"version": "0.7.0", "process": {"commandLine": "true"},
              "network": {"defaultPolicy": "block", "allowedHosts": ["198.18.0.1"]}}
    r = run(policy, "--dry-run", "--json")
    plan = json.loads(r.stdout)["plan"]
    assert r.returncode == 0 and plan["runnable"] is True
    assert plan["networkEnforced"] is False and "enforcementMode" in plan["networkNotice"]
    policy["network"]["enforcementMode"] = "firewall"
    plan = json.loads(run(policy, "--dry-run", "--json").stdout)["plan"]
    assert plan["networkEnforced"] is True and plan["networkNotice"] is None


# -- attack: a kept container's root plants symlinks for the host's /etc writes --------------

@pytest.mark.parametrize("plant", ["tmp-symlink", "etc-symlink", "fifo-hosts"])
def test_reused_container_cannot_make_the_host_write_or_block_through_its_etc(
        plant, tmp_path, nothing_left_behind):
    """A kept container's root leaves traps in its /etc for the next run's writes of
    /etc/resolv.conf and /etc/hosts (pin removal): a symlink at the temporary name, /etc
    itself replaced by a symlink to a host directory, a FIFO as /etc/hosts.  The host files
    the symlinks name stay unchanged (content and mode); the next run neither writes through
    them nor blocks."""
    import stat as st

    from tests.conftest import destroy_quietly

    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victims = {n: victim_dir / n for n in ("hosts", "resolv.conf", "resolv.conf.lxcbind-tmp",
                                           "hosts.lxcbind-tmp")}
    for n, p in victims.items():
        p.write_text(f"198.18.0.9 x.test #mxc-proxy-pin\nHOST-{n}\n")
        p.chmod(0o600)
    before = {n: (p.read_text(), st.S_IMODE(p.stat().st_mode)) for n, p in victims.items()}
    traps = {
        "tmp-symlink": (f"echo '198.18.0.9 y.test #mxc-proxy-pin' >> /etc/hosts && "
                        f"ln -s {victims['resolv.conf']} /etc/resolv.conf.lxcbind-tmp && "
                        f"ln -s {victims['hosts']} /etc/hosts.lxcbind-tmp"),
        # busybox root: its /etc has no bind mounts, so root can replace it
        "etc-symlink": f"rm -rf /etc && ln -s {victim_dir} /etc",
        "fifo-hosts": "rm -f /etc/hosts && mkfifo /etc/hosts",
    }
    keep = doc(traps[plant], nothing_left_behind, lifecycle={"destroyOnExit": False})
    if plant == "etc-symlink":
        keep["lxc"] = {"rootfs": "busybox"}
    name = keep["containerId"]
    try:
        r = run(keep, "--json")
        assert r.returncode == 0, r.stderr + r.stdout
        upper_etc = upper_dir(name) / "etc"
        if plant == "etc-symlink":   # the trap is really in place
            assert upper_etc.is_symlink()
        again = dict(keep, process={"commandLine": "echo reused"},
                     lifecycle={"destroyOnExit": True})
        r = run(again, "--json", timeout=60)    # never blocks on the FIFO
        out = json.loads(r.stdout)
        # either it runs, or it refuses naming /etc; never a traceback
        assert out.get("stdout") == "reused\n" or "/etc" in out["error"]["message"], out
        after = {n: (p.read_text(), st.S_IMODE(p.stat().st_mode)) for n, p in victims.items()}
        assert after == before
        assert sorted(os.listdir(victim_dir)) == sorted(victims)
    finally:
        destroy_quietly(name)


def test_sigterm_to_lxcbind_exec_cleans_up_and_exits_143(tmp_path, nothing_left_behind):
    import signal

    from lxcbind import list_containers
    from tests.integration.net.test_network import _wait_file

    ready = tmp_path / "ready"
    policy = doc(f"touch {ready}; sleep 60", nothing_left_behind,
                 network={"egress": {"default": "allow"}},
                 filesystem={"readwritePaths": [str(tmp_path)]})
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy))
    proc = subprocess.Popen([sys.executable, "-c",
                             "from lxcbind.cli import exec_entry; exec_entry()", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        _wait_file(ready, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err
    assert policy["containerId"] not in list_containers()
