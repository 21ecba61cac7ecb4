"""What the disk limit costs, step by step, in CPU and wall time, against a baseline checkout.

Two parts, each side by side in one run, interleaved so that machine noise hits both alike:

``--steps`` (the default): one container's writable layer through its whole life, made and
torn down by each checkout's own ``lxcbind.sandbox.disk`` in a fresh worker process (the
checkout on ``PYTHONPATH``), without a container around it, so that only the layer is
measured.  Steps: a reused image taken (where the checkout has them), or the sparse copy of
the cached image; the loop device's attach; the ext4 mount; the rest of ``prepare`` (the
overlay's directories); an overlay mounted on it (what liblxc does at start); the host
mount's detach after start; a small workload (3 files of 8 KiB); the overlay's unmount (the
container's exit); what the caller's teardown does with the image (liblxc's destroy unlinks
it, or it is moved aside for reuse); the layer's close (the filesystem's shutdown, the loop
device's release and, where the checkout reuses images, the image's reset: a background
thread's work in a real run).  For each step: CPU of the thread
that ran it (kernel work in it included: ext4, the block layer, the loop device's setup),
CPU the kernel threads spent meanwhile (the loop device's I/O workers; other processes'
kernel work leaks in, so medians), and wall time.

``--runs``: a one-shot ``lxcbind.run()`` of /bin/true, a ``Pool.run`` with a ready container,
Pool throughput (``Pool.map`` of 20), each with the default limit and with ``"disk": "max"``.
(For machine CPU per fresh container across all processes use ``bench_protections.py``.)

Prints medians; asserts nothing.
    python3 benchmarks/bench_disk.py [--steps] [--runs] [-n 40] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
CURRENT = os.path.dirname(HERE)
STEPS = ("reused image", "copy image", "loop attach", "ext4 mount", "prepare: rest",
         "overlay mount", "after start", "workload writes", "container exit", "caller teardown",
         "layer close")
SETUP = STEPS[:7]
TEARDOWN = STEPS[8:]
_PF_KTHREAD = 0x00200000


def _kthread_ms() -> float:
    """CPU the kernel's own threads have used so far (schedstat: nanoseconds, not ticks)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if not int(fields[6]) & _PF_KTHREAD:
                continue
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e6


def _thread_ms() -> float:
    """CPU this thread has used so far, kernel work in it included (CLOCK_THREAD_CPUTIME_ID
    brings the running thread's figure up to date; schedstat and getrusage lag by a tick)."""
    return time.thread_time() * 1000


class Steps:
    """Times each step: (thread CPU, kernel threads' CPU, wall) in ms."""

    def __init__(self) -> None:
        self.got: dict[str, tuple[float, float, float]] = {}
        self.inner = 0.0   # CPU of timed sub-steps inside the step being timed (prepare)

    def time(self, name: str, fn: Callable[[], object]) -> object:
        k, c, t = _kthread_ms(), _thread_ms(), time.perf_counter()
        try:
            return fn()
        finally:
            wall = (time.perf_counter() - t) * 1000
            cpu = _thread_ms() - c
            self.got[name] = (cpu, _kthread_ms() - k, wall)


