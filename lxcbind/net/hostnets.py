"""The host's own addresses and directly connected networks, which open egress leaves out.

``lxcbind.policy.egress.carve`` keeps a catch-all accept (``egress.default: allow``, ``--net``,
an allow rule for ``0.0.0.0/0`` or ``::/0``) away from the static ``not_everything()`` ranges and
from what this module reads: every address of every interface of the host (the gateway on the
anchor included), and every network a host interface is directly on (a LAN in a public range,
such as a cloud VPC's, is not in the static list).  Read from ``/proc`` of the caller's network
namespace (the host's: the table is built there) when a run's rules are compiled; addresses the
host gains later are not in the forward rules, but the host itself is never reached through a
catch-all (``to_host``), whatever its addresses.  The host's resolvers come from ``dns``.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from lxcbind._lite import record
from lxcbind.net.dns import host_nameservers, resolv_conf_path
from lxcbind.policy.network import IPNetwork

__all__ = ["HostView", "connected_v4", "connected_v6", "host_view"]


@record
class HostView:
    """What ``egress_plan`` needs from the host: ``local`` networks (addresses as /32, /128;
    connected networks) and the ``resolvers`` a container's resolv.conf may list."""

    local: tuple[IPNetwork, ...] = ()
    resolvers: tuple[str, ...] = ()


def connected_v4(fib_trie: str) -> list[IPNetwork]:
    """Local addresses (``host LOCAL``, e.g. ``/32``, or 127.0.0.0/8) and directly connected
    networks (``link UNICAST``) in the text of ``/proc/net/fib_trie``."""
    out: list[IPNetwork] = []
    prefix = ""
    for line in fib_trie.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "|--":
            prefix = words[1]
        elif prefix and len(words) >= 3 and words[0].startswith("/") and (
                words[2] == "LOCAL" or (words[1] == "link" and words[2] == "UNICAST")):
            with contextlib.suppress(ValueError):
                net = ipaddress.IPv4Network(f"{prefix}{words[0]}", strict=False)
                if net.prefixlen and net not in out:
                    out.append(net)
    return out


def connected_v6(if_inet6: str) -> list[IPNetwork]:
    """Every address of ``/proc/net/if_inet6`` (as /128) and the network it is on."""
    out: list[IPNetwork] = []
    for line in if_inet6.splitlines():
        words = line.split()
        if len(words) < 3 or len(words[0]) != 32:
            continue
        with contextlib.suppress(ValueError):
            address = ipaddress.IPv6Address(int(words[0], 16))
            for net in (ipaddress.IPv6Network(address),
                        ipaddress.IPv6Network(f"{address}/{int(words[2], 16)}", strict=False)):
                if net.prefixlen and net not in out:
                    out.append(net)
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def host_view() -> HostView:
    """The host's addresses, connected networks and usable resolvers, now."""
    local = connected_v4(_read("/proc/net/fib_trie")) + connected_v6(_read("/proc/net/if_inet6"))
    return HostView(tuple(local), tuple(host_nameservers(resolv_conf_path())))
