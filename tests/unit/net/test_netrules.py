"""Network rules as text: table names, mxc's version × enforcement matrix, rule order, sets,
except, ports, icmp, proxy mode and the fail-closed resolution cases.  No root, no netlink, no
DNS (a fake resolver answers every lookup)."""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from lxcbind.errors import SandboxError
from lxcbind.net.ruleset import (
    Resolved,
    compile_ruleset,
    resolve_destinations,
    table_name,
    teardown_script,
)
from lxcbind.policy.network import EffectiveNetwork
from lxcbind.policy.parse import load_policy

VETH = "vethlxb0"
C4, C6 = "198.18.0.2", "fd00:198:18:1::2"


def eff_of(network: dict[str, Any] | None, version: str | None = "0.8.0",
           **extra: Any) -> EffectiveNetwork:
    doc: dict[str, Any] = {"process": {"commandLine": "true"}, **extra}
    if version is not None:
        doc["version"] = version
    if network is not None:
        doc["network"] = network
    return load_policy(doc).network.effective()


class FakeResolver:
    """getaddrinfo stand-in: a fixed table; unknown names raise like a failed lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: Any, family: int = 0, type: int = 0,
                 *rest: Any) -> list[Any]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for addr in self.table[host]:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, 0, 0, 0) if fam == socket.AF_INET6 else (addr, 0)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out


NO_DNS = FakeResolver({})


def script(eff: EffectiveNetwork, resolver: FakeResolver = NO_DNS, *, v4: str | None = C4,
           v6: str | None = C6) -> str:
    return compile_ruleset(table=table_name("t"), veth=VETH, container_v4=v4, container_v6=v6,
                           gateway_v4="198.18.0.1", gateway_v6="fd00:198:18:1::1", eff=eff,
                           resolved=resolve_destinations(eff, resolver))


def chain(text: str, name: str) -> list[str]:
    """The rule lines of one chain (comments stripped), as written in the script."""
    m = re.search(rf"^    chain {name} {{\n(.*?)^    }}", text, re.S | re.M)
    assert m, f"no chain {name}"
    lines = [ln.split("#")[0].strip() for ln in m.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("type ")]


def set_elements(text: str, name: str) -> list[str]:
    m = re.search(rf"set {name} {{.*?elements = {{(.*?)}}", text, re.S)
    assert m, f"no set {name}"
    return [e.strip() for e in m.group(1).replace("\n", " ").split(",") if e.strip()]


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("name,expected", [
    # the hash part equals mxc's chain-name KAT for "webserver" (MXC-webserv-dildp42ed3lx5j3l)
    ("webserver", "lxcbind_dildp42ed3lx5j3l"),
    ("webserver1", "lxcbind_4peo2j7fenfgjxd7"),
    ("webserver2", "lxcbind_alcpkfpoz3h3exom"),
    ("a", "lxcbind_zklycewkdo64v6wc"),
    ("lxcbind-test-0123abcd", "lxcbind_oi7iqysmzfbzanbc"),
    ("x" * 64, "lxcbind_ptqqbfy7mttqahup"),
])
def test_table_name_kats(name: str, expected: str) -> None:
    assert table_name(name) == expected
    assert table_name(name) == table_name(name)


def test_table_names_do_not_collide_for_similar_names() -> None:
    base = "lxcbind-session-worker-0123456789abcdef-0123456789abcdef"
    names = [base + str(i) for i in range(2000)] + [base[:-i] for i in range(1, 40)]
    names += ["a", "A", "a.", "a-", "a_", "web", "webserver", "webserver "]
    tables = {table_name(n) for n in names}
    assert len(tables) == len(set(names))
    assert all(re.fullmatch(r"lxcbind_[a-z2-7]{16}", t) for t in tables)


def test_teardown_script_is_idempotent_dance() -> None:
    t = table_name("c")
    # the bridge table: what earlier versions installed beside the inet one
    assert teardown_script(t) == (f"add table inet {t}\ndelete table inet {t}\n"
                                  f"add table bridge {t}\ndelete table bridge {t}\n")
    with pytest.raises(ValueError):
        teardown_script("x; flush ruleset")


# --------------------------------------------------------------------------- structure

def test_script_recreates_its_table_atomically() -> None:
    text = script(eff_of(None))
    t = table_name("t")
    head = [ln for ln in text.splitlines() if ln and not ln.startswith("#")][:3]
    assert head == [f"add table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
    assert "table bridge" not in text   # routed veths are no bridge ports
    for hook in ("forward", "input", "output"):
        assert f"type filter hook {hook} priority filter; policy accept;" in text


def test_container_traffic_is_classified_by_interface_and_address() -> None:
    text = script(eff_of(None))
    assert chain(text, "forward") == [
        f'iifname "{VETH}" jump from_container', f"ip saddr {C4} jump from_container",
        f"ip6 saddr {C6} jump from_container", f'oifname "{VETH}" jump ingress',
        f"ip daddr {C4} jump ingress", f"ip6 daddr {C6} jump ingress"]
    assert chain(text, "input")[0] == f'iifname "{VETH}" jump to_host'
    assert chain(text, "output")[0] == f'oifname "{VETH}" jump from_host'
    assert chain(text, "to_host")[-3:] == [f"ip saddr != {C4} drop", f"ip6 saddr != {C6} drop",
                                           "goto host_egress"]


def test_anti_spoofing() -> None:
    text = script(eff_of(None))
    assert chain(text, "from_container") == [f"ip saddr != {C4} drop",
                                             f"ip6 saddr != {C6} drop", "goto egress"]


def test_missing_family_is_dropped_entirely() -> None:
    text = script(eff_of({"egress": {"default": "allow"}}), v6=None)
    assert "meta nfproto ipv6 drop" in chain(text, "from_container")
    assert not any("ip6 saddr fd00" in ln for ln in chain(text, "forward"))


def test_bad_arguments_are_refused() -> None:
    eff = eff_of(None)
    kw: dict[str, Any] = dict(table=table_name("t"), veth=VETH, container_v4=C4,
                              container_v6=C6, gateway_v4=None, gateway_v6=None, eff=eff,
                              resolved=Resolved())
    for bad in ({"veth": 'x" accept'}, {"veth": "a" * 16}, {"container_v4": C6},
                {"container_v6": C4}, {"table": "bad name"}, {"container_v4": "1.2.3.400"}):
        with pytest.raises(ValueError):
            compile_ruleset(**{**kw, **bad})


# --------------------------------------------------------------------------- version matrix

def test_matrix_legacy_no_enforcement_mode_is_open() -> None:
    eff = eff_of({"defaultPolicy": "block"}, version="0.7.0")
    text = script(eff)
    # open, but to the internet only (replies to the open inbound pass)
    assert chain(text, "egress") == ["ct state established,related accept",
                                     "ip daddr @accept0_v4_all accept",
                                     "ip6 daddr @accept0_v6_all accept", "drop"]
    assert chain(text, "ingress")[-1] == "accept"
    assert chain(text, "from_host")[-1] == "accept"
    # the source checks stay even then
    assert f"ip saddr != {C4} drop" in chain(text, "from_container")


def test_matrix_legacy_firewall_block_without_hosts_leaves_dns() -> None:
    text = script(eff_of({"enforcementMode": "firewall", "defaultPolicy": "block"},
                         version="0.7.0"))
    dns = "meta l4proto { tcp, udp } th dport 53 accept"   # anywhere on the internet
    assert chain(text, "egress") == ["ct state established,related accept",
                                     f"ip daddr @accept0_v4_tcpudp_53 {dns}",
                                     f"ip6 daddr @accept0_v6_tcpudp_53 {dns}", "drop"]
    assert chain(text, "ingress") == ["ct state established,related accept", "drop"]


def test_matrix_legacy_firewall_allow_with_blocked_host() -> None:
    text = script(eff_of({"enforcementMode": "firewall", "defaultPolicy": "allow",
                          "blockedHosts": ["203.0.113.0/24"]}, version="0.7.0"))
    egress = chain(text, "egress")
    assert egress[-3:] == ["ip daddr @accept2_v4_all accept", "ip6 daddr @accept2_v6_all accept",
                           "drop"]
    assert egress.index("ip daddr @drop1_v4_all drop") < len(egress) - 1   # after DNS (run 0)
    assert set_elements(text, "drop1_v4_all") == ["203.0.113.0/24"]
    assert chain(text, "ingress")[-1] == "drop"


def test_matrix_08_without_network_block_denies_all_without_dns() -> None:
    text = script(eff_of(None))
    assert chain(text, "egress") == ["ct state established,related accept", "drop"]
    assert "dport 53" not in text
    assert chain(text, "ingress")[-1] == "drop" and chain(text, "from_host")[-1] == "drop"


def test_matrix_08_default_allow_with_deny_rule() -> None:
    text = script(eff_of({"egress": {"default": "allow",
                                     "deny": [{"to": [{"cidr": "203.0.113.7"}]}]}}))
    assert chain(text, "egress") == ["ct state established,related accept",
                                     "ip daddr @drop0_v4_all drop",
                                     "ip daddr @accept1_v4_all accept",
                                     "ip6 daddr @accept1_v6_all accept", "drop"]
    assert set_elements(text, "drop0_v4_all") == ["203.0.113.7"]


def test_matrix_proxy_only_endpoint() -> None:
    eff = eff_of({"enforcementMode": "firewall", "proxy": {"url": "http://proxy.test:3128"}},
                 version="0.7.0")
    text = script(eff, FakeResolver({"proxy.test": ["203.0.113.5", "2001:db8::5"]}))
    assert chain(text, "egress") == ["ip daddr @accept0_v4_tcp_3128 tcp dport 3128 accept",
                                     "drop"]
    assert set_elements(text, "accept0_v4_tcp_3128") == ["203.0.113.5"]
    assert chain(text, "ingress")[-1] == "drop"


def test_ingress_and_host_loopback_allow_are_honoured() -> None:
    text = script(eff_of({"ingress": {"default": "allow", "hostLoopback": "allow"}}))
    assert chain(text, "ingress")[-1] == "accept"
    assert chain(text, "from_host")[-1] == "accept"
    text = script(eff_of({"ingress": {"default": "allow"}}))
    assert chain(text, "ingress")[-1] == "accept" and chain(text, "from_host")[-1] == "drop"


def test_neighbour_discovery_is_let_through_both_ways() -> None:
    text = script(eff_of(None))
    assert any(ln.startswith("icmpv6 type { nd-router-solicit, nd-neighbor-solicit, "
                             "nd-neighbor-advert } ip6 hoplimit 255 accept")
               for ln in chain(text, "to_host"))
    assert any("nd-neighbor-solicit" in ln and ln.endswith("accept")
               for ln in chain(text, "from_host"))
    # but never on the forward path, where hop limit 255 would not prove locality
    assert not any("icmpv6" in ln for ln in chain(text, "egress"))


# --------------------------------------------------------------------------- egress lowering

def test_deny_before_allow_even_for_catch_all_allow() -> None:
    text = script(eff_of({"egress": {"allow": [{"to": [{"cidr": "0.0.0.0/0"},
                                                       {"cidr": "::/0"}]}],
                                     "deny": [{"to": [{"cidr": "203.0.113.0/24"},
                                                      {"cidr": "2001:db8::/32"}]}]}}))
    egress = chain(text, "egress")
    assert egress == ["ct state established,related accept",
                      "ip daddr @drop0_v4_all drop", "ip6 daddr @drop0_v6_all drop",
                      "ip daddr @accept1_v4_all accept", "ip6 daddr @accept1_v6_all accept",
                      "drop"]
    assert set_elements(text, "drop0_v6_all") == ["2001:db8::/32"]


def test_many_cidrs_become_one_set_and_one_rule() -> None:
    allow = [{"to": [{"cidr": f"10.{i // 256}.{i % 256}.0/24"}]} for i in range(1000)]
    text = script(eff_of({"egress": {"allow": allow}}))
    assert chain(text, "egress") == ["ct state established,related accept",
                                     "ip daddr @accept0_v4_all accept", "drop"]
    # adjacent /24s are collapsed: 1000 = 512 + 256 + 128 + 64 + 32 + 8 networks
    assert set_elements(text, "accept0_v4_all") == [
        "10.0.0.0/15", "10.2.0.0/16", "10.3.0.0/17", "10.3.128.0/18", "10.3.192.0/19",
        "10.3.224.0/21"]


def test_overlapping_and_duplicate_cidrs_are_collapsed() -> None:
    text = script(eff_of({"egress": {"allow": [
        {"to": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.1.0.0/16"}, {"cidr": "10.0.0.0/8"},
                {"cidr": "192.0.2.1"}]}]}}))
    assert set_elements(text, "accept0_v4_all") == ["10.0.0.0/8", "192.0.2.1"]


def test_ports_and_ranges() -> None:
    text = script(eff_of({"egress": {"allow": [{"to": [{"cidr": "203.0.113.0/24"}], "ports": [
        {"protocol": "tcp", "port": 443},
        {"protocol": "udp", "port": 1000, "endPort": 2000},
        {"protocol": "any", "port": 53},
        {"protocol": "tcp"},
        {"protocol": "icmp"}]}]}}))
    egress = chain(text, "egress")
    assert "ip daddr @accept0_v4_tcp_443 tcp dport 443 accept" in egress
    assert "ip daddr @accept0_v4_udp_1000_2000 udp dport 1000-2000 accept" in egress
    assert ("ip daddr @accept0_v4_tcpudp_53 meta l4proto { tcp, udp } th dport 53 accept"
            in egress)
    assert "ip daddr @accept0_v4_tcp meta l4proto tcp accept" in egress
    assert "ip daddr @accept0_v4_icmp meta l4proto icmp accept" in egress


def test_icmp_per_family() -> None:
    text = script(eff_of({"egress": {"allow": [{"ports": [{"protocol": "icmp"}]}]}}))
    egress = chain(text, "egress")
    assert "ip daddr @accept0_v4_icmp meta l4proto icmp accept" in egress
    assert "ip6 daddr @accept0_v6_icmp meta l4proto ipv6-icmp accept" in egress


def test_except_in_allow_rule_under_default_deny_drops_the_hole_first() -> None:
    text = script(eff_of({"egress": {"allow": [{"to": [
        {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.0/24"]}]}]}}))
    assert chain(text, "egress") == ["ct state established,related accept",
                                     "ip daddr @drop0_v4_all drop",
                                     "ip daddr @accept1_v4_all accept", "drop"]
    assert set_elements(text, "drop0_v4_all") == ["10.1.0.0/16", "10.2.3.0/24"]
    assert set_elements(text, "accept1_v4_all") == ["10.0.0.0/8"]


def test_except_in_deny_rule_under_default_allow_accepts_the_hole_first() -> None:
    text = script(eff_of({"egress": {"default": "allow", "deny": [
        {"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}],
         "ports": [{"protocol": "tcp", "port": 22}]}]}}))
    assert chain(text, "egress") == ["ct state established,related accept",
                                     "ip daddr @accept0_v4_tcp_22 tcp dport 22 accept",
                                     "ip daddr @drop1_v4_tcp_22 tcp dport 22 drop",
                                     "ip daddr @accept2_v4_all accept",
                                     "ip6 daddr @accept2_v6_all accept", "drop"]


def test_except_with_same_verdict_as_default_is_not_emitted() -> None:
    # deny + except under default deny: the hole would get "drop" = the rule's own verdict
    text = script(eff_of({"egress": {"default": "deny", "deny": [
        {"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}]}}))
    assert "10.1.0.0/16" not in text
    # allow + except under default allow: likewise
    text = script(eff_of({"egress": {"default": "allow", "allow": [
        {"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}]}}))
    assert "10.1.0.0/16" not in text


def test_except_order_is_kept_across_rules() -> None:
    # mxc order: deny A, then hole H (accept, from the second deny), then deny B.  The hole
    # is an early verdict, so it must stay between the two deny runs.
    text = script(eff_of({"egress": {"default": "allow", "deny": [
        {"to": [{"cidr": "10.9.0.0/16"}]},
        {"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}]}}))
    assert chain(text, "egress")[1:4] == ["ip daddr @drop0_v4_all drop",
                                          "ip daddr @accept1_v4_all accept",
                                          "ip daddr @drop2_v4_all drop"]


def test_legacy_hostnames_are_resolved_into_the_sets() -> None:
    resolver = FakeResolver({"a.test": ["203.0.113.1", "2001:db8::1"], "b.test":
                             ["198.51.100.9"]})
    eff = eff_of({"enforcementMode": "firewall", "allowedHosts": ["a.test", "192.0.2.0/24"],
                  "blockedHosts": ["b.test"]}, version="0.7.0")
    text = script(eff, resolver)
    # run 0 is the legacy DNS exemption
    assert set_elements(text, "accept2_v4_all") == ["192.0.2.0/24", "203.0.113.1"]
    assert set_elements(text, "accept2_v6_all") == ["2001:db8::1"]
    assert set_elements(text, "drop1_v4_all") == ["198.51.100.9"]


# --------------------------------------------------------------------------- resolution

def legacy(default: str, allowed: Sequence[str] = (),
           blocked: Sequence[str] = ()) -> EffectiveNetwork:
    return eff_of({"enforcementMode": "firewall", "defaultPolicy": default,
                   "allowedHosts": list(allowed), "blockedHosts": list(blocked)},
                  version="0.7.0")


def test_unresolvable_blocked_host_under_default_allow_is_fatal() -> None:
    with pytest.raises(SandboxError, match="'gone.test'"):
        resolve_destinations(legacy("allow", blocked=["gone.test"]), FakeResolver({}))


def test_unresolvable_blocked_host_with_catch_all_allow_is_fatal() -> None:
    for catch_all in ("0.0.0.0/0", "::/0"):
        with pytest.raises(SandboxError, match="'gone.test'"):
            resolve_destinations(legacy("block", allowed=[catch_all], blocked=["gone.test"]),
                                 FakeResolver({}))


def test_unresolvable_blocked_host_under_default_deny_is_a_warning() -> None:
    r = resolve_destinations(legacy("block", allowed=["192.0.2.0/24"], blocked=["gone.test"]),
                             FakeResolver({}))
    assert r.deny == () and len(r.warnings) == 1 and "gone.test" in r.warnings[0]


def test_unresolvable_allowed_host_is_skipped_with_a_warning() -> None:
    r = resolve_destinations(legacy("block", allowed=["gone.test", "ok.test"]),
                             FakeResolver({"ok.test": ["192.0.2.7"]}))
    assert [x.cidr for x in r.allow] == ["192.0.2.7/32"]
    assert r.warnings == ("could not resolve allowed host 'gone.test'; skipped",)


def test_each_name_is_resolved_once() -> None:
    resolver = FakeResolver({"a.test": ["192.0.2.1"]})
    r = resolve_destinations(legacy("block", allowed=["a.test", "a.test"]), resolver)
    assert resolver.calls == ["a.test"]
    assert len(r.allow) == 2 and r.hosts == (("a.test", ("192.0.2.1",)),)


def test_no_firewall_resolves_nothing() -> None:
    resolver = FakeResolver({})
    assert resolve_destinations(eff_of({"allowedHosts": ["x.test"]}, version="0.7.0"),
                                resolver) == Resolved()
    assert resolver.calls == []


def proxy_eff(url: str) -> EffectiveNetwork:
    return eff_of({"enforcementMode": "firewall", "proxy": {"url": url}}, version="0.7.0")


def test_proxy_resolution_cases() -> None:
    with pytest.raises(SandboxError, match="IPv6 proxy endpoint"):
        resolve_destinations(proxy_eff("http://[2001:db8::1]:3128"), FakeResolver({}))
    with pytest.raises(SandboxError, match="resolves only to IPv6"):
        resolve_destinations(proxy_eff("http://p.test:3128"),
                             FakeResolver({"p.test": ["2001:db8::1"]}))
    with pytest.raises(SandboxError, match="could not resolve network proxy host 'p.test'"):
        resolve_destinations(proxy_eff("http://p.test:3128"), FakeResolver({}))
    with pytest.raises(SandboxError, match="loopback"):
        resolve_destinations(eff_of(None, runtimeConfig={
            "networkProxy": "http://127.0.0.1:3128"}), FakeResolver({}))
    many = [f"192.0.2.{i}" for i in range(1, 21)]
    r = resolve_destinations(proxy_eff("http://p.test:3128"), FakeResolver({"p.test": many}))
    assert r.proxy_addresses == tuple(many[:16]) and "20 IPv4 addresses" in r.warnings[0]
    r = resolve_destinations(proxy_eff("http://192.0.2.9:8080"), FakeResolver({}))
    assert r.proxy_addresses == ("192.0.2.9",)


def test_proxy_mode_without_resolution_is_refused() -> None:
    with pytest.raises(SandboxError, match="resolve_destinations"):
        compile_ruleset(table=table_name("t"), veth=VETH, container_v4=C4, container_v6=None,
                        gateway_v4=None, gateway_v6=None,
                        eff=proxy_eff("http://192.0.2.9:8080"), resolved=Resolved())
