"""Container networking: routed veths, address leases, per-container nft tables, DNS.

Topology (why not a bridge).  Each networked container gets one veth pair whose host end is a
plain layer-3 interface (liblxc's ``lxc.net.0.veth.mode = router``), named before start
(``lxcb`` + 11 characters of a hash of the container name).  liblxc adds the host route to the
container's /32 and the container's default route via the gateway.  Every packet a container
sends therefore enters the host on *its own* veth: the per-container ``inet`` table
(``netrules``) matches ``iifname``/``oifname`` of that veth in its forward, input and output
hooks, and is installed before ``start()``, so the first packet is already filtered.
With a bridge, routed traffic would enter the IP layer with ``iifname`` = the bridge, so rules
keyed on the veth would match nothing (mxc's bug fixed in #798), and port-to-port frames would
bypass the inet hooks unless ``br_netfilter`` is loaded.  Routed veths need neither
``br_netfilter`` nor port isolation: two containers share no layer-2 segment at all, so
container-to-container traffic is routed through the host and filtered by both tables.

The *anchor* (``ANCHOR``, default ``lxcbind0``, ``lxcb<installation id>0`` for another
``LXCBIND_STATE_DIR``, env ``LXCBIND_BRIDGE``) is a bridge with no
ports (a ``bridge`` because it is always built into kernels that run LXC; ``dummy`` often is
not), holding the gateway address (first address of the pool, e.g. 10.213.0.1/16): the host answers
the containers' ARP for it, delivers packets to it locally (input hook, where the container's
table applies its host-traffic rules), and the pool's connected route makes the host drop
packets for pool addresses nobody leases instead of sending them out of the default route.
It is created by the first networked run and deleted by the last (the reference count is the
lease table, read under the lock), together with the pool choice.

Pool: ``LXCBIND_POOL`` or the first of ``POOL_CANDIDATES`` that overlaps no route of the host
(all routing tables, read from the kernel) and not LXC's ``lxcbr0`` range (10.0.3.0/24); an
explicit ``LXCBIND_POOL`` that overlaps is refused.  IPv4 only: giving containers IPv6 would
need the machine-wide ``net.ipv6.conf.all.forwarding=1``, which also turns off router
advertisements on every host interface.  Containers keep only a link-local IPv6 address; the
inet table filters IPv6 towards the host like IPv4, and nothing is forwarded.

Leases: ``<STATE_DIR>/net/leases.json`` maps container name → address, veth and runner, changed
only under ``flock`` of ``<STATE_DIR>/net/lock``.

Kernel interface: rtnetlink in-process (``AF_NETLINK`` socket, a few messages), not the ``ip``
program: no fork+exec per operation, errors come back as errno values, and nothing depends on
the ``ip`` program's output format.  nftables through ``nft`` (libnftables in-process).
Sysctls through ``/proc/sys``.  The only machine-wide setting lxcbind changes is
``net.ipv4.ip_forward=1`` (set when a networked run starts; never reset, other software may
have come to rely on it).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxcbind import state as _hoststate  # ("state" is a local name here: the lease file)
from lxcbind.errors import LxcbindError, SandboxError
from lxcbind.net.ruleset import Resolved
from lxcbind.policy.network import EffectiveNetwork, EgressPlan, egress_plan


def installation_id() -> str:
    """6 base32 characters of SHA-256 of the state directory's real path: the tag in this
    installation's table names (another ``LXCBIND_STATE_DIR`` on the host has another one)."""
    path = os.path.realpath(_hoststate.STATE_DIR)
    digest = hashlib.sha256(os.fsencode(path)).digest()
    return base64.b32encode(digest).decode().lower()[:6]


def _default_anchor() -> str:
    # Another state directory is another installation: its own anchor (and so its own pool
    # and NAT table), never the one whose leases it cannot see (it would delete it as stale).
    if os.path.realpath(_hoststate.STATE_DIR) == os.path.realpath(DEFAULT_STATE_DIR):
        return "lxcbind0"
    return f"lxcb{installation_id()}0"


DEFAULT_STATE_DIR = "/var/lib/lxcbind"
ANCHOR = os.environ.get("LXCBIND_BRIDGE") or _default_anchor()
VETH_PREFIX = "lxcb"
POOL_CANDIDATES = ("10.213.0.0/16", "10.214.0.0/16", "10.215.0.0/16", "172.29.0.0/16",
                   "192.168.213.0/24")
