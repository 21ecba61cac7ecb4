"""No descriptor of an attach leaks when a signal handler raises in the middle of it.

CPython runs a Python signal handler between bytecodes of the main thread, wherever it is
(the signal may be taken by another thread whatever this one blocks): so a handler that
raises (Ctrl-C, the CLI's SIGTERM handler) can land between any two instructions of
``Container.attach_request`` and ``Process.__init__``, including between a call
that made a descriptor (the pidfd) and the store of its result.  An opcode trace function
stands in for that handler, deterministically: one run per instruction of those functions,
raising at that instruction.  After each run, the process has exactly the descriptors it had
before, no child of ours is left (stop() would hang on one), and the attach still works.
The real signal, at each pthread_sigmask call, is ``tests/signal_arrival.py``'s (below).
"""

from __future__ import annotations

import gc
import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from lxcbind.lxc.attach import Process
from lxcbind.lxc.container import Container
from tests.conftest import make_busybox, requires_lxc, requires_root
from tests.signal_arrival import each_arrival

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(600)]

# build_attach, and the instruction where attach stores what it returned, are not covered:
# their descriptors are made by Python calls (os.open, os.pipe2), whose result a handler can
# drop before it is stored anywhere.
TRACED = {Container.attach_request.__code__, Process.__init__.__code__}


class Raised(Exception):
    """What the stand-in handler raises."""


def _fds() -> set[str]:
    return {f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}" for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")} - {"?"}


def _children() -> list[str]:
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return f.read().split()


def _raise_at(index: int) -> tuple[list[int], Any]:
    """A trace function raising ``Raised`` at the ``index``-th instruction (0-based) run in a
    TRACED frame; returns [instructions seen] and the function."""
    seen = [0]

    def local(frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            seen[0] += 1
            if seen[0] - 1 == index:
                raise Raised(f"at instruction {index} of {frame.f_code.co_name}")
        return local

    def start(frame: types.FrameType, event: str, arg: object) -> Any:
        if frame.f_code in TRACED:
            # The frame's f_trace first: on Python 3.13 (Debian 13) f_trace_opcodes set in
            # the call event turns nothing on while the frame has none.
            frame.f_trace = local
            frame.f_trace_opcodes = True
            return local
        return None

    return seen, start


@pytest.fixture
def box(container_name: str) -> Iterator[Container]:
    c = make_busybox(container_name)
    try:
        yield c
    finally:
        c.destroy()
        c.close()


def test_a_handler_raising_at_any_instruction_of_attach_leaks_no_descriptor(box):
    proc = box.attach(["true"])   # warm: what the first attach opens for good is not a leak
    proc.wait()
    gc.collect()
    before, raised, index = _fds(), 0, 0
    while True:
        seen, tracer = _raise_at(index)
        sys.settrace(tracer)
        # Python 3.12 delivers opcode events to a called frame only once some frame of the
        # thread has asked for them (this one has no f_trace: it gets none).
        sys._getframe().f_trace_opcodes = True
        try:
            proc = box.attach(["sleep", "100"])
        except Raised:
            raised += 1
        else:
            proc.close()
        finally:
            sys.settrace(None)
        gc.collect()
        where = f"raised at instruction {index}"
        assert _fds() == before, f"{where}: leaked {sorted(_fds() - before)}"
        assert _children() == [], f"{where}: a child is left"
        if seen[0] <= index:
            break   # the attach ran fewer instructions: every one had its raise
        index += 1
    assert raised == index > 100   # it did raise everywhere (hundreds of instructions)
    proc = box.attach(["echo", "ok"])
    assert proc.wait() == 0


def test_a_real_signal_at_each_mask_change_of_attach_leaks_no_descriptor(box, monkeypatch):
    """A real SIGUSR1 whose handler raises, before each pthread_sigmask call of an attach in
    turn: leaks would add up over the runs, so one comparison at the end finds any."""
    proc = box.attach(["true"])
    proc.wait()
    gc.collect()
    before = _fds()
    assert each_arrival(monkeypatch, lambda: box.attach(["sleep", "100"]).close(),
                        gc.collect) >= 2
    gc.collect()
    assert _fds() == before, f"leaked {sorted(_fds() - before)}"
    assert _children() == []
