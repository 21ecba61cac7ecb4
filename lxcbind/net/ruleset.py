"""Network policy → nftables script for one container.  Pure logic: no root, no netlink.

``resolve_destinations`` turns the hostnames of an ``EffectiveNetwork`` into addresses (once),
failing closed where mxc does; ``compile_ruleset`` turns the policy plus those addresses into
one nft script that ``lxcbind.lxc.nftables.Nft.apply`` installs in a single transaction.
``table_name`` names the tables, ``teardown_script`` removes them.  What the egress policy
*means* is not decided here: ``lxcbind.policy.egress.egress_plan`` writes it once as ordered
first-match decisions, and this module compiles that plan.  Behaviour reference: mxc's LXC
backend (https://github.com/microsoft/mxc, ``src/backends/lxc/common/src/network_iptables.rs``
and ``network_ingress.rs``), bugs and gaps fixed as noted.

What the script builds, and why:

* **One table per container, one transaction.**  ``table inet <name>``, in the host's network
  namespace (root in the container cannot remove it; mxc's ingress chain lives in the
  container's netns, #854).  The container's veth is routed, never a bridge port
  (``lxcbind.net.network``), so every packet it sends enters the host's IP layer with
  ``iifname "<veth>"``, and every packet for it leaves with ``oifname "<veth>"``: the hooks
  recognise the container's traffic by that name, which exists before the veth does, so the
  table is installed before ``start()`` and the container's first packet is already filtered
  (the window between ``lxc-start`` and rule install in mxc is gone).  They also recognise it
  by the container's **address** (``ip saddr``/``ip daddr``): a packet claiming the
  container's address from another interface is held to the container's policy too.
  The ``from_container`` chain drops any source but the container's own address (a spoofed
  source would otherwise borrow another container's identity, or hide behind NAT).  There is
  no ``bridge`` table: its hooks only see frames on bridge ports, which no lxcbind veth is
  (measured: zero packets on a routed veth); ``teardown_script`` still deletes one of the same
  name, which earlier lxcbind versions installed beside the inet table (unused there too).
* **Idempotent, atomic re-creation.**  The table is introduced by ``add table`` + ``delete
  table`` + the full ``table { }`` block (nft 1.0.6 has no ``destroy``), all in one batch: the
  old rules are replaced with no instant of being unfiltered, and a failure applies nothing.
* **Hooks** (``priority filter``; verdicts of other tables still apply: our ``accept`` only
  means "this table does not object"):
  ``forward`` — container → elsewhere runs ``egress``; elsewhere → container runs
  ``ingress``.  ``input`` — container → the host itself (gateway address, host services, the
  host's other addresses) runs ``host_egress``, the same policy without its catch-alls (only
  rules naming a host address reach the host), after letting neighbour discovery through (mxc
  leaves INPUT open: a container could reach everything on the host).
  ``output`` — the host itself → container, governed by ``host_loopback_deny``.
* **Egress**: the plan's decisions, not emitted one by one but grouped into **interval
  sets**: consecutive decisions with the same verdict are a "run" (first-match order inside a
  run cannot change the result), and inside a run every destination with the same family and
  protocol/port selector goes into one set (collapsed, so overlaps never make nft fail).  1,000
  CIDRs with the same selector become one set and one rule; a whole family becomes
  ``meta nfproto ipv4``/``ipv6`` (only a deny can be one: an accept of everything is carved
  around the host and the non-internet ranges by ``egress_plan``, and becomes a set of what is
  left).  The run grouping keeps the plan's order exactly, except
  holes included.
* **Ports/protocols**: tcp/udp with ``port``/``endPort`` → ``tcp dport 80`` /
  ``udp dport 1000-2000``; ``any`` with a port → ``meta l4proto { tcp, udp } th dport …``;
  ``any`` without → every protocol; ``icmp`` → ``meta l4proto icmp`` for IPv4 destinations and
  ``ipv6-icmp`` for IPv6 ones.  A rule for a family the container has no address in is dead
  (that family is dropped at the source check).
* **Ingress**: ``ingress`` (forwarded to the container) and ``from_host`` (the host's own
  connections) accept established/related replies, ``from_host`` also the host's neighbour
  discovery; the rest is dropped when ``ingress_deny`` / ``host_loopback_deny``.  Permissive
  ingress (``ingress.default: allow``, ``hostLoopback: allow``, ``allowLocalNetwork: true``) is
  *implemented* here (accept), unlike mxc which refuses it; whether to offer it is the caller's
  decision.
* **Proxy mode** (``eff.proxy``, mxc "model 2"): the plan allows only tcp to the proxy's
  resolved IPv4 addresses (at most 16) on its port; everything else, IPv6 included, is
  dropped; no established or DNS exemption.  An IPv6 or loopback proxy endpoint is refused
  (``SandboxError``): the rule is IPv4-only and the container's loopback is not the host's.
* **No firewall** (0.6/0.7 without ``enforcementMode`` firewall/both): egress and ingress
  accept everything, but the source checks stay (they never block legitimate traffic).
* **Drop, not reject**, as mxc: a blocked connection times out rather than failing fast.

Resolution (``resolve_destinations``), mirroring mxc's ``resolve_host`` cases: every hostname
is looked up once (A and AAAA together); an unresolvable *allowed* host is skipped with a
warning; an unresolvable *blocked* host is fatal (``SandboxError`` naming it) under a
default-allow egress policy, and under default deny when an allow rule covers ``0.0.0.0/0``
or ``::/0`` (the host would be reachable through it), otherwise a warning (it stays blocked by
the default).  The proxy host must resolve to IPv4 (none → fatal, IPv6 only → fatal, more than
16 → warning, first 16 kept).  Nothing is re-resolved later (mxc's roadmap, item 23).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lxcbind._lite import lazy_re, record
from lxcbind.errors import SandboxError
from lxcbind.net.hostnets import HostView
from lxcbind.policy.egress import Decision, EgressPlan, Ports, egress_plan
from lxcbind.policy.network import EffectiveNetwork, EgressRule, IPAddress, IPNetwork

__all__ = ["MAX_PROXY_ADDRESSES", "TABLE_FAMILIES", "TABLE_PREFIX", "Resolved", "compile_ruleset",
           "resolve_destinations", "table_name", "teardown_script"]

TABLE_PREFIX = "lxcbind_"
TABLE_FAMILIES = ("inet",)
# Deleted with a container's table: earlier lxcbind versions also made a (never matching)
# bridge table of that name; gc and teardown then clean up after an upgrade.
_OLD_FAMILIES = ("bridge",)
MAX_PROXY_ADDRESSES = 16
_NO_HOST_VIEW = HostView()   # only the static ranges are left out of catch-alls

Resolver = Callable[..., Sequence[Any]]

_IFNAME = lazy_re(r"[A-Za-z0-9_.-]{1,15}")   # IFNAMSIZ - 1; nothing nft would need to quote
_INSTALLATION = lazy_re(r"[a-z0-9]{1,16}")
_TABLE = lazy_re(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Neighbour discovery a node needs to talk to its neighbour at all (hop limit 255 proves it
# was not forwarded), and the MLD reports a link-local IPv6 stack sends when it comes up.
_ND_OUT = "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }"
_ND_IN = "{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }"
_MLD_REPORTS = "{ mld-listener-report, mld-listener-done, mld2-listener-report }"


def table_name(container_name: str, installation: str = "") -> str:
    """The nftables table name for a container: ``lxcbind_`` + 16 base32 characters of
    SHA-256(name) (80 bits), or with an ``installation`` id ``lxcbind<installation>_`` + the
    same.  Stable across runs, never truncated from the name itself, so two containers cannot
    share (and tear down) one table.  ``installation`` (``leases.installation_id()``) keeps
    the tables of two lxcbind state directories on one host apart, so one's ``gc`` never takes
    the other's live tables for leftovers; the tagged names also do not start with
    ``lxcbind_``, which older lxcbind versions' ``gc`` deleted wholesale."""
    if installation and not _INSTALLATION.fullmatch(installation):
        raise ValueError(f"invalid installation id {installation!r}")
    digest = hashlib.sha256(container_name.encode("utf-8", "surrogateescape")).digest()
    prefix = f"lxcbind{installation}_" if installation else TABLE_PREFIX
    return prefix + base64.b32encode(digest).decode("ascii").lower()[:16]


