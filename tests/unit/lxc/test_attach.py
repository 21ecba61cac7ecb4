"""The binding's own logic without a container: the exec status record, the baseline
environment, building attach options (needs the compiled module)."""

from __future__ import annotations

import errno
import struct

import pytest

from tests.conftest import requires_lxc

pytestmark = requires_lxc


def test_status_record_distinguishes_liblxc_failure_success_and_exec_errors():
    from lxcbind.lxc._native import lib
    from lxcbind.lxc.attach import decode_status_record

    assert decode_status_record(b"", "x", "/") == (False, None)
    assert decode_status_record(b"R", "x", "/") == (True, None)
    record = b"R" + struct.pack("=ii", lib.LXCBIND_STAGE_EXEC, errno.ENOENT)
    reached, err = decode_status_record(record, "nope", "/")
    assert reached and err.stage == "exec" and err.errno == errno.ENOENT and err.filename == "nope"
    record = b"R" + struct.pack("=ii", lib.LXCBIND_STAGE_CHDIR, errno.ENOTDIR)
    _, err = decode_status_record(record, "sh", "/etc/passwd")
    assert err.stage == "chdir" and err.filename == "/etc/passwd"


def test_baseline_environment_is_documented_set():
    from lxcbind.lxc.attach import baseline_env

    assert set(baseline_env()) == {"PATH", "HOME", "TERM", "container"}
    assert baseline_env()["HOME"] == "/root"
    assert baseline_env(1000)["HOME"] == "/home/sandbox"  # the host rootfs's sandbox user
    assert baseline_env(1001)["HOME"] == "/"


def test_build_attach_never_hands_fd_0_to_liblxc_and_starts_from_defaults():
    from lxcbind.lxc._native import lib
    from lxcbind.lxc.attach import build_attach

    req = build_attach(["true"], env=None, clear_env=True, cwd="/", uid=None, gid=None, stdin=0,
                       stdout=None, stderr=None, namespaces=None, flags=None, ctty=None)
    try:
        assert req.options.stdin_fd > 2
        assert req.options.attach_flags == lib.LXC_ATTACH_DEFAULT
        assert req.options.namespaces == -1  # "detect": all of the container's namespaces
        assert req.options.env_policy == lib.LXC_ATTACH_CLEAR_ENV
    finally:
        lib.lxcbind_close_held(req.fds, req.nfds)
    assert list(req.fds) == [-1] * req.nfds   # each one closed, and recorded as closed


def test_build_attach_rejects_bad_env_and_argv():
    from lxcbind.lxc.attach import build_attach

    common = dict(clear_env=True, cwd="/", uid=None, gid=None, stdin=None, stdout=None,
                  stderr=None, namespaces=None, flags=None, ctty=None)
    with pytest.raises(ValueError):
        build_attach(["true"], env={"A=B": "x"}, **common)
    with pytest.raises(ValueError):
        build_attach([], env=None, **common)
    with pytest.raises(TypeError):
        build_attach("true", env=None, **common)


def test_public_api_names_all_resolve():
    import lxcbind

    for name in lxcbind.__all__:
        assert getattr(lxcbind, name) is not None
    with pytest.raises(AttributeError):
        _ = lxcbind.no_such_name


CTTY_PROBE = r"""
import fcntl, json, os, termios
from lxcbind.lxc.attach import refuse_host_terminal, terminal_id

def verdict(fd):
    try:
        refuse_host_terminal(fd, "stdin")
        return "accepted"
    except ValueError:
        return "refused"

master, slave = os.openpty()
other_master, other_slave = os.openpty()
report = os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)          # no terminal at 0-2: only the controlling terminal is ours
os.setsid()
fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
again = os.open(os.ttyname(slave), os.O_RDWR | os.O_NOCTTY)   # another open of it
tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
st = os.fstat(slave)
got = {"slave": verdict(slave), "again": verdict(again), "master": verdict(master),
       "devtty": verdict(tty), "other": verdict(other_slave),
       "id_has_instance": terminal_id(st) == (st.st_dev, st.st_rdev),
       "vt_id": terminal_id(os.stat("/dev/null"))[0]}
os.write(report, json.dumps(got).encode())
"""


def test_the_controlling_terminal_is_recognised_by_session_not_number():
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CTTY_PROBE], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    # The controlling terminal, by any fd or through its master or /dev/tty: refused.
    assert (got["slave"], got["again"], got["master"], got["devtty"]) == ("refused",) * 4
    assert got["other"] == "accepted"   # another pty of the same devpts is not the caller's
    assert got["id_has_instance"] and got["vt_id"] == 0
