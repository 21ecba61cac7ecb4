"""Issue #15's figures, side by side in one run (as root): a fresh container per command.

  * ``Pool.run`` steady state and sustained ``Pool.map`` throughput, a Session command,
    ``bwrap --unshare-all`` and the ``lxc-copy -s`` sequence (``bench_pool.py``'s rows);
  * ``lxcbind.run()`` of ``/bin/true`` under a no-network policy (unprivileged: the default),
    back to back and after a pause (a run that follows no other pays the kernel's cgroup
    migration grace period; ``cgroups.prime_migration``), and where its time goes (perf
    counters around the liblxc calls);
  * ``python -m lxcbind run`` of the same policy against ``python3 -c pass`` (same interpreter,
    same environment, interleaved, 0.2 s apart), with lxcbind's bytecode compiled (as an
    installed package has it) and without it under ``PYTHONDONTWRITEBYTECODE=1`` (a copy of
    the package with no ``__pycache__``: every start compiles lxcbind's sources);
  * ``python3 -X importtime`` of that CLI run: lxcbind's own modules, and the standard-library
    modules it adds to ``python3 -c pass``;
  * ``Container.start()`` against ``lxc-start`` of the very same container (same config file),
    interleaved, each followed by a hard stop;
  * ``lxcbind.run()`` from a caller holding 1 GiB, with liblxc's start in ``lxcbind-starter``
    (the default) and in the caller itself;
  * where ``lxcbind.run()``'s own Python goes (``--phases`` prints only that, for any checkout
    on ``PYTHONPATH``: an A/B of two checkouts is two runs of it): each step of the set-up and
    teardown timed exclusively (``perf_counter_ns``; a step's time excludes the steps it calls);
  * issue #23 (``--cpu`` prints only this): the machine CPU of one fresh container, setup and
    teardown, per step of the sandbox, per mechanism (cgroup fs, mounts, namespaces, exec,
    seccomp ...) and per process (runner, starter, liblxc's monitor, the container's init),
    from ``perf record -a`` (``_cpuphases``: only this run's processes and kernel threads
    count, so another job's CPU does not), with the CPU of ``bwrap --unshare-all`` and of an
    ``lxc-start``/``lxc-stop`` of one container (liblxc's own floor) measured the same way, the
    cgroup hierarchies a container touches, and with ``--baseline DIR...`` the Pool's
    throughput, CPU per fresh container and ``run()`` of each baseline and this checkout,
    alternately, each in a process of its own; ``--json FILE`` also writes the breakdown there
    (``tests/hosts/run.sh`` runs it in a cgroup v2 VM: ``HOSTS_BENCH``).
Prints medians and ratios; asserts nothing.      python3 benchmarks/bench_floor.py [-n 20]

The figures marked "pyc" have lxcbind's bytecode compiled first (``compileall``); the
import-time figures are always with bytecode (without it they would measure the compiler).
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
from collections.abc import Callable, Sequence
from typing import Any

import _cpuphases
import bench_pool
from _common import bwrap_true, describe, ensure_bwrap

import lxcbind
from lxcbind.lxc import container as _container
from lxcbind.sandbox.initspawner import InitChannel

PACKAGE = os.path.dirname(os.path.abspath(lxcbind.__file__))
ROOT = os.path.dirname(PACKAGE)   # ``python -m lxcbind`` from here imports the same lxcbind

POLICY = {"version": "0.8.0", "process": {"commandLine": "/bin/true"}}   # 0.8: no network
# A container that can be started again once stopped (a throwaway's disk layer is gone with
# its first stop): for starting the same container over and over.
RESTARTABLE = dict(POLICY, lxc={"limits": {"disk": "max"}})
TARGETS = {"run": 20.0, "cli_over_pass": 25.0, "own_imports": 15.0, "pool": 2.0,
           "pool_rate": 50.0}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# -- lxcbind.run() and its liblxc calls --------------------------------------------------------

def run_breakdown(n: int, pause: float = 0.0) -> tuple[list[float], dict[str, float]]:
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
            time.sleep(pause)
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


# -- run()'s own steps ------------------------------------------------------------------------

# (module, attribute path, label): each step of a run, in the order it happens.  A step missing
# from a checkout (an older one) is skipped, so the same list measures both sides of an A/B.
PHASES = (
    ("lxcbind.sandbox.core", "as_policy", "policy: parse"),
    ("lxcbind.sandbox.core", "check_call", "command options"),
    ("lxcbind.sandbox.security", "resolve", "limits: resolve"),
    ("lxcbind.sandbox.disk", "resolve", "disk: resolve"),
    ("lxcbind.lxc.cgroups", "prime_migration", "cgroup migration primer"),
    ("lxcbind.sandbox.cleanup", "collect_garbage", "gc of dead runners"),
    ("lxcbind.sandbox.core", "_reap_stale_leases", "gc of stale leases"),
    ("lxcbind.sandbox.cleanup", "ContainerLock.acquire", "name lock: take"),
    ("lxcbind.sandbox.mounts", "plan_mounts", "filesystem plan"),
    ("lxcbind.lxc.container", "Container.__init__", "liblxc: a handle (lxc_container_new)"),
    ("lxcbind.lxc.container", "Container.defined", "liblxc: is_defined"),
    ("lxcbind.sandbox.cleanup", "OwnershipRecord.save", "ownership record: write"),
    ("lxcbind.sandbox.idmap", "acquire", "id range: take"),
    ("lxcbind.sandbox.security", "Isolation.config", "isolation config items"),
    ("lxcbind.sandbox.initspawner", "InitChannel.__init__", "init channel: make"),
    ("lxcbind.sandbox.initspawner", "InitChannel.accept", "init channel: accept"),
    ("lxcbind.sandbox.rootfs", "ensure_base", "base: find (host layout hash)"),
    ("lxcbind.sandbox.rootfs", "shifted_lower", "base: shifted copy"),
    ("lxcbind.sandbox.disk", "prepare", "disk: image, loop, mount"),
    ("lxcbind.sandbox.rootfs", "define_container", "define: the rest"),
    ("lxcbind.lxc.container", "Container.set_config_item", "liblxc: set_config_item"),
    ("lxcbind.lxc.container", "Container.save_config", "liblxc: save_config"),
    ("lxcbind.lxc.container", "Container.get_config_item", "liblxc: get_config_item"),
    ("lxcbind.sandbox.idmap", "unbind_all", "idmapped binds: unbind"),
    ("lxcbind.sandbox.disk", "detach", "disk: detach"),
    ("lxcbind.lxc.container", "Container.start", "liblxc: start"),
    ("lxcbind.lxc.container", "Container.init_pid", "liblxc: init_pid (monitor)"),
    ("lxcbind.sandbox.security", "verify_limits", "limits: read back"),
    ("lxcbind.lxc.cgroups", "event_files", "limits: event files"),
    ("lxcbind.lxc.cgroups", "read_events", "limits: events read"),
    ("lxcbind.proc.session", "Session.__init__", "init session: wrap"),
    ("lxcbind.proc.session", "Session._run", "command (spawn, wait, result)"),
    ("lxcbind.proc.session", "Session.close", "init session: close"),
    ("lxcbind.sandbox.disk", "Layer.full", "disk: full?"),
    ("lxcbind.sandbox.rootfs", "remove_container", "remove: the rest"),
    ("lxcbind.lxc.container", "Container.stop", "liblxc: stop"),
    ("lxcbind.lxc.container", "Container.destroy", "liblxc: destroy (rmtree incl.)"),
    ("lxcbind.sandbox.idmap", "release", "id range: give back"),
    ("lxcbind.sandbox.disk", "Layer.close", "disk: layer close"),
    ("lxcbind.sandbox.cleanup", "OwnershipRecord.remove", "ownership record: remove"),
    ("lxcbind.sandbox.cleanup", "ContainerLock.release", "name lock: give back"),
    ("lxcbind.sandbox.core", "Sandbox.__init__", "Sandbox: the rest of __init__"),
    ("lxcbind.sandbox.core", "Sandbox.open", "Sandbox.open: the rest"),
    ("lxcbind.sandbox.core", "Sandbox.close", "Sandbox.close: the rest"),
)


def python_phases(n: int) -> tuple[list[float], dict[str, float]]:
    """Medians (ms) of ``lxcbind.run()`` and of each of its ``PHASES``, exclusive of the
    phases called inside it; "the rest" of run() is what no phase covers."""
    import importlib

    spent: dict[str, list[int]] = collections.defaultdict(list)
    current: dict[str, int] = collections.defaultdict(int)
    nested: list[int] = []   # per active call: time of the timed calls made inside it
    undo = []
    for module_name, path, label in PHASES:
        try:
            owner: object = importlib.import_module(module_name)
        except ImportError:
            continue
        *outer, attr = path.split(".")
        for part in outer:
            owner = getattr(owner, part, None)
        original = getattr(owner, attr, None) if owner is not None else None
        if original is None:
            continue
        prop = vars(owner).get(attr) if isinstance(owner, type) else None
        if isinstance(prop, property):
            original = prop.fget

        def timed(*a, _f=original, _n=label, **k):  # type: ignore[no-untyped-def]
            nested.append(0)
            t = time.perf_counter_ns()
            try:
                return _f(*a, **k)
            finally:
                took = time.perf_counter_ns() - t
                current[_n] += took - nested.pop()
                if nested:
                    nested[-1] += took
        # A function's own module calls it through its global: patch it there (``from x
        # import f`` copies elsewhere are not timed; the list names the modules that call).
        if isinstance(prop, property):
            setattr(owner, attr, property(timed))
            original = prop
        else:
            setattr(owner, attr, timed)
        undo.append((owner, attr, original))
    totals = []
    try:
        lxcbind.run(POLICY)
        for _ in range(n):
            current.clear()
            t = time.perf_counter_ns()
            lxcbind.run(POLICY)
            took = time.perf_counter_ns() - t
            totals.append(took / 1e6)
            current["run(): the rest"] = took - sum(current.values())
            for label, ns in current.items():
                spent[label].append(ns)
    finally:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)
    return totals, {label: med([x / 1e6 for x in xs] + [0.0] * (n - len(xs)))
                    for label, xs in spent.items()}


def print_phases(totals: list[float], phases: dict[str, float]) -> None:
    print(f"where lxcbind.run() goes, step by step (ms, medians of {len(totals)}; exclusive; "
          f"run() median {med(totals):.2f}):")
    order = [label for _, _, label in PHASES] + ["run(): the rest"]
    for label in order:
        if label in phases:
            print(f"  {label:44} {phases[label]:7.3f}")
    liblxc = sum(v for k, v in phases.items() if k.startswith("liblxc"))
    print(f"  {'sum of liblxc calls':44} {liblxc:7.3f}; everything else "
          f"{sum(phases.values()) - liblxc:.3f}")


# -- the CLI against python3 -c pass -----------------------------------------------------------

# CPU time (ms, user + system) of each process cli_vs_pass ran, by kind: the runner's own work,
# which the machine's load changes far less than the wall time (the container's init, the
# command and liblxc's monitor are not its children: not counted).
CLI_CPU: dict[str, list[float]] = collections.defaultdict(list)


def cli_vs_pass(n: int, policy_path: str,
                baselines: Sequence[str] = ()) -> dict[str, list[float]]:
    """CLI runs with bytecode ("cli"), without ("cli_nopyc": a copy of the package with no
    ``__pycache__``, ``PYTHONDONTWRITEBYTECODE=1``) and ``python3 -c pass``, interleaved;
    with ``baselines`` (checkouts with their compiled module, e.g. of earlier commits) their
    CLIs too ("baseline DIR", with bytecode), for an A/B in one run."""
    cli = [sys.executable, "-m", "lxcbind", "run", "--no-tty", policy_path]
    bare = [sys.executable, "-c", "pass"]
    with tempfile.TemporaryDirectory(prefix="lxcbind-bench-") as tmp:
        shutil.copytree(PACKAGE, os.path.join(tmp, "lxcbind"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        nopyc = dict(ENV, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=tmp)
        kinds = {"cli": (cli, ROOT, ENV), "cli_nopyc": (cli, tmp, nopyc),
                 "pass": (bare, ROOT, ENV)}
        for baseline in baselines:
            compileall.compile_dir(os.path.join(baseline, "lxcbind"), quiet=1)
            kinds[f"baseline {baseline}"] = (cli, baseline, dict(ENV, PYTHONPATH=baseline))

        def once(kind: str) -> float:
            argv, cwd, env = kinds[kind]
            time.sleep(0.2)   # as a command typed or run by a tool: not back to back
            t = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            took = (time.perf_counter() - t) * 1000
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, argv)
            CLI_CPU[kind].append((usage.ru_utime + usage.ru_stime) * 1000)
            return took

        for kind in kinds:
            once(kind)
        out: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(n):   # interleaved: all see the same machine load
            for kind in kinds:
                out[kind].append(once(kind))
    return out


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
    # No disk limit: its layer is handed to the container at the first start and gone from the
    # host afterwards, so a stopped container cannot start again (a fresh run makes a new one).
    with lxcbind.Sandbox({**POLICY, "lxc": {"limits": {"disk": "max"}}}) as box:
        c = box.container
        assert c is not None
        cdir = os.path.join(box.lxcpath, box.name)

        def timed(start: Callable[[], object], stop: Callable[[], object]) -> float:
            # Its init is the session spawner, which connects to a channel the sandbox made
            # for the first start only: a new one for each (not timed), never accepted, open
            # until the container is stopped (the spawner exits when it closes).
            channel = InitChannel(cdir)
            try:
                t = time.perf_counter()
                start()
                return (time.perf_counter() - t) * 1000
            finally:
                stop()
                channel.close()

        def lxc_start() -> None:
            subprocess.run(["lxc-start", "-n", box.name, "-P", box.lxcpath], check=True,
                           stdin=subprocess.DEVNULL)

        def lxc_stop() -> None:
            subprocess.run(["lxc-stop", "-k", "-n", box.name, "-P", box.lxcpath], check=True,
                           stdin=subprocess.DEVNULL)

        c.stop()
        first = timed(c.start, c.stop)
        for _ in range(n):
            ours.append(timed(c.start, c.stop))
            theirs.append(timed(lxc_start, lxc_stop))
        # The sandbox's teardown (kill, stop, destroy) finds it stopped: nothing to restart.
    return ours, theirs, first


BIG_CALLER = """
import statistics, sys, time, lxcbind
from lxcbind.lxc import container
if sys.argv[1] == "in-process":
    container.STARTER = "/nonexistent"   # liblxc's start in this process, as before the starter
