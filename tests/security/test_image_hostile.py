"""A hostile image is a hostile workload: each test builds a malicious image itself and asserts
that the import is refused with an error naming the layer and the entry, that nothing of it is
stored (no image, no half-built directory), and that nothing outside the store changed (a
host directory the image aims at, /etc/shadow)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks._imagebuild import (
    d,
    dev,
    f,
    hard,
    make_tar,
    manifest_digest,
    opq,
    sha,
    sym,
    wh,
    write_docker_archive,
    write_layout,
)
from lxcbind.errors import ImageError
from lxcbind.image import store
from tests.integration.image.conftest import Imported, imported, store_leftovers

__all__ = ["imported"]  # the fixture, used by name


def _snapshot(top: str) -> list[tuple[str, int, bytes]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else b""
            out.append((path, st.st_mode, data))
    return sorted(out)


def _shadow() -> tuple[int, int, str]:
    st = os.stat("/etc/shadow")
    return st.st_nlink, st.st_ino, hashlib.sha256(open("/etc/shadow", "rb").read()).hexdigest()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[str]:
    """A host directory the hostile images aim at; checked unchanged after each test."""
    top = tmp_path / "host"
    top.mkdir()
    (top / "secret").write_text("host secret\n")
    (top / "sub").mkdir()
    before, shadow = _snapshot(str(top)), _shadow()
    yield str(top)
    assert _snapshot(str(top)) == before
    assert _shadow() == shadow


def _refused(imported: Imported, ref: str, *pieces: str, **kw: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        imported(ref, **kw)
    message = str(info.value)
    for piece in pieces:
        assert piece in message, message
    assert store_leftovers() == []
    if ref.startswith("oci:"):
        with open(os.path.join(ref[4:].rpartition(":")[0], "index.json")) as fh:
            digests = [m["digest"] for m in json.load(fh)["manifests"]]
        for digest in digests:
            if isinstance(digest, str) and store._ID.fullmatch(digest):
                assert store.get(digest) is None
    return info.value


def test_dotdot_path(tmp_path: Path, host: str, imported: Imported) -> None:
    depth = "../" * 12
    ref = write_layout(str(tmp_path / "l"), [[f("ok", b"1")],
                                             [f(f"{depth}{host[1:]}/pwned", b"x")]])
    _refused(imported, ref, "layer 1", "pwned", "'..'")


def test_absolute_path(tmp_path: Path, host: str, imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "l"), [[f(f"{host}/pwned", b"x")]])
    _refused(imported, ref, "layer 0", f"{host}/pwned", "absolute")


def test_symlink_out_then_write_through_it(tmp_path: Path, host: str,
                                            imported: Imported) -> None:
    same_layer = write_layout(str(tmp_path / "a"), [[sym("out", host), f("out/pwned", b"x")]])
    _refused(imported, same_layer, "layer 0", "out/pwned", "symbolic link")
    later_layer = write_layout(str(tmp_path / "b"), [[sym("out", host)],
                                                     [d("out/sub"), f("out/sub/pwned", b"x")]])
    _refused(imported, later_layer, "layer 1", "out/sub", "symbolic link")
    relative = write_layout(str(tmp_path / "c"), [[d("a"), sym("a/up", "../../../../../" + host),
                                                   f("a/up/pwned", b"x")]])
    _refused(imported, relative, "a/up/pwned", "symbolic link")


def test_whiteout_and_opaque_through_a_symlink_remove_nothing(tmp_path: Path, host: str,
                                                               imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "a"), [[sym("out", host)], [wh("out/secret")]])
    _refused(imported, ref, "layer 1", "out/.wh.secret", "symbolic link")
    ref = write_layout(str(tmp_path / "b"), [[sym("out", host)], [opq("out")]])
    _refused(imported, ref, "layer 1", "out/.wh..wh..opq", "symbolic link")
    ref = write_layout(str(tmp_path / "c"), [[d("x")], [f("x/.wh...", b"")]])
    _refused(imported, ref, "layer 1", "invalid whiteout")


def test_hard_link_to_a_host_file(tmp_path: Path, host: str, imported: Imported) -> None:
    cases = [([hard("shadow", "/etc/shadow")], "absolute"),
             ([hard("shadow", "../../../../../../etc/shadow")], "'..'"),
             ([hard("shadow", "etc/shadow")], "not in the image"),
             ([sym("etc", "/etc"), hard("shadow", "etc/shadow")], "symbolic link"),
             ([sym("h", host), hard("s", "h/secret")], "symbolic link")]
    for i, (entries, why) in enumerate(cases):
        ref = write_layout(str(tmp_path / f"l{i}"), [entries])
        _refused(imported, ref, "layer 0", "hard link", why)


def test_hard_link_then_write_changes_only_the_image(tmp_path: Path, host: str,
                                                      imported: Imported) -> None:
    """A hard link inside the image, then a file over it: only the image's file changes."""
    ref = write_layout(str(tmp_path / "l"), [[f("a", b"one"), hard("b", "a")],
                                             [f("b", b"two")]])
    image = imported(ref)
    assert open(image.rootfs + "/a").read() == "one"
    assert open(image.rootfs + "/b").read() == "two"


