"""Network policies enforced end to end: real containers, real packets, real nftables.

All traffic stays between the container and network namespaces the tests create
(``lxcbind-test-<uuid>``), wired to the host by a veth pair with addresses from 198.18.0.0/15
(reserved for benchmarking, used here as fake remote hosts).  The host routes between them
and the container's routed veth, so every packet crosses the container's nft table.  Servers
are small Python programs in those namespaces, bounded in time; clients are Python programs
inside host-rootfs containers.  Nothing targets eth0, public addresses or real resolvers.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lxcbind
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]

SERVER = textwrap.dedent(r'''
    import json, socket, sys, threading, time
    spec = json.loads(sys.argv[1])
    deadline = time.time() + spec["ttl"]
    socks = []
    for proto, addr, port in spec["listen"]:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        if proto == "tcp":
            s.listen(32)
        s.settimeout(0.2)
        socks.append((proto, addr, port, s))
    def serve(proto, addr, port, s):
        while time.time() < deadline:
            try:
                if proto == "tcp":
                    c, peer = s.accept()
                    c.sendall(f"hi {addr}:{port}".encode())
                    c.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(f"hi {addr}:{port}".encode(), peer)
                print("got", proto, addr, port, peer[0], flush=True)
            except OSError:
                pass
    threads = [threading.Thread(target=serve, args=t, daemon=True) for t in socks]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()
''')

PROBE = textwrap.dedent(r'''
    import json, socket, subprocess, sys
    from concurrent.futures import ThreadPoolExecutor
    targets = json.loads(sys.argv[1])
    def probe(t):
        proto, addr, port = t
        try:
            if proto == "icmp":
                r = subprocess.run(["busybox", "ping", "-c", "1", "-W", "1", addr],
                                   capture_output=True)
                return "ok" if r.returncode == 0 else "blocked"
            if proto == "tcp":
                s = socket.create_connection((addr, port), timeout=1.5)
                data = s.recv(100)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(1.5)
                # a DNS-shaped query (id 0x1234, one question) for the resolver tests
                query = b"\x01a\x04test\x00\x00\x01\x00\x01"   # a.test IN A
                s.sendto(bytes.fromhex("123401000001000000000000") + query,
                         (addr, port))
                data = s.recvfrom(512)[0]
            s.close()
            return "ok" if data.startswith(b"hi") else "bad"
        except OSError:
            return "blocked"
    with ThreadPoolExecutor(max(1, len(targets))) as pool:
        results = list(pool.map(probe, targets))
    print(json.dumps(results))
''')


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=check)


@dataclass
class Remote:
    """A network namespace standing for remote hosts ``addr(2)``, ``addr(3)`` ... of
    198.18.<n>.0/24, routed by the host through the router ``addr(254)`` (``addr(1)`` is the
    host's side): the internet, not a network the host is directly on (open egress leaves
    those out).  ``lan(2)`` is a neighbour on the host's directly connected 198.19.<n>.0/24,
    ``private`` a host in 100.64.0.0/10 behind the router."""

    ns: str
    n: int
    host_if: str
    servers: list[subprocess.Popen] = field(default_factory=list)

    def addr(self, i: int) -> str:
        return f"198.18.{self.n}.{i}"

    def lan(self, i: int) -> str:
        return f"198.19.{self.n}.{i}"

    @property
    def private(self) -> str:
        return f"100.127.{self.n}.1"

    def serve(self, listen: list[tuple[str, str, int]], ttl: float = 40) -> subprocess.Popen:
        spec = json.dumps({"listen": listen, "ttl": ttl})
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVER,
                              spec], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read() if p.stderr else line
        return p

    def run(self, cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return sh(f"ip netns exec {self.ns} {cmd}", check=check)

    def connect(self, addr: str, port: int, timeout: float = 1.0) -> bool:
        code = (f"import socket\ntry:\n socket.create_connection(({addr!r}, {port}), "
                f"timeout={timeout}).close(); print('open')\nexcept OSError: print('closed')")
        return self.run(f"{sys.executable} -c {shlex.quote(code)}").stdout.strip() == "open"


@pytest.fixture(name="remote")
def remote_fixture() -> Iterator[Remote]:
    tag = uuid.uuid4().hex[:8]
    ns, host_if = f"lxcbind-test-{tag}", f"lbt{tag}"
    used = sh("ip -4 route show table all").stdout
    n = random.choice([i for i in range(1, 255) if f"198.18.{i}." not in used
                       and f"198.19.{i}." not in used and f"100.127.{i}." not in used])
    r = Remote(ns, n, host_if)
    try:
        sh(f"ip netns add {ns}")
        sh(f"ip link add {host_if} type veth peer name eth0 netns {ns}")
        sh(f"ip addr add 198.18.{n}.1/32 dev {host_if} && "
           f"ip addr add 198.19.{n}.1/24 dev {host_if} && ip link set {host_if} up && "
           f"ip route add 198.18.{n}.0/24 via 198.18.{n}.254 dev {host_if} onlink && "
           f"ip route add 100.127.{n}.0/24 via 198.18.{n}.254 dev {host_if} onlink")
        r.run(f"sh -c 'ip link set lo up && ip link set eth0 up && "
              f"for i in 2 3 4 254; do ip addr add 198.18.{n}.$i/32 dev eth0; done && "
              f"ip addr add 198.19.{n}.2/24 dev eth0 && ip addr add 100.127.{n}.1/32 dev lo && "
              f"ip route add default via 198.18.{n}.1 dev eth0 onlink'", check=True)
        yield r
    finally:
        for p in r.servers:
            p.kill()
            p.wait()
        sh(f"ip netns del {ns}", check=False)
        sh(f"ip link del {host_if}", check=False)


@pytest.fixture(name="nothing_left_behind", autouse=True)
def nothing_left_behind_fixture() -> Iterator[list[str]]:
    """Containers named through ``names`` must leave no table, veth or lease."""
    names: list[str] = []
    yield names
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import leases, links, network

    with Nft() as nft:
        tables = {t for _, t in nft.list_table_names("lxcbind")}
    held = leases.leases()
    for name in names:
        assert network.table_name(name) not in tables, f"table of {name} left"
        assert not links.link_exists(links.veth_name(name)), f"veth of {name} left"
        assert name not in held, f"lease of {name} left"
    if not held:  # nobody else is running: the anchor and its NAT table went too
        assert not links.link_exists(leases.ANCHOR)
        assert leases.nat_table() not in tables


def policy(command: str, names: list[str], **extra) -> dict:
    name = new_name("net-")
    names.append(name)
    doc = {"version": "0.8.0", "containment": "lxc", "containerId": name,
           "process": {"commandLine": command}}
    doc.update(extra)
    return doc


def cli(doc: dict, *args: str, env: dict | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lxcbind", "run", "--json", *args, "-"],
                          input=json.dumps(doc).encode(), capture_output=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def probe(names: list[str], network: dict, targets: list[tuple[str, str, int]],
          tmp_path: Path, version: str = "0.8.0", **extra) -> list[str]:
    """Run the probe client in a fresh container under ``network``; one result per target."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    doc = policy(f"python3 {script} {shlex.quote(json.dumps(targets))}", names,
                 network=network, filesystem={"readonlyPaths": [str(tmp_path)]}, **extra)
    doc["version"] = version
    r = cli(doc)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    return json.loads(json.loads(r.stdout)["stdout"])


