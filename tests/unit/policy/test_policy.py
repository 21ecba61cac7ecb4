"""Policy parsing: valid files, one bad policy per file with its expected JSON path, and the
effective-network matrix (mxc's LXC runner: firewall by version and shape).  No root, no liblxc."""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path

import pytest

from lxcbind.errors import LxcbindError, PolicyError
from lxcbind.policy.model import Policy
from lxcbind.policy.network import EffectiveNetwork, EgressRule
from lxcbind.policy.parse import decode_base64_policy, load_policy, load_policy_file

DATA = Path(__file__).resolve().parents[2] / "data" / "policies"
INVALID = DATA / "invalid"
VALID = DATA / "valid"

# file name (without .json) -> (expected PolicyError.path, a fragment of the message)
EXPECTED: dict[str, tuple[str, str]] = {
    # JSON itself
    "invalid_json": ("", "invalid JSON at line 2 column 1"),
    "nan_constant": ("", "NaN is not valid JSON"),
    "duplicate_key": ("filesystem.deniedPaths", "duplicate key"),
    "top_level_array": ("", "must be a JSON object"),
    # unknown keys, top level and nested
    "unknown_top_level_key": ("proces", "unknown field (did you mean 'process'?)"),
    "unknown_process_key": ("process.comandLine", "unknown field (did you mean 'commandLine'?)"),
    "unknown_filesystem_key": ("filesystem.readOnlyPaths", "unknown field"),
    "unknown_lifecycle_key": ("lifecycle.destroy", "unknown field"),
    "unknown_rule_key": ("network.egress.allow[0].dst", "unknown field"),
    "unknown_odd_key": ('process["my key"]', "unknown field"),
    "net_ingress_unknown_key": ("network.ingress.allow", "unknown field"),
    # version, containment, other backends
    "version_not_semver": ("version", "must be semver"),
    "version_0_5": ("version", "older than supported"),
    "version_1_0": ("version", "newer than supported"),
    "version_number": ("version", "expected a string, got number"),
    "containment_vm": ("containment", 'only "lxc" is supported'),
    "containment_process": ("containment", 'only "lxc" is supported'),
    "other_backend_section": ("processContainer", "only the LXC backend"),
    "experimental_backend": ("experimental.wslc", "only the LXC backend"),
    "state_aware_phase": ("phase", "state-aware"),
    "ui_not_object": ("ui", "expected an object, got array"),
    # process
    "missing_process": ("process", "section is required"),
    "process_not_object": ("process", "expected an object, got string"),
    "missing_command": ("process.commandLine", "missing required field"),
    "empty_command": ("process.commandLine", "must not be empty"),
    "nul_in_command": ("process.commandLine", "NUL"),
    "command_not_string": ("process.commandLine", "expected a string, got array"),
    "cwd_relative": ("process.cwd", "must be absolute"),
    "cwd_nul": ("process.cwd", "NUL"),
    "env_not_list": ("process.env", "expected an array, got string"),
    "env_no_equals": ("process.env[1]", "no '=' found"),
    "env_empty_key": ("process.env[0]", "the key is empty"),
    "env_nul": ("process.env[0]", "NUL"),
    "env_bad_key": ("process.env[2]", "invalid variable name 'MY-VAR'"),
    "env_entry_not_string": ("process.env[0]", "expected a string, got object"),
    "timeout_negative": ("process.timeout", "non-negative integer (milliseconds)"),
    "timeout_float": ("process.timeout", "non-negative integer (milliseconds)"),
    "timeout_string": ("process.timeout", "got string"),
    "timeout_bool": ("process.timeout", "got boolean"),
    "timeout_too_big": ("process.timeout", "up to 4294967295"),
    # containerId
    "container_id_slash": ("containerId", "invalid container name 'a/b'"),
    "container_id_too_long": ("containerId", "at most 64 characters"),
    "container_id_empty": ("containerId", "must not be empty"),
    "container_id_dotdot": ("containerId", "invalid container name '..'"),
    "container_id_spaces": ("containerId", "invalid container name 'my box'"),
    "container_id_number": ("containerId", "expected a string"),
    # filesystem
    "readonly_relative": ("filesystem.readonlyPaths[2]", "path must be absolute"),
    "readwrite_nul": ("filesystem.readwritePaths[0]", "NUL"),
    "denied_empty": ("filesystem.deniedPaths[0]", "must not be empty"),
    "denied_quote": ("filesystem.deniedPaths[0]", "'\"'"),
    "readonly_newline": ("filesystem.readonlyPaths[0]", "newlines"),
    "readwrite_tab": ("filesystem.readwritePaths[0]", "tabs"),
    "denied_dotdot": ("filesystem.deniedPaths[0]", "'..'"),
    "readonly_backslash": ("filesystem.readonlyPaths[0]", "backslash"),
    "paths_not_list": ("filesystem.deniedPaths", "expected an array"),
    "path_not_string": ("filesystem.readonlyPaths[0]", "expected a string"),
    # lifecycle, lxc
    "lifecycle_not_bool": ("lifecycle.destroyOnExit", "expected true or false, got string"),
    "lxc_release_missing": ("lxc.release", "required when lxc.distribution is given"),
    "lxc_distribution_empty": ("lxc.distribution", "non-empty"),
    "lxc_rootfs_unknown": ("lxc.rootfs", '"docker"'),
    "lxc_rootfs_dir_relative": ("lxc.rootfs", "must be absolute"),
    "lxc_download_without_dist": ("lxc.rootfs", "needs lxc.distribution and lxc.release"),
    # legacy network
    "net_not_object": ("network", "expected an object"),
    "net_bad_enforcement_mode": ("network.enforcementMode", '"strict"'),
    "net_bad_default_policy": ("network.defaultPolicy", '"deny"'),
    "net_allow_local_not_bool": ("network.allowLocalNetwork", "expected true or false"),
    "net_allowed_host_bad_cidr": ("network.allowedHosts[1]", "not a valid IP address or CIDR"),
    "net_blocked_host_bad_ip": ("network.blockedHosts[0]", "not a valid IP address or CIDR"),
    "net_blocked_host_bad_name": ("network.blockedHosts[0]", "hostname"),
    "net_blocked_host_wildcard": ("network.blockedHosts[0]", "wildcard"),
    "net_hosts_not_list": ("network.allowedHosts", "expected an array"),
    # 0.8 network
    "net_egress_bad_cidr": ("network.egress.allow[0].to[1].cidr", "not a valid CIDR"),
    "net_egress_cidr_plus_prefix": ("network.egress.allow[0].to[0].cidr", "not a valid CIDR"),
    "net_egress_cidr_hostname": ("network.egress.deny[0].to[0].cidr", "not a valid CIDR"),
    "net_missing_cidr": ("network.egress.allow[0].to[0].cidr", "missing required field"),
    "net_except_outside": ("network.egress.allow[0].to[0].except[0]", "not contained in"),
    "net_except_family": ("network.egress.allow[0].to[0].except[1]", "not contained in"),
    "net_except_bad_cidr": ("network.egress.allow[0].to[0].except[0]", "not a valid CIDR"),
    "net_port_zero": ("network.egress.allow[0].ports[0].port", "between 1 and 65535, got 0"),
    "net_port_too_big": ("network.egress.allow[0].ports[0].port", "got 65536"),
    "net_port_string": ("network.egress.allow[0].ports[0].port", "got string"),
    "net_endport_without_port": ("network.egress.allow[0].ports[0].endPort", "requires port"),
    "net_endport_less_than_port": ("network.egress.allow[0].ports[0].endPort", "must be >= port"),
    "net_icmp_with_port": ("network.egress.allow[0].ports[0].port", "icmp has no ports"),
    "net_bad_protocol": ("network.egress.allow[0].ports[0].protocol", '"sctp"'),
    "net_empty_to": ("network.egress.allow[0].to", "at least one destination"),
    "net_empty_ports": ("network.egress.allow[0].ports", "at least one selector"),
    "net_rules_not_list": ("network.egress.allow", "expected an array"),
    "net_egress_default_block": ("network.egress.default", '"block"'),
    "net_host_loopback_bad": ("network.ingress.hostLoopback", '"open"'),
    "net_mixed_legacy_and_08": ("network.egress", "cannot mix"),
    "net_mixed_runtime_config": ("runtimeConfig", "cannot mix"),
    "net_08_fields_under_07": ("network.egress", "requires schema version 0.8 or later"),
    "net_08_fields_without_version": ("network.ingress", "requires schema version 0.8 or later "
                                      "(version is absent): set \"version\": \"0.8.0\""),
    "runtime_config_under_07": ("runtimeConfig", "requires schema version 0.8"),
    "runtime_proxy_not_loopback": ("runtimeConfig.networkProxy", "localhost, 127.0.0.1"),
    "runtime_proxy_with_rules": ("runtimeConfig.networkProxy", "no allow or deny rules"),
    # proxy
    "proxy_with_credentials": ("network.proxy.url", "must not contain credentials"),
    "proxy_loopback_ip": ("network.proxy.url", "loopback"),
    "proxy_loopback_name": ("network.proxy.url", "loopback"),
    "proxy_loopback_v6": ("network.proxy.url", "loopback"),
    "proxy_without_firewall": ("network.proxy", 'enforcementMode "firewall" or "both"'),
    "proxy_capabilities_mode": ("network.proxy", 'enforcementMode "firewall" or "both"'),
    "proxy_bad_scheme": ("network.proxy.url", "http or https"),
    "proxy_no_port": ("network.proxy.url", "must include a port"),
    "proxy_no_host": ("network.proxy.url", "must include a host"),
    "proxy_localhost_field": ("network.proxy.localhost", "not supported for LXC"),
    "proxy_builtin_test_server": ("network.proxy.builtinTestServer", "not supported for LXC"),
    "proxy_empty": ("network.proxy", "exactly one of"),
    "proxy_two_kinds": ("network.proxy", "exactly one of"),
    "proxy_with_blocked_hosts": ("network.blockedHosts", "cannot be combined with a proxy"),
    "limits_memory_word": ("lxc.limits.memory", 'expected a size such as "512M"'),
    "limits_memory_tiny": ("lxc.limits.memory", "out of range"),
    "limits_disk_zero": ("lxc.limits.disk", "out of range"),
    "limits_disk_negative": ("lxc.limits.disk", "out of range"),
    "limits_disk_word": ("lxc.limits.disk", 'expected a size such as "512M"'),
    "limits_pids_low": ("lxc.limits.pids", "8"),
    "limits_cpu_bool": ("lxc.limits.cpu", "number of CPUs"),
    "limits_unknown": ("lxc.limits.swap", "unknown field"),
    "privileged_string": ("lxc.privileged", "true or false"),
    "allow_unknown": ("lxc.allow[0]", "nesting"),
}


