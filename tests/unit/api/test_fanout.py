"""fanout: batching, records and resubmission, with no engine (thread-pool futures as slots)."""

from __future__ import annotations

import concurrent.futures as cf
import errno
import pickle
import threading
import time

import pytest

from lxcbind.errors import ExecError
from lxcbind.fanout import (
    LOST_RETURNCODE,
    Dispatch,
    RemoteRun,
    auto_batch_size,
    from_record,
    make_batches,
    to_record,
)
from lxcbind.result import CompletedRun


class Worker:
    """A slot that "runs" commands by echoing them; ``fail`` makes its next N calls raise."""

    def __init__(self, name: str, fail: int = 0) -> None:
        self.name = name
        self.fail = fail
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.calls += 1
            if self.fail:
                self.fail -= 1
                raise ConnectionError(f"{self.name} died")
        return self.name, [to_record(CompletedRun(["echo", str(c)], 0, stdout=str(c).encode()), i)
                           for i, c in items]

    def __str__(self) -> str:
        return self.name


@pytest.fixture
def executor():
    with cf.ThreadPoolExecutor(8) as pool:
        yield pool


def _dispatch(executor, slots, **kw):
    return Dispatch(slots=slots, submit=lambda slot, batch: executor.submit(slot, batch.items),
                    deadline=time.monotonic() + 30, **kw)


def test_every_result_comes_back_once_with_its_index(executor):
    d = _dispatch(executor, [Worker("a"), Worker("b")], inflight=3)
    runs = list(d.run(make_batches([f"c{i}" for i in range(103)], 10)))
    assert sorted(r.index for r in runs) == list(range(103))
    assert all(r.stdout == f"c{r.index}".encode() and r.attempt == 1 for r in runs)
    assert {r.node for r in runs} == {"a", "b"}
    assert d.batches == 11 and d.resubmitted == 0 and d.lost == 0


def test_a_lost_batch_is_resubmitted_elsewhere_and_counted(executor):
    bad, good = Worker("bad", fail=1), Worker("good")
    d = _dispatch(executor, [bad, good], inflight=1, retries=1)
    runs = list(d.run(make_batches([str(i) for i in range(6)], 3)))
    assert sorted(r.index for r in runs) == list(range(6))
    retried = [r for r in runs if r.attempt == 2]
    assert len(retried) == 3 and {r.node for r in retried} == {"good"}
    assert d.resubmitted == 1 and not any(r.lost for r in runs)


def test_without_retries_a_lost_batch_is_an_explicit_lost_result(executor):
    d = _dispatch(executor, [Worker("bad", fail=99)], retries=0)
    runs = list(d.run(make_batches(["a", ["b", "c"]], 1)))
    assert len(runs) == 2 and all(r.lost for r in runs)
    assert all(r.returncode == LOST_RETURNCODE and b"bad died" in r.stderr for r in runs)
    assert {tuple(r.args) for r in runs} == {("/bin/sh", "-c", "a"), ("b", "c")}
    assert d.lost == 2


def test_retries_are_bounded_when_every_slot_keeps_failing(executor):
    w = Worker("bad", fail=99)
    d = _dispatch(executor, [w], retries=2)
    runs = list(d.run(make_batches(["x"], 1)))
    assert runs[0].lost and runs[0].attempt == 3 and w.calls == 3


def test_deadline_raises_timeout_instead_of_waiting_forever(executor):
    gate = threading.Event()
    d = Dispatch(slots=["s"], submit=lambda s, b: executor.submit(gate.wait),
                 deadline=time.monotonic() + 0.2)
    with pytest.raises(TimeoutError):
        list(d.run(make_batches(["x"], 1)))
    gate.set()


def test_bad_commands_are_refused_before_anything_is_sent():
    with pytest.raises(TypeError, match=r"commands\[1\]"):
        make_batches(["ok", b"bytes"], 10)
    with pytest.raises(TypeError, match=r"commands\[0\]"):
        make_batches([[]], 10)


@pytest.mark.parametrize("count, slots, inflight, expect", [
    (0, 2, 2, 1), (1, 2, 2, 1), (4, 2, 2, 1), (40, 2, 2, 10), (1000, 2, 2, 63),
    (100000, 2, 2, 1000), (1000, 1, 1, 250)])
def test_auto_batch_size(count, slots, inflight, expect):
    assert auto_batch_size(count, slots, inflight) == expect


def test_records_are_builtins_and_rebuild_the_result():
    run = CompletedRun(["/nope"], 127, stderr=b"e", timed_out=False, duration=0.25,
                       exec_error=ExecError("exec", errno.ENOENT, "/nope"), timeout=3.0)
    record = to_record(run, 7)
    assert pickle.loads(pickle.dumps(record)) == record
    assert all(type(v) in (int, float, bool, str, bytes, list, type(None)) for v in record.values())
    back = from_record(record, node="n1", attempt=2)
    assert isinstance(back, RemoteRun) and isinstance(back, CompletedRun)
    assert (back.index, back.node, back.attempt, back.lost) == (7, "n1", 2, False)
    assert back.exec_error.errno == errno.ENOENT and back.exec_error.stage == "exec"
    assert back.returncode == 127 and back.timeout == 3.0 and back.args == ["/nope"]


def test_the_core_package_never_imports_ray():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, lxcbind, lxcbind.fanout, lxcbind.policy.parse, lxcbind.errors; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[3], check=True)
    assert out.stdout.strip() == "False", out.stderr