def allow(*cidrs: str, ports: list | None = None) -> dict:
    rule: dict = {"to": [{"cidr": c} for c in cidrs]}
    if ports:
        rule["ports"] = ports
    return rule


# -- egress ------------------------------------------------------------------------------------

def test_allow_by_cidr_reachable_everything_else_refused(remote, tmp_path, nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 8080), ("tcp", b, 8080), ("udp", a, 9000)])
    got = probe(nothing_left_behind, {"egress": {"allow": [allow(f"{a}/32")]}},
                [("tcp", a, 8080), ("tcp", b, 8080), ("udp", a, 9000), ("icmp", b, 0)], tmp_path)
    assert got == ["ok", "blocked", "ok", "blocked"]


def test_deny_wins_over_overlapping_allow_including_everything(remote, tmp_path,
                                                               nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80), ("tcp", b, 80)])
    net = {"egress": {"allow": [allow("0.0.0.0/0")], "deny": [allow(f"{b}/32")]}}
    assert probe(nothing_left_behind, net, [("tcp", a, 80), ("tcp", b, 80)], tmp_path) == \
        ["ok", "blocked"]
    legacy = {"enforcementMode": "firewall", "defaultPolicy": "block",
              "allowedHosts": ["0.0.0.0/0"], "blockedHosts": [b]}
    assert probe(nothing_left_behind, legacy, [("tcp", a, 80), ("tcp", b, 80)], tmp_path,
                 version="0.7.0") == ["ok", "blocked"]


