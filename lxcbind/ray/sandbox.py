"""lxcbind behind Ray's alpha sandbox API (``ray.experimental.sandbox``, Ray 2.60).

Ray's API is one actor per sandbox in front of a backend with create/exec/read/write/status/
delete.  Its only backend, gVisor, runs a ``runsc exec`` program for every command and every
file read or write (a fork+exec of a Go binary that then joins the sandbox).  Here each sandbox
is an lxcbind ``Session``: one liblxc attach when the sandbox is created, then every command,
read and write is a ``clone`` by the resident spawner inside the container; nothing is spawned
on the host per command.

    from lxcbind.ray.sandbox import create
    box = create(image="host", workdir="/work")     # an actor handle, like ray's create()
    ray.get(box.exec.remote("echo hi")).stdout       # 'hi\\n'
    ray.get(box.write_file.remote("/work/a.py", "print(1)"))
    ray.get(box.delete.remote())

Pieces: ``LxcbindSandboxBackend`` (a ``BaseSandboxBackend``), ``LxcbindSandboxRuntime`` (a
``SandboxRuntime`` with that backend: TTLs, upload/download come from Ray's class), the actor
``LxcbindSandbox`` and ``create()``.

What maps, and what is refused rather than silently weakened (fail closed):

* ``image``: an lxcbind root filesystem: ``"host"`` (default), ``"busybox"``,
  ``"dir:/abs/path"``, or a local image (``"oci:/path[:tag]"``,
  ``"docker-archive:/path.tar[:name:tag]"``, ``"image:ID"`` of the store: imported on the
  worker's machine on first use); a registry name is a ``SandboxCreationError``.
* ``network``: ``"none"`` only (no network device but loopback).  Egress rules are lxcbind
  policy: pass ``policy={"network": ...}``, it is the base of every sandbox's policy.
* ``readonly=True`` (Ray's default) is refused: lxcbind gives each sandbox a private
  copy-on-write overlay dropped with it, but does not make the root read-only.  Pass
  ``readonly=False`` (``create()`` here defaults to it).
* ``cpu``/``memory``/``capabilities``/``dns``, and the per-command ``user``: refused when set
  (a Session runs every command as one uid; limits belong to the policy's ``lxc`` section).
* ``env``, ``workdir`` (created if missing), ``shell`` and ``ttl_seconds`` behave as in Ray.
* A command timeout raises ``SandboxTimeoutError`` like the gVisor backend, after lxcbind has
  killed the command's process group.
* Output stays bounded in the worker: ``exec_command`` keeps 16 MiB per stream (head and tail,
  ``lxcbind.DEFAULT_MAX_OUTPUT``, with the omitted-bytes marker between); ``read_file``
  refuses a file larger than 256 MiB (``SandboxError``) rather than cutting it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ray
from ray.experimental.sandbox import (
    BaseSandboxBackend,
    ExecResult,
    SandboxCreationError,
    SandboxError,
    SandboxExecError,
    SandboxNotFoundError,
    SandboxRuntime,
    SandboxStatus,
    SandboxTimeoutError,
)
from ray.experimental.sandbox.config import SandboxConfig

from lxcbind.errors import LxcbindError

from . import RESOURCE, policy_json

READ_FILE_MAX = 256 << 20   # read_file's limit, as Sandbox.get's default max_size

if TYPE_CHECKING:
    from lxcbind.sandbox.core import Session

__all__ = ["LxcbindSandboxBackend", "LxcbindSandboxRuntime", "LxcbindSandbox", "create"]

_IMAGES = ("host", "busybox")


class _RootfsImages:
    """The runtime's image manager: lxcbind root filesystems need no pull."""

    def pull_image(self, image: str, timeout_seconds: float = 120.0,
                   instance_id: str | None = None) -> str:
        _rootfs(image)
        return image

    def release_image(self, image: str, instance_id: str) -> None:
        pass


def _rootfs(image: str) -> str:
    from lxcbind.policy.parse import IMAGE_PREFIXES

    if image in _IMAGES or (image.startswith("dir:/") and len(image) > 5) or \
            image.startswith(IMAGE_PREFIXES):
        return image
    raise SandboxCreationError(
        f"image {image!r}: the lxcbind backend runs lxcbind root filesystems ('host', "
        "'busybox', 'dir:/abs/path') and local images ('oci:/path[:tag]', "
        "'docker-archive:/path.tar[:name:tag]', 'image:ID'), not OCI images from a registry")


