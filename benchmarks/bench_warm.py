"""A warm server's clients against cold runs, side by side in one run (issue #23: ``run()``
in 10 ms, the CLI within ``python3 -c pass`` + 25 ms).

With one ``python -m lxcbind warm`` server running (``--ready 2``), interleaved ``--rounds``
times, each after a 0.2 s pause (as a command typed or run by a tool, not back to back):

* ``lxcbind.run(["/bin/true"], policy=P, warm=True)`` and the cold ``lxcbind.run`` in this
  process (wall ms; the warm one also ``--rounds`` times back to back at the end);
* ``python -m lxcbind run --warm P -- /bin/true`` handed to the warm CLI server
  (``lxcbind.cliserver``), the same in the CLI's own process (``LXCBIND_WARM_CLI=0``), the
  cold ``python -m lxcbind run P -- /bin/true`` and ``python3 -c pass`` (wall ms, and the CPU
  ms of each process: its own and its children's, from ``wait4``; for the handed-over run
  also the forked CLI's, from the CLI server's reaped-children times: clock ticks, so a mean),
  bytecode compiled;
* the server side's CPU per warm run (the server's threads, its template's cloner and the CLI
  server itself, from ``schedstat``, over the warm rows: a clone's making and teardown, a
  fork; not the clone's own init nor kernel threads), so that the machine's CPU per warm run
  is about client + server.

Prints medians (all rounds' quartiles in brackets) and ratios, the load average before and
after; asserts nothing.      python3 benchmarks/bench_warm.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from _common import describe

import lxcbind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(os.path.abspath(lxcbind.__file__))
POLICY = {"version": "0.8.0", "containerId": f"bench-warm-{os.getpid()}",
          "process": {"commandLine": "/bin/true"}}


def cpu_ms(pids: list[int]) -> float:
    """CPU time of every thread of ``pids`` (``schedstat``: ns, not clock ticks), ms."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError):
                pass
    return total / 1e6


