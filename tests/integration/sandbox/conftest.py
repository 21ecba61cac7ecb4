"""Helpers shared by the Pool tests of this folder."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lxcbind
    from lxcbind.sandbox.core import Session


def wait_full(pool: lxcbind.Pool, bound: float = 60.0) -> None:
    """Wait until ``pool`` is full and idle (every session it wants is ready, none is in
    use); fails the test if that takes longer than ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not pool.idle:
        assert time.monotonic() < deadline, f"the pool was not full within {bound:g}s"
        time.sleep(0.02)


def ready_session(pool: lxcbind.Pool) -> Session:
    """A ready session of a full ``pool`` (left in the pool: only to inspect)."""
    wait_full(pool)
    session = pool._ready.queue[0]
    assert session is not None, "a pool starter failed"
    return session