def test_except_holes(remote, tmp_path, nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80), ("tcp", b, 80)])
    subnet = f"198.18.{remote.n}.0/24"
    # allow a range except one host (default deny): the hole is dropped
    net = {"egress": {"allow": [{"to": [{"cidr": subnet, "except": [f"{b}/32"]}]}]}}
    assert probe(nothing_left_behind, net, [("tcp", a, 80), ("tcp", b, 80)], tmp_path) == \
        ["ok", "blocked"]
    # deny a range except one host (default allow): the hole is let through
    net = {"egress": {"default": "allow",
                      "deny": [{"to": [{"cidr": subnet, "except": [f"{a}/32"]}]}]}}
    assert probe(nothing_left_behind, net, [("tcp", a, 80), ("tcp", b, 80)], tmp_path) == \
        ["ok", "blocked"]


def test_ports_and_ranges_tcp_and_udp(remote, tmp_path, nothing_left_behind):
    a = remote.addr(2)
    remote.serve([("tcp", a, 8000), ("tcp", a, 8001), ("tcp", a, 8002), ("udp", a, 9000),
                  ("udp", a, 9001), ("tcp", a, 9000)])
    net = {"egress": {"allow": [allow(f"{a}/32", ports=[
        {"protocol": "tcp", "port": 8000, "endPort": 8001}, {"protocol": "udp", "port": 9000}])]}}
    got = probe(nothing_left_behind, net, [("tcp", a, 8000), ("tcp", a, 8001), ("tcp", a, 8002),
                                           ("udp", a, 9000), ("udp", a, 9001), ("tcp", a, 9000)],
                tmp_path)
    assert got == ["ok", "ok", "blocked", "ok", "blocked", "blocked"]


def test_icmp(remote, tmp_path, nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80)])
    net = {"egress": {"allow": [allow(f"{a}/32", ports=[{"protocol": "icmp"}])]}}
    assert probe(nothing_left_behind, net, [("icmp", a, 0), ("icmp", b, 0), ("tcp", a, 80)],
                 tmp_path) == ["ok", "blocked", "blocked"]


