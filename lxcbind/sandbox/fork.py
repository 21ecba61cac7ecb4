"""Branching a running sandbox: ``snapshot`` (its root filesystem as an image) and ``fork``
(fresh sandboxes that start from it).

A snapshot copies the container's overlay upper directory while the cgroup freezer holds
every process of the container still, so the layer is consistent even while the workload
writes (``lxcbind.image.snapshot``).  The upper directory of a disk-limited sandbox lives on
a filesystem whose host mount was detached right after start; the sandbox's open descriptor
on it (``disk.Layer``) still reaches it.  Only the root filesystem's writable layer is
captured: writable host binds and tmpfs mounts (``/tmp`` of the ``host`` root, ``/dev/shm``)
are not part of it.

A fork is a new ``Sandbox`` of the same policy (its own name, id range, writable layer and
disk limit, network lease and rules) on an *ephemeral* snapshot taken for the fork; the
snapshot is removed when the last container using it is gone (each fork's ``close``, or
``lxcbind gc`` after a runner was killed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from lxcbind._lite import replace
from lxcbind.errors import SandboxError
from lxcbind.image import snapshot as _snapshot
from lxcbind.image import store
from lxcbind.lxc import cgroups
from lxcbind.policy.model import Policy, Rootfs
from lxcbind.sandbox import disk, idmap, rootfs

MAX_FORKS = 256   # a fork is a container and an id range: a typo must not start thousands
STARTERS = 2      # forks set up at a time


class Source(Protocol):
    """What a snapshot or a fork needs of a running ``Sandbox`` (``core`` imports this module,
    not the other way round)."""

    name: str
    lxcpath: str
    policy: Policy
    image: store.Image | None
    _snapshot: _snapshot.Snapshot | None
    _base: Rootfs
    _ids: idmap.IdRange | None
    _disk: disk.Layer | None
    _start_timeout: float
    _log: Callable[[str], None]
    _warn: Callable[[str], None]

    def _running(self, call: str) -> Any: ...

    def open(self) -> None: ...

    def close(self, failed: bool = False) -> None: ...


S = TypeVar("S", bound=Source)


def snapshot(box: Source, name: str | None = None, *,
             ephemeral: bool = False) -> _snapshot.Snapshot:
    """Capture ``box``'s root filesystem (see the module docstring).  Raises ``SandboxError``."""
    c = box._running("snapshot")
    init_pid = c.init_pid
    if init_pid is None:
        raise SandboxError(f"Sandbox.snapshot(): container {box.name!r} is not running")
    cdir = os.path.join(box.lxcpath, box.name)
    upper = box._disk.upper() if box._disk is not None else os.path.join(cdir, rootfs.UPPER)

    @contextlib.contextmanager
    def frozen() -> Iterator[None]:
        try:
            freezer = cgroups.frozen(init_pid)
            freezer.__enter__()
        except OSError as exc:
            raise SandboxError(f"snapshot: cannot freeze container {box.name!r} "
                               f"({exc.strerror or exc}), so its files could change while "
                               "they are copied; refusing") from None
        try:
            yield
        finally:
            freezer.__exit__(None, None, None)

    return _snapshot.capture(upper, start=box._ids.start if box._ids is not None else None,
                             base=box._base, parent=box._snapshot, image=box.image, name=name,
                             ephemeral=ephemeral, source=f"snapshot of {box.name}",
                             frozen=frozen)


def fork(box: S, n: int, make: Callable[..., S]) -> list[S]:
    """``n`` started sandboxes from ``box``'s current filesystem (see the module docstring).
    All or nothing: if one cannot be set up, those already started are closed and the error
    is raised.  ``make``: the sandbox class (``Sandbox``)."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_FORKS:
        raise ValueError(f"Sandbox.fork(n): n must be an int from 1 to {MAX_FORKS}, got {n!r}")

    snap = snapshot(box, ephemeral=True)
    # Thrown away when closed, and named after the source (``<source>-f<random>``: a fork is
    # recognisably the source's, and a containerId would collide).
    policy = replace(box.policy, lifecycle=replace(box.policy.lifecycle, destroy_on_exit=True))
    forks = [make(replace(policy, container_id=f"{box.name[:54]}-f{os.urandom(4).hex()}"),
                  lxcpath=box.lxcpath, image=snap, log=box._log, warn=box._warn,
                  start_timeout=box._start_timeout)
             for _ in range(n)]   # nothing exists yet: a Sandbox is made by open()
    try:
        # Started ``STARTERS`` at a time, as a Pool's are (the set-up is CPU-bound).
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(n, STARTERS), thread_name_prefix="lxcbind-fork") as pool:
            for job in [pool.submit(child.open) for child in forks]:
                job.result()   # the first failure, once every open has returned
    except BaseException:
        for child in forks:
            child.close(failed=True)
        _snapshot.prune(box.lxcpath, only=snap.id)
        raise
    return forks
