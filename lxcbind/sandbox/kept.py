"""Kept containers (``lifecycle.destroyOnExit: false``): which there are, and the policy each
was kept with, for ``lxcbind ls`` / ``exec`` / ``rm``; and what a run that reuses one checks
(its id mapping) and spares (its init and what that started: ``init_processes``).

A CLI run that keeps its container writes ``<STATE_DIR>/kept/<name>.json``: the policy document
it ran (with ``containerId`` set to the container's name) and where it came from.  ``exec``
runs a command under that same document (so the same mounts, isolation and network rules),
``rm`` removes the container and the record.  A record whose container is gone (a later run
with ``destroyOnExit: true`` took it, or ``lxc-destroy``) is stale and dropped when seen.

lxcbind never lists, runs in or removes a container it did not make: only a container with a
record, or whose root filesystem is an overlay on one of lxcbind's bases, counts as its own.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from lxcbind.errors import SandboxError
from lxcbind.lxc import cgroups
from lxcbind.lxc.container import Container, default_lxcpath, list_containers
from lxcbind.sandbox import cleanup, idmap, rootfs
from lxcbind.state import STATE_DIR


class Kept(NamedTuple):
    name: str
    state: str            # liblxc's state: RUNNING, STOPPED ...; "IN USE" while a run holds it
    origin: str | None    # the policy's origin (a file path, "<stdin>", "<default>"), if recorded


def _path(name: str) -> str:
    return str(STATE_DIR / "kept" / f"{name}.json")


def save(name: str, document: dict[str, Any], origin: str) -> None:
    """Record the policy ``name`` was kept with (written atomically)."""
    path = _path(name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"origin": origin, "policy": {**document, "containerId": name}}, f)
    os.replace(tmp, path)


def load(name: str) -> dict[str, Any] | None:
    """The record of ``name`` (``{"origin": ..., "policy": {...}}``), or None."""
    try:
        with open(_path(name), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("policy"), dict) \
        else None


def remove(name: str) -> None:
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        pass


def is_ours(c: Container) -> bool:
    """Whether lxcbind made this (defined) container: a record, or a rootfs on its bases."""
    if load(c.name) is not None:
        return True
    try:
        path = c.get_config_item("lxc.rootfs.path")
    except Exception:  # an unreadable config: not something to claim
        return False
    return path.startswith(f"overlay:{rootfs.BASES_ROOT}/")


def listing(lxcpath: str | None = None) -> list[Kept]:
    """lxcbind's containers in ``lxcpath``, kept or in use by a run, by name."""
    lxcpath = lxcpath or default_lxcpath()
    out = []
    for name in sorted(list_containers(lxcpath)):
        with Container(name, lxcpath) as c:
            if not c.defined or not is_ours(c):
                continue
            state = c.state
        lock = cleanup.ContainerLock(name)
        if lock.acquire(blocking=False):
            lock.release()
        else:
            state = "IN USE"
        record = load(name)
        out.append(Kept(name, state, record.get("origin") if record else None))
    prune(lxcpath)
    return out


def prune(lxcpath: str | None = None) -> list[str]:
    """Drop the records whose container is gone (``ls`` and ``gc`` call it); their names."""
    lxcpath = lxcpath or default_lxcpath()
    kept_dir = STATE_DIR / "kept"
    gone = []
    if kept_dir.is_dir():
        for entry in kept_dir.glob("*.json"):
            if not os.path.isdir(os.path.join(lxcpath, entry.stem)):
                remove(entry.stem)
                gone.append(entry.stem)
    return gone


# -- a run that reuses a kept container -------------------------------------------------------

def check_isolation(c: Container, ids: idmap.IdRange | None) -> None:
    """A kept container is reused only with the isolation it was made with: its id mapping
    is in its files' owners and cannot change underneath them."""
    have = sorted(line for line in c.get_config_item("lxc.idmap").split("\n") if line.strip())
    want = sorted(value for _, value in ids.config()) if ids is not None else []
    if have != want:
        kind = "privileged" if not have else "unprivileged"
        raise SandboxError(f"containerId {c.name!r}: the kept container was made {kind} with "
                           f"other id mappings ({'; '.join(have) or 'none'}); this policy "
                           "needs a new one: remove the kept container first")


def init_processes(c: Container, init_pid: int) -> tuple[int, set[tuple[int, str]]] | None:
    """A kept container's init and the processes it runs before any command (what a run
    spares when it ends), or None without a freezer.  An ``init.lxc ... -- PROGRAM`` init
    (the host root filesystem's) forks its program just after it starts: wait for that child
    (bounded; missing it would only stop the kept container at the end of the run)."""
    try:
        init_cmd = c.get_config_item("lxc.init.cmd")
    except KeyError:
        init_cmd = ""
    if " -- " in init_cmd:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{init_pid}/task/{init_pid}/children") as f:
                    if f.read().strip():
                        break
            except OSError:
                break
            time.sleep(0.002)
    try:
        return init_pid, cgroups.processes(init_pid)
    except OSError:
        return None   # no freezer: ``_stop_workload`` stops the container instead
