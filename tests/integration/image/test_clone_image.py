"""Pool(clones=True) on an image and on a snapshot: a clone stacks its layer on the
template's lower layers (idmapped image layers, a snapshot's layers), whiteouts included."""

from __future__ import annotations

from pathlib import Path

import pytest

import lxcbind
from lxcbind.image import store
from tests.conftest import IS_ROOT, NATIVE_ERROR, requires_clones
from tests.integration.image.conftest import Imported
from tests.integration.image.test_run_image import CONFIG, busybox_image

pytestmark = [requires_clones, pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]


def test_clones_of_an_image_and_of_a_snapshot(tmp_path: Path, imported: Imported) -> None:
    ref = busybox_image(str(tmp_path / "layout"), CONFIG)
    imported(ref)
    image_id = store.lookup(ref).id
    with lxcbind.Pool({"version": "0.8.0"}, size=2, image=ref, clones=True) as pool:
        results = pool.map(["cat /work/hello; ls /work; id -u; pwd; echo x > /work/new"] * 3)
    assert [r.stdout for r in results] == [b"from the image\nhello\n1000\n/work\n"] * 3
    assert all(r.returncode != 0 for r in results)   # /work is root's: the image's user
    assert {r.image for r in results} == {image_id}
    with lxcbind.Sandbox({"version": "0.8.0"}, image=ref) as box:
        assert box.run("echo snapped > /home/app/note").returncode == 0
        snap = box.snapshot()
    imported.forget(snap.id)
    with lxcbind.Pool({"version": "0.8.0"}, size=1, image=snap, clones=True) as pool:
        r = pool.run("cat /home/app/note /work/hello; ls /work", timeout=30)
    assert r.stdout == b"snapped\nfrom the image\nhello\n", r