def test_dns_allowed_vs_denied_resolver(remote, tmp_path, nothing_left_behind):
    good, bad = remote.addr(2), remote.addr(3)
    remote.serve([("udp", good, 53), ("udp", bad, 53)])
    conf = tmp_path / "host-resolv.conf"
    conf.write_text(f"nameserver 127.0.0.53\nnameserver {good}\nnameserver {bad}\n")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    targets = [("udp", good, 53), ("udp", bad, 53)]
    net = {"egress": {"allow": [allow(f"{good}/32", ports=[{"protocol": "udp", "port": 53}])]}}
    doc = policy(f"cat /etc/resolv.conf; python3 {script} {shlex.quote(json.dumps(targets))}",
                 nothing_left_behind, network=net,
                 filesystem={"readonlyPaths": [str(tmp_path)]})
    r = cli(doc, env={"LXCBIND_RESOLV_CONF": str(conf)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["stdout"]
    resolv, results = out.rsplit("\n", 2)[0], json.loads(out.rsplit("\n", 2)[1])
    assert f"nameserver {good}" in resolv
    assert bad not in resolv and "127.0.0.53" not in resolv
    assert results == ["ok", "blocked"]
    # a policy that allows no resolver gets none
    doc = policy("grep -c nameserver /etc/resolv.conf || true", nothing_left_behind,
                 network={"egress": {"allow": [allow(f"{bad}/32", ports=[
                     {"protocol": "tcp", "port": 80}])]}})
    r = cli(doc, env={"LXCBIND_RESOLV_CONF": str(conf)})
    assert json.loads(r.stdout)["stdout"].strip() == "0"


GATEWAY_PROBE = textwrap.dedent(r'''
    import json, socket, struct, subprocess, sys
    gateway = "0.0.0.0"
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":   # the default route: via the gateway (the host)
            gateway = socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    targets = [[p, gateway if a == "GATEWAY" else a, port]
               for p, a, port in json.loads(sys.argv[2])]
    sys.exit(subprocess.run([sys.executable, sys.argv[1], json.dumps(targets)]).returncode)
''')


def test_open_egress_is_the_internet_not_the_host(remote, tmp_path, nothing_left_behind):
    """``--net``: the internet answers; a service of the host bound to 0.0.0.0 does not,
    through the gateway or the host's other addresses; nor a neighbour on a network the host is
    directly on, nor a host in a private range.  Named in an allow rule, each answers again."""
    a, lan, private = remote.addr(2), remote.lan(2), remote.private
    remote.serve([("tcp", a, 80), ("tcp", lan, 80), ("tcp", private, 80)])
    port = random.randint(20000, 40000)
    host_service = subprocess.Popen(   # the host's own service, on every address it has
        [sys.executable, "-c", SERVER, json.dumps({"listen": [["tcp", "0.0.0.0", port]],
                                                   "ttl": 60})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    remote.servers.append(host_service)
    assert host_service.stdout is not None and host_service.stdout.readline().strip() == "ready"
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "gw.py").write_text(GATEWAY_PROBE)
    targets = [("tcp", a, 80), ("tcp", "GATEWAY", port), ("tcp", remote.addr(1), port),
               ("tcp", remote.lan(1), port), ("tcp", lan, 80), ("tcp", private, 80)]

    def run(*args: str, **extra: object) -> list[str]:
        doc = policy(f"python3 {tmp_path}/gw.py {tmp_path}/probe.py "
                     f"{shlex.quote(json.dumps(targets))}", nothing_left_behind,
                     filesystem={"readonlyPaths": [str(tmp_path)]}, **extra)
        r = cli(doc, *args)
        assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
        return json.loads(json.loads(r.stdout)["stdout"])

    assert run("--net") == ["ok", "blocked", "blocked", "blocked", "blocked", "blocked"]
    assert run(network={"egress": {"allow": [allow("0.0.0.0/0")]}}) == \
        ["ok", "blocked", "blocked", "blocked", "blocked", "blocked"]
    named = {"egress": {"default": "allow",
                        "allow": [allow(f"{private}/32"), allow(f"{remote.lan(0)}/24")]}}
    assert run(network=named) == ["ok", "blocked", "blocked", "blocked", "ok", "ok"]


# -- ingress -----------------------------------------------------------------------------------

def _wait_lease(name: str, proc: subprocess.Popen, timeout: float = 30) -> str:
    from lxcbind.net import leases

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = leases.leases().get(name)
        if lease is not None:
            return lease.address
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no lease appeared")


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "workload never got ready"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def spawn(doc: dict) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--json", "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT)
    assert p.stdin is not None
    p.stdin.write(json.dumps(doc).encode())
    p.stdin.close()
    p.stdin = None
    return p


def test_ingress_unreachable_even_after_the_workload_flushes_nft(remote, tmp_path,
                                                                  nothing_left_behind):
    marks = tmp_path / "marks"
    marks.mkdir()
    server = ("import socket,time; s=socket.socket(); s.bind(('0.0.0.0',7000)); s.listen(8); "
              "time.sleep(60)")
    self_check = ("import socket; socket.create_connection(('127.0.0.1',7000),timeout=1).close(); "
                  "print('self-ok')")
    command = (f"python3 -c {shlex.quote(server)} & sleep 0.5; "
               f"python3 -c {shlex.quote(self_check)}; touch {marks}/up; "
               f"while [ ! -e {marks}/go ]; do sleep 0.05; done; "
               f"nft flush ruleset; nft list ruleset | wc -l; touch {marks}/flushed; "
               f"while [ ! -e {marks}/done ]; do sleep 0.05; done")
    doc = policy(command, nothing_left_behind, filesystem={"readwritePaths": [str(marks)]},
                 network={"egress": {"default": "allow"}})
    proc = spawn(doc)
    try:
        address = _wait_lease(doc["containerId"], proc)
        _wait_file(marks / "up", proc)
        assert not remote.connect(address, 7000)
        # the host itself is denied too (hostLoopback: deny)
        assert not _host_connect(address, 7000)
        (marks / "go").touch()
        _wait_file(marks / "flushed", proc)
        assert not remote.connect(address, 7000)
        (marks / "done").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        (marks / "done").touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    result = json.loads(out)
    assert result["exit_code"] == 0, err
    assert "self-ok" in result["stdout"]
    assert result["stdout"].split()[-1] == "0"   # the container saw (and flushed) no rules


def _host_connect(addr: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((addr, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def test_first_packet_is_already_filtered(remote, tmp_path, nothing_left_behind):
    """The table exists before the container: a datagram sent by the container's very first
    command to a denied address never arrives, one to an allowed address does."""
    a, b = remote.addr(2), remote.addr(3)
    srv = remote.serve([("udp", a, 9000), ("udp", b, 9000)], ttl=20)
    send = ("import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
            f"[s.sendto(b'x',(h,9000)) for h in ({b!r},{a!r})]")
    doc = policy(f"python3 -c {shlex.quote(send)}; sleep 0.5", nothing_left_behind,
                 network={"egress": {"allow": [allow(f"{a}/32")]}})
    r = cli(doc)
    assert r.returncode == 0, r.stderr
    srv.kill()
    out = srv.communicate()[0]
    assert f"got udp {a} 9000" in out
    assert f"got udp {b} 9000" not in out


def test_no_traffic_after_destroy(remote, nothing_left_behind):
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import links, network

    doc = policy("ip -4 -o addr show eth0", nothing_left_behind,
                 network={"egress": {"default": "allow"}})
    r = cli(doc)
    assert r.returncode == 0, r.stderr
    address = json.loads(r.stdout)["stdout"].split()[3].split("/")[0]
    name = doc["containerId"]
    with Nft() as nft:
        assert not nft.table_exists("inet", network.table_name(name))
        assert not nft.table_exists("bridge", network.table_name(name))
    assert not links.link_exists(links.veth_name(name))
    assert address not in sh("ip -4 route show table all").stdout
    assert remote.run(f"busybox ping -c1 -W1 {address}").returncode != 0


# -- proxy -------------------------------------------------------------------------------------

def test_proxy_mode_only_the_proxy(remote, tmp_path, nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 3128), ("tcp", a, 80), ("tcp", b, 3128)])
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    targets = [("tcp", a, 3128), ("tcp", a, 80), ("tcp", b, 3128)]
    doc = policy(f"echo $HTTPS_PROXY $http_proxy; python3 {script} "
                 f"{shlex.quote(json.dumps(targets))}", nothing_left_behind,
                 network={"enforcementMode": "firewall", "proxy": {"url": f"http://{a}:3128"}},
                 filesystem={"readonlyPaths": [str(tmp_path)]})
    doc["version"] = "0.7.0"
    r = cli(doc)
    assert r.returncode == 0, r.stderr
    env_line, results = json.loads(r.stdout)["stdout"].splitlines()
    assert env_line == f"http://{a}:3128 http://{a}:3128"
    assert json.loads(results) == ["ok", "blocked", "blocked"]


# -- the version matrix ------------------------------------------------------------------------

def test_matrix_07_without_enforcement_mode_is_open(remote, tmp_path, nothing_left_behind):
    """Capabilities mode, as mxc runs it: a device with open egress (even to a blocked host,
    even with defaultPolicy block) and open inbound; stderr and --json say it is not enforced."""
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80), ("tcp", b, 80)])
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    targets = [("tcp", a, 80), ("tcp", b, 80)]
    ready, go = tmp_path / "ready", tmp_path / "go"
    server = ("import socket,time; s=socket.socket(); s.bind(('0.0.0.0',7000)); s.listen(8); "
              "time.sleep(30)")
    doc = policy(f"python3 {script} {shlex.quote(json.dumps(targets))}; "
                 f"python3 -c {shlex.quote(server)} & sleep 0.5; touch {ready}; "
                 f"while [ ! -e {go} ]; do sleep 0.05; done", nothing_left_behind,
                 network={"defaultPolicy": "block", "blockedHosts": [b]},
                 filesystem={"readwritePaths": [str(tmp_path)]})
    doc["version"] = "0.7.0"
    proc = spawn(doc)
    try:
        address = _wait_lease(doc["containerId"], proc)
        _wait_file(ready, proc)
        assert remote.connect(address, 7000)   # inbound is not filtered either
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.terminate()   # its SIGTERM path cleans up
            proc.communicate(timeout=60)
    result = json.loads(out)
    assert result["exit_code"] == 0, err
    assert json.loads(result["stdout"].splitlines()[0]) == ["ok", "ok"]
    assert result["network_enforced"] is False
    assert "enforcementMode" in result["network_notice"]
    assert err.decode().count("network: not enforced") == 1


