"""A fresh container per command: ``Pool`` against the other ways, side by side in one run.

  * ``Pool.run("/bin/true")`` steady state (the pool is full and quiet; a ready container is
    taken, the command runs, the container is handed to the reaper): latency per run, medians;
  * sustained fresh-container throughput: ``Pool.map`` over many commands (runs/s), where the
    setup and teardown of replacements is the bottleneck, for each ``--starters`` count, with
    the machine's CPU time per fresh container (from /proc/stat: the floor on 2 cores);
  * ``lxcbind.run()`` (set up, run, tear down inline), a Session command (a warm container,
    *not* fresh), ``bwrap --unshare-all`` (installed with apt-get when missing) and the
    ``lxc-copy -s``/start/attach/destroy program sequence.
Prints medians and ratios; asserts nothing.
    python3 benchmarks/bench_pool.py [-n 40] [--size 4] [--starters 1 2 3]
``bench_floor.py`` prints these rows too, next to the one-shot and CLI figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from _common import bwrap_true, describe, ensure_bwrap, lxc_clone_sequence, quiet, samples_ms

import lxcbind

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}


def median_ms(fn: Callable[[], object], n: int) -> float:
    return statistics.median(samples_ms(fn, n))


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (every process, the kernel included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def pool_steady_ms(n: int, size: int = 4) -> float:
    """Median ``Pool.run`` of /bin/true with a full, quiet pool."""
    with lxcbind.Pool(POLICY, size=size) as pool:
        pool.run("/bin/true")
        samples = []
        for _ in range(n):
            deadline = time.monotonic() + 10
            while not pool.idle and time.monotonic() < deadline:
                time.sleep(0.005)  # steady state: the replacement is up, the reaper done
            t = time.perf_counter()
            pool.run(["/bin/true"])
            samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def pool_sustained(count: int, size: int = 4, starters: int = 2) -> tuple[float, float]:
    """(runs/s of ``Pool.map`` over ``count`` commands, machine CPU ms per fresh container)."""
    with lxcbind.Pool(POLICY, size=size, starters=starters) as pool:
        pool.run("/bin/true")
        deadline = time.monotonic() + 10
        while not pool.idle and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = _busy_seconds()
        t = time.perf_counter()
        pool.map([["/bin/true"]] * count, workers=size)
        elapsed = time.perf_counter() - t
        busy = _busy_seconds() - busy
    return count / elapsed, busy / count * 1000


def session_ms(n: int) -> float:
    with lxcbind.Session.from_policy(POLICY) as session:
        return median_ms(lambda: session.run(["/bin/true"]), n)


def lxc_copy_ms(n: int) -> float | None:
    if not shutil.which("lxc-copy"):
        return None
    base = f"lxcbind-bench-base-{uuid.uuid4().hex[:6]}"
    conf = f"/tmp/{base}.conf"
    with open(conf, "w") as f:
        f.write("lxc.net.0.type = empty\n")
    try:
        quiet("lxc-create", "-n", base, "-t", "busybox", "-f", conf)
        return median_ms(lambda: lxc_clone_sequence(base), n)
    finally:
        subprocess.run(["lxc-destroy", "-f", "-n", base], capture_output=True)
        os.unlink(conf)


def bwrap_ms(n: int) -> float | None:
    return median_ms(bwrap_true, n) if ensure_bwrap() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--size", type=int, default=4, help="pool size")
    parser.add_argument("--starters", type=int, nargs="+", default=[2],
                        help="starter thread counts to measure throughput with")
    args = parser.parse_args()
    n = args.n
    print(describe())
    rows: dict[str, float | None] = {}
    rows["Pool.run, steady state (fresh container)"] = pool_steady_ms(n, args.size)
    sustained = {s: pool_sustained(n * 3, args.size, s) for s in args.starters}
    rows["lxcbind.run() (fresh container, inline)"] = median_ms(
        lambda: lxcbind.run(POLICY), max(5, n // 4))
    rows["Session command (warm, NOT fresh)"] = session_ms(n)
    rows["bwrap --unshare-all"] = bwrap_ms(n)
    rows["lxc-copy -s/start/attach/destroy"] = lxc_copy_ms(max(5, n // 4))
    pool_ms = rows["Pool.run, steady state (fresh container)"] or 1.0
    print(f"{'/bin/true':44} {'median ms':>10} {'/ Pool.run':>11}")
    for label, value in rows.items():
        if value is None:
            print(f"{label:44} {'n/a':>10}")
        else:
            print(f"{label:44} {value:10.2f} {value / pool_ms:10.1f}x")
    for starters, (rate, cpu_ms) in sustained.items():
        print(f"sustained fresh-container throughput (Pool.map, size {args.size}, {starters} "
              f"starters): {rate:.0f} runs/s; machine CPU {cpu_ms:.1f} ms per container "
              f"(floor on {os.cpu_count()} CPUs: {1000 * (os.cpu_count() or 1) / cpu_ms:.0f}/s)")


if __name__ == "__main__":
    sys.exit(main())
