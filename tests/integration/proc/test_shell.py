"""The persistent shell (``Session.shell``) with bash, dash and zsh when present, on real
containers whose root filesystem is the host's (which has bash and dash)."""

from __future__ import annotations

import shutil
import signal
import time

import pytest

import lxcbind
from lxcbind import LxcbindError, Session
from lxcbind.proc.session import ShellDied
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc, pytest.mark.timeout(120)]

SHELLS = ["/bin/bash", "/bin/dash"] + (["/bin/zsh"] if shutil.which("zsh") else [])

# Pieces of the framing that must never show up in what a call returns.
FRAMING = (b"LXCBIND_", b"printf", b"eval", b"[1]", b"job control",
           b"Done", b"exit\n")


@pytest.fixture(scope="module")
def session():
    doc = {"version": "0.8.0", "containerId": new_name("sh-"),
           "process": {"commandLine": "true"}}
    with Session.from_policy(doc) as s:
        yield s


@pytest.fixture(params=SHELLS, ids=lambda p: p.rsplit("/", 1)[1])
def program(request):
    return request.param


@pytest.fixture
def sh(session, program):
    with session.shell(program=program) as shell:
        yield shell


def _clean(result) -> None:
    for piece in FRAMING:
        assert piece not in result.stdout and piece not in result.stderr, result


def test_streams_are_exactly_what_the_command_wrote(sh):
    r = sh.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.returncode) == (b"out\n", b"err\n", 0)
    r = sh.run("printf 'no newline'")
    assert (r.stdout, r.stderr) == (b"no newline", b"")
    r = sh.run("sleep 0.1 & echo started; wait; echo waited")
    assert (r.stdout, r.stderr) == (b"started\nwaited\n", b"")  # no "[1] 123" job notice
    r = sh.run("if")  # a syntax error: the shell's message (naming the sourced
    # /proc/self/fd/6) is the command's stderr
    assert r.returncode == 2 and r.stdout == b"" and b"rror" in r.stderr
    _clean(r)
    for _ in range(20):  # no chatter leaks into later calls either
        r = sh.run("true")
        assert (r.stdout, r.stderr, r.returncode) == (b"", b"", 0)


def test_state_is_kept_across_calls(sh):
    assert sh.run("cd /tmp && export X=1; Y=2; f() { echo fn$1; }").returncode == 0
    r = sh.run("pwd; echo $X $Y; f 3; sh -c 'echo child$X'")
    assert (r.stdout, r.stderr, r.returncode) == (b"/tmp\n1 2\nfn3\nchild1\n", b"", 0)


def test_exit_status_and_quoting(sh):
    assert sh.run("false").returncode == 1
    assert sh.run("(exit 7)").returncode == 7
    assert sh.run("return 3").returncode == 3  # ends the sourced command, not the shell
    r = sh.run("echo '$HOME' \"a'b\" \\$x `echo bq` '$(x)'; echo 'it''s'")
    assert r.stdout == b"$HOME a'b $x bq $(x)\nits\n"
    r = sh.run("cat <<EOF\nin heredoc\nEOF\necho LXCBIND_0123\n")
    assert r.stdout == b"in heredoc\nLXCBIND_0123\n"


def test_stdin_is_dev_null(sh):
    r = sh.run("cat; echo cat=$?; read x; echo read=$?")
    assert r.stdout == b"cat=0\nread=1\n"
    assert sh.run("echo still").stdout == b"still\n"


def test_framing_cannot_be_forged(sh):
    fake = ("printf '%s 0\\n' 00000000000000000000000000000000; "
            "echo 'x 0' >&3; echo 'y 0' >/proc/self/fd/3; "
            "echo 'z 0' >/proc/$$/fd/3; printf 'LXCBIND_0\\n0 0\\n' >/proc/$$/fd/3; "
            "sleep 0.2; echo done")
    r = sh.run(fake + "; false")
    assert r.returncode == 1 and r.stdout.endswith(b"done\n"), r
    assert sh.run("echo next").stdout == b"next\n"
    r = sh.run("head -c 65536 /dev/urandom; head -c 4096 /dev/urandom >&2")
    assert r.returncode == 0 and len(r.stdout) == 65536 and len(r.stderr) == 4096


