"""Address leases: which container has which address of the pool, and the anchor they share.

Leases: ``<STATE_DIR>/net/leases.json`` maps container name → address, veth and the runner
that holds it (``lxcbind.state.runner_identity``), changed only under ``lock()``.

The *anchor* (``ANCHOR``, default ``lxcbind0``, ``lxcb<installation id>0`` for another
``LXCBIND_STATE_DIR``, env ``LXCBIND_BRIDGE``) is a bridge with no ports (a ``bridge`` because
it is always built into kernels that run LXC; ``dummy`` often is not), holding the gateway
address (first address of the pool, e.g. 10.213.0.1/16): the host answers the containers' ARP
for it, delivers packets to it locally (input hook, where the container's table applies its
host-traffic rules), and the pool's connected route makes the host drop packets for pool
addresses nobody leases instead of sending them out of the default route.  No container's veth
is ever a port of it.  It is created by the first networked run and deleted by the last (the
reference count is the lease table, read under the lock), together with the pool choice and
the outbound NAT table.

The only machine-wide setting lxcbind changes is ``net.ipv4.ip_forward=1`` (set when a
networked run starts; never reset, other software may have come to rely on it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from lxcbind import state as _hoststate  # ("state" is a local name here: the lease file)
from lxcbind._lite import as_dict, record
from lxcbind.errors import LxcbindError, SandboxError
from lxcbind.lxc.nftables import Nft
from lxcbind.net.links import (
    VETH_PREFIX,
    Netlink,
    choose_pool,
    create_anchor,
    delete_link,
    hwaddr,
    link_exists,
    open_nft,
    sysctl,
    veth_name,
)

__all__ = ["ANCHOR", "DEFAULT_STATE_DIR", "Lease", "allocate", "current_leases",
           "installation_id", "leases", "lock", "nat_add", "nat_remove", "nat_table", "net_dir",
           "release"]

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


def net_dir() -> Path:
    return _hoststate.STATE_DIR / "net"


# -- leases ------------------------------------------------------------------------------------

@record
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
    boot_id: str = ""     # "" in leases written before it was recorded

    def runner_alive(self) -> bool:
        """Whether the run that holds this lease can still act (``lxcbind.state``)."""
        return _hoststate.runner_alive({"runner_pid": self.runner_pid,
                                        "runner_start": self.runner_start,
                                        "boot_id": self.boot_id})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        """A lease as ``leases.json`` holds it; keys this version does not know are left out."""
        known = cls._fields  # type: ignore[attr-defined]  # a record's field names (_lite)
        return cls(**{k: v for k, v in data.items() if k in known})

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
            ("lxc.net.0.hwaddr", hwaddr(ip)),
            ("lxc.net.0.ipv4.address", f"{self.address}/32"),
            ("lxc.net.0.ipv4.gateway", self.gateway),
        ]


def lock() -> contextlib.AbstractContextManager[None]:
    """flock of ``<STATE_DIR>/net/lock``: leases, the pool and the anchor change only under it.
    Not re-entrant (a second flock of the file in the same process waits for the first)."""
    return _hoststate.locked(net_dir() / "lock")


def _load_state() -> dict[str, Any]:
    data = _hoststate.read_json(net_dir() / "leases.json", None)
    if isinstance(data, dict) and isinstance(data.get("leases"), dict):
        return data
    return {"pool": None, "leases": {}}


def _save_state(state: dict[str, Any]) -> None:
    _hoststate.write_json(net_dir() / "leases.json", state)


def current_leases() -> dict[str, Lease]:
    """The leases by container name; the caller holds ``lock()``."""
    return {k: Lease.from_json(v) for k, v in _load_state()["leases"].items()}


def leases() -> dict[str, Lease]:
    """The current leases by container name (a snapshot)."""
    with lock():
        return current_leases()


def allocate(container: str, lxcpath: str = "") -> Lease:
    """Lease an address for ``container`` (creating the anchor and choosing the pool when it is
    the first), and make sure IPv4 forwarding is on.  Raises ``SandboxError``."""
    with lock():
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
        me = _hoststate.runner_identity()
        lease = Lease(container, str(address), str(gateway), pool.prefixlen,
                      veth_name(container), me["runner_pid"], me["runner_start"] or 0, lxcpath,
                      me["boot_id"])
        state["leases"][container] = as_dict(lease)
        _save_state(state)
    try:
        sysctl("net/ipv4/ip_forward", "1")
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
    pool = choose_pool(ANCHOR)
    if state["leases"]:
        # The anchor vanished under live leases (someone deleted it): their addresses come
        # from the old pool; keep it if it is still free, else refuse.
        old = ipaddress.IPv4Network(state["pool"])
        if old != pool:
            raise SandboxError(f"network: {ANCHOR} was removed while runs use {old}")
    try:
        with Netlink() as nl:
            create_anchor(nl, ANCHOR, ipaddress.IPv4Interface(
                f"{pool.network_address + 1}/{pool.prefixlen}"))
        with open_nft() as nft:
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
    with lock():
        state = _load_state()
        gone = state["leases"].pop(container, None)
        if not state["leases"]:
            with open_nft() as nft:
                nft.delete_table("ip", nat_table())
            delete_link(ANCHOR)
            state["pool"] = None
        elif gone:
            with open_nft() as nft:
                nat_remove(nft, gone["address"])
        _save_state(state)


# -- outbound NAT ------------------------------------------------------------------------------

def nat_table() -> str:
    """The anchor's NAT table (``ip`` family): one set of container addresses to masquerade."""
    return re.sub(r"[^A-Za-z0-9_]", "_", ANCHOR) + "_nat"


def _create_nat(nft: Nft) -> None:
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


def nat_add(nft: Nft, address: str) -> None:
    nft.apply(f"add element ip {nat_table()} sources {{ {ipaddress.IPv4Address(address)} }}\n")


def nat_remove(nft: Nft, address: str) -> None:
    with contextlib.suppress(Exception):  # not a member (the policy needed no NAT)
        nft.apply(f"delete element ip {nat_table()} sources "
                  f"{{ {ipaddress.IPv4Address(address)} }}\n")
