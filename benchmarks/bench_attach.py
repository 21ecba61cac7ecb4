"""Warm attach latency: lxcbind vs the lxc-attach program vs plain fork+exec on the host.

Run as root:  python3 benchmarks/bench_attach.py [-n 200]
Prints medians, p95 and ratios.  A benchmark, not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess

from _common import bench_container, samples_ms


def timed(fn, n: int) -> list[float]:
    return samples_ms(fn, n, warm=5)


def p95(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.95) - 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args()
    c = bench_container()
    name = c.name
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        rows = {
            "lxcbind Container.attach(/bin/true)": timed(
                lambda: c.attach(["/bin/true"], stdout=devnull, stderr=devnull).wait(), args.n),
            "lxc-attach program": timed(
                lambda: subprocess.run(
                    ["lxc-attach", "-n", name, "--clear-env", "--", "/bin/true"],
                    stdin=subprocess.DEVNULL, stdout=devnull, check=True), args.n // 2),
            "host subprocess.run(/bin/true)": timed(
                lambda: subprocess.run(["/bin/true"], check=True), args.n),
        }
    finally:
        os.close(devnull)
        if c.defined:
            c.destroy()
        c.close()
    ours = statistics.median(rows["lxcbind Container.attach(/bin/true)"])
    print(f"{'method':40} {'median ms':>10} {'p95 ms':>8} {'vs lxcbind':>11}")
    for label, xs in rows.items():
        med = statistics.median(xs)
        print(f"{label:40} {med:10.3f} {p95(xs):8.3f} {med / ours:10.2f}x")


if __name__ == "__main__":
    main()