def test_timeout_interrupts_only_the_command(sh):
    sh.run("cd /tmp; export KEEP=yes")
    for cmd in ("sleep 30; echo after", "while :; do :; done", "sleep 30 | cat"):
        t = time.monotonic()
        r = sh.run(cmd, timeout=0.3, kill_grace=1.0)
        assert r.timed_out and r.returncode == 130 and r.stdout == b"", r
        assert time.monotonic() - t < 0.3 + 1.0 + 3
        r = sh.run("echo $KEEP; pwd")
        assert (r.stdout, r.stderr) == (b"yes\n/tmp\n", b"")
    assert sh.alive


# Blocks a real-time signal (those queue: every one sent is counted), says it is ready, and
# once told to go prints how many copies are pending.
_COUNT_RT_SIGNALS = """
import signal, sys
sig = signal.SIGRTMIN + 3
signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
print("ready", flush=True)
sys.stdin.readline()
n = 0
while signal.sigtimedwait({sig}, 0) is not None:
    n += 1
print(n, flush=True)
"""


def test_a_group_signal_reaches_the_command_once(session):
    # The group signal used to be followed by one more through the pidfd: a persistent shell
    # then took a timeout's SIGINT twice, the second time while it read the next frame.
    proc = session.spawn(["python3", "-c", _COUNT_RT_SIGNALS])
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGRTMIN + 3, group=True)
        out, _ = proc.communicate(b"go\n", timeout=60)
    finally:
        proc.kill()
        proc.close()
    assert out == b"1\n"


def test_command_ignoring_sigint_is_killed_and_the_shell_survives(sh):
    sh.run("export KEEP=yes")
    t = time.monotonic()
    r = sh.run("trap '' INT; sleep 30", timeout=0.3, kill_grace=0.5)
    assert time.monotonic() - t < 0.3 + 0.5 + 3
    assert r.timed_out and r.returncode == 137 and not r.shell_restarted, r
    assert sh.alive
    assert sh.run("echo $KEEP").stdout == b"yes\n"


def test_shell_ignoring_sigint_dies_clearly_and_restarts(session, program):
    with session.shell(program=program, cwd="/tmp") as sh:
        sh.run("cd /; export KEEP=yes")
        t = time.monotonic()
        r = sh.run("trap '' INT; while :; do :; done", timeout=0.3, kill_grace=0.5)
        assert time.monotonic() - t < 0.3 + 0.5 + 0.5 + 3
        assert r.timed_out and not r.shell_restarted
        assert not sh.alive
        with pytest.raises(ShellDied) as info:
            sh.run("echo $KEEP")
        assert "lost" in str(info.value) and "restart()" in str(info.value)
        assert isinstance(info.value, LxcbindError)
        sh.restart()
        r = sh.run("echo \"[$KEEP]\"; pwd")
        assert r.stdout == b"[]\n/tmp\n"  # a new shell: the state is gone, the cwd is the start


def test_automatic_restart_reports_the_loss(session, program):
    with session.shell(program=program, restart=True) as sh:
        sh.run("export KEEP=yes")
        r = sh.run("trap '' INT; while :; do :; done", timeout=0.3, kill_grace=0.5)
        assert r.timed_out and r.shell_restarted
        r = sh.run("echo \"[$KEEP]\"")
        assert r.stdout == b"[]\n" and not r.shell_restarted
        r = sh.run("echo bye; exit 4")
        assert r.returncode == 4 and r.stdout == b"bye\n" and r.shell_restarted
        assert sh.run("echo back").stdout == b"back\n"


def test_exit_without_restart_raises(sh):
    with pytest.raises(ShellDied) as info:
        sh.run("exit 5")
    assert info.value.returncode == 5
    with pytest.raises(ShellDied):
        sh.run("true")


def test_background_job_output_goes_to_a_later_call(sh):
    r = sh.run("(sleep 0.3; echo late) & echo now")
    assert (r.stdout, r.stderr) == (b"now\n", b"")
    deadline = time.monotonic() + 10
    seen = b""
    while b"late" not in seen and time.monotonic() < deadline:
        seen += sh.run("sleep 0.1").stdout
    assert seen == b"late\n"


def test_huge_output_is_capped_while_reading(sh):
    from lxcbind.result import omitted_marker

    r = sh.run("head -c 20000000 /dev/zero; echo tail", max_output=1000)
    marker = omitted_marker(20000005 - 1000)
    assert r.truncated and marker in r.stdout and r.stdout.endswith(b"tail\n")
    assert len(r.stdout) == 1000 + len(marker)  # the cap, plus the marker saying where
    assert r.stdout_omitted == 20000005 - 1000
    assert sh.run("echo ok").stdout == b"ok\n"


