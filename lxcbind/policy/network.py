"""The network section of a policy: the records as written, and what they mean.

mxc's policy format has two network shapes (the legacy 0.6/0.7 host lists and the 0.8
``egress``/``ingress`` rules); ``Network.effective()`` lowers either to one
``EffectiveNetwork``, the only thing the runtime decides from.  Hostnames are not resolved
here (that is the network layer's job, ``lxcbind.net.ruleset.resolve_destinations``).

**Egress semantics** (what an ``EffectiveNetwork`` lets out, first match wins) are in
``lxcbind.policy.egress``: only a run with a network device needs them, and their records
cost a run without one start-up time (issue #23).

The records and the lowering sit together because ``Network.effective()`` (and so
``Policy.to_plan()``) needs the lowering: in two modules they would import each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from lxcbind._lite import record

if TYPE_CHECKING:
    import ipaddress

__all__ = ["EffectiveNetwork", "Egress", "EgressRule", "IPAddress", "IPNetwork", "Ingress",
           "LegacyNetwork", "Network", "NetworkHost", "Peer", "PortSelector", "Proxy", "Rule",
           "Verdict"]

if TYPE_CHECKING:
    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
else:
    # Only annotations (strings in these modules) name them.  Unions of the names as strings
    # would make typing compile() each name at import (~1 ms for the first compile() of a
    # process, issue #23); the real types would need ipaddress on every run.
    IPNetwork = IPAddress = Any
Verdict = Literal["accept", "drop"]


@record
class NetworkHost:
    """A legacy ``allowedHosts``/``blockedHosts`` entry: an IP/CIDR, or a hostname to resolve."""

    text: str
    network: IPNetwork | None   # None for a hostname


@record
class Proxy:
    """An HTTP(S) proxy endpoint.  ``source`` is the JSON path it came from."""

    url: str
    scheme: str
    host: str
    port: int
    source: str


@record
class LegacyNetwork:
    default_policy: Literal["allow", "block"] = "block"
    enforcement_mode: Literal["capabilities", "firewall", "both"] = "capabilities"
    allow_local_network: bool = False
    allowed_hosts: tuple[NetworkHost, ...] = ()
    blocked_hosts: tuple[NetworkHost, ...] = ()
    proxy: Proxy | None = None

    @property
    def firewall(self) -> bool:
        return self.enforcement_mode in ("firewall", "both")


@record
class Peer:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()


@record
class PortSelector:
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    port: int | None = None
    end_port: int | None = None


@record
class Rule:
    to: tuple[Peer, ...] = ()                # empty = any destination
    ports: tuple[PortSelector, ...] = ()     # empty = any protocol and port


@record
class Egress:
    default: Literal["allow", "deny"] = "deny"
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()


@record
class Ingress:
    default: Literal["allow", "deny"] = "deny"
    host_loopback: Literal["allow", "deny"] = "deny"


# The fields in the call form, as objects: declared in the class body they would be strings
# here (``from __future__ import annotations``), each one compile()d by typing at import.
class EgressRule(NamedTuple("EgressRule", [("cidr", str), ("excepts", tuple[str, ...]),
                                           ("protocol", str), ("port_min", int | None),
                                           ("port_max", int | None)])):
    """One normalized egress match: destination, excluded sub-ranges, protocol, port range.

    ``protocol`` ``any`` with a port means TCP and UDP; ports are None for "all ports".
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {"cidr": self.cidr, "except": list(self.excepts), "protocol": self.protocol,
                "portMin": self.port_min, "portMax": self.port_max}


@record
class EffectiveNetwork:
    """What the network policy means for an LXC run (mxc's LXC runner: ``lxc_runner.rs``
    picks the firewall by version and shape, ``network_iptables.rs`` the egress rules).

    ``firewall`` False means the policy asks for no filtering at all (0.6/0.7 without
    ``enforcementMode`` firewall/both): open network, the other fields then carry no rules.
    Deny rules are listed before allow rules and win over them.  Hostnames are not resolved
    here; they are in ``unresolved_allow``/``unresolved_deny``.
    """

    firewall: bool
    egress_default: Literal["allow", "deny"]
    egress_deny: tuple[EgressRule, ...] = ()
    egress_allow: tuple[EgressRule, ...] = ()
    unresolved_deny: tuple[str, ...] = ()
    unresolved_allow: tuple[str, ...] = ()
    ingress_deny: bool = True
    host_loopback_deny: bool = True
    dns_exemption: bool = False   # legacy firewall mode under version < 0.8: port 53 open
    proxy: Proxy | None = None

    def is_deny_all(self) -> bool:
        """True when nothing may leave or enter: deny-default egress with no way out (no allow
        rule, no DNS exemption, no proxy) and inbound + host loopback denied.  Such a run needs
        no network device at all.  Deny rules are redundant then and do not matter."""
        return (self.firewall and self.egress_default == "deny" and not self.egress_allow
                and not self.unresolved_allow and not self.dns_exemption
                and self.proxy is None and self.ingress_deny and self.host_loopback_deny)

    def to_dict(self) -> dict[str, Any]:
        return {
            "firewall": self.firewall,
            "denyAll": self.is_deny_all(),
            "egressDefault": self.egress_default,
            "egressDeny": [r.to_dict() for r in self.egress_deny],
            "egressAllow": [r.to_dict() for r in self.egress_allow],
            "unresolvedDeny": list(self.unresolved_deny),
            "unresolvedAllow": list(self.unresolved_allow),
            "ingressDeny": self.ingress_deny,
            "hostLoopbackDeny": self.host_loopback_deny,
            "dnsExemption": self.dns_exemption,
            "proxy": None if self.proxy is None else
            {"url": self.proxy.url, "host": self.proxy.host, "port": self.proxy.port,
             "source": self.proxy.source},
        }