ballast = bytearray(1 << 30)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1   # resident, as a big caller's heap is
for _ in range(3):
    lxcbind.run(["/bin/true"])
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    lxcbind.run(["/bin/true"])
    times.append((time.perf_counter() - t) * 1000)
print(statistics.median(times))
"""


def big_caller(n: int) -> dict[str, float]:
    """``lxcbind.run()`` from a process holding 1 GiB, with liblxc's start in the starter
    program (the default) and in the caller (what a fork of the whole caller costs)."""
    return {mode: float(subprocess.run([sys.executable, "-c", BIG_CALLER, mode, str(n)],
                                       check=True, capture_output=True, cwd=ROOT, env=ENV,
                                       text=True).stdout)
            for mode in ("starter", "in-process")}


def import_summary(full: dict[str, int], base: dict[str, int]) -> list[str]:
    """Lines on lxcbind's own modules and the standard-library ones ``-c pass`` lacks."""
    own = {k: v for k, v in full.items() if k == "lxcbind" or k.startswith("lxcbind.")}
    extra = {k: v for k, v in full.items() if k not in own and k not in base}
    top_extra = sorted(extra.items(), key=lambda kv: -kv[1])[:8]
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:6]
    return [f"importtime: lxcbind modules (self, sum) {sum(own.values()) / 1000:.1f} ms "
            f"({len(own)} modules); stdlib beyond -c pass {sum(extra.values()) / 1000:.1f} ms "
            f"({len(extra)} modules)",
            "    largest: " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in top_extra),
            "    lxcbind: " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in top_own)]


