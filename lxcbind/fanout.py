"""Fan a list of commands out to remote sessions: batching, records, resubmission.

Nothing here knows about Ray (``lxcbind.ray`` is one user; a Dask adapter could be another):
a *slot* is anything a batch can be sent to, and ``submit(slot, batch)`` returns a
``concurrent.futures.Future`` that resolves to the batch's records or raises when the batch was
lost (the worker died, its node went away, its session could not start).

Why batches.  An engine round trip costs about a millisecond (Ray actor call: 0.74-1.2 ms
measured) while a warm Session command costs about half of that, so one command per call
spends most of its time in the engine.  A batch of B commands pays the round trip once;
several calls in flight per slot hide it completely.

Why records.  Results cross process (and machine) boundaries; they travel as plain dicts of
builtins, so any serializer carries them, and are rebuilt as ``RemoteRun`` (a ``CompletedRun``
with the node and attempt number) on the caller's side.

Failure model.  A batch whose future raises is *lost*: some of its commands may have run.
With ``retries`` left it is resubmitted, preferably to another slot, and its results carry
``attempt`` 2, 3 ...; ``Dispatch.resubmitted`` counts these.  When retries are exhausted every
command of the batch comes back as an explicit lost result (``lost=True``, ``returncode`` 125,
the reason in ``stderr``): a silent second run is never made behind the caller's back.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lxcbind._lite import record
from lxcbind.errors import ExecError
from lxcbind.result import CompletedRun

Command = str | Sequence[str]
Record = dict[str, Any]
S = TypeVar("S")

LOST_RETURNCODE = 125  # the CLI's "the sandbox failed" code


@record
class RemoteRun(CompletedRun):
    """A ``CompletedRun`` that ran elsewhere.

    ``index`` is the command's position in the input, ``node`` the engine's id of the node
    that ran it, ``attempt`` 1 for the first submission of its batch (2, 3 ... after a lost
    batch was resubmitted).  ``lost=True``: the batch was lost and not retried; the command may
    or may not have run, ``stderr`` says why.
    """

    index: int = -1
    node: str = ""
    attempt: int = 1
    lost: bool = False


@dataclass
class Batch:
    """Commands sent in one call: ``items`` are ``(index, command)`` pairs."""

    items: list[tuple[int, Command]]
    attempt: int = 1
    avoid: Any = None  # the slot that lost it last time


def check_command(command: Any, index: int) -> Command:
    """Refuse, on the caller's side, what ``Session.run`` would refuse on a node."""
    if isinstance(command, str):
        return command
    if isinstance(command, (bytes, bytearray)) or not isinstance(command, Sequence):
        raise TypeError(f"commands[{index}]: expected a str (shell) or a sequence of str, "
                        f"not {type(command).__name__}")
    argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"commands[{index}]: argv must be a non-empty sequence of str")
    return argv


def auto_batch_size(count: int, slots: int, inflight: int, *, min_batch: int = 32,
                    max_batch: int = 1000, rounds: int = 4) -> int:
    """A batch size that amortises the engine and still balances the load.

    Aim for about ``rounds`` batches per call slot (``slots * inflight`` calls run at once), so
    a slow node does not hold the tail of the run; but never fewer than ``min_batch`` commands
    (32 warm commands ≈ 16 ms against a ≈1 ms round trip) unless that would leave call slots
    idle.
    """
    if count <= 0:
        return 1
    wave = max(1, slots * inflight)
    balanced = math.ceil(count / (wave * rounds))
    floor = min(min_batch, math.ceil(count / wave))
    return max(1, min(max_batch, max(balanced, floor)))


def make_batches(commands: Iterable[Any], size: int) -> list[Batch]:
    items = [(i, check_command(c, i)) for i, c in enumerate(commands)]
    return [Batch(items[i:i + size]) for i in range(0, len(items), size)]


# -- records: what travels ------------------------------------------------------------------

def to_record(run: CompletedRun, index: int) -> Record:
    """A result as builtins only (bytes, str, int, float, bool, None, list)."""
    err = run.exec_error
    return {
        "index": index, "args": list(run.args), "returncode": run.returncode,
        "stdout": run.stdout, "stderr": run.stderr, "timed_out": run.timed_out,
        "duration": run.duration, "truncated": run.truncated,
        "stdout_omitted": run.stdout_omitted, "stderr_omitted": run.stderr_omitted,
        "exec_error": None if err is None else [err.stage, err.errno, err.filename],
        "timeout": run.timeout,
    }


