"""Sandboxed batches on a Ray cluster: a pool of lxcbind Sessions, a few per node.

Optional extra (``pip install 'lxcbind[ray]'``); ``import lxcbind`` never imports Ray.

    import ray, lxcbind.ray
    ray.init(address=...)                       # nodes started with --resources='{"lxcbind": 4}'
    with lxcbind.ray.SessionPool(policy, per_node=1) as pool:
        results = pool.map(["echo hi", ["python3", "-c", "print(1)"]], timeout=10)
        for run in pool.imap_unordered(commands):   # as batches finish; run.index says which
            ...

What each part is for:

* **Placement.**  ``per_node`` actors on every alive node that offers the custom resource
  (``"lxcbind"`` by default), pinned with a *soft* node affinity so a restarted actor may land
  elsewhere.  Actors ask for ``num_cpus=0`` plus one unit of the custom resource: actors that
  wait for CPUs other actors hold pend forever, while the custom resource only says where
  sandboxes may run.
* **Restarts.**  ``max_restarts=-1``; a restarted actor first reaps, with ``lxcbind.gc``, what
  its SIGKILLed predecessor left on the node (container, network state), then starts a fresh
  Session.  Calls are not retried by Ray (``max_task_retries=0``): ``fanout.Dispatch`` resubmits
  a lost batch itself, preferably to another actor, and counts it.
* **Batching.**  Commands travel in batches sized by ``fanout.auto_batch_size``, with
  ``inflight`` calls per actor at once (a threaded actor; ``Session.run`` is thread-safe).
  Ray's ``ActorPool`` keeps one call in flight per actor, which leaves the actor idle for every
  round trip, so it is not used.
* **Policy.**  Validated on the driver (``PolicyError`` naming the JSON path, before any actor
  exists) and sent to the nodes as plain JSON; every actor reports its own setup failure (a
  bind path missing on that node, say) and ``SessionPool`` raises ``NodeSetupError`` listing
  them per node, unless ``allow_partial=True`` and at least one actor came up.
* **No phoning home.**  Importing this module sets ``RAY_USAGE_STATS_ENABLED=0`` unless it is
  already set: usage reporting would try to reach the internet.
* **Loopback clusters.**  ``local_cluster()`` builds a one-machine cluster on ``127.0.0.1``
  (tests, benchmarks) with fast health checks.  Ray rewrites a loopback head address to the
  machine's own address, and the driver then hangs connecting to it;
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps loopback.  It is set only there: on a real
  multi-machine cluster it would make every node advertise 127.0.0.1.

* **A hostile command** shares its session's container with the spawner and can kill it: the
  batch it was in is lost (resubmitted, or reported lost), and the actor starts a new session
  for the next batches.  Workloads that must not share a container use ``fresh=True``: one
  container per command.

Results are ``fanout.RemoteRun``: a ``CompletedRun`` plus ``index``, ``node``, ``attempt`` and
``lost``.  ``close()`` stops every actor's session (its container is destroyed) and then kills
the actors.  ``lxcbind.ray.sandbox`` puts lxcbind behind Ray's own sandbox API.
"""

from __future__ import annotations

import os

# Usage reporting would try to reach the internet from every cluster this process starts.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import json  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Iterable, Iterator, Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from lxcbind.errors import LxcbindError, SandboxError, SessionError  # noqa: E402
from lxcbind.fanout import (  # noqa: E402
    Command,
    Dispatch,
    Record,
    RemoteRun,
    auto_batch_size,
    make_batches,
    to_record,
)
from lxcbind.policy.parse import load_policy  # noqa: E402

__all__ = ["SessionPool", "NodeSetupError", "RemoteRun", "policy_json", "local_cluster",
           "RESOURCE"]

RESOURCE = "lxcbind"


