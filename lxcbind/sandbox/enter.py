"""Entering a live sandbox from another process: ``lxcbind attach NAME [-- CMD ...]``.

A throwaway sandbox lives as long as the process that made it (its runner: a
``lxcbind run``, a ``Sandbox``, an Inspect sample); a person debugging it wants a shell in it
meanwhile.  ``enter`` attaches one command (default ``/bin/sh -l``) to the running container
through liblxc's attach, as ``Sandbox.session()`` places its spawner: the container's
namespaces, cgroup, capability bounding set, no_new_privs, seccomp profile and LSM label
apply (the container's configuration carries them), and the command runs as the user the
sandbox's commands run as (the policy's ``lxc.uid``/``lxc.gid``, read from the init spawner's
command line).  The policy's ``process.env`` is not applied (it is not stored): the
environment is the baseline one.

Only the sandbox's owner may enter it.  lxcbind's sandboxes are made by host root, so that
is host root; and only a sandbox whose ownership record names a live runner is entered (a
container lxcbind did not make, or one whose runner is gone, is refused).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from lxcbind.errors import SandboxError
from lxcbind.lxc.container import Container as _BareContainer
from lxcbind.proc.runner import Container, interact_run
from lxcbind.result import CompletedRun
from lxcbind.sandbox.cleanup import OwnershipRecord
from lxcbind.state import STATE_ROOT

DEFAULT_COMMAND = ("/bin/sh", "-l")


def live_record(name: str) -> OwnershipRecord | None:
    """The ownership record of sandbox ``name`` when its runner is alive, else None."""
    try:
        with open(os.path.join(STATE_ROOT, "owners", f"{name}.json"), "rb") as f:
            record = OwnershipRecord(**json.loads(f.read()))
    except (OSError, ValueError, TypeError):
        return None
    return record if record.container == name and record.runner_alive() else None


def _init_user(c: _BareContainer) -> tuple[int | None, int | None]:
    """The uid/gid the sandbox's commands run as: the last two words of its init spawner's
    command line (``initspawner.InitChannel.config``), -1 meaning unset."""
    words = c.get_config_item("lxc.init.cmd").split()
    if len(words) >= 5 and words[-4] == "--init":
        ids = [int(w) if w.lstrip("-").isdigit() else -1 for w in words[-2:]]
        return (ids[0] if ids[0] >= 0 else None), (ids[1] if ids[1] >= 0 else None)
    return None, None


def enter(name: str, argv: Sequence[str] | None = None, *,
          tty: bool | None = None) -> CompletedRun:
    """Run ``argv`` (None: a login shell) in the live sandbox ``name``, bridged to this
    process's stdio (a terminal when both ends are one, unless ``tty`` says otherwise);
    returns when it exits.  ``SandboxError`` when the caller may not, or the sandbox is not
    live."""
    if os.geteuid() != 0:
        raise SandboxError("attach: only host root, which owns lxcbind's sandboxes, may enter "
                           "one")
    record = live_record(name)
    if record is None:
        raise SandboxError(f"attach: {name!r} is not a live lxcbind sandbox (no run of this "
                           "machine owns it; for a kept container use lxcbind exec)")
    with Container(name, record.lxcpath) as c:
        if not c.running:
            raise SandboxError(f"attach: sandbox {name!r} is not running")
        uid, gid = _init_user(c)
        return interact_run(c, list(argv or DEFAULT_COMMAND), tty=tty, uid=uid, gid=gid,
                            cwd="/")
