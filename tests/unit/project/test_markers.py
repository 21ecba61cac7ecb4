"""The markers registered in pyproject.toml select what they name: a machine without root or
liblxc runs ``pytest -m "not requires_root and not requires_lxc"`` and gets every pure test and
no container test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _collected(expression: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", expression, "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return [line for line in out.splitlines() if "::" in line]


@pytest.mark.requires_lxc   # without the module, the container tests are not even collected
def test_requires_markers_select_container_tests_and_only_them() -> None:
    pure = _collected("not requires_root and not requires_lxc")
    containers = _collected("requires_root and requires_lxc")
    assert pure and containers
    assert all(node.startswith("tests/unit/") for node in pure)
    assert any(node.startswith("tests/integration/") for node in containers)
    assert any(node.startswith("tests/security/") for node in containers)
    assert not set(pure) & set(containers)