def test_limits_and_isolation_fields_parse() -> None:
    from lxcbind.policy.model import UNLIMITED

    p = load_policy({"version": "0.8.0", "process": {"commandLine": "true"},
                     "lxc": {"limits": {"memory": "512M", "pids": 256, "cpu": 1.5},
                             "allow": ["perf", "perf"], "privileged": True}})
    assert (p.lxc.limits.memory, p.lxc.limits.pids, p.lxc.limits.cpu) == (512 << 20, 256, 1.5)
    assert p.lxc.allow == ("perf",) and p.lxc.privileged
    assert any("not a sandbox" in w for w in p.warnings)
    p = load_policy({"version": "0.8.0", "process": {"commandLine": "true"},
                     "lxc": {"limits": {"memory": "max", "pids": "max", "cpu": "max"}}})
    assert p.lxc.limits.memory == p.lxc.limits.pids == UNLIMITED
    p = load_policy({"version": "0.8.0", "process": {"commandLine": "true"},
                     "lxc": {"limits": {"disk": "10G"}}})
    assert p.lxc.limits.disk == 10 << 30
    p = load_policy({"version": "0.8.0", "process": {"commandLine": "true"},
                     "lxc": {"limits": {"disk": "max"}}})
    assert p.lxc.limits.disk == UNLIMITED
    default = load_policy({"version": "0.8.0", "process": {"commandLine": "true"}})
    assert not default.lxc.privileged and default.lxc.limits.memory is None
    assert default.lxc.limits.disk is None


