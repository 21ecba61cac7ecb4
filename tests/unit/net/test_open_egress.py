"""Open egress means the internet, not the host (issue 20, item 7): every way a policy says
"everything" (0.8 ``egress.default: allow``, ``--net``, ``0.0.0.0/0`` and ``::/0`` allow
rules, 0.6/0.7 firewall ``defaultPolicy: allow``, 0.6/0.7 capabilities mode) leaves out the
host's own addresses, loopback, link-local (the cloud metadata services), the host's connected
networks and the private ranges, unless a rule names them.  Checked twice: on the plan's
first-match verdicts, and on the compiled nftables sets (no packet is ever sent towards a real
metadata address).  No root, no netlink, no DNS."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from lxcbind.net.hostnets import HostView, connected_v4, connected_v6
from lxcbind.net.ruleset import compile_ruleset, resolve_destinations, table_name
from lxcbind.policy.egress import EgressPlan, egress_plan
from lxcbind.policy.network import EffectiveNetwork
from tests.unit.net.test_netrules import NO_DNS, eff_of

# A host on a public LAN (as on cloud VMs whose VPC is not an RFC 1918 range), with lxcbind's
# anchor; the resolver is in the VPC.
HOST = HostView(local=tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "192.0.2.2/32", "10.213.0.0/16", "10.213.0.1/32", "2001:db8:5::/64",
    "2001:db8:5::2/128")), resolvers=("10.0.0.2",))

INTERNET = ["198.18.1.1", "8.8.8.8", "1.1.1.1", "203.0.113.9", "2001:4860::8888"]
NOT_INTERNET = ["169.254.169.254", "fd00:ec2::254", "169.254.0.1", "fe80::1", "127.0.0.1",
                "::1", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
                "100.64.0.1", "100.100.100.200", "224.0.0.251", "255.255.255.255",
                "ff02::fb", "fc00::1", "64:ff9b::a9fe:a9fe", "::ffff:169.254.169.254",
                "0.0.0.0", "192.0.2.7", "192.0.2.2", "10.213.0.1", "2001:db8:5::2",
                "2001:db8:5::99"]

EVERYTHING = {
    "0.8 egress.default allow (--net)": ({"egress": {"default": "allow"}}, "0.8.0"),
    "0.8 allow 0.0.0.0/0 and ::/0": (
        {"egress": {"allow": [{"to": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]}]}}, "0.8.0"),
    "0.8 allow without to": ({"egress": {"allow": [{}]}}, "0.8.0"),
    "0.7 firewall defaultPolicy allow (--net)": (
        {"enforcementMode": "firewall", "defaultPolicy": "allow"}, "0.7.0"),
    "0.7 firewall allowedHosts 0.0.0.0/0": (
        {"enforcementMode": "firewall", "allowedHosts": ["0.0.0.0/0", "::/0"]}, "0.7.0"),
    "0.7 capabilities mode (no firewall)": ({"defaultPolicy": "allow"}, "0.7.0"),
}


def plan(eff: EffectiveNetwork, host: HostView = HOST, to_host: bool = False) -> EgressPlan:
    return egress_plan(eff, host_local=host.local, resolvers=host.resolvers, to_host=to_host)


def verdict(p: EgressPlan, address: str, protocol: str = "tcp", port: int = 80) -> str:
    return p.verdict(ipaddress.ip_address(address), protocol, port)


def compiled(eff: EffectiveNetwork, host: HostView = HOST) -> str:
    return compile_ruleset(table=table_name("t"), veth="vethlxb0", container_v4="10.213.0.7",
                           container_v6=None, gateway_v4="10.213.0.1", gateway_v6=None,
                           eff=eff, resolved=resolve_destinations(eff, NO_DNS), host=host)


def accepted_by_nft(text: str, chain: str, address: str) -> bool:
    """Whether an unrestricted-port accept of ``chain`` in the compiled script covers
    ``address`` (by its set's elements, or a whole-family match)."""
    body = re.search(rf"^    chain {chain} {{\n(.*?)^    }}", text, re.S | re.M)
    assert body
    addr = ipaddress.ip_address(address)
    for line in body.group(1).splitlines():
        words = line.split("#")[0].split()
        if not words or words[-1] != "accept" or "dport" in line or "l4proto" in line:
            continue
        if words[:2] == ["meta", "nfproto"] and words[2] == f"ipv{addr.version}":
            return True
        if len(words) == 4 and words[1] == "daddr" and words[2].startswith("@"):
            block = re.search(rf"set {words[2][1:]} {{.*?elements = {{(.*?)}}", text, re.S)
            assert block
            nets = [ipaddress.ip_network(e.strip()) for e in block.group(1).split(",")]
            if any(n.version == addr.version and addr in n for n in nets):
                return True
    return False


@pytest.mark.parametrize("case", list(EVERYTHING))
def test_everything_is_the_internet_only(case: str) -> None:
    network, version = EVERYTHING[case]
    eff = eff_of(network, version=version)
    p, text = plan(eff), compiled(eff)
    for address in INTERNET:
        assert verdict(p, address) == "accept", (case, address)
        assert accepted_by_nft(text, "egress", address), (case, address)
    for address in NOT_INTERNET:
        assert verdict(p, address) == "drop", (case, address)
        assert verdict(p, address, "udp", 53) == "drop", (case, address)
        assert not accepted_by_nft(text, "egress", address), (case, address)
    # the host itself (input hook): not through "everything", at any of its addresses,
    # including one it has not got yet
    hp = plan(eff, to_host=True)
    for address in ("10.213.0.1", "192.0.2.2", "198.18.1.1", "203.0.113.50", "2001:db8:5::2"):
        assert verdict(hp, address) == "drop", (case, address)
        assert not accepted_by_nft(text, "host_egress", address), (case, address)


def test_metadata_addresses_never_in_an_accept_set() -> None:
    """The compiled sets of ``--net`` hold neither metadata address, with or without the
    host's view (the static ranges alone leave them out)."""
    for host in (HOST, HostView()):
        text = compiled(eff_of({"egress": {"default": "allow"}}), host)
        for address in ("169.254.169.254", "fd00:ec2::254"):
            assert not accepted_by_nft(text, "egress", address)
            assert not accepted_by_nft(text, "host_egress", address)


def test_a_rule_naming_a_left_out_address_still_reaches_it() -> None:
    for allow_rules in ([{"to": [{"cidr": "0.0.0.0/0"}]}, {"to": [{"cidr": "10.1.2.3"}]}],
                        [{"to": [{"cidr": "10.1.2.3"}]}, {"to": [{"cidr": "0.0.0.0/0"}]}]):
        p = plan(eff_of({"egress": {"allow": allow_rules}}))
        assert verdict(p, "10.1.2.3") == "accept" and verdict(p, "10.1.2.4") == "drop"
    p = plan(eff_of({"egress": {"default": "allow", "allow": [
        {"to": [{"cidr": "10.0.0.0/8"}]}, {"to": [{"cidr": "169.254.169.254/32"}],
                                           "ports": [{"protocol": "tcp", "port": 80}]}]}}))
    assert verdict(p, "10.99.0.1") == "accept"              # the private range, named
    assert verdict(p, "10.213.0.1") == "drop"               # but not the host inside it
    assert verdict(p, "10.213.0.9") == "drop"               # nor its connected pool
    assert verdict(p, "169.254.169.254", "tcp", 80) == "accept"   # named: the user's choice
    assert verdict(p, "169.254.169.254", "tcp", 81) == "drop"
    text = compiled(eff_of({"egress": {"default": "allow", "allow": [
        {"to": [{"cidr": "10.1.2.3"}]}]}}))
    assert accepted_by_nft(text, "egress", "10.1.2.3")
    assert not accepted_by_nft(text, "egress", "10.1.2.4")


def test_the_host_is_reached_only_by_naming_one_of_its_addresses() -> None:
    eff = eff_of({"egress": {"default": "allow", "allow": [
        {"to": [{"cidr": "10.213.0.1/32"}], "ports": [{"protocol": "tcp", "port": 8080}]},
        {"to": [{"cidr": "0.0.0.0/1"}]}]}})
    hp = plan(eff, to_host=True)
    assert verdict(hp, "10.213.0.1", "tcp", 8080) == "accept"
    assert verdict(hp, "10.213.0.1", "tcp", 22) == "drop"
    assert verdict(hp, "192.0.2.2") == "drop"       # a wide rule (0.0.0.0/1) does not name it
    text = compiled(eff)
    assert "ip daddr @haccept0_v4_tcp_8080 tcp dport 8080 accept" in text


def test_deny_rules_are_unchanged() -> None:
    p = plan(eff_of({"egress": {"default": "allow", "deny": [{"to": [{"cidr": "8.8.8.8"}]}]}}))
    assert verdict(p, "8.8.8.8") == "drop" and verdict(p, "8.8.4.4") == "accept"
    p = plan(eff_of({"egress": {"default": "allow", "deny": [
        {"to": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}]}}))
    assert verdict(p, "10.1.0.5") == "accept"       # the except hole names it
    assert verdict(p, "10.2.0.5") == "drop"


def test_dns_to_the_hosts_resolver_keeps_working() -> None:
    p = plan(eff_of({"egress": {"default": "allow"}}))
    assert verdict(p, "10.0.0.2", "udp", 53) == "accept"
    assert verdict(p, "10.0.0.2", "tcp", 53) == "accept"
    assert verdict(p, "10.0.0.2", "tcp", 80) == "drop"       # only DNS
    assert verdict(p, "10.0.0.3", "udp", 53) == "drop"       # only the resolver
    # only when the catch-all covered DNS
    p = plan(eff_of({"egress": {"allow": [{"ports": [{"protocol": "tcp", "port": 443}]}]}}))
    assert verdict(p, "10.0.0.2", "udp", 53) == "drop"
    assert verdict(p, "8.8.8.8", "tcp", 443) == "accept"
    # legacy DNS exemption (port 53 anywhere): the resolver still, private others not
    p = plan(eff_of({"enforcementMode": "firewall", "defaultPolicy": "block"}, version="0.7.0"))
    assert verdict(p, "10.0.0.2", "udp", 53) == "accept"
    assert verdict(p, "10.0.0.3", "udp", 53) == "drop"
    assert verdict(p, "8.8.8.8", "udp", 53) == "accept"
    # a resolver on the host itself
    resolver_on_host = HostView(HOST.local, ("10.213.0.1",))
    hp = plan(eff_of({"egress": {"default": "allow"}}), resolver_on_host, to_host=True)
    assert verdict(hp, "10.213.0.1", "udp", 53) == "accept"
    assert verdict(hp, "10.213.0.1", "tcp", 22) == "drop"
    from lxcbind.net.dns import resolv_conf

    assert "nameserver 10.0.0.2" in resolv_conf(plan(eff_of({"egress": {"default": "allow"}})),
                                                _resolv(HOST))


def _resolv(host: HostView) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    f.write("".join(f"nameserver {a}\n" for a in host.resolvers))
    f.close()
    return f.name


def test_proxy_and_deny_all_plans_are_unchanged() -> None:
    eff = eff_of({"egress": {"default": "deny"}})
    assert plan(eff).decisions == () and plan(eff).default == "drop"


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
        +-- 192.0.2.0/30 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
     |-- 198.51.100.0
        /24 universe UNICAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 192.0.2.2
        /32 host LOCAL
"""

IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
20010db8000500000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
"""


def test_host_addresses_and_connected_networks_from_proc() -> None:
    assert [str(n) for n in connected_v4(FIB_TRIE)] == [
        "127.0.0.0/8", "127.0.0.1/32", "192.0.2.0/24", "192.0.2.2/32"]   # not routed ones
    assert [str(n) for n in connected_v6(IF_INET6)] == [
        "::1/128", "2001:db8:5::2/128", "2001:db8:5::/64", "fe80::fc:ff:fe00:1/128",
        "fe80::/64"]
    assert connected_v4("garbage\n |-- x\n /zz host LOCAL\n") == []


def test_outside_is_exact_and_minimal() -> None:
    """The integer carving equals ``ipaddress``'s own exclusion, piece for piece."""
    from lxcbind.policy.egress import _outside, not_everything

    holes = [*not_everything(), *HOST.local, ipaddress.ip_network("fe80::1/128")]
    for text in ("0.0.0.0/0", "::/0", "0.0.0.0/1", "10.0.0.0/8", "192.0.0.0/16", "8.8.8.8/32",
                 "fc00::/6", "100.0.0.0/8"):
        net = ipaddress.ip_network(text)
        pieces = [net]
        for hole in sorted((h for h in holes if h.version == net.version and h != net
                            and h.subnet_of(net)), key=lambda h: h.prefixlen):
            kept: list[Any] = []
            for piece in pieces:
                if piece.subnet_of(hole):
                    continue
                kept += piece.address_exclude(hole) if hole.subnet_of(piece) else [piece]
            pieces = kept
        assert sorted(_outside(net, holes)) == sorted(pieces), text
