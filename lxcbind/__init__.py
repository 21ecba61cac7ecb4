"""lxcbind: run commands in LXC containers through liblxc, in-process.

The public API: ``Container`` and ``Process`` (the binding), ``list_containers``, the error
tree in ``lxcbind.errors``.  Higher layers (``run``, ``Session``, policies) build on these.
"""

from .attach import Process, exit_status
from .container import Container, default_lxcpath, list_containers
from .errors import (CommandTimeout, ContainerNotFound, ExecError, LxcbindError, LxcError,
                     PolicyError, SandboxError)

__version__ = "0.1.0"

__all__ = [
    "CommandTimeout", "Container", "ContainerNotFound", "ExecError", "LxcError", "LxcbindError",
    "PolicyError", "Process", "SandboxError", "default_lxcpath", "exit_status", "list_containers",
    "__version__",
]
