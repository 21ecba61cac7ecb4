"""Set up once, then grade many: an OCI image with a small Python project is imported, a
sandbox on it runs the setup step (byte-compiles the package and writes the test cases),
the result is snapshotted, and a Pool grades 50 patched variants of the project, each in a
fresh container that starts from the set-up state.

    python3 examples/grade_variants.py                  # builds the image itself, offline
    python3 examples/grade_variants.py oci:/srv/img/calc:latest   # or takes one (same project)
    python3 examples/grade_variants.py --json --rm-image

The snapshot is removed at the end; the imported image is kept (a second run finds it
stored, in about a millisecond) unless ``--rm-image``.  Needs root and liblxc, like every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from typing import Any

# The image builder lives with the benchmarks (the tests use it too); this checkout's
# lxcbind comes first on the path, so the example runs from a source tree as it is.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lxcbind  # noqa: E402
from lxcbind.image import import_image, remove_image  # noqa: E402
from lxcbind.image import snapshot as snapshots  # noqa: E402

POLICY = {"version": "0.8.0", "lxc": {"limits": {"memory": "256M", "pids": 64}}}

# The project in the image: a package with one function to get right, and a grader that
# reads the cases the setup step writes (so a variant that did not start from the snapshot
# cannot pass: it has no cases.json).
PROJECT = {
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n",
    "grade.py": (
        "import json, sys\n"
        "from calc import ops\n"
        "cases = json.load(open('cases.json'))\n"
        "passed = sum(ops.add(a, b) == want for a, b, want in cases)\n"
        "print(json.dumps({'passed': passed, 'total': len(cases)}))\n"
        "sys.exit(0 if passed == len(cases) else 1)\n"),
}
# The setup step: byte-compile the package (hash-checked .pyc files, so a patched source is
# never shadowed by its stale bytecode) and write 20 test cases.
SETUP = ("python3 -m compileall -q --invalidation-mode checked-hash calc && "
         "python3 -c 'import json; json.dump([[a, 3 - a, 3] for a in range(-10, 10)], "
         "open(\"cases.json\", \"w\"))'")
# What the "students" wrote as the body of add(): ten patches, five students each.  Used as
# a sed replacement, so none contains / & \ or a quote.
PATCHES = ["a + b", "b + a", "sum((a, b))", "a - (-b)", "a - b",
           "a * b", "max(a, b)", "a + b + 1", "a + c", "abs(a) + abs(b)"]
VARIANTS = [PATCHES[i % len(PATCHES)] for i in range(50)]


def command(patch: str) -> str:
    return f"sed -i 's/return a + b/return {patch}/' calc/ops.py && python3 grade.py"


def verdict(result: lxcbind.CompletedRun) -> tuple[str, int | None]:
    """``pass``/``fail`` with the cases passed, or ``error`` (a crash: no score printed)."""
    try:
        score = json.loads(result.stdout)
    except ValueError:
        return "error", None
    return ("pass" if result.returncode == 0 else "fail"), int(score["passed"])


def build_image(workdir: str) -> str:
    from benchmarks._imagebuild import python_image

    return python_image(os.path.join(workdir, "calc"), PROJECT)


def grade(ref: str, rm_image: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    image = import_image(ref)                       # verified and stored once
    t1 = time.monotonic()
    with lxcbind.Sandbox(POLICY, image=image) as box:   # WorkingDir: /work/project
        box.run(SETUP, check=True)
        snap = box.snapshot()                       # the set-up project, as an image
        source = box.name
    t2 = time.monotonic()
    try:
        with lxcbind.Pool(POLICY, size=4, image=snap) as pool:
            results = pool.map([command(p) for p in VARIANTS], timeout=60)
        t3 = time.monotonic()
    finally:
        snapshots.remove(snap)                      # refused while a container still uses it
    image_removed = False
    if rm_image:
        try:
            remove_image(image.id)
            image_removed = True
        except lxcbind.LxcbindError as exc:        # another run on this machine uses it
            print(f"image kept: {exc}", file=sys.stderr)
    graded = []
    for patch, r in zip(VARIANTS, results, strict=True):
        v, passed = verdict(r)
        graded.append({"patch": patch, "verdict": v, "passed": passed,
                       "returncode": r.returncode, "image": r.image})
    return {"image": image.id, "snapshot": snap.id, "source": source,
            "image_removed": image_removed,
            "seconds": {"import": round(t1 - t0, 3), "setup_and_snapshot": round(t2 - t1, 3),
                        "grade_50": round(t3 - t2, 3)},
            "verdicts": dict(Counter(g["verdict"] for g in graded)), "results": graded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help="an image reference (default: build one)")
    parser.add_argument("--rm-image", action="store_true", help="remove the imported image")
    parser.add_argument("--json", action="store_true", help="print every verdict as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="grade-variants-") as workdir:
        try:
            report = grade(args.image or build_image(workdir), args.rm_image)
        except lxcbind.LxcbindError as exc:    # a bad reference, a refused image, a failed setup
            print(f"grade_variants: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report))
        return 0
    s = report["seconds"]
    print(f"image {report['image'][:19]}…  imported in {s['import']} s")
    print(f"setup + snapshot {report['snapshot']}: {s['setup_and_snapshot']} s")
    print(f"graded {len(report['results'])} variants in {s['grade_50']} s: "
          + ", ".join(f"{v} {n}" for v, n in sorted(report["verdicts"].items())))
    by_patch: dict[str, Counter[str]] = {}
    for g in report["results"]:
        score = "crash" if g["passed"] is None else f"{g['passed']}/20"
        by_patch.setdefault(g["patch"], Counter())[f"{g['verdict']} {score}"] += 1
    for patch, counts in by_patch.items():
        print(f"  {patch:<16} " + ", ".join(f"{k} x{n}" for k, n in counts.items()))
    print(f"snapshot removed; image {'removed' if report['image_removed'] else 'kept'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
