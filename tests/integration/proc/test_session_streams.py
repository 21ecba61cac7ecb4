"""Streaming from Session.spawn (file objects, communicate, iter_output), Session.run's
on_output, checks at the API edge, and limit events on session results (real containers)."""

from __future__ import annotations

import io
import os
import signal
import subprocess

import pytest

import lxcbind
from lxcbind.sandbox.core import Session
from tests.conftest import requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def session(shared_busybox):
    with Session(shared_busybox) as s:
        yield s


def _alive(session: Session, marker: str) -> bool:
    """Whether a process whose command line holds ``marker`` still runs in the container."""
    ps = session.run(["ps", "-o", "pid,args"]).stdout.decode()
    return any(marker in line and "ps -o" not in line for line in ps.splitlines())


def test_spawn_gives_binary_file_objects_like_popen(session):
    with session.spawn(["cat"]) as proc:
        assert isinstance(proc.stdin, io.BufferedWriter)
        assert isinstance(proc.stdout, io.BufferedReader)
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ping\n"
        proc.stdin.close()
        assert proc.stdout.read() == b""
        assert proc.wait(timeout=10) == 0


def test_spawn_text_mode_reads_lines(session):
    with session.spawn(["sh", "-c", "read x; echo \"got $x\"; echo é >&2"], text=True) as proc:
        assert isinstance(proc.stdout, io.TextIOWrapper)
        proc.stdin.write("hello\n")
        proc.stdin.flush()   # buffered, as Popen's stdin
        assert proc.stdout.readline() == "got hello\n"
        assert proc.stderr.read() == "é\n"
        assert proc.wait(timeout=10) == 0


def test_communicate_interleaved_streams(session):
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; cat"
    with session.spawn(["sh", "-c", script]) as proc:
        out, err = proc.communicate(b"tail\n", timeout=30)
    assert out == b"".join(b"out%d\n" % i for i in range(1, 6)) + b"tail\n"
    assert err == b"".join(b"err%d\n" % i for i in range(1, 6))
    assert proc.returncode == 0


def test_communicate_large_output_on_both_streams_does_not_deadlock(session):
    # 8 MiB in, 8 MiB out on each stream: far past any pipe buffer, both ways at once.
    data = os.urandom(1 << 20) * 8
    with session.spawn(["sh", "-c", "tee /dev/stderr"]) as proc:
        out, err = proc.communicate(data, timeout=60)
    assert out == data and err == data
    assert proc.returncode == 0


def test_communicate_text_and_none_for_unpiped(session):
    with session.spawn(["sh", "-c", "cat; echo x >&2"], stderr=None, text=True) as proc:
        out, err = proc.communicate("é\n", timeout=30)
    assert (out, err) == ("é\n", None)


def test_stderr_to_stdout_merges(session):
    with session.spawn(["sh", "-c", "echo a; echo b >&2; echo c"],
                       stderr=subprocess.STDOUT) as proc:
        out, err = proc.communicate(timeout=30)
    assert out == b"a\nb\nc\n" and err is None and proc.stderr is None


def test_communicate_timeout_kills_the_command_and_its_group(session):
    marker = "sleep 4242"
    with session.spawn(["sh", "-c", f"echo started; {marker} & {marker}"]) as proc:
        with pytest.raises(lxcbind.TimeoutExpired) as info:
            proc.communicate(timeout=1)
        assert isinstance(info.value, subprocess.TimeoutExpired)
        assert isinstance(info.value, lxcbind.LxcbindError)
        assert info.value.output == b"started\n"
        assert proc.returncode == -signal.SIGKILL   # already reaped: the wait is done
    assert not _alive(session, marker)


def test_iter_output_decodes_characters_split_across_reads(session):
    # "é" is \303\251: the two bytes arrive in separate reads (a pause between them).
    script = r"printf 'a\303'; sleep 0.3; printf '\251b\n'; printf 'x\342\202' >&2; " \
             r"sleep 0.3; printf '\254\n' >&2"
    with session.spawn(["sh", "-c", script], stdin=None, text=True) as proc:
        got = {"stdout": "", "stderr": ""}
        chunks = 0
        for stream, chunk in proc.iter_output(timeout=30):
            assert isinstance(chunk, str)
            got[stream] += chunk
            chunks += 1
        assert proc.wait(timeout=10) == 0
    assert got == {"stdout": "aéb\n", "stderr": "x€\n"}
    assert chunks >= 4   # it did arrive in pieces, and no piece held half a character


