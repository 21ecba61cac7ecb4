"""Pool(clones=True) against Pool(clones=False), bwrap and lxc-copy, side by side in one run
(issue #23: a fresh sandbox per command at the machine's floor).

Rows, each alternated ``--rounds`` times so that a load change hits both sides:
* machine CPU per fresh sandbox (``_cpuphases``: ``perf record -a``, this run's processes and
  kernel threads only; a Pool of ``--size`` running ``-n`` ``/bin/true`` commands: ``n +
  size`` sandboxes made and torn down, the clones' template start included);
* sustained ``Pool.map`` throughput (runs/s) of the same Pools;
* ``bwrap --unshare-all /bin/true`` CPU per call (the namespace floor) and lxc-copy -s +
  start + stop + destroy wall time (the LXC reference), once.
Prints figures and ratios; asserts nothing.      python3 benchmarks/bench_clone.py [-n 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import _cpuphases
from _common import bwrap_true, describe, ensure_bwrap

import lxcbind

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}   # 0.8: no network


def pool_cpu(count: int, size: int, clones: bool) -> float | None:
    """Machine CPU ms per fresh sandbox of a Pool running ``count`` commands."""
    def workload(marks: _cpuphases.Marks) -> int:
        with lxcbind.Pool(POLICY, size=size, clones=clones) as pool:
            pool.map([["/bin/true"]] * count, workers=size)
        return count + size
    result = _cpuphases.profile(workload)
    return None if result is None else float(result["total"])


def pool_rate(count: int, size: int, clones: bool) -> float:
    """Sustained runs/s of ``Pool.map`` over ``count`` commands, from a full pool."""
    with lxcbind.Pool(POLICY, size=size, clones=clones) as pool:
        pool.run("/bin/true")
        deadline = time.monotonic() + 20
        while not pool.idle and time.monotonic() < deadline:
            time.sleep(0.01)
        t = time.perf_counter()
        pool.map([["/bin/true"]] * count, workers=size)
        return count / (time.perf_counter() - t)


def lxc_copy_ms(n: int) -> float | None:
    import bench_pool

    return bench_pool.lxc_copy_ms(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=200, help="commands per Pool")
    parser.add_argument("--size", type=int, default=4, help="pool size")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(describe())
    rows: dict[str, dict[str, list[float]]] = {
        side: {"cpu": [], "rate": []} for side in ("containers", "clones")}
    for _ in range(args.rounds):
        for side in ("containers", "clones"):
            clones = side == "clones"
            cpu = pool_cpu(args.n, args.size, clones)
            if cpu is not None:
                rows[side]["cpu"].append(cpu)
            rows[side]["rate"].append(pool_rate(args.n, args.size, clones))
    bwrap = _cpuphases.cpu_per_call(bwrap_true, 50) if ensure_bwrap() else None
    copy = lxc_copy_ms(5)
    print(f"load {os.getloadavg()[0]:.2f}; Pool size {args.size}, {args.n} commands per "
          f"round, {args.rounds} rounds (medians, all rounds in brackets)")

    def fmt(xs: list[float]) -> str:
        if not xs:
            return "n/a"
        return f"{statistics.median(xs):7.2f} [{' '.join(f'{x:.1f}' for x in xs)}]"

    for side, r in rows.items():
        print(f"  Pool(clones={side == 'clones'!s:5}) CPU ms per fresh sandbox {fmt(r['cpu'])}"
              f"   runs/s {fmt(r['rate'])}")
    a, b = rows["containers"], rows["clones"]
    if a["cpu"] and b["cpu"]:
        print(f"  CPU per fresh sandbox, clones / containers: "
              f"{statistics.median(b['cpu']) / statistics.median(a['cpu']):.2f}")
    print(f"  runs/s, clones / containers: "
          f"{statistics.median(b['rate']) / statistics.median(a['rate']):.2f}")
    if bwrap is not None and b["cpu"]:
        print(f"  bwrap --unshare-all /bin/true: {bwrap:.2f} ms CPU per call; clones / bwrap "
              f"{statistics.median(b['cpu']) / bwrap:.2f}")
    if copy is not None:
        print(f"  lxc-copy -s + start + stop + destroy (busybox): {copy:.1f} ms wall")


if __name__ == "__main__":
    main()
