"""lxcbind: run commands in LXC containers through liblxc, in-process.

Public API:

* ``run(policy, ...)`` → ``CompletedRun``: one command in a fresh sandbox, torn down after;
* ``Sandbox(policy)``: a policy's container kept up while you use it;
* ``Session``: many commands in one warm container at the lowest latency;
* ``Container`` / ``Process``: the liblxc binding itself; ``list_containers``;
* ``load_policy`` / ``load_policy_file`` / ``Policy``;
* the error tree (``LxcbindError`` and its subclasses).
"""

from .attach import Process, exit_status
from .container import Container, default_lxcpath, list_containers
from .errors import (CommandTimeout, ContainerNotFound, ExecError, LxcbindError, LxcError,
                     PolicyError, SandboxError, SessionError, ShellDied, SpawnerDied)
from .policy import Policy, load_policy, load_policy_file
from .result import CompletedRun
from .sandbox import Sandbox, gc, run
from .session import Session

__version__ = "0.1.0"

__all__ = [
    "CommandTimeout", "CompletedRun", "Container", "ContainerNotFound", "ExecError", "LxcError",
    "LxcbindError", "Policy", "PolicyError", "Process", "Sandbox", "SandboxError", "Session",
    "SessionError", "ShellDied", "SpawnerDied",
    "default_lxcpath", "exit_status", "gc", "list_containers", "load_policy",
    "load_policy_file", "run", "__version__",
]
