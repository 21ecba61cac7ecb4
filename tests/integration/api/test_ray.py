"""lxcbind.ray on a real local Ray cluster (head + 2 nodes on loopback) with real containers.

One cluster for the whole module (starting one costs ~8 s).  Every container the pools make is
named ``lxcbind-test-i13-*`` and each test checks that none is left after ``close``.  Every
wait on Ray has a deadline, so a hang fails the test instead of CI.

The cluster's workers keep their ownership records in a state directory of their own
(``LXCBIND_STATE_DIR``), and the tests reap with the real ``python -m lxcbind gc`` pointed at
it: every lxcbind run on a machine reaps what dead runners left, so on a shared machine another
run could otherwise reap a SIGKILLed actor's container before the assertion that the restarted
actor (or ``gc``) does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import requires_lxc, requires_root

try:
    import ray

    import lxcbind.ray as lray
except ImportError as exc:  # the optional extra is not installed
    pytest.skip(f"ray is not importable ({exc}); install the extra: pip install -e '.[ray]'",
                allow_module_level=True)

from lxcbind import PolicyError, list_containers

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[3]
PREFIX = "lxcbind-test-i13-"
POLICY = {"version": "0.8.0", "process": {"commandLine": "true"}}
DEADLINE = 60.0  # seconds for any one map: generous, only there so nothing can hang


_STATE: dict[str, str] = {}


def gc() -> list[str]:
    """``python -m lxcbind gc`` over the cluster's state directory; the names it removed."""
    env = dict(os.environ, LXCBIND_STATE_DIR=_STATE["dir"])
    out = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [line.split()[1] for line in out.stdout.splitlines() if line.startswith("removed ")]


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "LXCBIND_STATE_DIR")}
    _STATE["dir"] = tempfile.mkdtemp(prefix="lxcbind-test-i13-state-")
    # Ray's workers must import this checkout's lxcbind, not an installed one.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
    os.environ["LXCBIND_STATE_DIR"] = _STATE["dir"]  # read by the node processes at start
    c = lray.local_cluster(2, per_node_resource=4, num_cpus=1)
    try:
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        gc()
        shutil.rmtree(_STATE["dir"], ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def prefix(cluster):
    """A per-test container-name prefix; the test fails if anything with it is left."""
    p = f"{PREFIX}{uuid.uuid4().hex[:4]}-"
    yield p
    left = [n for n in list_containers() if n.startswith(p)]
    if left:
        gc()
    assert not left, f"containers left behind: {left}"


@pytest.fixture
def pool(cluster, prefix):
    with lray.SessionPool(POLICY, per_node=1, name_prefix=prefix, start_timeout=60) as p:
        yield p


def test_map_keeps_input_order_over_1000_commands_on_both_nodes(pool):
    results = pool.map([f"echo {i}" for i in range(1000)], deadline=DEADLINE)
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(1000)]
    assert [r.index for r in results] == list(range(1000))
    assert all(r.returncode == 0 and r.attempt == 1 and not r.lost for r in results)
    assert len({r.node for r in results}) == 2  # both nodes took batches
    assert pool.stats["batches"] > 4  # batched: neither one call per command nor one call


def test_per_node_places_that_many_sessions_on_every_node(cluster, prefix):
    with lray.SessionPool(POLICY, per_node=2, name_prefix=prefix, start_timeout=60) as p:
        nodes = [info["node"] for info in p.info]
        assert len(nodes) == 4 and all(nodes.count(n) == 2 for n in nodes)
        assert len({info["container"] for info in p.info}) == 4
        # Each command sees its own session's container: four distinct hostnames.
        names = {r.stdout for r in p.map(["hostname"] * 64, batch_size=1, deadline=DEADLINE)}
        assert names == {f"{info['container']}\n".encode() for info in p.info}


