"""Cross-check with Debian's umoci (skipped when it is not installed; the product never needs
it): an image umoci builds (three layers, its own whiteouts) imports to the tree umoci itself
unpacks, and an image the tests build unpacks to the same tree under both."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from benchmarks._imagebuild import write_layout
from tests.integration.image.conftest import Imported
from tests.integration.image.test_import import layers_with_whiteouts

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")


def umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True, timeout=120)


def tree(root: str) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                continue   # lxcbind drops device nodes; umoci makes them
            data = open(path, "rb").read() if stat.S_ISREG(st.st_mode) else \
                os.readlink(path).encode() if stat.S_ISLNK(st.st_mode) else b""
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def test_an_image_umoci_built_imports_as_umoci_unpacks_it(tmp_path: Path,
                                                           imported: Imported) -> None:
    layout, bundle = str(tmp_path / "layout"), str(tmp_path / "bundle")
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:t")
    umoci("unpack", "--image", f"{layout}:t", bundle)
    root = Path(bundle, "rootfs")
    (root / "etc").mkdir()
    (root / "etc" / "a").write_text("a\n")
    (root / "etc" / "b").write_text("b\n")
    (root / "var" / "cache").mkdir(parents=True)
    (root / "var" / "cache" / "old").write_text("old\n")
    os.symlink("a", root / "etc" / "link")
    os.chown(root / "etc" / "b", 1000, 1000)
    umoci("repack", "--image", f"{layout}:t", bundle)
    (root / "etc" / "a").unlink()                         # a whiteout
    shutil.rmtree(root / "var" / "cache")                 # a whole directory whited out
    (root / "var" / "cache").mkdir()
    (root / "var" / "cache" / "new").write_text("new\n")
    os.chmod(root / "etc" / "b", 0o4755)
    umoci("repack", "--image", f"{layout}:t", bundle)
    check = str(tmp_path / "check")
    umoci("unpack", "--image", f"{layout}:t", check)
    image = imported(f"oci:{layout}:t")
    assert tree(image.rootfs) == tree(os.path.join(check, "rootfs"))
    assert not os.path.exists(image.rootfs + "/etc/a")
    assert os.listdir(image.rootfs + "/var/cache") == ["new"]


def test_a_test_built_image_unpacks_alike(tmp_path: Path, imported: Imported) -> None:
    layout = str(tmp_path / "layout")
    write_layout(layout, layers_with_whiteouts(), tag="t")
    check = str(tmp_path / "check")
    umoci("unpack", "--image", f"{layout}:t", check)
    image = imported(f"oci:{layout}:t")
    assert tree(image.rootfs) == tree(os.path.join(check, "rootfs"))
