"""Bridge throughput and keystroke latency vs raw read loops, side by side in one run.

    python3 benchmarks/bench_bridge.py [--mib 200] [--keys 2000]

Needs root and liblxc.  Creates one busybox container named ``lxcbind-bench-<uuid8>`` and
destroys it in ``finally``.  Rows:

* pty throughput: ``head -c N /dev/zero`` on a raw container pty; the baseline reads the master
  with blocking ``os.read`` until EIO, the bridge is ``Container.run(tty=True, tty_raw=True)``
  with a 1 MiB head+tail capture (so memory stays bounded).
* pipe throughput: the same through a pipe; ``Container.run()`` with the same capture.
* keystroke round trip: one byte written, echoed back by ``cat`` on a raw pty.  The baseline
  writes/reads the master directly; the bridge sits between two host pipes and the master
  (the path a keystroke takes in ``interact``), run by ``bridge.Bridge`` in a thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

from _common import bench_container

from lxcbind import Container
from lxcbind.proc import pty as lpty
from lxcbind.proc.bridge import Bridge


def make_container() -> Container:
    return bench_container()


def container_pty(c: Container) -> lpty.PtyPair:
    devpts = c.devpts_fd()
    try:
        pair = lpty.open_pty(devpts)
    finally:
        os.close(devpts)
    lpty.set_winsize(pair.master, 24, 80)
    lpty.set_raw(pair.slave)
    return pair


def raw_pty_throughput(c: Container, n: int) -> float:
    pair = container_pty(c)
    try:
        t = time.perf_counter()
        proc = c.attach(["head", "-c", str(n), "/dev/zero"], stdin=pair.slave, stdout=pair.slave,
                        stderr=pair.slave)
        pair.close_slave()
        got = 0
        while True:
            try:
                chunk = os.read(pair.master, 65536)
            except OSError:  # EIO: every slave fd closed
                break
            if not chunk:
                break
            got += len(chunk)
        proc.wait()
        elapsed = time.perf_counter() - t
    finally:
        pair.close()
    assert got == n, (got, n)
    return elapsed


def raw_pipe_throughput(c: Container, n: int) -> float:
    r, w = os.pipe2(os.O_CLOEXEC)
    import fcntl
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    try:
        t = time.perf_counter()
        proc = c.attach(["head", "-c", str(n), "/dev/zero"], stdout=w)
        os.close(w)
        w = -1
        got = 0
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            got += len(chunk)
        proc.wait()
        elapsed = time.perf_counter() - t
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert got == n, (got, n)
    return elapsed


def bridge_throughput(c: Container, n: int, tty: bool) -> float:
    t = time.perf_counter()
    r = c.run(["head", "-c", str(n), "/dev/zero"], tty=tty, tty_raw=tty, max_output=1 << 20)
    elapsed = time.perf_counter() - t
    assert r.returncode == 0 and len(r.stdout) + r.stdout_omitted == n, r
    return elapsed


def raw_keystrokes(c: Container, count: int) -> list[float]:
    pair = container_pty(c)
    proc = c.attach(["cat"], stdin=pair.slave, stdout=pair.slave, stderr=pair.slave)
    pair.close_slave()
    times = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            os.write(pair.master, b"k")
            got = os.read(pair.master, 16)
            times.append(time.perf_counter() - t)
            assert got == b"k", got
    finally:
        proc.close()
        pair.close()
    return times


def bridge_keystrokes(c: Container, count: int) -> list[float]:
    pair = container_pty(c)
    proc = c.attach(["cat"], stdin=pair.slave, stdout=pair.slave, stderr=pair.slave)
    pair.close_slave()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    bridge = Bridge(proc, pgid=proc.pid, to_child=pair.master, input_fd=in_r,
                    outputs=[(pair.master, out_w)], pty_master=pair.master, ready_wait=0)
    thread = threading.Thread(target=bridge.run)
    thread.start()
    times = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            os.write(in_w, b"k")
            got = os.read(out_r, 16)
            times.append(time.perf_counter() - t)
            assert got == b"k", got
    finally:
        proc.kill()
        thread.join(10)
        proc.close()
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        pair.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_bridge")
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for throughput")
    args = parser.parse_args()
    n = args.mib << 20
    c = make_container()
    try:
        def best(fn, *a):
            return min(fn(c, *a) for _ in range(args.repeat))

        rows = []
        raw_pty = best(raw_pty_throughput, n)
        br_pty = best(bridge_throughput, n, True)
        rows.append(("pty throughput MiB/s", args.mib / raw_pty, args.mib / br_pty,
                      raw_pty / br_pty, ">= 0.90"))
        raw_pipe = best(raw_pipe_throughput, n)
        br_pipe = best(bridge_throughput, n, False)
        rows.append(("pipe throughput MiB/s", args.mib / raw_pipe, args.mib / br_pipe,
                     raw_pipe / br_pipe, ">= 0.50"))
        raw_keys = statistics.median(raw_keystrokes(c, args.keys)) * 1e6
        br_keys = statistics.median(bridge_keystrokes(c, args.keys)) * 1e6
        rows.append(("keystroke round trip us (median)", raw_keys, br_keys, br_keys / raw_keys,
                     "<= 2.00"))
    finally:
        c.destroy()
        c.close()
    print(f"{'measure':34} {'raw':>10} {'bridge':>10} {'ratio':>7}  target")
    for name, raw, br, ratio, target in rows:
        print(f"{name:34} {raw:10.1f} {br:10.1f} {ratio:7.2f}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
