"""``lxcbind gc`` prunes the disk-image cache of what this version never uses: templates of
another schema (an older lxcbind's, each up to the 10 GiB default in apparent size), what a
killed template maker left, and ``free/`` images of another schema or beyond ``KEEP`` per
size.  It keeps the current templates and up to ``KEEP`` clean images per size, and a disk
limited sandbox still runs on what is left, reusing a kept image.

Every test works in a scratch cache (the module paths monkeypatched): the machine's own cache
is shared by other lxcbind versions that run meanwhile and is not this test's to prune.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxcbind.sandbox import core, disk, diskpool
from lxcbind.sandbox.core import Sandbox

from ..conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(240)]

SIZE = 16 << 20
OLD = "1" if disk._SCHEMA != "1" else "0"


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # Beside the real cache, not in the test's tmp_path: an image goes back to ``free/`` by a
    # rename from the container's directory, which a tmpfs /tmp (Debian 13) cannot take.
    os.makedirs(os.path.dirname(disk.IMAGES), exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".test-cache-", dir=os.path.dirname(disk.IMAGES)))
    try:
        yield _scratch_cache(scratch, monkeypatch)
    finally:
        # A sandbox's image is recycled by a thread that outlives the test; it reads the
        # cache's paths when it runs.  Let it finish while they are still the scratch ones, or
        # it publishes a scratch template's copy into the real free/ (seen once on Debian 12).
        disk._finish_pending(timeout=30)
        shutil.rmtree(scratch)


def _scratch_cache(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    images = scratch / "disk"
    monkeypatch.setattr(disk, "IMAGES", str(images))
    monkeypatch.setattr(diskpool, "FREE", str(images / "free"))
    monkeypatch.setattr(diskpool, "BUSY", str(images / "busy"))
    disk.template(SIZE)                       # a real current template (mkfs.ext4)
    (images / "free").mkdir(mode=0o700)
    return images


def _sparse(path: Path, size: int = SIZE) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _free(size: int, schema: str, n: int) -> list[str]:
    names = [f"ext4-{size}-{schema}.{i:08x}.img" for i in range(n)]
    for name in names:
        _sparse(Path(diskpool.FREE) / name, size)
    return names


def test_prune_removes_what_this_version_never_uses_and_keeps_the_rest(cache: Path):
    current = Path(disk._template_path(SIZE)).name
    old = [f"ext4-{SIZE}-{OLD}.img", f"ext4-{8 * SIZE}-{OLD}.img"]
    for name in old:
        _sparse(cache / name)
    dead_tmp = f".{current}.999999.tmp"        # a maker killed mid-mkfs
    _sparse(cache / dead_tmp)
    (cache / f".{current}.999999.tree" / disk.UPPER).mkdir(parents=True)
    kept = _free(SIZE, disk._SCHEMA, diskpool.KEEP + 2)
    other = _free(SIZE, OLD, 2)
    unrelated = cache / "notes.txt"             # not a name of the cache: left alone
    unrelated.write_text("x")

    removed = set(disk.prune())

    assert removed == {*old, dead_tmp, f".{current}.999999.tree",
                       *(f"free/{n}" for n in other + kept[diskpool.KEEP:])}
    left = set(os.listdir(cache))
    assert current in left and unrelated.name in left and not left & set(old)
    assert sorted(os.listdir(diskpool.FREE)) == kept[:diskpool.KEEP]
    assert disk.prune() == []                 # nothing more the second time


def test_gc_prunes_the_cache(cache: Path):
    _sparse(cache / f"ext4-{SIZE}-{OLD}.img")
    lines: list[str] = []
    core.gc(log=lines.append)
    assert not (cache / f"ext4-{SIZE}-{OLD}.img").exists()
    assert any(f"ext4-{SIZE}-{OLD}.img" in line for line in lines), lines
    assert Path(disk._template_path(SIZE)).exists()


def test_a_disk_limited_sandbox_runs_on_the_pruned_cache(cache: Path):
    _free(SIZE, OLD, 1)
    disk.prune()
    doc = {"version": "0.8.0", "containerId": new_name("harden-prune-"),
           "process": {"commandLine": "true"}, "lxc": {"limits": {"disk": f"{SIZE >> 20}M"}}}
    for _ in range(2):   # the second claims the image the first one's teardown recycled
        with Sandbox(doc) as box:
            r = box.run("head -c 64M /dev/zero > /f")   # the limit holds: 16 MiB
            assert r.returncode != 0 and b"No space left" in r.stderr, r
        disk._finish_pending(timeout=30)   # its image is recycled by a thread of its own
    assert [n.startswith(f"ext4-{SIZE}-{disk._SCHEMA}.") for n in os.listdir(diskpool.FREE)] \
        == [True]