class NodeSetupError(SandboxError):
    """Sessions could not start on some nodes.  ``failures`` maps node id → reason."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(failures)
        lines = "; ".join(f"node {node[:12]}: {why}" for node, why in self.failures.items())
        super().__init__(f"lxcbind session setup failed on {len(self.failures)} node(s): {lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.failures,))


def policy_json(policy: Any) -> str:
    """The policy as JSON text, validated here (``PolicyError`` names the field).

    Accepts a dict, JSON text or a path; the text, not a ``Policy`` object, is what travels:
    each node parses it again against its own filesystem.
    """
    if isinstance(policy, Mapping):
        text = json.dumps(dict(policy))
    elif isinstance(policy, (str, bytes)) and policy.lstrip()[:1] in ("{", b"{"):
        text = policy.decode("utf-8-sig") if isinstance(policy, bytes) else policy
    elif isinstance(policy, (str, os.PathLike)):
        text = Path(policy).read_text(encoding="utf-8-sig")
    else:
        raise TypeError("policy must be a dict, JSON text or a path (it is sent to the nodes "
                        f"as JSON), not {type(policy).__name__}")
    load_policy(text)
    return text


def _with_container_id(text: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    data["containerId"] = name
    return data


_FRESH = "fresh"  # stands for the session in fresh-container mode


class _SessionActor:
    """One Session on one node (a Ray actor; threaded: ``inflight`` batches at once), or, in
    fresh mode, a fresh container per command (``lxcbind.run``)."""

    def __init__(self, policy_text: str, name: str, fresh: bool = False) -> None:
        from lxcbind.sandbox import core as sandbox
        from lxcbind.sandbox.core import Session

        ctx = ray.get_runtime_context()
        self.node = ctx.get_node_id()
        with warnings.catch_warnings():  # it reads a deprecated property internally (Ray 2.60)
            warnings.simplefilter("ignore")
            self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.name = f"{name}-{uuid.uuid4().hex[:6]}" if self.restarted else name
        self.error = ""
        self.session: Any = None
        self._lock = threading.Lock()
        self.fresh = fresh
        self._policy = json.loads(policy_text)
        self._count = 0
        self.container = self.name
        self.renewed = 0
        self.reaped = sandbox.gc()  # what a SIGKILLed predecessor on this node left
        try:
            if fresh:  # one probe run: this node's setup failures show now, not per command
                sandbox.run(_with_container_id(policy_text, self.name), timeout=30)
                self.session = _FRESH
            else:
                self.session = Session.from_policy(_with_container_id(policy_text, self.name))
        except (LxcbindError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict[str, Any]:
        return {"node": self.node, "host": socket.gethostname(), "error": self.error,
                "container": self.container, "pid": os.getpid(), "restarted": self.restarted,
                "reaped": self.reaped, "renewed": self.renewed}

    def run_batch(self, items: list[tuple[int, Command]],
                  run_kwargs: dict[str, Any]) -> tuple[str, list[Record]]:
        session = self.session
        if session is None:
            raise SandboxError(f"no session on node {self.node}: {self.error or 'closed'}")
        # One command at a time per call: the calls in flight are the concurrency.
        run = self._fresh_run if self.fresh else session.run
        try:
            return self.node, [to_record(run(cmd, **run_kwargs), i) for i, cmd in items]
        except SessionError:
            # The spawner is gone: a command killed it (it runs in the same container), or the
            # container stopped.  This batch is lost; later ones get a new session.
            self._renew(session)
            raise

    def _renew(self, dead: Any) -> None:
        from lxcbind.sandbox.core import Session

        with self._lock:
            if self.session is not dead:
                return  # another call renewed it already (or the actor is closing)
            self.session = None
            dead.close()
            self.renewed += 1
            self.container = f"{self.name}-r{self.renewed}"
            try:
                self.session = Session.from_policy(
                    _with_container_id(json.dumps(self._policy), self.container))
            except (LxcbindError, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"

    def _fresh_run(self, command: Command, *, env: Mapping[str, str] | None = None,
                   cwd: str | None = None, **kwargs: Any) -> Any:
        """One command in its own container (set up, run, destroyed) under the policy."""
        from lxcbind.sandbox import core as sandbox

        with self._lock:
            self._count += 1
            name = f"{self.name}-{self._count}"
        policy = json.loads(json.dumps(self._policy))
        policy["containerId"] = name
        process = policy.setdefault("process", {})
        process["commandLine"] = command if isinstance(command, str) else shlex.join(command)
        if env:
            process["env"] = list(process.get("env", [])) + [f"{k}={v}" for k, v in env.items()]
        if cwd:
            process["cwd"] = cwd
        return sandbox.run(policy, **kwargs)

    def close(self) -> None:
        with self._lock:
            session, self.session = self.session, None
        if session is not None and session is not _FRESH:
            session.close()
        self.error = self.error or "closed"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


class SessionPool:
    """Sessions on a Ray cluster, ``per_node`` on every node offering ``resource``.

    ``inflight``: calls sent to one actor at once (commands run concurrently in its session).
    ``batch_size``: commands per call (None: ``fanout.auto_batch_size`` per ``map``).
    ``retries``: how many times a lost batch is resubmitted (0: lost results instead).
    ``start_timeout``: seconds for every actor to report ready.  ``name_prefix``: container
    names are ``<prefix><8 hex>``.  ``allow_partial``: start even if some actors failed.
    ``fresh``: one container per command (set up, run, destroyed: ~25 ms each instead of
    ~0.5 ms) for workloads that must not share a container; run keywords are then ``timeout``,
    ``input``, ``max_output``, ``env`` and ``cwd``.
    ``nodes``: only these node ids (default: every alive node offering ``resource``).
    ``actor_options``: extra ``.options()`` for the actors (``runtime_env`` ...).

    Raises ``PolicyError`` (on the driver, before any actor exists), ``NodeSetupError``, or
    ``SandboxError`` when no alive node offers ``resource``.
    """

    def __init__(self, policy: Any, *, per_node: int = 1, inflight: int = 2,
                 batch_size: int | None = None, retries: int = 1, resource: str = RESOURCE,
                 start_timeout: float = 120.0, name_prefix: str = "lxcbind-ray-",
                 allow_partial: bool = False, fresh: bool = False,
                 nodes: Iterable[str] | None = None,
                 actor_options: Mapping[str, Any] | None = None) -> None:
        if per_node < 1 or inflight < 1 or retries < 0:
            raise ValueError("per_node and inflight must be >= 1, retries >= 0")
        self.policy = policy_json(policy)  # fails fast with the JSON path
        self.inflight = inflight
        self.fresh = fresh
        self.batch_size = batch_size
        self.retries = retries
        self.stats: dict[str, int] = {"batches": 0, "resubmitted": 0, "lost": 0}
        self.actors: list[Any] = []
        self.info: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}
        wanted = None if nodes is None else set(nodes)
        nodes_seen: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        alive = [n for n in nodes_seen if n.get("Alive") and n["Resources"].get(resource, 0) > 0
                 and (wanted is None or n["NodeID"] in wanted)]
        if not alive:
            raise SandboxError(f"no alive Ray node offers the custom resource {resource!r} "
                               f"(start nodes with --resources='{{\"{resource}\": 4}}')")
        remote = ray.remote(_SessionActor)
        try:
            for node in alive:
                for _ in range(per_node):
                    opts = dict(num_cpus=0, resources={resource: 1}, max_restarts=-1,
                                max_task_retries=0, max_concurrency=inflight + 2,
                                scheduling_strategy=NodeAffinitySchedulingStrategy(
                                    node["NodeID"], soft=True))
                    opts.update(actor_options or {})
                    name = f"{name_prefix}{uuid.uuid4().hex[:8]}"
                    self.actors.append(remote.options(**opts).remote(self.policy, name, fresh))
            self._await_ready(start_timeout, allow_partial)
        except BaseException:
            self.close()
            raise

    def _await_ready(self, timeout: float, allow_partial: bool) -> None:
        refs = [a.ready.remote() for a in self.actors]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        good = []
        for actor, ref in zip(self.actors, refs, strict=True):
            if ref in pending:
                self.failures[f"actor-{len(self.failures)}"] = f"not ready within {timeout}s"
                continue
            try:
                info = ray.get(ref, timeout=1)
            except ray.exceptions.RayError as exc:
                self.failures[f"actor-{len(self.failures)}"] = _describe(exc)
                continue
            if info["error"]:
                self.failures[info["node"]] = info["error"]
            else:
                good.append(actor)
                self.info.append(info)
        if self.failures and not (allow_partial and good):
            raise NodeSetupError(self.failures)
        self._bad = [a for a in self.actors if a not in good]
        self.actors = good

    # -- running --------------------------------------------------------------------------

    def imap_unordered(self, commands: Iterable[Command], *, deadline: float | None = None,
                       batch_size: int | None = None, **run_kwargs: Any) -> Iterator[RemoteRun]:
        """Run every command (``Session.run`` keywords: ``timeout``, ``input``, ``env``,
        ``cwd``, ``max_output`` ...) and yield results as their batches finish.

        ``deadline``: seconds for the whole call; past it ``TimeoutError`` is raised.
        """
        if "check" in run_kwargs:
            raise TypeError("check= is not supported: inspect each result instead")
        if self.fresh:
            extra = set(run_kwargs) - {"timeout", "input", "max_output", "env", "cwd"}
            if extra:
                raise TypeError(f"not supported in fresh mode: {', '.join(sorted(extra))}")
        if not self.actors:
            raise SessionError("the pool is closed (or none of its actors started)")
        items = list(commands)
        size = batch_size or self.batch_size or auto_batch_size(len(items), len(self.actors),
                                                                self.inflight)
        batches = make_batches(items, size)
        if not batches:
            return
        dispatch: Dispatch[Any] = Dispatch(
            slots=self.actors, inflight=self.inflight, retries=self.retries,
            submit=lambda actor, batch: actor.run_batch.remote(batch.items, run_kwargs).future(),
            deadline=None if deadline is None else time.monotonic() + deadline,
            describe=_describe, slot_name=lambda actor: f"actor {actor._actor_id.hex()[:12]}")
        try:
            yield from dispatch.run(batches)
        finally:
            for key in ("batches", "resubmitted", "lost"):
                self.stats[key] += getattr(dispatch, key)

    def map(self, commands: Iterable[Command], **kwargs: Any) -> list[RemoteRun]:
        """``imap_unordered``, collected in input order."""
        items = list(commands)
        results: list[RemoteRun | None] = [None] * len(items)
        for run in self.imap_unordered(items, **kwargs):
            results[run.index] = run
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def run(self, command: Command, **kwargs: Any) -> RemoteRun:
        return self.map([command], **kwargs)[0]

    # -- lifecycle ------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Close every session (containers destroyed), then kill the actors.  Idempotent."""
        actors = self.actors + getattr(self, "_bad", [])
        self.actors, self._bad = [], []
        deadline = time.monotonic() + timeout
        pending = list(actors)
        while pending and time.monotonic() < deadline:
            # A restarting actor (its node died) may refuse the call for a while: ask again,
            # or its fresh container would be left to gc when it is killed below.
            refs = {a.close.remote(): a for a in pending}
            ray.wait(list(refs), num_returns=len(refs),
                     timeout=max(0.0, deadline - time.monotonic()))
            pending = []
            for ref, actor in refs.items():
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.ActorDiedError:
                    pass  # gone for good: nothing of it can be closed from here
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    pending.append(actor)
            if pending:
                time.sleep(0.2)
        for actor in actors:
            ray.kill(actor, no_restart=True)

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_cluster(nodes: int = 2, *, per_node_resource: int = 4, num_cpus: int = 1,
                  fast_health_checks: bool = True) -> Any:
    """A Ray cluster on loopback for tests and benchmarks: a head without the resource and
    ``nodes`` nodes offering ``RESOURCE``, started with Ray's own ``cluster_utils``.  The
    caller connects (``ray.init(address=cluster.address)``) and shuts it down."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Keep 127.0.0.1 (see the module docstring).  The node processes read the variable; this
    # process read it when Ray was first imported, possibly before we could set it.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    system: dict[str, Any] = {}
    if fast_health_checks:
        # A killed node is noticed in ~1.5 s instead of ~15 s with the defaults.
        system = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                  "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": num_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "_system_config": system})
    for _ in range(nodes):
        cluster.add_node(num_cpus=num_cpus, node_ip_address="127.0.0.1",
                         resources={RESOURCE: per_node_resource})
    return cluster