def cli_only(n: int, baselines: Sequence[str]) -> None:
    """``--cli``: the CLI rows alone (a quick A/B of start-up work)."""
    compileall.compile_dir(PACKAGE, quiet=1)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(POLICY, f)
    try:
        cli = cli_vs_pass(n, f.name, baselines)
        base = importtime(["-c", "pass"])
        full = importtime(["-m", "lxcbind", "run", "--no-tty", f.name])
    finally:
        os.unlink(f.name)
    pass_ms = med(cli["pass"])
    print(f"python -m lxcbind run --no-tty (/bin/true, no network), medians of {n}, interleaved "
          f"(load {os.getloadavg()[0]:.2f}); target: python3 -c pass + "
          f"{TARGETS['cli_over_pass']:g} ms")
    pass_cpu = med(CLI_CPU["pass"])
    print(f"  {'':54} {'wall ms':>12} {'CPU ms (the process and its children)':>40}")
    for kind, times in cli.items():
        label = {"cli": "this checkout (pyc)", "cli_nopyc": "this checkout (no pyc)",
                 "pass": "python3 -c pass"}.get(kind, kind + " (pyc)")
        cpu = med(CLI_CPU[kind])
        print(f"  {label:54} {med(times):7.1f} (+{med(times) - pass_ms:5.1f})"
              f" {cpu:12.1f} (+{cpu - pass_cpu:5.1f})")
    print("\n".join(import_summary(full, base)))


