"""Policies: JSON → frozen records.  Every error is a ``PolicyError`` naming its JSON path.

lxcbind reads the sandbox policy format of the LXC backend of mxc
(https://github.com/microsoft/mxc: ``docs/schema.md``, ``docs/sandbox-policy/0.8.0/``), schema
versions 0.6–0.9.  This module only *parses and validates*; it never touches the host.  The
records it builds are in ``lxcbind.policy.model`` (the network section's in
``lxcbind.policy.network``, where ``Policy.network.effective()`` says what the network section
means); the field readers in ``lxcbind.policy.fields``.

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
  extension ``lxc.rootfs`` is ``"host" | "busybox" | "download" | "dir:/abs/path"`` or an
  image (``image_ref``: ``oci:/abs/path[:tag]``, ``docker-archive:/abs/path[:name:tag]``,
  ``image:ID`` of the local store; only the syntax is checked here), default
  ``download`` when distribution+release are given, else ``host``.  ``download`` without them
  is an error; another rootfs with them set is allowed (the explicit choice wins; a warning).
* **network** (``network``, ``runtimeConfig``): see ``lxcbind.policy.netparse``.

Thread-safety: a parse keeps its state in its own ``_Parser``; the result is immutable.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lxcbind._lite import lazy_re
from lxcbind.command import ENV_KEY as _ENV_KEY
from lxcbind.errors import PolicyError
from lxcbind.policy.fields import (
    abs_path,
    array,
    boolean,
    choice,
    integer,
    jtype,
    obj,
    parse_json,
    size,
    string,
)
from lxcbind.policy.model import (
    OPT_INS,
    UNLIMITED,
    Filesystem,
    Lifecycle,
    Limits,
    Lxc,
    Policy,
    Process,
    Rootfs,
)
from lxcbind.policy.netparse import NetworkParser

__all__ = ["MAX_POLICY_BYTES", "SUPPORTED_VERSIONS", "base64_policy_bytes",
           "decode_base64_policy", "load_policy", "load_policy_file", "policy_document",
           "read_policy_file"]

SUPPORTED_VERSIONS = ((0, 6), (0, 9))  # inclusive, on (major, minor)
MAX_TIMEOUT_MS = 2**32 - 1
MAX_POLICY_BYTES = 16 * 1024 * 1024

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
_DIST_NAME = lazy_re(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
        source = _utf8_text(source)
    if isinstance(source, str):
        data = parse_json(source)
    elif isinstance(source, dict):
        data = source
    else:
        raise TypeError(f"load_policy() expects str, bytes or dict, not {type(source).__name__}")
    return _Parser(origin, command_required).policy(data)


def _utf8_text(data: bytes | bytearray) -> str:
    """``data`` decoded as UTF-8 without a leading byte-order mark (what the "utf-8-sig" codec
    does, without importing it on every CLI run); ``PolicyError`` when it is not UTF-8."""
    data = bytes(data)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError("", f"policy is not valid UTF-8 (byte {exc.start})") from None


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
        source = _utf8_text(source)
    data = parse_json(source)
    if not isinstance(data, dict):
        raise PolicyError("", f"a policy must be a JSON object, got {jtype(data)}")
    return data


def decode_base64_policy(b64: str | bytes) -> Policy:
    """Parse a policy passed as standard base64 with padding (mxc's ``--config-base64``).

    Raises:
        PolicyError: not valid base64, not UTF-8, or an invalid policy.
    """
    return load_policy(base64_policy_bytes(b64), origin="<base64>")


def base64_policy_bytes(b64: str | bytes) -> bytes:
    """The bytes of a policy passed as base64; ``PolicyError`` when it is not valid base64."""
    import base64  # mxc's --config-base64 only: not on every CLI run's import path
    import binascii

    try:
        return base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PolicyError("", f"policy is not valid base64: {exc}") from None


# --------------------------------------------------------------------------- the parser

IMAGE_PREFIXES = ("oci:", "docker-archive:", "image:")


def image_ref(text: str, path: str) -> str:
    """An image reference's syntax (``IMAGE_PREFIXES``; a source's path absolute); the image
    itself is found or imported when a sandbox starts."""
    kind, _, rest = text.partition(":")
    if not rest or any(ord(c) < 32 or c == "\x7f" for c in rest):
        raise PolicyError(path, f"{kind}: needs a reference without control characters, "
                                f"got {json.dumps(text)}")
    if kind != "image" and not rest.startswith("/"):
        raise PolicyError(path, f"{kind}: the path must be absolute, got {json.dumps(text)}")
    return text


class _Parser:
    def __init__(self, origin: str, command_required: bool = True) -> None:
        self.origin = origin
        self.command_required = command_required
        self.warnings: list[str] = []

    def policy(self, data: Any) -> Policy:
        if not isinstance(data, dict):
            raise PolicyError("", f"a policy must be a JSON object, got {jtype(data)}")
        for key in data:
            if key in _OTHER_BACKENDS:
                raise PolicyError(key, "only the LXC backend is supported by lxcbind; remove "
                                       "this backend section")
            if key in _STATE_AWARE:
                raise PolicyError(key, "only valid on state-aware requests, which the LXC "
                                       "backend does not have")
        doc = obj(data, "", _TOP_LEVEL)

        version, schema = self.version(doc.get("version", ""))
        containment = doc.get("containment", "lxc")
        if containment != "lxc":
            shown = json.dumps(containment) if isinstance(containment, str) else \
                jtype(containment)
            raise PolicyError("containment", f"only \"lxc\" is supported by lxcbind (or omit "
                                             f"the field), got {shown}")
        container_id = self.container_id(doc["containerId"]) if "containerId" in doc else None
        if "process" not in doc and self.command_required:
            raise PolicyError("process", "the 'process' section is required")
        process = self.process(doc.get("process", {}))
        lifecycle = self.lifecycle(doc.get("lifecycle", {}))
        filesystem = self.filesystem(doc.get("filesystem", {}))
        lxc = self.lxc(doc.get("lxc", {}))
        network = NetworkParser(self.warnings).network(doc, schema)
        ignored = []
        for name in _IGNORED_SECTIONS:
            if name in doc:
                section = doc[name]
                if not isinstance(section, dict):
                    raise PolicyError(name, f"expected an object, got {jtype(section)}")
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
        text = string(value, "version")
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
        text = string(value, "containerId")
        if not text:
            raise PolicyError("containerId", "must not be empty (omit it for a generated name)")
        if len(text) > 64:
            raise PolicyError("containerId", "must be at most 64 characters")
        if not _CONTAINER_ID.fullmatch(text):
            raise PolicyError("containerId", f"invalid container name {text!r}: use letters, "
                              "digits, '_', '.' and '-', starting with a letter or digit")
        return text

    def process(self, value: Any) -> Process:
        sec = obj(value, "process", ("commandLine", "cwd", "env", "timeout"))
        if "commandLine" not in sec and self.command_required:
            raise PolicyError("process.commandLine", "missing required field")
        cmd = string(sec.get("commandLine", ""), "process.commandLine")
        if not cmd.strip() and ("commandLine" in sec or self.command_required):
            raise PolicyError("process.commandLine", "must not be empty")
        if "\0" in cmd:
            raise PolicyError("process.commandLine", "must not contain NUL bytes")
        cwd = None
        if sec.get("cwd", "") != "":
            cwd = abs_path(sec["cwd"], "process.cwd")
        env: dict[str, str] = {}
        for i, entry in enumerate(array(sec.get("env", []), "process.env")):
            path = f"process.env[{i}]"
            entry = string(entry, path)
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
        timeout = integer(sec.get("timeout", 0), "process.timeout", 0, MAX_TIMEOUT_MS,
                       f"a non-negative integer (milliseconds) up to {MAX_TIMEOUT_MS}")
        return Process(cmd, cwd, tuple(env.items()), timeout)

    def lifecycle(self, value: Any) -> Lifecycle:
        sec = obj(value, "lifecycle", ("destroyOnExit", "preservePolicy"))
        return Lifecycle(
            destroy_on_exit=boolean(sec.get("destroyOnExit", True), "lifecycle.destroyOnExit"),
            preserve_policy=boolean(sec.get("preservePolicy", False), "lifecycle.preservePolicy"))

    def filesystem(self, value: Any) -> Filesystem:
        keys = ("readwritePaths", "readonlyPaths", "deniedPaths")
        sec = obj(value, "filesystem", keys)
        lists = []
        for key in keys:
            path = f"filesystem.{key}"
            items = array(sec.get(key, []), path)
            lists.append(tuple(abs_path(p, f"{path}[{i}]") for i, p in enumerate(items)))
        return Filesystem(*lists)

    def lxc(self, value: Any) -> Lxc:
        sec = obj(value, "lxc", ("distribution", "release", "rootfs", "privileged", "limits",
                                  "allow", "uid", "gid"))
        names: dict[str, str | None] = {}
        for key in ("distribution", "release"):
            path = f"lxc.{key}"
            names[key] = None
            if key in sec:
                text = string(sec[key], path)
                if not _DIST_NAME.fullmatch(text):
                    raise PolicyError(path, "expected a non-empty name of letters, digits, "
                                            f"'.', '_' and '-', got {text!r}")
                names[key] = text
        dist, rel = names["distribution"], names["release"]
        if (dist is None) != (rel is None):
            missing = "lxc.release" if rel is None else "lxc.distribution"
            other = "lxc.distribution" if rel is None else "lxc.release"
            raise PolicyError(missing, f"required when {other} is given")
        rootfs = Rootfs("download", distribution=dist, release=rel) if dist else Rootfs("host")
        if "rootfs" in sec:
            text = string(sec["rootfs"], "lxc.rootfs")
            if text.startswith("dir:"):
                rootfs = Rootfs("dir", abs_path(text[4:], "lxc.rootfs"))
            elif text == "download":
                rootfs = Rootfs("download", distribution=dist, release=rel)
            elif text.startswith(IMAGE_PREFIXES):
                rootfs = Rootfs("image", image_ref(text, "lxc.rootfs"))
            elif text in ("host", "busybox"):
                rootfs = Rootfs(text)  # type: ignore[arg-type]
            else:
                raise PolicyError("lxc.rootfs", 'expected "host", "busybox", "download", '
                                                '"dir:/absolute/path", "oci:/path[:tag]", '
                                                '"docker-archive:/path.tar[:name:tag]" or '
                                                f'"image:ID", got {json.dumps(text)}')
            if rootfs.kind == "download" and not dist:
                raise PolicyError("lxc.rootfs", '"download" needs lxc.distribution and '
                                                "lxc.release")
            if rootfs.kind != "download" and dist:
                self.warnings.append(f"lxc.rootfs: {text} is used; lxc.distribution and "
                                     "lxc.release are ignored")
        privileged = boolean(sec["privileged"], "lxc.privileged") if "privileged" in sec else False
        if privileged:
            self.warnings.append("lxc.privileged: true: this container is not a sandbox (no "
                                 "user namespace: root inside is root outside)")
        allow: list[str] = []
        for i, item in enumerate(array(sec.get("allow", []), "lxc.allow")):
            allow.append(choice(item, f"lxc.allow[{i}]", OPT_INS))
        limits = self.limits(sec.get("limits", {}))
        ids = {key: integer(sec[key], f"lxc.{key}", 0, 65533, "an id inside the container, 0 to "
                         "65533") for key in ("uid", "gid") if key in sec}
        if "gid" in ids and "uid" not in ids:
            raise PolicyError("lxc.uid", "required when lxc.gid is given")
        uid = ids.get("uid")
        return Lxc(dist, rel, rootfs, privileged, limits, tuple(dict.fromkeys(allow)),
                   uid, ids.get("gid", uid))

    def limits(self, value: Any) -> Limits:
        sec = obj(value, "lxc.limits", ("memory", "pids", "cpu", "disk"))
        memory = pids = cpu = disk = None
        if "memory" in sec:
            memory = size(sec["memory"], "lxc.limits.memory")
        if "pids" in sec:
            pids = UNLIMITED if sec["pids"] == "max" else \
                integer(sec["pids"], "lxc.limits.pids", 8, 2**22,
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
        if "disk" in sec:
            disk = size(sec["disk"], "lxc.limits.disk")
        return Limits(memory, pids, cpu, disk)
