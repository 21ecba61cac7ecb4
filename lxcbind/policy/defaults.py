"""The embedded default policy: what ``lxcbind run -- CMD`` and ``run(cmd)`` use without one."""

from __future__ import annotations

from typing import Any

from lxcbind.policy.model import Policy
from lxcbind.policy.parse import load_policy

__all__ = ["DEFAULT_POLICY", "default_policy"]

# The embedded default: schema 0.8 with no network section (deny-all: no network device but
# loopback), the host root filesystem, default isolation; the command comes from the caller.
DEFAULT_POLICY: dict[str, Any] = {"version": "0.8.0", "containment": "lxc"}


def default_policy(command_line: str | None = None) -> Policy:
    """The embedded default policy (``DEFAULT_POLICY``), running ``command_line`` if given."""
    doc: dict[str, Any] = dict(DEFAULT_POLICY)
    if command_line is not None:
        doc["process"] = {"commandLine": command_line}
    return load_policy(doc, origin="<default>", command_required=command_line is not None)