def one_layer(work: str, i: int, size: int, owner: int | None) -> dict[str, list[float]]:
    """One layer's life through this process's ``lxcbind.sandbox.disk``."""
    from lxcbind.lxc import hostmount
    from lxcbind.lxc._native import lib
    from lxcbind.sandbox import disk

    steps = Steps()
    cdir = os.path.join(work, f"c{i}")
    os.mkdir(cdir)
    sub: dict[str, tuple[float, float, float]] = {}

    overhead = [0.0, 0.0]   # thread CPU and wall the sub-steps' own measuring took

    def timed(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object) -> object:
            c0, t0 = _thread_ms(), time.perf_counter()
            k = _kthread_ms()
            c, t = _thread_ms(), time.perf_counter()
            try:
                return fn(*args)
            finally:
                c1, t1 = _thread_ms(), time.perf_counter()
                sub[name] = (c1 - c, _kthread_ms() - k, (t1 - t) * 1000)
                overhead[0] += (_thread_ms() - c0) - (c1 - c)
                overhead[1] += (time.perf_counter() - t0 - (t1 - t)) * 1000
        return wrapper

    pool = getattr(disk, "diskpool", None)   # a checkout that reuses images
    originals = (disk._copy_sparse, disk._attach_loop, hostmount.mount_device)
    disk._copy_sparse = timed("copy image", disk._copy_sparse)  # type: ignore[assignment]
    disk._attach_loop = timed("loop attach", disk._attach_loop)  # type: ignore[assignment]
    hostmount.mount_device = timed("ext4 mount", hostmount.mount_device)  # type: ignore
    if pool is not None:
        claim = pool.claim
        pool.claim = timed("reused image", claim)
    try:
        steps.time("prepare", lambda: disk.prepare(cdir, size, owner))
    finally:
        disk._copy_sparse, disk._attach_loop, hostmount.mount_device = originals
        if pool is not None:
            pool.claim = claim
    if "copy image" in sub and "reused image" in sub:   # it looked, found none, copied
        sub["copy image"] = tuple(a + b for a, b in zip(sub["copy image"],  # type: ignore
                                                        sub.pop("reused image"), strict=True))
    steps.got.update(sub)
    rest = [a - sum(s[j] for s in sub.values()) for j, a in enumerate(steps.got.pop("prepare"))]
    steps.got["prepare: rest"] = (rest[0] - overhead[0], rest[1], rest[2] - overhead[1])
    layer_dir = os.path.join(cdir, disk.LAYER)
    upper = os.path.join(layer_dir, disk.UPPER)
    workdir = os.path.join(layer_dir, "work")
    lower = os.path.join(cdir, "lower")
    rootfs = os.path.join(cdir, "rootfs")
    os.mkdir(lower)
    os.mkdir(rootfs)
    options = f"lowerdir={lower},upperdir={upper},workdir={workdir}".encode()

    def overlay() -> None:
        os.makedirs(workdir, exist_ok=True)
        if lib.mount(b"overlay", rootfs.encode(), b"overlay", 0, options) != 0:
            raise OSError("overlay mount failed")

    steps.time("overlay mount", overlay)
    layer = disk.Layer(cdir)
    steps.time("after start", lambda: disk.detach(cdir))

    def workload() -> None:
        for j in range(3):
            with open(os.path.join(rootfs, f"f{j}"), "wb") as f:
                f.write(b"x" * 8192)

    steps.time("workload writes", workload)
    steps.time("container exit", lambda: lib.umount2(rootfs.encode(), 0))

    def caller_teardown() -> None:   # what liblxc's destroy and rmtree meet in the directory
        if hasattr(disk, "retire"):
            disk.retire(cdir)   # moved aside, for the layer to reuse
        if os.path.lexists(os.path.join(cdir, disk.IMAGE)):
            os.unlink(os.path.join(cdir, disk.IMAGE))

    steps.time("caller teardown", caller_teardown)
    # In a run this is a background thread's: the filesystem's shutdown, the loop device's
    # release and, where the checkout reuses images, the image's reset.
    steps.time("layer close", layer.close)
    disk.wait_released(cdir)   # not on a run's path (gc's): the next layer starts clean
    shutil.rmtree(cdir)
    return {name: list(v) for name, v in steps.got.items()}


def steps_worker(n: int, size: int) -> None:
    """Print, as JSON, each step's samples of ``n`` layers (this process's lxcbind)."""
    from lxcbind.sandbox import disk

    disk.template(size)   # made once, outside the timing
    from lxcbind.state import STATE_DIR

    work = tempfile.mkdtemp(prefix="bench-disk-", dir=str(STATE_DIR))
    got: dict[str, list[list[float]]] = {}
    try:
        for i in range(n):
            for name, sample in one_layer(work, i, size, 1 << 30).items():
                got.setdefault(name, []).append(sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(got))


