"""Parsing the network section (``network``, ``runtimeConfig``) of a policy.

Contract, and the choices made where mxc's format is silent:

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lxcbind.errors import PolicyError
from lxcbind.policy.fields import (
    array,
    boolean,
    choice,
    hostname,
    integer,
    is_loopback,
    looks_like_address,
    obj,
    parse_cidr,
    proxy_url,
    string,
)
from lxcbind.policy.network import (
    Egress,
    Ingress,
    LegacyNetwork,
    Network,
    NetworkHost,
    Peer,
    PortSelector,
    Proxy,
    Rule,
)

__all__ = ["NetworkParser"]

T = TypeVar("T")

# The legacy network fields and the 0.8 ("directional") ones, in the order they are reported.
_LEGACY_NET = ("defaultPolicy", "enforcementMode", "allowLocalNetwork", "allowedHosts",
               "blockedHosts", "proxy")
_DIRECTIONAL_NET = ("egress", "ingress")


class NetworkParser:
    """Reads the network section; harmless oddities go to ``warnings`` (the policy's list)."""

    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings

    def network(self, doc: dict[str, Any], schema: tuple[int, int, int] | None) -> Network:
        version_08 = schema is not None and schema[:2] >= (0, 8)
        specified = "network" in doc
        net = obj(doc.get("network", {}), "network", _LEGACY_NET + _DIRECTIONAL_NET)
        runtime = None
        if "runtimeConfig" in doc:
            runtime = obj(doc["runtimeConfig"], "runtimeConfig", ("networkProxy",))

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
            proxy = proxy_url(runtime["networkProxy"], path)
            if proxy.host.lower() not in ("localhost", "127.0.0.1", "::1"):
                raise PolicyError(path, "must use localhost, 127.0.0.1 or [::1]")
            if "egress" in net and (egress.default != "deny" or egress.allow or egress.deny):
                raise PolicyError(path, "requires network.egress.default \"deny\" with no "
                                        "allow or deny rules")
        return Network("directional", True, specified, egress=egress, ingress=ingress,
                       runtime_proxy=proxy)

    def legacy(self, net: dict[str, Any]) -> LegacyNetwork:
        p = "network."
        default = choice(net.get("defaultPolicy", "block"), p + "defaultPolicy", ("allow", "block"))
        mode = choice(net.get("enforcementMode", "capabilities"), p + "enforcementMode",
                     ("capabilities", "firewall", "both"))
        local = boolean(net.get("allowLocalNetwork", False), p + "allowLocalNetwork")
        hosts = {}
        for key in ("allowedHosts", "blockedHosts"):
            entries = []
            for i, item in enumerate(array(net.get(key, []), p + key)):
                path = f"{p}{key}[{i}]"
                text = string(item, path)
                if not text.strip():
                    raise PolicyError(path, "must not be empty")
                if looks_like_address(text):
                    entries.append(NetworkHost(text, parse_cidr(text, path,
                                                                 what="IP address or CIDR")))
                else:
                    entries.append(NetworkHost(hostname(text, path), None))
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
        sec = obj(value, path, ("url", "localhost", "builtinTestServer"))
        given = [k for k in ("url", "localhost", "builtinTestServer") if k in sec]
        if len(given) != 1:
            raise PolicyError(path, "must specify exactly one of builtinTestServer, localhost "
                                    "or url")
        key = given[0]
        if key == "builtinTestServer":
            if boolean(sec[key], f"{path}.{key}") is not True:
                raise PolicyError(f"{path}.{key}", "must be true when present")
            raise PolicyError(f"{path}.{key}", "not supported for LXC: the test server listens "
                                               "on the host's loopback, which a container "
                                               "cannot reach")
        if key == "localhost":
            integer(sec[key], f"{path}.localhost", 1, 65535, "a port between 1 and 65535")
            raise PolicyError(f"{path}.localhost", "not supported for LXC: the container's "
                                                   "loopback is not the host's; use url with a "
                                                   "host address the container can reach")
        proxy = proxy_url(sec["url"], f"{path}.url")
        if is_loopback(proxy.host):
            raise PolicyError(f"{path}.url", f"loopback host {proxy.host!r} is not reachable "
                                             "from an LXC container (its loopback is not the "
                                             "host's); use an address the container can reach")
        return proxy

    def egress(self, value: Any) -> Egress:
        sec = obj(value, "network.egress", ("default", "allow", "deny"))
        default = choice(sec.get("default", "deny"), "network.egress.default", ("allow", "deny"))
        rules = {}
        for key in ("allow", "deny"):
            path = f"network.egress.{key}"
            rules[key] = tuple(self.rule(r, f"{path}[{i}]")
                               for i, r in enumerate(array(sec.get(key, []), path)))
        return Egress(default, rules["allow"], rules["deny"])

    def ingress(self, value: Any) -> Ingress:
        sec = obj(value, "network.ingress", ("default", "hostLoopback"))
        choices = ("allow", "deny")
        return Ingress(choice(sec.get("default", "deny"), "network.ingress.default", choices),
                       choice(sec.get("hostLoopback", "deny"), "network.ingress.hostLoopback",
                             choices))

    def rule(self, value: Any, path: str) -> Rule:
        sec = obj(value, path, ("to", "ports"))
        return Rule(_nonempty(sec, "to", path, self.peer, "one destination", "any destination"),
                    _nonempty(sec, "ports", path, self.port, "one selector", "any port"))

    def peer(self, value: Any, path: str) -> Peer:
        sec = obj(value, path, ("cidr", "except"))
        if "cidr" not in sec:
            raise PolicyError(f"{path}.cidr", "missing required field")
        cidr = parse_cidr(string(sec["cidr"], f"{path}.cidr"), f"{path}.cidr")
        excepts = []
        for i, item in enumerate(array(sec.get("except", []), f"{path}.except")):
            epath = f"{path}.except[{i}]"
            exc = parse_cidr(string(item, epath), epath)
            if exc.version != cidr.version or not exc.subnet_of(cidr):  # type: ignore[arg-type]
                raise PolicyError(epath, f"{exc} is not contained in {path}.cidr ({cidr})")
            excepts.append(exc)
        return Peer(cidr, tuple(excepts))

    def port(self, value: Any, path: str) -> PortSelector:
        sec = obj(value, path, ("protocol", "port", "endPort"))
        proto = choice(sec.get("protocol", "any"), f"{path}.protocol",
                      ("tcp", "udp", "icmp", "any"))
        what = "a port number between 1 and 65535"
        port = integer(sec["port"], f"{path}.port", 1, 65535, what) if "port" in sec else None
        end = integer(sec["endPort"], f"{path}.endPort", 1, 65535, what) if "endPort" in sec \
            else None
        if proto == "icmp" and (port is not None or end is not None):
            raise PolicyError(f"{path}.port" if port is not None else f"{path}.endPort",
                              "icmp has no ports; remove port/endPort or use tcp/udp")
        if end is not None and port is None:
            raise PolicyError(f"{path}.endPort", "requires port")
        if end is not None and port is not None and end < port:
            raise PolicyError(f"{path}.endPort", f"must be >= port ({port}), got {end}")
        return PortSelector(proto, port, end)


def _nonempty(sec: dict[str, Any], key: str, path: str, read: Callable[[Any, str], T],
              what: str, omitted: str) -> tuple[T, ...]:
    """``sec[key]``'s items read by ``read``; () when absent, refused when explicitly empty
    (an empty list is never widened to "any")."""
    if key not in sec:
        return ()
    items = array(sec[key], f"{path}.{key}")
    if not items:
        raise PolicyError(f"{path}.{key}", f"must contain at least {what} when given (omit it "
                                           f"to match {omitted})")
    return tuple(read(item, f"{path}.{key}[{i}]") for i, item in enumerate(items))
