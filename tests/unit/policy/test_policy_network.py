"""The effective network semantics (``lxcbind.policy.egress.egress_plan``), evaluated in
Python: what a policy lets a new connection reach.  The nft rules are compiled from the same
plan (``tests/unit/net/test_netrules.py`` reads them as text, ``tests/integration/net/test_nft.py``
sends packets through them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from lxcbind.net.dns import resolv_conf
from lxcbind.net.network import off_host
from lxcbind.net.ruleset import Resolved
from lxcbind.policy.egress import Decision, Ports, egress_plan
from lxcbind.policy.network import EffectiveNetwork, EgressRule
from lxcbind.policy.parse import load_policy


def eff_of(network: dict[str, Any] | None, version: str = "0.8.0",
           **extra: Any) -> EffectiveNetwork:
    doc: dict[str, Any] = {"version": version, "process": {"commandLine": "true"}, **extra}
    if network is not None:
        doc["network"] = network
    return load_policy(doc).network.effective()


def verdict(eff: EffectiveNetwork, ip: str, proto: str, port: int | None = None,
            **resolved: Any) -> str:
    return egress_plan(eff, **resolved).verdict(ipaddress.ip_address(ip), proto, port)


def test_a_decision_matches_only_its_destination() -> None:
    # net.network._rule_matches ignored its destination (the caller checked it beside it)
    d = Decision("accept", Ports.of(EgressRule("10.0.0.0/8", (), "udp", 53, 53)),
                 ipaddress.ip_network("10.0.0.0/8"))
    assert d.matches(ipaddress.ip_address("10.1.2.3"), "udp", 53)
    assert not d.matches(ipaddress.ip_address("192.0.2.1"), "udp", 53)
    assert not d.matches(ipaddress.ip_address("2001:db8::1"), "udp", 53)
    assert not d.matches(ipaddress.ip_address("10.1.2.3"), "tcp", 53)
    assert not d.matches(ipaddress.ip_address("10.1.2.3"), "udp", 54)


def test_ports_selectors() -> None:
    assert Ports("all").matches("icmp", None) and Ports("all").matches("tcp", 1)
    assert Ports("icmp").matches("icmp", None) and not Ports("icmp").matches("tcp", 80)
    assert Ports("tcpudp", 53, 53).matches("udp", 53) and Ports("tcpudp", 53, 53).matches("tcp", 53)
    assert not Ports("tcpudp", 53, 53).matches("icmp", None)
    assert Ports("tcp").matches("tcp", 9) and not Ports("tcp").matches("udp", 9)
    assert Ports("udp", 1000, 2000).matches("udp", 2000)
    assert not Ports("udp", 1000, 2000).matches("udp", 2001)


def test_deny_first_then_allow_then_default() -> None:
    eff = eff_of({"egress": {"allow": [{"to": [{"cidr": "0.0.0.0/0"}]}],
                             "deny": [{"to": [{"cidr": "198.18.5.0/24"}]}]}})
    assert verdict(eff, "198.18.5.1", "tcp", 80) == "drop"
    assert verdict(eff, "198.18.6.1", "tcp", 80) == "accept"
    assert verdict(eff, "2001:db8::1", "tcp", 80) == "drop"      # no IPv6 allow: the default


def test_an_except_with_the_rules_own_verdict_has_no_effect() -> None:
    # deny+except under default deny: the hole would be dropped anyway, so the deny rule
    # matches it and a later allow rule never sees it (the nft rules do exactly this; the old
    # Python check skipped the rule and let the allow rule accept the hole).
    eff = eff_of({"egress": {"deny": [{"to": [{"cidr": "198.18.0.0/16",
                                               "except": ["198.18.7.0/24"]}]}],
                             "allow": [{"to": [{"cidr": "198.18.0.0/15"}]}]}})
    assert verdict(eff, "198.18.7.1", "udp", 53) == "drop"
    assert verdict(eff, "198.19.0.1", "udp", 53) == "accept"


def test_except_holes_take_the_default() -> None:
    eff = eff_of({"egress": {"default": "allow", "deny": [
        {"to": [{"cidr": "198.18.0.0/16", "except": ["198.18.7.0/24"]}]},
        {"to": [{"cidr": "198.18.7.0/24"}]}]}})
    # the hole is an early accept: the second deny rule never sees it (mxc's order)
    assert verdict(eff, "198.18.7.1", "tcp", 22) == "accept"
    assert verdict(eff, "198.18.8.1", "tcp", 22) == "drop"
    eff = eff_of({"egress": {"allow": [{"to": [{"cidr": "198.18.0.0/16",
                                                "except": ["198.18.7.0/24"]}]}]}})
    assert verdict(eff, "198.18.7.1", "tcp", 22) == "drop"
    assert verdict(eff, "198.18.8.1", "tcp", 22) == "accept"


def test_legacy_dns_exemption_proxy_and_no_firewall() -> None:
    eff = eff_of({"enforcementMode": "firewall", "defaultPolicy": "block"}, version="0.7.0")
    assert verdict(eff, "198.18.0.1", "udp", 53) == "accept"
    assert verdict(eff, "2001:db8::1", "tcp", 53) == "accept"
    assert verdict(eff, "198.18.0.1", "tcp", 80) == "drop"
    eff = eff_of({"enforcementMode": "firewall", "proxy": {"url": "http://198.18.0.9:3128"}},
                 version="0.7.0")
    plan = egress_plan(eff, proxy_addresses=("198.18.0.9",))
    assert not plan.stateful and plan.default == "drop"
    assert plan.verdict(ipaddress.ip_address("198.18.0.9"), "tcp", 3128) == "accept"
    assert plan.verdict(ipaddress.ip_address("198.18.0.9"), "udp", 3128) == "drop"
    assert plan.verdict(ipaddress.ip_address("198.18.0.8"), "tcp", 3128) == "drop"
    eff = eff_of({"defaultPolicy": "block"}, version="0.7.0")        # capabilities mode
    assert verdict(eff, "198.18.0.1", "icmp") == "accept"


def test_resolved_hostnames_join_the_plan() -> None:
    eff = eff_of({"enforcementMode": "firewall", "allowedHosts": ["ns.test"]}, version="0.7.0")
    allow = (EgressRule("198.18.0.53/32", (), "any", None, None),)
    assert verdict(eff, "198.18.0.53", "tcp", 80, extra_allow=allow) == "accept"
    assert verdict(eff, "198.18.0.53", "tcp", 80) == "drop"


def test_resolv_conf_lists_only_the_resolvers_the_plan_lets_through(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text("nameserver 198.18.0.53\nnameserver 198.18.7.53\nnameserver 127.0.0.53\n")
    eff = eff_of({"egress": {"deny": [{"to": [{"cidr": "198.18.0.0/16",
                                               "except": ["198.18.0.0/24"]}]}],
                             "allow": [{"to": [{"cidr": "198.18.0.0/15"}],
                                        "ports": [{"protocol": "udp", "port": 53}]}]}})
    assert resolv_conf(egress_plan(eff), str(host)).splitlines()[1:] == []
    eff = eff_of({"egress": {"allow": [{"to": [{"cidr": "198.18.0.0/24"}],
                                        "ports": [{"protocol": "tcp", "port": 53}]}]}})
    assert resolv_conf(egress_plan(eff), str(host)).splitlines()[1:] == ["nameserver 198.18.0.53"]
    assert "allows no DNS resolver" in resolv_conf(egress_plan(eff_of(None)), str(host))


def test_off_host_follows_the_plan() -> None:
    assert not off_host(eff_of(None), Resolved())
    assert off_host(eff_of({"egress": {"default": "allow"}}), Resolved())
    eff = eff_of({"enforcementMode": "firewall", "allowedHosts": ["ns.test"]}, version="0.7.0")
    assert off_host(eff, Resolved())      # the legacy DNS exemption
    eff = eff_of({"egress": {"allow": [{"to": [{"cidr": "198.18.0.0/24"}]}]}})
    assert off_host(eff, Resolved())
