"""Commands/s through lxcbind.ray against a single-machine ``Session.map`` in the same run.

Run as root, with the extra installed:  python3 benchmarks/bench_ray.py [-n 2000] [--quick]

One local Ray cluster on loopback (``lxcbind.ray.local_cluster``: a head and 2 nodes, 1 CPU
each, the ``lxcbind`` resource, fast health checks).  All nodes share this machine's CPUs,
so "2 nodes" measures the engine's overhead and balance, not more hardware.  Measured:

* baseline: ``Session.map(workers=2)`` in this process (before and after the Ray runs);
* ``SessionPool.map`` for batch sizes 1, 10, 100, 1000 (and auto) × 1, 2, 4 calls in flight
  per actor, on 2 nodes; cmd/s, per node, and the ratio to the baseline per node;
* per-command round trip (batch 1, one call at a time) p50/p95/p99 vs ``Session.run``;
* scaling efficiency: rate on 2 nodes / (2 × rate on 1 node), auto batches;
* cluster start time, actor memory (RSS), and recovery after a node is killed mid-run: time
  from the kill to the last result, and how many commands ran twice (each command appends
  its index to a host file bound into the containers);
* ``ray.experimental.sandbox`` API (when present): exec latency through the lxcbind backend,
  in-process and through the actor.  gVisor's ``runsc`` is measured only if installed.

Containers are named ``lxcbind-bench-ray-*`` and destroyed at close; ``lxcbind gc`` reaps the
killed node's leftovers.  Prints a table and writes ``benchmarks/results/bench_ray-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray

import lxcbind.ray as lray
from lxcbind import Session, gc

# Ray's workers import the lxcbind measured here (a checkout's, when it is on PYTHONPATH).
ROOT = Path(lray.__file__).resolve().parent.parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")]))

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "lxcbind-bench-ray-"
POLICY = {"version": "0.8.0", "process": {"commandLine": "true"}}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def baseline(n: int) -> tuple[float, list[float]]:
    with Session.from_policy(dict(POLICY, containerId=f"{PREFIX}base")) as s:
        s.map([["true"]] * 100, workers=2)  # warm
        per_sec = rate(lambda: s.map([["true"]] * n, workers=2), n)
        lat = []
        for _ in range(300):
            t = time.perf_counter()
            s.run(["true"])
            lat.append(time.perf_counter() - t)
    return per_sec, lat


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000, help="commands per measurement")
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    args = ap.parse_args()
    n = args.n
    out: dict = {"n": n, "ray": ray.__version__, "cpus": os.cpu_count()}
    gc()

    base_before, base_lat = baseline(n)
    t = time.perf_counter()
    cluster = lray.local_cluster(2, per_node_resource=4)
    ray.init(address=cluster.address, log_to_driver=False)
    out["cluster_start_s"] = time.perf_counter() - t
    node_ids = [nd["NodeID"] for nd in ray.nodes() if nd["Resources"].get(lray.RESOURCE)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        grid = {}
        batches = [1, 10, 100, 1000, None]
        inflights = [2] if args.quick else [1, 2, 4]
        for inflight in inflights:
            with lray.SessionPool(POLICY, inflight=inflight, name_prefix=PREFIX) as pool:
                pool.map([["true"]] * 200, deadline=120)  # warm
                for b in batches:
                    count = min(n, 500) if b == 1 else n
                    r = rate(lambda c=count, b=b: pool.map([["true"]] * c, batch_size=b,
                                                             deadline=600), count)
                    grid[f"batch={b or 'auto'} inflight={inflight}"] = r
                if inflight == 2:
                    out["actor_rss_kib"] = [rss_kib(i["pid"]) for i in pool.info]
                    lat = []
                    for _ in range(300):
                        t = time.perf_counter()
                        pool.run(["true"], deadline=60)
                        lat.append(time.perf_counter() - t)
                    out["latency_ms"] = {"pool.run": [pct(lat, p) * 1e3 for p in (50, 95, 99)],
                                         "Session.run": [pct(base_lat, p) * 1e3
                                                         for p in (50, 95, 99)]}
        out["grid"] = grid

        # Scaling: 1 node vs 2 nodes, auto batches, 2 calls in flight.
        scale = {}
        for k, nodes in ((1, node_ids[:1]), (2, node_ids)):
            with lray.SessionPool(POLICY, nodes=nodes, name_prefix=PREFIX) as pool:
                pool.map([["true"]] * 200, deadline=120)
                scale[k] = rate(lambda: pool.map([["true"]] * n, deadline=600), n)
        out["scaling"] = {"1 node": scale[1], "2 nodes": scale[2],
                          "efficiency": scale[2] / (2 * scale[1])}

        # Recovery: a third node, killed after the first result.
        extra = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                                 resources={lray.RESOURCE: 4})
        log = tmp / "ran"
        log.touch()
        policy = dict(POLICY, filesystem={"readwritePaths": [str(tmp)]})
        count = 600
        with lray.SessionPool(policy, name_prefix=PREFIX, retries=2) as pool:
            stream = pool.imap_unordered([f"sleep 0.005; echo {i} >> {log}" for i in range(count)],
                                         batch_size=10, deadline=300)
            results = [next(stream)]
            killed = time.perf_counter()
            cluster.remove_node(extra, allow_graceful=False)
            last_retry = killed
            for r in stream:
                results.append(r)
                if r.attempt > 1:
                    last_retry = time.perf_counter()
            done = time.perf_counter()
            ran = [int(x) for x in log.read_text().split()]
            out["recovery"] = {
                "results": len(results), "lost": sum(r.lost for r in results),
                "resubmitted_batches": pool.stats["resubmitted"],
                "kill_to_last_retried_result_s": last_retry - killed,
                "kill_to_end_s": done - killed,
                "commands_ran_twice": len(ran) - len(set(ran)),
            }
        gc()

        # ray.experimental.sandbox through the lxcbind backend.
        try:
            from lxcbind.ray.sandbox import LxcbindSandboxRuntime, create
        except ImportError:
            out["sandbox_api"] = "absent in this Ray"
        else:
            rt = LxcbindSandboxRuntime(name_prefix=PREFIX)
            box = rt.create(image="host", readonly=False)
            local = []
            for _ in range(300):
                t = time.perf_counter()
                rt.exec(box, ["true"])
                local.append(time.perf_counter() - t)
            rt.delete(box)
            actor = create("host", name_prefix=PREFIX)
            ray.get(actor.get_instance_id.remote(), timeout=60)
            remote = []
            for _ in range(300):
                t = time.perf_counter()
                ray.get(actor.exec.remote(["true"]), timeout=60)
                remote.append(time.perf_counter() - t)
            ray.get(actor.delete.remote(), timeout=60)
            ray.kill(actor)
            out["sandbox_api"] = {"backend.exec p50 ms": pct(local, 50) * 1e3,
                                  "actor.exec p50 ms": pct(remote, 50) * 1e3,
                                  "gvisor": "runsc installed" if shutil.which("runsc")
                                  else "runsc not installed: not measured"}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        gc()

    base_after, _ = baseline(n)
    base = statistics.mean([base_before, base_after])
    out["baseline_session_map_workers2"] = {"before": base_before, "after": base_after}

    print(f"\nlxcbind.ray on {os.cpu_count()} CPUs, Ray {ray.__version__}, n={n} `true` commands")
    print(f"cluster start: {out['cluster_start_s']:.1f} s;  actor RSS: "
          f"{', '.join(f'{k // 1024} MiB' for k in out.get('actor_rss_kib', []))}")
    print(f"baseline Session.map(workers=2): {base_before:,.0f} / {base_after:,.0f} cmd/s "
          "(before / after)")
    # Both "nodes" share this machine's CPUs with each other (and the baseline had them all):
    # the total against the baseline is the like-for-like figure here; per node, divide by 2.
    print(f"{'configuration (2 nodes)':32} {'cmd/s':>8} {'÷ baseline':>11} {'per node':>9}")
    for key, r in grid.items():
        print(f"{key:32} {r:8,.0f} {r / base:11.2f} {r / 2:9,.0f}")
    sc = out["scaling"]
    print(f"scaling (auto batches): 1 node {sc['1 node']:,.0f}, 2 nodes {sc['2 nodes']:,.0f} "
          f"cmd/s; efficiency {sc['efficiency']:.2f}; 1 node ÷ baseline "
          f"{sc['1 node'] / base:.2f}")
    lat = out["latency_ms"]
    print("round trip p50/p95/p99 ms: pool.run " + "/".join(f"{v:.2f}" for v in lat["pool.run"])
          + ";  Session.run " + "/".join(f"{v:.2f}" for v in lat["Session.run"]))
    rec = out["recovery"]
    print(f"node kill: {rec['results']} results, {rec['lost']} lost, "
          f"{rec['resubmitted_batches']} batch(es) resubmitted, last retried result "
          f"{rec['kill_to_last_retried_result_s']:.2f} s after the kill, "
          f"{rec['commands_ran_twice']} command(s) ran twice")
    print(f"sandbox API: {out['sandbox_api']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_ray-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