def teardown_script(table: str) -> str:
    """A script that removes a container's table (and the bridge table older versions made
    beside it) in one transaction; a missing table is not an error."""
    _check_table(table)
    return "".join(f"add table {fam} {table}\ndelete table {fam} {table}\n"
                   for fam in TABLE_FAMILIES + _OLD_FAMILIES)


# --------------------------------------------------------------------------- resolution

@record
class Resolved:
    """Hostnames of an ``EffectiveNetwork`` turned into addresses, once.

    ``deny``/``allow`` are extra rules (all protocols and ports, one host route per address)
    for the legacy ``blockedHosts``/``allowedHosts`` names; ``proxy_addresses`` the proxy's
    IPv4 addresses (at most 16); ``hosts`` every name looked up with what it gave (for logs and
    the proxy hosts pin); ``warnings`` what the caller should show.
    """

    deny: tuple[EgressRule, ...] = ()
    allow: tuple[EgressRule, ...] = ()
    proxy_addresses: tuple[str, ...] = ()
    hosts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    warnings: tuple[str, ...] = ()


def _lookup(host: str, resolver: Resolver) -> tuple[IPAddress, ...]:
    try:
        infos = resolver(host, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return ()
    found: list[IPAddress] = []
    for info in infos:
        try:
            addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except (ValueError, IndexError, TypeError):
            continue
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr not in found:
            found.append(addr)
    return tuple(found)


def _host_rules(addrs: Iterable[IPAddress]) -> list[EgressRule]:
    return [EgressRule(str(ipaddress.ip_network(a)), (), "any", None, None) for a in addrs]


def _covers_everything(rules: Iterable[EgressRule]) -> bool:
    return any(ipaddress.ip_network(r.cidr).prefixlen == 0 for r in rules)


def resolve_destinations(eff: EffectiveNetwork,
                         resolver: Resolver = socket.getaddrinfo) -> Resolved:
    """Resolve the hostnames ``eff`` names (legacy host lists, proxy host), once each.

    ``resolver`` has ``socket.getaddrinfo``'s signature (tests pass a fake one).

    Raises:
        SandboxError: a fail-closed case (see the module docstring); the message names the host.
    """
    if not eff.firewall:
        return Resolved()
    cache: dict[str, tuple[IPAddress, ...]] = {}

    def lookup(host: str) -> tuple[IPAddress, ...]:
        if host not in cache:
            cache[host] = _lookup(host, resolver)
        return cache[host]

    warnings: list[str] = []
    if eff.proxy is not None:
        proxy_addrs = _resolve_proxy(eff, lookup, warnings)
        return Resolved(proxy_addresses=proxy_addrs,
                        hosts=tuple((h, tuple(map(str, a))) for h, a in cache.items()),
                        warnings=tuple(warnings))

    deny: list[EgressRule] = []
    for host in eff.unresolved_deny:
        addrs = lookup(host)
        if addrs:
            deny += _host_rules(addrs)
        elif eff.egress_default == "allow":
            raise SandboxError(f"network policy: cannot resolve blocked host {host!r}; under a "
                               "default-allow egress policy it would stay reachable, so the "
                               "sandbox is not started")
        elif _covers_everything(eff.egress_allow):
            raise SandboxError(f"network policy: cannot resolve blocked host {host!r}; an allow "
                               "rule covers every address (0.0.0.0/0 or ::/0), so it would stay "
                               "reachable; the sandbox is not started")
        else:
            warnings.append(f"could not resolve blocked host {host!r}; it stays blocked by the "
                            "default deny")
    allow: list[EgressRule] = []
    for host in eff.unresolved_allow:
        addrs = lookup(host)
        if addrs:
            allow += _host_rules(addrs)
        else:
            warnings.append(f"could not resolve allowed host {host!r}; skipped")
    return Resolved(tuple(deny), tuple(allow), (),
                    tuple((h, tuple(map(str, a))) for h, a in cache.items()), tuple(warnings))


def _resolve_proxy(eff: EffectiveNetwork, lookup: Callable[[str], tuple[IPAddress, ...]],
                   warnings: list[str]) -> tuple[str, ...]:
    assert eff.proxy is not None
    host = eff.proxy.host.strip("[]")
    where = eff.proxy.source
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if isinstance(literal, ipaddress.IPv6Address) and literal.ipv4_mapped is not None:
            literal = literal.ipv4_mapped
        addrs: tuple[IPAddress, ...] = (literal,)
        if literal.version == 6:
            raise SandboxError(f"{where}: IPv6 proxy endpoint {host} is not supported (the proxy "
                               "rule is IPv4-only); use an IPv4 address or a name with an A "
                               "record")
    else:
        addrs = lookup(host)
        if not addrs:
            raise SandboxError(f"{where}: could not resolve network proxy host {host!r}")
    v4 = [a for a in addrs if a.version == 4]
    if not v4:
        raise SandboxError(f"{where}: proxy host {host!r} resolves only to IPv6 "
                           f"({', '.join(map(str, addrs))}); the proxy rule is IPv4-only")
    if any(a.is_loopback for a in v4):
        raise SandboxError(f"{where}: proxy host {host!r} is a loopback address, which a "
                           "container cannot reach (its loopback is not the host's)")
    if len(v4) > MAX_PROXY_ADDRESSES:
        warnings.append(f"proxy host {host!r} resolves to {len(v4)} IPv4 addresses; only the "
                        f"first {MAX_PROXY_ADDRESSES} are allowed")
        v4 = v4[:MAX_PROXY_ADDRESSES]
    return tuple(str(a) for a in v4)


# --------------------------------------------------------------------------- compilation

def _ports_name(ports: Ports) -> str:
    if ports.low is None:
        return ports.protocol
    lo, hi = ports.low, ports.high
    return f"{ports.protocol}_{lo}" if lo == hi else f"{ports.protocol}_{lo}_{hi}"


def _ports_match(ports: Ports, version: int) -> str:
    if ports.protocol == "all":
        return ""
    if ports.protocol == "icmp":
        return "meta l4proto icmp" if version == 4 else "meta l4proto ipv6-icmp"
    if ports.low is None:
        return f"meta l4proto {ports.protocol}"
    lo, hi = ports.low, ports.high
    span = str(lo) if lo == hi else f"{lo}-{hi}"
    if ports.protocol == "tcpudp":
        return f"meta l4proto {{ tcp, udp }} th dport {span}"
    return f"{ports.protocol} dport {span}"


def _element(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _set_block(name: str, version: int, nets: Sequence[IPNetwork], indent: str) -> list[str]:
    kind = "ipv4_addr" if version == 4 else "ipv6_addr"
    elems = [_element(n) for n in nets]
    lines = [f"{indent}set {name} {{", f"{indent}    type {kind}", f"{indent}    flags interval",
             f"{indent}    elements = {{"]
    for i in range(0, len(elems), 6):
        tail = "," if i + 6 < len(elems) else ""
        lines.append(f"{indent}        {', '.join(elems[i:i + 6])}{tail}")
    lines += [f"{indent}    }}", f"{indent}}}"]
    return lines


@record(frozen=False)
class _Run:
    verdict: str
    groups: dict[tuple[int, Ports], list[IPNetwork]]


def _runs(decisions: Iterable[Decision]) -> list[_Run]:
    """Group first-match decisions into maximal runs of one verdict (order inside a run is
    irrelevant), each run keyed by (IP version, ports)."""
    runs: list[_Run] = []
    for verdict, ports, net in decisions:
        if not runs or runs[-1].verdict != verdict:
            runs.append(_Run(verdict, {}))
        runs[-1].groups.setdefault((net.version, ports), []).append(net)
    return runs


def _check_table(table: str) -> None:
    if not _TABLE.fullmatch(table):
        raise ValueError(f"invalid nftables table name {table!r}")


def _addr(value: Any, version: int, what: str) -> IPAddress | None:
    if value is None or value == "":
        return None
    addr = ipaddress.ip_address(str(value))
    if addr.version != version:
        raise ValueError(f"{what} must be an IPv{version} address, got {value!r}")
    return addr


def _egress_lines(plan: EgressPlan, tag: str, sets: list[str]) -> list[str]:
    """The rule lines of one egress chain for ``plan`` (its sets appended to ``sets``, named
    with ``tag`` so two chains' sets never clash); the last line is the default verdict."""
    i1, i2 = "    ", "        "
    lines = [f"{i2}ct state established,related accept"] if plan.stateful else []
    for n, run in enumerate(_runs(plan.decisions)):
        lines.append(f"{i2}# run {n}: {run.verdict}")
        for (version, ports), nets in run.groups.items():
            nets = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
            match = _ports_match(ports, version)
            match = f" {match}" if match else ""
            if nets[0].prefixlen == 0:
                dest = f"meta nfproto ipv{version}"
            else:
                name = f"{tag}{run.verdict}{n}_v{version}_{_ports_name(ports)}"
                sets += _set_block(name, version, nets, i1)
                dest = f"{'ip' if version == 4 else 'ip6'} daddr @{name}"
            lines.append(f"{i2}{dest}{match} {run.verdict}")
    lines.append(f"{i2}{plan.default}")
    return lines


def compile_ruleset(*, table: str, veth: str,
                    container_v4: str | ipaddress.IPv4Address | None,
                    container_v6: str | ipaddress.IPv6Address | None,
                    gateway_v4: str | ipaddress.IPv4Address | None,
                    gateway_v6: str | ipaddress.IPv6Address | None,
                    eff: EffectiveNetwork, resolved: Resolved,
                    host: HostView = _NO_HOST_VIEW) -> str:
    """The nft script enforcing ``eff`` for the container behind host-side interface ``veth``.

    Apply it with ``Nft.apply`` (one transaction, idempotent); remove it with
    ``teardown_script(table)``.  ``gateway_*`` only label the script (the whole host is
    covered by the ``input`` hook, whatever its addresses).  ``host``: the host's addresses,
    connected networks and resolvers (``hostnets.host_view()``), which catch-all accepts leave
    out (the static ranges are left out always).

    Raises:
        ValueError: a malformed table, interface name or address.
        SandboxError: proxy mode without a resolved IPv4 proxy address.
    """
    _check_table(table)
    if not _IFNAME.fullmatch(veth) or veth in (".", ".."):
        raise ValueError(f"invalid interface name {veth!r}")
    c4 = _addr(container_v4, 4, "container_v4")
    c6 = _addr(container_v6, 6, "container_v6")
    g4 = _addr(gateway_v4, 4, "gateway_v4")
    g6 = _addr(gateway_v6, 6, "gateway_v6")
    if eff.proxy is not None and eff.firewall and not resolved.proxy_addresses:
        raise SandboxError("network policy: proxy mode needs the proxy's resolved IPv4 "
                           "addresses (call resolve_destinations first)")

    i1, i2 = "    ", "        "

    def plan(to_host: bool) -> EgressPlan:
        return egress_plan(eff, extra_deny=resolved.deny, extra_allow=resolved.allow,
                           proxy_addresses=resolved.proxy_addresses, host_local=host.local,
                           resolvers=host.resolvers, to_host=to_host)

    sets: list[str] = []
    egress = _egress_lines(plan(False), "", sets)
    host_egress = _egress_lines(plan(True), "h", sets)
    if eff.firewall and eff.proxy is not None:
        note = f"{i2}# proxy mode: only the proxy endpoint ({eff.proxy.source})"
        egress.insert(0, note)
        host_egress.insert(0, note)
    why = f"egress default: {eff.egress_default}" if eff.firewall else \
        "no firewall requested (0.6/0.7 capabilities mode)"
    egress[-1] += f"   # {why}"
    host_egress[-1] += "   # the host itself: only what names it"

    ingress_verdict = "drop" if (eff.firewall and eff.ingress_deny) else "accept"
    host_verdict = "drop" if (eff.firewall and eff.host_loopback_deny) else "accept"

    source_checks = [f"{i2}ip saddr != {c4} drop" if c4 else f"{i2}meta nfproto ipv4 drop",
                     f"{i2}ip6 saddr != {c6} drop" if c6 else f"{i2}meta nfproto ipv6 drop"]
    by_source = [f"{i2}ip saddr {c4}" if c4 else None, f"{i2}ip6 saddr {c6}" if c6 else None]
    by_dest = [f"{i2}ip daddr {c4}" if c4 else None, f"{i2}ip6 daddr {c6}" if c6 else None]

    def classify(iface: str, selectors: list[str | None], chain: str) -> list[str]:
        return [f"{i2}{iface} \"{veth}\" jump {chain}"] + [
            f"{s} jump {chain}" for s in selectors if s]

    label = ", ".join(f"{k} {v}" for k, v in (("container", c4), ("container", c6),
                                                ("gateway", g4), ("gateway", g6)) if v)
    lines = [
        f"# lxcbind network policy for host interface {veth}" + (f" ({label})" if label else ""),
        f"add table inet {table}",
        f"delete table inet {table}",
        "",
        f"table inet {table} {{",
        *sets,
        f"{i1}chain forward {{",
        f"{i2}type filter hook forward priority filter; policy accept;",
        *classify("iifname", by_source, "from_container"),
        *classify("oifname", by_dest, "ingress"),
        f"{i1}}}",
        f"{i1}chain input {{",
        f"{i2}type filter hook input priority filter; policy accept;",
        *classify("iifname", by_source, "to_host"),
        f"{i1}}}",
        f"{i1}chain output {{",
        f"{i2}type filter hook output priority filter; policy accept;",
        *classify("oifname", by_dest, "from_host"),
        f"{i1}}}",
        f"{i1}chain to_host {{",
        f"{i2}# neighbour discovery with the host (never forwarded: hop limit 255)",
        f"{i2}icmpv6 type {_ND_OUT} ip6 hoplimit 255 accept",
        f"{i2}ip6 saddr {{ fe80::/10, :: }} icmpv6 type {_MLD_REPORTS} ip6 hoplimit 1 accept",
        *source_checks,
        f"{i2}goto host_egress",
        f"{i1}}}",
        f"{i1}chain from_container {{",
        f"{i2}# only the container's own addresses (no spoofed source gets further)",
        *source_checks,
        f"{i2}goto egress",
        f"{i1}}}",
        f"{i1}chain egress {{",
        *egress,
        f"{i1}}}",
        f"{i1}chain host_egress {{",
        *host_egress,
        f"{i1}}}",
        f"{i1}chain ingress {{",
        f"{i2}ct state established,related accept",
        f"{i2}{ingress_verdict}   # inbound from other hosts and containers",
        f"{i1}}}",
        f"{i1}chain from_host {{",
        f"{i2}ct state established,related accept",
        f"{i2}icmpv6 type {_ND_IN} ip6 hoplimit 255 accept",
        f"{i2}{host_verdict}   # connections opened by the host itself",
        f"{i1}}}",
        "}",
        "",
    ]
    return "\n".join(lines)
