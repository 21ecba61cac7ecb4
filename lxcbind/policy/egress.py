"""Egress semantics, written once (``egress_plan``): what an ``EffectiveNetwork``
(``lxcbind.policy.network``) lets out: "deny first, then allow, with except holes", as mxc's
``network_iptables.rs`` lowers them.  First match wins, in this order:

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

Apart from ``lxcbind.policy.network`` because only a run with a network device needs it: its
records (NamedTuples, built at import) are not on the start-up path of a run without one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from lxcbind.policy.network import EffectiveNetwork, EgressRule, IPAddress, IPNetwork, Verdict

__all__ = ["NOT_EVERYTHING_V4", "NOT_EVERYTHING_V6", "Decision", "EgressPlan", "Ports", "carve",
           "egress_plan", "not_everything"]


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