def test_matrix_07_firewall_block_allows_only_dns(remote, tmp_path, nothing_left_behind):
    a = remote.addr(2)
    remote.serve([("udp", a, 53), ("tcp", a, 53), ("tcp", a, 80)])
    got = probe(nothing_left_behind, {"enforcementMode": "firewall", "defaultPolicy": "block"},
                [("udp", a, 53), ("tcp", a, 53), ("tcp", a, 80)], tmp_path, version="0.7.0")
    assert got == ["ok", "ok", "blocked"]


def test_matrix_07_firewall_allow_with_blocked_host(remote, tmp_path, nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80), ("tcp", b, 80)])
    net = {"enforcementMode": "both", "defaultPolicy": "allow", "blockedHosts": [f"{b}/32"]}
    assert probe(nothing_left_behind, net, [("tcp", a, 80), ("tcp", b, 80)], tmp_path,
                 version="0.7.0") == ["ok", "blocked"]


def test_matrix_08_no_network_block_has_no_device(nothing_left_behind):
    r = cli(policy("ls /sys/class/net", nothing_left_behind))
    assert json.loads(r.stdout)["stdout"].split() == ["lo"]


def test_matrix_08_default_allow_plus_deny(remote, tmp_path, nothing_left_behind):
    a, b = remote.addr(2), remote.addr(3)
    remote.serve([("tcp", a, 80), ("tcp", b, 80), ("udp", b, 53)])
    net = {"egress": {"default": "allow", "deny": [allow(f"{b}/32")]}}
    assert probe(nothing_left_behind, net, [("tcp", a, 80), ("tcp", b, 80), ("udp", b, 53)],
                 tmp_path) == ["ok", "blocked", "blocked"]