def _refuse(config: SandboxConfig) -> None:
    reasons = []
    if config.network != "none":
        reasons.append(f"network={config.network!r} (only 'none'; give egress rules as an "
                       "lxcbind policy)")
    if config.readonly:
        reasons.append("readonly=True is not enforced by lxcbind (writes go to a private "
                       "overlay dropped with the sandbox): pass readonly=False")
    if config.cpu or config.memory:
        reasons.append("cpu/memory limits (set them in the lxcbind policy's lxc section)")
    if config.capabilities is not None:
        reasons.append("capabilities (lxcbind applies its own keep-list)")
    if config.dns is not None:
        reasons.append("dns")
    if reasons:
        raise SandboxCreationError("lxcbind backend: not supported: " + "; ".join(reasons))


class LxcbindSandboxBackend(BaseSandboxBackend):
    """Sandboxes as lxcbind Sessions in this process (thread-safe).

    ``policy``: an lxcbind policy (dict, JSON text or path) used as the base of every sandbox;
    ``image``, ``env`` and the container name are filled in per sandbox.
    """

    def __init__(self, image_manager: Any = None, *, policy: Any = None,
                 name_prefix: str = "lxcbind-sbx-") -> None:
        super().__init__(image_manager or _RootfsImages())
        base = {"version": "0.8.0", "process": {"commandLine": "true"}}
        self._base = json.loads(policy_json(policy)) if policy is not None else base
        self._prefix = name_prefix
        self._lock = threading.Lock()
        self._boxes: dict[str, tuple[Session, SandboxConfig, str]] = {}

    def create_sandbox(self, config: SandboxConfig) -> str:
        from lxcbind.sandbox.core import Session

        rootfs = _rootfs(config.image)
        _refuse(config)
        name = f"{self._prefix}{uuid.uuid4().hex[:8]}"
        policy = json.loads(json.dumps(self._base))
        policy["containerId"] = name
        process = policy.setdefault("process", {"commandLine": "true"})
        process["env"] = list(process.get("env", [])) + [f"{k}={v}" for k, v in config.env.items()]
        policy.setdefault("lxc", {})["rootfs"] = rootfs
        cwd = config.workdir or "/"
        try:
            session = Session.from_policy(policy_json(policy), start_timeout=config.timeout_seconds)
        except (LxcbindError, OSError) as exc:
            raise SandboxCreationError(f"lxcbind: {exc}") from exc
        if cwd != "/":
            made = session.run(["mkdir", "-p", "--", cwd])
            if made.returncode:
                session.close()
                why = made.stderr.decode(errors="replace")
                raise SandboxCreationError(f"workdir {cwd!r}: {why}")
        with self._lock:
            self._boxes[name] = (session, config, cwd)
        return name

    def _get(self, sandbox_id: str) -> tuple[Session, SandboxConfig, str]:
        with self._lock:
            box = self._boxes.get(sandbox_id)
        if box is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id!r} not found or already deleted")
        return box

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self._lock:
            box = self._boxes.pop(sandbox_id, None)
        if box is not None:
            box[0].close()  # kills its commands, destroys the container

    def exec_command(self, sandbox_id: str, command: str | list[str],
                     timeout: float | None = None, cwd: str | None = None,
                     env: dict[str, str] | None = None, shell: str | None = None,
                     user: str | None = None) -> ExecResult:
        session, config, workdir = self._get(sandbox_id)
        if user is not None:
            raise SandboxExecError("lxcbind backend: per-command user is not supported (a "
                                   "session runs every command as one uid)")
        argv = list(command) if isinstance(command, list) else [shell or config.shell, "-c",
                                                                 command]
        try:
            run = session.run(argv, timeout=timeout, cwd=cwd or workdir, env=env)
        except LxcbindError as exc:
            raise SandboxExecError(f"lxcbind: {exc}") from exc
        if run.timed_out:
            raise SandboxTimeoutError(f"command timed out after {timeout} seconds (killed)")
        stderr = run.stderr.decode(errors="replace")   # a start failure's reason included
        return ExecResult(exit_code=run.exit_status, stdout=run.stdout.decode(errors="replace"),
                          stderr=stderr, duration_seconds=run.duration)

    def write_file(self, sandbox_id: str, path: str, content: str | bytes,
                   append: bool = False) -> None:
        session, _, workdir = self._get(sandbox_id)
        data = content.encode() if isinstance(content, str) else bytes(content)
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat ' + (">>" if append else ">") + ' "$1"'
        run = session.run(["/bin/sh", "-c", script, "sh", path], input=data or None, cwd=workdir)
        if run.returncode:
            raise SandboxError(f"cannot write {path!r}: {run.stderr.decode(errors='replace')}")

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        session, _, workdir = self._get(sandbox_id)
        # head stops one byte past the cap: a huge (or endless) file costs nothing more, and
        # a file that does not fit is an error, never a silently cut one.
        run = session.run(["head", "-c", str(READ_FILE_MAX + 1), "--", path], cwd=workdir,
                          max_output=READ_FILE_MAX + 1)
        if run.returncode:
            raise SandboxError(f"cannot read {path!r}: {run.stderr.decode(errors='replace')}")
        if len(run.stdout) > READ_FILE_MAX:
            raise SandboxError(f"cannot read {path!r}: larger than {READ_FILE_MAX} bytes")
        return run.stdout

    def get_status(self, sandbox_id: str) -> SandboxStatus:
        with self._lock:
            box = self._boxes.get(sandbox_id)
        if box is None:
            return SandboxStatus.TERMINATED
        return SandboxStatus.RUNNING if box[0].alive else SandboxStatus.ERROR


