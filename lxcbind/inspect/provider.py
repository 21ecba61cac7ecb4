"""``LxcbindSandboxEnvironment``: each Inspect sample in a fresh lxcbind sandbox.

A sample's sandbox is an ``AsyncSession.from_policy`` container: its init is lxcbind's
spawner, so ``exec``, ``read_file`` and ``write_file`` are each one command started by that
spawner (no attach, no fork of the eval process), and ``sample_cleanup`` destroys the
container like a one-shot run.  Inspect's exceptions are raised as its contract says:
``TimeoutError`` (the command and its process group were killed first),
``OutputLimitExceededError``, ``PermissionError``, ``FileNotFoundError``,
``IsADirectoryError``, ``SandboxUserUnsupportedError``, ``SandboxUnavailableError``.

Configuration (``LxcbindSandboxConfig``, or a str: the path of an lxcbind policy file):
``policy``, an lxcbind policy (a dict, or a path to a JSON file; None: lxcbind's default,
deny-all network on the host root filesystem) and ``workdir``, the per-sample working
directory that relative paths and commands without ``cwd`` use (created at sample start as
the default user; default: the policy's ``process.cwd``, else ``/tmp/inspect``), and
``user``, the default user of commands and file operations (a name or uid of the container,
resolved once at sample start; None: the policy's user), with root still reachable through
``exec(user="root")`` as in Docker.

What differs from Docker's provider, on purpose:

* ``exec(user=...)``: a name, uid or ``uid:gid`` of the container's own ``/etc/passwd``
  (``AsyncSession.run(user=...)``: its groups and home too); an unknown name is a failed
  result (126, the reason in stderr).  A policy that fixes ``lxc.uid`` runs every command as
  that user: any other raises ``SandboxUserUnsupportedError``.
* ``timeout_retry`` is ignored: a command that timed out has been killed, and running a
  command twice is not the caller's request.
* ``read_file`` as container root refuses a file whose owner cannot read it
  (``PermissionError``), as Docker's provider does: root itself ignores file modes.
* ``connection()`` is ``lxcbind attach NAME`` (host root, on this machine), as the policy's
  user: the config's default ``user`` is not applied there (attach uses the policy's), and
  ``connection(user=...)`` for another user raises ``NotImplementedError``.
* asyncio only (``INSPECT_ASYNC_BACKEND=trio`` is refused at sample start, clearly): the
  session's I/O runs on asyncio's own readers.
"""

from __future__ import annotations

import errno
import json
import posixpath
from pathlib import Path
from typing import Any, Literal, overload

from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    sandboxenv,
)
from inspect_ai.util._sandbox.environment import (
    SandboxUnavailableError,
    SandboxUserUnsupportedError,
)
from pydantic import BaseModel

from lxcbind.aio import AsyncSession
from lxcbind.errors import FileTransferError, SessionError
from lxcbind.proc import files as _files
from lxcbind.proc.users import User
from lxcbind.sandbox.core import as_policy

DEFAULT_WORKDIR = "/tmp/inspect"


class LxcbindSandboxConfig(BaseModel, frozen=True):
    """``sandbox=("lxcbind", LxcbindSandboxConfig(policy={...}))``."""

    policy: dict[str, Any] | str | None = None
    """An lxcbind policy: a dict, or the path of a JSON policy file (None: the default)."""
    workdir: str | None = None
    """Absolute path of the per-sample working directory (None: ``process.cwd``, else
    ``/tmp/inspect``)."""
    user: str | None = None
    """Who commands and file operations run as when a call names nobody: a name or uid of the
    container (``"sandbox"``: the host root filesystem's uid 1000).  Other users, root
    included, stay reachable through ``exec(user=...)``, as in Docker.  None: the policy's
    user.  Not with a policy that fixes ``lxc.uid``."""


