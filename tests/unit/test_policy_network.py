"""The effective network semantics: what a policy lets a container reach, evaluated in Python
(first match: deny rules, allow rules, each with its except holes, then the default)."""

from __future__ import annotations

import ipaddress

from lxcbind.net.network import _rule_matches
from lxcbind.policy.network import EgressRule


def test_rule_match_checks_the_destination() -> None:
    rule = EgressRule("10.0.0.0/8", (), "udp", 53, 53)
    assert _rule_matches(rule, ipaddress.ip_address("10.1.2.3"), "udp", 53)
    assert not _rule_matches(rule, ipaddress.ip_address("192.0.2.1"), "udp", 53)
    assert not _rule_matches(rule, ipaddress.ip_address("2001:db8::1"), "udp", 53)