LXC_DEFAULT_RANGE = ipaddress.ip_network("10.0.3.0/24")   # lxcbr0 of lxc-net
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY")


def resolv_conf_path() -> str:
    """Where the host's resolvers are read from (``LXCBIND_RESOLV_CONF`` overrides, read at
    each run: tests point it at a file naming their own resolvers)."""
    return os.environ.get("LXCBIND_RESOLV_CONF", "/etc/resolv.conf")


def net_dir() -> Path:
    return _hoststate.STATE_DIR / "net"


# -- names -------------------------------------------------------------------------------------

def veth_name(container: str) -> str:
    """Host-side veth of ``container``: ``lxcb`` + 11 base32 characters of SHA-256(name), 15
    characters (IFNAMSIZ-1).  55 bits of hash: two live containers colliding is negligible, and
    a collision makes ``start()`` fail (the name exists), never share rules."""
    digest = hashlib.sha256(container.encode()).digest()
    return VETH_PREFIX + base64.b32encode(digest).decode().lower()[:11]


def _hwaddr(address: ipaddress.IPv4Address) -> str:
    # Locally administered unicast, unique per lease: 02:00 + the four address bytes.
    return "02:00:" + ":".join(f"{b:02x}" for b in address.packed)


# -- rtnetlink -------------------------------------------------------------------------------------

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


class _Netlink:
    """One NETLINK_ROUTE socket; ``request`` sends one message and waits for its ack,
    ``dump`` collects a dump's payloads."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Netlink:
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


def _create_anchor(nl: _Netlink, name: str, gateway: ipaddress.IPv4Interface) -> None:
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
    with _Netlink() as nl:
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
    with _Netlink() as nl:
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


def choose_pool() -> ipaddress.IPv4Network:
    """The address pool for a new anchor: ``LXCBIND_POOL`` (verified) or the first candidate
    that clashes with no host route and not with lxcbr0's range.  Raises ``SandboxError``."""
    routes = host_routes_v4(exclude_devices=(ANCHOR,))

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


def _sysctl(path: str, value: str) -> None:
    full = "/proc/sys/" + path
    with open(full) as f:
        if f.read().strip() == value:
            return
    with open(full, "w") as f:
        f.write(value)


# -- leases ------------------------------------------------------------------------------------

@dataclass
class Lease:
    """One container's network identity, valid while its lease is in ``leases.json``."""

    container: str
    address: str          # IPv4 of the container
    gateway: str          # the anchor's address
    prefix: int           # the pool's prefix length
    veth: str
    runner_pid: int = 0
    runner_start: int = 0
    lxcpath: str = ""

    def runner_alive(self) -> bool:
        return _hoststate.process_start_time(self.runner_pid) == self.runner_start

    @property
    def config(self) -> list[tuple[str, str]]:
        """liblxc config items for the container's only network device (applied after
        rootfs' ``lxc.net.0.type=empty``, so they replace it)."""
        ip = ipaddress.IPv4Address(self.address)
        return [
            ("lxc.net.0.type", "veth"),
            ("lxc.net.0.veth.mode", "router"),
            ("lxc.net.0.veth.pair", self.veth),
            ("lxc.net.0.name", "eth0"),
            ("lxc.net.0.flags", "up"),
            ("lxc.net.0.hwaddr", _hwaddr(ip)),
            ("lxc.net.0.ipv4.address", f"{self.address}/32"),
            ("lxc.net.0.ipv4.gateway", self.gateway),
        ]