def test_link_that_replaces_a_directory(tmp_path: Path, host: str, imported: Imported) -> None:
    # A symbolic link may replace a lower layer's directory (OCI allows it) but nothing is
    # ever written through it, in the same layer or a later one.
    ref = write_layout(str(tmp_path / "a"), [[d("data"), f("data/x", b"1")],
                                             [sym("data", host), f("data/pwned", b"x")]])
    _refused(imported, ref, "layer 1", "data/pwned", "symbolic link")
    ref = write_layout(str(tmp_path / "b"), [[d("data"), f("file", b"f")],
                                             [hard("data", "file")], [f("data/pwned", b"x")]])
    _refused(imported, ref, "layer 2", "data/pwned", "not a directory")
    ref = write_layout(str(tmp_path / "c"), [[d("data")], [sym("data", host)],
                                             [opq("data")]])
    _refused(imported, ref, "layer 2", "data", "symbolic link")


def test_device_nodes_are_dropped(tmp_path: Path, host: str, imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "l"), [[
        d("dev"), dev("dev/mem", 1, 1), dev("dev/sda", 8, 0, tarfile.BLKTYPE),
        dev("dev/null", 1, 3), dev("dev/.wh.zero", 0, 0), dev("x", 0, 0), f("ok", b"1")]])
    image = imported(ref)
    for dirpath, dirnames, filenames in os.walk(image.rootfs):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)), name
    assert os.listdir(image.rootfs + "/dev") == []
    assert "dev/mem" in image.dropped and "dev/sda" in image.dropped


def test_oversized_layer(tmp_path: Path, host: str, imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "l"), [[f("small", b"1")],
                                             [f("big", b"\0" * (3 << 20))]])
    _refused(imported, ref, "layer 1", "max_size", max_size=2 << 20)
    with pytest.raises(ImageError, match="max_size"):
        imported(ref, max_size=0)


def _bomb(size: int) -> bytes:
    """A gzip layer holding one file of ``size`` zero bytes, compressed in a stream (never
    whole in memory)."""
    ti = tarfile.TarInfo("bomb")
    ti.size = size
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(ti.tobuf(format=tarfile.PAX_FORMAT))]
    chunk = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        out.append(z.compress(chunk))
    out.append(z.compress(b"\0" * 1024) + z.flush())
    return b"".join(out)