def test_matrix_refusals_name_the_field(nothing_left_behind):
    r = cli(policy("true", nothing_left_behind,
                   network={"egress": {"default": "allow"}, "ingress": {"default": "allow"}}))
    assert r.returncode == 125 and "network.ingress.default" in r.stdout.decode()
    r = cli(policy("true", nothing_left_behind,
                   runtimeConfig={"networkProxy": "http://127.0.0.1:3128"}))
    assert r.returncode == 125 and "runtimeConfig.networkProxy" in r.stdout.decode()


# -- signals and gc ----------------------------------------------------------------------------

def _wait_table(name: str, proc: subprocess.Popen) -> None:
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import network

    _wait_lease(name, proc)
    with Nft() as nft:
        deadline = time.monotonic() + 30
        while not nft.table_exists("inet", network.table_name(name)):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _networked_sleeper(tmp_path: Path, names: list[str]) -> tuple[dict, subprocess.Popen]:
    """A networked run that sleeps once its table is installed and its workload runs."""
    ready = tmp_path / "ready"
    doc = policy(f"touch {ready}; sleep 60", names,
                 filesystem={"readwritePaths": [str(tmp_path)]},
                 network={"egress": {"default": "allow"}})
    proc = spawn(doc)
    _wait_table(doc["containerId"], proc)
    _wait_file(ready, proc)
    return doc, proc


def test_sigterm_during_networked_run_leaves_nothing(tmp_path, nothing_left_behind):
    doc, proc = _networked_sleeper(tmp_path, nothing_left_behind)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert json.loads(out)["error"]["code"] == "signal"
    # nothing_left_behind checks table, veth and lease; the veth list, by name:
    assert network_veths_of(doc["containerId"]) == []


def network_veths_of(name: str) -> list[str]:
    from lxcbind.net import links

    return [line for line in sh("ip -o link").stdout.splitlines()
            if links.veth_name(name) in line]


def test_sigkill_then_gc_removes_network_state(tmp_path, nothing_left_behind):
    from lxcbind.net import leases

    doc, proc = _networked_sleeper(tmp_path, nothing_left_behind)
    name = doc["containerId"]
    proc.kill()
    proc.communicate(timeout=30)
    assert name in leases.leases()
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    # This gc, or the orphan scan of any other run on the machine meanwhile, removed it:
    assert name not in leases.leases() and name not in lxcbind.list_containers(), r.stdout


def test_preserve_policy_keeps_the_table(nothing_left_behind):
    from lxcbind.lxc.nftables import Nft
    from lxcbind.net import network, ruleset

    doc = policy("true", nothing_left_behind, network={"egress": {"default": "allow"}},
                 lifecycle={"preservePolicy": True})
    r = cli(doc)
    assert r.returncode == 0, r.stderr
    table = network.table_name(doc["containerId"])
    with Nft() as nft:
        try:
            assert nft.table_exists("inet", table)
            # kept for inspection, until gc removes it
            g = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                               timeout=60, cwd=ROOT)
            assert g.returncode == 0, g.stderr
            assert not nft.table_exists("inet", table)
        finally:
            nft.apply(ruleset.teardown_script(table))
