"""What the protections cost: this checkout against a baseline checkout, side by side in one run.

Each figure is measured in a fresh worker process that imports ``lxcbind`` from one checkout
(``PYTHONPATH``), and the two checkouts take turns, round after round, so both see the same
machine load.  Rows: a one-shot ``lxcbind.run()`` of ``/bin/true``, a ``Pool.run`` at steady
state, a ``Session`` command, and sustained ``Pool.map`` throughput (runs/s, and the machine's
CPU time per fresh container).  ``--without LXC_JSON`` adds this checkout run with other
``lxc`` policy items (e.g. the disk limit off), to isolate what one protection costs.  Medians
over the rounds; prints this side's figure over each other side's; asserts nothing.

    git worktree add /tmp/lxcbind-base 2f8c471
    (cd /tmp/lxcbind-base && python3 setup.py -q build_ext --inplace)
    python3 benchmarks/bench_protections.py --baseline /tmp/lxcbind-base [-n 20] [--rounds 3] \\
        [--without '{"limits": {"disk": "max"}}']
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CURRENT = os.path.dirname(HERE)
POLICY: dict[str, object] = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}
if os.environ.get("BENCH_POLICY_LXC"):   # a side measured with other ``lxc`` items
    POLICY["lxc"] = json.loads(os.environ["BENCH_POLICY_LXC"])
KINDS = ("oneshot", "pool", "session", "throughput")


def worker(kind: str, n: int) -> dict[str, float]:
    """One figure of one checkout (the ``lxcbind`` this process imports), measured the way
    ``bench_pool.py`` measures it, under this side's policy."""
    import bench_pool

    import lxcbind

    bench_pool.POLICY = POLICY
    if kind == "oneshot":
        return {"ms": bench_pool.median_ms(lambda: lxcbind.run(["/bin/true"], policy=POLICY), n)}
    if kind == "session":
        return {"ms": bench_pool.session_ms(n * 5)}
    if kind == "pool":
        return {"ms": bench_pool.pool_steady_ms(n, size=4)}
    if kind == "throughput":
        rate, cpu_ms = bench_pool.pool_sustained(n * 3, size=4, starters=2)
        return {"rate": rate, "cpu_ms": cpu_ms}
    raise ValueError(kind)


def measure(checkout: str, kind: str, n: int, lxc: str = "") -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=checkout, BENCH_POLICY_LXC=lxc)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                           "-n", str(n)], env=env, cwd=checkout, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} in {checkout} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="a built checkout to compare with")
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--without", metavar="LXC_JSON",
                        help='also this checkout with these "lxc" policy items, e.g. '
                             '\'{"limits": {"disk": "max"}}\' (what one protection costs)')
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n)))
        return 0
    sides = {"this": CURRENT}
    variants = {"this": ""}
    if args.without:
        sides["without"] = CURRENT
        variants["without"] = args.without
    if args.baseline:
        sides["baseline"] = os.path.abspath(args.baseline)
        if not os.path.isdir(os.path.join(sides["baseline"], "lxcbind")):
            parser.error(f"--baseline {args.baseline}: not a checkout of lxcbind")
    got: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for kind in KINDS:
            for side, checkout in sides.items():
                got.setdefault((side, kind), []).append(
                    measure(checkout, kind, args.n, variants.get(side, "")))
    for side, checkout in sides.items():
        print(f"{side}: lxcbind from {checkout} {variants.get(side, '')}")

    def fig(side: str, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in got[(side, kind)])

    rows = [("one-shot run() of /bin/true, ms", "oneshot", "ms"),
            ("Pool.run steady state, ms", "pool", "ms"),
            ("Session command, ms", "session", "ms"),
            ("Pool.map throughput, runs/s", "throughput", "rate"),
            ("machine CPU per fresh container, ms", "throughput", "cpu_ms")]
    others = [side for side in sides if side != "this"]
    head = f"{'(medians of ' + str(args.rounds) + ' rounds)':40} {'this':>9}"
    print(head + "".join(f" {side:>9} {'ratio':>7}" for side in others))
    for label, kind, key in rows:
        this = fig("this", kind, key)
        line = f"{label:40} {this:9.2f}"
        for side in others:
            other = fig(side, kind, key)
            line += f" {other:9.2f} {this / other:6.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
