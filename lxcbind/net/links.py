"""The host side of container networking: veth names, the anchor device, the address pool,
sysctls, and the nftables handle.

Kernel interface: rtnetlink in-process (an ``AF_NETLINK`` socket, a few messages), not the
``ip`` program: no fork+exec per operation, errors come back as errno values, and nothing
depends on the ``ip`` program's output format.  nftables through libnftables in-process
(``lxcbind.lxc.nftables``).  Sysctls through ``/proc/sys``.

Pool: ``LXCBIND_POOL`` or the first of ``POOL_CANDIDATES`` that overlaps no route of the host
(all routing tables, read from the kernel) and not LXC's ``lxcbr0`` range (10.0.3.0/24); an
explicit ``LXCBIND_POOL`` that overlaps is refused.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence

from lxcbind.errors import SandboxError
from lxcbind.lxc.nftables import Nft

__all__ = ["LXC_DEFAULT_RANGE", "POOL_CANDIDATES", "VETH_PREFIX", "Netlink", "choose_pool",
           "create_anchor", "delete_link", "host_routes_v4", "hwaddr", "link_exists", "open_nft",
           "sysctl", "veth_name"]

VETH_PREFIX = "lxcb"
POOL_CANDIDATES = ("10.213.0.0/16", "10.214.0.0/16", "10.215.0.0/16", "172.29.0.0/16",
                   "192.168.213.0/24")
LXC_DEFAULT_RANGE = ipaddress.ip_network("10.0.3.0/24")   # lxcbr0 of lxc-net


# -- names -------------------------------------------------------------------------------------

def veth_name(container: str) -> str:
    """Host-side veth of ``container``: ``lxcb`` + 11 base32 characters of SHA-256(name), 15
    characters (IFNAMSIZ-1).  55 bits of hash: two live containers colliding is negligible, and
    a collision makes ``start()`` fail (the name exists), never share rules."""
    digest = hashlib.sha256(container.encode()).digest()
    return VETH_PREFIX + base64.b32encode(digest).decode().lower()[:11]


def hwaddr(address: ipaddress.IPv4Address) -> str:
    # Locally administered unicast, unique per lease: 02:00 + the four address bytes.
    return "02:00:" + ":".join(f"{b:02x}" for b in address.packed)


# -- rtnetlink ---------------------------------------------------------------------------------

_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_GETROUTE = 16, 17, 20, 26
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE, _NLM_F_DUMP = 1, 4, 0x200, 0x400, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_INFO_KIND = 3, 18, 1
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF, _RTA_TABLE = 1, 4, 15
_NLA_F_NESTED = 0x8000
_IFF_UP = 1


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            return
        yield kind & 0x3FFF, data[off + 4:off + length]
        off += (length + 3) & ~3


class Netlink:
    """One NETLINK_ROUTE socket; ``request`` sends one message and waits for its ack,
    ``dump`` collects a dump's payloads."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.sock.send(struct.pack("=LHHLL", 16 + len(body), kind, flags, self.seq, 0) + body)
        return self.seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, rseq, _pid = struct.unpack_from("=LHHLL", data, off)
                payload = data[off + 16:off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return
                yield kind, payload

    def request(self, kind: int, body: bytes, flags: int = 0) -> None:
        seq = self._send(kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, body)
        for _ in self._replies(seq):
            pass

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        seq = self._send(kind, _NLM_F_REQUEST | _NLM_F_DUMP, body)
        return [payload for _, payload in self._replies(seq)]


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def create_anchor(nl: Netlink, name: str, gateway: ipaddress.IPv4Interface) -> None:
    linkinfo = _attr(_IFLA_LINKINFO | _NLA_F_NESTED, _attr(_IFLA_INFO_KIND, b"bridge"))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, _IFF_UP, _IFF_UP)
    body += _attr(_IFLA_IFNAME, name.encode() + b"\0") + linkinfo
    nl.request(_RTM_NEWLINK, body, _NLM_F_CREATE | _NLM_F_EXCL)
    index = socket.if_nametoindex(name)
    addr = gateway.ip.packed
    body = struct.pack("=BBBBI", socket.AF_INET, gateway.network.prefixlen, 0, 0, index)
    body += _attr(_IFA_LOCAL, addr) + _attr(_IFA_ADDRESS, addr)
    nl.request(_RTM_NEWADDR, body, _NLM_F_CREATE | _NLM_F_EXCL)