def policy_document(config: SandboxEnvironmentConfigType | None
                    ) -> tuple[dict[str, Any], str, str | None]:
    """The policy (as a dict), the working directory and the default user that ``config``
    asks for; a ``ValueError`` naming what is wrong (checked at task start, before any
    sample)."""
    if config is None:
        config = LxcbindSandboxConfig()
    elif isinstance(config, str):
        config = LxcbindSandboxConfig(policy=config)
    elif not isinstance(config, LxcbindSandboxConfig):
        raise ValueError(f"lxcbind sandbox: config must be an LxcbindSandboxConfig or the "
                         f"path of a policy file, not {type(config).__name__}")
    policy = config.policy
    if policy is None:
        doc: dict[str, Any] = {"version": "0.8.0"}
    elif isinstance(policy, str):
        try:
            loaded = json.loads(Path(policy).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"lxcbind sandbox: policy file {policy}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"lxcbind sandbox: policy file {policy}: not a JSON object")
        doc = loaded
    else:
        doc = dict(policy)
    # Every sample gets a container of its own, gone with the sample.
    if doc.get("containerId"):
        raise ValueError("lxcbind sandbox: policy.containerId: each sample gets a fresh "
                         "container of its own; remove containerId")
    if isinstance(doc.get("lifecycle"), dict) and doc["lifecycle"].get("destroyOnExit") is False:
        raise ValueError("lxcbind sandbox: policy.lifecycle.destroyOnExit: a sample's "
                         "container is always destroyed with the sample")
    as_policy(doc, command_required=False)   # PolicyError (a ValueError) naming the field
    process = doc.get("process")
    cwd = process.get("cwd") if isinstance(process, dict) else None
    workdir = config.workdir or cwd or DEFAULT_WORKDIR
    if not workdir.startswith("/"):
        raise ValueError(f"lxcbind sandbox: workdir must be an absolute path, got {workdir!r}")
    lxc = doc.get("lxc")
    if config.user is not None and isinstance(lxc, dict) and lxc.get("uid") is not None:
        raise ValueError("lxcbind sandbox: user: the policy fixes lxc.uid, so every command "
                         "runs as that user; set one or the other")
    return doc, workdir, config.user


def _require_asyncio() -> None:
    import sniffio

    backend = sniffio.current_async_library()
    if backend != "asyncio":
        raise RuntimeError(f"the lxcbind sandbox needs asyncio (INSPECT_ASYNC_BACKEND="
                           f"asyncio), not {backend}: its sessions run on asyncio's readers")


@sandboxenv(name="lxcbind")
class LxcbindSandboxEnvironment(SandboxEnvironment):
    """One sample's lxcbind sandbox (see the module docstring)."""

    def __init__(self, session: AsyncSession, workdir: str, user: str, uid: int,
                 default: User | None = None) -> None:
        super().__init__()
        self.session = session
        self.workdir = workdir
        self.user = user   # who commands run as by default (from the container's own id)
        self.uid = uid
        self.default = default   # config.user resolved at sample start (None: the policy's)

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return LxcbindSandboxConfig(**config)

    @classmethod
    async def task_init(cls, task_name: str,
                        config: SandboxEnvironmentConfigType | None) -> None:
        policy_document(config)   # a bad policy fails the task before any sample starts

    @classmethod
    async def sample_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                          metadata: dict[str, str]) -> dict[str, SandboxEnvironment]:
        _require_asyncio()
        doc, workdir, user = policy_document(config)
        session = AsyncSession.from_policy(doc)
        await session.start()
        try:
            # Resolved once, at the start: what the workload later writes to /etc/passwd does
            # not move the default user.
            default = None if user is None else await session._who(user)
            # As that user: the working directory is its own, and who it is.
            r = await session.run(["/bin/sh", "-c", 'mkdir -p -- "$1" && id -un && id -u',
                                   "lxcbind-init", workdir], timeout=30, user=default)
            lines = r.stdout.decode(errors="replace").split()
            if r.returncode != 0 or len(lines) != 2:
                raise RuntimeError(f"lxcbind sandbox: could not create the working directory "
                                   f"{workdir}: {r.stderr.decode(errors='replace').strip()}")
            assert session.session is not None
            session.session.cwd = workdir
        except BaseException:
            await session.close()
            raise
        return {"default": cls(session, workdir, lines[0], int(lines[1]), default)}

    @classmethod
    async def sample_cleanup(cls, task_name: str,
                             config: SandboxEnvironmentConfigType | None,
                             environments: dict[str, SandboxEnvironment],
                             interrupted: bool) -> None:
        for environment in environments.values():
            if isinstance(environment, LxcbindSandboxEnvironment):
                await environment.session.close()

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        """``inspect sandbox cleanup lxcbind``: what killed eval processes left (``gc``)."""
        import anyio

        from lxcbind.sandbox.core import gc

        await anyio.to_thread.run_sync(gc)

    # -- commands --------------------------------------------------------------------------

    def _user(self, user: str | None) -> str | User | None:
        """``user`` for ``AsyncSession.run``: the default user when the call names none or
        names it; any other only when the policy does not fix ``lxc.uid``."""
        if user is None or user in (self.user, str(self.uid)):
            return self.default
        session = self.session.session
        if session is not None and session.uid is not None:
            raise SandboxUserUnsupportedError(
                f"the policy fixes lxc.uid={session.uid} ({self.user}): every command runs as "
                f"that user; running as {user!r} needs a policy without lxc.uid")
        return user

    def _path(self, path: str) -> str:
        return path if path.startswith("/") else posixpath.join(self.workdir, path)

    async def exec(self, cmd: list[str], input: str | bytes | None = None,
                   cwd: str | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, timeout: int | None = None,
                   timeout_retry: bool = True, concurrency: bool = True) -> ExecResult[str]:
        who = self._user(user)
        limit = SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE
        try:
            r = await self.session.run(list(cmd), input=input, env=env or None,
                                       cwd=None if cwd is None else self._path(cwd),
                                       timeout=timeout, max_output=limit, user=who)
        except SessionError as exc:
            raise SandboxUnavailableError(f"lxcbind sandbox: {exc}") from exc
        except ValueError as exc:
            if not isinstance(who, str) or "no such user" not in str(exc):
                raise
            # as a shell would say it: the command did not run
            return ExecResult(success=False, returncode=126, stdout="",
                              stderr=f"lxcbind: user {who}: no such user in the container\n")
        if r.timed_out:
            raise TimeoutError(f"command timed out after {timeout} seconds (it and its "
                               "process group were killed)")
        error = r.exec_error
        if error is not None and error.stage == "exec" and error.errno in (errno.EACCES,
                                                                           errno.EPERM):
            raise PermissionError(error.errno, f"{cmd[0]}: {error.strerror}", cmd[0])
        stdout = r.stdout.decode(errors="replace")
        stderr = r.stderr.decode(errors="replace")
        if r.truncated:
            raise OutputLimitExceededError(SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR,
                                           truncated_output=stdout)
        return ExecResult(success=r.returncode == 0, returncode=r.exit_status, stdout=stdout,
                          stderr=stderr)

    # -- files -----------------------------------------------------------------------------

    async def write_file(self, file: str, contents: str | bytes) -> None:
        try:
            await self.session.put(self._path(file), contents, parents=True, user=self.default)
        except FileTransferError as exc:
            raise _inspect_error(exc, file) from None
        except SessionError as exc:
            raise SandboxUnavailableError(f"lxcbind sandbox: {exc}") from exc

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> str | bytes:
        path = self._path(file)
        limit = SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
        session = self.session.session
        cwd = session.cwd if session is not None else None
        # one command; as root it also refuses a file whose owner cannot read it (Docker's rule)
        opts, where = _files.get_call(path, cwd=cwd, max_size=limit, timeout=60.0,
                                      call="read_file", owner_read=self.uid == 0)
        try:
            data = _files.get_done(await self.session._run(opts, user=self.default), where,
                                   limit, opts.timeout)
        except FileTransferError as exc:
            if exc.errno == errno.EFBIG:
                raise OutputLimitExceededError(
                    SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, None) from None
            raise _inspect_error(exc, file) from None
        except SessionError as exc:
            raise SandboxUnavailableError(f"lxcbind sandbox: {exc}") from exc
        return data.decode("utf-8") if text else data

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        """``lxcbind attach NAME``: a login shell in this sample's container, from another
        terminal on this machine (host root), under the sandbox's isolation and its policy's
        user.  Another ``user`` is not offered (``NotImplementedError``)."""
        session = self.session.session
        if session is None or not session.alive:
            raise ConnectionError("lxcbind sandbox: the sample's sandbox is not running")
        if user is not None and user not in (self.user, str(self.uid)):
            raise NotImplementedError(f"lxcbind sandbox: `lxcbind attach` enters as the "
                                      f"sandbox's user ({self.user}), not as {user!r}")
        name = session.container.name
        return SandboxConnection(type="lxcbind", command=f"lxcbind attach {name}",
                                 container=name)


def _inspect_error(exc: FileTransferError, file: str) -> OSError:
    """What Inspect's file contract names for ``exc``: the builtin subclasses pass as they
    are; a read-only path (``EROFS``) is a ``PermissionError``, a timeout a
    ``TimeoutError``."""
    if exc.errno == errno.EROFS:
        return PermissionError(errno.EROFS, f"{exc.strerror} ({file})", file)
    if exc.errno == errno.ETIMEDOUT:
        return TimeoutError(errno.ETIMEDOUT, f"{exc.strerror} ({file})", file)
    return exc


__all__ = ["LxcbindSandboxConfig", "LxcbindSandboxEnvironment", "policy_document"]