def server_side(server_pid: int) -> tuple[list[int], int]:
    """The server's process, its template's cloner (which makes every clone) and its CLI
    server (0 if none), which is also the last of the list."""
    pids = [server_pid]
    name = f"lxc.payload.{POLICY['containerId']}-warm"
    cli_server = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f, open(f"/proc/{entry}/cgroup") as g:
                    if f.read().strip() == "lxcbind-cloner" and name in g.read():
                        pids.append(int(entry))
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"lxcbind.cliserver" in f.read() and parent(int(entry)) == server_pid:
                        cli_server = int(entry)
            except OSError:
                pass
    return pids + ([cli_server] if cli_server else []), cli_server


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def reaped_ms(pid: int) -> float:
    """CPU of the children ``pid`` has waited for (``cutime`` + ``cstime``), ms."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) * 1000 / os.sysconf("SC_CLK_TCK")


def start_server(path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "warm", path, "--ready", "2"],
                            stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    if not ready or not proc.stdout.readline().startswith(b"serving "):
        proc.kill()
        raise SystemExit("the warm server did not start")
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    compileall.compile_dir(PACKAGE, quiet=1)
    print(describe())
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lxcbind-bench-") as tmp:
        path = os.path.join(tmp, "p.json")
        with open(path, "w") as f:
            json.dump(POLICY, f)
        server = start_server(path)
        try:
            rows = measure(args.rounds, path, server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    report(rows, load_before, args.rounds)


def measure(rounds: int, path: str, server_pid: int) -> dict[str, list[float]]:
    env = dict(os.environ)
    true = ["--", "/bin/true"]
    argvs = {"cli warm": [sys.executable, "-m", "lxcbind", "run", "--warm", "--no-tty", path,
                          *true],
             "cli warm, own process": [sys.executable, "-m", "lxcbind", "run", "--warm",
                                       "--no-tty", path, *true],
             "cli cold": [sys.executable, "-m", "lxcbind", "run", "--no-tty", path, *true],
             "python3 -c pass": [sys.executable, "-c", "pass"]}
    rows: dict[str, list[float]] = {k: [] for k in ("run warm", "run cold", "server cpu",
                                                    "run warm, back to back", "forked cli cpu")}
    for kind in argvs:
        rows[kind] = []
        rows[f"{kind} cpu"] = []

    def api(warm: bool) -> float:
        t = time.perf_counter()
        r = lxcbind.run(["/bin/true"], policy=POLICY, warm=warm)
        took = (time.perf_counter() - t) * 1000
        assert r.returncode == 0, r
        return took

    def cli(kind: str) -> tuple[float, float]:
        own = {**env, "LXCBIND_WARM_CLI": "0"} if kind.endswith("own process") else env
        t = time.perf_counter()
        proc = subprocess.Popen(argvs[kind], cwd=ROOT, env=own, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        took = (time.perf_counter() - t) * 1000
        assert os.waitstatus_to_exitcode(status) == 0, kind
        return took, (usage.ru_utime + usage.ru_stime) * 1000

    for kind in argvs:   # warm-up: bytecode, caches, the server's first clones
        cli(kind)
    api(True)
    api(False)
    side, cli_server = server_side(server_pid)
    if not cli_server:
        raise SystemExit("lxcbind warm started no CLI server")
    for _ in range(rounds):
        time.sleep(0.2)
        before = cpu_ms(side)
        rows["run warm"].append(api(True))
        time.sleep(0.2)
        reaped = reaped_ms(cli_server)
        took, cpu = cli("cli warm")
        rows["forked cli cpu"].append(reaped_ms(cli_server) - reaped)
        rows["cli warm"].append(took)
        rows["cli warm cpu"].append(cpu)
        time.sleep(0.2)
        took, cpu = cli("cli warm, own process")
        rows["cli warm, own process"].append(took)
        rows["cli warm, own process cpu"].append(cpu)
        time.sleep(0.5)   # the server has made the replacement clones by now
        rows["server cpu"].append((cpu_ms(side) - before) / 3)
        time.sleep(0.2)
        rows["run cold"].append(api(False))
        for kind in ("cli cold", "python3 -c pass"):
            time.sleep(0.2)
            took, cpu = cli(kind)
            rows[kind].append(took)
            rows[f"{kind} cpu"].append(cpu)
    for _ in range(rounds):   # back to back: a caller running many one-shot commands
        rows["run warm, back to back"].append(api(True))
    return rows


def report(rows: dict[str, list[float]], load_before: tuple[float, ...], rounds: int) -> None:
    def med(kind: str) -> float:
        return statistics.median(rows[kind])

    def fmt(kind: str) -> str:
        q = statistics.quantiles(rows[kind], n=4) if len(rows[kind]) > 1 else [0, 0, 0]
        return f"{med(kind):7.2f} ms  [{q[0]:.1f}-{q[2]:.1f}]"

    print(f"load {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {rounds} "
          "interleaved rounds, 0.2 s apart; medians [quartiles]")
    for kind in ("run warm", "run warm, back to back", "run cold", "cli warm",
                 "cli warm, own process", "cli cold", "python3 -c pass"):
        print(f"  {kind:22} wall {fmt(kind)}")
    for kind in ("cli warm cpu", "cli warm, own process cpu", "cli cold cpu",
                 "python3 -c pass cpu", "server cpu"):
        print(f"  {kind:26} {fmt(kind)}")
    forked = statistics.mean(rows["forked cli cpu"])
    print(f"  {'forked cli cpu':26} {forked:7.2f} ms  (mean: clock ticks of "
          f"{1000 / os.sysconf('SC_CLK_TCK'):.0f} ms)")
    print(f"  run(): warm / cold {med('run warm') / med('run cold'):.2f} "
          f"(target: warm <= 10 ms: {'yes' if med('run warm') <= 10 else 'no'})")
    over = med("cli warm") - med("python3 -c pass")
    print(f"  CLI: warm - pass {over:+.1f} ms wall (in its own process "
          f"{med('cli warm, own process') - med('python3 -c pass'):+.1f}), cold - pass "
          f"{med('cli cold') - med('python3 -c pass'):+.1f} ms; CPU warm - pass "
          f"{med('cli warm cpu') + forked - med('python3 -c pass cpu'):+.1f} ms (own process "
          f"{med('cli warm, own process cpu') - med('python3 -c pass cpu'):+.1f}), cold - pass "
          f"{med('cli cold cpu') - med('python3 -c pass cpu'):+.1f} ms "
          f"(target: warm - pass <= +25 ms: {'yes' if over <= 25 else 'no'})")
    print(f"  machine CPU per warm CLI run: client + forked CLI + server "
          f"{med('cli warm cpu') + forked + med('server cpu'):.1f} ms")


if __name__ == "__main__":
    main()
