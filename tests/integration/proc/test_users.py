"""Per-call users (``run(..., user=...)``) through the spawner, on real containers: ids,
groups and home from the container's own account files; a fixed ``lxc.uid`` refuses others;
hostile account files and hostile wire strings are refused without harm."""

from __future__ import annotations

import os

import pytest

import lxcbind
from lxcbind.lxc import spawner_wire as wire
from lxcbind.proc.spawned import SessionProcess
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(120)]


def pol(**extra: dict) -> dict:
    doc: dict = {"version": "0.8.0", "containerId": new_name("users-")}
    doc.update(extra)
    return doc


@pytest.fixture(scope="module")
def root_session():
    with lxcbind.Session.from_policy(pol()) as s:
        r = s.run("groupadd team && useradd -m -G team alice && useradd -m bob", text=True)
        assert r.returncode == 0, r.stderr
        yield s


def test_a_named_user_gets_its_ids_groups_home_and_no_capabilities(root_session):
    r = root_session.run("id -u; id -g; id -G; echo $HOME $USER $LOGNAME; "
                         "grep ^CapEff /proc/self/status; touch ~/mine && stat -c %U ~/mine",
                         user="alice", text=True)
    lines = r.stdout.split("\n")
    uid, gid = lines[0], lines[1]
    team = root_session.run("getent group team | cut -d: -f3", text=True).stdout.strip()
    assert sorted(lines[2].split()) == sorted([gid, team])
    assert lines[3] == "/home/alice alice alice"
    assert lines[4].split() == ["CapEff:", "0000000000000000"]
    assert lines[5] == "alice"
    assert int(uid) >= 1000
    # the same user by uid and by uid:gid; a call's own env goes over HOME
    assert root_session.run("id -un", user=int(uid), text=True).stdout == "alice\n"
    assert root_session.run("id -un; id -gn", user=f"{uid}:{team}", text=True).stdout == \
        "alice\nteam\n"
    assert root_session.run("echo $HOME", user="alice", env={"HOME": "/tmp"},
                            text=True).stdout == "/tmp\n"
    # root stays root, with its capabilities
    r = root_session.run("id -u; grep ^CapEff /proc/self/status", user="root", text=True)
    assert r.stdout.split("\n")[0] == "0" and not r.stdout.endswith("0000000000000000\n")


def test_a_user_cannot_do_what_its_permissions_forbid(root_session):
    r = root_session.run("touch /root/x; cat /home/bob/.profile >/dev/null; "
                         "echo x > /etc/passwd", user="alice", text=True)
    assert r.returncode != 0 and r.stderr.count("Permission denied") >= 2, r.stderr
    assert "alice" in root_session.run("cat /etc/passwd", text=True).stdout  # unchanged
    assert root_session.run("test -e /root/x").returncode == 1


def test_unknown_and_malformed_users_are_refused_clearly(root_session):
    with pytest.raises(ValueError, match="no such user"):
        root_session.run("id", user="nobody-here")
    for bad in ("", "a:b", "1:2:3", " alice", "al\nice", "-1"):
        with pytest.raises((ValueError, TypeError)):
            root_session.run("id", user=bad)
    with pytest.raises(TypeError):
        root_session.run("id", user=1.5)  # type: ignore[arg-type]
    # a uid nobody has is allowed (as in docker --user): its gid is the uid
    assert root_session.run("id -u; id -g", user=4242, text=True).stdout == "4242\n4242\n"


def test_a_policy_that_fixes_lxc_uid_refuses_any_other_user():
    with lxcbind.Session.from_policy(pol(lxc={"uid": 1000, "gid": 1000})) as s:
        assert s.run("id -u", user="sandbox", text=True).stdout == "1000\n"
        assert s.run("id -u", user=1000, text=True).stdout == "1000\n"
        for other in ("root", 0, "1000:0"):
            with pytest.raises(ValueError, match="lxc.uid=1000"):
                s.run("id", user=other)


def test_hostile_account_files_cannot_hang_or_fool_the_host_side():
    with lxcbind.Session.from_policy(pol()) as s:
        # container root makes /etc/passwd endless, then huge, then garbage
        s.run("mv /etc/passwd /etc/passwd.real; ln -s /dev/zero /etc/passwd")
        with pytest.raises(ValueError, match="cannot read the container's /etc/passwd"):
            s.run("id", user="sandbox")
        s.run("rm /etc/passwd; mkfifo /etc/passwd")
        with pytest.raises(ValueError, match="/etc/passwd"):
            s.run("id", user="sandbox")
        s.run("rm /etc/passwd; head -c 3000000 /dev/urandom > /etc/passwd")
        with pytest.raises(ValueError, match="/etc/passwd"):
            s.run("id", user="sandbox")
        s.run("printf 'x:x:99999999999:1::/:/bin/sh\\nbad\\n\\377\\376:x:1:1\\n"
              "eve:x:1234:1234::/home/eve:/bin/sh\\n' > /etc/passwd; "
              "printf 'g:x:77:eve,eve\\nbig:x:99999999999:eve\\n' > /etc/group")
        with pytest.raises(ValueError, match="no such user"):
            s.run("id", user="x")          # an out-of-range uid is no user
        assert s.run("id -u; id -G", user="eve", text=True).stdout == "1234\n1234 77\n"


def test_the_spawner_refuses_a_malformed_user_string_and_keeps_serving(root_session):
    class Raw:
        def __init__(self, text: str) -> None:
            self.text = text

        def wire(self) -> str:
            return self.text

    for text in ("x:1:", "1", "1:2:3:4", "1:2:a", "4294967295:0:", "1:1:" + ",".join(
            ["5"] * (wire.MAX_GROUPS + 1)), "1:1:,", ""):
        r, w = os.pipe()
        try:
            proc: SessionProcess = root_session._send(["/bin/true"], None, None,
                                                      [r, w, w], False, user=Raw(text))
        finally:
            os.close(r)
            os.close(w)
        with pytest.raises(lxcbind.SessionError, match="refused"):
            proc.wait(timeout=10)
        proc.close()
    assert root_session.run("id -un", user="bob", text=True).stdout == "bob\n"


def test_sandbox_and_async_session_take_a_user_too():
    import asyncio

    with lxcbind.Sandbox(pol()) as box:
        assert box.run("id -un", user="sandbox", text=True).stdout == "sandbox\n"
        assert box.run("id -un", text=True).stdout == "root\n"

    async def main() -> str:
        async with lxcbind.AsyncSession.from_policy(pol()) as a:
            r = await a.run(["sh", "-c", "id -un; echo $HOME"], user=1000, text=True)
            with pytest.raises(ValueError, match="no such user"):
                await a.run("id", user="ghost")
            return str(r.stdout)
    assert asyncio.run(main()) == "sandbox\n/home/sandbox\n"


def test_a_shell_runs_as_the_user_it_was_given(root_session):
    import asyncio

    with root_session.shell(user="alice") as sh:
        r = sh.run("cd ~ && pwd && id -un && touch mine && stat -c %U mine", text=True)
        assert r.stdout == "/home/alice\nalice\nalice\n", r
        assert sh.run("touch /root/x", text=True).returncode != 0   # alice's rights only

    async def main() -> str:
        async with lxcbind.AsyncSession(root_session) as a:
            async with await a.shell(user="bob") as sh:
                return str((await sh.run("id -un", text=True)).stdout)
    assert asyncio.run(main()) == "bob\n"
