"""Name resolution inside a container: its ``resolv.conf`` (only the host's resolvers the egress
policy lets through) and the ``/etc/hosts`` pin of a proxy's name (mxc's ``#mxc-proxy-pin``)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path

from lxcbind.net.etcfiles import read_etc_file, write_etc_file
from lxcbind.policy.egress import EgressPlan

__all__ = ["PIN_MARKER", "host_nameservers", "pin_hosts", "resolv_conf", "resolv_conf_path",
           "unpin_hosts"]


def resolv_conf_path() -> str:
    """Where the host's resolvers are read from (``LXCBIND_RESOLV_CONF`` overrides, read at
    each run: tests point it at a file naming their own resolvers)."""
    return os.environ.get("LXCBIND_RESOLV_CONF", "/etc/resolv.conf")


def host_nameservers(path: str) -> list[str]:
    """IPv4 ``nameserver`` entries of ``path`` a container could reach (not loopback)."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    ip = ipaddress.ip_address(parts[1])
                except ValueError:
                    continue
                if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified:
                    out.append(str(ip))
    return out


def resolv_conf(plan: EgressPlan, path: str | None = None) -> str:
    """The container's /etc/resolv.conf: the host's resolvers (from ``path``) the egress
    ``plan`` lets the container query (UDP or TCP port 53), none when it lets none."""
    allowed = [ns for ns in host_nameservers(path or resolv_conf_path())
               if any(plan.verdict(ipaddress.ip_address(ns), proto, 53) == "accept"
                      for proto in ("udp", "tcp"))]
    if not allowed:
        return "# lxcbind: the network policy allows no DNS resolver\n"
    return "# lxcbind: the host's resolvers the network policy allows\n" + "".join(
        f"nameserver {ns}\n" for ns in allowed[:3])


PIN_MARKER = "#mxc-proxy-pin"            # mxc's marker: scripts written for mxc grep it
_PIN_MARKERS = (PIN_MARKER, "# lxcbind-proxy-pin")   # the second: lxcbind before it matched


def _is_pin(line: str) -> bool:
    return line.rstrip().endswith(_PIN_MARKERS)


def pin_hosts(text: str, host: str, address: str) -> str:
    """``/etc/hosts`` content with one ``<address> <host> #mxc-proxy-pin`` line (stale pins of
    either marker removed)."""
    lines = [ln for ln in text.splitlines() if not _is_pin(ln)]
    lines.append(f"{address} {host} {PIN_MARKER}")
    return "\n".join(lines) + "\n"


def unpin_hosts(rootfs_path: str) -> bool:
    """Remove every proxy pin (either marker) from a stopped container's ``/etc/hosts``, so a
    reused container never resolves a name to an address the current policy did not
    authorize.  Returns whether a pin was removed."""
    text = read_etc_file(rootfs_path, "hosts")
    if not any(_is_pin(ln) for ln in text.splitlines()):
        return False
    kept = [ln for ln in text.splitlines() if not _is_pin(ln)]
    write_etc_file(rootfs_path, "hosts", "\n".join(kept) + "\n" if kept else "")
    return True
