"""Per-name locks: exclusive, gone with their holder's release (no file per run piling up), and
never shared when a waiter's file is removed under it."""

from __future__ import annotations

import fcntl
import os

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind.sandbox import cleanup  # noqa: E402


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "STATE_ROOT", str(tmp_path))
    return tmp_path / "locks"


def test_exclusive_and_removed_on_release(state) -> None:
    a, b = cleanup.ContainerLock("n"), cleanup.ContainerLock("n")
    assert a.acquire(blocking=False)
    assert (state / "n.lock").exists()
    assert not b.acquire(blocking=False)
    a.release()
    assert os.listdir(state) == []   # nothing left behind by a run
    assert b.acquire(blocking=False)
    b.release()
    assert os.listdir(state) == []


def test_a_lock_on_a_removed_file_is_not_taken_for_the_name(state) -> None:
    """A waiter that opened the file before its holder removed it can flock it afterwards
    (the kernel locks the inode): the path must be checked, or two runs share a name."""
    a = cleanup.ContainerLock("n")
    assert a.acquire(blocking=False)
    stale = os.open(state / "n.lock", os.O_RDWR)   # a waiter between its open and its flock
    try:
        a.release()
        c = cleanup.ContainerLock("n")
        assert c.acquire(blocking=False)   # a new file, a new lock
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)   # the old inode: free to lock...
        assert not cleanup._same_file(stale, state / "n.lock")   # ...but not the name's
        assert not cleanup.ContainerLock("n").acquire(blocking=False)
        c.release()
    finally:
        os.close(stale)


def test_timeout_names_the_container(state) -> None:
    a = cleanup.ContainerLock("busy")
    assert a.acquire()
    with pytest.raises(cleanup.SandboxError, match="'busy' is in use"):
        cleanup.ContainerLock("busy", timeout=0.1).acquire()
    a.release()


def test_gc_removes_the_lock_files_nobody_holds(state) -> None:
    state.mkdir()
    for i in range(5):   # what runs of earlier versions left, one per run
        (state / f"lxcbind-{i:08x}.lock").touch()
    held = cleanup.ContainerLock("held")
    assert held.acquire(blocking=False)
    assert cleanup.remove_stale_locks() == 5
    assert os.listdir(state) == ["held.lock"]
    held.release()
