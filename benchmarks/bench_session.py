"""Warm per-command latency: lxcbind Session vs the other ways into a running container.

Run as root:  python3 benchmarks/bench_session.py [-n 300] [--big-mib 1024]

Measured in one run on one busybox container (``lxcbind-bench-<uuid8>``, destroyed in
``finally``), each method warm (20 unmeasured calls first), for ``/bin/true`` and for
``echo hi`` with its output captured:

* ``session``        ``Session.run`` (resident spawner, vfork-style clone per command)
* ``attach``         ``Container.attach`` + wait (``/bin/true``) / ``Container.run`` (echo):
                     one liblxc attach per command
* ``lxc-attach``     the ``lxc-attach`` program
* ``nsenter``        ``nsenter -t <init pid> -a`` (namespaces only: no cgroup, caps, LSM)
* ``python3-lxc``    the official binding, only if ``/usr/bin/python3`` can import it
* ``host``           ``subprocess.run`` on the host (the fork+exec floor for Python)

then again with the caller holding ``--big-mib`` MiB of touched memory (with a Session started
*after* the allocation: its one attach forks the big caller before the spawner program is
exec'd), then
commands per second through ``Session.map`` with 1 and 2 workers.  Prints medians, p95 and
ratios; writes the figures to ``benchmarks/results/bench_session-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import bench_container, samples_ms

from lxcbind import Container
from lxcbind.sandbox.core import Session

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 20


def make_container(name: str) -> Container:
    return bench_container(name)


def measure(fn: Callable[[], object], n: int, warmup: int = WARMUP) -> dict[str, float]:
    times = sorted(samples_ms(fn, n, warm=warmup))
    return {
        "n": n,
        "median_ms": statistics.median(times),
        "p95_ms": times[min(n - 1, int(n * 0.95))],
        "mean_ms": statistics.fmean(times),
        "min_ms": times[0],
    }


def checked(fn: Callable[[], object], expect: bytes | None) -> Callable[[], object]:
    """Run once and check the output, so a broken method cannot post a fast number."""
    out = fn()
    if expect is not None:
        got = getattr(out, "stdout", out)
        if got != expect:
            raise RuntimeError(f"unexpected output {got!r}")
    return fn


def methods(c: Container, session: Session | None, devnull: int,
            have_pylxc: bool) -> dict[str, dict[str, Callable[[], object]]]:
    init = str(c.init_pid)
    name, path = c.name, c.lxcpath
    m: dict[str, dict[str, Callable[[], object]]] = {}
    if session is not None:
        m["session"] = {
            "true": lambda: session.run(["/bin/true"]),
            "echo": lambda: session.run(["echo", "hi"]),
        }
    m["attach"] = {
        "true": lambda: c.attach(["/bin/true"], stdout=devnull, stderr=devnull).wait(),
        "echo": lambda: c.run(["echo", "hi"]),
    }
    m["lxc-attach"] = {
        "true": lambda: subprocess.run(["lxc-attach", "-n", name, "-P", path, "--", "/bin/true"],
                                       stdin=subprocess.DEVNULL),
        "echo": lambda: subprocess.run(["lxc-attach", "-n", name, "-P", path, "--", "echo", "hi"],
                                       stdin=subprocess.DEVNULL, capture_output=True),
    }
    if shutil.which("nsenter"):
        m["nsenter"] = {
            "true": lambda: subprocess.run(["nsenter", "-t", init, "-a", "/bin/true"],
                                           stdin=subprocess.DEVNULL),
            "echo": lambda: subprocess.run(["nsenter", "-t", init, "-a", "echo", "hi"],
                                           stdin=subprocess.DEVNULL, capture_output=True),
        }
    if have_pylxc:
        # The official binding lives in the system python: one persistent helper process
        # would be fairer, but a per-call helper is all we can do without importing it here.
        m["python3-lxc"] = {}  # filled by pylxc_figures()
    m["host"] = {
        "true": lambda: subprocess.run(["/bin/true"]),
        "echo": lambda: subprocess.run(["echo", "hi"], capture_output=True),
    }
    return m


PYLXC_SCRIPT = r"""
import json, os, statistics, sys, time, lxc
c = lxc.Container(sys.argv[1], sys.argv[2]); n = int(sys.argv[3])
def one(prog):
    return c.attach_wait(lxc.attach_run_command, prog, stdout=devnull, stderr=devnull,
                         stdin=devnull)
devnull = os.open(os.devnull, os.O_RDWR)
out = {}
for key, prog in (("true", ["/bin/true"]), ("echo", ["echo", "hi"])):
    for _ in range(20): one(prog)
    t = []
    for _ in range(n):
        s = time.perf_counter(); one(prog); t.append(time.perf_counter() - s)
    t.sort()
    out[key] = {"n": n, "median_ms": statistics.median(t) * 1e3,
                "p95_ms": t[min(n - 1, int(n * 0.95))] * 1e3}
