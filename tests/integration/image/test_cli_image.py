"""``lxcbind image import|ls|rm|prune`` and ``lxcbind run --image`` through the real process:
exit codes, one line on stderr (never a traceback), one JSON object with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks._imagebuild import f, manifest_digest, write_layout
from lxcbind.image import store
from tests.integration.image.conftest import Imported, store_leftovers
from tests.integration.image.test_run_image import CONFIG, busybox_image

ROOT = str(Path(__file__).resolve().parents[3])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "lxcbind", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


def test_import_ls_run_rm(tmp_path: Path, imported: Imported) -> None:
    ref = busybox_image(str(tmp_path / "l"), CONFIG)
    image_id = manifest_digest(ref)
    imported.forget(image_id)
    done = cli("image", "import", ref)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{image_id}\n", "")
    listing = cli("image", "ls", "--json")
    rows = {r["id"]: r for r in json.loads(listing.stdout)["images"]}
    assert rows[image_id]["source"] == ref and rows[image_id]["used_by"] == []
    assert image_id[7:19] in cli("image", "ls").stdout
    # run --image: the image's command, then a given one, with --json naming the image.
    run = cli("run", "--image", image_id[7:19])
    assert (run.returncode, run.stdout) == (0, "image image\n1000\n/work\n"), run.stderr
    run = cli("run", "--image", ref, "--json", "--", "cat", "/work/hello")
    obj = json.loads(run.stdout)
    assert obj["exit_code"] == 0 and obj["stdout"] == "from the image\n"
    assert obj["image"] == image_id
    rm = cli("image", "rm", image_id[7:19], "0000ffff")
    assert rm.returncode == 1
    assert rm.stdout == f"removed {image_id}\n"
    assert rm.stderr == "lxcbind: image rm: image '0000ffff': not in the store\n"
    assert store.get(image_id) is None


def test_errors_are_one_line(tmp_path: Path, imported: Imported) -> None:
    bad = cli("run", "--image", "oci:relative", "--", "true")
    assert bad.returncode == 2
    assert bad.stderr == 'lxcbind: --image: oci: the path must be absolute, got "oci:relative"\n'
    missing = cli("image", "import", f"oci:{tmp_path}/none", "--json")
    assert missing.returncode == 125 and "Traceback" not in missing.stderr
    assert json.loads(missing.stdout)["error"]["message"].endswith("does not exist")
    # A hostile layer: refused with the layer and the entry named, nothing stored.
    ref = write_layout(str(tmp_path / "h"), [[f("../escape", b"x")]])
    hostile = cli("image", "import", ref)
    assert hostile.returncode == 125
    assert "layer 0" in hostile.stderr and "'../escape'" in hostile.stderr
    assert hostile.stderr.count("\n") == 1 and "Traceback" not in hostile.stderr
    assert store.get(manifest_digest(ref)) is None and store_leftovers() == []
    usage = cli("image", "import", ref, "--max-size", "-1")
    assert usage.returncode == 2 and usage.stderr.startswith("lxcbind: ")