class _NetLock:
    """flock of ``<STATE_DIR>/net/lock``: leases, the pool and the anchor change only under it."""

    def __enter__(self) -> _NetLock:
        d = net_dir()
        d.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _load_state() -> dict[str, Any]:
    try:
        data = json.loads((net_dir() / "leases.json").read_text())
        if isinstance(data, dict) and isinstance(data.get("leases"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"pool": None, "leases": {}}


def _save_state(state: dict[str, Any]) -> None:
    path = net_dir() / "leases.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def leases() -> dict[str, Lease]:
    """The current leases by container name (a snapshot)."""
    with _NetLock():
        return {k: Lease(**v) for k, v in _load_state()["leases"].items()}


def allocate(container: str, lxcpath: str = "") -> Lease:
    """Lease an address for ``container`` (creating the anchor and choosing the pool when it is
    the first), and make sure IPv4 forwarding is on.  Raises ``SandboxError``."""
    with _NetLock():
        state = _load_state()
        if container in state["leases"]:
            # A previous run of this name left it (it is gc's to release; the container lock
            # we hold says that run is over): take it over rather than leak it.
            del state["leases"][container]
        if not state["leases"] or not state.get("pool") or not link_exists(ANCHOR):
            pool = _recreate_anchor(state)
        else:
            pool = ipaddress.IPv4Network(state["pool"])
        gateway = pool.network_address + 1
        used = {ipaddress.IPv4Address(v["address"]) for v in state["leases"].values()}
        address = None
        for candidate in pool.hosts():
            if candidate != gateway and candidate not in used:
                address = candidate
                break
        if address is None:
            raise SandboxError(f"network: the address pool {pool} is exhausted "
                               f"({len(used)} leases)")
        pid = os.getpid()
        lease = Lease(container, str(address), str(gateway), pool.prefixlen,
                      veth_name(container), pid, _hoststate.process_start_time(pid) or 0, lxcpath)
        state["leases"][container] = lease.__dict__.copy()
        _save_state(state)
    try:
        _sysctl("net/ipv4/ip_forward", "1")
    except OSError as exc:
        release(container)
        raise SandboxError(f"network: cannot enable net.ipv4.ip_forward: {exc}") from None
    return lease


def _recreate_anchor(state: dict[str, Any]) -> ipaddress.IPv4Network:
    """(Re)create the anchor with a freshly verified pool; called under the lock when no
    lease is live (or the anchor vanished)."""
    if link_exists(ANCHOR):
        if state["leases"]:
            raise SandboxError(f"network: {ANCHOR} exists but is not lxcbind's anchor")
        delete_link(ANCHOR)  # left by a runner killed between its last release and the delete
    pool = choose_pool()
    if state["leases"]:
        # The anchor vanished under live leases (someone deleted it): their addresses come
        # from the old pool; keep it if it is still free, else refuse.
        old = ipaddress.IPv4Network(state["pool"])
        if old != pool:
            raise SandboxError(f"network: {ANCHOR} was removed while runs use {old}")
    try:
        with _Netlink() as nl:
            _create_anchor(nl, ANCHOR, ipaddress.IPv4Interface(
                f"{pool.network_address + 1}/{pool.prefixlen}"))
        with _nft() as nft:
            _create_nat(nft)
    except (OSError, SandboxError, LxcbindError) as exc:
        with contextlib.suppress(OSError):
            delete_link(ANCHOR)
        raise SandboxError(f"network: cannot create the anchor device {ANCHOR} and its NAT "
                           f"table: {getattr(exc, 'strerror', None) or exc}") from None
    state["pool"] = str(pool)
    return pool


def release(container: str) -> None:
    """Drop ``container``'s lease (if any); the last one out deletes the anchor and the NAT
    table.  The caller has already stopped the container and deleted its table.  Idempotent."""
    with _NetLock():
        state = _load_state()
        gone = state["leases"].pop(container, None)
        if not state["leases"]:
            with _nft() as nft:
                nft.delete_table("ip", nat_table())
            delete_link(ANCHOR)
            state["pool"] = None
        elif gone:
            with _nft() as nft:
                nat_remove(nft, gone["address"])
        _save_state(state)


# -- outbound NAT ------------------------------------------------------------------------------

def nat_table() -> str:
    """The anchor's NAT table (``ip`` family): one set of container addresses to masquerade."""
    return re.sub(r"[^A-Za-z0-9_]", "_", ANCHOR) + "_nat"


def _create_nat(nft: Any) -> None:
    # Masquerade only what leaves towards a non-container interface: container-to-container
    # traffic keeps its source (the other container's ingress rules see who it is).
    t = nat_table()
    nft.apply(f"add table ip {t}\ndelete table ip {t}\n"
              f"table ip {t} {{\n"
              "    set sources { type ipv4_addr; }\n"
              "    chain postrouting {\n"
              "        type nat hook postrouting priority srcnat; policy accept;\n"
              f"        ip saddr @sources oifname != \"{VETH_PREFIX}*\" masquerade\n"
              "    }\n}\n")


def nat_add(nft: Any, address: str) -> None:
    nft.apply(f"add element ip {nat_table()} sources {{ {ipaddress.IPv4Address(address)} }}\n")


def nat_remove(nft: Any, address: str) -> None:
    with contextlib.suppress(Exception):  # not a member (the policy needed no NAT)
        nft.apply(f"delete element ip {nat_table()} sources "
                  f"{{ {ipaddress.IPv4Address(address)} }}\n")


def off_host(eff: EffectiveNetwork, resolved: Resolved | None) -> bool:
    """Whether the policy lets the container reach anything beyond this host (then its
    address is masqueraded: the pool is private to the host)."""
    return _plan(eff, resolved).lets_anything_out()


def _plan(eff: EffectiveNetwork, resolved: Resolved | None) -> EgressPlan:
    if resolved is None:
        return egress_plan(eff)
    return egress_plan(eff, extra_deny=resolved.deny, extra_allow=resolved.allow,
                       proxy_addresses=resolved.proxy_addresses)


def _warn(message: str) -> None:
    logging.getLogger("lxcbind").warning("%s", message)


# -- the container's resolv.conf and proxy variables ------------------------------------------

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


def resolv_conf(eff: EffectiveNetwork, resolved: Resolved | None = None,
                path: str | None = None) -> str:
    """The container's /etc/resolv.conf: the host's resolvers the policy lets the container
    query (UDP or TCP port 53), none when it lets none."""
    plan = _plan(eff, resolved)
    allowed = [ns for ns in host_nameservers(path or resolv_conf_path())
               if any(plan.verdict(ipaddress.ip_address(ns), proto, 53) == "accept"
                      for proto in ("udp", "tcp"))]
    if not allowed:
        return "# lxcbind: the network policy allows no DNS resolver\n"
    return "# lxcbind: the host's resolvers the network policy allows\n" + "".join(
        f"nameserver {ns}\n" for ns in allowed[:3])


def proxy_env(eff: EffectiveNetwork) -> dict[str, str]:
    """Proxy mode: every proxy variable (both cases) set to the URL, ``NO_PROXY`` empty."""
    if eff.proxy is None:
        return {}
    env = {}
    for var in PROXY_VARS:
        env[var] = env[var.lower()] = eff.proxy.url
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


# -- files inside the container ---------------------------------------------------------------

def overlay_layers(rootfs_path: str) -> tuple[str, str] | None:
    """(lower, upper) of an ``overlay:<lower>:<upper>`` rootfs path (liblxc hands the value
    back without the ``overlay:`` prefix), else None."""
    rest = rootfs_path[len("overlay:"):] if rootfs_path.startswith("overlay:") else rootfs_path
    lower, sep, upper = rest.rpartition(":")
    if not sep or not os.path.isabs(lower) or not os.path.isabs(upper):
        return None
    return lower, upper


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_etc(layer: str, *, create_from: str | None = None) -> int | None:
    """A descriptor of ``<layer>/etc``, never through a symlink: a kept container's root may
    have replaced its ``/etc`` by a symlink, which would resolve on the host.  None when it is
    missing (or, with ``create_from``, created with that directory's mode and owner)."""
    top = os.open(layer, _DIR_FLAGS)
    try:
        try:
            return os.open("etc", _DIR_FLAGS, dir_fd=top)
        except FileNotFoundError:
            if create_from is None:
                return None
        st = os.stat(create_from)
        os.mkdir("etc", st.st_mode & 0o7777, dir_fd=top)
        fd = os.open("etc", _DIR_FLAGS, dir_fd=top)
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, st.st_mode & 0o7777)
        return fd
    finally:
        os.close(top)


