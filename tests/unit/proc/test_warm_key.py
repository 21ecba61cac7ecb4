"""The warm client's pure parts: which policies share a warm server (``template_key``), the
reply check, and ``disk_limited``'s test of a clone's root (no root, no containers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from lxcbind.errors import SessionError
from lxcbind.policy.parse import load_policy
from lxcbind.proc import warm

BASE = {"version": "0.8.0", "containerId": "k1", "process": {"commandLine": "true"}}


def key(**changes: object) -> str:
    return warm.template_key(load_policy({**BASE, **changes}, command_required=False))


def test_a_clones_own_parts_do_not_change_the_key() -> None:
    same = key()
    assert key(process={"commandLine": "other", "env": ["A=1"], "cwd": "/tmp",
                        "timeout": 5000}) == same
    assert key(lxc={"limits": {"memory": 1 << 27, "pids": 9, "cpu": 0.5, "disk": 1 << 26},
                    "uid": 1000, "gid": 1000}) == same


@pytest.mark.parametrize("changes", [
    {"containerId": "k2"},
    {"filesystem": {"readonlyPaths": ["/srv"]}},
    {"filesystem": {"deniedPaths": ["/etc/shadow"]}},
    {"lxc": {"rootfs": "busybox"}},
    {"lxc": {"allow": ["nesting"]}},
    {"network": {"egress": {"default": "allow"}}},
])
def test_what_the_template_depends_on_changes_the_key(changes: dict[str, object]) -> None:
    assert key(**changes) != key()


def test_the_key_is_the_same_in_another_process() -> None:
    code = ("import json, sys; from lxcbind.policy.parse import load_policy; "
            "from lxcbind.proc.warm import template_key; "
            "print(template_key(load_policy(json.loads(sys.argv[1]), command_required=False)))")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(BASE)], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "7"})
    assert out.stdout.strip() == key() and len(key()) == 32


GOOD = {"v": 1, "clone": "lxcbind-1", "pid": 10, "spawner_pid": 1, "nsdepth": 2,
        "events": ["/a", None], "env": {"A": "1"}, "cwd": "/", "timeout": None, "uid": None,
        "gid": None, "argv": ["true"], "image": None}


def test_a_reply_is_checked_field_by_field() -> None:
    assert warm._checked(dict(GOOD))["devpts"] is True
    assert warm._checked({**GOOD, "devpts": False})["devpts"] is False
    for name, bad in [("pid", "10"), ("pid", True), ("env", {"A": 1}), ("argv", [1]),
                      ("events", ["/a"]), ("timeout", "1"), ("clone", None)]:
        with pytest.raises(SessionError, match="malformed"):
            warm._checked({**GOOD, name: bad})


def test_no_server_means_none(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens on the key's socket (none there, or a dead server's): None, said."""
    monkeypatch.setattr(warm, "WARM_DIR", str(tmp_path))
    policy = load_policy(BASE, command_required=False)
    said: list[str] = []
    assert warm.open_clone(policy, log=said.append) is None
    assert "no warm server" in said[0]
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(warm.socket_path(warm.template_key(policy)))
    dead.close()   # bound, never listened: as a SIGKILLed server's socket
    assert warm.open_clone(policy, log=said.append) is None
    assert "no warm server" in said[1]
