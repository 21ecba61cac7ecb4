"""lxcbind as an Inspect AI sandbox provider: ``sandbox="lxcbind"`` (``pip install
'lxcbind[inspect]'``).

Importing this module registers the provider with Inspect (``@sandboxenv(name="lxcbind")``);
Inspect imports it through the ``inspect_ai`` entry point that lxcbind's package metadata
declares, so a task needs no import.  The provider itself is
``lxcbind.inspect.provider.LxcbindSandboxEnvironment``; its configuration,
``LxcbindSandboxConfig``.
"""

from __future__ import annotations

from lxcbind.inspect.provider import LxcbindSandboxConfig, LxcbindSandboxEnvironment

__all__ = ["LxcbindSandboxConfig", "LxcbindSandboxEnvironment"]
