"""Pure logic of the binding: exit-status decoding, the exec status record, the error tree."""

from __future__ import annotations

import errno
import os
import struct
import subprocess

import pytest

from tests.conftest import requires_lxc

pytestmark = requires_lxc


def test_exit_status_is_code_or_128_plus_signal():
    from lxcbind.lxc.attach import exit_status

    assert exit_status(0) == 0
    assert exit_status(42) == 42
    assert exit_status(-9) == 137
    assert exit_status(-15) == 143


def test_wait_status_decoding_matches_subprocess_convention():
    from lxcbind.lxc.attach import decode_wait_status

    assert decode_wait_status(3 << 8) == 3
    assert decode_wait_status(9) == -9
    assert decode_wait_status(255 << 8) == 255


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
        for fd in req.owned_fds + [req.status_read]:
            os.close(fd)


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


def test_exceptions_subclass_the_builtins_callers_catch():
    from lxcbind import errors
    from lxcbind.result import CompletedRun

    assert issubclass(errors.PolicyError, ValueError)
    assert issubclass(errors.LxcError, OSError)
    assert issubclass(errors.ExecError, OSError)
    assert issubclass(errors.ContainerNotFound, LookupError)
    assert issubclass(errors.CommandTimeout, subprocess.TimeoutExpired)
    for cls in (errors.PolicyError, errors.LxcError, errors.ExecError, errors.SandboxError,
                errors.ContainerNotFound, errors.CommandTimeout):
        assert issubclass(cls, errors.LxcbindError)
    e = errors.LxcError("start", "c1", errno.ECONNREFUSED)
    assert e.errno == errno.ECONNREFUSED and "start" in str(e) and "c1" in str(e)
    assert errors.PolicyError("process.env[1]", "missing '='").path == "process.env[1]"
    r = CompletedRun(["x"], -9, timed_out=False)
    assert r.signal == 9 and r.exit_status == 137
    with pytest.raises(subprocess.CalledProcessError):
        r.check_returncode()


def test_public_api_names_all_resolve():
    import lxcbind

    for name in lxcbind.__all__:
        assert getattr(lxcbind, name) is not None
    with pytest.raises(AttributeError):
        _ = lxcbind.no_such_name
