"""The spawner's leftover kill cannot be blinded by the workload.

A workload that may mount (the ``nesting`` opt-in) hides ``/proc`` under a tmpfs before it
leaves a forger behind: the spawner finds its children through ``/proc``, and on a build that
looks the path up again at each kill, it then finds none, so the forger survives to attack
the next (trusted) command.  The spawner must either still kill it before that command starts
(it holds its ``children`` file open from its start), or refuse to go on; never report a
clean result with a leftover alive.  Both spawners: a fresh sandbox's init and one attached.
"""

from __future__ import annotations

import secrets

import pytest

from lxcbind.errors import LxcbindError
from lxcbind.sandbox.core import Sandbox, Session

from ..conftest import new_name, requires_lxc, requires_root
from .test_command_integrity import FORGER, PY, _check_script, _host_pids

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(240)]

# The forger reads the processes through a bind of the real /proc kept at /tmp/rp, since it
# has just buried /proc itself (a private copy: the tmpfs does not propagate to it).
BLIND_FORGER = FORGER.replace('"/proc', '"/tmp/rp')
HIDE_PROC = ("mkdir -p /tmp/rp && mount --rbind /proc /tmp/rp && mount --make-rprivate /tmp/rp"
             " && mount -t tmpfs none /proc && test ! -e /proc/self && test -e /tmp/rp/self"
             " && echo hidden")


def _policy() -> dict[str, object]:
    return {"version": "0.8.0", "containerId": new_name("harden-proc-"),
            "process": {"commandLine": "true"}, "lxc": {"allow": ["nesting"]}}


@pytest.fixture(params=["init", "attached"])
def session(request):
    if request.param == "init":
        s = Session.from_policy(_policy())
        try:
            yield s
        finally:
            s.close()
    else:
        with Sandbox(_policy()) as box, box.session() as s:
            assert s.spawner_pid != 1
            yield s


@pytest.mark.parametrize("mode", ["mem", "SIGKILL"])
def test_a_leftover_survives_no_kill_with_proc_buried(session, mode):
    token = secrets.token_hex(8)
    r = session.run(HIDE_PROC)
    assert (r.returncode, r.stdout) == (0, b"hidden\n"), r   # the attack's premise holds
    assert session.run([PY, "-c", BLIND_FORGER, token, mode]).returncode == 0
    try:
        r = session.run(["/bin/sh", "-c", _check_script(token)], timeout=60)
    except LxcbindError:
        pass                                   # refusing to go on is the other honest answer
    else:
        assert not r.timed_out, r
        assert (r.returncode, r.stdout) == (3, f"REAL-RESULT-{token}\n".encode()), r
        assert session.run("test -e /tmp/attacked").returncode == 1   # it never struck
    assert not _host_pids(token), "the forger outlived its command"


def test_a_plain_leftover_dies_before_the_result_with_proc_buried(session):
    token = str(10**6 + secrets.randbelow(10**6))
    assert session.run(HIDE_PROC).returncode == 0
    r = session.run(f"setsid sleep 1{token}1 </dev/null >/dev/null 2>&1 & echo planted")
    assert r.stdout == b"planted\n", r
    assert not _host_pids(token), "a leftover outlived its command"


def test_a_spawner_that_could_not_list_its_children_serves_nothing():
    """A spawner attached where /proc is already buried could never kill a leftover: it
    refuses to start (an error at the session's start), rather than serve commands."""
    with Sandbox(_policy()) as box:
        assert box.run("mount -t tmpfs none /proc && test ! -e /proc/self").returncode == 0
        with pytest.raises(LxcbindError) as err:
            with box.session() as s:
                s.run("true")
        assert "spawner" in str(err.value), err.value
        assert box.run("echo still").stdout == b"still\n"   # the init spawner holds its own
