"""Grade untrusted code in parallel: 200 Python snippets, each in a fresh sandbox.

The task given to the "students": read integers from stdin and print their sum.  The snippets
are generated here and include the usual suspects: right and wrong answers, crashes, endless
loops, output floods, and attempts to write to the host's /usr or to reach the network.

Each snippet runs in its own fresh container from an ``lxcbind.Pool`` (pre-started, so the
setup cost overlaps with the commands; no container is ever reused, so one submission cannot
leave anything for the next), under a policy with no network device, the host's read-only
/usr, and memory and process limits, with a per-snippet timeout and capped output.

    python3 examples/parallel_grader.py                 # 200 snippets, a summary table
    python3 examples/parallel_grader.py --json          # one JSON object: every verdict

Needs root and liblxc, like every lxcbind run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

import lxcbind

POLICY = {
    "version": "0.8.0",                 # no network section under 0.8: no network device
    "lxc": {"limits": {"memory": "256M", "pids": 64}},
}
INPUT = "3 4 5 10 -2\n"
EXPECTED = "20"

# kind -> the snippet's source.  Each kind has one verdict a correct grader must give.
SNIPPETS = {
    "correct": "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))",
    "wrong": "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()) + 1)",
    "crash": "import sys\nprint(int(sys.stdin.read()))",           # ValueError on "3 4 ..."
    "loop": "while True:\n    pass",
    "flood": "while True:\n    print('spam' * 1000)",
    "escape": ("open('/usr/lxcbind-grader-was-here', 'w').write('x')\n"
               "print(20)"),
    "network": ("import socket\n"
                "socket.create_connection(('198.18.0.1', 80), timeout=1)\n"
                "print(20)"),
}
VERDICTS = {"correct": "pass", "wrong": "wrong", "crash": "error", "loop": "timeout",
            "flood": "timeout", "escape": "error", "network": "error"}


def submissions(count: int) -> list[tuple[str, str]]:
    """``count`` (kind, source) pairs, mostly correct or wrong, as real submissions are."""
    weights = ["correct"] * 6 + ["wrong"] * 3 + ["crash", "loop", "flood", "escape", "network"]
    return [(kind, SNIPPETS[kind]) for kind in (weights[i % len(weights)]
                                                for i in range(count))]


def verdict(result: lxcbind.CompletedRun) -> str:
    if result.timed_out:
        return "timeout"
    if result.returncode != 0:
        return "error"
    return "pass" if result.stdout.decode(errors="replace").strip() == EXPECTED else "wrong"


def grade(count: int, workers: int, timeout: float, max_output: int) -> dict[str, Any]:
    items = submissions(count)
    started = time.monotonic()
    with lxcbind.Pool(POLICY, size=workers) as pool:
        results = pool.map([["python3", "-c", source] for _, source in items],
                           workers=workers, input=INPUT, timeout=timeout,
                           max_output=max_output)
    wall = time.monotonic() - started
    graded = [{"kind": kind, "verdict": verdict(r), "returncode": r.returncode,
               "duration": round(r.duration, 3), "truncated": r.truncated,
               "stdout_bytes": len(r.stdout),
               "stderr_tail": r.stderr[-200:].decode(errors="replace")}
              for (kind, _), r in zip(items, results, strict=True)]
    return {"count": count, "workers": workers, "timeout": timeout, "max_output": max_output,
            "wall_seconds": round(wall, 2),
            "verdicts": dict(Counter(g["verdict"] for g in graded)),
            "results": graded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="snippets to grade")
    parser.add_argument("--workers", type=int, default=4, help="containers at a time")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per snippet")
    parser.add_argument("--max-output", type=int, default=4096,
                        help="bytes of stdout/stderr kept per snippet")
    parser.add_argument("--json", action="store_true", help="print every verdict as JSON")
    args = parser.parse_args(argv)
    report = grade(args.count, args.workers, args.timeout, args.max_output)
    if args.json:
        print(json.dumps(report))
        return 0
    by_kind: dict[str, Counter[str]] = {}
    for g in report["results"]:
        by_kind.setdefault(g["kind"], Counter())[g["verdict"]] += 1
    print(f"graded {report['count']} snippets in {report['wall_seconds']}s "
          f"({report['count'] / report['wall_seconds']:.1f}/s, {args.workers} at a time)")
    for kind, counts in by_kind.items():
        shown = ", ".join(f"{v}: {n}" for v, n in sorted(counts.items()))
        print(f"  {kind:<8} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
