"""The image examples run end to end as a user runs them (a subprocess, as root, offline), with
what a user checks: every variant graded as its patch deserves, the snapshot gone afterwards,
and nothing left behind (containers, mounts, loop devices, the example's scratch directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lxcbind.errors import ImageError
from lxcbind.image import snapshot as snapshots
from lxcbind.image import store
from tests.conftest import requires_lxc, requires_root
from tests.integration.image.conftest import Imported, store_leftovers

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]


def run_example(name: str, *args: str, tmpdir: Path) -> subprocess.CompletedProcess[bytes]:
    """Run an example; a hung one is SIGINTed (it cleans up as a user's Ctrl-C makes it) well
    before the suite's own per-test timeout, which would leave it running."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}   # this checkout
    proc = subprocess.Popen([sys.executable, f"examples/{name}", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"examples/{name} did not finish in 200 s:\n{err.decode(errors='replace')}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def expected(patch: str) -> tuple[str, int | None]:
    """The verdict a patch deserves, computed here on the host from the cases the example's
    setup step writes inside the container (20 pairs summing to 3)."""
    cases = [(a, 3 - a, 3) for a in range(-10, 10)]
    try:
        passed = sum(eval(patch, {}, {"a": a, "b": b}) == want for a, b, want in cases)
    except NameError:
        return "error", None
    return ("pass" if passed == len(cases) else "fail"), passed


def traces(*needles: str) -> list[str]:
    """Lines of the host's containers, mounts and loop devices that name any of ``needles``."""
    out = subprocess.run(["lxc-ls", "-1"], capture_output=True, text=True).stdout
    out += subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    with open("/proc/self/mountinfo") as fh:
        out += fh.read()
    return [line for line in out.splitlines() if any(n in line for n in needles)]


def test_grade_variants_builds_imports_snapshots_and_grades_50(tmp_path: Path) -> None:
    r = run_example("grade_variants.py", "--json", "--rm-image", tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report: dict[str, Any] = json.loads(r.stdout)
    results = report["results"]
    assert len(results) == 50
    assert len({g["patch"] for g in results}) == 10          # ten patches, five each
    for g in results:
        assert (g["verdict"], g["passed"]) == expected(g["patch"]), g
        assert g["returncode"] == (0 if g["verdict"] == "pass" else 1), g
    assert report["verdicts"] == {"pass": 20, "fail": 25, "error": 5}
    # Every variant ran from the snapshot (a container on the bare image has no cases.json
    # and could not have passed), and the snapshot sat on the imported image.
    assert {g["image"] for g in results} == {report["snapshot"]}
    assert report["snapshot"].startswith("snap:")
    # Afterwards: the snapshot and (asked for) the image are gone from the store ...
    assert report["snapshot"] not in {s.id for s in snapshots.snapshots()}
    with pytest.raises(ImageError, match="no snapshot with the id"):
        snapshots.load(report["snapshot"])
    assert not os.path.lexists(os.path.join(store.IMAGES_ROOT,
                                            report["snapshot"].replace(":", "-", 1)))
    assert report["image_removed"] is True
    assert store.get(report["image"]) is None
    # ... and nothing of the run is left: no container (the set-up sandbox included), no
    # mount or loop device naming the snapshot, the image or that sandbox, no scratch files.
    hexes = [report["snapshot"].split(":")[1], report["image"].split(":")[1][:12]]
    assert traces(report["source"], *hexes) == []
    assert list(tmp_path.iterdir()) == []
    assert store_leftovers() == []


def test_grade_variants_takes_an_image_and_keeps_it(tmp_path: Path,
                                                    imported: Imported) -> None:
    """The text summary the README shows, from an image given on the command line; without
    ``--rm-image`` the imported image stays (the fixture removes it)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from grade_variants import PROJECT
    finally:
        sys.path.remove(str(ROOT / "examples"))
    from benchmarks._imagebuild import python_image

    ref = python_image(str(tmp_path / "src" / "calc"), PROJECT)
    image = imported(ref)
    (tmp_path / "tmp").mkdir()
    r = run_example("grade_variants.py", ref, tmpdir=tmp_path / "tmp")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.decode()
    assert f"image {image.id[:19]}" in out
    assert "graded 50 variants in " in out and ": error 5, fail 25, pass 20" in out
    assert "  a + b            pass 20/20 x5" in out
    assert "  a + c            error crash x5" in out
    assert "snapshot removed; image kept" in out
    assert store.get(image.id) is not None
    assert [s for s in snapshots.snapshots() if image.id in repr(s.base)] == []


def test_grade_variants_bad_reference_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-layout"
    r = run_example("grade_variants.py", f"oci:{missing}", tmpdir=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b"", err
    assert err.startswith("grade_variants: ") and str(missing) in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_snapshot_fork_example_runs(tmp_path: Path) -> None:
    r = run_example("snapshot_fork.py", tmpdir=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.decode().splitlines()
    # Each fork patched only its own copy: x * 2, x * 3, x * 4.
    assert lines[:3] == [f"fork {i}: score(10) = {10 * (i + 2)}" for i in range(3)]
    # The Pool's containers start from the snapshot, taken before any fork's patch.
    assert lines[3] == "graded: " + str([str(n * n) for n in range(10)])
    assert list(tmp_path.iterdir()) == []