def write_etc_file(rootfs_path: str, name: str, content: str) -> None:
    """Write ``/etc/<name>`` of a stopped container by putting it in the overlay's upper layer
    (it then hides the base's file, a symlink included, and goes away with the container).
    The upper ``etc`` directory is created with the base's mode so the merged view is unchanged.
    Everything is opened relative to that directory without following symlinks: what a kept
    container's root left there (a symlinked ``/etc``, a symlink at the file or at the
    temporary name) must never make the host write elsewhere."""
    layers = overlay_layers(rootfs_path)
    if layers is None:
        raise SandboxError(f"network: cannot write /etc/{name}: the root filesystem "
                           f"{rootfs_path!r} is not an lxcbind overlay")
    lower, upper = layers
    os.makedirs(upper, mode=0o755, exist_ok=True)
    refused = SandboxError(f"network: /etc/{name} in the container's upper layer is not a "
                           "regular file in a directory; refusing to write through it")
    try:
        etc = _open_etc(upper, create_from=os.path.join(lower, "etc"))
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            raise refused from None
        raise
    assert etc is not None
    try:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(name, dir_fd=etc, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                raise refused
        tmp = name + ".lxcbind-tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=etc)   # whatever the container put there (not followed)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=etc)
        except (IsADirectoryError, PermissionError, FileExistsError):
            raise refused from None
        with os.fdopen(fd, "w") as f:
            f.write(content)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, name, src_dir_fd=etc, dst_dir_fd=etc)
    finally:
        os.close(etc)


