"""Network setup cost: a one-shot `lxcbind.run` of /bin/true with a networked policy vs one
with no network device (deny-all), host rootfs, through the Python API.

Networked (egress default allow, so NAT too): lease + anchor bridge creation (first and last
user: every run here, nothing else runs) + nft tables before start + routed veth by liblxc +
resolv.conf; teardown deletes tables, lease, anchor.  A second networked variant keeps one
long-lived networked container running so the anchor stays (the steady state under load).
Prints medians and ratios; asserts nothing.   python3 benchmarks/bench_network.py [-n 20]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import lxcbind

NO_NET = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}
NET = {**NO_NET, "network": {"egress": {"default": "allow"}}}
RULES = {**NO_NET, "network": {"egress": {"allow": [
    {"to": [{"cidr": f"198.18.{i}.0/24"}], "ports": [{"protocol": "tcp", "port": 443}]}
    for i in range(100)]}}}


def timed(policy: dict, n: int) -> list[float]:
    lxcbind.run(policy)  # warm-up (cached base)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        r = lxcbind.run(policy)
        samples.append((time.perf_counter() - t) * 1000)
        assert r.returncode == 0, r.stderr
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    n = ap.parse_args().n
    rows = [("no network device (deny-all)", timed(NO_NET, n)),
            ("networked, anchor created+removed per run", timed(NET, n)),
            ("networked, 100 allow rules", timed(RULES, n))]
    # Keep one networked container alive: the anchor then outlives each measured run.
    ready, stop = threading.Event(), threading.Event()

    def holder() -> None:
        with lxcbind.Sandbox({**NET, "process": {"commandLine": "sleep 600"}}):
            ready.set()
            stop.wait()

    t = threading.Thread(target=holder)
    t.start()
    ready.wait(60)
    try:
        rows.append(("networked, anchor already up", timed(NET, n)))
    finally:
        stop.set()
        t.join()
    base = statistics.median(rows[0][1])
    print(f"one-shot lxcbind.run(/bin/true), host rootfs, n={n}, median ms")
    for label, samples in rows:
        med = statistics.median(samples)
        print(f"  {label:45s} {med:8.1f} ms   x{med / base:.2f}")


if __name__ == "__main__":
    main()
