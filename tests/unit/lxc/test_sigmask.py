"""No signal handler can leave a signal mask behind: a handler that raises as any
``pthread_sigmask`` of a block/restore pair returns (a real signal, arriving right before the
call: ``tests/signal_arrival.py``) still finds the thread's mask as it was."""

from __future__ import annotations

import signal

import pytest

from lxcbind.lxc import cgroups, sigmask
from tests.signal_arrival import Raised, arrival_before_call, current_mask, each_arrival


def test_the_harness_delivers_the_handler_inside_the_chosen_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The arrival is real and lands where it is meant to: the mask change of that call has
    happened when the handler's exception comes out of it."""
    before = current_mask()
    with arrival_before_call(monkeypatch, 0):
        with pytest.raises(Raised):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        assert current_mask() == before | {signal.SIGTERM}
    assert current_mask() == before


def test_blocked_restores_the_mask_whichever_call_the_handler_raises_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def attempt() -> None:
        with sigmask.blocked({signal.SIGINT, signal.SIGTERM}):
            assert {signal.SIGINT, signal.SIGTERM} <= current_mask()

    assert each_arrival(monkeypatch, attempt) == 3   # read, block, restore


def test_blocked_restores_the_mask_when_its_body_raises() -> None:
    before = current_mask()
    with pytest.raises(KeyError), sigmask.blocked(signal.valid_signals()):
        raise KeyError
    assert current_mask() == before


def test_the_cgroup_primer_thread_start_leaves_no_mask_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The primer's thread is started with every signal blocked (it inherits the mask)."""
    assert each_arrival(monkeypatch, lambda: cgroups._Primer().kick()) >= 2