def read_etc_file(rootfs_path: str, name: str) -> str:
    """``/etc/<name>`` as the container would see it (upper layer first), "" if absent or not a
    regular file (a symlink would resolve on the host; a FIFO would block)."""
    layers = overlay_layers(rootfs_path)
    if layers is None:
        return ""
    for layer in (layers[1], layers[0]):
        try:
            etc = _open_etc(layer)
        except FileNotFoundError:
            continue
        except OSError:
            return ""   # /etc is not a plain directory: do not follow it on the host
        if etc is None:
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=etc)
        except FileNotFoundError:
            continue
        except OSError:
            return ""
        finally:
            os.close(etc)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return ""
            return f.read(1 << 20).decode(errors="replace")
    return ""


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


# -- one container's network, in the order the sandbox drives it -------------------------------

def _nft() -> Any:
    """The nftables handle (libnftables in-process).  Raises ``SandboxError`` (fail closed)
    when libnftables cannot be used."""
    try:
        from lxcbind.lxc.nftables import Nft
        return Nft()
    except Exception as exc:  # ImportError (no libnftables in the module), NftError, OSError
        raise SandboxError(f"network: nftables is unavailable ({exc}); the network policy "
                           "cannot be enforced, so the run is refused") from None


def table_name(container: str) -> str:
    """This installation's nft table name for ``container``."""
    from lxcbind.net.ruleset import table_name as name
    return name(container, installation_id())


@dataclass
class ContainerNetwork:
    """The network state of one container run.  Sequence (``Sandbox`` drives it):

    ``prepare()`` (resolve the policy's hostnames, lease an address, install the container's
    nft table — all before the container exists, so the veth is filtered from its first
    packet) → ``config`` into the container's definition → ``write_files()`` (resolv.conf,
    proxy pin) → start → run → stop/destroy → ``teardown()`` (table, leftover veth, lease; the
    last lease takes the anchor with it).  The caller records ``"network"`` in its ownership
    record *before* ``prepare()`` so ``teardown_orphan`` can finish the job for a killed runner.
    """

    container: str
    eff: EffectiveNetwork
    log: Any = field(default=lambda message: None, repr=False)
    lxcpath: str = ""
    lease: Lease | None = None
    resolved: Any = None
    table: str = ""
    table_installed: bool = False

    def prepare(self) -> None:
        from lxcbind.net import ruleset as netrules

        with _nft() as nft:
            self.resolved = netrules.resolve_destinations(self.eff)   # fail-closed DNS rules
            self.table = table_name(self.container)
            self.lease = allocate(self.container, self.lxcpath)
            lease = self.lease
            self.log(f"network: {lease.address} via {lease.gateway} on {lease.veth}")
            script = netrules.compile_ruleset(
                table=self.table, veth=lease.veth, container_v4=lease.address,
                container_v6=None, gateway_v4=lease.gateway, gateway_v6=None, eff=self.eff,
                resolved=self.resolved)
            self.table_installed = True  # before applying: gc/teardown then always look
            try:
                # The script replaces a table of that name (one an earlier run preserved; the
                # container lock is ours) in the same transaction.
                nft.apply(script)
            except Exception as exc:
                raise SandboxError(f"network: installing the nftables rules failed: {exc}") \
                    from None
            if off_host(self.eff, self.resolved):
                nat_add(nft, lease.address)
        for warning in self.resolved.warnings:
            _warn(f"network: {warning}")
        self.log(f"network: nft tables {self.table} installed")

    @property
    def config(self) -> list[tuple[str, str]]:
        assert self.lease is not None
        return self.lease.config

    def env(self) -> dict[str, str]:
        return proxy_env(self.eff)

    def write_files(self, rootfs_path: str) -> None:
        write_etc_file(rootfs_path, "resolv.conf", resolv_conf(self.eff, self.resolved))
        proxy = self.eff.proxy
        if proxy is not None:
            try:
                ipaddress.ip_address(proxy.host.strip("[]"))
                return  # a literal: nothing to pin
            except ValueError:
                pass
            pinned = self.resolved.proxy_addresses
            if pinned:
                # The proxy's name resolves in the container to the address the rules allow
                # (the URL keeps the name, so TLS still sees it).
                self.log(f"network: pinning proxy host {proxy.host} to {pinned[0]}")
                write_etc_file(rootfs_path, "hosts",
                               pin_hosts(read_etc_file(rootfs_path, "hosts"), proxy.host,
                                         pinned[0]))

    def _keep_for_inspection(self) -> None:
        """``preservePolicy``: keep the table, rewritten without the container's address.  The
        rules matched the lease's address, and the next container may be given that address:
        the kept copy must not filter (or open) its traffic.  Only the veth name, unique to this
        container name, still matches, and a new run of this name replaces the table."""
        from lxcbind.net import ruleset as netrules

        assert self.lease is not None
        script = netrules.compile_ruleset(
            table=self.table, veth=self.lease.veth, container_v4=None, container_v6=None,
            gateway_v4=self.lease.gateway, gateway_v6=None, eff=self.eff,
            resolved=self.resolved)
        with _nft() as nft:
            try:
                nft.apply(f"# preserved for inspection (preservePolicy); was "
                          f"{self.lease.address}\n" + script)
            except Exception as exc:   # never keep a table that still names the address
                nft.apply(netrules.teardown_script(self.table))
                _warn(f"network: preservePolicy: could not keep table {self.table} ({exc}); "
                      "deleted it")
                return
        self.log(f"network: keeping nft table inet {self.table} (preservePolicy), without "
                 f"the address {self.lease.address}")

    def teardown(self, *, preserve: bool = False) -> None:
        """Remove what ``prepare`` made; the container must be stopped (or gone) already.
        ``preserve`` keeps the table for inspection (``lifecycle.preservePolicy``); its rules
        name a veth that no longer exists, so they match nothing."""
        if self.table_installed and self.table:
            if preserve:
                self._keep_for_inspection()
            else:
                from lxcbind.net import ruleset as netrules
                with _nft() as nft:
                    nft.apply(netrules.teardown_script(self.table))
            self.table_installed = False
        veth = veth_name(self.container)
        if delete_link(veth):
            self.log(f"network: removed leftover {veth}")
        if self.lease is not None:
            release(self.container)
            self.lease = None