@record
class Network:
    """The network section as written (``shape``) plus the declared-version switch.

    ``shape`` is ``legacy`` (0.6/0.7 fields; then ``legacy`` is set) or ``directional`` (0.8
    fields, or a >= 0.8 policy without legacy fields; then ``egress``/``ingress`` are set).
    ``version_08`` is True when the declared version is >= 0.8: mxc's LXC runner then always
    installs a firewall and drops the DNS exemption, whatever the shape.
    """

    shape: Literal["legacy", "directional"]
    version_08: bool
    specified: bool = False
    legacy: LegacyNetwork | None = None
    egress: Egress | None = None
    ingress: Ingress | None = None
    runtime_proxy: Proxy | None = None

    def effective(self) -> EffectiveNetwork:
        if self.shape == "directional":
            egress = self.egress or Egress()
            ingress = self.ingress or Ingress()
            if self.runtime_proxy is not None:
                # Model 2: the proxy is the only way out; direct rules do not apply.
                return EffectiveNetwork(True, "deny", proxy=self.runtime_proxy,
                                        ingress_deny=ingress.default == "deny",
                                        host_loopback_deny=ingress.host_loopback == "deny")
            return EffectiveNetwork(
                firewall=True, egress_default=egress.default,
                egress_deny=_lower_rules(egress.deny), egress_allow=_lower_rules(egress.allow),
                ingress_deny=ingress.default == "deny",
                host_loopback_deny=ingress.host_loopback == "deny")

        legacy = self.legacy or LegacyNetwork()
        if not (self.version_08 or legacy.firewall):
            # 0.6/0.7 "capabilities": mxc installs nothing, even with defaultPolicy block.
            return EffectiveNetwork(False, "allow", ingress_deny=False, host_loopback_deny=False)
        ingress_deny = not legacy.allow_local_network
        if legacy.proxy is not None:
            return EffectiveNetwork(True, "deny", proxy=legacy.proxy, ingress_deny=ingress_deny)
        deny, unresolved_deny = _lower_hosts(legacy.blocked_hosts)
        allow, unresolved_allow = _lower_hosts(legacy.allowed_hosts)
        return EffectiveNetwork(
            firewall=True, egress_default="allow" if legacy.default_policy == "allow" else "deny",
            egress_deny=deny, egress_allow=allow, unresolved_deny=unresolved_deny,
            unresolved_allow=unresolved_allow, ingress_deny=ingress_deny,
            host_loopback_deny=True, dns_exemption=not self.version_08)

    def is_deny_all(self) -> bool:
        return self.effective().is_deny_all()


def _ANY_PEERS() -> tuple[Peer, Peer]:  # noqa: N802 - a constant, built on first use
    import ipaddress

    return (Peer(ipaddress.ip_network("0.0.0.0/0")), Peer(ipaddress.ip_network("::/0")))


def _lower_rules(rules: Iterable[Rule]) -> tuple[EgressRule, ...]:
    out: list[EgressRule] = []
    for rule in rules:
        peers = rule.to or _ANY_PEERS()
        ports = rule.ports or (PortSelector(),)
        for peer in peers:
            for sel in ports:
                end = sel.end_port if sel.end_port is not None else sel.port
                out.append(EgressRule(str(peer.cidr), tuple(str(e) for e in peer.excepts),
                                      sel.protocol, sel.port, end))
    return tuple(out)


def _lower_hosts(hosts: Iterable[NetworkHost]) -> tuple[tuple[EgressRule, ...], tuple[str, ...]]:
    rules, names = [], []
    for host in hosts:
        if host.network is None:
            names.append(host.text)
        else:
            rules.append(EgressRule(str(host.network), (), "any", None, None))
    return tuple(rules), tuple(names)