def test_fresh_mode_runs_each_command_in_its_own_container(cluster, prefix):
    with lray.SessionPool(POLICY, fresh=True, name_prefix=prefix, start_timeout=60) as p:
        results = p.map(["hostname; touch /tmp/mark; ls /tmp"] * 6 + ["sleep 30"],
                        timeout=1, deadline=DEADLINE, batch_size=2)
        with pytest.raises(TypeError, match="fresh mode"):
            p.map(["true"], tty=True)
    names = {r.stdout.split()[0] for r in results[:6]}
    assert len(names) == 6  # six containers
    assert all(r.stdout.split()[1:] == [b"mark"] for r in results[:6])  # nothing shared
    assert results[6].timed_out


def test_results_are_completed_runs_with_exec_errors(pool):
    from lxcbind import CompletedRun

    ok, missing, code = pool.map([["echo", "a b"], ["/no/such/program"], "exit 3"],
                                 deadline=DEADLINE)
    assert isinstance(ok, CompletedRun) and ok.stdout == b"a b\n"
    assert missing.returncode == 127 and missing.exec_error is not None
    assert missing.exec_error.stage == "exec" and missing.exec_error.filename == "/no/such/program"
    assert code.returncode == 3 and code.exec_error is None


def test_streaming_yields_results_before_the_slowest_command_ends(cluster, prefix, tmp_path):
    # Command 0 waits for a file that the test creates only after it has *received* five
    # other results: without streaming this deadlocks and the deadline fails the test.
    gate = tmp_path / "gate"
    policy = dict(POLICY, filesystem={"readwritePaths": [str(tmp_path)]})
    commands = [f"while [ ! -e {gate} ]; do sleep 0.02; done; echo slow"]
    commands += [f"echo {i}" for i in range(1, 20)]
    seen = []
    with lray.SessionPool(policy, name_prefix=prefix, start_timeout=60) as p:
        for run in p.imap_unordered(commands, batch_size=1, deadline=DEADLINE):
            seen.append(run.index)
            if len(seen) == 5:
                assert 0 not in seen
                gate.touch()
    assert sorted(seen) == list(range(20))


def test_timeouts_come_back_as_results(pool):
    results = pool.map(["sleep 30", "echo fine"], timeout=0.5, deadline=DEADLINE, batch_size=1)
    slow, fine = results
    assert slow.timed_out and slow.returncode == -signal.SIGTERM and slow.timeout == 0.5
    assert not fine.timed_out and fine.stdout == b"fine\n"


def test_policy_error_is_raised_on_the_driver_with_its_path(cluster, prefix):
    bad = {"version": "0.8.0", "process": {"commandLine": "true", "env": ["NOEQUALS"]}}
    with pytest.raises(PolicyError) as info:
        lray.SessionPool(bad, name_prefix=prefix)
    assert info.value.path == "process.env[0]"
    assert "NOEQUALS" in str(info.value) or "KEY=VALUE" in str(info.value)


def test_each_node_reports_its_own_setup_failure(cluster, prefix, tmp_path):
    missing = str(tmp_path / "not-on-any-node")
    policy = dict(POLICY, filesystem={"readonlyPaths": [missing]})
    with pytest.raises(lray.NodeSetupError) as info:
        lray.SessionPool(policy, name_prefix=prefix, start_timeout=60)
    failures = info.value.failures
    assert len(failures) == 2  # one line per node, each from that node's own setup
    assert all("filesystem.readonlyPaths" in why and missing in why for why in failures.values())


def test_a_command_cannot_kill_a_spawner_that_is_its_containers_init(cluster, prefix):
    # Hostile: container root signals its spawner, which here is the container's init
    # (a fresh sandbox's default): the kernel drops the signals, nothing is lost.
    with lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60, retries=0,
                          inflight=1) as p:
        results = p.map(["echo a"] * 5 + ["kill -9 $PPID; kill -STOP 1; kill -9 1; echo $PPID"]
                        + ["echo b"] * 5, batch_size=1, deadline=DEADLINE)
        assert not any(r.lost for r in results)
        assert results[5].stdout == b"1\n" and all(r.returncode == 0 for r in results)
        infos = [ray.get(a.ready.remote(), timeout=30) for a in p.actors]
        assert sum(i["renewed"] for i in infos) == 0


