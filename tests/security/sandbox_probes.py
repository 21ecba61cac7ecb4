"""Host-side helpers for attacking a ``Pool``'s sandboxes (containers or clones) from inside.

A pooled command cannot talk to the host while it runs, so an attack that needs a sandbox to
stay alive (a victim the attacker looks for, a process whose cgroup the host reads) ends its
setup with ``sleep <marker>``: the host finds that process in its own ``/proc``, does its
checks while the sandbox is held there, and SIGKILLs the ``sleep`` to let the command finish.
No assertion depends on timing: the host waits for the marker (a deadline only turns a hang
into a failure), and the command waits for the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import stat
import textwrap
import threading
import time
from typing import Any

import pytest

import lxcbind
from lxcbind.lxc import cgroups
from lxcbind.state import STATE_ROOT

from ..conftest import requires_clones
from .test_escape import PRELUDE

PY = "/usr/bin/python3"


def make_pool(clones: bool, size: int = 2, **lxc: object) -> lxcbind.Pool:
    """A pool of the default policy (plus ``lxc`` items), of clones or of containers.  No
    ``containerId``: a pool's sandboxes must have names of their own to run side by side."""
    policy: dict[str, Any] = {"version": "0.8.0", "process": {"commandLine": "true"}}
    if lxc:
        policy["lxc"] = lxc
    if clones:
        return lxcbind.Pool(policy, size=size, clones=True)  # type: ignore[call-arg]
    return lxcbind.Pool(policy, size=size)


def marker() -> str:
    """A unique number usable as ``sleep``'s argument (seconds: the host kills it first)."""
    return str(10**8 + secrets.randbelow(10**8))


def host_pids(needle: bytes) -> list[int]:
    """Host pids whose NUL-separated command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def sandbox_init(pid: int) -> int:
    """The host pid of the init of the pid namespace ``pid`` lives in (NSpid ends in 1)."""
    while status(pid)["NSpid"].split()[-1] != "1":
        pid = int(status(pid)["PPid"])
    return pid


def namespaces(pid: int) -> dict[str, str]:
    """``ns name -> 'net:[4026532...]'`` of a host pid (the inode is global: comparable)."""
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}")
            for ns in ("user", "pid", "mnt", "ipc", "uts", "net", "cgroup")}


class Held:
    """A command running in a pooled sandbox of its own until the host releases it.

    ``script`` must end by running ``sleep <self.mark>`` (see ``HOLD``)."""

    def __init__(self, pool: Any, script: str) -> None:   # a Pool, or anything with run()
        self.mark = marker()
        self.result: lxcbind.CompletedRun | None = None
        self.error: BaseException | None = None
        code = script.replace("@MARK@", self.mark)
        self._thread = threading.Thread(target=self._run, args=(pool, code), daemon=True)
        self._thread.start()
        self.pid = self._wait()

    def _run(self, pool: Any, code: str) -> None:
        try:
            self.result = pool.run([PY, "-c", code], timeout=240)
        except BaseException as exc:  # handed to the test by release()
            self.error = exc

    def _wait(self) -> int:
        deadline = time.monotonic() + 180
        needle = f"sleep\0{self.mark}\0".encode()
        while time.monotonic() < deadline:
            pids = host_pids(needle)
            if pids:
                return pids[0]
            if not self._thread.is_alive():
                raise AssertionError(f"the held command ended early: {self.result!r} "
                                     f"{self.error!r}")
            time.sleep(0.02)
        raise AssertionError("the held command never reached its marker")

    def release(self) -> lxcbind.CompletedRun:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._thread.join(timeout=240)
        assert not self._thread.is_alive(), "the held command did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# The end of a held script: python3 waits in a child ``sleep`` the host finds and kills.
HOLD = "import subprocess; subprocess.run(['sleep', '@MARK@'])\n"

MODES = [pytest.param(False, id="container"),
         pytest.param(True, id="clone", marks=requires_clones)]

REFUSED = ("EPERM", "EACCES")


def script(body: str, hold: bool = False) -> list[str]:
    """argv running ``body`` (after ``PRELUDE``'s ``report``/``sc`` helpers) in python3."""
    code = PRELUDE + textwrap.dedent(body) + (HOLD if hold else "")
    return [PY, "-c", code]


def hold_script(body: str) -> str:
    return PRELUDE + textwrap.dedent(body) + HOLD


def template_of(pid: int) -> int | None:
    """For a clone, the host pid of its template's cloner: the parent of the clone's init, in
    the pid namespace one level up.  None for a container (its init's parent is liblxc's
    monitor, on the host)."""
    parent = int(status(sandbox_init(pid))["PPid"])
    nspid = status(parent)["NSpid"].split()
    return parent if len(nspid) > 1 else None


def container_name(pid: int) -> str:
    """The liblxc container a host pid runs in (from its pids cgroup: lxc.payload.<name>)."""
    folder = cgroup_dirs(pid)["pids"] or ""
    parts = [p for p in folder.split("/") if p.startswith("lxc.payload.")]
    assert parts, folder
    return parts[0][len("lxc.payload."):]


def ours() -> set[str]:
    """Names of the sandboxes this test process owns now (its ownership records)."""
    folder = os.path.join(STATE_ROOT, "owners")
    names = set()
    for entry in os.listdir(folder):
        try:
            with open(os.path.join(folder, entry)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if record.get("runner_pid") == os.getpid():
            names.add(record["container"])
    return names


def parse(result: lxcbind.CompletedRun) -> dict[str, str]:
    """``NAME=VALUE`` lines of an attack script's stdout (the command must have exited 0)."""
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, (result, out, result.stderr.decode(errors="replace"))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def fingerprint(root: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every inode under ``root`` on the filesystem of ``root`` itself (not crossing mounts):
    type, mode, owner, size, mtime and ctime (a chmod or chown reverted still moves ctime),
    link target, and a digest of regular files."""
    top = os.lstat(root)
    prints: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel_folder, d)) not in skip
                   and os.lstat(os.path.join(folder, d)).st_dev == top.st_dev]
        for name in [*dirs, *files, "."] if folder == root else [*dirs, *files]:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            prints[os.path.normpath(os.path.join(rel_folder, name))] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                extra)
    return prints


def root_lowerdirs(pid: int) -> list[str]:
    """The lower directories of the overlay at ``/`` of a host pid, as host paths (from its
    mountinfo; relative to the mount namespace that mounted it: the host's for liblxc)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/" and " - overlay " in line:
                options = line.split(" - ", 1)[1].split()[2].split(",")
                for option in options:
                    if option.startswith("lowerdir="):
                        return option[len("lowerdir="):].split(":")
    return []


def cgroup_dirs(pid: int) -> dict[str, str | None]:
    """Host directory of each controller's cgroup of ``pid`` (v1 and v2 names)."""
    return {c: cgroups.process_dir(pid, c) for c in ("memory", "pids", "cpu")}


def read(path: str) -> str:
    with open(path) as f:
        return " ".join(f.read().split())
