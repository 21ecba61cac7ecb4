"""The one-shot path at its floor: issue #15's targets, side by side in one run (as root).

  * ``lxcbind.run()`` of ``/bin/true`` under a no-network policy (unprivileged: the default),
    and where its time goes (perf counters around the liblxc calls);
  * ``python -m lxcbind run`` of the same policy against ``python3 -c pass`` (same interpreter,
    same environment, interleaved);
  * ``python3 -X importtime`` of that CLI run: lxcbind's own modules, and the standard-library
    modules it adds to ``python3 -c pass``;
  * ``Container.start()`` against ``lxc-start`` of the very same container (same config file),
    interleaved, each followed by a hard stop.
Prints medians and ratios; asserts nothing.      python3 benchmarks/bench_floor.py [-n 20]

Bytecode is compiled first (``compileall``), as an installed package has it: with
``PYTHONDONTWRITEBYTECODE`` and no ``__pycache__``, every start-up would compile lxcbind's
sources again and the import figures would measure the compiler.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import lxcbind  # noqa: E402
from lxcbind.lxc import container as _container

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}   # 0.8: no network
TARGETS = {"run": 20.0, "cli_over_pass": 40.0, "own_imports": 15.0}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# -- lxcbind.run() and its liblxc calls --------------------------------------------------------

def run_breakdown(n: int) -> tuple[list[float], dict[str, float]]:
    """Medians of run() and of the time spent in each Container method it calls, exclusive
    (``destroy`` calls ``stop`` first: that time counts as ``stop``)."""
    spent: dict[str, list[float]] = collections.defaultdict(list)
    current: dict[str, float] = collections.defaultdict(float)
    nested: list[float] = []   # per active call: time of the calls made inside it
    originals = {}
    for name in ("start", "attach", "stop", "destroy", "save_config", "set_config_item"):
        original = getattr(_container.Container, name)
        originals[name] = original

        def timed(self, *a, _f=original, _n=name, **k):  # type: ignore[no-untyped-def]
            nested.append(0.0)
            t = time.perf_counter()
            try:
                return _f(self, *a, **k)
            finally:
                took = (time.perf_counter() - t) * 1000
                current[_n] += took - nested.pop()
                if nested:
                    nested[-1] += took
        setattr(_container.Container, name, timed)
    try:
        lxcbind.run(POLICY)
        totals = []
        for _ in range(n):
            current.clear()
            t = time.perf_counter()
            lxcbind.run(POLICY)
            totals.append((time.perf_counter() - t) * 1000)
            for name in originals:
                spent[name].append(current[name])
    finally:
        for name, original in originals.items():
            setattr(_container.Container, name, original)
    return totals, {name: med(xs) for name, xs in spent.items()}


# -- the CLI against python3 -c pass -----------------------------------------------------------

def cli_vs_pass(n: int, policy_path: str) -> tuple[list[float], list[float]]:
    cli = [sys.executable, "-m", "lxcbind", "run", "--no-tty", policy_path]
    bare = [sys.executable, "-c", "pass"]

    def once(argv: list[str]) -> float:
        t = time.perf_counter()
        subprocess.run(argv, check=True, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL)
        return (time.perf_counter() - t) * 1000

    once(cli), once(bare)
    a, b = [], []
    for _ in range(n):   # interleaved: both see the same machine load
        a.append(once(cli))
        b.append(once(bare))
    return a, b


def importtime(argv: list[str], n: int = 5) -> dict[str, int]:
    """Self time (µs, the minimum of n runs) of each module imported by ``argv``."""
    best: dict[str, int] = {}
    for _ in range(n):
        err = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT, env=ENV,
                             capture_output=True, stdin=subprocess.DEVNULL).stderr.decode()
        for line in err.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                self_us, _, name = line.split(":", 1)[1].split("|")
                name = name.strip()
                best[name] = min(best.get(name, 1 << 30), int(self_us))
    return best


# -- start() against lxc-start of the same container -------------------------------------------

def start_vs_lxc_start(n: int) -> tuple[list[float], list[float], float]:
    """A sandbox is set up (defined, started) as a run would, then stopped; its container is
    started again and again, alternately through ``Container.start()`` and ``lxc-start``."""
    if not shutil.which("lxc-start"):
        return [], [], 0.0
    ours, theirs = [], []
    with lxcbind.Sandbox(POLICY) as box:
        c = box.container
        assert c is not None
        c.stop()
        t = time.perf_counter()
        c.start()
        first = (time.perf_counter() - t) * 1000
        c.stop()
        for _ in range(n):
            t = time.perf_counter()
            c.start()
            ours.append((time.perf_counter() - t) * 1000)
            c.stop()
            t = time.perf_counter()
            subprocess.run(["lxc-start", "-n", box.name, "-P", box.lxcpath], check=True,
                           stdin=subprocess.DEVNULL)
            theirs.append((time.perf_counter() - t) * 1000)
            subprocess.run(["lxc-stop", "-k", "-n", box.name, "-P", box.lxcpath], check=True,
                           stdin=subprocess.DEVNULL)
        c.start()   # the sandbox's teardown expects it running (it kills, stops, destroys)
    return ours, theirs, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20)
    n = parser.parse_args().n
    compileall.compile_dir(os.path.join(ROOT, "lxcbind"), quiet=1)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(POLICY, f)
    try:
        run_ms, parts = run_breakdown(n)
        cli_ms, pass_ms = cli_vs_pass(n, f.name)
        base = importtime(["-c", "pass"])
        full = importtime(["-m", "lxcbind", "run", "--no-tty", f.name])
        ours, theirs, first_start = start_vs_lxc_start(n)
    finally:
        os.unlink(f.name)

    own = {k: v for k, v in full.items() if k == "lxcbind" or k.startswith("lxcbind.")}
    extra = {k: v for k, v in full.items() if k not in own and k not in base}
    own_ms, extra_ms = sum(own.values()) / 1000, sum(extra.values()) / 1000
    over = med(cli_ms) - med(pass_ms)

    print(f"one-shot floor, medians of {n} ({os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f})")
    print(f"{'':44} {'ms':>8} {'target':>8} {'vs target':>10}")
    print(f"{'lxcbind.run() /bin/true, no network':44} {med(run_ms):8.1f} "
          f"{TARGETS['run']:8.1f} {med(run_ms) / TARGETS['run']:9.2f}x")
    print(f"{'python -m lxcbind run (whole process)':44} {med(cli_ms):8.1f}")
    print(f"{'python3 -c pass':44} {med(pass_ms):8.1f}")
    print(f"{'  CLI minus python3 -c pass':44} {over:8.1f} {TARGETS['cli_over_pass']:8.1f} "
          f"{over / TARGETS['cli_over_pass']:9.2f}x   (CLI = {med(cli_ms) / med(pass_ms):.1f}x pass)")
    print(f"{'importtime: lxcbind modules (self, sum)':44} {own_ms:8.1f} "
          f"{TARGETS['own_imports']:8.1f} {own_ms / TARGETS['own_imports']:9.2f}x")
    print(f"{'importtime: stdlib beyond -c pass (sum)':44} {extra_ms:8.1f}")
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:8]
    print("    largest: " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in top))
    top = sorted(own.items(), key=lambda kv: -kv[1])[:6]
    print("    lxcbind: " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in top))
    print()
    print("where run() goes (ms, medians, liblxc calls through Container): " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
          + f"; the rest (Python, files, waiting for the command) "
          f"{med(run_ms) - sum(parts.values()):.1f}")
    if ours:
        print(f"{'Container.start() (same container, warm)':44} {med(ours):8.1f}")
        print(f"{'lxc-start (same config, a new process)':44} {med(theirs):8.1f}"
              f"   start() = {med(ours) / med(theirs):.2f}x lxc-start")
        print(f"{'first start() after a pause (this run)':44} {first_start:8.1f}")


if __name__ == "__main__":
    main()
