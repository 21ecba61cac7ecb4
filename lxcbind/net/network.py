"""One container's network, as the sandbox drives it: ``ContainerNetwork`` composes the lease
(``lxcbind.net.leases``), the nft table (``lxcbind.net.ruleset``), the host devices
(``lxcbind.net.links``) and the container's resolver files (``lxcbind.net.dns``); plus what
``lxcbind gc`` needs to finish the job of a runner that died.

Topology (why not a bridge).  Each networked container gets one veth pair whose host end is a
plain layer-3 interface (liblxc's ``lxc.net.0.veth.mode = router``), named before start
(``lxcb`` + 11 characters of a hash of the container name).  liblxc adds the host route to the
container's /32 and the container's default route via the gateway (on the anchor, see
``lxcbind.net.leases``).  Every packet a container sends therefore enters the host on *its
own* veth: the per-container ``inet`` table matches ``iifname``/``oifname`` of that veth in its
forward, input and output hooks, and is installed before ``start()``, so the first packet is
already filtered.  With a bridge, routed traffic would enter the IP layer with ``iifname`` =
the bridge, so rules keyed on the veth would match nothing (mxc's bug fixed in #798), and
port-to-port frames would bypass the inet hooks unless ``br_netfilter`` is loaded.  Routed
veths need neither ``br_netfilter`` nor port isolation: two containers share no layer-2
segment at all, so container-to-container traffic is routed through the host and filtered by
both containers' tables.

IPv4 only: giving containers IPv6 would need the machine-wide
``net.ipv6.conf.all.forwarding=1``, which also turns off router advertisements on every host
interface.  Containers keep only a link-local IPv6 address; the inet table filters IPv6
towards the host like IPv4, and nothing is forwarded.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

from lxcbind._lite import record
from lxcbind.errors import LxcbindError, SandboxError
from lxcbind.net import ruleset
from lxcbind.net.dns import pin_hosts, resolv_conf
from lxcbind.net.etcfiles import read_etc_file, write_etc_file
from lxcbind.net.hostnets import HostView, host_view
from lxcbind.net.leases import (
    Lease,
    allocate,
    current_leases,
    installation_id,
    lock,
    nat_add,
    release,
)
from lxcbind.net.links import delete_link, open_nft, veth_name
from lxcbind.net.ruleset import Resolved
from lxcbind.policy.egress import EgressPlan, egress_plan
from lxcbind.policy.network import EffectiveNetwork

__all__ = ["PROXY_VARS", "ContainerNetwork", "configure_existing", "has_table", "off_host",
           "prune_tables", "proxy_env", "table_name", "teardown_orphan"]

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY")


def off_host(eff: EffectiveNetwork, resolved: Resolved | None,
             host: HostView | None = None) -> bool:
    """Whether the policy lets the container reach anything beyond this host (then its
    address is masqueraded: the pool is private to the host)."""
    return _plan(eff, resolved, host).lets_anything_out()


def _plan(eff: EffectiveNetwork, resolved: Resolved | None,
          host: HostView | None = None) -> EgressPlan:
    host = host or HostView()
    resolved = resolved or Resolved()
    return egress_plan(eff, extra_deny=resolved.deny, extra_allow=resolved.allow,
                       proxy_addresses=resolved.proxy_addresses, host_local=host.local,
                       resolvers=host.resolvers)


def _warn(message: str) -> None:
    logging.getLogger("lxcbind").warning("%s", message)


def proxy_env(eff: EffectiveNetwork) -> dict[str, str]:
    """Proxy mode: every proxy variable (both cases) set to the URL, ``NO_PROXY`` empty."""
    if eff.proxy is None:
        return {}
    env = {}
    for var in PROXY_VARS:
        env[var] = env[var.lower()] = eff.proxy.url
    env["NO_PROXY"] = env["no_proxy"] = ""
    return env


def _no_log(message: str) -> None:
    pass


def table_name(container: str) -> str:
    """This installation's nft table name for ``container``."""
    return ruleset.table_name(container, installation_id())


