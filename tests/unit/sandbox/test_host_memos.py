"""What a fresh container no longer reads from the host every time (issue #23): the host
skeleton's layout, the subid delegation and the runner's identity are remembered, and read
again as soon as what they came from changes."""

from __future__ import annotations

import os

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind import state  # noqa: E402
from lxcbind.sandbox import idmap, rootfs  # noqa: E402


def _under_etc(path: os.PathLike[str] | str) -> str:
    """A name ``/etc/<name>`` resolves to ``path`` by (the layout reads only below /etc)."""
    return os.path.relpath(os.fspath(path), "/etc")


@pytest.fixture
def layout_files(tmp_path, monkeypatch):
    """The layout built from two files of a temporary directory instead of the host's /etc."""
    files = [tmp_path / "one", tmp_path / "two"]
    for f in files:
        f.write_text("first\n")
    monkeypatch.setattr(rootfs, "_HOST_ETC_COPY", tuple(_under_etc(f) for f in files))
    monkeypatch.setattr(rootfs, "_HOST_ETC_DIRS", ())
    monkeypatch.setattr(rootfs, "_host_memo", rootfs._HostMemo())
    reads = []
    real = rootfs._read_host_layout
    monkeypatch.setattr(rootfs, "_read_host_layout", lambda names: reads.append(1) or real(names))
    return files, reads


def test_the_layout_is_read_once_while_nothing_changes(layout_files):
    _, reads = layout_files
    first = rootfs._fingerprint(rootfs._host_layout())
    assert rootfs._fingerprint(rootfs._host_layout()) == first
    assert len(reads) == 1


def test_a_changed_file_changes_the_base_key_at_once(layout_files):
    files, reads = layout_files
    first = rootfs._fingerprint(rootfs._host_layout())
    files[1].write_text("other\n")   # same size, same second: ctime and content differ
    assert rootfs._fingerprint(rootfs._host_layout()) != first
    assert len(reads) == 2


def test_a_file_replaced_by_rename_or_removed_is_noticed(layout_files):
    files, _ = layout_files
    first = rootfs._fingerprint(rootfs._host_layout())
    replacement = files[0].with_name("new")
    replacement.write_text("first\n")   # same content, another inode (a package upgrade)
    os.replace(replacement, files[0])
    second = rootfs._fingerprint(rootfs._host_layout())
    files[0].unlink()
    third = rootfs._fingerprint(rootfs._host_layout())
    assert second == first   # the content is the key: an identical file is the same base
    assert third != first


def test_host_mounts_are_a_copy(monkeypatch):
    monkeypatch.setattr(rootfs, "_host_memo", rootfs._HostMemo())
    first = rootfs._host_mounts()
    first.clear()   # a caller changing its list changes nothing remembered
    assert rootfs._host_mounts() == rootfs._host_mounts() != []


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
