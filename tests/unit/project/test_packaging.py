"""Packaging: the license, the sdist's contents (examples, C sources) and the abi3 wheel tag.
Built from a copy of the tracked files with the setuptools of this environment (the one the
README's build command uses), so the checkout is left as it was."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _copy(tmp_path: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    return src


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_sdist_has_examples_license_and_c_sources(tmp_path):
    src = _copy(tmp_path)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                   cwd=src, check=True, capture_output=True)
    (sdist,) = (tmp_path / "dist").glob("lxcbind-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for example in (ROOT / "examples").iterdir():
        if example.name != "__pycache__":   # (left by a run of the examples, not a source)
            assert f"examples/{example.name}" in names
    assert {"LICENSE", "_cdefs/shim.c", "setup.py", "pyproject.toml"} <= names


def test_wheel_is_tagged_abi3(tmp_path):
    pytest.importorskip("wheel", reason="the wheel package (test extra) builds wheels")
    if shutil.which("pkg-config") is None or subprocess.run(
            ["pkg-config", "--exists", "lxc"]).returncode != 0:
        pytest.skip("building the module needs liblxc's headers (lxc-dev)")
    src = _copy(tmp_path)
    r = subprocess.run([sys.executable, "setup.py", "-q", "bdist_wheel", "-d",
                        str(tmp_path / "dist")], cwd=src, capture_output=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "dist").glob("*.whl")
    assert whl.name.startswith("lxcbind-") and "-cp311-abi3-" in whl.name, whl.name
    with zipfile.ZipFile(whl) as z:
        assert "lxcbind/_lxc.abi3.so" in z.namelist()
        assert "lxcbind/_nft.abi3.so" in z.namelist()   # libnftables apart: networked runs
        assert any(n.endswith("LICENSE") for n in z.namelist())
