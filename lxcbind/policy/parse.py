"""Policies: JSON → frozen records.  Every error is a ``PolicyError`` naming its JSON path.

lxcbind reads the sandbox policy format of the public mxc project's LXC backend, schema
versions 0.6–0.9 (see ``notes/policy-format.md`` in the design notes).  This module only
*parses and validates*; it never touches the host.  What the runtime can enforce is the
runtime's business: ``Policy.network.effective()`` gives it a small normalized view to decide
from, and ``EffectiveNetwork.is_deny_all()`` says whether the run needs no network device at all.

Entry points: ``load_policy`` (text, bytes or an already-parsed dict), ``load_policy_file``,
``decode_base64_policy``; ``Policy.to_plan()`` is the JSON-able summary for ``--dry-run``.

Contract and the choices made where the format is silent (or where mxc has a gap):

* **First error only.**  Validation stops at the first problem, in a fixed order (unknown keys
  of an object first, then its fields in document order of this module), so the error is
  deterministic and names one JSON path: ``filesystem.readonlyPaths[2]: path must be absolute``.
  Keys that are not identifiers are written ``parent["odd key"]``.
* **Strict shape.**  Unknown keys are rejected everywhere except inside the ignored sections
  ``ui``, ``fallback`` and ``experimental`` (objects, recorded in ``Policy.ignored_sections``).
  Duplicate keys in one JSON object are rejected (``json`` would silently keep the last one,
  which can hide a ``deniedPaths`` list).  ``NaN``/``Infinity`` are not JSON and are refused.
  Booleans are never accepted where a number is expected.  An explicit ``null`` member means
  "absent" (as with mxc's serde ``Option`` fields): defaults apply, required ones are missing.
* **version**: strict semver ``MAJOR.MINOR.PATCH[-pre][+build]``; supported 0.6–0.9 on
  major.minor, pre-release and build ignored.  Absent or ``""`` means legacy (< 0.8), as in mxc.
* **containment**: absent means ``"lxc"`` (mxc would pick Bubblewrap; lxcbind has one backend).
  Any other value, and the other backends' sections (``processContainer``, ``appContainer``,
  ``seatbelt``, ``experimental.{wslc,windows_sandbox,isolation_session,seatbelt}``) and the
  state-aware fields (``phase``, ``sandboxId``, ``correlationVector``) are errors.
* **containerId**: 1–64 characters of ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (so never ``.``/``..``,
  never ``/``); it names a directory under the lxcpath.  Absent means the runtime picks one.
* **process.commandLine**: required, not blank, no NUL; run as ``/bin/sh -c``.  Optional (and
  so is ``process``) with ``command_required=False``, for callers that bring their own commands.
  **process.cwd**: absolute, no NUL or control characters; ``""`` means "container default",
  as in mxc.  **process.env**: ``KEY=VALUE`` strings, the key ``[A-Za-z_][A-Za-z0-9_]*``, no NUL
  anywhere; ``=`` inside the value is kept.  Duplicate keys: **last wins** (like ``env(1)`` and a
  shell), with a warning.  **process.timeout**: integer milliseconds 0..2**32-1, 0 = none.
* **Filesystem paths** (and ``dir:`` rootfs paths): absolute, not empty, at most 4095 bytes, no
  NUL, no ``"``, no control characters (newline, tab ...), no backslash (liblxc decodes ``\\040``
  style escapes in mount entries, so a literal backslash would be ambiguous), and no ``.``/``..``
  components (the container path is the host path; ``..`` would make the two disagree).
  **Spaces are allowed**: lxcbind hands mount entries to liblxc itself and escapes a space as
  ``\\040``.  Lists are kept verbatim; merging rw/ro/denied conflicts is the mounts layer's job.
* **lxc**: ``distribution``/``release`` must be given together, each a non-empty
  ``[A-Za-z0-9][A-Za-z0-9._-]*`` (they become template arguments and cache paths).  The lxcbind
  extension ``lxc.rootfs`` is ``"host" | "busybox" | "download" | "dir:/abs/path"``, default
  ``download`` when distribution+release are given, else ``host``.  ``download`` without them
  is an error; another rootfs with them set is allowed (the explicit choice wins; a warning).
* **network, legacy shape (0.6/0.7, or 0.8 written the old way)**: ``allowedHosts`` /
  ``blockedHosts`` entries that look like addresses (digits and dots, or any ``:`` or ``/``) must
  be valid IP/CIDR (host bits are allowed and masked, IPv4-mapped IPv6 is rewritten to IPv4, the
  prefix is plain decimal digits); everything else must be a DNS hostname (labels of 1–63
  ``[A-Za-z0-9-]``, no leading/trailing hyphen, 253 characters at most, one trailing dot
  allowed).  Wildcards are refused: they can never be resolved, so a wildcard deny would fail
  open.  ``proxy`` needs exactly one of ``url``/``localhost``/``builtinTestServer``; only an
  ``http(s)://host:port`` URL with a non-loopback host, no credentials (never echoed back) and no
  whitespace fits LXC (the container's loopback is not the host's), and it needs
  ``enforcementMode`` ``firewall`` or ``both``.  ``proxy`` with ``blockedHosts`` is refused here
  (mxc refuses it at apply time: the proxy could fetch a blocked host); ``allowedHosts`` next to a
  proxy are ignored with a warning, as in mxc.
* **network, 0.8 shape**: ``egress`` {default, allow, deny}, ``ingress`` {default,
  hostLoopback}, and top-level ``runtimeConfig.networkProxy`` (an ``http(s)`` URL on localhost,
  127.0.0.1 or [::1]; with a directional network block it requires ``egress.default: deny`` and
  no rules).  A rule's ``cidr`` may also be a bare address (a host route).  ``protocol``
  defaults to ``any``.  Ports are 1..65535; ``endPort`` needs ``port`` and is >= it; ``icmp``
  takes no port; explicit empty ``to``/``ports`` arrays are refused (never widened to "any").
  ``except`` entries must lie inside their ``cidr`` (same family).
* Mixing legacy and 0.8 network fields is an error, and so are 0.8 fields (``egress``,
  ``ingress``, ``runtimeConfig``) under a declared version below 0.8.
* Things only the runtime can check (``allowLocalNetwork: true``, ``ingress.default: allow``,
  IPv6 proxies, whether a host exists ...) are accepted here and show up in ``effective()``.

Thread-safety: everything here is immutable after parsing; share ``Policy`` objects freely.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union

from lxcbind._lite import lazy_re, record
from lxcbind.errors import PolicyError

if TYPE_CHECKING:
    import ipaddress

__all__ = [
    "EffectiveNetwork", "Egress", "EgressRule", "Filesystem", "Ingress", "LegacyNetwork",
    "Lifecycle", "Lxc", "Network", "NetworkHost", "Peer", "Policy", "PortSelector", "Process",
    "Proxy", "Rootfs", "Rule", "SUPPORTED_VERSIONS", "decode_base64_policy", "load_policy",
    "load_policy_file", "DEFAULT_POLICY", "default_policy",
]

IPNetwork = Union["ipaddress.IPv4Network", "ipaddress.IPv6Network"]

SUPPORTED_VERSIONS = ((0, 6), (0, 9))  # inclusive, on (major, minor)
MAX_TIMEOUT_MS = 2**32 - 1
MAX_POLICY_BYTES = 16 * 1024 * 1024
_PATH_MAX = 4095  # PATH_MAX minus the terminating NUL

# The legacy network fields and the 0.8 ("directional") ones, in the order they are reported.
_LEGACY_NET = ("defaultPolicy", "enforcementMode", "allowLocalNetwork", "allowedHosts",
               "blockedHosts", "proxy")
_DIRECTIONAL_NET = ("egress", "ingress")

_IGNORED_SECTIONS = ("ui", "fallback", "experimental")
_TOP_LEVEL = ("$schema", "_comment", "version", "containment", "containerId", "process",
              "lifecycle", "filesystem", "network", "runtimeConfig", "lxc") + _IGNORED_SECTIONS
# Known mxc keys that lxcbind refuses, with the reason (better than "unknown field").
_OTHER_BACKENDS = ("processContainer", "appContainer", "seatbelt", "bubblewrap")
_STATE_AWARE = ("phase", "sandboxId", "correlationVector")
_EXPERIMENTAL_BACKENDS = ("wslc", "windows_sandbox", "isolation_session", "seatbelt")

_PRE_ID = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"   # semver 2.0 pre-release identifier
_SEMVER = lazy_re(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    rf"(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?")
_CONTAINER_ID = lazy_re(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_KEY = lazy_re(r"[A-Za-z_][A-Za-z0-9_]*")
_DIST_NAME = lazy_re(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DNS_LABEL = lazy_re(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IDENT = lazy_re(r"[A-Za-z_$][A-Za-z0-9_$]*")
_CONTROL = lazy_re(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- the model
# Records, not dataclasses: see _lite (import time is part of every one-shot run).

@record
class Process:
    """What to run: ``/bin/sh -c command_line`` in ``cwd`` with exactly ``env``."""

    command_line: str
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()   # (key, value), duplicates resolved (last wins)
    timeout_ms: int = 0                      # 0 = no timeout

    @property
    def argv(self) -> tuple[str, ...]:
        return ("/bin/sh", "-c", self.command_line)

    @property
    def timeout(self) -> float | None:
        """The timeout in seconds, or None for no timeout."""
        return self.timeout_ms / 1000 if self.timeout_ms else None

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@record
class Lifecycle:
    destroy_on_exit: bool = True
    preserve_policy: bool = False


@record
class Filesystem:
    readwrite_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    denied_paths: tuple[str, ...] = ()


@record
class Rootfs:
    """Where the root filesystem comes from (lxcbind extension ``lxc.rootfs``)."""

    kind: Literal["host", "busybox", "download", "dir"]
    path: str | None = None   # only for ``dir``


@record
class Limits:
    """Resource limits (lxcbind extension ``lxc.limits``); None = lxcbind's default, and
    ``UNLIMITED`` (from ``"max"``) = no limit at all."""

    memory: int | None = None     # bytes, memory and swap together
    pids: int | None = None
    cpu: float | None = None      # CPUs' worth of time per period


UNLIMITED = -1
OPT_INS = ("nesting", "perf")    # lxc.allow: protections a policy may give up, by name


@record
class Lxc:
    distribution: str | None = None
    release: str | None = None
    rootfs: Rootfs = Rootfs("host")
    privileged: bool = False      # no user namespace: root inside is root outside
    limits: Limits = Limits()
    allow: tuple[str, ...] = ()   # opt-ins from OPT_INS
    uid: int | None = None        # the workload's user inside (None: root)
    gid: int | None = None


@record
class NetworkHost:
    """A legacy ``allowedHosts``/``blockedHosts`` entry: an IP/CIDR, or a hostname to resolve."""

    text: str
    network: IPNetwork | None   # None for a hostname


@record
class Proxy:
    """An HTTP(S) proxy endpoint.  ``source`` is the JSON path it came from."""

    url: str
    scheme: str
    host: str
    port: int
    source: str


@record
class LegacyNetwork:
    default_policy: Literal["allow", "block"] = "block"
    enforcement_mode: Literal["capabilities", "firewall", "both"] = "capabilities"
    allow_local_network: bool = False
    allowed_hosts: tuple[NetworkHost, ...] = ()
    blocked_hosts: tuple[NetworkHost, ...] = ()
    proxy: Proxy | None = None

    @property
    def firewall(self) -> bool:
        return self.enforcement_mode in ("firewall", "both")


@record
class Peer:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()


@record
class PortSelector:
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    port: int | None = None
    end_port: int | None = None


@record
class Rule:
    to: tuple[Peer, ...] = ()                # empty = any destination
    ports: tuple[PortSelector, ...] = ()     # empty = any protocol and port


@record
class Egress:
    default: Literal["allow", "deny"] = "deny"
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()


@record
class Ingress:
    default: Literal["allow", "deny"] = "deny"
    host_loopback: Literal["allow", "deny"] = "deny"


class EgressRule(NamedTuple):
    """One normalized egress match: destination, excluded sub-ranges, protocol, port range.

    ``protocol`` ``any`` with a port means TCP and UDP; ports are None for "all ports".
    """

    cidr: str
    excepts: tuple[str, ...]
    protocol: str
    port_min: int | None
    port_max: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"cidr": self.cidr, "except": list(self.excepts), "protocol": self.protocol,
                "portMin": self.port_min, "portMax": self.port_max}


@record
class EffectiveNetwork:
    """What the network policy means for an LXC run (note §2.1 and the §4.4 matrix).

    ``firewall`` False means the policy asks for no filtering at all (0.6/0.7 without
    ``enforcementMode`` firewall/both): open network, the other fields then carry no rules.
    Deny rules are listed before allow rules and win over them.  Hostnames are not resolved
    here; they are in ``unresolved_allow``/``unresolved_deny``.
    """

    firewall: bool
    egress_default: Literal["allow", "deny"]
    egress_deny: tuple[EgressRule, ...] = ()
    egress_allow: tuple[EgressRule, ...] = ()
    unresolved_deny: tuple[str, ...] = ()
    unresolved_allow: tuple[str, ...] = ()
    ingress_deny: bool = True
    host_loopback_deny: bool = True
    dns_exemption: bool = False   # legacy firewall mode under version < 0.8: port 53 open
    proxy: Proxy | None = None

    def is_deny_all(self) -> bool:
        """True when nothing may leave or enter: deny-default egress with no way out (no allow
        rule, no DNS exemption, no proxy) and inbound + host loopback denied.  Such a run needs
        no network device at all.  Deny rules are redundant then and do not matter."""
        return (self.firewall and self.egress_default == "deny" and not self.egress_allow
                and not self.unresolved_allow and not self.dns_exemption
                and self.proxy is None and self.ingress_deny and self.host_loopback_deny)

    def to_dict(self) -> dict[str, Any]:
        return {
            "firewall": self.firewall,
            "denyAll": self.is_deny_all(),
            "egressDefault": self.egress_default,
            "egressDeny": [r.to_dict() for r in self.egress_deny],
            "egressAllow": [r.to_dict() for r in self.egress_allow],
            "unresolvedDeny": list(self.unresolved_deny),
            "unresolvedAllow": list(self.unresolved_allow),
            "ingressDeny": self.ingress_deny,
            "hostLoopbackDeny": self.host_loopback_deny,
            "dnsExemption": self.dns_exemption,
            "proxy": None if self.proxy is None else
            {"url": self.proxy.url, "host": self.proxy.host, "port": self.proxy.port,
             "source": self.proxy.source},
        }




@record
class Network:
    """The network section as written (``shape``) plus the declared-version switch.

    ``shape`` is ``legacy`` (0.6/0.7 fields; then ``legacy`` is set) or ``directional`` (0.8
    fields, or a >= 0.8 policy without legacy fields; then ``egress``/``ingress`` are set).
    ``version_08`` is True when the declared version is >= 0.8: mxc's LXC runner then always
    installs a firewall and drops the DNS exemption, whatever the shape.
    """

    shape: Literal["legacy", "directional"]
    version_08: bool
    specified: bool = False
    legacy: LegacyNetwork | None = None
    egress: Egress | None = None
    ingress: Ingress | None = None
    runtime_proxy: Proxy | None = None

    def effective(self) -> EffectiveNetwork:
        if self.shape == "directional":
            egress = self.egress or Egress()
            ingress = self.ingress or Ingress()
            if self.runtime_proxy is not None:
                # Model 2: the proxy is the only way out; direct rules do not apply.
                return EffectiveNetwork(True, "deny", proxy=self.runtime_proxy,
                                        ingress_deny=ingress.default == "deny",
                                        host_loopback_deny=ingress.host_loopback == "deny")
            return EffectiveNetwork(
                firewall=True, egress_default=egress.default,
                egress_deny=_lower_rules(egress.deny), egress_allow=_lower_rules(egress.allow),
                ingress_deny=ingress.default == "deny",
                host_loopback_deny=ingress.host_loopback == "deny")

        legacy = self.legacy or LegacyNetwork()
        if not (self.version_08 or legacy.firewall):
            # 0.6/0.7 "capabilities": mxc installs nothing, even with defaultPolicy block.
            return EffectiveNetwork(False, "allow", ingress_deny=False, host_loopback_deny=False)
        ingress_deny = not legacy.allow_local_network
        if legacy.proxy is not None:
            return EffectiveNetwork(True, "deny", proxy=legacy.proxy, ingress_deny=ingress_deny)
        deny, unresolved_deny = _lower_hosts(legacy.blocked_hosts)
        allow, unresolved_allow = _lower_hosts(legacy.allowed_hosts)
        return EffectiveNetwork(
            firewall=True, egress_default="allow" if legacy.default_policy == "allow" else "deny",
            egress_deny=deny, egress_allow=allow, unresolved_deny=unresolved_deny,
            unresolved_allow=unresolved_allow, ingress_deny=ingress_deny,
            host_loopback_deny=True, dns_exemption=not self.version_08)

    def is_deny_all(self) -> bool:
        return self.effective().is_deny_all()


def _ANY_PEERS() -> tuple[Peer, Peer]:  # noqa: N802 - a constant, built on first use
    import ipaddress

    return (Peer(ipaddress.ip_network("0.0.0.0/0")), Peer(ipaddress.ip_network("::/0")))


def _lower_rules(rules: Iterable[Rule]) -> tuple[EgressRule, ...]:
    out: list[EgressRule] = []
    for rule in rules:
        peers = rule.to or _ANY_PEERS()
        ports = rule.ports or (PortSelector(),)
        for peer in peers:
            for sel in ports:
                end = sel.end_port if sel.end_port is not None else sel.port
                out.append(EgressRule(str(peer.cidr), tuple(str(e) for e in peer.excepts),
                                      sel.protocol, sel.port, end))
    return tuple(out)


def _lower_hosts(hosts: Iterable[NetworkHost]) -> tuple[tuple[EgressRule, ...], tuple[str, ...]]:
    rules, names = [], []
    for host in hosts:
        if host.network is None:
            names.append(host.text)
        else:
            rules.append(EgressRule(str(host.network), (), "any", None, None))
    return tuple(rules), tuple(names)


@record(uncompared=("origin",))
class Policy:
    """A validated policy.  ``warnings`` are harmless oddities worth showing in ``--dry-run``."""

    process: Process
    version: str | None = None                     # as written ("" and absent → None)
    schema_version: tuple[int, int, int] | None = None
    containment: Literal["lxc"] = "lxc"
    container_id: str | None = None                # None: the runtime names the container
    lifecycle: Lifecycle = Lifecycle()
    filesystem: Filesystem = Filesystem()
    lxc: Lxc = Lxc()
    network: Network = Network("legacy", False, legacy=LegacyNetwork())
    ignored_sections: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    origin: str = "<policy>"   # not compared

    def to_plan(self) -> dict[str, Any]:
        """A JSON-able summary of the effective settings, for ``--dry-run``.

        Environment values are not included (they often hold secrets); only the keys are.
        """
        rootfs = self.lxc.rootfs
        return {
            "origin": self.origin,
            "version": self.version,
            "containment": self.containment,
            "containerId": self.container_id,
            "process": {
                "argv": list(self.process.argv),
                "cwd": self.process.cwd,
                "envKeys": [k for k, _ in self.process.env],
                "timeoutMs": self.process.timeout_ms,
            },
            "lifecycle": {"destroyOnExit": self.lifecycle.destroy_on_exit,
                          "preservePolicy": self.lifecycle.preserve_policy},
            "filesystem": {"readwritePaths": list(self.filesystem.readwrite_paths),
                           "readonlyPaths": list(self.filesystem.readonly_paths),
                           "deniedPaths": list(self.filesystem.denied_paths)},
            "rootfs": {"kind": rootfs.kind, "path": rootfs.path,
                       "distribution": self.lxc.distribution, "release": self.lxc.release},
            "isolation": {"privileged": self.lxc.privileged, "allow": list(self.lxc.allow),
                          "uid": self.lxc.uid, "gid": self.lxc.gid,
                          "limits": {"memory": self.lxc.limits.memory,
                                     "pids": self.lxc.limits.pids,
                                     "cpu": self.lxc.limits.cpu}},
            "network": {"shape": self.network.shape, **self.network.effective().to_dict()},
            "ignoredSections": list(self.ignored_sections),
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- entry points

def load_policy(source: str | bytes | dict[str, Any], *, origin: str = "<policy>",
                command_required: bool = True) -> Policy:
    """Parse and validate a policy given as JSON text, UTF-8 bytes, or an already-parsed dict.

    ``command_required=False``: the caller brings its own commands (``Sandbox.run(cmd)``,
    ``Session.from_policy``, ``Pool``), so ``process.commandLine`` (and even the whole
    ``process`` section) may be missing; ``Policy.process.command_line`` is then ``""``.

    Raises:
        PolicyError: invalid JSON (path ``""``) or an invalid field (``.path`` names it).
    """
    if isinstance(source, (bytes, bytearray)):
        try:
            source = bytes(source).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyError("", f"policy is not valid UTF-8 (byte {exc.start})") from None
    if isinstance(source, str):
        data = _parse_json(source)
    elif isinstance(source, dict):
        data = source
    else:
        raise TypeError(f"load_policy() expects str, bytes or dict, not {type(source).__name__}")
    return _Parser(origin, command_required).policy(data)


def load_policy_file(path: str | bytes | os.PathLike[str], *,
                     command_required: bool = True) -> Policy:
    """Read and parse a policy file (``/dev/stdin`` works).

    Raises:
        PolicyError: the file is missing, unreadable, too large, or an invalid policy.
    """
    data = read_policy_file(path)
    return load_policy(data, origin=os.fsdecode(path), command_required=command_required)


def read_policy_file(path: str | bytes | os.PathLike[str]) -> bytes:
    """The bytes of a policy file, size-checked; ``PolicyError`` when it cannot be read."""
    name = os.fsdecode(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError("", f"policy file not found: {name}") from None
    except OSError as exc:
        raise PolicyError("", f"cannot read policy file {name}: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError("", f"policy file {name} is larger than {MAX_POLICY_BYTES} bytes")
    return data


def policy_document(source: str | bytes) -> dict[str, Any]:
    """The JSON object of a policy's text, parsed as strictly as ``load_policy`` parses it
    (duplicate keys, NaN refused) but not validated: for callers that edit a policy (the CLI's
    ``--env``/``--rw``/... options) before ``load_policy``.  ``PolicyError`` if not an object."""
    if isinstance(source, (bytes, bytearray)):
        try:
            source = bytes(source).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PolicyError("", f"policy is not valid UTF-8 (byte {exc.start})") from None
    data = _parse_json(source)
    if not isinstance(data, dict):
        raise PolicyError("", f"a policy must be a JSON object, got {_jtype(data)}")
    return data


# The embedded default: schema 0.8 with no network section (deny-all: no network device but
# loopback), the host root filesystem, default isolation; the command comes from the caller.
DEFAULT_POLICY: dict[str, Any] = {"version": "0.8.0", "containment": "lxc"}


def default_policy(command_line: str | None = None) -> Policy:
    """The embedded default policy (``DEFAULT_POLICY``), running ``command_line`` if given."""
    doc: dict[str, Any] = dict(DEFAULT_POLICY)
    if command_line is not None:
        doc["process"] = {"commandLine": command_line}
    return load_policy(doc, origin="<default>", command_required=command_line is not None)


def decode_base64_policy(b64: str | bytes) -> Policy:
    """Parse a policy passed as standard base64 with padding (mxc's ``--config-base64``).

    Raises:
        PolicyError: not valid base64, not UTF-8, or an invalid policy.
    """
    return load_policy(base64_policy_bytes(b64), origin="<base64>")


def base64_policy_bytes(b64: str | bytes) -> bytes:
    """The bytes of a policy passed as base64; ``PolicyError`` when it is not valid base64."""
    try:
        return base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PolicyError("", f"policy is not valid base64: {exc}") from None


class _DupKeyDict(dict):  # type: ignore[type-arg]
    """A JSON object that had repeated keys; reported when the parser reaches it."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dups: list[str] = []
    for key, value in pairs:
        if key in out and key not in dups:
            dups.append(key)
        out[key] = value
    if dups:
        marked = _DupKeyDict(out)
        marked.duplicates = dups
        return marked
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise PolicyError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") \
            from None
    except (ValueError, RecursionError) as exc:
        raise PolicyError("", f"invalid JSON: {exc}") from None


# --------------------------------------------------------------------------- helpers

def _join(path: str, key: str) -> str:
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _obj(value: Any, path: str, allowed: Iterable[str]) -> dict[str, Any]:
    """Check that ``value`` is an object without duplicate or unknown keys.

    Returns a copy without the ``null`` members: like mxc (serde ``Option``), an explicit
    ``null`` means "absent", so defaults apply and required fields are reported missing.
    """
    if not isinstance(value, dict):
        raise PolicyError(path, f"expected an object, got {_jtype(value)}")
    for key in getattr(value, "duplicates", ()):
        raise PolicyError(_join(path, key), "duplicate key")
    allowed = tuple(allowed)
    for key in value:
        if not isinstance(key, str):
            raise PolicyError(path, f"object keys must be strings, got {key!r}")
        if key not in allowed:
            import difflib

            hint = difflib.get_close_matches(key, allowed, n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise PolicyError(_join(path, key), f"unknown field{more}")
    return {k: v for k, v in value.items() if v is not None}


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(path, f"expected a string, got {_jtype(value)}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"expected true or false, got {_jtype(value)}")
    return value


def _enum(value: Any, path: str, choices: tuple[str, ...]) -> Any:
    if not isinstance(value, str) or value not in choices:
        shown = json.dumps(value) if isinstance(value, str) else _jtype(value)
        raise PolicyError(path, f"expected one of {', '.join(map(json.dumps, choices))}, "
                                f"got {shown}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(path, f"expected an array, got {_jtype(value)}")
    return value


def _int(value: Any, path: str, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        got = value if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else _jtype(value)
        raise PolicyError(path, f"expected {what}, got {got}")
    return value


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(value: Any, path: str) -> int:
    """``"512M"``, ``"2G"``, a plain number of bytes, or ``"max"`` (``UNLIMITED``)."""
    if value == "max":
        return UNLIMITED
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = value, ""
    elif isinstance(value, str) and value[:-1].isdigit() and value[-1:].upper() in _SIZE_UNITS:
        number, unit = int(value[:-1]), value[-1].upper()
    elif isinstance(value, str) and value.isdigit():
        number, unit = int(value), ""
    else:
        raise PolicyError(path, 'expected a size such as "512M", "2G" or a number of bytes, '
                          f'or "max", got {json.dumps(value)}')
    size = number * _SIZE_UNITS[unit]
    if not 16 << 20 <= size <= 1 << 50:
        raise PolicyError(path, f"{json.dumps(value)} is out of range (16M to 1P)")
    return size


def _abs_path(value: Any, path: str) -> str:
    """A host/container path that lxcbind can put into an lxc.mount.entry safely."""
    text = _str(value, path)
    if not text.strip():
        raise PolicyError(path, "path must not be empty")
    if "\0" in text:
        raise PolicyError(path, "path must not contain NUL bytes")
    if _CONTROL.search(text):
        raise PolicyError(path, "path must not contain newlines, tabs or other control "
                                "characters (they would break the LXC mount entry)")
    if '"' in text:
        raise PolicyError(path, 'path must not contain \'"\'')
    if "\\" in text:
        raise PolicyError(path, "path must not contain a backslash (ambiguous with the "
                                "escapes of LXC mount entries)")
    if not text.startswith("/"):
        raise PolicyError(path, "path must be absolute")
    if any(part in (".", "..") for part in text.split("/")):
        raise PolicyError(path, "path must not contain '.' or '..' components")
    if len(text.encode("utf-8", "surrogatepass")) > _PATH_MAX:
        raise PolicyError(path, f"path is longer than {_PATH_MAX} bytes")
    return text


def _parse_cidr(text: str, path: str, *, what: str = "CIDR") -> IPNetwork:
    """IPv4/IPv6 address or CIDR; host bits are masked, IPv4-mapped IPv6 becomes IPv4."""
    import ipaddress  # only network sections need it (keeps a run's imports small)
    import re

    addr, slash, prefix = text.partition("/")
    # ipaddress accepts "/ 24", "/+24" or a scope id ("%eth0"); none of them is a CIDR.
    if (slash and not re.fullmatch(r"0|[1-9]\d{0,2}", prefix)) or "%" in addr or not addr:
        raise PolicyError(path, f"not a valid {what}: {text!r}")
    try:
        net: IPNetwork = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise PolicyError(path, f"not a valid {what}: {text!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


def _looks_like_address(text: str) -> bool:
    import re

    return ":" in text or "/" in text or re.fullmatch(r"[0-9.]+", text) is not None


def _hostname(text: str, path: str) -> str:
    if "*" in text:
        raise PolicyError(path, f"wildcard hostnames are not supported: {text!r}")
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(lbl) for lbl in labels):
        raise PolicyError(path, f"not a valid IP address, CIDR or hostname: {text!r}")
    return text


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _proxy_url(value: Any, path: str) -> Proxy:
    """``http(s)://host:port`` with the mxc shape checks.  Never echoes credentials."""
    import urllib.parse

    text = _str(value, path)
    if not text:
        raise PolicyError(path, "proxy URL must not be empty")
    if _CONTROL.search(text) or " " in text:
        raise PolicyError(path, "proxy URL must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise PolicyError(path, "proxy URL is not a valid URL (expected http://host:port)") \
            from None
    if parts.username is not None or parts.password is not None:
        # mxc refuses these because its --set-var exposed them in argv; lxcbind refuses them
        # because a policy file is the wrong place for a secret.  Say so without repeating it.
        redacted = f"{parts.scheme}://***@{parts.hostname or ''}" + (f":{port}" if port else "")
        raise PolicyError(path, f"proxy URL must not contain credentials (got {redacted}); "
                                "configure proxy authentication outside the policy")
    if parts.scheme not in ("http", "https"):
        raise PolicyError(path, f"proxy URL must use the http or https scheme, got "
                                f"{parts.scheme or 'none'!r}")
    host = parts.hostname
    if not host:
        raise PolicyError(path, f"proxy URL must include a host (e.g. http://proxy:3128), "
                                f"got {text!r}")
    if port is None or port == 0:
        raise PolicyError(path, f"proxy URL must include a port between 1 and 65535 "
                                f"(e.g. http://proxy:3128), got {text!r}")
    return Proxy(url=text, scheme=parts.scheme, host=host, port=port, source=path)


# --------------------------------------------------------------------------- the parser

class _Parser:
    def __init__(self, origin: str, command_required: bool = True) -> None:
        self.origin = origin
        self.command_required = command_required
        self.warnings: list[str] = []

    def policy(self, data: Any) -> Policy:
        if not isinstance(data, dict):
            raise PolicyError("", f"a policy must be a JSON object, got {_jtype(data)}")
        for key in data:
            if key in _OTHER_BACKENDS:
                raise PolicyError(key, "only the LXC backend is supported by lxcbind; remove "
                                       "this backend section")
            if key in _STATE_AWARE:
                raise PolicyError(key, "only valid on state-aware requests, which the LXC "
                                       "backend does not have")
        doc = _obj(data, "", _TOP_LEVEL)

        version, schema = self.version(doc.get("version", ""))
        containment = doc.get("containment", "lxc")
        if containment != "lxc":
            shown = json.dumps(containment) if isinstance(containment, str) else \
                _jtype(containment)
            raise PolicyError("containment", f"only \"lxc\" is supported by lxcbind (or omit "
                                             f"the field), got {shown}")
        container_id = self.container_id(doc["containerId"]) if "containerId" in doc else None
        if "process" not in doc and self.command_required:
            raise PolicyError("process", "the 'process' section is required")
        process = self.process(doc.get("process", {}))
        lifecycle = self.lifecycle(doc.get("lifecycle", {}))
        filesystem = self.filesystem(doc.get("filesystem", {}))
        lxc = self.lxc(doc.get("lxc", {}))
        network = self.network(doc, schema)
        ignored = []
        for name in _IGNORED_SECTIONS:
            if name in doc:
                section = doc[name]
                if not isinstance(section, dict):
                    raise PolicyError(name, f"expected an object, got {_jtype(section)}")
                if name == "experimental":
                    for key in _EXPERIMENTAL_BACKENDS:
                        if key in section:
                            raise PolicyError(f"experimental.{key}", "only the LXC backend is "
                                              "supported by lxcbind; remove this section")
                ignored.append(name)
        return Policy(process=process, version=version, schema_version=schema,
                      container_id=container_id, lifecycle=lifecycle, filesystem=filesystem,
                      lxc=lxc, network=network, ignored_sections=tuple(ignored),
                      warnings=tuple(self.warnings), origin=self.origin)

    def version(self, value: Any) -> tuple[str | None, tuple[int, int, int] | None]:
        if value == "":
            return None, None
        text = _str(value, "version")
        m = _SEMVER.fullmatch(text)
        if not m:
            raise PolicyError("version", f"invalid schema version {text!r}: must be semver "
                                         "MAJOR.MINOR.PATCH, e.g. \"0.8.0\"")
        triple = (int(m[1]), int(m[2]), int(m[3]))
        (lo_major, lo_minor), (hi_major, hi_minor) = SUPPORTED_VERSIONS
        if triple[:2] < (lo_major, lo_minor):
            raise PolicyError("version", f"schema version {text} is older than supported "
                                         f"(supported: {lo_major}.{lo_minor} to "
                                         f"{hi_major}.{hi_minor})")
        if triple[:2] > (hi_major, hi_minor):
            raise PolicyError("version", f"schema version {text} is newer than supported "
                                         f"(supported: {lo_major}.{lo_minor} to "
                                         f"{hi_major}.{hi_minor})")
        return text, triple

    def container_id(self, value: Any) -> str:
        text = _str(value, "containerId")
        if not text:
            raise PolicyError("containerId", "must not be empty (omit it for a generated name)")
        if len(text) > 64:
            raise PolicyError("containerId", "must be at most 64 characters")
        if not _CONTAINER_ID.fullmatch(text):
            raise PolicyError("containerId", f"invalid container name {text!r}: use letters, "
                              "digits, '_', '.' and '-', starting with a letter or digit")
        return text

    def process(self, value: Any) -> Process:
        sec = _obj(value, "process", ("commandLine", "cwd", "env", "timeout"))
        if "commandLine" not in sec and self.command_required:
            raise PolicyError("process.commandLine", "missing required field")
        cmd = _str(sec.get("commandLine", ""), "process.commandLine")
        if not cmd.strip() and ("commandLine" in sec or self.command_required):
            raise PolicyError("process.commandLine", "must not be empty")
        if "\0" in cmd:
            raise PolicyError("process.commandLine", "must not contain NUL bytes")
        cwd = None
        if sec.get("cwd", "") != "":
            cwd = _abs_path(sec["cwd"], "process.cwd")
        env: dict[str, str] = {}
        for i, entry in enumerate(_list(sec.get("env", []), "process.env")):
            path = f"process.env[{i}]"
            entry = _str(entry, path)
            if "\0" in entry:
                raise PolicyError(path, "must not contain NUL bytes")
            key, eq, val = entry.partition("=")
            if not eq:
                raise PolicyError(path, "expected KEY=VALUE (no '=' found)")
            if not key:
                raise PolicyError(path, "expected KEY=VALUE (the key is empty)")
            if not _ENV_KEY.fullmatch(key):
                raise PolicyError(path, f"invalid variable name {key!r}: use letters, digits "
                                        "and '_', not starting with a digit")
            if key in env:
                self.warnings.append(f"{path}: {key} is set more than once; the last value wins")
                del env[key]   # last wins, and takes the last position
            env[key] = val
        timeout = _int(sec.get("timeout", 0), "process.timeout", 0, MAX_TIMEOUT_MS,
                       f"a non-negative integer (milliseconds) up to {MAX_TIMEOUT_MS}")
        return Process(cmd, cwd, tuple(env.items()), timeout)

    def lifecycle(self, value: Any) -> Lifecycle:
        sec = _obj(value, "lifecycle", ("destroyOnExit", "preservePolicy"))
        return Lifecycle(
            destroy_on_exit=_bool(sec.get("destroyOnExit", True), "lifecycle.destroyOnExit"),
            preserve_policy=_bool(sec.get("preservePolicy", False), "lifecycle.preservePolicy"))

    def filesystem(self, value: Any) -> Filesystem:
        keys = ("readwritePaths", "readonlyPaths", "deniedPaths")
        sec = _obj(value, "filesystem", keys)
        lists = []
        for key in keys:
            path = f"filesystem.{key}"
            items = _list(sec.get(key, []), path)
            lists.append(tuple(_abs_path(p, f"{path}[{i}]") for i, p in enumerate(items)))
        return Filesystem(*lists)

    def lxc(self, value: Any) -> Lxc:
        sec = _obj(value, "lxc", ("distribution", "release", "rootfs", "privileged", "limits",
                                  "allow", "uid", "gid"))
        names: dict[str, str | None] = {}
        for key in ("distribution", "release"):
            path = f"lxc.{key}"
            names[key] = None
            if key in sec:
                text = _str(sec[key], path)
                if not _DIST_NAME.fullmatch(text):
                    raise PolicyError(path, "expected a non-empty name of letters, digits, "
                                            f"'.', '_' and '-', got {text!r}")
                names[key] = text
        dist, rel = names["distribution"], names["release"]
        if (dist is None) != (rel is None):
            missing = "lxc.release" if rel is None else "lxc.distribution"
            other = "lxc.distribution" if rel is None else "lxc.release"
            raise PolicyError(missing, f"required when {other} is given")
        rootfs = Rootfs("download" if dist else "host")
        if "rootfs" in sec:
            text = _str(sec["rootfs"], "lxc.rootfs")
            if text.startswith("dir:"):
                rootfs = Rootfs("dir", _abs_path(text[4:], "lxc.rootfs"))
            elif text in ("host", "busybox", "download"):
                rootfs = Rootfs(text)  # type: ignore[arg-type]
            else:
                raise PolicyError("lxc.rootfs", 'expected "host", "busybox", "download" or '
                                                f'"dir:/absolute/path", got {json.dumps(text)}')
            if rootfs.kind == "download" and not dist:
                raise PolicyError("lxc.rootfs", '"download" needs lxc.distribution and '
                                                "lxc.release")
            if rootfs.kind != "download" and dist:
                self.warnings.append(f"lxc.rootfs: {text} is used; lxc.distribution and "
                                     "lxc.release are ignored")
        privileged = _bool(sec["privileged"], "lxc.privileged") if "privileged" in sec else False
        if privileged:
            self.warnings.append("lxc.privileged: true: this container is not a sandbox (no "
                                 "user namespace: root inside is root outside)")
        allow: list[str] = []
        for i, item in enumerate(_list(sec.get("allow", []), "lxc.allow")):
            allow.append(_enum(item, f"lxc.allow[{i}]", OPT_INS))
        limits = self.limits(sec.get("limits", {}))
        ids = {key: _int(sec[key], f"lxc.{key}", 0, 65533, "an id inside the container, 0 to "
                         "65533") for key in ("uid", "gid") if key in sec}
        if "gid" in ids and "uid" not in ids:
            raise PolicyError("lxc.uid", "required when lxc.gid is given")
        uid = ids.get("uid")
        return Lxc(dist, rel, rootfs, privileged, limits, tuple(dict.fromkeys(allow)),
                   uid, ids.get("gid", uid))

    def limits(self, value: Any) -> Limits:
        sec = _obj(value, "lxc.limits", ("memory", "pids", "cpu"))
        memory = pids = cpu = None
        if "memory" in sec:
            memory = _size(sec["memory"], "lxc.limits.memory")
        if "pids" in sec:
            pids = UNLIMITED if sec["pids"] == "max" else \
                _int(sec["pids"], "lxc.limits.pids", 8, 2**22,
                     "a number of processes from 8 to 4194304, or \"max\"")
        if "cpu" in sec:
            raw = sec["cpu"]
            if raw == "max":
                cpu = float(UNLIMITED)
            elif isinstance(raw, bool) or not isinstance(raw, (int, float)) or \
                    not 0.01 <= raw <= 4096:
                raise PolicyError("lxc.limits.cpu", "expected a number of CPUs from 0.01 to "
                                  f'4096 (e.g. 1.5), or "max", got {json.dumps(raw)}')
            else:
                cpu = float(raw)
        return Limits(memory, pids, cpu)

    # ----------------------------------------------------------------------- network

    def network(self, doc: dict[str, Any], schema: tuple[int, int, int] | None) -> Network:
        version_08 = schema is not None and schema[:2] >= (0, 8)
        specified = "network" in doc
        net = _obj(doc.get("network", {}), "network", _LEGACY_NET + _DIRECTIONAL_NET)
        runtime = None
        if "runtimeConfig" in doc:
            runtime = _obj(doc["runtimeConfig"], "runtimeConfig", ("networkProxy",))

        legacy_keys = [k for k in _LEGACY_NET if k in net]
        new_paths = [f"network.{k}" for k in _DIRECTIONAL_NET if k in net]
        if runtime is not None:
            new_paths.append("runtimeConfig")
        if legacy_keys and new_paths:
            raise PolicyError(new_paths[0], "cannot mix the 0.8 network fields (egress, "
                              "ingress, runtimeConfig) with the legacy ones (defaultPolicy, "
                              "enforcementMode, allowLocalNetwork, allowedHosts, blockedHosts, "
                              f"proxy); found network.{legacy_keys[0]}")
        if new_paths and not version_08:
            declared = doc.get("version") or "absent"
            raise PolicyError(new_paths[0], "requires schema version 0.8 or later (version is "
                                            f"{declared}): set \"version\": \"0.8.0\"")
        if legacy_keys or not version_08:
            return Network("legacy", version_08, specified, legacy=self.legacy(net))

        egress = self.egress(net.get("egress", {}))
        ingress = self.ingress(net.get("ingress", {}))
        proxy = None
        if runtime is not None and "networkProxy" in runtime:
            path = "runtimeConfig.networkProxy"
            proxy = _proxy_url(runtime["networkProxy"], path)
            if proxy.host.lower() not in ("localhost", "127.0.0.1", "::1"):
                raise PolicyError(path, "must use localhost, 127.0.0.1 or [::1]")
            if "egress" in net and (egress.default != "deny" or egress.allow or egress.deny):
                raise PolicyError(path, "requires network.egress.default \"deny\" with no "
                                        "allow or deny rules")
        return Network("directional", True, specified, egress=egress, ingress=ingress,
                       runtime_proxy=proxy)

    def legacy(self, net: dict[str, Any]) -> LegacyNetwork:
        p = "network."
        default = _enum(net.get("defaultPolicy", "block"), p + "defaultPolicy", ("allow", "block"))
        mode = _enum(net.get("enforcementMode", "capabilities"), p + "enforcementMode",
                     ("capabilities", "firewall", "both"))
        local = _bool(net.get("allowLocalNetwork", False), p + "allowLocalNetwork")
        hosts = {}
        for key in ("allowedHosts", "blockedHosts"):
            entries = []
            for i, item in enumerate(_list(net.get(key, []), p + key)):
                path = f"{p}{key}[{i}]"
                text = _str(item, path)
                if not text.strip():
                    raise PolicyError(path, "must not be empty")
                if _looks_like_address(text):
                    entries.append(NetworkHost(text, _parse_cidr(text, path,
                                                                 what="IP address or CIDR")))
                else:
                    entries.append(NetworkHost(_hostname(text, path), None))
            hosts[key] = tuple(entries)
        proxy = self.legacy_proxy(net["proxy"]) if "proxy" in net else None
        if proxy is not None:
            if mode not in ("firewall", "both"):
                raise PolicyError("network.proxy", "needs network.enforcementMode \"firewall\" "
                                  "or \"both\"; without a firewall the proxy is only advisory")
            if hosts["blockedHosts"]:
                raise PolicyError("network.blockedHosts", "cannot be combined with a proxy "
                                  "(the proxy could still fetch a blocked host)")
            if hosts["allowedHosts"]:
                self.warnings.append("network.allowedHosts: ignored when network.proxy is set; "
                                     "the proxy is the only allowed destination")
        return LegacyNetwork(default, mode, local, hosts["allowedHosts"], hosts["blockedHosts"],
                             proxy)

    def legacy_proxy(self, value: Any) -> Proxy:
        path = "network.proxy"
        sec = _obj(value, path, ("url", "localhost", "builtinTestServer"))
        given = [k for k in ("url", "localhost", "builtinTestServer") if k in sec]
        if len(given) != 1:
            raise PolicyError(path, "must specify exactly one of builtinTestServer, localhost "
                                    "or url")
        key = given[0]
        if key == "builtinTestServer":
            if _bool(sec[key], f"{path}.{key}") is not True:
                raise PolicyError(f"{path}.{key}", "must be true when present")
            raise PolicyError(f"{path}.{key}", "not supported for LXC: the test server listens "
                                               "on the host's loopback, which a container "
                                               "cannot reach")
        if key == "localhost":
            _int(sec[key], f"{path}.localhost", 1, 65535, "a port between 1 and 65535")
            raise PolicyError(f"{path}.localhost", "not supported for LXC: the container's "
                                                   "loopback is not the host's; use url with a "
                                                   "host address the container can reach")
        proxy = _proxy_url(sec["url"], f"{path}.url")
        if _is_loopback(proxy.host):
            raise PolicyError(f"{path}.url", f"loopback host {proxy.host!r} is not reachable "
                                             "from an LXC container (its loopback is not the "
                                             "host's); use an address the container can reach")
        return proxy

    def egress(self, value: Any) -> Egress:
        sec = _obj(value, "network.egress", ("default", "allow", "deny"))
        default = _enum(sec.get("default", "deny"), "network.egress.default", ("allow", "deny"))
        rules = {}
        for key in ("allow", "deny"):
            path = f"network.egress.{key}"
            rules[key] = tuple(self.rule(r, f"{path}[{i}]")
                               for i, r in enumerate(_list(sec.get(key, []), path)))
        return Egress(default, rules["allow"], rules["deny"])

    def ingress(self, value: Any) -> Ingress:
        sec = _obj(value, "network.ingress", ("default", "hostLoopback"))
        choices = ("allow", "deny")
        return Ingress(_enum(sec.get("default", "deny"), "network.ingress.default", choices),
                       _enum(sec.get("hostLoopback", "deny"), "network.ingress.hostLoopback",
                             choices))

    def rule(self, value: Any, path: str) -> Rule:
        sec = _obj(value, path, ("to", "ports"))
        peers: list[Peer] = []
        if "to" in sec:
            items = _list(sec["to"], f"{path}.to")
            if not items:
                raise PolicyError(f"{path}.to", "must contain at least one destination when "
                                                "given (omit it to match any destination)")
            peers = [self.peer(p, f"{path}.to[{i}]") for i, p in enumerate(items)]
        ports: list[PortSelector] = []
        if "ports" in sec:
            items = _list(sec["ports"], f"{path}.ports")
            if not items:
                raise PolicyError(f"{path}.ports", "must contain at least one selector when "
                                                   "given (omit it to match any port)")
            ports = [self.port(p, f"{path}.ports[{i}]") for i, p in enumerate(items)]
        return Rule(tuple(peers), tuple(ports))

    def peer(self, value: Any, path: str) -> Peer:
        sec = _obj(value, path, ("cidr", "except"))
        if "cidr" not in sec:
            raise PolicyError(f"{path}.cidr", "missing required field")
        cidr = _parse_cidr(_str(sec["cidr"], f"{path}.cidr"), f"{path}.cidr")
        excepts = []
        for i, item in enumerate(_list(sec.get("except", []), f"{path}.except")):
            epath = f"{path}.except[{i}]"
            exc = _parse_cidr(_str(item, epath), epath)
            if exc.version != cidr.version or not exc.subnet_of(cidr):  # type: ignore[arg-type]
                raise PolicyError(epath, f"{exc} is not contained in {path}.cidr ({cidr})")
            excepts.append(exc)
        return Peer(cidr, tuple(excepts))

    def port(self, value: Any, path: str) -> PortSelector:
        sec = _obj(value, path, ("protocol", "port", "endPort"))
        proto = _enum(sec.get("protocol", "any"), f"{path}.protocol",
                      ("tcp", "udp", "icmp", "any"))
        what = "a port number between 1 and 65535"
        port = _int(sec["port"], f"{path}.port", 1, 65535, what) if "port" in sec else None
        end = _int(sec["endPort"], f"{path}.endPort", 1, 65535, what) if "endPort" in sec \
            else None
        if proto == "icmp" and (port is not None or end is not None):
            raise PolicyError(f"{path}.port" if port is not None else f"{path}.endPort",
                              "icmp has no ports; remove port/endPort or use tcp/udp")
        if end is not None and port is None:
            raise PolicyError(f"{path}.endPort", "requires port")
        if end is not None and port is not None and end < port:
            raise PolicyError(f"{path}.endPort", f"must be >= port ({port}), got {end}")
        return PortSelector(proto, port, end)
