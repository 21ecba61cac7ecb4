"""What the benchmarks share: a throwaway busybox container, the lxc-* program sequence that
clones a cached base (the reference for one-shot runs), bubblewrap, and one timing helper.

The benchmarks import ``lxcbind`` as installed, or from a checkout with ``PYTHONPATH=.``;
``describe()`` says which one is measured.  The busybox recipe (``make_busybox``) is also the
test suite's: ``tests/conftest.py`` imports it from here (pytest puts the checkout on
``sys.path``; a benchmark run as a script finds this module next to it), so neither side
needs a ``sys.path`` hack and the recipe exists once.  Nothing heavy is imported at module
level: the unit tests load ``conftest`` without the compiled module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import lxcbind

if TYPE_CHECKING:
    from lxcbind import Container


def describe() -> str:
    """Which lxcbind is measured (a checkout left off PYTHONPATH would measure another)."""
    return f"lxcbind from {os.path.dirname(os.path.abspath(lxcbind.__file__))}"


def make_busybox(name: str, *, start: bool = True, lxcpath: str | None = None) -> Container:
    """A busybox container (LXC's offline template, from busybox-static), no network device
    but loopback, enough ptys (64) for concurrent commands; started unless ``start=False``.
    The caller destroys it; nothing is left if setup fails."""
    from lxcbind import Container

    c = Container(name, lxcpath)
    try:
        c.create("busybox")
        c.clear_config_item("lxc.net")
        c.set_config_item("lxc.net.0.type", "empty")
        c.set_config_item("lxc.pty.max", "64")
        # create() copies the host's /etc/lxc/default.conf, which on Debian says
        # ``lxc.apparmor.profile = generated``: on an AppArmor host liblxc would then compile
        # a profile at every start (seconds under emulation).  liblxc's default profile
        # (``lxc-container-default-cgns``, loaded at boot) costs nothing; without AppArmor
        # both items are ignored.
        c.clear_config_item("lxc.apparmor.profile")
        c.clear_config_item("lxc.apparmor.allow_nesting")
        c.save_config()
        if start:
            c.start()
    except BaseException:
        if c.defined:
            c.destroy()
        c.close()
        raise
    return c


def bench_container(name: str | None = None) -> Container:
    """``make_busybox`` of ``lxcbind-bench-<random>``, started; the caller destroys it in a
    ``finally``."""
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


def ensure_bwrap() -> str | None:
    """The ``bwrap`` program, installed with apt-get first when missing (as root, once);
    None when it cannot be had (the comparison row is then left out, said so)."""
    if not shutil.which("bwrap") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "-y", "-q", "install", "bubblewrap"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return shutil.which("bwrap")


def bwrap_true() -> None:
    """``/bin/true`` under ``bwrap --unshare-all`` (the host's / read-only, fresh /proc, /dev)."""
    quiet("bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
          "/bin/true")


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
