"""The disk limit's pure parts: the default size, and the sparse copy of a cached image."""

from __future__ import annotations

import os
from pathlib import Path

from lxcbind.policy.model import UNLIMITED
from lxcbind.sandbox import disk


def test_an_explicit_limit_is_used_as_it_is_and_max_means_none(tmp_path: Path) -> None:
    assert disk.resolve(64 << 20, str(tmp_path)) == 64 << 20
    assert disk.resolve(UNLIMITED, str(tmp_path)) is None


def test_the_default_is_ten_gib_or_a_power_of_two_under_a_quarter_of_the_free_space(
        tmp_path: Path) -> None:
    size = disk.resolve(None, str(tmp_path))
    assert size is not None
    st = os.statvfs(tmp_path)
    quarter = st.f_bavail * st.f_frsize // 4
    if quarter >= disk.DEFAULT_CAP:
        assert size == disk.DEFAULT_CAP
    else:
        assert size & (size - 1) == 0 and disk.MIN_SIZE <= size
        assert size <= quarter or size == disk.MIN_SIZE


def test_the_sparse_copy_keeps_data_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        for offset in (0, 5 << 20, (64 << 20) - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
    fd = disk._copy_sparse(str(src), str(dst))
    os.close(fd)
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_blocks * 512 <= os.stat(src).st_blocks * 512 + (1 << 20)
    assert os.stat(dst).st_mode & 0o777 == 0o600


def test_a_file_made_again_in_place_of_another_is_copied_as_it_is_now(tmp_path: Path) -> None:
    """The data extents are remembered per file; a file made again with the same device,
    inode number and size (as a removed cache's template could be) is not copied with the old
    file's map: here the same inode, emptied and written elsewhere."""
    src = tmp_path / "src"
    for offset in (0, 9 << 20):
        with open(src, "r+b" if src.exists() else "wb") as f:
            f.truncate(0)
            f.truncate(16 << 20)
            f.seek(offset)
            f.write(os.urandom(4096))
        dst = tmp_path / f"dst{offset}"
        os.close(disk._copy_sparse(str(src), str(dst)))
        assert dst.read_bytes() == src.read_bytes()
