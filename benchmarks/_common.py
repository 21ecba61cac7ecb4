"""What the benchmarks share: one recipe for a throwaway busybox container (the tests'), and
the lxc-* program sequence that clones a cached base, the reference for one-shot runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lxcbind import Container
from tests.conftest import make_busybox  # noqa: E402


def bench_container(name: str | None = None) -> Container:
    """Create and start ``lxcbind-bench-<random>`` (busybox, loopback only, 64 ptys); the
    caller destroys it in a ``finally``.  Nothing is left if setup fails."""
    return make_busybox(name or f"lxcbind-bench-{uuid.uuid4().hex[:8]}")


def quiet(*argv: str) -> None:
    """Run a program, output discarded; raises if it fails."""
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def lxc_clone_sequence(base: str) -> None:
    """lxc-copy -s (overlay snapshot of ``base``), lxc-start, lxc-attach /bin/true,
    lxc-destroy: the LXC tools' fastest fresh container."""
    name = f"lxcbind-bench-{uuid.uuid4().hex[:8]}"
    try:
        quiet("lxc-copy", "-n", base, "-N", name, "-s", "-B", "overlay")
        quiet("lxc-start", "-n", name)
        quiet("lxc-attach", "-n", name, "--clear-env", "--", "/bin/true")
    finally:
        subprocess.run(["lxc-destroy", "-f", "-n", name], capture_output=True)


def samples_ms(fn: Callable[[], object], n: int, warm: int = 1) -> list[float]:
    """``n`` timings of ``fn()`` in milliseconds, after ``warm`` untimed calls."""
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out
