"""The host base's name: the digests of the host's /etc files, remembered between calls only
while a file's inode, size and times stay the same."""

from __future__ import annotations

import os

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind._lite import sha256_hex  # noqa: E402
from lxcbind.sandbox import rootfs  # noqa: E402


def _reference_layout() -> dict[str, object]:
    """The layout read from scratch: every file read and hashed, nothing remembered."""
    etc: dict[str, list[str]] = {}
    for name in rootfs._host_etc_names():
        path = "/etc/" + name
        if os.path.islink(path):
            etc[name] = ["link", os.readlink(path)]
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                etc[name] = ["sha256", sha256_hex(f.read())]
    return etc


def test_layout_is_the_one_read_from_scratch_also_when_remembered() -> None:
    first = rootfs._host_layout()
    again = rootfs._host_layout()   # the settled files' digests come from memory now
    assert first == again
    assert first["etc"] == _reference_layout()
    assert first["etc"], "the host has none of the /etc files a host base copies"


def test_a_changed_file_is_hashed_again(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rootfs, "_SETTLED_NS", -1)   # remember even a file changed just now
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(b"one")
    assert rootfs._etc_digest(path, os.lstat(path)) == sha256_hex(b"one")
    with open(path, "wb") as f:
        f.write(b"three")   # another size
    assert rootfs._etc_digest(path, os.lstat(path)) == sha256_hex(b"three")
    with open(path, "wb") as f:
        f.write(b"THREE")   # same size: the times tell
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert rootfs._etc_digest(path, os.lstat(path)) == sha256_hex(b"THREE")
    os.rename(path, path + ".old")
    with open(path, "wb") as f:
        f.write(b"other")   # another inode
    assert rootfs._etc_digest(path, os.lstat(path)) == sha256_hex(b"other")


def test_a_file_changed_just_now_is_not_remembered(tmp_path) -> None:
    """Two changes within one timestamp tick leave the same size and times: a digest taken
    between them is not kept (the second change would go unnoticed)."""
    path = str(tmp_path / "f")
    with open(path, "wb") as f:
        f.write(b"abc")
    st = os.lstat(path)
    assert rootfs._etc_digest(path, st) == sha256_hex(b"abc")
    with open(path, "wb") as f:
        f.write(b"xyz")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))   # same mtime; ctime is recent
    assert rootfs._etc_digest(path, os.lstat(path)) == sha256_hex(b"xyz")
    assert path not in rootfs._DIGESTS
