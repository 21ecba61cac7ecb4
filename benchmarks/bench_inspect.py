"""File transfer through the spawner, and the Inspect provider against Inspect's ``local``.

Run as root:  PYTHONPATH=. python3 benchmarks/bench_inspect.py [-n 30] [--big-mib 2048]

1. ``Sandbox.put``/``get`` of 64 KiB from this process at its start-up size (~30 MiB RSS) and
   again holding ``--big-mib`` MiB of touched memory, beside ``Session.run(["true"])`` and
   the attach path put/get used before (one liblxc attach per call: ``Container.run`` of
   ``cat``), whose cost grows with the caller's memory.
2. Inspect's ``lxcbind`` provider vs its ``local`` provider (needs ``lxcbind[inspect]``):
   sample init + cleanup, ``exec(["true"])``, ``write_file``/``read_file`` of 64 KiB and
   10 MiB.  Medians in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import lxcbind
from lxcbind.proc.runner import run as attach_run


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _median_ms(fn: Callable[[], object], n: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def files(n: int, big_mib: int) -> None:
    blob = b"x" * 65536
    hold = bytearray()
    with lxcbind.Sandbox({"version": "0.8.0"}) as box:
        for label in ("small", "big"):
            if label == "big":
                hold = bytearray(big_mib << 20)
                for i in range(0, len(hold), 4096):
                    hold[i] = 1
            row = {
                "put 64 KiB": _median_ms(lambda: box.put("/tmp/b", blob), n),
                "get 64 KiB": _median_ms(lambda: box.get("/tmp/b"), n),
                "Session command (true)": _median_ms(lambda: box.run(["true"]), n),
                "attach cat (old put path)": _median_ms(
                    lambda: attach_run(box.container, ["/bin/sh", "-c", "cat > /tmp/b"],
                                       input=blob), n),
            }
            print(f"caller RSS {_rss_mib():.0f} MiB: "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()))
    del hold


async def _amedian_ms(fn: Callable[[], Awaitable[object]], n: int) -> float:
    for _ in range(3):
        await fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def provider(cls: type, config: object, n: int) -> dict[str, float]:
    async def cycle() -> None:
        envs = await cls.sample_init("bench", config, {})
        await cls.sample_cleanup("bench", config, envs, False)

    row = {"sample init+cleanup": await _amedian_ms(cycle, max(3, n // 5))}
    envs = await cls.sample_init("bench", config, {})
    env = envs["default"]
    try:
        small, big = b"y" * 65536, b"z" * (10 << 20)
        row["exec true"] = await _amedian_ms(lambda: env.exec(["true"]), n)
        row["write 64 KiB"] = await _amedian_ms(lambda: env.write_file("s.bin", small), n)
        row["read 64 KiB"] = await _amedian_ms(lambda: env.read_file("s.bin", text=False), n)
        row["write 10 MiB"] = await _amedian_ms(lambda: env.write_file("b.bin", big), 5)
        row["read 10 MiB"] = await _amedian_ms(lambda: env.read_file("b.bin", text=False), 5)
    finally:
        await cls.sample_cleanup("bench", config, envs, False)
    return row


def inspect_side_by_side(n: int) -> None:
    from inspect_ai.util._sandbox.local import LocalSandboxEnvironment

    from lxcbind.inspect import LxcbindSandboxEnvironment

    ours = asyncio.run(provider(LxcbindSandboxEnvironment, None, n))
    local = asyncio.run(provider(LocalSandboxEnvironment, None, n))
    print(f"{'operation':<22}{'lxcbind':>10}{'local':>10}{'ratio':>8}")
    for key in ours:
        print(f"{key:<22}{ours[key]:>10.2f}{local[key]:>10.2f}{ours[key] / local[key]:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--big-mib", type=int, default=2048)
    args = parser.parse_args()
    files(args.n, args.big_mib)   # first: before Inspect's imports grow this process
    inspect_side_by_side(args.n)


if __name__ == "__main__":
    main()