def _kill_the_parent_of(marker: str, within: float = 60.0) -> None:
    """SIGKILL, from the host, the parent of the process whose command line has ``marker``:
    the spawner that started it (the container's init, which its commands cannot kill)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if not entry.isdigit() or marker.encode() not in f.read():
                        continue
                with open(f"/proc/{entry}/status") as f:
                    ppid = int(next(x for x in f if x.startswith("PPid:")).split()[1])
            except (OSError, StopIteration):
                continue
            os.kill(ppid, signal.SIGKILL)
            return
        time.sleep(0.02)


def test_a_spawner_dying_under_a_command_loses_only_its_batch(cluster, prefix):
    # The spawner dies while a command runs (killed from the host: as the container's init,
    # none of its commands can kill it).  The batch is lost (not silently rerun: retries=0),
    # the actor starts a new session, and every other command, then and later, still gets
    # its result.
    import threading

    marker = f"{100 + uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 10**6:06d}"
    killer = threading.Thread(target=_kill_the_parent_of, args=(marker,), daemon=True)
    killer.start()
    with lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60, retries=0,
                          inflight=1) as p:
        results = p.map(["echo a"] * 10 + [f"sleep {marker}"] + ["echo b"] * 10,
                        batch_size=1, deadline=DEADLINE)
        killer.join(timeout=5)
        lost = [r for r in results if r.lost]
        assert [r.index for r in lost] == [10] and b"SpawnerDied" in lost[0].stderr
        assert all(r.returncode == 0 for r in results if not r.lost)
        infos = [ray.get(a.ready.remote(), timeout=30) for a in p.actors]
        assert sum(i["renewed"] for i in infos) == 1
        again = p.map(["echo ok"] * 20, batch_size=1, deadline=DEADLINE)
        assert all(r.stdout == b"ok\n" and not r.lost for r in again)
        assert len({r.node for r in again}) == 2  # both actors serve again


def test_node_setup_error_and_remote_runs_survive_pickle():
    import pickle

    from lxcbind.fanout import RemoteRun

    err = pickle.loads(pickle.dumps(lray.NodeSetupError({"n1": "SandboxError: x"})))
    assert err.failures == {"n1": "SandboxError: x"} and "n1" in str(err)
    run = RemoteRun(["true"], 0, index=3, node="n", attempt=2)
    assert pickle.loads(pickle.dumps(run)) == run


def test_a_closed_pool_says_so(cluster, prefix):
    from lxcbind import SessionError

    p = lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60)
    p.close()
    p.close()  # idempotent
    with pytest.raises(SessionError, match="closed"):
        p.map(["true"])


def test_killed_actor_restarts_reaps_its_predecessor_and_every_batch_completes(cluster, prefix):
    with lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60, retries=2) as p:
        victim = p.info[0]
        commands = [f"sleep 0.01; echo {i}" for i in range(400)]
        stream = p.imap_unordered(commands, batch_size=20, deadline=DEADLINE)
        seen = [next(stream)]
        os.kill(victim["pid"], signal.SIGKILL)  # mid-run: it has batches in flight
        seen += list(stream)
        assert sorted(r.index for r in seen) == list(range(400))
        assert all(r.stdout == f"{r.index}\n".encode() and not r.lost for r in seen)
        assert p.stats["resubmitted"] >= 1
        assert any(r.attempt == 2 for r in seen)
        # The restarted actor reaped the container its SIGKILLed predecessor left.
        actor = p.actors[0]
        info = ray.get(actor.ready.remote(), timeout=30)
        assert info["restarted"] and info["pid"] != victim["pid"]
        assert victim["container"] in info["reaped"]
        assert victim["container"] not in list_containers()
        assert p.map(["echo again"] * 8, deadline=DEADLINE)[0].stdout == b"again\n"


def test_without_retries_a_lost_batch_is_reported_not_rerun(cluster, prefix):
    with lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60, retries=0) as p:
        stream = p.imap_unordered(["sleep 0.5; echo x"] * 8, batch_size=1, deadline=DEADLINE)
        first = next(stream)
        for info in p.info:
            os.kill(info["pid"], signal.SIGKILL)
        rest = [first] + list(stream)
    lost = [r for r in rest if r.lost]
    assert sorted(r.index for r in rest) == list(range(8))
    assert lost and all(r.returncode == 125 and b"batch lost" in r.stderr for r in lost)
    assert all(r.attempt == 1 for r in rest)


def test_lxcbind_gc_removes_what_a_sigkilled_actor_left(cluster, prefix):
    # No restart: nothing but gc may clean up after it.
    with lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60,
                          actor_options={"max_restarts": 0}) as p:
        victim = p.info[0]
        assert p.run("echo up", deadline=DEADLINE).stdout == b"up\n"
        os.kill(victim["pid"], signal.SIGKILL)
        for _ in range(100):  # the pid is reaped by its raylet
            if not Path(f"/proc/{victim['pid']}").exists():
                break
            time.sleep(0.05)
        assert victim["container"] in list_containers()  # left behind
        assert victim["container"] in gc()
        assert victim["container"] not in list_containers()


def test_node_killed_mid_batch_every_result_still_arrives(cluster, prefix):
    node = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1",
                            resources={lray.RESOURCE: 4})
    try:
        with lray.SessionPool(POLICY, name_prefix=prefix, start_timeout=60, retries=2) as p:
            assert len(p.actors) == 3
            node_id = node.node_id
            commands = [f"sleep 0.01; echo {i}" for i in range(300)]
            stream = p.imap_unordered(commands, batch_size=10, deadline=DEADLINE)
            seen = [next(stream)]
            # A machine dies at once: its actor goes with the raylet (alone, an actor
            # outlives its raylet for a moment and may finish what it holds).
            for info in p.info:
                if info["node"] == node_id:
                    os.kill(info["pid"], signal.SIGKILL)
            cluster.remove_node(node, allow_graceful=False)
            node = None
            seen += list(stream)
            assert sorted(r.index for r in seen) == list(range(300))
            assert all(r.stdout == f"{r.index}\n".encode() and not r.lost for r in seen)
            assert any(r.attempt == 2 for r in seen) and p.stats["resubmitted"] >= 1
            assert not any(r.node == node_id and r.attempt == 2 for r in seen)
    finally:
        if node is not None:
            cluster.remove_node(node, allow_graceful=False)
        gc()  # the killed node's actor could not close its session: gc reaps it here


# -- the ray.experimental.sandbox backend ---------------------------------------------------

try:
    import ray.experimental.sandbox as sbx
except ImportError:
    sbx = None
requires_sandbox_api = pytest.mark.skipif(sbx is None, reason="this Ray has no "
                                          "ray.experimental.sandbox (added in 2.60)")


@requires_sandbox_api
def test_output_is_capped_by_default_and_unlimited_travels_to_the_workers(pool):
    import lxcbind

    size = lxcbind.DEFAULT_MAX_OUTPUT + (1 << 20)
    command = f"head -c {size} /dev/zero"
    (capped,) = pool.map([command], deadline=DEADLINE)
    assert capped.truncated and capped.stdout_omitted == 1 << 20
    assert len(capped.stdout) < size
    (whole,) = pool.map([command], deadline=DEADLINE, max_output=lxcbind.UNLIMITED)
    assert not whole.truncated and whole.stdout == bytes(size)


def test_sandbox_backend_read_file_refuses_rather_than_cuts(prefix, monkeypatch):
    import lxcbind.ray.sandbox as backend

    rt = backend.LxcbindSandboxRuntime(name_prefix=prefix)
    box = rt.create(image="host", workdir="/work", readonly=False)
    try:
        monkeypatch.setattr(backend, "READ_FILE_MAX", 1000)
        rt.write_file(box, "/work/fits", b"x" * 1000)
        rt.write_file(box, "/work/big", b"x" * 1001)
        assert rt.read_file(box, "/work/fits") == b"x" * 1000
        with pytest.raises(sbx.SandboxError, match="larger than"):
            rt.read_file(box, "/work/big")
    finally:
        rt.delete(box)


def test_sandbox_backend_create_exec_write_read_status_delete(prefix):
    from lxcbind.ray.sandbox import LxcbindSandboxRuntime

    rt = LxcbindSandboxRuntime(name_prefix=prefix)
    box = rt.create(image="host", env={"GREETING": "hi"}, workdir="/work", readonly=False)
    try:
        assert box.startswith(prefix) and box in list_containers()
        assert rt.get_status(box) == sbx.SandboxStatus.RUNNING
        r = rt.exec(box, "echo $GREETING from $(pwd); echo err >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr) == (3, "hi from /work\n", "err\n")
        assert rt.exec(box, ["/no/such/program"]).exit_code == 127
        rt.write_file(box, "/work/sub/a.txt", "line1\n")
        rt.write_file(box, "/work/sub/a.txt", b"\x00line2\n", append=True)
        assert rt.read_file(box, "/work/sub/a.txt") == b"line1\n\x00line2\n"
        with pytest.raises(sbx.SandboxError, match="cannot read"):
            rt.read_file(box, "/work/missing")
        with pytest.raises(sbx.SandboxTimeoutError):
            rt.exec(box, "sleep 30", timeout=0.3)
        with pytest.raises(sbx.SandboxExecError, match="per-command user"):
            rt.exec(box, "id", user="1000")
    finally:
        rt.delete(box)
    assert rt.get_status(box) == sbx.SandboxStatus.TERMINATED
    assert box not in list_containers()
    with pytest.raises(sbx.SandboxNotFoundError):
        rt.exec(box, "true")


def test_sandbox_backend_runs_a_local_image(prefix, tmp_path):
    from lxcbind.image import store
    from lxcbind.ray.sandbox import LxcbindSandboxRuntime
    from tests.integration.image.test_run_image import busybox_image

    ref = busybox_image(str(tmp_path / "layout"))
    rt = LxcbindSandboxRuntime(name_prefix=prefix)
    try:
        box = rt.create(image=ref, workdir="/work", readonly=False, shell="/bin/sh")
        try:
            r = rt.exec(box, "cat /work/hello")
            assert (r.exit_code, r.stdout) == (0, "from the image\n")
        finally:
            rt.delete(box)
    finally:
        store.remove(ref)


@requires_sandbox_api
@pytest.mark.parametrize("kwargs, words", [
    ({"image": "python:3.12"}, "not OCI images"),
    ({"readonly": True}, "readonly=True"),
    ({"network": "public", "readonly": False}, "network='public'"),
    ({"memory": "1Gi", "readonly": False}, "cpu/memory"),
])
def test_sandbox_backend_refuses_what_it_cannot_enforce(prefix, kwargs, words):
    from lxcbind.ray.sandbox import LxcbindSandboxRuntime

    rt = LxcbindSandboxRuntime(name_prefix=prefix)
    with pytest.raises(sbx.SandboxCreationError, match=words.replace("(", r"\(")):
        rt.create(**{"image": "host", **kwargs})


@requires_sandbox_api
def test_sandbox_actor_on_the_cluster(cluster, prefix):
    from lxcbind.ray.sandbox import create

    box = create("host", workdir="/w", name_prefix=prefix)
    try:
        name = ray.get(box.get_instance_id.remote(), timeout=60)
        assert name in list_containers()
        ray.get(box.write_file.remote("/w/x.sh", "echo from-file"), timeout=30)
        r = ray.get(box.exec.remote("sh x.sh"), timeout=30)
        assert (r.exit_code, r.stdout) == (0, "from-file\n")
        assert ray.get(box.get_status.remote(), timeout=30) == sbx.SandboxStatus.RUNNING
    finally:
        ray.get(box.delete.remote(), timeout=30)
        ray.kill(box)
    assert name not in list_containers()
