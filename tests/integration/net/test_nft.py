"""lxcbind.lxc.nftables + lxcbind.net.ruleset against the kernel, in throwaway network
namespaces (root).

Every packet stays inside namespaces this module creates (``lxcbind-test-<uuid8>-{c,r,x}``,
removed in teardown even when a test fails); addresses come from 198.18.0.0/15 and the ULA
fd00:198:18::/48, never from the machine's own interfaces.  The topology is the one
lxcbind's network layer builds (``lxcbind.net.network``: a routed veth, the gateway on a
portless anchor bridge, host routes to the container's addresses, proxy ARP/NDP for the
gateway), plus IPv6 on the veth so the IPv6 rules are exercised too:

    c (container)                  r (host)                                x (remote)
    eth0 198.18.0.2/32  ── veth ── vh0 (no address; routes to c's /32, /128)
         fd00:198:18:1::2/128      anchor lxbr0 198.18.0.1, fd00:198:18:1::1 (no ports)
                                   rx0 198.18.1.1 / fd00:198:18:2::1 ──  xr0 198.18.1.2
                                                                              fd00:198:18:2::2
                                                                         lo: 198.19.{0,1,2}.1
                                                                             fd00:198:18:1{0,1}::1

The ruleset is applied in ``r`` through ``Nft(netns="/run/netns/<r>")``: the context lives on a
worker thread that alone entered ``r`` (network namespaces are per thread).  Probes and servers
are plain sockets created the same way, on a short-lived thread that entered the namespace
(a socket stays in the namespace it was created in), so the test process itself never moves.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

T = TypeVar("T")

BLOCKED_WAIT = 0.6   # seconds a dropped probe waits; veth round trips take microseconds

C4, C6 = "198.18.0.2", "fd00:198:18:1::2"
G4, G6 = "198.18.0.1", "fd00:198:18:1::1"
X4 = ["198.19.0.1", "198.19.1.1", "198.19.2.1"]
X6 = ["2001:2:0:10::1", "2001:2:0:11::1"]
TCP_PORTS = (80, 443, 1500, 2001, 5000)
UDP_PORTS = (53, 1500, 5353)
VETH = "vh0"
TABLES_MADE: set[str] = set()   # every table name this module applied (in its namespaces)


# --------------------------------------------------------------------------- netns plumbing

def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that entered network namespace ``ns``; return its result."""
    from lxcbind._nft import ffi, lib  # setns() is declared with libnftables' module

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if lib.setns(fd, lib.CLONE_NEWNET) != 0:
                    raise OSError(ffi.errno, os.strerror(ffi.errno), ns)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def ns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    return in_netns(ns, lambda: socket.socket(family, kind, proto))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


class Servers:
    """TCP listeners (accept and close) on every address, and UDP echoers on each of
    ``udp_addrs`` (a wildcard UDP socket would answer from the outgoing interface's address,
    which is not the conntrack reply of the probe), served by one thread."""

    def __init__(self, ns: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = (),
                 udp_addrs: tuple[str, ...] = ()) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        binds = [(socket.SOCK_STREAM, "::", port) for port in tcp]
        binds += [(socket.SOCK_DGRAM, addr, port) for port in udp for addr in udp_addrs]
        for kind, addr, port in binds:
            s = ns_socket(ns, family_of(addr), kind)
            if addr == "::":
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            if kind == socket.SOCK_STREAM:
                s.listen(64)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, kind)
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    if key.data == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        conn.close()
                    else:
                        data, peer = s.recvfrom(2048)
                        s.sendto(data, peer)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            self.sel.unregister(s)
            s.close()
        self.sel.close()


def tcp_ok(ns: str, addr: str, port: int, source: str | None = None) -> bool:
    """True when a TCP connection from ``ns`` to addr:port completes (False: dropped)."""
    s = ns_socket(ns, family_of(addr), socket.SOCK_STREAM)
    try:
        s.settimeout(BLOCKED_WAIT)
        if source:
            s.bind((source, 0))
        try:
            s.connect((addr, port))
        except TimeoutError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED):
                return False
            raise
        return True
    finally:
        s.close()


