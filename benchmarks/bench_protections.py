"""What the protections cost: this checkout against a baseline checkout, side by side in one run.

Each figure is measured in a fresh worker process that imports ``lxcbind`` from one checkout
(``PYTHONPATH``), and the two checkouts take turns, round after round, so both see the same
machine load.  Rows: a one-shot ``lxcbind.run()`` of ``/bin/true``, a ``Pool.run`` at steady
state, a ``Session`` command, and sustained ``Pool.map`` throughput (runs/s, and the machine's
CPU time per fresh container).  Medians over the rounds; prints ratios; asserts nothing.

    git worktree add /tmp/lxcbind-base 2f8c471
    (cd /tmp/lxcbind-base && python3 setup.py -q build_ext --inplace)
    python3 benchmarks/bench_protections.py --baseline /tmp/lxcbind-base [-n 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CURRENT = os.path.dirname(HERE)
POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}
KINDS = ("oneshot", "pool", "session", "throughput")


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (every process, the kernel included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _timed(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out)


def _settle(pool) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while not pool.idle and time.monotonic() < deadline:
        time.sleep(0.005)


def worker(kind: str, n: int) -> dict[str, float]:
    """One figure of one checkout (the ``lxcbind`` this process imports)."""
    import lxcbind

    if kind == "oneshot":
        return {"ms": _timed(lambda: lxcbind.run(["/bin/true"], policy=POLICY), n)}
    if kind == "session":
        with lxcbind.Session.from_policy(POLICY) as session:
            return {"ms": _timed(lambda: session.run(["/bin/true"]), n * 5)}
    if kind == "pool":
        with lxcbind.Pool(POLICY, size=4) as pool:
            samples = []
            pool.run(["/bin/true"])
            for _ in range(n):
                _settle(pool)
                t = time.perf_counter()
                pool.run(["/bin/true"])
                samples.append((time.perf_counter() - t) * 1000)
            return {"ms": statistics.median(samples)}
    if kind == "throughput":
        count = n * 3
        with lxcbind.Pool(POLICY, size=4) as pool:
            pool.run(["/bin/true"])
            _settle(pool)
            busy = _busy_seconds()
            t = time.perf_counter()
            pool.map([["/bin/true"]] * count, workers=4)
            elapsed = time.perf_counter() - t
            busy = _busy_seconds() - busy
        return {"rate": count / elapsed, "cpu_ms": busy / count * 1000}
    raise ValueError(kind)


def measure(checkout: str, kind: str, n: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=checkout)
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
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n)))
        return 0
    sides = {"this": CURRENT}
    if args.baseline:
        sides["baseline"] = os.path.abspath(args.baseline)
        if not os.path.isdir(os.path.join(sides["baseline"], "lxcbind")):
            parser.error(f"--baseline {args.baseline}: not a checkout of lxcbind")
    got: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for kind in KINDS:
            for side, checkout in sides.items():
                got.setdefault((side, kind), []).append(measure(checkout, kind, args.n))
    for side, checkout in sides.items():
        print(f"{side}: lxcbind from {checkout}")

    def fig(side: str, kind: str, key: str) -> float:
        return statistics.median(r[key] for r in got[(side, kind)])

    rows = [("one-shot run() of /bin/true, ms", "oneshot", "ms"),
            ("Pool.run steady state, ms", "pool", "ms"),
            ("Session command, ms", "session", "ms"),
            ("Pool.map throughput, runs/s", "throughput", "rate"),
            ("machine CPU per fresh container, ms", "throughput", "cpu_ms")]
    head = f"{'(medians of ' + str(args.rounds) + ' rounds)':40} {'this':>9}"
    print(head + (f" {'baseline':>9} {'ratio':>7}" if "baseline" in sides else ""))
    for label, kind, key in rows:
        line = f"{label:40} {fig('this', kind, key):9.2f}"
        if "baseline" in sides:
            base = fig("baseline", kind, key)
            line += f" {base:9.2f} {fig('this', kind, key) / base:6.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