class LxcbindSandboxRuntime(SandboxRuntime):
    """Ray's ``SandboxRuntime`` (TTL timers, upload/download) over ``LxcbindSandboxBackend``."""

    def __init__(self, *, policy: Any = None, name_prefix: str = "lxcbind-sbx-") -> None:
        # Not super().__init__(): it would build the gVisor backend.  Ray annotates these two
        # attributes with its gVisor classes; ours have the same methods (duck-typed).
        self._image_manager = _RootfsImages()  # type: ignore[assignment]
        self._backend = LxcbindSandboxBackend(  # type: ignore[assignment]
            self._image_manager, policy=policy, name_prefix=name_prefix)
        self._ttl_timers: dict[str, threading.Timer] = {}


class LxcbindSandbox:
    """One sandbox per actor, with the method names of ``ray.experimental.sandbox.Sandbox``."""

    def __init__(self, image: str = "host", env: Mapping[str, str] | None = None,
                 workdir: str | None = None, ttl_seconds: int | None = None,
                 timeout_seconds: float = 30.0, network: str = "none", readonly: bool = False,
                 policy: Any = None, name_prefix: str = "lxcbind-sbx-", **kwargs: Any) -> None:
        from lxcbind.sandbox import core as sandbox

        sandbox.gc()  # what a SIGKILLed predecessor on this node left
        self.runtime = LxcbindSandboxRuntime(policy=policy, name_prefix=name_prefix)
        self.instance_id = self.runtime.create(
            image=image, env=dict(env or {}), workdir=workdir, ttl_seconds=ttl_seconds,
            timeout_seconds=timeout_seconds, network=network, readonly=readonly, **kwargs)

    def get_instance_id(self) -> str:
        return self.instance_id

    def exec(self, command: str | list[str], timeout: float | None = None,
             cwd: str | None = None, env: dict[str, str] | None = None,
             shell: str | None = None) -> ExecResult:
        return self.runtime.exec(self.instance_id, command, timeout=timeout, cwd=cwd, env=env,
                                 shell=shell)

    def upload_file(self, local_path: str, remote_path: str) -> None:
        self.runtime.upload_file(self.instance_id, local_path, remote_path)

    def download_file(self, remote_path: str, local_path: str) -> None:
        self.runtime.download_file(self.instance_id, remote_path, local_path)

    def write_file(self, path: str, content: str | bytes, append: bool = False) -> None:
        self.runtime.write_file(self.instance_id, path, content, append=append)

    def read_file(self, path: str) -> bytes:
        return self.runtime.read_file(self.instance_id, path)

    def get_status(self) -> SandboxStatus:
        return self.runtime.get_status(self.instance_id)

    def delete(self) -> None:
        self.runtime.delete(self.instance_id)

    def terminate(self) -> None:
        self.delete()


def create(image: str = "host", *, resources: Mapping[str, float] | None = None,
           **kwargs: Any) -> Any:
    """Start an ``LxcbindSandbox`` actor (``num_cpus=0`` and one unit of the ``lxcbind``
    resource unless ``resources`` says otherwise) and return its handle.  Keywords are the
    actor's (``env``, ``workdir``, ``ttl_seconds``, ``policy`` ...)."""
    actor = ray.remote(LxcbindSandbox)
    return actor.options(num_cpus=0, resources=dict(resources or {RESOURCE: 1})).remote(
        image, **kwargs)