def from_record(record: Record, *, node: str, attempt: int) -> RemoteRun:
    fields = dict(record)
    err = fields.pop("exec_error")
    return RemoteRun(**fields, exec_error=None if err is None else ExecError(*err),
                     node=node, attempt=attempt)


def lost_run(index: int, command: Command, attempt: int, node: str, reason: str) -> RemoteRun:
    args = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    return RemoteRun(args=args, returncode=LOST_RETURNCODE, stderr=reason.encode(),
                     index=index, node=node, attempt=attempt, lost=True)


# -- dispatch -------------------------------------------------------------------------------

@dataclass
class _SlotState(Generic[S]):
    slot: S
    inflight: int = 0
    probation: bool = False  # lost a batch: one call at a time until one succeeds


@dataclass
class Dispatch(Generic[S]):
    """Send batches to slots, at most ``inflight`` calls per slot, and yield what comes back.

    ``submit(slot, batch)`` returns a Future of ``(node, records)``.  ``deadline``: monotonic
    time after which waiting stops with ``TimeoutError`` (None: no limit).  ``describe(exc)``
    turns a lost batch's exception into a one-line reason.
    """

    slots: Sequence[S]
    submit: Callable[[S, Batch], cf.Future[tuple[str, list[Record]]]]
    inflight: int = 2
    retries: int = 1
    deadline: float | None = None
    describe: Callable[[BaseException], str] = lambda exc: f"{type(exc).__name__}: {exc}"
    slot_name: Callable[[S], str] = str
    resubmitted: int = 0
    lost: int = 0
    batches: int = 0
    _states: list[_SlotState[S]] = field(default_factory=list)

    def run(self, batches: list[Batch]) -> Iterator[RemoteRun]:
        """Yield every command's result, in the order batches finish."""
        if not self.slots:
            raise ValueError("no slot to send batches to")
        self._states = [_SlotState(s) for s in self.slots]
        queue = list(reversed(batches))  # pop() from the end: input order
        running: dict[cf.Future[Any], tuple[Batch, _SlotState[S]]] = {}
        try:
            while queue or running:
                self._fill(queue, running)
                timeout = None if self.deadline is None else self.deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError(f"{len(running)} batch(es) still running at the deadline")
                done, _ = cf.wait(running, timeout=timeout, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    batch, state = running.pop(future)
                    state.inflight -= 1
                    yield from self._settle(future, batch, state, queue)
        finally:
            for future in running:
                future.cancel()

    def _capacity(self, state: _SlotState[S]) -> int:
        return (1 if state.probation else self.inflight) - state.inflight

    def _fill(self, queue: list[Batch], running: dict[Any, Any]) -> None:
        while queue:
            batch = queue[-1]
            ready = [s for s in self._states if self._capacity(s) > 0]
            if batch.avoid is not None and any(
                    s.slot is not batch.avoid and not s.probation for s in self._states):
                # A healthy other slot exists: wait for it rather than resend to the loser.
                ready = [s for s in ready if s.slot is not batch.avoid]
            if not ready:
                return
            # Least loaded first; a resubmitted batch avoids the slot that lost it if it can.
            ready.sort(key=lambda s: (s.slot is batch.avoid, s.probation, s.inflight))
            state = ready[0]
            queue.pop()
            state.inflight += 1
            self.batches += 1
            running[self.submit(state.slot, batch)] = (batch, state)

    def _settle(self, future: cf.Future[Any], batch: Batch, state: _SlotState[S],
                queue: list[Batch]) -> Iterator[RemoteRun]:
        exc = future.exception()
        if exc is None:
            state.probation = False
            node, records = future.result()
            for record in records:
                yield from_record(record, node=node, attempt=batch.attempt)
            return
        state.probation = True
        if batch.attempt <= self.retries:
            self.resubmitted += 1
            queue.append(Batch(batch.items, batch.attempt + 1, avoid=state.slot))
            return
        self.lost += 1
        reason = (f"lxcbind: batch lost on {self.slot_name(state.slot)} after "
                  f"{batch.attempt} attempt(s): {self.describe(exc)}")
        for index, command in batch.items:
            yield lost_run(index, command, batch.attempt, "", reason)
