"""mxc's LXC end-to-end scenarios, run through lxcbind's CLI against real containers.

Each scenario takes the *shape* of one of the public mxc project's LXC test policies
(``tests/configs/lxc_*.json``, ``tests/examples/*lxc*.json``) and checks what mxc's e2e script
checks, with lxcbind's own words where a diagnostic is grepped.  Scenarios already covered
elsewhere are named in ``ALREADY_COVERED`` rather than repeated.  Network scenarios use the
``remote`` fixture of ``test_network``: a network namespace the test creates, with fake remote
hosts in 198.18.0.0/15; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import new_name, requires_lxc, requires_root
from tests.integration.test_network import (PROBE, allow, nothing_left_behind,  # noqa: F401
                                            remote)

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[2]


def doc(command: str, names: list[str], version: str | None = "0.8.0", **extra) -> dict:
    """A policy with a fresh ``i14-`` container name recorded for the leftover check."""
    name = new_name("i14-")
    names.append(name)
    d: dict = {"containment": "lxc", "containerId": name, "process": {"commandLine": command}}
    if version is not None:
        d["version"] = version
    d.update(extra)
    return d


def run(policy: dict, *args: str, entry: str = "run", env: dict | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess:
    """``python -m lxcbind run [args] -`` (or the ``lxcbind-exec`` front end) on ``policy``."""
    if entry == "run":
        argv = [sys.executable, "-m", "lxcbind", "run", *args, "-"]
    else:
        argv = [sys.executable, "-c", "from lxcbind.cli import exec_entry; exec_entry()", *args]
    return subprocess.run(argv, input=json.dumps(policy).encode(), capture_output=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def result(r: subprocess.CompletedProcess) -> dict:
    out = json.loads(r.stdout)
    assert "error" not in out, (out, r.stderr)
    return out


# -- loopback ----------------------------------------------------------------------------------

LOOPBACK = r'''
import socket
for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((addr, 0)); srv.listen(1)
    cli = socket.create_connection(srv.getsockname()[:2], timeout=2)
    conn, _ = srv.accept(); conn.sendall(b"pong"); print(addr, cli.recv(4).decode())
'''


@pytest.mark.parametrize("network", [None, {"egress": {"default": "allow"}}],
                         ids=["no-device", "networked"])
def test_loopback_is_up_in_every_container(network, nothing_left_behind):
    extra = {"network": network} if network else {}
    r = run(doc(f"python3 -c {shlex.quote(LOOPBACK)}", nothing_left_behind, **extra), "--json")
    assert result(r)["stdout"] == "127.0.0.1 pong\n::1 pong\n", r.stderr


def test_loopback_is_up_in_a_reused_container(nothing_left_behind):
    from tests.conftest import destroy_quietly

    keep = doc("true", nothing_left_behind, lifecycle={"destroyOnExit": False})
    try:
        assert run(keep, "--json").returncode == 0
        again = dict(keep, process={"commandLine": f"python3 -c {shlex.quote(LOOPBACK)}"},
                     lifecycle={"destroyOnExit": True})
        r = run(again, "--json")
        assert result(r)["stdout"] == "127.0.0.1 pong\n::1 pong\n", r.stderr
    finally:
        destroy_quietly(keep["containerId"])
