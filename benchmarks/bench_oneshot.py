"""One-shot cost: set up a container, run /bin/true, tear down.

Compared in one run (as root):
  * `python -m lxcbind run` (the whole CLI process, Python start-up included), host rootfs and
    busybox overlay;
  * the same through the Python API (`lxcbind.run`), host and busybox;
  * the lxc-* program sequence with a template: lxc-create -t busybox, lxc-start, lxc-attach,
    lxc-destroy -f;
  * the lxc-* program sequence on a cached base: lxc-copy -s (overlay snapshot clone),
    lxc-start, lxc-attach, lxc-destroy -f.
Prints medians and ratios; asserts nothing.   python3 benchmarks/bench_oneshot.py [-n 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid

from _common import lxc_clone_sequence, quiet, samples_ms

import lxcbind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lxcbind.__file__)))  # its checkout

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}


def timed(fn, n: int) -> list[float]:
    return samples_ms(fn, n)  # one warm-up call builds the cached bases


def with_rootfs(kind: str) -> dict:
    return {**POLICY, "lxc": {"rootfs": kind}}


def cli_run(kind: str) -> None:
    subprocess.run([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-"],
                   input=json.dumps(with_rootfs(kind)).encode(), check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


NET_CONF = "/tmp/lxcbind-bench-net.conf"  # no network device (lxcbr0 may not exist)


def lxc_template_sequence() -> None:
    name = f"lxcbind-bench-{uuid.uuid4().hex[:8]}"
    try:
        quiet("lxc-create", "-n", name, "-t", "busybox", "-f", NET_CONF)
        quiet("lxc-start", "-n", name)
        quiet("lxc-attach", "-n", name, "--clear-env", "--", "/bin/true")
    finally:
        subprocess.run(["lxc-destroy", "-f", "-n", name], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    n = ap.parse_args().n
    base = f"lxcbind-bench-base-{uuid.uuid4().hex[:6]}"
    with open(NET_CONF, "w") as f:
        f.write("lxc.net.0.type = empty\n")
    try:
        quiet("lxc-create", "-n", base, "-t", "busybox", "-f", NET_CONF)
        rows = {
            "lxc-create/start/attach/destroy (template)": timed(lxc_template_sequence, n),
            "lxc-copy -s/start/attach/destroy (cached base)":
                timed(lambda: lxc_clone_sequence(base), n),
            "python -m lxcbind run (host rootfs)": timed(lambda: cli_run("host"), n),
            "python -m lxcbind run (busybox overlay)": timed(lambda: cli_run("busybox"), n),
            "lxcbind.run() API (host rootfs)": timed(lambda: lxcbind.run(with_rootfs("host")), n),
            "lxcbind.run() API (busybox overlay)":
                timed(lambda: lxcbind.run(with_rootfs("busybox")), n),
        }
    finally:
        subprocess.run(["lxc-destroy", "-f", "-n", base], capture_output=True)
    template = statistics.median(rows["lxc-create/start/attach/destroy (template)"])
    clone = statistics.median(rows["lxc-copy -s/start/attach/destroy (cached base)"])
    print(f"{'one-shot /bin/true':48} {'median ms':>10} {'vs template':>12} {'vs clone':>9}")
    for label, xs in rows.items():
        med = statistics.median(xs)
        print(f"{label:48} {med:10.1f} {template / med:11.1f}x {clone / med:8.1f}x")


if __name__ == "__main__":
    main()
