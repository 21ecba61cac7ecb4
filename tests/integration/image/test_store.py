"""The image store: concurrent imports do the work once, a half-written image is never used,
removal refuses an image in use, prune removes what is unused and what builders left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._imagebuild import f, manifest_digest, write_layout
from lxcbind.errors import ImageError
from lxcbind.image import get_image, list_images, prune, remove_image, store
from lxcbind.lxc.container import default_lxcpath
from tests.conftest import new_name
from tests.integration.image.conftest import Imported, store_leftovers


@pytest.fixture
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store of this test's own: ``prune`` must not touch what other runs on this machine
    keep in the real one."""
    root = str(tmp_path / "images")
    monkeypatch.setattr(store, "IMAGES_ROOT", root)
    return root


# Run as its own interpreter (not multiprocessing: its resource tracker would outlive the
# test as a child of the suite, which the binding tests' "no child left" checks then find).
_IMPORT_IN_CHILD = """
import json, os, sys
from lxcbind.image import import_image, unpack

builds = []
apply = unpack.Tree.apply

def counting(self, *args):
    builds.append(1)
    apply(self, *args)

unpack.Tree.apply = counting
image = import_image(sys.argv[1])
print(json.dumps([image.id, image.created, os.stat(image.rootfs).st_ino, len(builds)]))
"""


def test_concurrent_imports_build_once(tmp_path: Path, imported: Imported) -> None:
    # Big enough that both processes are importing at the same time.
    layers = [[f(f"file{i}", os.urandom(1 << 20)) for i in range(24)]] * 2
    ref = write_layout(str(tmp_path / "l"), layers)
    imported.forget(manifest_digest(ref))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", _IMPORT_IN_CHILD, ref], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        results.append(json.loads(out))
    (id1, created1, ino1, n1), (id2, created2, ino2, n2) = results
    assert id1 == id2 == manifest_digest(ref)
    assert (created1, ino1) == (created2, ino2)
    assert sorted([n1, n2]) == [0, 2]       # one process applied both layers, the other none
    assert store_leftovers() == []


@pytest.mark.usefixtures("private_store")
def test_half_written_image_is_never_used(tmp_path: Path, imported: Imported) -> None:
    """A build a killed importer left (a .build- directory, or a directory without its record)
    is not an image: the next import rebuilds it, and prune removes the leftovers."""
    ref = write_layout(str(tmp_path / "l"), [[f("a", b"1")]])
    digest = manifest_digest(ref)
    imported.forget(digest)
    dirname = digest.replace(":", "-")
    os.makedirs(os.path.join(store.IMAGES_ROOT, dirname, "rootfs"))    # no record
    os.makedirs(os.path.join(store.IMAGES_ROOT, f".build-{dirname}-dead", "rootfs"))
    assert store.get(digest) is None
    assert digest not in [i.id for i in list_images()]
    image = imported(ref)
    assert open(image.rootfs + "/a").read() == "1"
    assert store_leftovers() == []
    os.makedirs(os.path.join(store.IMAGES_ROOT, f".build-{dirname}-dead2"))
    assert os.path.join(store.IMAGES_ROOT, f".build-{dirname}-dead2") in prune(unused_for=1e9)
    assert store_leftovers() == []


@pytest.mark.usefixtures("private_store")
def test_remove_refuses_an_image_in_use(tmp_path: Path, imported: Imported) -> None:
    image = imported(write_layout(str(tmp_path / "l"), [[f("a", b"1")]]))
    name = new_name("img")
    cdir = os.path.join(default_lxcpath(), name)
    os.makedirs(cdir)
    try:
        with open(os.path.join(cdir, "config"), "w") as out:
            out.write(f"lxc.rootfs.path = overlay:{image.rootfs}:{cdir}/delta0\n")
        with pytest.raises(ImageError, match=f"in use by container\\(s\\) {name}"):
            remove_image(image.id)
        assert image.id not in prune()
        assert get_image(image.id).id == image.id
    finally:
        os.unlink(os.path.join(cdir, "config"))
        os.rmdir(cdir)
    assert remove_image(image.short_id).id == image.id
    assert store.get(image.id) is None
    assert not any(e.startswith(image.id.replace(":", "-")) or
                   e.startswith("." + image.id.replace(":", "-"))
                   for e in os.listdir(store.IMAGES_ROOT))
    with pytest.raises(ImageError, match="not in the store"):
        remove_image(image.id)


