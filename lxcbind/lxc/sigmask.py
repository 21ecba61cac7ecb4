"""Signals blocked in this thread for a span of code, and the mask restored on every path.

``signal.pthread_sigmask`` runs the Python handlers of signals that arrived before it (and
raises what they raise) as it returns, *after* the mask has changed: a handler that raises
as a block returns (Ctrl-C, the CLI's SIGTERM handler) would otherwise lose the mask to
restore, and the thread would keep every signal blocked for good (a CLI that then ignores
Ctrl-C and SIGTERM).  So the mask to restore is read first, by a call that changes nothing,
and the block itself is inside the ``try`` whose ``finally`` restores it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def blocked(signals: Iterable[int]) -> Iterator[None]:
    """Block ``signals`` in this thread for the ``with`` block; the previous mask is back
    afterwards, whatever was raised, where (the block's own return included)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, ())   # a raise here changed nothing
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
