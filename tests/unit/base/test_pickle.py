"""Results and errors survive pickle round trips (they cross processes: Ray, Dask,
multiprocessing)."""

from __future__ import annotations

import errno
import pickle
import subprocess

import pytest

from lxcbind.errors import (
    CalledProcessError,
    CommandTimeout,
    ContainerNotFound,
    ExecError,
    FileTransferError,
    LxcbindError,
    LxcError,
    PolicyError,
    SandboxError,
    SessionError,
    ShellDied,
    SpawnerDied,
    TimeoutExpired,
)
from lxcbind.result import CompletedRun


def _roundtrip(obj):
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def test_completed_run_with_exec_error_survives_pickle():
    run = CompletedRun(args=["/nope"], returncode=127, stderr=b"x",
                       exec_error=ExecError("exec", errno.ENOENT, "/nope"), duration=0.5)
    back = _roundtrip(run)
    assert back == run
    assert isinstance(back.exec_error, ExecError)
    assert (back.exec_error.stage, back.exec_error.errno, back.exec_error.filename) == \
        ("exec", errno.ENOENT, "/nope")
    assert str(back.exec_error) == str(run.exec_error)


def test_timed_out_result_and_its_exception_survive_pickle():
    run = CompletedRun(args=["sleep", "9"], returncode=-15, stdout=b"partial", timed_out=True,
                       timeout=1.5)
    with pytest.raises(CommandTimeout) as info:
        run.check_returncode()
    back = _roundtrip(info.value)
    assert type(back) is TimeoutExpired and isinstance(back, subprocess.TimeoutExpired)
    assert back.result == run
    assert (back.timeout, back.output, back.cmd) == (1.5, b"partial", ["sleep", "9"])


@pytest.mark.parametrize("exc, attrs", [
    (PolicyError("process.env[1]", "expected KEY=VALUE"), ("path", "message")),
    (LxcError("start", "c1", errno.EPERM, "", "log line"),
     ("errno", "strerror", "operation", "container", "log_tail")),
    (LxcError("attach", "c2", None, "no such thing"), ("errno", "strerror", "operation")),
    (ExecError("chdir", errno.ENOENT, "/missing"), ("errno", "strerror", "filename", "stage")),
    (ShellDied("shell exited", 3), ("returncode",)),
    (SpawnerDied("gone"), ()),
    (SessionError("closed"), ()),
    (SandboxError("no rootfs"), ()),
    (ContainerNotFound("x"), ()),
    (FileTransferError("put", "/usr/x", "sh: cannot create /usr/x: Read-only file system"),
     ("errno", "strerror", "filename", "operation")),
    (CalledProcessError(3, ["sh", "-c", "exit 3"], b"out", b"err"),
     ("returncode", "cmd", "output", "stderr")),
])
def test_every_error_survives_pickle(exc, attrs):
    back = _roundtrip(exc)
    assert type(back) is type(exc)
    assert isinstance(back, LxcbindError)
    assert str(back) == str(exc)
    for name in attrs:
        assert getattr(back, name) == getattr(exc, name), name


def test_failed_run_raises_a_called_process_error_that_survives_pickle():
    run = CompletedRun(args=["sh", "-c", "exit 3"], returncode=3, stdout=b"o", stderr=b"e")
    with pytest.raises(CalledProcessError) as info:
        run.check_returncode()
    assert isinstance(info.value, subprocess.CalledProcessError)
    back = _roundtrip(info.value)
    assert (back.returncode, back.cmd, back.output, back.stderr) == (3, ["sh", "-c", "exit 3"],
                                                                     b"o", b"e")
    assert back.result == run
    assert FileTransferError("get", "/x", "cat: /x: No such file or directory").errno == 2


@pytest.mark.parametrize("code, builtin", [
    (errno.ENOENT, FileNotFoundError), (errno.EACCES, PermissionError),
    (errno.EPERM, PermissionError), (errno.EISDIR, IsADirectoryError),
    (errno.ENOTDIR, NotADirectoryError), (errno.EEXIST, FileExistsError),
    (errno.EROFS, None)])
def test_file_transfer_errors_are_the_builtin_their_errno_picks_and_survive_pickle(code, builtin):
    error = FileTransferError.of("get", "/x", "cat: /x: " + __import__("os").strerror(code))
    assert error.errno == code and isinstance(error, (FileTransferError, LxcbindError, OSError))
    if builtin is None:
        assert type(error) is FileTransferError
    else:
        assert isinstance(error, builtin) and type(error) is not FileTransferError
    back = _roundtrip(error)
    assert type(back) is type(error)
    assert (back.errno, back.filename, back.operation, str(back)) == \
        (code, "/x", "get", str(error))
