"""Importing images the tests build: layers in order, whiteouts, opaque directories, gzip,
zstd and plain layers, docker archives, tags, owners and modes, the config's defaults."""

from __future__ import annotations

import os
import stat

import pytest

from benchmarks._imagebuild import (
    config_digest,
    d,
    dev,
    f,
    fifo,
    hard,
    manifest_digest,
    opq,
    sha,
    sym,
    wh,
    write_docker_archive,
    write_layout,
)
from lxcbind.errors import ImageError
from lxcbind.image import get_image, list_images
from tests.integration.image.conftest import Imported, store_leftovers

BUSYBOX = "/bin/busybox"


def _busybox() -> bytes:
    with open(BUSYBOX, "rb") as fh:
        return fh.read()


def layers_with_whiteouts() -> list[list[tuple]]:  # type: ignore[type-arg]
    base = [d("bin"), f("bin/busybox", _busybox(), 0o755), sym("bin/sh", "busybox"),
            d("etc"), f("etc/motd", b"hello\n"), f("etc/keep", b"keep\n"),
            d("var"), d("var/cache"), f("var/cache/a", b"a"), d("var/cache/sub"),
            f("var/cache/sub/b", b"b"), d("home", 0o755), d("home/u", 0o700, 1000, 1000),
            f("home/u/suid", b"#!/bin/sh\n", 0o4755, 1000, 1000), fifo("run-fifo")]
    upper = [wh("etc/motd"), opq("var/cache"), f("var/cache/new", b"new"),
             f("same-layer", b"kept"), wh("same-layer"),   # hides only lower layers' files
             f("etc/keep", b"changed\n", 0o600), hard("etc/keep2", "etc/keep")]
    top = [f("etc/motd", b"back\n"), wh("var/cache/new"), dev("dev-null", 1, 3),
           dev("char00", 0, 0), wh("no/such/dir/x")]     # a whiteout of nothing: no-op
    return [base, upper, top]


def test_multilayer_oci_whiteouts_and_opaque(tmp_path: str, imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "layout"), layers_with_whiteouts(),
                       config={"Env": ["A=1"], "Cmd": ["/bin/sh"]})
    image = imported(ref)
    root = image.rootfs
    assert image.id == manifest_digest(ref)
    assert image.parent is None and image.source == ref
    assert open(f"{root}/etc/motd").read() == "back\n"           # removed, then re-added
    assert open(f"{root}/etc/keep").read() == "changed\n"
    assert os.stat(f"{root}/etc/keep").st_ino == os.stat(f"{root}/etc/keep2").st_ino
    assert sorted(os.listdir(f"{root}/var/cache")) == []          # opaque, then whiteout
    assert os.readlink(f"{root}/bin/sh") == "busybox"
    st = os.stat(f"{root}/home/u/suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4755)
    assert stat.S_IMODE(os.stat(f"{root}/home/u").st_mode) == 0o700
    assert stat.S_ISFIFO(os.lstat(f"{root}/run-fifo").st_mode)
    # Device nodes are dropped, char 0/0 included (it is not a whiteout in an OCI layer).
    assert not os.path.lexists(f"{root}/dev-null") and not os.path.lexists(f"{root}/char00")
    assert set(image.dropped) == {"dev-null", "char00"}
    assert not os.path.exists(f"{root}/no")
    assert open(f"{root}/same-layer").read() == "kept"
    assert image.config.env == ("A=1",) and image.config.argv == ("/bin/sh",)
    assert image.size > len(_busybox())
    assert store_leftovers() == []
    assert image.id in [i.id for i in list_images()]


@pytest.mark.parametrize("how", ["none", "zstd"])
def test_uncompressed_and_zstd_layers(tmp_path: str, imported: Imported, how: str) -> None:
    if how == "zstd":
        pytest.importorskip("zstandard")   # an optional module (python3-zstandard)
    ref = write_layout(str(tmp_path / "l"), [[f("a", b"one")], [f("b", how.encode())]], how=how)
    image = imported(ref)
    assert open(f"{image.rootfs}/a").read() == "one"
    assert open(f"{image.rootfs}/b").read() == how


def test_warm_import_reuses_the_stored_image(tmp_path: str, imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "l"), [[f("x", b"1")]])
    first = imported(ref)
    second = imported(ref)
    assert second.id == first.id and second.created == first.created
    assert second.last_used >= first.last_used
    assert os.stat(first.rootfs).st_ino == os.stat(second.rootfs).st_ino
    assert get_image(first.id[7:19]).id == first.id         # a short id
    assert get_image(ref).id == first.id                     # the source reference


