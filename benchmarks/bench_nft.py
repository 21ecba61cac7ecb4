"""Network rules: time to compile and apply one container's ruleset with 1, 100 and 1000
CIDR allow rules (scattered /32s, so the set cannot collapse them), as root, inside a
throwaway network namespace (``lxcbind-bench-<uuid8>``, removed afterwards; the host's own
rules are never touched).

Compared in one run:
  * compile (``lxcbind.net.ruleset.compile_ruleset`` on an already parsed policy, pure Python);
  * apply through ``lxcbind.lxc.nftables.Nft`` (libnftables in-process, one transaction);
  * the same script through ``ip netns exec NS nft -f -`` (two fork+execs, a namespace
    switch and the same library: what a spawning implementation would pay);
  * a naive ruleset with one rule per CIDR instead of a set (in-process), to show what the
    sets save.
Prints medians in milliseconds; asserts nothing.   python3 benchmarks/bench_nft.py [-n 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

from lxcbind.lxc.nftables import Nft
from lxcbind.net.ruleset import compile_ruleset, resolve_destinations, table_name
from lxcbind.policy.parse import load_policy


def cidrs(count: int) -> list[str]:
    # one address every 7th in 10/8: never adjacent, so 1000 rules stay 1000 set elements
    return [f"10.{(i * 7) // 65536 % 256}.{(i * 7) // 256 % 256}.{(i * 7) % 256}"
            for i in range(count)]


def effective_for(count: int):
    allow = [{"to": [{"cidr": c}], "ports": [{"protocol": "tcp", "port": 443}]}
             for c in cidrs(count)]
    return load_policy({"version": "0.8.0", "process": {"commandLine": "true"},
                        "network": {"egress": {"allow": allow}}}).network.effective()


def script_for(eff) -> str:
    return compile_ruleset(table=table_name("bench"), veth="vhbench", container_v4="198.18.0.2",
                           container_v6="fd00:198:18:1::2", gateway_v4="198.18.0.1",
                           gateway_v6="fd00:198:18:1::1", eff=eff,
                           resolved=resolve_destinations(eff, lambda *a: []))


def naive_for(count: int) -> str:
    t = table_name("naive")
    rules = "\n".join(f"        ip daddr {c} tcp dport 443 accept" for c in cidrs(count))
    return (f"add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n"
            f"    chain egress {{\n        type filter hook forward priority filter; "
            f"policy accept;\n{rules}\n        drop\n    }}\n}}\n")


def median_ms(fn, n: int) -> float:
    fn()   # warm-up
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="samples per measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_nft: needs root (it creates a network namespace)")
    ns = f"lxcbind-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with Nft(f"/run/netns/{ns}") as nft:
            print(f"{'rules':>6} {'compile':>9} {'apply':>9} {'nft -f':>9} {'naive':>9}   (ms)")
            for count in (1, 100, 1000):
                eff = effective_for(count)
                text, naive = script_for(eff), naive_for(count)
                compile_ms = median_ms(lambda e=eff: script_for(e), args.n)
                apply_ms = median_ms(lambda t=text: nft.apply(t), args.n)
                prog_ms = median_ms(lambda t=text: subprocess.run(
                    ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=t.encode(),
                    check=True), args.n)
                naive_ms = median_ms(lambda t=naive: nft.apply(t), args.n)
                print(f"{count:>6} {compile_ms:>9.2f} {apply_ms:>9.2f} {prog_ms:>9.2f} "
                      f"{naive_ms:>9.2f}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
