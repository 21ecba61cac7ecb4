"""lxcbind: run commands in LXC containers through liblxc, in-process.

Public API:

* ``run(cmd, policy=None, ...)`` → ``CompletedRun``: one command in a fresh sandbox, torn down
  after (``run(policy)``, the old form, runs the policy's own command);
* ``Sandbox(policy)``: a policy's container kept up while you use it (``run``, ``put``, ``get``);
* ``Session``: many commands in one warm container at the lowest latency;
* ``Pool``: each command in a fresh, pre-started container;
* ``WarmServer``: a Pool's template that outlives the call (``python -m lxcbind warm``),
  whose clones ``run(..., warm=True)`` uses;
* ``AsyncSession`` / ``AsyncPool``: the same for asyncio, on the loop's own readers;
* ``Container`` / ``Process``: the liblxc binding itself; ``list_containers``;
* ``load_policy`` / ``load_policy_file`` / ``Policy``;
* the error tree (``LxcbindError`` and its subclasses).

Names are imported on first use (PEP 562), so ``python -m lxcbind`` and ``import lxcbind``
pay only for the modules they touch: the CLI's start-up is part of every one-shot run.
"""

# No ``from __future__ import annotations`` here nor in _early: on a stock python3 that
# imports the ``__future__`` module, before the handler (the annotations need no postponing).
# The command line's signal handling first, before anything else is imported: a SIGINT while
# the CLI is still loading ends it quietly.  A library import only pays for the test (see
# lxcbind._early: it imports nothing the interpreter has not loaded already).
from lxcbind._early import install_if_cli

install_if_cli()

TYPE_CHECKING = False   # not typing's: importing it costs milliseconds of every CLI run

__version__ = "0.1.0"

_WHERE = {
    "Process": "lxc.attach", "exit_status": "result",
    "Container": "proc.runner", "default_lxcpath": "lxc.container",
    "list_containers": "lxc.container",
    "CommandTimeout": "errors", "ContainerNotFound": "errors", "ExecError": "errors",
    "LxcbindError": "errors", "LxcError": "errors", "PolicyError": "errors",
    "SandboxError": "errors", "SessionError": "errors", "ShellDied": "errors",
    "SpawnerDied": "errors", "CalledProcessError": "errors", "TimeoutExpired": "errors",
    "FileTransferError": "errors",
    "Policy": "policy.model", "load_policy": "policy.parse",
    "load_policy_file": "policy.parse",
    "DEFAULT_POLICY": "policy.defaults", "default_policy": "policy.defaults",
    "Pool": "sandbox.pool", "PoolClosed": "sandbox.pool", "AsyncPool": "aio", "AsyncSession": "aio",
    "AsyncShell": "aio",
    "CompletedRun": "result", "DEFAULT_MAX_OUTPUT": "result", "UNLIMITED": "result",
    "Sandbox": "sandbox.core", "gc": "sandbox.core", "run": "sandbox.core",
    "Session": "sandbox.core", "WarmServer": "sandbox.warm",
}

# Written out (not computed) so that type checkers see the public names.
__all__ = [
    "AsyncPool",
    "AsyncSession",
    "AsyncShell",
    "CalledProcessError",
    "CommandTimeout",
    "CompletedRun",
    "Container",
    "ContainerNotFound",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_POLICY",
    "ExecError",
    "FileTransferError",
    "LxcError",
    "LxcbindError",
    "Policy",
    "PolicyError",
    "Pool",
    "PoolClosed",
    "Process",
    "Sandbox",
    "SandboxError",
    "Session",
    "SessionError",
    "ShellDied",
    "SpawnerDied",
    "TimeoutExpired",
    "UNLIMITED",
    "WarmServer",
    "default_lxcpath",
    "default_policy",
    "exit_status",
    "gc",
    "list_containers",
    "load_policy",
    "load_policy_file",
    "run",
    "__version__",
]



def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lxcbind' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    # "X": an explicit re-export for type checkers (mypy --strict, pyright)
    from lxcbind.aio import AsyncPool, AsyncSession, AsyncShell
    from lxcbind.errors import (
        CalledProcessError,
        CommandTimeout,
        ContainerNotFound,
        ExecError,
        FileTransferError,
        LxcbindError,
        LxcError,
        PolicyError,
        SandboxError,
        SessionError,
        ShellDied,
        SpawnerDied,
        TimeoutExpired,
    )
    from lxcbind.lxc.attach import Process
    from lxcbind.lxc.container import (
        default_lxcpath,
        list_containers,
    )
    from lxcbind.policy.defaults import DEFAULT_POLICY, default_policy
    from lxcbind.policy.model import Policy
    from lxcbind.policy.parse import load_policy, load_policy_file
    from lxcbind.proc.runner import Container
    from lxcbind.result import DEFAULT_MAX_OUTPUT, UNLIMITED, CompletedRun, exit_status
    from lxcbind.sandbox.core import Sandbox, Session, gc, run
    from lxcbind.sandbox.pool import Pool, PoolClosed
    from lxcbind.sandbox.warm import WarmServer