# -- issue #23: machine CPU per fresh container, by phase -------------------------------------

def phase_breakdown(n: int) -> dict[str, Any] | None:
    """``_cpuphases`` over ``n`` sequential ``lxcbind.run()`` calls, 0.1 s apart (what a run
    hands to the kernel lands between them, in "after the run")."""
    def workload(marks: _cpuphases.Marks) -> int:
        _cpuphases.install(marks)
        for _ in range(n):
            lxcbind.run(POLICY)
            time.sleep(0.1)
        return n
    lxcbind.run(POLICY)
    return _cpuphases.profile(workload)


def pool_cpu(count: int, size: int) -> dict[str, Any] | None:
    """``_cpuphases``' figures per fresh container of a Pool that runs ``count`` commands:
    ``count + size`` containers set up and torn down in all."""
    def workload(marks: _cpuphases.Marks) -> int:
        with lxcbind.Pool(POLICY, size=size) as pool:
            pool.map([["/bin/true"]] * count, workers=size)
        return count + size
    return _cpuphases.profile(workload)


def _split(result: dict[str, Any] | None) -> dict[str, float] | None:
    """Per container: all, the runner (this Python process), the other processes of ours
    (starter, monitor, init, command), kernel threads (which also serve other jobs)."""
    if result is None:
        return None
    proc = result["process"]
    runner = proc.get("python3", 0.0)
    kernel = proc.get("kernel threads", 0.0)
    return {"total": result["total"], "runner": runner, "kernel": kernel,
            "others": result["total"] - runner - kernel}


