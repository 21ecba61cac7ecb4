"""What a fresh container no longer reads from the host every time (issue #23): the host's
system binds, the subid delegation and the runner's identity are remembered, and read again
as soon as what they came from changes."""

from __future__ import annotations

import os

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind import state  # noqa: E402
from lxcbind.sandbox import idmap, rootfs  # noqa: E402


def test_host_mounts_are_planned_once_and_handed_out_as_copies(monkeypatch):
    monkeypatch.setattr(rootfs, "_HOST_MOUNTS", None)
    plans = []
    real = rootfs.plan_mounts
    monkeypatch.setattr(rootfs, "plan_mounts", lambda *a, **k: plans.append(1) or real(*a, **k))
    first = rootfs._host_mounts()
    first.clear()   # a caller changing its list changes nothing remembered
    assert rootfs._host_mounts() == rootfs._host_mounts() != []
    assert len(plans) == 1


def test_host_mounts_are_planned_again_when_a_source_changes(monkeypatch, tmp_path):
    # A bind source below /etc that a package replaces (here: one made for the test, named
    # through /etc/.. so that nothing of the host's /etc is touched).
    source = tmp_path / "certs"
    source.mkdir()
    monkeypatch.setattr(rootfs, "_HOST_ETC_BIND", (os.path.relpath(source, "/etc"),))
    monkeypatch.setattr(rootfs, "_HOST_MOUNTS", None)
    before = rootfs._host_mounts()
    source.rmdir()
    after = rootfs._host_mounts()
    assert len(after) == len(before) - 1   # its bind is gone at once, not remembered


@pytest.fixture
def subid_files(tmp_path, monkeypatch):
    files = (str(tmp_path / "subuid"), str(tmp_path / "subgid"))
    monkeypatch.setattr(idmap, "_SUBID_FILES", files)
    monkeypatch.setattr(idmap, "_delegated", None)
    return files


def test_delegation_is_written_once_and_foreign_ranges_follow_the_files(subid_files):
    pool = f"root:{idmap.FIRST_ID}:{idmap.SLOTS * idmap.RANGE}"
    assert idmap.ensure_host_delegation() == []
    for path in subid_files:
        with open(path) as f:
            assert f.read().split() == [pool]
    # An administrator delegates ids inside lxcbind's pool to a user afterwards.
    start = idmap.FIRST_ID + 5 * idmap.RANGE
    with open(subid_files[0], "a") as f:
        f.write(f"alice:{start}:{idmap.RANGE}\n")
    assert idmap.ensure_host_delegation() == [(start, start + idmap.RANGE)]
    # Someone removes lxcbind's line: it is put back on the next call.
    with open(subid_files[1], "w") as f:
        f.write("")
    idmap.ensure_host_delegation()
    with open(subid_files[1]) as f:
        assert f.read().split() == [pool]


def test_runner_identity_is_the_forked_childs_own():
    parent = state.runner_identity()
    assert parent == state.runner_identity()
    assert parent["runner_pid"] == os.getpid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child must not report its parent's remembered identity
        child = state.runner_identity()
        ok = child["runner_pid"] == os.getpid() and \
            child["runner_start"] == state.process_start_time(os.getpid())
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    returned = state.runner_identity()
    returned["runner_pid"] = -1   # a caller's changes do not reach the remembered one
    assert state.runner_identity() == parent
