"""The policy model: what a validated policy says, as plain immutable records.

Records, not dataclasses (``lxcbind._lite.record``): import time is part of every one-shot run.
Everything here is immutable after parsing; share ``Policy`` objects freely between threads.
The network section's records live with their meaning in ``lxcbind.policy.network``.
"""

from __future__ import annotations

from typing import Any, Literal

from lxcbind._lite import record
from lxcbind.policy.network import LegacyNetwork, Network

__all__ = ["Filesystem", "Lifecycle", "Limits", "Lxc", "OPT_INS", "Policy", "Process", "Rootfs",
           "UNLIMITED"]


@record
class Process:
    """What to run: ``/bin/sh -c command_line`` in ``cwd`` with exactly ``env``."""

    command_line: str
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()   # (key, value), duplicates resolved (last wins)
    timeout_ms: int = 0                      # 0 = no timeout

    @property
    def argv(self) -> tuple[str, ...]:
        return ("/bin/sh", "-c", self.command_line)

    @property
    def timeout(self) -> float | None:
        """The timeout in seconds, or None for no timeout."""
        return self.timeout_ms / 1000 if self.timeout_ms else None

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@record
class Lifecycle:
    destroy_on_exit: bool = True
    preserve_policy: bool = False


@record
class Filesystem:
    readwrite_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    denied_paths: tuple[str, ...] = ()


@record
class Rootfs:
    """Where the root filesystem comes from (lxcbind extension ``lxc.rootfs``)."""

    kind: Literal["host", "busybox", "download", "dir", "image"]
    path: str | None = None           # ``dir``: the directory; ``image``: the image reference
    distribution: str | None = None   # only for ``download`` (lxc.distribution, lxc.release)
    release: str | None = None
    arch: str | None = None           # for ``download``: None = this machine's


@record
class Limits:
    """Resource limits (lxcbind extension ``lxc.limits``); None = lxcbind's default, and
    ``UNLIMITED`` (from ``"max"``) = no limit at all."""

    memory: int | None = None     # bytes, memory and swap together
    pids: int | None = None
    cpu: float | None = None      # CPUs' worth of time per period
    disk: int | None = None       # bytes of the root filesystem's writable layer


UNLIMITED = -1
OPT_INS = ("nesting", "perf", "ptrace")    # lxc.allow: protections a policy may give up, by name


@record
class Lxc:
    distribution: str | None = None
    release: str | None = None
    rootfs: Rootfs = Rootfs("host")
    privileged: bool = False      # no user namespace: root inside is root outside
    limits: Limits = Limits()
    allow: tuple[str, ...] = ()   # opt-ins from OPT_INS
    uid: int | None = None        # the workload's user inside (None: root)
    gid: int | None = None


@record(uncompared=("origin",))
class Policy:
    """A validated policy.  ``warnings`` are harmless oddities worth showing in ``--dry-run``."""

    process: Process
    version: str | None = None                     # as written ("" and absent → None)
    schema_version: tuple[int, int, int] | None = None
    containment: Literal["lxc"] = "lxc"
    container_id: str | None = None                # None: the runtime names the container
    lifecycle: Lifecycle = Lifecycle()
    filesystem: Filesystem = Filesystem()
    lxc: Lxc = Lxc()
    network: Network = Network("legacy", False, legacy=LegacyNetwork())
    ignored_sections: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    origin: str = "<policy>"   # not compared

    def to_plan(self) -> dict[str, Any]:
        """A JSON-able summary of the effective settings, for ``--dry-run``.

        Environment values are not included (they often hold secrets); only the keys are.
        """
        rootfs = self.lxc.rootfs
        return {
            "origin": self.origin,
            "version": self.version,
            "containment": self.containment,
            "containerId": self.container_id,
            "process": {
                "argv": list(self.process.argv),
                "cwd": self.process.cwd,
                "envKeys": [k for k, _ in self.process.env],
                "timeoutMs": self.process.timeout_ms,
            },
            "lifecycle": {"destroyOnExit": self.lifecycle.destroy_on_exit,
                          "preservePolicy": self.lifecycle.preserve_policy},
            "filesystem": {"readwritePaths": list(self.filesystem.readwrite_paths),
                           "readonlyPaths": list(self.filesystem.readonly_paths),
                           "deniedPaths": list(self.filesystem.denied_paths)},
            "rootfs": {"kind": rootfs.kind, "path": rootfs.path,
                       "distribution": self.lxc.distribution, "release": self.lxc.release},
            "isolation": {"privileged": self.lxc.privileged, "allow": list(self.lxc.allow),
                          "uid": self.lxc.uid, "gid": self.lxc.gid,
                          "limits": {"memory": self.lxc.limits.memory,
                                     "pids": self.lxc.limits.pids,
                                     "cpu": self.lxc.limits.cpu,
                                     "disk": self.lxc.limits.disk}},
            "network": {"shape": self.network.shape, **self.network.effective().to_dict()},
            "ignoredSections": list(self.ignored_sections),
            "warnings": list(self.warnings),
        }
