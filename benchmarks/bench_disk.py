"""What the disk limit costs: the default (the writable layer on a 10 GiB ext4 image of its own,
``lxc.limits.disk``) against ``"disk": "max"`` (the upper directory on the host's filesystem,
as before the limit existed), side by side in one run, interleaved so that machine noise hits
both alike.

Measured, medians in ms:
  * ``lxcbind.run()`` one-shot of /bin/true (host rootfs): set up, run, tear down;
  * a ``Pool`` run (``Pool.run("/bin/true")`` with a ready container: what the caller waits
    for; the layer is made ahead, by the pool's starter) and a Pool's throughput (commands per
    second through ``map`` when setup and teardown are on the critical path);
  * the layer's own steps (sparse copy of the cached image, loop attach, mount), timed inside.
Prints ratios (limited / unlimited); asserts nothing.
    python3 benchmarks/bench_disk.py [-n 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import lxcbind
from lxcbind.sandbox import disk

LIMITED = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}   # the default limit
UNLIMITED = {**LIMITED, "lxc": {"limits": {"disk": "max"}}}
MODES = {"limited": LIMITED, "unlimited": UNLIMITED}


def ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def layer_steps(samples: dict[str, list[float]]) -> None:
    """Wrap the layer's steps so that each call is timed (only the limited runs make one)."""
    for name in ("_copy_sparse", "_attach_loop", "wait_released", "prepare"):
        original = getattr(disk, name)

        def timed(*args: object, _f: Callable[..., object] = original, _n: str = name) -> object:
            t = time.perf_counter()
            try:
                return _f(*args)
            finally:
                samples.setdefault(_n, []).append((time.perf_counter() - t) * 1000)

        setattr(disk, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    n = parser.parse_args().n
    lxcbind.run(LIMITED)   # the cached image and the shifted base exist before timing
    lxcbind.run(UNLIMITED)
    steps: dict[str, list[float]] = {}
    layer_steps(steps)
    oneshot: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(n):
        for mode, policy in MODES.items():
            oneshot[mode].append(ms(lambda p=policy: lxcbind.run(p)))  # type: ignore[misc]
    pools = {m: lxcbind.Pool(p, size=2) for m, p in MODES.items()}
    pool_run: dict[str, list[float]] = {m: [] for m in MODES}
    throughput: dict[str, list[float]] = {m: [] for m in MODES}
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

    print(f"medians of {n}, interleaved")
    line("one-shot lxcbind.run()", oneshot)
    line("Pool.run (ready container)", pool_run)
    line("Pool throughput (map of 20)", throughput, "cmd/s")
    for name, values in steps.items():
        print(f"  layer step {name:22s} median {statistics.median(values):6.2f} ms "
              f"(n={len(values)})")


if __name__ == "__main__":
    main()