def has_table(container: str) -> bool:
    """Whether this installation has an nft table for ``container`` (a preserved one, or one
    a dead runner left)."""
    with _nft() as nft:
        return nft.table_exists("inet", table_name(container))


def teardown_orphan(container: str) -> None:
    """Network state of a run whose runner died (``lxcbind gc``): table, veth, lease.  The
    container must be stopped or gone."""
    from lxcbind.net import ruleset as netrules
    with _nft() as nft:
        nft.apply(netrules.teardown_script(table_name(container)))
    delete_link(veth_name(container))
    release(container)  # also drops its NAT membership


def prune_tables(log: Any = lambda message: None) -> list[str]:
    """``lxcbind gc``: delete every table of *this installation* (its tag in the name) that no
    live lease owns — the tables ``preservePolicy`` kept for inspection, and any a crash left.
    Leases and tables are read and the tables deleted under the network lock: a run takes its
    lease under that lock before its table exists, and drops it only after the table is gone,
    so a live run's table is never taken for a leftover.  Another installation's tables (another
    ``LXCBIND_STATE_DIR``) carry another tag and are never touched."""
    from lxcbind.net.ruleset import teardown_script

    prefix = table_name("")[:-16]   # "lxcbind<installation>_"
    removed: list[str] = []
    with _NetLock():
        owned = {table_name(name) for name in _load_state()["leases"]}
        with _nft() as nft:
            for _family, name in nft.list_table_names(prefix):
                if name.startswith(prefix) and name not in owned and name not in removed:
                    log(f"gc: deleting nft table {name}")
                    nft.apply(teardown_script(name))
                    removed.append(name)
    return removed


def configure_existing(c: Any, items: Sequence[tuple[str, str]]) -> None:
    """Give a kept, stopped container exactly this run's network device (or none)."""
    try:
        c.clear_config_item("lxc.net")
        for key, value in (items or [("lxc.net.0.type", "empty"), ("lxc.net.0.flags", "up")]):
            c.set_config_item(key, value)
        c.save_config()
    except (ValueError, OSError, SandboxError) as exc:
        raise SandboxError(f"network: could not configure {c.name!r}: {exc}") from None
    except Exception as exc:  # LxcError
        raise SandboxError(f"network: could not configure {c.name!r}: {exc}") from None
