"""Whether a policy's network can be enforced, and what a run says when it is not: checks that
depend on the policy alone (``--dry-run`` and the CLI call them before anything is set up)."""

from __future__ import annotations

from lxcbind.policy.model import Policy


def network_refusal(policy: Policy) -> str | None:
    """Why the policy's network cannot be enforced (None when it can).

    A deny-everything policy runs with no network device at all, which is stronger than any
    rule set and cannot be undone from inside.  Egress rules, open egress, the legacy DNS
    exemption and a reachable proxy are enforced by ``network`` (routed veth + the container's
    nftables table, installed before start).  A policy that asks for no firewall (mxc's
    capabilities mode) is not refused: it runs open, as under mxc, and ``network_notice`` says
    so.  What stays refused, rather than run with less protection than asked, is named here.
    Host-independent: ``--dry-run`` calls it.
    """
    effective = policy.network.effective()
    if effective.is_deny_all() or not effective.firewall:
        return None
    reason = None
    if not effective.ingress_deny:
        field = ("network.allowLocalNetwork" if policy.network.shape == "legacy"
                 else "network.ingress.default")
        reason = f"{field} allows inbound traffic, which lxcbind does not implement"
    elif not effective.host_loopback_deny:
        reason = "network.ingress.hostLoopback allows inbound traffic, which lxcbind does not " \
                 "implement"
    elif effective.proxy is not None and effective.proxy.source.startswith("runtimeConfig"):
        reason = (f"{effective.proxy.source}: a proxy on the host's loopback cannot be reached "
                  "from the container's network namespace")
    elif effective.proxy is not None and ":" in effective.proxy.host:
        reason = f"{effective.proxy.source}: IPv6 proxy endpoints are not supported (IPv4 only)"
    if reason is None:
        return None
    return f"network: {reason}; refusing to run instead of running with less protection"


def network_notice(policy: Policy) -> str | None:
    """One line saying that the network is *not* enforced, and how to enforce it, for a
    policy in mxc's capabilities mode (schema < 0.8 without ``enforcementMode`` firewall/both);
    None when the network policy is enforced.  Such a run gets what mxc gives it: a network
    device with open egress (NAT) and open inbound; only what open egress always leaves out
    (``lxcbind.policy.network.carve``) is filtered."""
    if policy.network.effective().firewall:
        return None
    if policy.version is None:
        why = ("the policy has no \"version\", so it is read as schema 0.6/0.7, whose default "
               "network.enforcementMode \"capabilities\" requests no firewall")
        how = "set \"version\": \"0.8.0\" (or network.enforcementMode \"firewall\")"
    elif policy.network.specified:
        why = (f"schema {policy.version} without network.enforcementMode \"firewall\"/\"both\" "
               "requests no firewall: defaultPolicy, allowedHosts and blockedHosts are "
               "declarations only")
        how = "set network.enforcementMode to \"firewall\" (or use schema 0.8)"
    else:
        why = (f"schema {policy.version} with no network section requests no firewall")
        how = "declare a network section under schema 0.8 (no section there means deny-all)"
    return (f"network: not enforced: {why}; inbound is open and egress reaches the internet "
            "(not the host, its networks or private ranges), as under mxc; "
            f"to enforce it, {how}")
