"""Capabilities mode (mxc's schema < 0.8 default) runs, and says what it does not enforce;
everything a policy asks to enforce stays refused when it cannot be.  No root needed."""

from __future__ import annotations

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind.policy.parse import load_policy  # noqa: E402
from lxcbind.sandbox.core import network_notice, network_refusal  # noqa: E402


def pol(version: str | None = "0.7.0", network: dict | None = None, **extra) -> object:
    doc: dict = {"process": {"commandLine": "true"}, **extra}
    if version is not None:
        doc["version"] = version
    if network is not None:
        doc["network"] = network
    return load_policy(doc)


@pytest.mark.parametrize("version,network,hint", [
    ("0.6.0-alpha", None, "schema 0.8"),
    ("0.7.0", {"defaultPolicy": "block", "blockedHosts": ["example.com"]},
     'network.enforcementMode to "firewall"'),
    ("0.7.0", {"defaultPolicy": "allow", "allowLocalNetwork": True}, "enforcementMode"),
    ("0.6.0", {"enforcementMode": "capabilities", "allowedHosts": ["198.18.0.1"]},
     "enforcementMode"),
    (None, None, 'set "version"'),
    (None, {"allowedHosts": ["198.18.0.1"]}, 'set "version"'),
])
def test_capabilities_mode_runs_with_one_notice(version, network, hint):
    p = pol(version, network)
    assert network_refusal(p) is None
    notice = network_notice(p)
    assert notice is not None and "not enforced" in notice and hint in notice
    assert "\n" not in notice
    assert p.network.effective().firewall is False


@pytest.mark.parametrize("version,network", [
    ("0.7.0", {"enforcementMode": "firewall", "defaultPolicy": "block"}),
    ("0.7.0", {"enforcementMode": "both", "defaultPolicy": "allow"}),
    ("0.8.0", None),                                     # deny-all, no device
    ("0.8.0", {"egress": {"default": "allow"}}),
    ("0.8.0", {"defaultPolicy": "allow"}),               # 0.8 written the old way: enforced
])
def test_enforced_policies_have_no_notice(version, network):
    p = pol(version, network)
    assert network_notice(p) is None
    assert network_refusal(p) is None


@pytest.mark.parametrize("version,network,field", [
    ("0.7.0", {"enforcementMode": "firewall", "allowLocalNetwork": True},
     "network.allowLocalNetwork"),
    ("0.8.0", {"ingress": {"default": "allow"}}, "network.ingress.default"),
    ("0.8.0", {"ingress": {"hostLoopback": "allow"}}, "network.ingress.hostLoopback"),
])
def test_permissive_ingress_asked_of_a_firewall_stays_refused(version, network, field):
    p = pol(version, network)
    refusal = network_refusal(p)
    assert refusal is not None and field in refusal


def test_pin_uses_mxcs_marker_and_drops_stale_pins_of_either_marker():
    from lxcbind.net.dns import pin_hosts

    text = ("127.0.0.1 localhost\n198.18.0.9 proxy.test #mxc-proxy-pin\n"
            "198.18.0.8\tproxy.test\t# lxcbind-proxy-pin\n198.18.0.7 other.test\n")
    assert pin_hosts(text, "proxy.test", "198.18.0.2") == (
        "127.0.0.1 localhost\n198.18.0.7 other.test\n198.18.0.2 proxy.test #mxc-proxy-pin\n")