def _invalid_files() -> list[str]:
    return sorted(p.stem for p in INVALID.glob("*.json"))


def test_every_invalid_file_has_an_expectation() -> None:
    files = set(_invalid_files())
    assert files == set(EXPECTED), (files ^ set(EXPECTED))
    assert len(files) >= 45


@pytest.mark.parametrize("name", _invalid_files())
def test_invalid_policy_names_its_json_path(name: str) -> None:
    path, fragment = EXPECTED[name]
    with pytest.raises(PolicyError) as info:
        load_policy_file(INVALID / f"{name}.json")
    err = info.value
    assert err.path == path
    assert fragment in err.message
    assert str(err) == (f"{path}: {err.message}" if path else err.message)


def test_proxy_password_is_never_echoed() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_file(INVALID / "proxy_with_credentials.json")
    assert "s3cr3t-Pa55" not in str(info.value)
    assert "alice" not in str(info.value)
    assert "s3cr3t-Pa55" not in repr(info.value)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError) and issubclass(PolicyError, LxcbindError)


# --------------------------------------------------------------------------- valid files

@pytest.mark.parametrize("name", sorted(p.stem for p in VALID.glob("*.json")))
def test_valid_policies_parse_and_plan(name: str) -> None:
    policy = load_policy_file(VALID / f"{name}.json")
    assert policy.origin.endswith(f"{name}.json")
    plan = policy.to_plan()
    assert json.loads(json.dumps(plan)) == plan


