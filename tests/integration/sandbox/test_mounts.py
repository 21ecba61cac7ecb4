"""The filesystem policy applied to real containers (host rootfs, as root)."""

from __future__ import annotations

import os
import subprocess

import pytest

from lxcbind.errors import PolicyError
from lxcbind.policy.model import Rootfs
from lxcbind.sandbox.mounts import plan_mounts
from lxcbind.sandbox.rootfs import define_container, remove_container
from tests.conftest import requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]


def sh(c, script: str) -> tuple[int, str]:
    """Run ``sh -c script`` in ``c``; its exit code and combined output."""
    r, w = os.pipe()
    try:
        proc = c.attach(["sh", "-c", script], stdout=w, stderr=w)
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    return proc.wait(timeout=15), b"".join(chunks).decode(errors="replace")


def mounts_mentioning(path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(path) in line]


@pytest.fixture
def sandbox(container_name, tmp_path):
    """``start(rw=, ro=, denied=)`` → a running host-rootfs container with that policy.
    Teardown removes it and checks nothing is left (container, dir, mounts)."""
    made = []

    def start(rw=(), ro=(), denied=()):
        entries = plan_mounts([str(p) for p in rw], [str(p) for p in ro],
                              [str(p) for p in denied], rootfs_kind="host")
        c = define_container(container_name, Rootfs("host"), mounts=entries)
        made.append(c)
        c.start()
        return c

    yield start
    for c in made:
        cdir = os.path.join(c.lxcpath, c.name)
        remove_container(c)
        assert not c.defined
        c.close()
        assert not os.path.exists(cdir)
    assert mounts_mentioning(tmp_path) == []


def test_readonly_and_readwrite(sandbox, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("readable")
    (tmp_path / "rw").mkdir()
    c = sandbox(rw=[tmp_path / "rw"], ro=[tmp_path / "ro"])
    rc, out = sh(c, f"cat {tmp_path}/ro/f; echo x > {tmp_path}/ro/new")
    assert rc != 0 and "readable" in out and "Read-only" in out
    rc, out = sh(c, f"echo written > {tmp_path}/rw/new")
    assert rc == 0, out
    assert (tmp_path / "rw" / "new").read_text() == "written\n"
    assert not (tmp_path / "ro" / "new").exists()


def test_denied_file_reads_empty_and_dir_lists_empty(sandbox, tmp_path):
    d = tmp_path / "d"
    (d / "secretdir").mkdir(parents=True)
    (d / "secretdir" / "inner").write_text("hidden")
    (d / "secret.txt").write_text("hidden")
    (d / "visible.txt").write_text("shown")
    c = sandbox(ro=[d], denied=[d / "secret.txt", d / "secretdir"])
    rc, out = sh(c, f"cd {d}; printf '[%s]' \"$(cat secret.txt)\" \"$(ls -A secretdir)\" "
                    "\"$(cat visible.txt)\"")
    assert rc == 0 and out == "[][][shown]", out
    rc, out = sh(c, f"touch {d}/secretdir/new")
    assert rc != 0


def test_most_specific_denied_parent(sandbox, tmp_path):
    data = tmp_path / "data"
    (data / "child").mkdir(parents=True)
    (data / "child" / "keep").write_text("child data")
    (data / "sibling").mkdir()
    (data / "sibling" / "x").write_text("hidden")
    c = sandbox(rw=[data / "child"], denied=[data])
    rc, out = sh(c, f"cat {data}/child/keep && echo new > {data}/child/new && ls -A {data}")
    assert rc == 0, out
    assert "child data" in out and "sibling" not in out
    assert (data / "child" / "new").read_text() == "new\n"
    # The mask holds exactly the child's mountpoint: nothing can be created in it.
    rc, out = sh(c, f"mkdir {data}/other || touch {data}/f2; ls -A {data}")
    assert out.strip().splitlines()[-1] == "child", out


def test_denied_symlinks_mask_their_targets(sandbox, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "inner").write_text("hidden")
    (tmp_path / "real.txt").write_text("hidden")
    (tmp_path / "ldir").symlink_to(tmp_path / "real")
    (tmp_path / "lfile").symlink_to(tmp_path / "real.txt")
    c = sandbox(rw=[tmp_path], denied=[tmp_path / "ldir", tmp_path / "lfile"])
    rc, out = sh(c, f"cat {tmp_path}/real.txt {tmp_path}/lfile; ls -A {tmp_path}/real "
                    f"{tmp_path}/ldir/")
    assert "hidden" not in out and "inner" not in out, out


def test_alias_rw_dir_and_denied_symlink_to_it(sandbox, tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "f").write_text("hidden")
    (tmp_path / "alias").symlink_to(tmp_path / "work")
    c = sandbox(rw=[tmp_path / "work"], denied=[tmp_path / "alias"])
    rc, out = sh(c, f"ls -A {tmp_path}/work")
    assert out.strip() == "", out


def test_dangling_denied_symlink_refused(tmp_path):
    (tmp_path / "dead").symlink_to(tmp_path / "gone")
    with pytest.raises(PolicyError, match=r"deniedPaths\[0\]: .*dangling symlink"):
        plan_mounts([], [], [str(tmp_path / "dead")], rootfs_kind="host")


def test_file_binds(sandbox, tmp_path):
    (tmp_path / "ro.txt").write_text("ro content")
    (tmp_path / "rw.txt").write_text("rw content")
    c = sandbox(rw=[tmp_path / "rw.txt"], ro=[tmp_path / "ro.txt"])
    rc, out = sh(c, f"cat {tmp_path}/ro.txt {tmp_path}/rw.txt; echo more >> {tmp_path}/rw.txt"
                    f" && echo more >> {tmp_path}/ro.txt")
    assert "ro content" in out and "rw content" in out and rc != 0
    assert (tmp_path / "rw.txt").read_text() == "rw contentmore\n"
    assert (tmp_path / "ro.txt").read_text() == "ro content"


def test_path_with_a_space(sandbox, tmp_path):
    d = tmp_path / "my dir"
    d.mkdir()
    (d / "f").write_text("spaced")
    c = sandbox(rw=[d])
    rc, out = sh(c, f"cat '{d}/f' && echo w > '{d}/g'")
    assert rc == 0 and "spaced" in out, out
    assert (d / "g").exists()


@pytest.fixture
def host_tmpfs(tmp_path):
    """A writable tmpfs mounted on the host at ``tmp_path/ro/sub`` (unmounted afterwards)."""
    sub = tmp_path / "ro" / "sub"
    sub.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(sub)], check=True)
    try:
        (sub / "onsub").write_text("sub content")
        yield sub
    finally:
        subprocess.run(["umount", "-l", str(sub)], check=True)


def test_readonly_is_recursive(sandbox, tmp_path, host_tmpfs):
    c = sandbox(ro=[tmp_path / "ro"])
    rc, out = sh(c, f"cat {host_tmpfs}/onsub; echo x > {host_tmpfs}/new")
    assert "sub content" in out and rc != 0, out
    assert not (host_tmpfs / "new").exists()
