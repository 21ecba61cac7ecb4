"""The streaming loop behind communicate/iter_output and the on_output sink, against local
processes (no root, no liblxc)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from lxcbind.proc import streams
from lxcbind.result import OutputBuffer


def _spawn(script: str) -> tuple[subprocess.Popen[bytes], int]:
    child = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return child, os.pidfd_open(child.pid)


def _collect(child: subprocess.Popen[bytes], pidfd: int, data: bytes,
             deadline: float | None = None) -> dict[str, bytes]:
    assert child.stdin and child.stdout and child.stderr
    got = {"stdout": b"", "stderr": b""}
    readers = {child.stdout.fileno(): "stdout", child.stderr.fileno(): "stderr"}
    for name, chunk in streams.chunks(readers, child.stdin.fileno(), data, pidfd, deadline,
                                      child.stdin.close):
        got[name] += chunk
    return got


def test_large_input_and_output_on_both_streams_at_once():
    data = os.urandom(1 << 20) * 4   # 4 MiB each way, far past the pipe buffers
    child, pidfd = _spawn("tee /dev/stderr")
    try:
        assert _collect(child, pidfd, data) == {"stdout": data, "stderr": data}
        assert child.wait(10) == 0 and child.stdin is not None and child.stdin.closed
    finally:
        os.close(pidfd)


def test_a_leftover_process_holding_the_pipe_does_not_hold_the_caller():
    child, pidfd = _spawn("echo done; sleep 30 & exit 0")
    try:
        start = time.monotonic()
        got = _collect(child, pidfd, b"")
        assert got["stdout"] == b"done\n"
        assert time.monotonic() - start < streams.DRAIN_GRACE + 5
    finally:
        os.close(pidfd)
        child.wait()


def test_deadline_is_raised_with_what_came_so_far():
    child, pidfd = _spawn("echo first; exec sleep 30")
    got = []
    try:
        assert child.stdin and child.stdout and child.stderr
        with pytest.raises(streams.Deadline):
            for item in streams.chunks({child.stdout.fileno(): "stdout"}, None, b"", pidfd,
                                       time.monotonic() + 0.5, lambda: None):
                got.append(item)
        assert got == [("stdout", b"first\n")]
    finally:
        child.kill()
        child.wait()
        os.close(pidfd)


def test_tee_decodes_characters_split_across_chunks():
    seen: list[tuple[str, object]] = []
    buf = OutputBuffer()
    tee = streams.Tee(buf, "stdout", lambda s, c: seen.append((s, c)), "utf-8", "replace")
    for piece in (b"a\xc3", b"\xa9b\xe2\x82", b"\xac"):
        tee.write(piece)
    tee.write(b"\xff")
    tee.finish()
    assert "".join(str(c) for _, c in seen) == "a\u00e9b\u20ac\ufffd"
    assert buf.getvalue() == b"a\xc3\xa9b\xe2\x82\xac\xff"
    raw: list[tuple[str, object]] = []
    streams.Tee(OutputBuffer(), "stderr", lambda s, c: raw.append((s, c)), None,
                "strict").write(b"\xc3")
    assert raw == [("stderr", b"\xc3")]