def udp_ok(ns: str, addr: str, port: int) -> bool:
    s = ns_socket(ns, family_of(addr), socket.SOCK_DGRAM)
    try:
        s.settimeout(BLOCKED_WAIT)
        payload = uuid.uuid4().bytes
        s.sendto(payload, (addr, port))
        try:
            return s.recv(64) == payload
        except (TimeoutError, ConnectionRefusedError):
            return False
    finally:
        s.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping_ok(ns: str, addr: str) -> bool:
    """One ICMP(v6) echo over a raw socket; True when the matching reply arrives."""
    v6 = ":" in addr
    s = ns_socket(ns, socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    try:
        ident = os.getpid() & 0xFFFF
        seq = int.from_bytes(os.urandom(2), "big")
        kind, reply = (128, 129) if v6 else (8, 0)
        body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"lxcbind"
        if not v6:   # the kernel fills in the ICMPv6 checksum, not the ICMPv4 one
            body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
        s.sendto(body, (addr, 0))
        deadline = time.monotonic() + BLOCKED_WAIT
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                return False
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            if (ipaddress.ip_address(peer[0].split("%")[0]) == ipaddress.ip_address(addr)
                    and icmp[0] == reply and struct.unpack("!HH", icmp[4:8]) == (ident, seq)):
                return True
        return False
    finally:
        s.close()


class Topology:
    """Three namespaces; ``wire()`` adds links, addresses, routes and servers."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.c, self.r, self.x = (f"lxcbind-test-{tag}-{k}" for k in "crx")
        self.servers: list[Servers] = []
        for ns in (self.c, self.r, self.x):
            ip("netns", "add", ns)
            # addresses are usable at once (no duplicate address detection delay)
            for key in ("all", "default"):
                self.sysctl(ns, f"net.ipv6.conf.{key}.accept_dad", "0")
            ip("-n", ns, "link", "set", "lo", "up")
        from lxcbind.lxc.nftables import Nft

        self.nft = Nft(f"/run/netns/{self.r}")

    @staticmethod
    def sysctl(ns: str, key: str, value: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"],
                       check=True, capture_output=True)

    def wire(self) -> None:
        c, r, x = self.c, self.r, self.x
        self.sysctl(r, "net.ipv4.ip_forward", "1")
        self.sysctl(r, "net.ipv6.conf.all.forwarding", "1")
        ip("-n", r, "link", "add", "lxbr0", "type", "bridge")
        ip("-n", r, "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", c)
        ip("-n", r, "link", "add", "rx0", "type", "veth", "peer", "name", "xr0", "netns", x)
        for ns, dev, addrs in ((r, "lxbr0", [f"{G4}/24", f"{G6}/64"]),
                               (c, "eth0", [f"{C4}/32", f"{C6}/128"]),
                               (r, "rx0", ["198.18.1.1/24", "fd00:198:18:2::1/64"]),
                               (x, "xr0", ["198.18.1.2/24", "fd00:198:18:2::2/64"]),
                               (x, "lo", [f"{a}/32" for a in X4] + [f"{a}/128" for a in X6])):
            for a in addrs:
                ip("-n", ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", r, "link", "set", VETH, "up")
        self.route_to_container(C4)
        self.route_to_container(C6)
        self.sysctl(r, f"net.ipv4.conf.{VETH}.proxy_arp", "1")   # answers for the gateway
        self.sysctl(r, f"net.ipv6.conf.{VETH}.proxy_ndp", "1")
        for family in ("ipv4", "ipv6"):   # at once: a proxied answer waits up to 0.8 s
            self.sysctl(r, f"net.{family}.neigh.{VETH}.proxy_delay", "0")   # (> BLOCKED_WAIT)
        ip("-n", r, "-6", "neigh", "add", "proxy", G6, "dev", VETH)
        for gw in (G4, G6):
            ip("-n", c, "route", "add", gw, "dev", "eth0")
            ip("-n", c, "route", "add", "default", "via", gw)
        ip("-n", x, "route", "add", "default", "via", "198.18.1.1")
        ip("-n", x, "-6", "route", "add", "default", "via", "fd00:198:18:2::1")
        ip("-n", r, "route", "add", "198.19.0.0/16", "via", "198.18.1.2")
        ip("-n", r, "-6", "route", "add", "2001:2:0:10::/60", "via", "fd00:198:18:2::2")
        self.servers.append(Servers(x, TCP_PORTS, UDP_PORTS, tuple(X4 + X6)))
        self.servers.append(Servers(r, (8080,), (53,), (G4, G6)))
        self.servers.append(Servers(c, (7000,)))

    def host_view(self, resolvers: tuple[str, ...] = ()) -> Any:
        """What lxcbind reads of its host, read in ``r`` (the host of this topology)."""
        from lxcbind.net.hostnets import HostView, connected_v4, connected_v6

        def read(path: str) -> str:
            return subprocess.run(["ip", "netns", "exec", self.r, "cat", path],
                                  capture_output=True, text=True, check=True).stdout

        return HostView(tuple(connected_v4(read("/proc/net/fib_trie")) +
                              connected_v6(read("/proc/net/if_inet6"))), resolvers)

    def route_to_container(self, address: str) -> None:
        """The host's route to an address of the container, through its veth (liblxc's
        router mode adds it for the container's configured addresses)."""
        ip("-n", self.r, "route", "add", address, "dev", VETH)

    def apply(self, network: dict[str, Any] | None, version: str = "0.8.0",
              host: Any = None) -> str:
        """Compile and apply; ``host``: a ``HostView`` (default: none, static ranges only)."""
        from lxcbind.net.hostnets import HostView
        from lxcbind.net.ruleset import compile_ruleset, resolve_destinations
        from lxcbind.policy.parse import load_policy

        doc: dict[str, Any] = {"version": version, "process": {"commandLine": "true"}}
        if network is not None:
            doc["network"] = network
        eff = load_policy(doc).network.effective()
        text = compile_ruleset(
            table=self.table, veth=VETH, container_v4=C4, container_v6=C6, gateway_v4=G4,
            gateway_v6=G6, eff=eff, resolved=resolve_destinations(eff, _no_dns),
            host=host or HostView())
        self.nft.apply(text)
        return text

    @property
    def table(self) -> str:
        from lxcbind.net.ruleset import table_name

        TABLES_MADE.add(table_name(self.c))
        return table_name(self.c)

    def close(self) -> None:
        try:
            for s in self.servers:
                s.close()
            self.nft.close()
        finally:
            for ns in (self.c, self.r, self.x):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(ns in left for ns in (self.c, self.r, self.x)), left


def _no_dns(*args: Any) -> list[Any]:
    raise AssertionError(f"the tests must not resolve names: {args[0]!r}")


@pytest.fixture
def bare() -> Iterator[Topology]:
    """Namespaces only (no links yet)."""
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture
def topo(bare: Topology) -> Topology:
    bare.wire()
    return bare


# --------------------------------------------------------------------------- the binding

def test_nft_errors_carry_libnftables_text(bare: Topology) -> None:
    from lxcbind.lxc.nftables import NftError

    with pytest.raises(NftError, match="No such file or directory|does not exist"):
        bare.nft.run("list table inet lxcbind_doesnotexist")
    with pytest.raises(NftError, match="syntax error"):
        bare.nft.apply("table inet x { chain y { oops } }")
    assert bare.nft.list_table_names("lxcbind_") == []   # a failed transaction left nothing


def test_tables_helpers_and_idempotent_reapply(topo: Topology) -> None:
    t = topo.table
    text = topo.apply(None)
    topo.nft.apply(text)   # re-creating is a replacement, not an error
    assert topo.nft.list_table_names("lxcbind_") == [("inet", t)]
    assert topo.nft.table_exists("inet", t)
    topo.nft.delete_table("inet", t)
    topo.nft.delete_table("inet", t)   # idempotent
    assert not topo.nft.table_exists("inet", t)
    with pytest.raises(ValueError):
        topo.nft.delete_table("inet", "x; flush ruleset")


# --------------------------------------------------------------------------- egress

def test_baseline_without_rules_everything_passes(topo: Topology) -> None:
    assert tcp_ok(topo.c, X4[0], 80) and tcp_ok(topo.c, X6[0], 80)
    assert udp_ok(topo.c, X4[1], 5353) and ping_ok(topo.c, X4[2]) and ping_ok(topo.c, X6[1])
    assert tcp_ok(topo.c, G4, 8080) and tcp_ok(topo.x, C4, 7000)


def test_allow_by_cidr_and_everything_else_dropped(topo: Topology) -> None:
    topo.apply({"egress": {"allow": [{"to": [{"cidr": "198.19.0.0/24"}]}]}})
    assert tcp_ok(topo.c, X4[0], 80) and udp_ok(topo.c, X4[0], 5353) and ping_ok(topo.c, X4[0])
    assert not tcp_ok(topo.c, X4[1], 80)
    assert not udp_ok(topo.c, X4[1], 53)
    assert not tcp_ok(topo.c, X6[0], 80)          # no IPv6 allow rule


def test_deny_wins_over_catch_all_allow(topo: Topology) -> None:
    topo.apply({"egress": {"allow": [{"to": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}],
                           "deny": [{"to": [{"cidr": "198.19.1.0/24"},
                                            {"cidr": "2001:2:0:11::/64"}]}]}})
    assert tcp_ok(topo.c, X4[0], 80) and tcp_ok(topo.c, X6[0], 80)
    assert not tcp_ok(topo.c, X4[1], 80) and not ping_ok(topo.c, X4[1])
    assert not tcp_ok(topo.c, X6[1], 80)


def test_except_holes(topo: Topology) -> None:
    topo.apply({"egress": {"allow": [{"to": [{"cidr": "198.19.0.0/16",
                                              "except": ["198.19.1.0/24"]}]}]}})
    assert tcp_ok(topo.c, X4[0], 80) and tcp_ok(topo.c, X4[2], 80)
    assert not tcp_ok(topo.c, X4[1], 80)
    topo.apply({"egress": {"default": "allow", "deny": [
        {"to": [{"cidr": "198.19.0.0/16", "except": ["198.19.1.0/24"]}]}]}})
    assert tcp_ok(topo.c, X4[1], 80)
    assert not tcp_ok(topo.c, X4[0], 80) and not tcp_ok(topo.c, X4[2], 80)


def test_ports_and_ranges(topo: Topology) -> None:
    topo.apply({"egress": {"allow": [{"to": [{"cidr": "198.19.0.0/16"},
                                             {"cidr": "2001:2:0:10::/60"}], "ports": [
        {"protocol": "tcp", "port": 1000, "endPort": 2000},
        {"protocol": "udp", "port": 53},
        {"protocol": "any", "port": 5353}]}]}})
    for dst in (X4[0], X6[0]):
        assert tcp_ok(topo.c, dst, 1500)
        assert not tcp_ok(topo.c, dst, 2001) and not tcp_ok(topo.c, dst, 80)
        assert udp_ok(topo.c, dst, 53) and udp_ok(topo.c, dst, 5353)
        assert not udp_ok(topo.c, dst, 1500)
        assert not ping_ok(topo.c, dst)


def test_icmp_only(topo: Topology) -> None:
    topo.apply({"egress": {"allow": [{"to": [{"cidr": "198.19.0.1"},
                                             {"cidr": "2001:2:0:10::1"}],
                                      "ports": [{"protocol": "icmp"}]}]}})
    assert ping_ok(topo.c, X4[0]) and ping_ok(topo.c, X6[0])
    assert not ping_ok(topo.c, X4[1]) and not ping_ok(topo.c, X6[1])
    assert not tcp_ok(topo.c, X4[0], 80) and not udp_ok(topo.c, X6[0], 53)


def test_legacy_dns_exemption_and_hosts(topo: Topology) -> None:
    topo.apply({"enforcementMode": "firewall", "defaultPolicy": "block",
                "allowedHosts": ["198.19.2.1"]}, version="0.7.0")
    assert udp_ok(topo.c, X4[0], 53)   # port 53 anywhere on the internet
    assert not udp_ok(topo.c, G4, 53)  # the host itself is not "anywhere"...
    assert not tcp_ok(topo.c, X4[0], 80) and not udp_ok(topo.c, X4[0], 5353)
    assert tcp_ok(topo.c, X4[2], 80)
    topo.apply({"enforcementMode": "firewall", "defaultPolicy": "block"}, version="0.7.0",
               host=topo.host_view(resolvers=(G4,)))
    assert udp_ok(topo.c, G4, 53) and udp_ok(topo.c, X4[0], 53)   # ...unless it is the resolver
    assert not tcp_ok(topo.c, G4, 8080)


def test_proxy_mode_only_the_endpoint(topo: Topology) -> None:
    topo.apply({"enforcementMode": "firewall", "proxy": {"url": "http://198.19.0.1:5000"}},
               version="0.7.0")
    assert tcp_ok(topo.c, X4[0], 5000)
    assert not tcp_ok(topo.c, X4[0], 80) and not udp_ok(topo.c, X4[0], 53)
    assert not tcp_ok(topo.c, X6[0], 5000) and not ping_ok(topo.c, X4[0])


def test_traffic_to_the_gateway_itself_is_governed(topo: Topology) -> None:
    topo.apply(None)   # 0.8 without a network block: deny all
    assert not tcp_ok(topo.c, G4, 8080) and not tcp_ok(topo.c, G6, 8080)
    assert not udp_ok(topo.c, G4, 53) and not ping_ok(topo.c, G4)
    assert not tcp_ok(topo.c, "198.18.1.1", 8080)   # the host's other address too
    topo.apply({"egress": {"allow": [{"to": [{"cidr": f"{G4}/32"}, {"cidr": f"{G6}/128"}],
                                      "ports": [{"protocol": "tcp", "port": 8080}]}]}})
    assert tcp_ok(topo.c, G4, 8080) and tcp_ok(topo.c, G6, 8080)
    assert not udp_ok(topo.c, G4, 53) and not tcp_ok(topo.c, X4[0], 80)


def test_open_egress_is_the_internet_not_the_host(topo: Topology) -> None:
    """``--net`` and 0.0.0.0/0 + ::/0: the routed "internet" (198.19.x, 2001:2::) answers; the
    host's wildcard listener (8080 on ``::``, so 0.0.0.0 too) does not, through the gateway or
    the host's other addresses; nor a neighbour on the host's connected network 198.18.1.0/24,
    nor hosts in private ranges (100.127.0.1 in 100.64/10, ULA fd00:198:18:12::1) behind x."""
    c = topo.c
    ip("-n", topo.x, "addr", "add", "100.127.0.1/32", "dev", "lo")
    ip("-n", topo.x, "addr", "add", "fd00:198:18:12::1/128", "dev", "lo", "nodad")
    ip("-n", topo.r, "route", "add", "100.127.0.0/24", "via", "198.18.1.2")
    ip("-n", topo.r, "-6", "route", "add", "fd00:198:18:12::/64", "via", "fd00:198:18:2::2")
    left_out = [(G4, 8080), (G6, 8080), ("198.18.1.1", 8080), ("fd00:198:18:2::1", 8080),
                ("198.18.1.2", 80), ("fd00:198:18:2::2", 80), ("100.127.0.1", 80),
                ("fd00:198:18:12::1", 80)]
    for addr, port in left_out:   # without rules every one answers: the test can fail
        assert tcp_ok(c, addr, port), addr
    host = topo.host_view()
    assert ipaddress.ip_network("198.18.1.0/24") in host.local
    for network in ({"egress": {"default": "allow"}},
                    {"egress": {"allow": [{"to": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}]}},
                    {"enforcementMode": "firewall", "defaultPolicy": "allow"}):
        topo.apply(network, version="0.7.0" if "enforcementMode" in network else "0.8.0",
                   host=host)
        assert tcp_ok(c, X4[0], 80) and tcp_ok(c, X6[0], 80) and udp_ok(c, X4[1], 5353)
        assert ping_ok(c, X4[2]) and ping_ok(c, X6[1])
        for addr, port in left_out:
            assert not tcp_ok(c, addr, port), (network, addr)
        assert not ping_ok(c, G4) and not udp_ok(c, G4, 53)
    # named, each is reachable again (and only what is named)
    topo.apply({"egress": {"default": "allow", "allow": [{"to": [
        {"cidr": "100.127.0.1/32"}, {"cidr": f"{G4}/32"}, {"cidr": "198.18.1.2/32"},
        {"cidr": "fd00:198:18:12::/64"}]}]}}, host=host)
    for addr, port in ((G4, 8080), ("100.127.0.1", 80), ("198.18.1.2", 80),
                       ("fd00:198:18:12::1", 80), (X4[0], 80)):
        assert tcp_ok(c, addr, port), addr
    assert not tcp_ok(c, "198.18.1.1", 8080) and not tcp_ok(c, G6, 8080)
    # the host's resolver keeps answering DNS, and only DNS
    topo.apply({"egress": {"default": "allow"}}, host=topo.host_view(resolvers=(G4,)))
    assert udp_ok(c, G4, 53) and not tcp_ok(c, G4, 8080)


def test_spoofed_sources_are_dropped(topo: Topology) -> None:
    topo.apply({"egress": {"default": "allow"}})
    for spoofed in ("198.18.0.99", "fd00:198:18:1::99"):
        ip("-n", topo.c, "addr", "add", spoofed, "dev", "eth0", *(["nodad"] if ":" in spoofed
                                                                    else []))
        topo.route_to_container(spoofed)   # replies would come back: only the rules refuse
    # the kernel may now pick either address as the default source: name it
    assert tcp_ok(topo.c, X4[0], 80, source=C4) and tcp_ok(topo.c, X6[0], 80, source=C6)
    assert not tcp_ok(topo.c, X4[0], 80, source="198.18.0.99")
    assert not tcp_ok(topo.c, X6[0], 80, source="fd00:198:18:1::99")
    assert not tcp_ok(topo.c, G4, 8080, source="198.18.0.99")


# --------------------------------------------------------------------------- ingress

def test_inbound_connections_refused(topo: Topology) -> None:
    topo.apply({"egress": {"default": "allow", "allow": [{"to": [{"cidr": f"{G4}/32"}]}]}})
    assert not tcp_ok(topo.x, C4, 7000) and not tcp_ok(topo.x, C6, 7000)   # remote
    assert not tcp_ok(topo.r, C4, 7000) and not tcp_ok(topo.r, C6, 7000)   # the host itself
    assert tcp_ok(topo.c, X4[0], 80) and tcp_ok(topo.c, G4, 8080)          # replies still flow


def test_inbound_allowed_when_asked(topo: Topology) -> None:
    topo.apply({"ingress": {"default": "allow"}})
    assert tcp_ok(topo.x, C4, 7000) and tcp_ok(topo.x, C6, 7000)
    assert not tcp_ok(topo.r, C4, 7000)
    topo.apply({"ingress": {"default": "deny", "hostLoopback": "allow"}})
    assert tcp_ok(topo.r, C4, 7000) and tcp_ok(topo.r, C6, 7000)
    assert not tcp_ok(topo.x, C4, 7000)


# --------------------------------------------------------------------------- lifecycle

def test_first_packet_is_filtered_rules_before_interfaces(bare: Topology) -> None:
    bare.apply({"egress": {"allow": [{"to": [{"cidr": "198.19.0.0/24"}],
                                      "ports": [{"protocol": "tcp", "port": 80}]}]}})
    bare.wire()   # the veth, anchor and addresses appear only now
    assert not udp_ok(bare.c, X4[0], 53)            # the container's very first packet
    assert not tcp_ok(bare.c, X4[1], 80) and not tcp_ok(bare.c, G4, 8080)
    assert tcp_ok(bare.c, X4[0], 80)
    assert not tcp_ok(bare.x, C4, 7000)


def test_after_delete_nothing_is_left(topo: Topology) -> None:
    from lxcbind.net.ruleset import teardown_script

    topo.apply(None)
    assert not tcp_ok(topo.c, X4[0], 80) and not tcp_ok(topo.x, C4, 7000)
    topo.nft.apply(teardown_script(topo.table))
    topo.nft.apply(teardown_script(topo.table))   # idempotent
    assert topo.nft.list_table_names() == []
    assert tcp_ok(topo.c, X4[0], 80) and tcp_ok(topo.x, C4, 7000) and tcp_ok(topo.c, G4, 8080)
    out = subprocess.run(["ip", "netns", "exec", topo.r, "nft", "list", "ruleset"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_many_cidrs_apply_and_match(topo: Topology) -> None:
    allow = [{"to": [{"cidr": f"10.{i // 200}.{i % 200}.{7 * (i % 30)}/32"}]}
             for i in range(1000)] + [{"to": [{"cidr": "198.19.2.1"}]}]
    start = time.perf_counter()
    topo.apply({"egress": {"allow": allow}})
    assert time.perf_counter() - start < 5
    assert tcp_ok(topo.c, X4[2], 80) and not tcp_ok(topo.c, X4[0], 80)


def test_root_namespace_untouched() -> None:
    """No table this module made reached the root namespace (other lxcbind runs on the
    machine may have their own there: only ours are checked)."""
    from lxcbind.lxc.nftables import Nft

    assert TABLES_MADE
    with Nft() as nft:
        assert not [t for t in nft.list_table_names("lxcbind_") if t[1] in TABLES_MADE]
