"""A real signal whose Python handler runs exactly as the n-th ``pthread_sigmask`` returns.

CPython runs a Python signal handler in the main thread at its next check, and
``signal.pthread_sigmask`` checks as it returns, after the mask has changed.  To put an
arrival right before a given call, deterministically: ``signal.pthread_sigmask`` is wrapped
so that, before the chosen call, a helper thread receives ``SIGUSR1`` (its C-level handler
trips the flag there: only the main thread runs Python handlers) while the main thread waits
for it in ``os.read``, then the real call is made.  The write, the wait and the call (the C
function: ``signal``'s own is a Python wrapper, whose entry would run the handler first) are
chained in C (``map`` of ``functools.partial``\\s), so no Python bytecode runs in between:
the handler runs inside the real call, where it would for a signal that came a moment
earlier.
"""

from __future__ import annotations

import functools
import operator
import os
import signal
import threading
from _signal import pthread_sigmask as c_pthread_sigmask  # signal's is a Python wrapper
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class Raised(Exception):
    """What the test's handler raises (as Ctrl-C raises KeyboardInterrupt)."""


def _enum(number: int) -> int:
    try:
        return signal.Signals(number)
    except ValueError:
        return number


def current_mask() -> set[int]:
    """This thread's blocked signals (not counted as a call: the C function, unpatched)."""
    return {_enum(n) for n in c_pthread_sigmask(signal.SIG_BLOCK, ())}


@contextmanager
def arrival_before_call(monkeypatch: pytest.MonkeyPatch, index: int) -> Iterator[list[int]]:
    """During the block, a SIGUSR1 (whose handler raises ``Raised``) arrives before the
    ``index``-th call (0-based) of ``signal.pthread_sigmask`` in the main thread.  Yields
    ``[calls made]``: fewer than ``index + 1`` means no signal arrived."""
    assert threading.current_thread() is threading.main_thread()
    real: Callable[..., Any] = signal.pthread_sigmask
    mask = current_mask()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()

    def receiver() -> None:
        while os.read(go_r, 1) == b"k":
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            os.write(done_w, b".")

    def handler(signum: int, frame: object) -> None:
        raise Raised(f"signal {signum}")

    calls = [0]

    def pthread_sigmask(how: int, mask: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return real(how, mask)
        calls[0] += 1
        if calls[0] - 1 != index:
            return real(how, mask)
        steps = (functools.partial(os.write, go_w, b"k"), functools.partial(os.read, done_r, 1),
                 functools.partial(c_pthread_sigmask, how, mask))
        return {_enum(n) for n in list(map(operator.call, steps))[-1]}

    real(signal.SIG_UNBLOCK, {signal.SIGUSR1})   # the receiver inherits this mask
    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        monkeypatch.setattr(signal, "pthread_sigmask", pthread_sigmask)
        yield calls
    finally:
        monkeypatch.setattr(signal, "pthread_sigmask", real)
        os.write(go_w, b"q")
        thread.join(10)
        for fd in (go_r, go_w, done_r, done_w):
            os.close(fd)
        signal.signal(signal.SIGUSR1, previous)
        real(signal.SIG_SETMASK, mask)   # whatever the code under test left: the next test's


def each_arrival(monkeypatch: pytest.MonkeyPatch, attempt: Callable[[], None],
                 after: Callable[[], None] = lambda: None) -> int:
    """Run ``attempt`` once per ``pthread_sigmask`` call it makes, with the signal arriving
    before that call; assert each time that the main thread's mask is what it was before
    (``after`` cleans up what an attempt made).  Returns how many arrivals were tried."""
    index = 0
    while True:
        before = current_mask()
        with arrival_before_call(monkeypatch, index) as calls:
            try:
                attempt()
            except Raised:
                pass
            left = current_mask()
            after()
        if calls[0] <= index:
            return index   # the attempt makes fewer calls: every one had its arrival
        assert left == before, (f"a handler raising as pthread_sigmask call {index} returned "
                                f"left {sorted(left - before)} blocked")
        index += 1
