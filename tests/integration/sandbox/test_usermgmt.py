"""The ``host`` root filesystem's generated /etc has what user management needs: ``useradd
-m`` makes a user with a home from /etc/skel, ``userdel -r`` removes it, and the host's own
/etc is unchanged (the sandbox's /etc is its own copy)."""

from __future__ import annotations

import lxcbind
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]


def test_useradd_makes_a_user_with_a_home_from_skel_and_userdel_removes_it():
    with open("/etc/passwd") as f:
        host_passwd = f.read()
    doc = {"version": "0.8.0", "containerId": new_name("users-")}
    with lxcbind.Sandbox(doc) as box:
        r = box.run("useradd -m lxcb-user && id -u lxcb-user && ls -A /home/lxcb-user && "
                    "stat -c %U /home/lxcb-user && su -s /bin/sh lxcb-user -c 'echo $HOME' "
                    "2>/dev/null; true", text=True, timeout=60)
        lines = r.stdout.split()
        assert int(lines[0]) >= 1000, r
        skel = sorted(n for n in __import__("os").listdir("/etc/skel"))
        assert sorted(lines[1:1 + len(skel)]) == skel, r
        assert lines[1 + len(skel)] == "lxcb-user", r
        for name in ("login.defs", "adduser.conf"):
            assert box.run(["test", "-s", f"/etc/{name}"]).returncode == 0
        r = box.run("userdel -r lxcb-user 2>/dev/null; id lxcb-user; test -e /home/lxcb-user",
                    timeout=60)
        assert r.returncode != 0
    with open("/etc/passwd") as f:
        assert f.read() == host_passwd and "lxcb-user" not in host_passwd
