"""The network section of a policy: the records as written, and what they mean.

mxc's policy format has two network shapes (the legacy 0.6/0.7 host lists and the 0.8
``egress``/``ingress`` rules); ``Network.effective()`` lowers either to one
``EffectiveNetwork``, the only thing the runtime decides from.  Hostnames are not resolved
here (that is the network layer's job, ``lxcbind.net.ruleset.resolve_destinations``).

**Egress semantics, written once** (``egress_plan``): "deny first, then allow, with except
holes", as mxc's ``network_iptables.rs`` lowers them.  First match wins, in this order:

1. replies of established connections (``stateful``; not in proxy mode);
2. the legacy DNS exemption (schema < 0.8 with a firewall): TCP/UDP port 53 anywhere;
3. deny rules, then allow rules, in policy order (resolved hostnames after the literal ones).
   A rule's ``except`` ranges come just before it, with the **default's** verdict, and only
   when that differs from the rule's own (deny+except under default allow: the hole is
   accepted; allow+except under default deny: the hole is dropped; otherwise the except has
   no effect, and the rule matches the hole too).  An early verdict: a hole in a deny rule
   also skips later deny rules that cover it, as in mxc;
4. the default.

**"Everything" is the internet, not the host** (``carve``): an accept that covers a whole
range the plan names in ``local`` (the static ``NOT_EVERYTHING`` ranges: loopback, link-local
and so the cloud metadata services, private and shared ranges, multicast, NAT64, IPv6 ULA;
plus the host's own addresses and directly connected networks, which the network layer reads
and passes in) does not cover that range: the accept is split around it, and the default
``allow`` becomes such a split accept of ``0.0.0.0/0`` and ``::/0`` before a drop.  A rule whose
own CIDR lies inside such a range (``10.1.2.3``, ``10.0.0.0/8``, the gateway's ``/32``) names it
and keeps its meaning; deny rules are never changed.  DNS (TCP/UDP 53) to the host's resolvers
stays covered by a split accept that covered it.  The host itself (``to_host``, the input
hook) is never reached by a catch-all (``/0`` rule or default), whatever addresses it gains
later: only rules naming one of its addresses reach it.

Proxy mode has one decision (TCP to the proxy's addresses on its port) before a drop, and no
firewall has nothing before an accept.  ``lxcbind.net.ruleset`` compiles an ``EgressPlan`` to
nftables; ``EgressPlan.verdict`` evaluates it in Python (the container's ``resolv.conf`` lists
only the resolvers it lets through): one plan, two readers.

The records and the lowering sit together because ``Network.effective()`` (and so
``Policy.to_plan()``) needs the lowering: in two modules they would import each other.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union

from lxcbind._lite import record

if TYPE_CHECKING:
    import ipaddress

__all__ = ["Decision", "EffectiveNetwork", "Egress", "EgressPlan", "EgressRule", "IPAddress",
           "IPNetwork", "Ingress", "LegacyNetwork", "Network", "NetworkHost", "Peer", "Ports",
           "PortSelector", "Proxy", "Rule", "Verdict", "carve", "egress_plan",
           "not_everything"]

IPNetwork = Union["ipaddress.IPv4Network", "ipaddress.IPv6Network"]
IPAddress = Union["ipaddress.IPv4Address", "ipaddress.IPv6Address"]
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


class EgressRule(NamedTuple):
    """One normalized egress match: destination, excluded sub-ranges, protocol, port range.

    ``protocol`` ``any`` with a port means TCP and UDP; ports are None for "all ports".
    """

    cidr: str
    excepts: tuple[str, ...]
    protocol: str
    port_min: int | None
    port_max: int | None

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


# --------------------------------------------------------------------------- egress semantics

class Ports(NamedTuple):
    """What a decision matches besides the destination.  ``protocol``: ``all`` (anything),
    ``icmp`` (ICMP towards IPv4 destinations, ICMPv6 towards IPv6 ones), ``tcp``, ``udp`` or
    ``tcpudp`` (either); ``low``/``high``: the destination port range, None for every port."""

    protocol: str
    low: int | None = None
    high: int | None = None

    @classmethod
    def of(cls, rule: EgressRule) -> Ports:
        if rule.protocol == "icmp":
            return cls("icmp")
        if rule.protocol == "any":
            return cls("all") if rule.port_min is None else \
                cls("tcpudp", rule.port_min, rule.port_max)
        return cls(rule.protocol, rule.port_min, rule.port_max)

    def matches(self, protocol: str, port: int | None) -> bool:
        """``protocol`` is ``tcp``, ``udp``, ``icmp`` (either family) or another name."""
        if self.protocol in ("all", "icmp"):
            return self.protocol == "all" or protocol == "icmp"
        if protocol not in (("tcp", "udp") if self.protocol == "tcpudp" else (self.protocol,)):
            return False
        return self.low is None or (port is not None and self.low <= port <= (self.high or port))


class Decision(NamedTuple):
    """One first-match step: traffic to ``network`` matching ``ports`` gets ``verdict``."""

    verdict: Verdict
    ports: Ports
    network: IPNetwork

    def matches(self, address: IPAddress, protocol: str, port: int | None) -> bool:
        return (address.version == self.network.version and address in self.network
                and self.ports.matches(protocol, port))


class EgressPlan(NamedTuple):
    """A container's egress policy as an ordered list: see the module docstring."""

    stateful: bool                       # replies of established connections pass first
    decisions: tuple[Decision, ...]      # first match wins
    default: Verdict

    def verdict(self, address: IPAddress, protocol: str, port: int | None = None) -> Verdict:
        """The verdict for a new connection (or datagram) to ``address``."""
        for decision in self.decisions:
            if decision.matches(address, protocol, port):
                return decision.verdict
        return self.default

    def lets_anything_out(self) -> bool:
        """Whether any traffic at all may leave (then the container's address needs NAT)."""
        return self.default == "accept" or any(d.verdict == "accept" for d in self.decisions)


