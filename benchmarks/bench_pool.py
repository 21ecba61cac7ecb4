"""A fresh container per command: ``Pool`` against the other ways, side by side in one run.

  * ``Pool.run("/bin/true")`` steady state (the pool is full and quiet; a ready container is
    taken, the command runs, the container is handed to the reaper): latency per run, medians;
  * sustained fresh-container throughput: ``Pool.map`` over many commands (runs/s), where the
    setup and teardown of replacements is the bottleneck;
  * ``lxcbind.run()`` (set up, run, tear down inline), a Session command (a warm container,
    *not* fresh), ``bwrap --unshare-all`` (install: ``apt-get install bubblewrap``) and the
    ``lxc-copy -s``/start/attach/destroy program sequence.
Prints medians and ratios; asserts nothing.      python3 benchmarks/bench_pool.py [-n 40]
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _common import lxc_clone_sequence, quiet, samples_ms  # noqa: E402

import lxcbind  # noqa: E402

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}


def median_ms(fn: Callable[[], object], n: int) -> float:
    return statistics.median(samples_ms(fn, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--size", type=int, default=4, help="pool size")
    args = parser.parse_args()
    n = args.n
    rows: dict[str, float] = {}
    with lxcbind.Pool(POLICY, size=args.size) as pool:
        pool.run("/bin/true")
        time.sleep(1.0)  # let the pool fill
        samples = []
        for _ in range(n):
            deadline = time.monotonic() + 10
            while not pool.idle and time.monotonic() < deadline:
                time.sleep(0.005)  # steady state: the replacement is up, the reaper done
            t = time.perf_counter()
            pool.run(["/bin/true"])
            samples.append((time.perf_counter() - t) * 1000)
        rows["Pool.run, steady state (fresh container)"] = statistics.median(samples)
        count = n * 3
        t = time.perf_counter()
        pool.map([["/bin/true"]] * count, workers=args.size)
        throughput = count / (time.perf_counter() - t)
    rows["lxcbind.run() (fresh container, inline)"] = median_ms(lambda: lxcbind.run(POLICY),
                                                                 max(5, n // 4))
    with lxcbind.Session.from_policy(POLICY) as session:
        rows["Session command (warm, NOT fresh)"] = median_ms(
            lambda: session.run(["/bin/true"]), n)
    if shutil.which("bwrap"):
        rows["bwrap --unshare-all"] = median_ms(lambda: quiet(
            "bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
            "/bin/true"), n)
    if shutil.which("lxc-copy"):
        base = f"lxcbind-bench-base-{uuid.uuid4().hex[:6]}"
        conf = f"/tmp/{base}.conf"
        with open(conf, "w") as f:
            f.write("lxc.net.0.type = empty\n")
        try:
            quiet("lxc-create", "-n", base, "-t", "busybox", "-f", conf)
            rows["lxc-copy -s/start/attach/destroy"] = median_ms(
                lambda: lxc_clone_sequence(base), max(5, n // 4))
        finally:
            subprocess.run(["lxc-destroy", "-f", "-n", base], capture_output=True)
    pool_ms = rows["Pool.run, steady state (fresh container)"]
    print(f"{'/bin/true':44} {'median ms':>10} {'/ Pool.run':>11}")
    for label, value in rows.items():
        print(f"{label:44} {value:10.2f} {value / pool_ms:10.1f}x")
    print(f"sustained fresh-container throughput (Pool.map, size {args.size}): "
          f"{throughput:.0f} runs/s")


if __name__ == "__main__":
    sys.exit(main())