def test_minimal_defaults() -> None:
    p = load_policy_file(VALID / "minimal.json")
    assert p.process.command_line == "echo hello"
    assert p.process.argv == ("/bin/sh", "-c", "echo hello")
    assert p.process.cwd is None and p.process.env == () and p.process.timeout_ms == 0
    assert p.process.timeout is None
    assert p.version is None and p.schema_version is None
    assert p.containment == "lxc" and p.container_id is None
    assert p.lifecycle.destroy_on_exit is True and p.lifecycle.preserve_policy is False
    assert p.filesystem.readwrite_paths == p.filesystem.readonly_paths == () == \
        p.filesystem.denied_paths
    assert p.lxc.distribution is None and p.lxc.rootfs.kind == "host"
    assert p.network.shape == "legacy" and not p.network.specified
    assert p.network.legacy is not None
    assert p.network.legacy.default_policy == "block"
    assert p.network.legacy.enforcement_mode == "capabilities"
    assert p.ignored_sections == () and p.warnings == ()


def test_legacy_07_everything() -> None:
    p = load_policy_file(VALID / "legacy_07_firewall.json")
    assert p.version == "0.7.0" and p.schema_version == (0, 7, 0)
    assert p.container_id == "build-box_1.test"
    assert p.process.cwd == "/src" and p.process.timeout_ms == 120000
    assert p.process.timeout == 120.0
    # duplicates: last wins (and takes the last position); '=' inside the value is kept
    assert p.process.env == (("OPTS", "a=b=c"), ("EMPTY", ""),
                             ("PATH", "/usr/local/bin:/usr/bin:/bin"))
    assert any("PATH is set more than once" in w for w in p.warnings)
    assert p.lifecycle.destroy_on_exit is False and p.lifecycle.preserve_policy is True
    assert p.filesystem.readwrite_paths == ("/tmp/build out",)   # spaces are allowed
    assert p.filesystem.denied_paths == ("/src/.git", "/etc/shadow")
    assert (p.lxc.distribution, p.lxc.release, p.lxc.rootfs.kind) == ("alpine", "3.20", "download")
    legacy = p.network.legacy
    assert legacy is not None and legacy.enforcement_mode == "both" and legacy.firewall
    assert [h.text for h in legacy.allowed_hosts] == ["140.82.112.0/20", "192.0.2.7", "pypi.org",
                                                      "2001:db8::/32"]
    assert legacy.allowed_hosts[2].network is None
    # IPv4-mapped IPv6 is rewritten to IPv4 (an ip6 rule would never match it)
    assert legacy.blocked_hosts[1].network == ipaddress.ip_network("203.0.113.9/32")
    assert p.ignored_sections == ("ui", "experimental")

    eff = p.network.effective()
    assert eff.firewall and eff.egress_default == "deny" and eff.dns_exemption
    assert eff.egress_deny == (EgressRule("10.0.0.0/8", (), "any", None, None),
                               EgressRule("203.0.113.9/32", (), "any", None, None))
    assert eff.unresolved_deny == ("metadata.google.internal.",)
    assert [r.cidr for r in eff.egress_allow] == ["140.82.112.0/20", "192.0.2.7/32",
                                                  "2001:db8::/32"]
    assert eff.unresolved_allow == ("pypi.org",)
    assert eff.ingress_deny and eff.host_loopback_deny and not eff.is_deny_all()