# What an accept of "everything" leaves out unless a rule names it: "this network", private,
# shared (CGNAT, where some clouds put metadata: 100.100.100.200), loopback, link-local
# (169.254.169.254 is the cloud metadata service), IETF special purpose, multicast, reserved and
# broadcast; IPv6's reserved ::/8 (loopback, v4-mapped), NAT64 (a translator would reach the
# IPv4 ranges above through it), ULA (fc00::/7, so fd00:ec2::254), link- and site-local,
# multicast.
NOT_EVERYTHING_V4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                     "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "224.0.0.0/4",
                     "240.0.0.0/4")
NOT_EVERYTHING_V6 = ("::/8", "64:ff9b::/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10",
                     "fec0::/10", "ff00::/8")


@functools.lru_cache(maxsize=1)
def not_everything() -> tuple[IPNetwork, ...]:
    """The static ranges a catch-all accept does not cover (see the module docstring)."""
    import ipaddress

    return (*(ipaddress.IPv4Network(n) for n in NOT_EVERYTHING_V4),
            *(ipaddress.IPv6Network(n) for n in NOT_EVERYTHING_V6))


def _span(net: IPNetwork) -> tuple[int, int]:
    first = int(net.network_address)
    return first, first + net.num_addresses - 1


def _outside(net: IPNetwork, holes: Iterable[IPNetwork]) -> list[IPNetwork]:
    """``net`` without every hole lying strictly inside it, as the fewest CIDRs (integer
    arithmetic: ``ipaddress`` set operations cost milliseconds on every run)."""
    low, high = _span(net)
    cuts = sorted(_span(h) for h in holes if h.version == net.version and h != net
                  and low <= int(h.network_address) and _span(h)[1] <= high)
    if not cuts:
        return [net]
    bits = net.max_prefixlen
    pieces: list[IPNetwork] = []
    at = low
    for first, last in (*cuts, (high + 1, high + 1)):
        while at < first:   # the gap [at, first): aligned power-of-two blocks
            size = at & -at if at else 1 << bits
            while at + size > first:
                size >>= 1
            pieces.append(type(net)((at, bits - size.bit_length() + 1)))
            at += size
        at = max(at, last + 1)
    return pieces