def test_large_command_text(sh):
    body = "".join(f": {'x' * 100} {i}\n" for i in range(2000))  # ~210 kB, above a pipe
    r = sh.run(body + "echo end")
    assert (r.stdout, r.stderr, r.returncode) == (b"end\n", b"", 0)


def test_bridge_hooks_on_a_host_shell():
    """The bridge's hooks for a child that outlives its command, on a host bash: ``done``
    ends a run with the child alive and its input open (a second run uses it), and
    ``on_deadline`` replaces the timeout's signals stage by stage."""
    import os
    import signal
    import subprocess

    from lxcbind.proc.bridge import Bridge
    from lxcbind.result import OutputBuffer

    st_r, st_w = os.pipe()
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    child = subprocess.Popen(["/bin/bash", "--norc", "--noprofile"], stdin=in_r, stdout=out_w,
                             stderr=subprocess.DEVNULL, pass_fds=[st_w], start_new_session=True)
    for fd in (st_w, out_w, in_r):
        os.close(fd)
    pidfd = os.pidfd_open(child.pid)
    try:
        for i in range(2):
            out = OutputBuffer()
            seen = bytearray()
            bridge = Bridge(pidfd, to_child=in_w, keep_input=True, outputs=[(out_r, out)],
                            input=f"echo hi{i}; head -c 100000 /dev/zero; echo s >&{st_w}\n"
                            .encode(),
                            done=(st_r, lambda d, seen=seen: bool(seen.extend(d)) or
                                  b"s\n" in seen),
                            drain_quiet=0.0, handle_signals=False)
            bridge.run()
            assert bridge.done and not bridge.exited and not bridge.timed_out
            assert out.getvalue() == f"hi{i}\n".encode() + bytes(100000)
            assert child.poll() is None
        stages: list[str] = []

        def on_deadline(stage: str) -> float | None:
            stages.append(stage)
            if stage == "kill":
                os.killpg(child.pid, signal.SIGKILL)
            return 0.05 if stage == "timeout" else None

        out = OutputBuffer()
        bridge = Bridge(pidfd, pgid=child.pid, to_child=in_w, keep_input=True,
                        outputs=[(out_r, out)], input=b"trap '' INT TERM; sleep 30\n",
                        done=(st_r, lambda d: False), timeout=0.2, kill_grace=0.3,
                        on_deadline=on_deadline, handle_signals=False)
        bridge.run()
        assert bridge.exited and bridge.timed_out and bridge.escalated and not bridge.done
        assert stages[:2] == ["timeout", "tick"] and stages[-1] == "kill", stages
        assert child.wait(5) == -signal.SIGKILL
        os.fstat(in_w)  # still ours: keep_input never closes it
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(pidfd)
        for fd in (st_r, out_r, in_w):
            os.close(fd)


@pytest.mark.parametrize("timeout", [0, 0.001])
def test_timeout_while_the_shell_reads_a_large_command(sh, timeout):
    # SIGINT waits until the shell has read the whole frame: an interrupted parse would run
    # the rest of the command as top-level input, reading the framing pipe.
    sh.run("export KEEP=yes")
    body = "".join(f": {'x' * 100} {i}\n" for i in range(2000))
    r = sh.run(body + "cat; echo ran; sleep 30", timeout=timeout, kill_grace=1.0)
    assert r.timed_out and r.returncode == 130, r
    r = sh.run("echo $KEEP")
    assert (r.stdout, r.stderr) == (b"yes\n", b"")
    assert sh.alive


def test_text_check_and_argument_errors_name_the_call(sh):
    r = sh.run("printf '\\303\\251\\n'; echo e >&2", text=True)
    assert (r.stdout, r.stderr) == ("é\n", "e\n")
    with pytest.raises(lxcbind.CalledProcessError) as info:
        sh.run("echo out; (exit 4)", check=True, text=True)
    assert info.value.returncode == 4 and info.value.output == "out\n"
    with pytest.raises(TypeError, match=r"^Shell\.run\(\): timeout must be a number"):
        sh.run("true", timeout="3")
    with pytest.raises(TypeError, match=r"^Shell\.run\(\): the command must be a str"):
        sh.run(["ls"])
    with pytest.raises(TypeError, match=r"^Session\.shell\(\): env must be a mapping"):
        sh.session.shell(env=["A=1"])
    assert sh.run("echo still").stdout == b"still\n"