print(json.dumps(out))
"""


def pylxc_available() -> bool:
    py = "/usr/bin/python3"
    if not os.path.exists(py):
        return False
    return subprocess.run([py, "-c", "import lxc"], capture_output=True).returncode == 0


def pylxc_figures(c: Container, n: int) -> dict[str, dict[str, float]]:
    out = subprocess.run(["/usr/bin/python3", "-c", PYLXC_SCRIPT, c.name, c.lxcpath, str(n)],
                         capture_output=True, check=True, text=True)
    return json.loads(out.stdout)


def table(title: str, figures: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"\n== {title}")
    host = figures.get("host", {})
    sess = figures.get("session", {})
    print(f"{'method':<14}{'cmd':<6}{'median ms':>10}{'p95 ms':>9}{'x host':>8}{'x session':>10}")
    for method, per in figures.items():
        for cmd, f in per.items():
            xh = f["median_ms"] / host[cmd]["median_ms"] if cmd in host else float("nan")
            xs = f["median_ms"] / sess[cmd]["median_ms"] if cmd in sess else float("nan")
            print(f"{method:<14}{cmd:<6}{f['median_ms']:>10.3f}{f['p95_ms']:>9.3f}"
                  f"{xh:>8.2f}{xs:>10.2f}")


def run_all(c: Container, session: Session | None, n: int, slow_n: int, devnull: int,
            have_pylxc: bool) -> dict[str, dict[str, dict[str, float]]]:
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for method, per in methods(c, session, devnull, have_pylxc).items():
        if method == "python3-lxc":
            figures[method] = pylxc_figures(c, slow_n)
            continue
        figures[method] = {}
        for cmd, fn in per.items():
            expect = b"hi\n" if cmd == "echo" and method in ("session", "attach") else None
            count = n if method in ("session", "host") else slow_n
            figures[method][cmd] = measure(checked(fn, expect), count)
    return figures


def throughput(session: Session, count: int) -> dict[str, float]:
    out = {}
    for workers in (1, 2):
        session.map([["/bin/true"]] * 50, workers=workers)
        t = time.perf_counter()
        results = session.map([["/bin/true"]] * count, workers=workers)
        elapsed = time.perf_counter() - t
        assert all(r.returncode == 0 for r in results)
        out[f"workers_{workers}"] = count / elapsed
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_session.py")
    parser.add_argument("-n", type=int, default=300, help="samples for session and host")
    parser.add_argument("--slow-n", type=int, default=100, help="samples for attach, CLIs")
    parser.add_argument("--big-n", type=int, default=30, help="attach samples at big RSS")
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--throughput", type=int, default=3000)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2

    have_pylxc = pylxc_available()
    name = f"lxcbind-bench-{uuid.uuid4().hex[:8]}"
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "container": name,
        "python3_lxc": "measured" if have_pylxc else "not importable by /usr/bin/python3: skipped",
    }
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    c = make_container(name)
    try:
        t = time.perf_counter()
        session = Session(c)
        report["session_start_ms"] = (time.perf_counter() - t) * 1e3
        try:
            small = run_all(c, session, args.n, args.slow_n, devnull, have_pylxc)
            report["small_caller"] = small
            table(f"small caller (RSS {_rss_kib() // 1024} MiB)", small)
            report["throughput_cmds_per_s"] = tp = throughput(session, args.throughput)
            print(f"\n== Session.map /bin/true: {tp['workers_1']:.0f} cmd/s (1 worker), "
                  f"{tp['workers_2']:.0f} cmd/s (2 workers)")
        finally:
            session.close()

        big = bytearray(b"\x01") * (args.big_mib << 20)  # every page written
        try:
            t = time.perf_counter()
            big_session = Session(c)  # spawner forked from the big caller
            report["big_session_start_ms"] = (time.perf_counter() - t) * 1e3
            try:
                rss = _rss_kib() // 1024
                figures = run_all(c, big_session, args.n, args.big_n, devnull, False)
                report["big_caller"] = figures
                report["big_caller_rss_mib"] = rss
                table(f"big caller (RSS {rss} MiB; session started after the allocation)",
                      figures)
            finally:
                big_session.close()
        finally:
            del big
    finally:
        try:
            if c.defined:
                c.destroy()
        finally:
            c.close()
            os.close(devnull)

    small = report["small_caller"]
    big = report["big_caller"]
    def med_ms(part: dict[str, Any], way: str, what: str) -> float:
        return float(part[way][what]["median_ms"])

    goals = {
        "session_vs_host_true": med_ms(small, "session", "true") / med_ms(small, "host", "true"),
        "session_vs_host_echo": med_ms(small, "session", "echo") / med_ms(small, "host", "echo"),
        "lxc_attach_vs_session_true":
            med_ms(small, "lxc-attach", "true") / med_ms(small, "session", "true"),
        "big_vs_small_session_true":
            med_ms(big, "session", "true") / med_ms(small, "session", "true"),
        "big_vs_small_session_echo":
            med_ms(big, "session", "echo") / med_ms(small, "session", "echo"),
    }
    report["goals"] = goals
    print("\n== goals")
    print(f"session / host fork+exec  (goal <= 1.5): true {goals['session_vs_host_true']:.2f}, "
          f"echo {goals['session_vs_host_echo']:.2f}")
    print(f"lxc-attach / session      (goal >= 4):   {goals['lxc_attach_vs_session_true']:.1f}")
    print(f"session at big RSS / small (goal <= 2):  "
          f"true {goals['big_vs_small_session_true']:.2f}, "
          f"echo {goals['big_vs_small_session_echo']:.2f}")
    print(f"session start: {report['session_start_ms']:.1f} ms small, "
          f"{report['big_session_start_ms']:.1f} ms big caller")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_session-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