def steps_side(checkout: str, n: int, size: int) -> dict[str, list[list[float]]]:
    env = dict(os.environ, PYTHONPATH=checkout)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "-n", str(n),
                           "--size", str(size)], env=env, cwd=checkout, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"steps worker in {checkout} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def print_steps(sides: dict[str, str], n: int, rounds: int, size: int) -> None:
    got: dict[str, dict[str, list[list[float]]]] = {side: {} for side in sides}
    for _ in range(rounds):
        for side, checkout in sides.items():
            for name, samples in steps_side(checkout, n, size).items():
                got[side].setdefault(name, []).extend(samples)
    print(f"disk layer of {size >> 20} MiB, step by step: medians of {n * rounds} layers in "
          f"{rounds} rounds per side, ms: CPU of the thread that ran the step (kernel work in "
          f"it included), CPU of kernel threads meanwhile (loop I/O; noisy: others' too), wall")
    print(f"{'step':18}" + "".join(f" {side[:8]:>8} {'kthr':>6} {'wall':>6}" for side in sides))

    def med(side: str, name: str, j: int) -> float:
        samples = got[side].get(name)
        return statistics.median(s[j] for s in samples) if samples else 0.0

    def row(label: str, names: tuple[str, ...]) -> None:
        print(f"{label:18}" + "".join(
            "".join(f" {sum(med(side, s, j) for s in names):{w}.2f}" for j, w in
                    ((0, 8), (1, 6), (2, 6))) for side in sides))

    for name in STEPS:
        row(name, (name,))
    row("setup (sum)", SETUP)
    row("teardown (sum)", TEARDOWN)
    row("total (sum)", SETUP + TEARDOWN)


def ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def print_runs(n: int) -> None:
    """One-shot and Pool figures with the default limit and without one (this checkout)."""
    import lxcbind

    limited = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}
    modes = {"limited": limited, "unlimited": {**limited, "lxc": {"limits": {"disk": "max"}}}}
    for policy in modes.values():
        lxcbind.run(policy)   # the cached image and the shifted base exist before timing
    oneshot: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(n):
        for mode, policy in modes.items():
            oneshot[mode].append(ms(lambda p=policy: lxcbind.run(p)))  # type: ignore[misc]
    pools = {m: lxcbind.Pool(p, size=2) for m, p in modes.items()}
    pool_run: dict[str, list[float]] = {m: [] for m in modes}
    throughput: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for _ in range(n):
            for mode, pool in pools.items():
                while not pool.idle:
                    time.sleep(0.005)
                pool_run[mode].append(ms(lambda p=pool: p.run("/bin/true")))  # type: ignore[misc]
        for _ in range(3):
            for mode, pool in pools.items():
                while not pool.idle:
                    time.sleep(0.005)
                took = ms(lambda p=pool: p.map(["/bin/true"] * 20))  # type: ignore[misc]
                throughput[mode].append(20 / (took / 1000))
    finally:
        for pool in pools.values():
            pool.close()

    def line(what: str, data: dict[str, list[float]], unit: str = "ms") -> None:
        a, b = statistics.median(data["limited"]), statistics.median(data["unlimited"])
        print(f"{what:34s} limited {a:8.2f} {unit}   unlimited {b:8.2f} {unit}   "
              f"ratio {a / b:5.2f}   (+{a - b:.2f})")

    print(f"lxcbind from {CURRENT}: medians of {n}, interleaved")
    line("one-shot lxcbind.run()", oneshot)
    line("Pool.run (ready container)", pool_run)
    line("Pool throughput (map of 20)", throughput, "cmd/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40, help="layers (or runs) per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=10 << 30, help="the layer's bytes")
    parser.add_argument("--steps", action="store_true", help="the layer step by step (default)")
    parser.add_argument("--runs", action="store_true", help="run() and Pool, limited or not")
    parser.add_argument("--baseline", metavar="DIR", help="a built checkout to compare with")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        steps_worker(args.n, args.size)
        return 0
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "lxcbind")):
        parser.error(f"--baseline {args.baseline}: not a checkout of lxcbind")
    if args.steps or not args.runs:
        sides = {"this": CURRENT}
        if args.baseline:
            sides["baseline"] = os.path.abspath(args.baseline)
        print_steps(sides, args.n, args.rounds, args.size)
    if args.runs:
        print_runs(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
