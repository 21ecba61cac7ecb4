"""plan_mounts: the filesystem policy → ordered lxc.mount.entry items (no container needed)."""

from __future__ import annotations

import os

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind.errors import PolicyError, SandboxError  # noqa: E402
from lxcbind.sandbox.mounts import MountEntry, plan_mounts  # noqa: E402


def rel(path) -> str:
    return os.path.realpath(str(path)).lstrip("/")


def by_target(entries: list[MountEntry]) -> dict[str, list[MountEntry]]:
    out: dict[str, list[MountEntry]] = {}
    for e in entries:
        out.setdefault(e.target, []).append(e)
    return out


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "data" / "child").mkdir(parents=True)
    (tmp_path / "data" / "sibling").mkdir()
    (tmp_path / "data" / "secret.txt").write_text("s")
    (tmp_path / "file.txt").write_text("f")
    return tmp_path


def test_rw_ro_binds_with_create_kind(tree):
    entries = plan_mounts([str(tree / "data")], [str(tree / "file.txt")], [], rootfs_kind="host")
    assert [e.config_value() for e in entries] == [
        f"{os.path.realpath(tree / 'data')} {rel(tree / 'data')} none bind,create=dir 0 0",
        f"{os.path.realpath(tree / 'file.txt')} {rel(tree / 'file.txt')} none "
        "bind,ro,create=file 0 0",
    ]


def test_most_specific_wins_shallow_first(tree):
    entries = plan_mounts([str(tree / "data" / "child")], [], [str(tree / "data")],
                          rootfs_kind="host")
    assert [e.target for e in entries] == [rel(tree / "data"), rel(tree / "data" / "child")]
    mask = entries[0]
    # Writable only for the one mountpoint it must hold: root inode + "child".
    assert mask.fstype == "tmpfs" and "nr_inodes=2" in mask.options
    assert mask.options.startswith("rw,")


def test_plain_denied_dir_is_readonly_tmpfs_and_file_is_dev_null(tree):
    entries = by_target(plan_mounts([], [], [str(tree / "data"), str(tree / "file.txt")],
                                    rootfs_kind="host"))
    d = entries[rel(tree / "data")][0]
    assert d.fstype == "tmpfs" and d.options.startswith("ro,")
    f = entries[rel(tree / "file.txt")][0]
    assert (f.source, f.options) == ("/dev/null", "bind,ro,create=file")


def test_same_path_tie_is_strictest(tree):
    p = str(tree / "data")
    entries = plan_mounts([p], [p], [p], rootfs_kind="host")
    assert len(entries) == 1 and entries[0].fstype == "tmpfs"
    entries = plan_mounts([p], [p + "/"], [], rootfs_kind="host")
    assert len(entries) == 1 and "ro" in entries[0].options.split(",")


def test_alias_by_inode_is_tightened(tree):
    link = tree / "alias"
    link.symlink_to(tree / "data")
    entries = plan_mounts([str(tree / "data")], [], [str(link)], rootfs_kind="host")
    # The denied symlink masks its real target, which the rw grant named too: masked.
    assert len(entries) == 1 and entries[0].fstype == "tmpfs"
    os.link(tree / "file.txt", tree / "hard.txt")
    entries = by_target(plan_mounts([str(tree / "file.txt")], [str(tree / "hard.txt")], [],
                                    rootfs_kind="host"))
    assert all("ro" in e.options.split(",") for es in entries.values() for e in es)


def test_denied_symlinks_mask_real_target(tree):
    (tree / "lf").symlink_to(tree / "file.txt")
    (tree / "ld").symlink_to(tree / "data")
    entries = by_target(plan_mounts([], [], [str(tree / "lf"), str(tree / "ld")],
                                    rootfs_kind="host"))
    assert set(entries) == {rel(tree / "file.txt"), rel(tree / "data")}


def test_dotdot_after_symlink_resolves_physically(tree):
    (tree / "link").symlink_to(tree / "data" / "child")
    # /link/../secret.txt is /data/secret.txt physically, not /secret.txt lexically.
    entries = plan_mounts([], [], [str(tree / "link") + "/../secret.txt"], rootfs_kind="host")
    assert [e.target for e in entries] == [rel(tree / "data" / "secret.txt")]


def test_dangling_denied_symlink_refused_with_json_path(tree):
    (tree / "dangling").symlink_to(tree / "nowhere")
    with pytest.raises(PolicyError) as info:
        plan_mounts([], [], [str(tree / "file.txt"), str(tree / "dangling")], rootfs_kind="host")
    assert info.value.path == "filesystem.deniedPaths[1]"
    assert "dangling symlink" in str(info.value)


def test_missing_grant_is_an_error_naming_it(tree):
    with pytest.raises(SandboxError, match=r"readonlyPaths\[0\].*nope"):
        plan_mounts([], [str(tree / "nope")], [], rootfs_kind="host")


def test_missing_denied_path(tree):
    missing = str(tree / "nope")
    assert plan_mounts([], [], [missing], rootfs_kind="host") == []
    entries = plan_mounts([], [], [missing], rootfs_kind="busybox")
    assert len(entries) == 2 and all("optional" in e.options for e in entries)


@pytest.mark.parametrize("bad", ["/tmp/a\nlxc.mount.entry = x", "/tmp/a\tb", "relative/path",
                                 "", "   ", "/"])
def test_bad_strings_refused(bad):
    with pytest.raises(PolicyError) as info:
        plan_mounts([], [bad], [], rootfs_kind="host")
    assert info.value.path == "filesystem.readonlyPaths[0]"


def test_space_and_backslash_escaped(tmp_path):
    d = tmp_path / "with space\\x"
    d.mkdir()
    (value,) = [e.config_value() for e in plan_mounts([str(d)], [], [], rootfs_kind="host")]
    assert "with\\040space\\134x" in value and " " not in value.split()[0]


def test_denied_below_denied_is_dropped(tree):
    entries = plan_mounts([], [], [str(tree / "data"), str(tree / "data" / "secret.txt")],
                          rootfs_kind="host")
    assert [e.target for e in entries] == [rel(tree / "data")]


def test_boundary_is_a_path_component(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "database").mkdir()
    entries = plan_mounts([str(tmp_path / "database")], [], [str(tmp_path / "data")],
                          rootfs_kind="host")
    mask = [e for e in entries if e.fstype == "tmpfs"][0]
    assert mask.options.startswith("ro,")  # database is not nested in data
