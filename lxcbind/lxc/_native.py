"""The compiled cffi module, checked once at import.

``ffi`` and ``lib`` come from ``lxcbind._lxc`` (built by setup.py from ``_cdefs/``).  The module
was compiled against one liblxc's headers; loading it into an older liblxc would touch struct
members past their end, so an older runtime is refused here with a rebuild hint.
"""

from __future__ import annotations

try:
    from lxcbind._lxc import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "lxcbind's compiled module lxcbind._lxc is missing or cannot load "
        f"({exc}). Install liblxc (apt-get install lxc lxc-dev pkg-config) and rebuild: "
        "pip install -e ."
    ) from exc

__all__ = ["ffi", "lib", "BUILT_LXC_VERSION", "RUNTIME_LXC_VERSION", "HAS_DEVPTS_FD",
           "HAS_INIT_PIDFD"]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("~")[0].split("-")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


BUILT_LXC_VERSION: str = ffi.string(lib.LXCBIND_BUILT_LXC_VERSION).decode()
RUNTIME_LXC_VERSION: str = ffi.string(lib.lxc_get_version()).decode()
HAS_DEVPTS_FD = bool(lib.LXCBIND_HAS_DEVPTS_FD)
HAS_INIT_PIDFD = bool(lib.LXCBIND_HAS_INIT_PIDFD)

if _version_tuple(RUNTIME_LXC_VERSION) < _version_tuple(BUILT_LXC_VERSION):
    raise ImportError(
        f"lxcbind was built against liblxc {BUILT_LXC_VERSION} but the loaded liblxc is "
        f"{RUNTIME_LXC_VERSION}; an older runtime library is not safe to use. "
        "Rebuild lxcbind against the installed liblxc: pip install --force-reinstall --no-deps -e ."
    )
