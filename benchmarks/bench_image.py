"""Images, side by side in one run:

  * import of an image of about 100 MB built here from the host's files (busybox plus
    ``/usr/lib`` files, two gzip layers): cold (not stored: every blob verified, every layer
    unpacked) and warm (stored: only the manifest and config read and verified); against
    ``skopeo copy`` + ``umoci unpack`` of the same layout when both are installed;
  * a one-shot ``lxcbind.run(["/bin/true"])`` from the image vs from the ``host`` base;
  * a ``Pool.run`` at steady state from the image vs from the ``host`` base.
Prints medians and ratios; asserts nothing.  Removes the image it imported.
    python3 benchmarks/bench_image.py [-n 20] [--mb 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import describe, samples_ms
from _imagebuild import d, f, sym, write_layout

import lxcbind
from lxcbind.image import import_image, store

APPLETS = ("sh", "true", "cat", "ls", "echo")


def build(layout: str, megabytes: int) -> str:
    """An OCI layout: layer 0 busybox, layer 1 about ``megabytes`` MB of host library files."""
    with open("/bin/busybox", "rb") as fh:
        base = [d("bin"), f("bin/busybox", fh.read(), 0o755)]
    base += [sym(f"bin/{a}", "busybox") for a in APPLETS] + [d("tmp", 0o1777), d("etc")]
    data = [d("data")]
    made = {"data"}
    total = 0
    for dirpath, _dirs, files in os.walk("/usr/lib"):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as fh:
                    content = fh.read()
            except OSError:
                continue
            rel = "data" + path
            parts = rel.split("/")
            for i in range(2, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in made:
                    made.add(parent)
                    data.append(d(parent))
            data.append(f(rel, content, 0o644))
            total += len(content)
            if total >= megabytes << 20:
                break
        if total >= megabytes << 20:
            break
    return write_layout(layout, [base, data])


def median(values: list[float]) -> float:
    return statistics.median(values)


def cold_import_ms(ref: str, n: int) -> float:
    out = []
    for _ in range(n):
        _forget(ref)
        t = time.perf_counter()
        import_image(ref)
        out.append((time.perf_counter() - t) * 1000)
    return median(out)


def _forget(ref: str) -> None:
    try:
        store.remove(store.lookup(ref).id)
    except lxcbind.errors.ImageError:
        pass


def tools_ms(layout: str, work: str) -> float | None:
    """``skopeo copy`` to a fresh layout, then ``umoci unpack``: the same work by LXC's own
    oci template's tools (None when they are not installed)."""
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        return None
    t = time.perf_counter()
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"oci:{work}/copy:latest"],
                   check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--image", f"{work}/copy:latest", f"{work}/bundle"],
                   check=True, capture_output=True)
    return (time.perf_counter() - t) * 1000


def _copies(image: store.Image) -> int:
    top = os.path.basename(os.path.dirname(image.rootfs))
    return sum(e.startswith(f"{top}@") for e in os.listdir(store.IMAGES_ROOT))


def warm_ranges(ref: str, image: store.Image) -> tuple[float, int]:
    """Run from the image until five runs in a row find their id range's shifted copy made
    (other runs on the machine hold ranges too, so a run's range varies): the steady state
    the timed rows measure.  Returns the median time of the runs that made a copy, and how
    many copies exist."""
    made: list[float] = []
    quiet = 0
    for _ in range(60):
        before = _copies(image)
        t = time.perf_counter()
        lxcbind.run(["/bin/true"], image=ref)
        elapsed = (time.perf_counter() - t) * 1000
        if _copies(image) > before:
            made.append(elapsed)
            quiet = 0
        else:
            quiet += 1
            if quiet == 5:
                break
    return (median(made) if made else 0.0), _copies(image)


def pool_steady_ms(n: int, image: str | None) -> float:
    with lxcbind.Pool({"version": "0.8.0"}, size=4, image=image) as pool:
        pool.run(["/bin/true"])
        samples = []
        for _ in range(n):
            deadline = time.monotonic() + 10
            while not pool.idle and time.monotonic() < deadline:
                time.sleep(0.005)
            t = time.perf_counter()
            pool.run(["/bin/true"])
            samples.append((time.perf_counter() - t) * 1000)
    return median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20, help="samples per timed row")
    ap.add_argument("--mb", type=int, default=100, help="image size in MB")
    ap.add_argument("--cold", type=int, default=3, help="cold imports")
    args = ap.parse_args()
    print(describe())
    work = tempfile.mkdtemp(prefix="lxcbind-bench-image-")
    ref = ""
    try:
        ref = build(os.path.join(work, "layout"), args.mb)
        blobs = os.path.join(work, "layout", "blobs", "sha256")
        size = sum(os.path.getsize(os.path.join(blobs, b)) for b in os.listdir(blobs))
        cold = cold_import_ms(ref, args.cold)
        image = store.lookup(ref)
        warm = median(samples_ms(lambda: import_image(ref), args.n))
        print(f"image: {image.size / 1e6:.0f} MB unpacked, {size / 1e6:.0f} MB of blobs, "
              f"{image.short_id}")
        print(f"import cold           {cold:9.1f} ms   ({image.size / 1e6 / cold * 1000:.0f} "
              "MB/s unpacked)")
        print(f"import warm           {warm:9.2f} ms")
        tools = tools_ms(os.path.join(work, "layout"), work)
        print("skopeo copy + umoci unpack  " + (f"{tools:9.1f} ms   (cold import: "
                                                f"{cold / tools:.2f}x)" if tools else
                                                "not installed: no comparison row"))
        by_id = f"image:{image.id}"
        first, copies = warm_ranges(ref, image)
        if copies:
            print(f"run() in an id range new to the image: {first:9.1f} ms (its shifted copy "
                  f"is made; {copies} ranges warmed)")
        else:
            print("run() in an id range new to the image: no shifted copy (the stored rootfs "
                  "is idmapped into every range: the rows below)")
        # Interleaved, so that load from other jobs falls on every row alike.
        rows: dict[str | None, list[float]] = {None: [], ref: [], by_id: []}
        for _ in range(args.n):
            for image_ref, samples in rows.items():
                t = time.perf_counter()
                lxcbind.run(["/bin/true"], image=image_ref)
                samples.append((time.perf_counter() - t) * 1000)
        host, from_ref, from_id = (median(rows[k]) for k in (None, ref, by_id))
        print(f"run() host base       {host:9.2f} ms")
        print(f"run() image (oci ref) {from_ref:9.2f} ms   ({from_ref / host:.2f}x host)")
        print(f"run() image (by id)   {from_id:9.2f} ms   ({from_id / host:.2f}x host)")
        pool_host = pool_steady_ms(args.n, None)
        pool_image = pool_steady_ms(args.n, ref)
        print(f"Pool.run host base    {pool_host:9.2f} ms")
        print(f"Pool.run image        {pool_image:9.2f} ms   ({pool_image / pool_host:.2f}x "
              "host)")
    finally:
        if ref:
            _forget(ref)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
