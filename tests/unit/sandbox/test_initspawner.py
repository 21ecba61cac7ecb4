"""InitChannel's host side, without a container: what the config names, what the folder holds
and who may use it, and that nothing is left (the container tests are in
tests/security/test_init_spawner.py)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

# Logic of the sandbox layer, which loads the binding: skipped where it is not built.
pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")
pytestmark = pytest.mark.requires_lxc

from lxcbind.errors import SandboxError  # noqa: E402
from lxcbind.proc.spawner import SPAWNER_PROGRAM  # noqa: E402
from lxcbind.sandbox.initspawner import INSIDE, InitChannel  # noqa: E402


def test_config_runs_the_spawner_as_init_from_a_read_only_bind_of_the_folder():
    config = dict(InitChannel.config("/var/lib/my lxc/c1"))
    assert config["lxc.init.cmd"] == f"{INSIDE}/lxcbind-spawner --init {INSIDE}/control"
    # fstab syntax: the space of the lxcpath is escaped, the target is relative to the rootfs
    assert config["lxc.mount.entry"] == ("/var/lib/my\\040lxc/c1/.lxcbind-init dev/.lxcbind "
                                         "none bind,ro,create=dir 0 0")


def test_the_folder_holds_the_program_and_one_listener_and_close_removes_both(tmp_path):
    os.umask(0o077)   # whatever the caller's umask: the container's root must enter and connect
    try:
        channel = InitChannel(str(tmp_path))
    finally:
        os.umask(0o022)
    folder = tmp_path / ".lxcbind-init"
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        program = folder / "lxcbind-spawner"
        assert program.read_bytes() == Path(SPAWNER_PROGRAM).read_bytes()
        assert stat.S_IMODE(program.stat().st_mode) & 0o555 == 0o555
        control = folder / "control"
        assert stat.S_ISSOCK(control.stat().st_mode)
        assert stat.S_IMODE(control.stat().st_mode) == 0o666
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client.connect(str(control))   # it listens (accepting needs a container's init)
        client.close()
    finally:
        channel.close()
    assert not folder.exists()
    channel.close()   # idempotent
    with pytest.raises(Exception, match="closed"):
        channel.accept(os.getpid(), timeout=0.1)


def test_accept_refuses_a_connection_that_is_not_the_inits(tmp_path):
    init = subprocess.Popen(["sleep", "30"])   # stands for the container's init: alive, silent
    channel = InitChannel(str(tmp_path))
    try:
        intruder = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        intruder.connect(str(tmp_path / ".lxcbind-init" / "control"))
        with pytest.raises(SandboxError, match=f"connected by pid {os.getpid()}"):
            channel.accept(init.pid, timeout=5)
        intruder.close()
    finally:
        init.kill()
        init.wait()
        channel.close()


def test_accept_returns_when_the_init_exits_without_connecting(tmp_path):
    init = subprocess.Popen(["sleep", "0.2"])   # exits (a zombie: not reaped meanwhile)
    channel = InitChannel(str(tmp_path))
    try:
        with pytest.raises(SandboxError, match="exited"):
            channel.accept(init.pid, timeout=30)   # woken by the exit, not the timeout
    finally:
        init.wait()
        channel.close()
