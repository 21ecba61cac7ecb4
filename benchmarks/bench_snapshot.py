"""Snapshots and forks of a running sandbox, side by side in one run.

  * ``Sandbox.snapshot()`` of a sandbox whose writable layer holds 10 MB, then 100 MB (files
    of mixed sizes: a third of the bytes in 4 KiB files, a third in 64 KiB files, a third in
    1 MiB files), against ``cp -a`` of the same upper directory to the same host filesystem
    and against ``lxc-copy -s -B overlay`` of a stopped busybox container holding the same
    files (what LXC calls a snapshot: a new empty overlay over the original, nothing copied,
    and the original must be stopped);
  * the floor under ``snapshot()`` on this host: creating as many empty files and directories
    as the layer holds on the store's filesystem (no data, no owners, no times), and the
    freeze + thaw of the sandbox's processes;
  * ``fork(8)``: from the call until all 8 sandboxes are ready to run a command (a fork reads
    the snapshot's layer through an idmapped mount: nothing is copied per fork);
  * ``Pool.run("/bin/true")`` at steady state from a snapshot (10 MB layer) against the same
    from the ``host`` base.
Prints medians and ratios; asserts nothing.
    python3 benchmarks/bench_snapshot.py [-n 5] [--pool-n 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from _common import describe, make_busybox, quiet

import lxcbind
from lxcbind.image import layercopy
from lxcbind.image import snapshot as snapshots

POLICY = {"version": "0.8.0"}
SCRATCH = "/var/lib/lxcbind/bench-snapshot"   # the snapshots' filesystem, for cp -a


def fill_script(total: int, root: str = "/root/data") -> str:
    """A shell line that writes ``total`` bytes of mixed file sizes under ``root``."""
    parts = []
    for size in (4096, 65536, 1 << 20):
        count = max(1, total // 3 // size)
        parts.append(f"mkdir -p {root}/s{size}; i=0; while [ $i -lt {count} ]; do "
                     f"head -c {size} /dev/urandom > {root}/s{size}/f$i; i=$((i+1)); done")
    return "; ".join(parts)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def snapshot_ms(box: lxcbind.Sandbox, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        snap = box.snapshot()
        samples.append((time.perf_counter() - t) * 1000)
        snapshots.remove(snap, box.lxcpath)
    return median(samples)


def cp_ms(box: lxcbind.Sandbox, n: int) -> float:
    upper = box._disk.upper() if box._disk is not None else ""   # noqa: SLF001 - a benchmark
    upper = upper.replace("/proc/self/", f"/proc/{os.getpid()}/")   # cp's own /proc/self
    os.makedirs(SCRATCH, 0o700, exist_ok=True)
    samples = []
    for _ in range(n):
        target = os.path.join(SCRATCH, uuid.uuid4().hex)
        t = time.perf_counter()
        quiet("cp", "-a", upper + "/", target)
        samples.append((time.perf_counter() - t) * 1000)
        shutil.rmtree(target)
    return median(samples)


def entries(root: str) -> tuple[int, int]:
    """(directories, other entries) below ``root``."""
    dirs = files = 0
    for _path, d, f in os.walk(root):
        dirs += len(d)
        files += len(f)
    return dirs, files


def create_floor_ms(box: lxcbind.Sandbox, n: int) -> float:
    """Creating the layer's directories and (empty) files on the store's filesystem: what a
    copy of the layer cannot go below."""
    upper = box._disk.upper() if box._disk is not None else ""   # noqa: SLF001 - a benchmark
    ndirs, nfiles = entries(upper)
    os.makedirs(SCRATCH, 0o700, exist_ok=True)
    samples = []
    for _ in range(n):
        target = os.path.join(SCRATCH, uuid.uuid4().hex)
        t = time.perf_counter()
        os.mkdir(target)
        for i in range(ndirs):
            os.mkdir(os.path.join(target, f"d{i}"))

        def create(i: int, target: str = target) -> None:
            d = os.path.join(target, f"d{i % ndirs}") if ndirs else target
            os.close(os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o600))

        # As many threads as the copy uses; files spread over the directories.
        with ThreadPoolExecutor(layercopy.WORKERS) as pool:
            list(pool.map(create, range(nfiles)))
        samples.append((time.perf_counter() - t) * 1000)
        shutil.rmtree(target)
    return median(samples)


def freeze_ms(box: lxcbind.Sandbox, n: int) -> float:
    from lxcbind.lxc import cgroups

    pid = box._container.init_pid   # noqa: SLF001 - a benchmark
    assert pid is not None
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        with cgroups.frozen(pid):
            pass
        samples.append((time.perf_counter() - t) * 1000)
    return median(samples)


def lxc_copy_ms(total: int, n: int) -> float | None:
    if not shutil.which("lxc-copy"):
        return None
    name = f"lxcbind-bench-{uuid.uuid4().hex[:8]}"
    c = make_busybox(name, start=False)
    try:
        rootfs = c.get_config_item("lxc.rootfs.path").split(":", 1)[-1]
        subprocess.run(["sh", "-c", fill_script(total, rootfs + "/root/data")], check=True)
        samples = []
        for _ in range(n):
            clone = f"{name}-s{uuid.uuid4().hex[:4]}"
            t = time.perf_counter()
            quiet("lxc-copy", "-n", name, "-N", clone, "-s", "-B", "overlay")
            samples.append((time.perf_counter() - t) * 1000)
            subprocess.run(["lxc-destroy", "-f", "-n", clone], capture_output=True)
        return median(samples)
    finally:
        c.destroy()
        c.close()


def fork_ms(box: lxcbind.Sandbox, count: int, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        forks = box.fork(count)
        samples.append((time.perf_counter() - t) * 1000)
        assert all(f.run(["/bin/true"]).returncode == 0 for f in forks)
        for f in forks:
            f.close()
    return median(samples)


def pool_steady_ms(n: int, image: snapshots.Snapshot | None, size: int = 4) -> float:
    with lxcbind.Pool(POLICY, size=size, image=image) as pool:
        pool.run("/bin/true")
        samples = []
        for _ in range(n):
            deadline = time.monotonic() + 10
            while not pool.idle and time.monotonic() < deadline:
                time.sleep(0.005)
            t = time.perf_counter()
            pool.run(["/bin/true"])
            samples.append((time.perf_counter() - t) * 1000)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5, help="repetitions of each measurement")
    parser.add_argument("--pool-n", type=int, default=30, help="Pool runs per side")
    args = parser.parse_args()
    print(describe())
    rows = []
    image = None
    for mb in (10, 100):
        total = mb << 20
        with lxcbind.Sandbox(POLICY) as box:
            done = box.run(fill_script(total), timeout=600)
            assert done.returncode == 0, done.stderr
            snap = snapshot_ms(box, args.n)
            cp = cp_ms(box, args.n)
            floor = create_floor_ms(box, args.n)
            frozen = freeze_ms(box, args.n)
            count = sum(entries(box._disk.upper() if box._disk else ""))   # noqa: SLF001
            if mb == 10:
                image = box.snapshot()
                forked = fork_ms(box, 8, max(1, args.n // 2))
        lxc = lxc_copy_ms(total, args.n)
        rows.append((mb, snap, cp, lxc, floor, frozen, count))
    assert image is not None
    try:
        from_base = pool_steady_ms(args.pool_n, None)
        from_snap = pool_steady_ms(args.pool_n, image)
    finally:
        snapshots.remove(image, lxcbind.default_lxcpath())
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"{'writable layer':>15} {'snapshot()':>11} {'cp -a':>9} {'ratio':>6} "
          f"{'lxc-copy -s':>12} {'ratio':>6} {'creates only':>13} {'freeze+thaw':>12}")
    for mb, snap, cp, lxc, floor, frozen, count in rows:
        lxc_text = f"{lxc:9.1f} ms {snap / lxc:6.2f}" if lxc else f"{'n/a':>12} {'':>6}"
        print(f"{mb:>12} MB {snap:8.1f} ms {cp:6.1f} ms {snap / cp:6.2f} {lxc_text} "
              f"{floor:10.1f} ms {frozen:9.2f} ms   ({count} entries)")
    print(f"fork(8) until all 8 ready: {forked:.0f} ms ({forked / 8:.0f} ms per fork)")
    print(f"Pool.run /bin/true, steady state: from the host base {from_base:.2f} ms, "
          f"from a 10 MB snapshot {from_snap:.2f} ms (ratio {from_snap / from_base:.2f})")


if __name__ == "__main__":
    main()
