"""``lxcbind.lxc.rmtree``: flat removal, bounded stack and memory, no link followed, no
mount point crossed, what stays is reported (never a crash).  Real files, no mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import tracemalloc
from pathlib import Path

import pytest

from lxcbind.lxc.rmtree import RemovalError, remove_tree

IS_ROOT = os.geteuid() == 0


def chain(root: Path, depth: int, name: str = "d") -> None:
    """``depth`` nested directories under ``root``, made fd-relative (past PATH_MAX too)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_deep_tree_goes_on_a_tiny_stack(tmp_path: Path) -> None:
    """10,000 levels of 255-byte names (2.5 MB of path) in a thread with a 256 KiB stack:
    anything that recursed per level (liblxc, shutil.rmtree) could not."""
    root = tmp_path / "t"
    root.mkdir()
    chain(root, 10_000, "n" * 255)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            remove_tree(str(root))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    before = open_fds()
    old = threading.stack_size(256 * 1024)
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        threading.stack_size(old)
    assert errors == []
    assert not root.exists()
    assert open_fds() == before


def test_memory_does_not_grow_with_width(tmp_path: Path) -> None:
    def peak(width: int) -> int:
        root = tmp_path / f"w{width}"
        root.mkdir()
        for i in range(width):
            (root / f"{i:0200d}").touch()
            if i % 1000 == 0:
                (root / f"dir{i}").mkdir()
                (root / f"dir{i}" / "f").touch()
        tracemalloc.start()
        try:
            remove_tree(str(root))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert not root.exists()

    small, large = peak(100), peak(20_000)
    assert large < small + 64 * 1024, (small, large)


def test_special_files_and_mode_000(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    os.mkfifo(root / "a" / "fifo")            # opening it would block forever
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "a" / "sock"))
    s.close()
    with open(root / "a" / "sparse", "wb") as f:
        f.truncate(1 << 40)
    (root / "a" / "b" / "f").touch()
    os.chmod(root / "a" / "b" / "f", 0)
    os.chmod(root / "a" / "b", 0)
    os.chmod(root / "a", 0)
    remove_tree(str(root))
    assert not root.exists()


def test_links_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "precious").write_text("x")
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / "to-dir").symlink_to(outside)
    (root / "d" / "to-sub").symlink_to(outside / "sub")
    os.link(outside / "sub" / "precious", root / "d" / "hard")
    remove_tree(str(root))
    assert not root.exists()
    assert (outside / "sub" / "precious").read_text() == "x"
    # The tree's root given as a link: the link goes, its target stays.
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(str(link))
    assert not os.path.lexists(link) and (outside / "sub" / "precious").exists()


def test_keep_root_and_missing(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    chain(root, 50)
    (root / "f").touch()
    remove_tree(str(root), keep_root=True)
    assert root.is_dir() and os.listdir(root) == []
    remove_tree(str(tmp_path / "missing"))
    remove_tree(str(tmp_path / "missing" / "below"))
    (tmp_path / "file").touch()
    remove_tree(str(tmp_path / "file"))
    assert not (tmp_path / "file").exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs root (mount)")
def test_a_mount_point_is_not_crossed_and_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "t"
    mnt = root / "a" / "b" / "m"
    mnt.mkdir(parents=True)
    (root / "other").mkdir()
    (root / "other" / "f").touch()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(mnt)], check=True)
    try:
        (mnt / "inside").write_text("x")
        with pytest.raises(RemovalError) as info:
            remove_tree(str(root))
        assert "mount point" in str(info.value)
        with open("/proc/self/mounts") as f:
            moved = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
        assert Path(moved[0], "inside").read_text() == "x"   # not entered
        assert not (root / "other").exists()          # the rest went anyway
    finally:
        # Hoisting moved the directories above it: the mount moved with them.
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
        assert len(points) == 1
        subprocess.run(["umount", points[0]], check=True)
    remove_tree(str(root))
    assert not root.exists()


@pytest.mark.skipif(not IS_ROOT, reason="needs root (chattr +i)")
def test_what_cannot_go_is_reported_and_the_rest_goes(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "x").mkdir(parents=True)
    stuck = root / "x" / "stuck"
    stuck.touch()
    chain(root / "x", 200)
    for i in range(20):
        (root / f"f{i}").touch()
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        with pytest.raises(RemovalError) as info:
            remove_tree(str(root))
        assert info.value.left >= 1 and "'stuck'" in str(info.value)
        left = [str(p.relative_to(root)) for p in root.rglob("*")]
        # Only the immutable file and the directories on its way stay (flat, not 200 deep).
        assert len(left) <= 4 and any(p.endswith("stuck") for p in left), left
    finally:
        subprocess.run(["chattr", "-i", *[str(p) for p in root.rglob("stuck")]], check=True)
    remove_tree(str(root))
    assert not root.exists()