def test_gzip_bomb(tmp_path: Path, host: str, imported: Imported) -> None:
    size = 256 << 20
    blob = _bomb(size)
    assert len(blob) < size // 500
    layout = str(tmp_path / "l")
    # The diff_id cannot be known without the whole tar: the layer is refused on size first.
    full = {"architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    ref = write_layout(layout, [b""], full_config=full, blobs=[blob], how="none")
    index = json.load(open(os.path.join(layout, "index.json")))
    manifest_path = os.path.join(layout, "blobs", "sha256", index["manifests"][0]["digest"][7:])
    manifest = json.load(open(manifest_path))
    manifest["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "digest": sha(blob), "size": len(blob)}]
    data = json.dumps(manifest).encode()
    open(os.path.join(layout, "blobs", "sha256", sha(data)[7:]), "wb").write(data)
    index["manifests"][0].update(digest=sha(data), size=len(data))
    json.dump(index, open(os.path.join(layout, "index.json"), "w"))
    _refused(imported, ref, "layer 0", "max_size", max_size=16 << 20)


def _blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest[7:])


def _manifest(layout: str) -> dict:  # type: ignore[type-arg]
    ref_digest = json.load(open(os.path.join(layout, "index.json")))["manifests"][0]["digest"]
    return json.load(open(_blob_path(layout, ref_digest)))  # type: ignore[no-any-return]


def test_digest_mismatch(tmp_path: Path, host: str, imported: Imported) -> None:
    layout = str(tmp_path / "l")
    ref = write_layout(layout, [[f("a", b"good")]], how="none")
    layer = _manifest(layout)["layers"][0]
    # Same size, other content: a valid layer that writes a different file.
    evil = make_tar([f("a", b"evil")])
    assert len(evil) == layer["size"]
    open(_blob_path(layout, layer["digest"]), "wb").write(evil)
    _refused(imported, ref, "layer 0", "does not match its digest")
    # A tampered config and a tampered manifest are refused before any layer is read.
    cfg = _manifest(layout)["config"]
    open(_blob_path(layout, cfg["digest"]), "ab").write(b" ")
    _refused(imported, ref, "config", "bytes")
    mdigest = manifest_digest(ref)
    data = open(_blob_path(layout, mdigest), "rb").read()
    open(_blob_path(layout, mdigest), "wb").write(data.replace(b'"schemaVersion": 2',
                                                               b'"schemaVersion": 3'))
    _refused(imported, ref, "does not match its digest")


def test_uncompressed_content_must_match_diff_id(tmp_path: Path, host: str,
                                                  imported: Imported) -> None:
    layout = str(tmp_path / "l")
    full = {"architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha(make_tar([f("a", b"other")]))]}}
    ref = write_layout(layout, [[f("a", b"real")]], full_config=full)
    _refused(imported, ref, "layer 0", "diff_id")


def test_manifest_points_to_a_missing_blob(tmp_path: Path, host: str,
                                           imported: Imported) -> None:
    layout = str(tmp_path / "l")
    ref = write_layout(layout, [[f("a", b"1")], [f("b", b"2")]])
    os.unlink(_blob_path(layout, _manifest(layout)["layers"][1]["digest"]))
    _refused(imported, ref, "layer 1", "No such file")


def test_index_path_escapes_the_layout(tmp_path: Path, host: str, imported: Imported) -> None:
    layout = str(tmp_path / "l")
    ref = write_layout(layout, [[f("a", b"1")]])
    index = json.load(open(os.path.join(layout, "index.json")))
    for evil in ("sha256:../../../../../../etc/passwd", "sha512:" + "0" * 128, 7,
                 "sha256:" + "A" * 64):
        index["manifests"][0]["digest"] = evil
        json.dump(index, open(os.path.join(layout, "index.json"), "w"))
        _refused(imported, ref, "index.json manifests[0].digest", "not a sha256 digest")


def test_blob_that_is_a_symlink_out_of_the_layout(tmp_path: Path, host: str,
                                                  imported: Imported) -> None:
    layout = str(tmp_path / "l")
    ref = write_layout(layout, [[f("a", b"1")]])
    blob = _blob_path(layout, _manifest(layout)["layers"][0]["digest"])
    os.unlink(blob)
    os.symlink(os.path.join(host, "secret"), blob)
    _refused(imported, ref, "layer 0", "symbolic link")


def test_too_deep(tmp_path: Path, host: str, imported: Imported) -> None:
    ref = write_layout(str(tmp_path / "l"), [[f("d/" * 300 + "x", b"1")]])
    _refused(imported, ref, "layer 0", "deeper than")


def test_docker_archive_member_outside(tmp_path: Path, host: str, imported: Imported) -> None:
    path = str(tmp_path / "a.tar")
    write_docker_archive(path, [[f("a", b"1")]])
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    entry = json.loads(members["manifest.json"])
    entry[0]["Layers"] = ["../../" + host[1:] + "/secret"]
    members["manifest.json"] = json.dumps(entry).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, __import__("io").BytesIO(data))
    _refused(imported, f"docker-archive:{path}", "Layers[0]", "relative path inside")


def test_gzip_of_a_valid_tar_then_garbage(tmp_path: Path, host: str,
                                          imported: Imported) -> None:
    """Trailing bytes after the tar are still covered by the blob's digest and size."""
    layout = str(tmp_path / "l")
    tar = make_tar([f("a", b"1")])
    blob = gzip.compress(tar) + b"junk"
    full = {"architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha(tar)]}}
    ref = write_layout(layout, [tar], full_config=full, blobs=[blob], how="gzip")
    _refused(imported, ref, "layer 0")


def test_huge_extended_header(tmp_path: Path, host: str, imported: Imported) -> None:
    """A PAX header is read whole by tarfile: one over 1 MiB is refused before it is read."""
    ti = tarfile.TarInfo("a")
    ti.pax_headers = {"comment": "x" * (2 << 20)}
    out = __import__("io").BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(ti, __import__("io").BytesIO(b""))
    ref = write_layout(str(tmp_path / "l"), [out.getvalue()])
    _refused(imported, ref, "layer 0", "extended tar header")


def test_store_is_host_root_only(tmp_path: Path, host: str, imported: Imported) -> None:
    """A setuid-root file of an image is kept (it only matters inside the container, where
    its owner is the container's root), so the store keeps host users out of every image."""
    image = imported(write_layout(str(tmp_path / "l"), [[f("bin/su", b"#!", 0o4755)]]))
    st = os.stat(image.rootfs + "/bin/su")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o4755)
    assert stat.S_IMODE(os.stat(os.path.dirname(image.rootfs)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.IMAGES_ROOT).st_mode) == 0o711