def test_directional_08_rules_are_lowered() -> None:
    p = load_policy_file(VALID / "directional_08.json")
    assert p.schema_version == (0, 8, 0)   # pre-release ignored
    assert p.network.shape == "directional"
    eff = p.network.effective()
    assert eff.egress_deny == (EgressRule("10.0.0.0/8", (), "any", None, None),)
    assert eff.egress_allow == (
        EgressRule("140.82.112.0/20", ("140.82.120.0/24",), "tcp", 443, 443),
        EgressRule("140.82.112.0/20", ("140.82.120.0/24",), "udp", 6000, 6010),
        EgressRule("192.0.2.53/32", (), "any", 53, 53),
        EgressRule("0.0.0.0/0", (), "icmp", None, None),
        EgressRule("::/0", (), "icmp", None, None),
    )
    assert not eff.dns_exemption and eff.firewall and not eff.is_deny_all()


def test_deny_all_08_with_busybox_rootfs() -> None:
    p = load_policy_file(VALID / "deny_all_08.json")
    assert p.lxc.rootfs.kind == "busybox" and p.process.cwd is None
    assert p.ignored_sections == ("fallback",)
    assert p.network.is_deny_all()
    assert p.to_plan()["network"]["denyAll"] is True


def test_legacy_proxy_and_dir_rootfs() -> None:
    p = load_policy_file(VALID / "legacy_proxy.json")
    assert p.lxc.rootfs.kind == "dir" and p.lxc.rootfs.path == "/var/lib/lxcbind/roots/py 3"
    eff = p.network.effective()
    assert eff.proxy is not None and (eff.proxy.host, eff.proxy.port) == ("proxy.corp.example",
                                                                          3128)
    assert eff.proxy.source == "network.proxy.url"
    assert eff.egress_default == "deny" and eff.egress_allow == () and not eff.dns_exemption
    assert not eff.is_deny_all()
    assert any("allowedHosts: ignored" in w for w in p.warnings)


def test_runtime_proxy_08() -> None:
    eff = load_policy_file(VALID / "runtime_proxy_08.json").network.effective()
    assert eff.proxy is not None and eff.proxy.host == "::1"
    assert eff.proxy.source == "runtimeConfig.networkProxy"
    assert not eff.ingress_deny and not eff.host_loopback_deny and not eff.is_deny_all()


# --------------------------------------------------------------------------- entry points

MINIMAL = {"process": {"commandLine": "true"}}


def test_load_policy_accepts_text_bytes_and_dict() -> None:
    text = json.dumps(MINIMAL)
    a = load_policy(text)
    b = load_policy(b"\xef\xbb\xbf" + text.encode())   # a UTF-8 BOM is tolerated
    c = load_policy(MINIMAL, origin="inline")
    assert a == b == c   # origin is not part of equality
    assert c.origin == "inline"


def test_load_policy_rejects_non_utf8() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(b'{"process": {"commandLine": "\xff"}}')
    assert info.value.path == "" and "UTF-8" in info.value.message


