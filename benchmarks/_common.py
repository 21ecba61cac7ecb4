"""What the benchmarks share with the tests: one recipe for a throwaway busybox container."""

from __future__ import annotations

import os
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lxcbind import Container  # noqa: E402
from tests.conftest import make_busybox  # noqa: E402


def bench_container(name: str | None = None) -> Container:
    """Create and start ``lxcbind-bench-<random>`` (busybox, loopback only, 64 ptys); the
    caller destroys it in a ``finally``.  Nothing is left if setup fails."""
    return make_busybox(name or f"lxcbind-bench-{uuid.uuid4().hex[:8]}")