def lxc_start_cpu(n: int) -> float | None:
    """Machine CPU of ``lxc-start`` + ``lxc-stop -k`` of one sandbox's container (same config
    file, its init connecting to a fresh channel each time): liblxc's own floor."""
    if not shutil.which("lxc-start"):
        return None
    with lxcbind.Sandbox(RESTARTABLE) as box:
        c = box.container
        assert c is not None
        cdir = os.path.join(box.lxcpath, box.name)
        c.stop()

        def cycle() -> None:
            channel = InitChannel(cdir)
            try:
                subprocess.run(["lxc-start", "-n", box.name, "-P", box.lxcpath], check=True,
                               stdin=subprocess.DEVNULL)
            finally:
                subprocess.run(["lxc-stop", "-k", "-n", box.name, "-P", box.lxcpath],
                               check=True, stdin=subprocess.DEVNULL)
                channel.close()
        return _cpuphases.cpu_per_call(cycle, n)


def cgroup_hierarchies() -> tuple[int, int]:
    """(cgroup hierarchies on this host, those a running container's init is placed in a
    cgroup of its own: liblxc makes and removes a payload and a monitor cgroup in each)."""
    with lxcbind.Sandbox(POLICY) as box:
        assert box.container is not None and box.container.init_pid is not None
        with open(f"/proc/{box.container.init_pid}/cgroup") as f:
            lines = f.read().splitlines()
    return len(lines), sum(box.name in line for line in lines)


