"""What the benchmarks share: a running busybox container with no network device."""

from __future__ import annotations

import os
import sys
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lxcbind import Container  # noqa: E402


def bench_container(name: str | None = None) -> Container:
    """Create and start ``lxcbind-bench-<random>`` (busybox, loopback only); the caller
    destroys it in a ``finally``.  Nothing is left if setup fails."""
    c = Container(name or f"lxcbind-bench-{uuid.uuid4().hex[:8]}")
    try:
        c.create("busybox")
        c.clear_config_item("lxc.net")
        c.set_config_item("lxc.net.0.type", "empty")
        c.set_config_item("lxc.pty.max", "64")
        c.save_config()
        c.start()
    except BaseException:
        if c.defined:
            c.destroy()
        c.close()
        raise
    return c
