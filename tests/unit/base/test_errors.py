"""Exit statuses, the error tree and the public names: pure, no compiled module."""

from __future__ import annotations

import errno
import subprocess

import pytest


def test_exit_status_is_code_or_128_plus_signal():
    from lxcbind.result import exit_status

    assert exit_status(0) == 0
    assert exit_status(42) == 42
    assert exit_status(-9) == 137
    assert exit_status(-15) == 143


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