WORKER = "--worker"


def worker(n: int, size: int) -> None:
    """One round of the A/B figures, as JSON on stdout (lxcbind from PYTHONPATH)."""
    rate, stat_cpu = bench_pool.pool_sustained(n * 6, size)
    runs = []
    lxcbind.run(POLICY)
    for _ in range(n):
        t = time.perf_counter()
        lxcbind.run(POLICY)
        runs.append((time.perf_counter() - t) * 1000)
    print(json.dumps({"rate": rate, "stat_cpu": stat_cpu, "run": med(runs),
                      "perf_cpu": _split(pool_cpu(n * 2, size))}))


def ab_rounds(baseline: str, n: int, size: int,
              rounds: int = 2) -> dict[str, list[dict[str, Any]]]:
    """``worker`` of ``baseline`` and of this checkout, alternately, ``rounds`` times each."""
    out: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    here = os.path.dirname(os.path.abspath(__file__))
    for _ in range(rounds):
        for side, root in (("baseline", os.path.abspath(baseline)), ("this", ROOT)):
            env = dict(ENV, PYTHONPATH=os.pathsep.join([root, here]))
            done = subprocess.run([sys.executable, os.path.abspath(__file__), WORKER,
                                   "-n", str(n), "--size", str(size)], cwd=here, env=env,
                                  check=True, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
            out[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def print_cpu_phases(result: dict[str, Any] | None, floors: dict[str, float | None],
                 hierarchies: tuple[int, int]) -> None:
    if result is None:
        print("per-phase CPU: n/a (needs perf and root)")
        return
    print(f"machine CPU per fresh container, lxcbind.run() of /bin/true, by phase (perf -a: "
          f"this run's processes + kernel threads; {result['foreign']:.1f} ms/run of other "
          f"processes' CPU and {result['machine']:.1f} of the machine's own kernel threads, "
          f"DAMON and vsock, left out): {result['total']:.1f} ms")
    for phase, ms in sorted(result["phase"].items(), key=lambda kv: -kv[1]):
        mech = sorted(result["mechanism"][phase].items(), key=lambda kv: -kv[1])[:5]
        print(f"  {ms:6.2f}  {phase:40} " + ", ".join(f"{k} {v:.2f}" for k, v in mech))
    print("  by process: " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(result["process"].items(), key=lambda kv: -kv[1])
        if v >= 0.05) + "   (lxcbind-starter [1] the starter, [2] its daemonizing fork, "
        "[3] liblxc's monitor, [4+] the container's init before its exec)")
    totals: dict[str, float] = collections.Counter()
    for mechs in result["mechanism"].values():
        for k, v in mechs.items():
            totals[k] += v
    print("  by mechanism: " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:14]))
    print("  by process, its mechanisms:")
    for proc, ms in sorted(result["process"].items(), key=lambda kv: -kv[1]):
        if ms >= 0.5:
            mech = sorted(result["process_mechanism"][proc].items(), key=lambda kv: -kv[1])[:6]
            print(f"  {ms:6.2f}  {proc:40} " + ", ".join(f"{k} {v:.2f}" for k, v in mech))
    print(f"  cgroup hierarchies: {hierarchies[1]} of the host's {hierarchies[0]} hold the "
          "container's init in a cgroup of its own (liblxc creates and removes a payload and "
          "a monitor cgroup in each)")
    for label, cpu in floors.items():
        print(f"  {label:58} " + (f"{cpu:6.2f} ms CPU" if cpu is not None else "n/a"))