@pytest.mark.usefixtures("private_store")
def test_parent_is_kept_while_a_child_exists(tmp_path: Path, imported: Imported) -> None:
    parent = imported(write_layout(str(tmp_path / "l"), [[f("a", b"1")]]))
    child_id = "sha256:" + "c" * 64
    imported.forget(child_id)

    def build(root: str) -> int:
        with open(os.path.join(root, "b"), "w") as out:
            out.write("2")
        return 1

    child = store.add(child_id, build, source="test", config=parent.config, parent=parent.id)
    assert child.parent == parent.id
    with pytest.raises(ImageError, match="the parent of image"):
        remove_image(parent.id)
    removed = prune()
    assert child_id in removed and parent.id in removed   # the child first, then its parent
    assert removed.index(child_id) < removed.index(parent.id)


@pytest.mark.usefixtures("private_store")
def test_prune_keeps_recently_used(tmp_path: Path, imported: Imported) -> None:
    image = imported(write_layout(str(tmp_path / "l"), [[f("a", b"1")]]))
    assert image.id not in prune(unused_for=3600)
    assert image.id in prune(unused_for=0)


def test_record_is_json(tmp_path: Path, imported: Imported) -> None:
    image = imported(write_layout(str(tmp_path / "l"), [[f("a", b"1")]],
                                  config={"User": "1000", "Cmd": ["x"]}))
    data = json.load(open(os.path.join(os.path.dirname(image.rootfs), "image.json")))
    assert data["id"] == image.id and data["parent"] is None
    assert data["config"]["user"] == "1000" and data["config"]["cmd"] == ["x"]
    assert set(data) >= {"source", "size", "created", "last_used"}


_KILLED_IMPORT = """
import os, sys, time
from lxcbind.image import import_image, unpack
real = unpack.Tree._entry
def entry(self, *args):
    real(self, *args)
    open(sys.argv[2], "w").close()   # one entry is written: now kill me
    time.sleep(3600)
unpack.Tree._entry = entry
import_image(sys.argv[1])
"""


def test_an_import_killed_midway_leaves_nothing_used(tmp_path: Path, imported: Imported,
                                                     private_store: str) -> None:
    """SIGKILL during an import: the half-built tree is never an image; the next import
    builds it (and removes the leftover), and ``prune`` removes such leftovers too."""
    import signal
    import subprocess
    import sys
    import time

    ref = write_layout(str(tmp_path / "l"), [[f("a", b"1"), f("b", b"2")]])
    ready = tmp_path / "ready"
    env = {**os.environ, "LXCBIND_IMAGES_DIR": private_store,
           "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_IMPORT, ref, str(ready)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    leftovers = [e for e in os.listdir(private_store) if e.startswith(".build-")]
    assert len(leftovers) == 1
    assert store.get(manifest_digest(ref)) is None
    assert list_images() == []
    # gc's pass keeps every image and removes what is below them.
    assert [os.path.basename(p) for p in prune(unused_for=float("inf"))] == leftovers
    os.mkdir(os.path.join(private_store, leftovers[0]))          # as if killed again
    image = imported(ref)
    assert sorted(os.listdir(image.rootfs)) == ["a", "b"]
    assert [e for e in os.listdir(private_store) if e.startswith(".build-")] == []
    assert prune(unused_for=float("inf")) == [] and store.get(image.id) is not None