@record(frozen=False)
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
    log: Callable[[str], None] = _no_log
    lxcpath: str = ""
    lease: Lease | None = None
    resolved: Resolved = Resolved()
    host: HostView = HostView()
    table: str = ""
    table_installed: bool = False

    def prepare(self) -> None:
        with open_nft() as nft:
            self.resolved = ruleset.resolve_destinations(self.eff)   # fail-closed DNS rules
            self.table = table_name(self.container)
            self.lease = allocate(self.container, self.lxcpath)
            lease = self.lease
            self.log(f"network: {lease.address} via {lease.gateway} on {lease.veth}")
            self.host = host_view()   # what open egress leaves out (the anchor is up now)
            script = ruleset.compile_ruleset(
                table=self.table, veth=lease.veth, container_v4=lease.address,
                container_v6=None, gateway_v4=lease.gateway, gateway_v6=None, eff=self.eff,
                resolved=self.resolved, host=self.host)
            self.table_installed = True  # before applying: gc/teardown then always look
            try:
                # The script replaces a table of that name (one an earlier run preserved; the
                # container lock is ours) in the same transaction.
                nft.apply(script)
            except Exception as exc:
                raise SandboxError(f"network: installing the nftables rules failed: {exc}") \
                    from None
            if off_host(self.eff, self.resolved, self.host):
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
        write_etc_file(rootfs_path, "resolv.conf", resolv_conf(_plan(self.eff, self.resolved,
                                                                   self.host)))
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
        assert self.lease is not None
        script = ruleset.compile_ruleset(
            table=self.table, veth=self.lease.veth, container_v4=None, container_v6=None,
            gateway_v4=self.lease.gateway, gateway_v6=None, eff=self.eff,
            resolved=self.resolved, host=self.host)
        with open_nft() as nft:
            try:
                nft.apply(f"# preserved for inspection (preservePolicy); was "
                          f"{self.lease.address}\n" + script)
            except Exception as exc:   # never keep a table that still names the address
                nft.apply(ruleset.teardown_script(self.table))
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
                with open_nft() as nft:
                    nft.apply(ruleset.teardown_script(self.table))
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
    with open_nft() as nft:
        return nft.table_exists("inet", table_name(container))


def teardown_orphan(container: str) -> None:
    """Network state of a run whose runner died (``lxcbind gc``): table, veth, lease.  The
    container must be stopped or gone."""
    with open_nft() as nft:
        nft.apply(ruleset.teardown_script(table_name(container)))
    delete_link(veth_name(container))
    release(container)  # also drops its NAT membership


def prune_tables(log: Any = lambda message: None) -> list[str]:
    """``lxcbind gc``: delete every table of *this installation* (its tag in the name) that no
    live lease owns — the tables ``preservePolicy`` kept for inspection, and any a crash left.
    Leases and tables are read and the tables deleted under the network lock: a run takes its
    lease under that lock before its table exists, and drops it only after the table is gone,
    so a live run's table is never taken for a leftover.  Another installation's tables (another
    ``LXCBIND_STATE_DIR``) carry another tag and are never touched."""
    prefix = table_name("")[:-16]   # "lxcbind<installation>_"
    removed: list[str] = []
    with lock():
        owned = {table_name(name) for name in current_leases()}
        with open_nft() as nft:
            for _family, name in nft.list_table_names(prefix):
                if name.startswith(prefix) and name not in owned and name not in removed:
                    log(f"gc: deleting nft table {name}")
                    nft.apply(ruleset.teardown_script(name))
                    removed.append(name)
    return removed


def configure_existing(c: Any, items: Sequence[tuple[str, str]]) -> None:
    """Give a kept, stopped container exactly this run's network device (or none)."""
    try:
        c.clear_config_item("lxc.net")
        for key, value in (items or [("lxc.net.0.type", "empty"), ("lxc.net.0.flags", "up")]):
            c.set_config_item(key, value)
        c.save_config()
    except (ValueError, OSError, LxcbindError) as exc:   # LxcError is both of the last two
        raise SandboxError(f"network: could not configure {c.name!r}: {exc}") from None