def _dns_part(ports: Ports) -> Ports | None:
    """The part of ``ports`` that is DNS (TCP/UDP port 53), or None."""
    if ports.protocol == "all":
        return Ports("tcpudp", 53, 53)
    if ports.protocol in ("tcp", "udp", "tcpudp") and (
            ports.low is None or ports.low <= 53 <= (ports.high or ports.low)):
        return Ports(ports.protocol, 53, 53)
    return None


def carve(decisions: Iterable[Decision], default: Verdict, local: Sequence[IPNetwork],
          resolvers: Sequence[IPAddress] = (), to_host: bool = False
          ) -> tuple[tuple[Decision, ...], Verdict]:
    """First-match ``decisions`` + ``default`` with every accept split around the ``local``
    ranges it strictly covers (and the default accept made explicit, then drop).  DNS to a
    ``resolvers`` address an accept covered stays accepted.  ``to_host``: catch-alls (``/0``
    accepts and the default) accept nothing at all."""
    import ipaddress

    out: list[Decision] = []
    wholes: tuple[Decision, ...] = ()
    if default == "accept":
        wholes = tuple(Decision("accept", Ports("all"), ipaddress.ip_network(n))
                       for n in ("0.0.0.0/0", "::/0"))
    for decision in (*decisions, *wholes):
        verdict, ports, net = decision
        if verdict != "accept":
            out.append(decision)
            continue
        pieces = [] if to_host and net.prefixlen == 0 else _outside(net, local)
        if pieces == [net]:
            out.append(decision)
            continue
        dns = _dns_part(ports)
        if dns is not None:
            out += [Decision("accept", dns, ipaddress.ip_network(a)) for a in resolvers
                    if a.version == net.version and a in net
                    and not any(a in p for p in pieces)]
        out += [Decision("accept", ports, p) for p in pieces]
    return tuple(out), "drop" if default == "accept" else default


def egress_plan(eff: EffectiveNetwork, *, extra_deny: Iterable[EgressRule] = (),
                extra_allow: Iterable[EgressRule] = (),
                proxy_addresses: Iterable[str] = (), host_local: Iterable[IPNetwork] = (),
                resolvers: Iterable[str] = (), to_host: bool = False) -> EgressPlan:
    """``eff``'s egress policy as an ``EgressPlan``.  ``extra_deny``/``extra_allow``: the rules
    of its resolved hostnames; ``proxy_addresses``: its proxy's resolved addresses (both from
    ``lxcbind.net.ruleset.Resolved``).  ``host_local``: the host's addresses and directly
    connected networks, ``resolvers`` its DNS resolvers (``lxcbind.net.hostnets``), left out
    of catch-alls with the static ``not_everything()``; ``to_host``: the plan for traffic to
    the host itself (see ``carve``)."""
    import ipaddress

    local = (*not_everything(), *host_local)
    servers = tuple(ipaddress.ip_address(a) for a in resolvers)
    if not eff.firewall:
        # No filtering asked for: still the internet only (replies to inbound pass).
        return EgressPlan(True, *carve((), "accept", local, servers, to_host))
    if eff.proxy is not None:
        tcp = Ports("tcp", eff.proxy.port, eff.proxy.port)
        return EgressPlan(False, tuple(Decision("accept", tcp, ipaddress.ip_network(a))
                                       for a in proxy_addresses), "drop")
    default: Verdict = "accept" if eff.egress_default == "allow" else "drop"
    decisions: list[Decision] = []
    if eff.dns_exemption:
        dns = Ports("tcpudp", 53, 53)
        decisions += [Decision("accept", dns, ipaddress.ip_network(n))
                      for n in ("0.0.0.0/0", "::/0")]
    ordered: tuple[tuple[Verdict, tuple[EgressRule, ...]], ...] = (
        ("drop", (*eff.egress_deny, *extra_deny)), ("accept", (*eff.egress_allow, *extra_allow)))
    for verdict, rules in ordered:
        for rule in rules:
            ports = Ports.of(rule)
            if default != verdict:   # the except hole gets the default's verdict, first
                decisions += [Decision(default, ports, ipaddress.ip_network(e))
                              for e in rule.excepts]
            decisions.append(Decision(verdict, ports, ipaddress.ip_network(rule.cidr)))
    return EgressPlan(True, *carve(decisions, default, local, servers, to_host))
