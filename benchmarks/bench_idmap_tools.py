"""A cold ``lxcbind.run()`` with and without the stand-ins that keep liblxc from running shadow's
newuidmap and newgidmap (``lxc.container.STARTER_PATH``; issue #23), interleaved in one run.

Where the host has privileged newuidmap and newgidmap (Debian's ``uidmap`` package, which
``lxc`` recommends), liblxc's start runs ``/bin/sh -c "newuidmap ..."`` and the same for gids
unless the first ones on its PATH are not privileged.  "without": the starter's PATH without
``nouidmap/`` first (as before the cut).  Per side: the wall time of ``lxcbind.run(["/bin/
true"])`` and the machine's busy CPU during it (``/proc/stat``, all CPUs: on an idle host, the
run's own processes and kernel work; clock ticks, hence means), ``--rounds`` blocks of
``-n`` runs each, alternating.  Asserts nothing.

    python3 benchmarks/bench_idmap_tools.py [-n 10] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

from _common import describe

import lxcbind
from lxcbind.lxc import container

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}
PATHS = {"with stand-ins": container.STARTER_PATH,
         "without": container.STARTER_PATH.split(":", 1)[1]}


def busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]   # all but idle and iowait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(describe())
    for tool in ("newuidmap", "newgidmap"):
        found = shutil.which(tool, path=PATHS["without"])
        mode = os.stat(found).st_mode if found else 0
        print(f"{tool} on the usual PATH: {found or 'none'}"
              f"{' (setuid: liblxc uses it)' if mode & 0o4000 else ''}")
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    wall: dict[str, list[float]] = {k: [] for k in PATHS}
    cpu: dict[str, list[float]] = {k: [] for k in PATHS}
    lxcbind.run(["/bin/true"], policy=POLICY)   # warm-up: caches, the disk layer's template
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for side, path in PATHS.items():
            container._STARTER_ENV = {"PATH": path}
            for _ in range(args.n):
                ticks = busy_ticks()
                t = time.perf_counter()
                r = lxcbind.run(["/bin/true"], policy=POLICY)
                wall[side].append((time.perf_counter() - t) * 1000)
                cpu[side].append((busy_ticks() - ticks) * tick_ms)
                assert r.returncode == 0, r
    container._STARTER_ENV = {"PATH": PATHS["with stand-ins"]}
    print(f"load {load:.2f} before, {os.getloadavg()[0]:.2f} after; {args.rounds} blocks of "
          f"{args.n} runs per side, alternating")
    for side in PATHS:
        print(f"  {side:15} run() wall median {statistics.median(wall[side]):7.2f} ms, "
              f"machine CPU mean {statistics.mean(cpu[side]):6.2f} ms")
    ratio = statistics.mean(cpu["with stand-ins"]) / statistics.mean(cpu["without"])
    print(f"  CPU with / without: {ratio:.2f}; wall: "
          f"{statistics.median(wall['with stand-ins']) / statistics.median(wall['without']):.2f}")


if __name__ == "__main__":
    main()