@pytest.mark.parametrize("data", [b'{"a": "\xff"}', b'\xef\xbb\xbf{"a": "\xff"}', b"\xef\xbb",
                                  b"\xef\xbb\xbf\xef\xbb\xbf{}", b"\xef\xbb\xbf", b"{\xc3",
                                  "\u00e9\ufeff".encode()])
def test_policy_bytes_decode_as_the_utf8_sig_codec(data: bytes) -> None:
    """The parser strips the BOM itself (no codec import on a CLI run): same text, same
    error position as ``bytes.decode("utf-8-sig")``."""
    from lxcbind.policy.parse import _utf8_text

    try:
        expected: str | int = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        expected = exc.start
    try:
        got: str | int = _utf8_text(data)
    except PolicyError as exc:
        got = int(exc.message.rsplit("byte ", 1)[1].rstrip(")"))
    assert got == expected


def test_policy_is_frozen() -> None:
    p = load_policy(MINIMAL)
    with pytest.raises(AttributeError):
        p.container_id = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.process.command_line = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.extra = 1  # type: ignore[attr-defined]
    assert p.container_id is None and p.process.command_line == "true"
    assert p == load_policy(MINIMAL) and hash(p) == hash(load_policy(MINIMAL))


def test_null_means_absent() -> None:
    p = load_policy({"version": None, "process": {"commandLine": "true", "timeout": None},
                     "lifecycle": {"destroyOnExit": None}, "network": None})
    assert p.version is None and p.process.timeout_ms == 0 and p.lifecycle.destroy_on_exit
    with pytest.raises(PolicyError) as info:
        load_policy({"process": {"commandLine": None}})
    assert info.value.path == "process.commandLine"


def test_load_policy_file_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_file(tmp_path / "nope.json")
    assert info.value.path == "" and "policy file not found" in info.value.message
    with pytest.raises(PolicyError) as info:
        load_policy_file(tmp_path)
    assert info.value.path == "" and "cannot read policy file" in info.value.message


def test_decode_base64_policy() -> None:
    b64 = base64.b64encode(json.dumps(MINIMAL).encode()).decode()
    assert decode_base64_policy(b64).origin == "<base64>"
    assert decode_base64_policy(b64 + "\n").process.command_line == "true"
    with pytest.raises(PolicyError) as info:
        decode_base64_policy("not base64!")
    assert info.value.path == "" and "base64" in info.value.message
    with pytest.raises(PolicyError) as info:
        decode_base64_policy(base64.b64encode(b"{").decode())
    assert "invalid JSON" in info.value.message


def test_plan_hides_env_values() -> None:
    p = load_policy({"process": {"commandLine": "true", "env": ["TOKEN=hunter2"]}})
    plan = p.to_plan()
    assert plan["process"]["envKeys"] == ["TOKEN"]
    assert "hunter2" not in json.dumps(plan)


def test_cidr_host_bits_are_masked_and_bare_addresses_are_host_routes() -> None:
    p = load_policy({"version": "0.8.0", **MINIMAL, "network": {"egress": {"allow": [
        {"to": [{"cidr": "10.1.2.3/16"}, {"cidr": "2001:db8::1"}]}]}}})
    assert [r.cidr for r in p.network.effective().egress_allow] == ["10.1.0.0/16",
                                                                    "2001:db8::1/128"]


# --------------------------------------------------------------------------- version matrix

def _eff(network: dict | None = None, version: str | None = None,
         **top: object) -> EffectiveNetwork:
    doc: dict = {**MINIMAL, **top}
    if version is not None:
        doc["version"] = version
    if network is not None:
        doc["network"] = network
    return load_policy(doc).network.effective()


def test_matrix_07_capabilities_is_open_even_with_block() -> None:
    for eff in (_eff({"defaultPolicy": "block", "blockedHosts": ["10.0.0.0/8"]}, "0.7.0"),
                _eff(None, None), _eff({}, "0.6.1")):
        assert eff == EffectiveNetwork(firewall=False, egress_default="allow",
                                       ingress_deny=False, host_loopback_deny=False)
        assert not eff.is_deny_all()