def delete_link(name: str) -> bool:
    """Delete network device ``name``; False if it did not exist."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return False
    with Netlink() as nl:
        try:
            nl.request(_RTM_DELLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
    return True


def host_routes_v4(exclude_devices: Sequence[str] = ()) -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 route of the host (all tables, default routes left out), with its device
    name, except those through ``exclude_devices`` and lxcbind's veths."""
    out = []
    with Netlink() as nl:
        for payload in nl.dump(_RTM_GETROUTE, struct.pack("=BBBBBBBBI", socket.AF_INET,
                                                           0, 0, 0, 0, 0, 0, 0, 0)):
            dst_len = payload[1]
            if dst_len == 0:
                continue
            dst, oif = None, 0
            for kind, value in _attrs(payload[12:]):
                if kind == _RTA_DST:
                    dst = value
                elif kind == _RTA_OIF:
                    oif = struct.unpack("=i", value[:4])[0]
            if dst is None:
                continue
            try:
                dev = socket.if_indextoname(oif) if oif else ""
            except OSError:
                dev = ""
            # A veth's /32 lies inside its anchor's pool; another installation's anchor
            # ("lxcbind0", "lxcb<id>0": shorter than a veth name) is a real clash.
            if dev in exclude_devices or (dev.startswith(VETH_PREFIX) and len(dev) == 15):
                continue
            out.append((ipaddress.IPv4Network((dst, dst_len), strict=False), dev))
    return out


def choose_pool(anchor: str) -> ipaddress.IPv4Network:
    """The address pool for a new ``anchor``: ``LXCBIND_POOL`` (verified) or the first
    candidate that clashes with no host route (but the anchor's own) and not with lxcbr0's
    range.  Raises ``SandboxError``."""
    routes = host_routes_v4(exclude_devices=(anchor,))

    def clash(net: ipaddress.IPv4Network) -> str | None:
        if net.overlaps(LXC_DEFAULT_RANGE):
            return f"LXC's lxcbr0 range {LXC_DEFAULT_RANGE}"
        for route, dev in routes:
            if net.overlaps(route):
                return f"the host route {route}" + (f" on {dev}" if dev else "")
        return None

    explicit = os.environ.get("LXCBIND_POOL")
    if explicit:
        try:
            net = ipaddress.IPv4Network(explicit)
        except ValueError as exc:
            raise SandboxError(f"network: LXCBIND_POOL={explicit!r} is not an IPv4 CIDR: {exc}") \
                from None
        if net.prefixlen > 29:
            raise SandboxError(f"network: LXCBIND_POOL={explicit} is too small")
        why = clash(net)
        if why:
            raise SandboxError(f"network: LXCBIND_POOL={explicit} overlaps {why}")
        return net
    for text in POOL_CANDIDATES:
        net = ipaddress.IPv4Network(text)
        if clash(net) is None:
            return net
    raise SandboxError("network: every candidate address pool (" + ", ".join(POOL_CANDIDATES)
                       + ") overlaps a host route; set LXCBIND_POOL to a free private range")


def sysctl(path: str, value: str) -> None:
    full = "/proc/sys/" + path
    with open(full) as f:
        if f.read().strip() == value:
            return
    with open(full, "w") as f:
        f.write(value)


def open_nft() -> Nft:
    """The nftables handle (libnftables in-process).  Raises ``SandboxError`` (fail closed)
    when libnftables cannot be used."""
    try:
        return Nft()
    except Exception as exc:  # ImportError (no libnftables in the module), NftError, OSError
        raise SandboxError(f"network: nftables is unavailable ({exc}); the network policy "
                           "cannot be enforced, so the run is refused") from None