def test_iter_output_bytes_and_order_within_a_stream(session):
    script = "for i in 1 2 3; do echo $i; sleep 0.1; done; echo e >&2"
    with session.spawn(["sh", "-c", script], stdin=None) as proc:
        pairs = list(proc.iter_output(timeout=30))
    assert b"".join(c for s, c in pairs if s == "stdout") == b"1\n2\n3\n"
    assert [c for s, c in pairs if s == "stderr"] == [b"e\n"]


def test_iter_output_timeout_kills(session):
    with session.spawn(["sh", "-c", "echo x; sleep 4343"], stdin=None) as proc:
        seen = []
        with pytest.raises(lxcbind.TimeoutExpired):
            for item in proc.iter_output(timeout=1):
                seen.append(item)
        assert seen == [("stdout", b"x\n")]
    assert not _alive(session, "sleep 4343")


def test_run_on_output_callback_text_and_bytes(session):
    calls: list[tuple[str, object]] = []
    script = r"printf 'h\303'; sleep 0.2; printf '\251\n'; echo oops >&2"
    r = session.run(["sh", "-c", script], text=True,
                    on_output=lambda s, c: calls.append((s, c)))
    assert r.stdout == "hé\n" and r.stderr == "oops\n"
    assert "".join(c for s, c in calls if s == "stdout") == "hé\n"
    assert all(isinstance(c, str) and "\ufffd" not in c for _, c in calls)
    raw: list[tuple[str, object]] = []
    r = session.run("echo a; echo b >&2", on_output=lambda s, c: raw.append((s, c)),
                    max_output=1)
    assert sorted(raw) == [("stderr", b"b\n"), ("stdout", b"a\n")]   # whatever the cap keeps
    assert r.stdout_truncated


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"timeout": "3"}, TypeError, "timeout must be a number of seconds"),
    ({"timeout": -1}, ValueError, "timeout must be > 0"),
    ({"env": {"A": 1}}, TypeError, "env keys and values must be str"),
    ({"env": ["A=1"]}, TypeError, "env must be a mapping"),
    ({"cwd": "tmp"}, ValueError, "cwd must be an absolute path"),
    ({"cwd": 3}, TypeError, "cwd must be a str"),
    ({"input": 3}, TypeError, "input must be bytes or str"),
    ({"max_output": "1k"}, TypeError, "max_output must be an int"),
    ({"on_output": "print"}, TypeError, "on_output must be a callable"),
    ({"kill_grace": "2"}, TypeError, "kill_grace must be a number"),
    ({"kill_grace": -1}, ValueError, "kill_grace must be >= 0"),
])
def test_run_checks_arguments_at_the_edge(session, kwargs, error, words):
    with pytest.raises(error, match=r"^Session\.run\(\): " + words):
        session.run("true", **kwargs)


def test_typos_and_bad_streams_are_type_errors(session):
    with pytest.raises(TypeError, match="timout"):
        session.run("true", timout=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^Session\.map\(\) got an unexpected keyword "
                                        r"argument 'timout'"):
        session.map(["true"], timout=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^Session\.map\(\): timeout"):
        session.map(["true"], timeout="3")  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match=r"^Session\.spawn\(\): stdout must be"):
        session.spawn(["true"], stdout="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^Session\.spawn\(\): stdin must be"):
        session.spawn(["true"], stdin=subprocess.STDOUT)
    with pytest.raises(TypeError, match=r"^SessionProcess\.communicate\(\): timeout"):
        with session.spawn(["true"]) as proc:
            proc.communicate(timeout="1")  # type: ignore[arg-type]
    assert session.run("echo ok").stdout == b"ok\n"   # nothing of that broke the session


def test_session_and_pool_results_carry_the_limit_events():
    policy = {"version": "0.8.0", "process": {"commandLine": "true"},
              "lxc": {"limits": {"pids": 32, "memory": "200M"}}}
    bomb = "i=0; while [ $i -lt 80 ]; do sleep 5 & i=$((i+1)); done 2>/dev/null; kill 0"
    hog = "python3 -c \"b = bytearray(600 << 20); print('survived')\""
    with Session.from_policy(policy) as s:
        assert not s.run("true").pids_limited
        r = s.run(hog)
        assert r.oom_killed and not r.pids_limited and b"survived" not in r.stdout
        assert not s.run("true").oom_killed     # counted per command
        r = s.run(["sh", "-c", bomb])
        assert r.pids_limited and not r.oom_killed
        assert not s.run(["true"]).pids_limited
    with lxcbind.Pool(policy, size=1) as pool:
        assert pool.run(["sh", "-c", bomb]).pids_limited
