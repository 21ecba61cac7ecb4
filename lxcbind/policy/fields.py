"""Field readers for the policy parser: each checks one JSON value and raises a
``PolicyError`` naming its JSON path (``filesystem.readonlyPaths[2]: path must be absolute``).

Also the strict JSON reading every policy goes through (duplicate keys and ``NaN`` refused).
The contract these readers implement is written once, in ``lxcbind.policy.parse``'s docstring.
No import-time work: the regexes are ``lazy_re``, ``ipaddress``/``urllib`` are imported by the
readers that need them (a run whose policy has no network section never loads them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from lxcbind._lite import lazy_re
from lxcbind.errors import PolicyError
from lxcbind.policy.model import UNLIMITED
from lxcbind.policy.network import IPNetwork, Proxy

_PATH_MAX = 4095  # PATH_MAX minus the terminating NUL
_DNS_LABEL = lazy_re(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IDENT = lazy_re(r"[A-Za-z_$][A-Za-z0-9_$]*")
CONTROL = lazy_re(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- JSON

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


def parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise PolicyError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") \
            from None
    except (ValueError, RecursionError) as exc:
        raise PolicyError("", f"invalid JSON: {exc}") from None


# --------------------------------------------------------------------------- values

def _join(path: str, key: str) -> str:
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def jtype(value: Any) -> str:
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


def obj(value: Any, path: str, allowed: Iterable[str]) -> dict[str, Any]:
    """Check that ``value`` is an object without duplicate or unknown keys.

    Returns a copy without the ``null`` members: like mxc (serde ``Option``), an explicit
    ``null`` means "absent", so defaults apply and required fields are reported missing.
    """
    if not isinstance(value, dict):
        raise PolicyError(path, f"expected an object, got {jtype(value)}")
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


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(path, f"expected a string, got {jtype(value)}")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(path, f"expected true or false, got {jtype(value)}")
    return value


def choice(value: Any, path: str, choices: tuple[str, ...]) -> Any:
    if not isinstance(value, str) or value not in choices:
        shown = json.dumps(value) if isinstance(value, str) else jtype(value)
        raise PolicyError(path, f"expected one of {', '.join(map(json.dumps, choices))}, "
                                f"got {shown}")
    return value


def array(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(path, f"expected an array, got {jtype(value)}")
    return value


def integer(value: Any, path: str, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        got = value if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else jtype(value)
        raise PolicyError(path, f"expected {what}, got {got}")
    return value


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(value: Any, path: str) -> int:
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


def abs_path(value: Any, path: str) -> str:
    """A host/container path that lxcbind can put into an lxc.mount.entry safely."""
    text = string(value, path)
    if not text.strip():
        raise PolicyError(path, "path must not be empty")
    if "\0" in text:
        raise PolicyError(path, "path must not contain NUL bytes")
    if CONTROL.search(text):
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


def parse_cidr(text: str, path: str, *, what: str = "CIDR") -> IPNetwork:
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


def looks_like_address(text: str) -> bool:
    import re

    return ":" in text or "/" in text or re.fullmatch(r"[0-9.]+", text) is not None


def hostname(text: str, path: str) -> str:
    if "*" in text:
        raise PolicyError(path, f"wildcard hostnames are not supported: {text!r}")
    name = text[:-1] if text.endswith(".") else text
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(lbl) for lbl in labels):
        raise PolicyError(path, f"not a valid IP address, CIDR or hostname: {text!r}")
    return text


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def proxy_url(value: Any, path: str) -> Proxy:
    """``http(s)://host:port`` with the mxc shape checks.  Never echoes credentials."""
    import urllib.parse

    text = string(value, path)
    if not text:
        raise PolicyError(path, "proxy URL must not be empty")
    if CONTROL.search(text) or " " in text:
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