def test_matrix_07_firewall_block_drops_all_but_dns() -> None:
    eff = _eff({"enforcementMode": "firewall", "defaultPolicy": "block"}, "0.7.0")
    assert eff.firewall and eff.egress_default == "deny" and eff.dns_exemption
    assert eff.egress_allow == () and eff.ingress_deny and eff.host_loopback_deny
    assert not eff.is_deny_all()   # DNS still leaves


def test_matrix_07_firewall_allow_with_blocked_hosts() -> None:
    eff = _eff({"enforcementMode": "both", "defaultPolicy": "allow",
                "blockedHosts": ["192.0.2.0/24"]}, "0.7.0")
    assert eff.egress_default == "allow" and eff.ingress_deny
    assert eff.egress_deny == (EgressRule("192.0.2.0/24", (), "any", None, None),)
    assert not eff.is_deny_all()


def test_matrix_07_allow_local_network_opens_inbound() -> None:
    eff = _eff({"enforcementMode": "firewall", "allowLocalNetwork": True}, "0.7.0")
    assert not eff.ingress_deny and not eff.is_deny_all()


def test_matrix_08_without_network_block_is_deny_all() -> None:
    for version in ("0.8.0", "0.9.0-rc.1"):
        eff = _eff(None, version)
        assert eff == EffectiveNetwork(firewall=True, egress_default="deny")
        assert not eff.dns_exemption and eff.ingress_deny and eff.host_loopback_deny
        assert eff.is_deny_all()


def test_matrix_08_deny_rules_alone_keep_deny_all() -> None:
    eff = _eff({"egress": {"deny": [{"to": [{"cidr": "0.0.0.0/0"}]}]}}, "0.8.0")
    assert eff.egress_deny and eff.is_deny_all()


def test_matrix_08_allow_default_with_deny_rule() -> None:
    eff = _eff({"egress": {"default": "allow",
                           "deny": [{"to": [{"cidr": "10.0.0.0/8"}],
                                     "ports": [{"protocol": "tcp", "port": 22}]}]}}, "0.8.0")
    assert eff.egress_default == "allow"
    assert eff.egress_deny == (EgressRule("10.0.0.0/8", (), "tcp", 22, 22),)
    assert eff.ingress_deny and not eff.is_deny_all()


def test_matrix_08_allow_rule_or_open_ingress_is_not_deny_all() -> None:
    assert not _eff({"egress": {"allow": [{"to": [{"cidr": "192.0.2.1/32"}]}]}},
                    "0.8.0").is_deny_all()
    assert not _eff({"ingress": {"default": "allow"}}, "0.8.0").is_deny_all()
    assert not _eff({"ingress": {"hostLoopback": "allow"}}, "0.8.0").is_deny_all()


def test_matrix_08_legacy_shape_always_firewalls_without_dns() -> None:
    # mxc's LXC runner keys on the declared version: 0.8 installs rules even in capabilities
    # mode, and drops the DNS exemption even for the legacy shape.
    eff = _eff({"enforcementMode": "capabilities", "defaultPolicy": "block"}, "0.8.0")
    assert eff.firewall and eff.egress_default == "deny" and not eff.dns_exemption
    assert eff.is_deny_all()


def test_matrix_proxy_is_the_only_way_out() -> None:
    eff = _eff({"enforcementMode": "firewall", "defaultPolicy": "allow",
                "proxy": {"url": "http://10.0.3.1:3128"}}, "0.7.0")
    assert eff.proxy is not None and eff.egress_default == "deny"
    assert eff.egress_allow == eff.egress_deny == () and not eff.dns_exemption
    assert eff.ingress_deny and not eff.is_deny_all()
    eff = _eff(None, "0.8.0", runtimeConfig={"networkProxy": "http://localhost:8080"})
    assert eff.proxy is not None and eff.proxy.port == 8080 and not eff.is_deny_all()


def test_policy_type_is_exported() -> None:
    assert isinstance(load_policy(MINIMAL), Policy)
