"""What isolation costs: the default (unprivileged: user namespace, capability keep-list,
no_new_privs, seccomp, limits) against ``lxc.privileged: true`` (root inside is root
outside), side by side in one run, interleaved so that machine noise hits both alike.

Measured, medians in ms:
  * ``lxcbind.run()`` one-shot of /bin/true (host rootfs), and its ``start()`` alone;
  * the CLI one-shot (``python -m lxcbind run``), interpreter start-up included;
  * ``Session.from_policy`` start, then one Session command (``/bin/true``);
  * a warm ``Container.attach`` of /bin/true in the sandbox's container;
  * host fork+exec of /bin/true (``subprocess.run``), the floor for a Session command.
Prints ratios (unprivileged / privileged, and Session command / host fork+exec); asserts
nothing.     python3 benchmarks/bench_isolation.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import lxcbind
from lxcbind.lxc import container as container_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lxcbind.__file__)))  # its checkout

UNPRIVILEGED = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}
PRIVILEGED = {**UNPRIVILEGED, "lxc": {"privileged": True}}
MODES = {"unprivileged": UNPRIVILEGED, "privileged": PRIVILEGED}


def ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def cli(policy: dict) -> None:
    subprocess.run([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-"], check=True,
                   input=json.dumps(policy).encode(), cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20)
    n = parser.parse_args().n
    samples: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}

    def add(mode: str, what: str, value: float) -> None:
        samples[mode].setdefault(what, []).append(value)

    starts: list[float] = []
    real_start = container_module.Container.start

    def timed_start(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return real_start(self, *args, **kwargs)
        finally:
            starts.append((time.perf_counter() - t) * 1000)

    container_module.Container.start = timed_start  # type: ignore[method-assign]
    for policy in MODES.values():  # warm-up: bases and shifted copies exist after this
        lxcbind.run(policy)
    for _ in range(n):
        for mode, policy in MODES.items():
            starts.clear()
            add(mode, "lxcbind.run() one-shot", ms(lambda p=policy: lxcbind.run(p)))
            add(mode, "  of which start()", starts[-1])
            add(mode, "CLI one-shot", ms(lambda p=policy: cli(p)))
    host = [ms(lambda: subprocess.run(["/bin/true"])) for _ in range(n * 5)]
    for mode, policy in MODES.items():
        for _ in range(max(3, n // 4)):
            session_holder: list[lxcbind.Session] = []
            add(mode, "Session start", ms(lambda h=session_holder, p=policy: h.append(
                lxcbind.Session.from_policy(p))))
            with session_holder[0] as session:
                session.run(["/bin/true"])
                for _ in range(n * 2):
                    add(mode, "Session command",
                        ms(lambda s=session: s.run(["/bin/true"])))
        with lxcbind.Sandbox(policy) as box:
            c = box.container
            c.run(["/bin/true"])
            for _ in range(n * 2):
                add(mode, "Container.attach (warm)", ms(lambda c=c: c.run(["/bin/true"])))

    print(f"{'':28} {'unprivileged':>13} {'privileged':>11} {'ratio':>7}   (medians, ms, n={n})")
    for what in samples["unprivileged"]:
        u = statistics.median(samples["unprivileged"][what])
        p = statistics.median(samples["privileged"][what])
        print(f"{what:28} {u:13.2f} {p:11.2f} {u / p:7.2f}x")
    floor = statistics.median(host)
    print(f"{'host fork+exec /bin/true':28} {floor:13.2f}")
    cmd = statistics.median(samples["unprivileged"]["Session command"])
    print(f"Session command (unprivileged) / host fork+exec: {cmd / floor:.2f}x")


if __name__ == "__main__":
    main()