def test_tags_select_the_manifest(tmp_path: str, imported: Imported) -> None:
    layout = str(tmp_path / "l")
    one = write_layout(layout, [[f("which", b"one")]], tag="one")
    two = write_layout(layout, [[f("which", b"two")]], tag="two")
    assert open(imported(two).rootfs + "/which").read() == "two"
    assert open(imported(one).rootfs + "/which").read() == "one"
    with pytest.raises(ImageError, match="more than one manifest"):
        imported(f"oci:{layout}")
    with pytest.raises(ImageError, match="no manifest tagged 'three'"):
        imported(f"oci:{layout}:three")


def test_docker_archive(tmp_path: str, imported: Imported) -> None:
    ref = write_docker_archive(str(tmp_path / "img.tar"), layers_with_whiteouts()[:2],
                               config={"WorkingDir": "/etc"}, tags=("my/img:1", "my/img:2"))
    image = imported(ref + ":my/img:2")
    assert image.id == config_digest(ref)
    assert image.config.working_dir == "/etc"
    assert not os.path.exists(image.rootfs + "/etc/motd")
    assert os.path.exists(image.rootfs + "/bin/busybox")
    with pytest.raises(ImageError, match="no image named 'my/img:3'"):
        imported(ref + ":my/img:3")


def test_docker_archive_with_blobs(tmp_path: str, imported: Imported) -> None:
    """Docker 25's ``docker save``: config and layers named blobs/sha256/<hex>."""
    ref = write_docker_archive(str(tmp_path / "img.tar"), layers_with_whiteouts()[:2],
                               blobs=True)
    image = imported(ref)
    assert image.id == config_digest(ref)
    assert open(image.rootfs + "/etc/keep").read() == "changed\n"


def test_bad_references(tmp_path: str, imported: Imported) -> None:
    for ref, match in [("docker:/x", "expected oci:"), ("oci:relative", "absolute"),
                       (f"oci:{tmp_path}/missing", "does not exist"),
                       (f"oci:{tmp_path}", "oci-layout")]:
        with pytest.raises(ImageError, match=match):
            imported(ref)


def test_zstd_without_a_decompressor_is_a_clear_error(tmp_path: str, imported: Imported,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "zstandard", None)   # as if it were not installed
    blob = b"\x28\xb5\x2f\xfd" + b"\0" * 64           # zstd's magic: nothing more is read
    ref = write_layout(str(tmp_path / "l"), [b""], blobs=[blob], how="none",
                       full_config={"architecture": "amd64", "os": "linux",
                                    "rootfs": {"type": "layers", "diff_ids": []}})
    # The manifest names the blob written above: point its only layer at it.
    import json

    layout = str(tmp_path / "l")
    index = json.load(open(os.path.join(layout, "index.json")))
    mpath = os.path.join(layout, "blobs", "sha256", index["manifests"][0]["digest"][7:])
    manifest = json.load(open(mpath))
    manifest["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                           "digest": sha(blob), "size": len(blob)}]
    data = json.dumps(manifest).encode()
    open(os.path.join(layout, "blobs", "sha256", sha(data)[7:]), "wb").write(data)
    index["manifests"][0].update(digest=sha(data), size=len(data))
    json.dump(index, open(os.path.join(layout, "index.json"), "w"))
    with pytest.raises(ImageError, match="layer 0 .*zstd-compressed.*python3-zstandard"):
        imported(ref)
    assert store_leftovers() == []
