"""Ownership records: a runner is alive only while its process can still act."""

from __future__ import annotations

import os
import time

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind.sandbox.cleanup import OwnershipRecord  # noqa: E402
from lxcbind.state import process_start_time as _process_start_time  # noqa: E402


def test_a_zombie_runner_counts_as_dead():
    # A SIGKILLed runner not yet reaped by its parent (Ray restarts an actor before its raylet
    # reaps the old worker) must not protect what it left from gc.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        for _ in range(200):
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        record = OwnershipRecord("c", "/x", pid, 1, "", True)
        assert _process_start_time(pid) is None
        assert not record.runner_alive()
    finally:
        os.waitpid(pid, 0)


def test_a_live_runner_counts_as_alive():
    record = OwnershipRecord.for_this_process("c", "/x", True)
    assert record.runner_alive()


def test_gc_removes_the_half_written_records_of_dead_runners_only(tmp_path, monkeypatch):
    from lxcbind.sandbox import cleanup

    monkeypatch.setattr(cleanup, "STATE_ROOT", str(tmp_path))
    owners = tmp_path / "owners"
    owners.mkdir()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)   # reaped: the pid names no process now
    dead, live = owners / f"a.tmp{pid}", owners / f"b.tmp{os.getpid()}"
    record, other = owners / "c.json", owners / "notes.tmp"
    for path in (dead, live, record, other):
        path.write_text("{}")
    assert cleanup.remove_stale_temporaries() == [dead.name]
    assert sorted(p.name for p in owners.iterdir()) == sorted(
        [live.name, record.name, other.name])


def test_gc_reports_and_skips_what_it_cannot_remove(tmp_path, monkeypatch):
    """One leftover whose removal fails is one warning line, keeps its record, and does not
    stop the others (the real shapes: tests/security/test_teardown_shapes.py)."""
    from lxcbind.sandbox import cleanup

    monkeypatch.setattr(cleanup, "STATE_ROOT", str(tmp_path))
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    for name in ("a-bad", "b-good", "c-good"):
        OwnershipRecord(name, "/nowhere", pid, 1, "", True).save()
    destroyed, warnings, logs = [], [], []

    def destroy(name: str, lxcpath: str) -> None:
        if name == "a-bad":
            raise OSError(16, "Device or resource busy\nsecond line")
        destroyed.append(name)

    removed = cleanup.collect_garbage(destroy, log=logs.append, warn=warnings.append)
    assert removed == destroyed == ["b-good", "c-good"]
    assert len(warnings) == 1 and "'a-bad'" in warnings[0] and "\n" not in warnings[0]
    assert sorted(p.name for p in (tmp_path / "owners").iterdir()) == ["a-bad.json"]