def cpu_only(n: int, size: int, baselines: Sequence[str], json_path: str | None = None) -> None:
    """Issue #23's figures: the per-phase CPU, the floors, and an A/B against each baseline
    (``json_path``: the breakdown, the floors and the hierarchies also written there)."""
    phases = phase_breakdown(n)
    pool = _split(pool_cpu(n * 3, size))
    floors = {
        "Pool: CPU per fresh container (map, perf)": pool["total"] if pool else None,
        "lxc-start + lxc-stop -k of one container, no disk layer": lxc_start_cpu(
            max(5, n // 2)),
        "bwrap --unshare-all /bin/true": (_cpuphases.cpu_per_call(bwrap_true, n)
                                          if ensure_bwrap() else None),
    }
    hierarchies = cgroup_hierarchies()
    print_cpu_phases(phases, floors, hierarchies)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"phases": phases, "floors": floors, "hierarchies": hierarchies,
                       "load": os.getloadavg(), "cpus": os.cpu_count()}, f, indent=1)
    for baseline in baselines:
        ab = ab_rounds(baseline, n, size)
        print(f"A/B, alternately in one run (load {os.getloadavg()[0]:.2f}); Pool CPU per "
              "fresh container (perf): all = runner + other processes of ours + kernel threads")
        print(f"  {'':36} {'runs/s':>7} {'all':>6} {'runner':>7} {'others':>7} "
              f"{'kernel':>7} {'/proc/stat':>10} {'run() ms':>9}")
        for side, rows in ab.items():
            label = baseline if side == "baseline" else "this checkout"
            for r in rows:
                c = r["perf_cpu"] or {"total": 0.0, "runner": 0.0, "others": 0.0,
                                      "kernel": 0.0}
                print(f"  {label[-36:]:36} {r['rate']:7.1f} {c['total']:6.1f} "
                      f"{c['runner']:7.1f} {c['others']:7.1f} {c['kernel']:7.1f} "
                      f"{r['stat_cpu']:10.1f} {r['run']:9.1f}")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--size", type=int, default=4, help="pool size")
    parser.add_argument("--baseline", metavar="DIR", nargs="+", default=[],
                        help="checkouts (built) whose CLIs run interleaved with this one's")
    parser.add_argument("--phases", action="store_true",
                        help="only where run()'s time goes, step by step")
    parser.add_argument("--cli", action="store_true",
                        help="only the CLI against python3 -c pass (and the baselines)")
    parser.add_argument("--cpu", action="store_true",
                        help="only issue #23's CPU per fresh container (and the baselines' A/B)")
    parser.add_argument("--json", metavar="FILE",
                        help="with --cpu: also write the breakdown as JSON (for comparisons)")
    parser.add_argument(WORKER, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, size = args.n, args.size
    if args.worker:
        worker(n, size)
        return
    print(describe())
    if args.cpu:
        cpu_only(n, size, args.baseline, args.json)
        return
    if args.phases:
        print_phases(*python_phases(n))
        return
    if args.cli:
        cli_only(n, args.baseline)
        return
    compileall.compile_dir(PACKAGE, quiet=1)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(POLICY, f)
    try:
        pool_ms = bench_pool.pool_steady_ms(n * 2, size)
        rate, cpu_ms = bench_pool.pool_sustained(n * 6, size)
        run_ms, parts = run_breakdown(n)
        paused_ms, paused_parts = run_breakdown(max(5, n // 2), pause=0.3)
        cli = cli_vs_pass(n, f.name, args.baseline)
        base = importtime(["-c", "pass"])
        full = importtime(["-m", "lxcbind", "run", "--no-tty", f.name])
        session_ms = bench_pool.session_ms(n * 2)
        bwrap_ms = bench_pool.bwrap_ms(n * 2)
        copy_ms = bench_pool.lxc_copy_ms(max(5, n // 2))
        ours, theirs, first_start = start_vs_lxc_start(n)
        big = big_caller(max(5, n // 2))
        steps = python_phases(n)
    finally:
        os.unlink(f.name)

    own = {k: v for k, v in full.items() if k == "lxcbind" or k.startswith("lxcbind.")}
    extra = {k: v for k, v in full.items() if k not in own and k not in base}
    own_ms, extra_ms = sum(own.values()) / 1000, sum(extra.values()) / 1000
    pass_ms = med(cli["pass"])
    over, over_nopyc = med(cli["cli"]) - pass_ms, med(cli["cli_nopyc"]) - pass_ms
    cpus = os.cpu_count() or 1

    print(f"fresh container per command, /bin/true, medians ({cpus} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; unprivileged containers, no network)")
    print(f"{'':50} {'ms':>8} {'/ Pool.run':>10} {'target':>8} {'vs target':>9}")

    def row(label: str, ms: float | None, target: float | None = None) -> None:
        if ms is None:
            print(f"{label:50} {'n/a':>8}")
            return
        tail = f" {target:8.1f} {ms / target:8.2f}x" if target else ""
        print(f"{label:50} {ms:8.2f} {ms / pool_ms:9.1f}x{tail}")

    row("Pool.run, steady state", pool_ms, TARGETS["pool"])
    print(f"{'Pool sustained (map, size ' + str(size) + ', 2 starters), runs/s':50} {rate:8.1f} "
          f"{'':>10} {TARGETS['pool_rate']:8.1f} {rate / TARGETS['pool_rate']:8.2f}x")
    print(f"{'  machine CPU per fresh container (all processes)':50} {cpu_ms:8.1f}   "
          f"=> at most {1000 * cpus / cpu_ms:.0f} runs/s on {cpus} CPUs")
    row("lxcbind.run(), back to back", med(run_ms), TARGETS["run"])
    row("lxcbind.run(), after a 0.3 s pause", med(paused_ms), TARGETS["run"])
    row("Session command (warm, NOT fresh)", session_ms)
    row("bwrap --unshare-all", bwrap_ms)
    row("lxc-copy -s/start/attach/destroy", copy_ms)
    row("python -m lxcbind run (pyc)", med(cli["cli"]))
    row("python -m lxcbind run (no pyc, DONTWRITEBYTECODE)", med(cli["cli_nopyc"]))
    for baseline in args.baseline:
        row(f"CLI, baseline {baseline} (pyc)", med(cli[f"baseline {baseline}"]))
    row("python3 -c pass", pass_ms)
    print(f"{'  CLI minus python3 -c pass (pyc)':50} {over:8.1f} {'':>10} "
          f"{TARGETS['cli_over_pass']:8.1f} {over / TARGETS['cli_over_pass']:8.2f}x")
    print(f"{'  CLI minus python3 -c pass (no pyc)':50} {over_nopyc:8.1f} {'':>10} "
          f"{TARGETS['cli_over_pass']:8.1f} {over_nopyc / TARGETS['cli_over_pass']:8.2f}x")
    print(f"{'importtime: lxcbind modules (self, sum)':50} {own_ms:8.1f} {'':>10} "
          f"{TARGETS['own_imports']:8.1f} {own_ms / TARGETS['own_imports']:8.2f}x")
    print(f"{'importtime: stdlib beyond -c pass (sum)':50} {extra_ms:8.1f}")
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:8]
    print("    largest: " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in top))
    top = sorted(own.items(), key=lambda kv: -kv[1])[:6]
    print("    lxcbind: " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in top))
    print()
    for label, ms, spent in (("back to back", run_ms, parts),
                             ("after a pause", paused_ms, paused_parts)):
        print(f"where run() goes, {label} (ms, medians, liblxc calls through Container): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))
              + f"; the rest (Python, files, waiting for the command) "
              f"{med(ms) - sum(spent.values()):.1f}")
    if ours:
        print(f"{'Container.start() (same container, warm)':50} {med(ours):8.1f}")
        print(f"{'lxc-start (same config, a new process)':50} {med(theirs):8.1f}"
              f"   start() = {med(ours) / med(theirs):.2f}x lxc-start")
        print(f"{'first start() after a pause (this run)':50} {first_start:8.1f}")
    print(f"{'lxcbind.run() from a 1 GiB caller':50} {big['starter']:8.1f}"
          f"   liblxc's start in the caller instead: {big['in-process']:.1f} "
          f"({big['in-process'] / big['starter']:.1f}x)")
    print()
    print_phases(*steps)
    print()
    cpu_only(n, size, args.baseline)


if __name__ == "__main__":
    main()
