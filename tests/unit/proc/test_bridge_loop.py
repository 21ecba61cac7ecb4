"""The bridge loop against plain host processes on a host pty or pipes (no root, no liblxc).

These pin the loop's contracts independently of containers: input held until the program is
ready, EOF delivery on a pty, draining after exit, bounded buffers, timeouts killing the group,
signal forwarding.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from lxcbind.proc import pty as lpty
from lxcbind.proc.bridge import Bridge
from lxcbind.result import OutputBuffer


def spawn_on_pty(argv, *, size=(24, 80), raw=False):
    """Start argv on a fresh host pty as a session leader with the slave as ctty."""
    pair = lpty.open_pty(None)
    lpty.set_winsize(pair.master, *size)
    if raw:
        lpty.set_raw(pair.slave)
    proc = subprocess.Popen(argv, stdin=pair.slave, stdout=pair.slave, stderr=pair.slave,
                            start_new_session=True,
                            preexec_fn=None, close_fds=True)
    pair.close_slave()
    return pair, proc


def bridge_pty(argv, *, input=b"", timeout=None, size=(24, 80), raw=False, **kw):
    pair, proc = spawn_on_pty(argv, size=size, raw=raw)
    out = OutputBuffer(kw.pop("max_output", None))
    pidfd = os.pidfd_open(proc.pid)
    try:
        # Popen's child is a session leader but has not done TIOCSCTTY; that only matters
        # for job control, which these tests do not use.
        b = Bridge(pidfd, pgid=proc.pid, to_child=pair.master, input=input,
                   outputs=[(pair.master, out)], pty_master=pair.master, timeout=timeout, **kw)
        b.run()
        rc = proc.wait(10)
    finally:
        os.close(pidfd)
        pair.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return b, rc, out


def bridge_pipes(argv, *, input=None, timeout=None, **kw):
    in_r = in_w = None
    if input is not None:
        in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    proc = subprocess.Popen(argv, stdin=in_r if in_r is not None else subprocess.DEVNULL,
                            stdout=out_w, stderr=err_w, start_new_session=True)
    for fd in (in_r, out_w, err_w):
        if fd is not None:
            os.close(fd)
    out, err = OutputBuffer(kw.pop("max_output", None)), OutputBuffer(None)
    pidfd = os.pidfd_open(proc.pid)
    try:
        b = Bridge(pidfd, pgid=proc.pid, to_child=in_w, input=input,
                   outputs=[(out_r, out), (err_r, err)], timeout=timeout, **kw)
        b.run()
        rc = proc.wait(10)
    finally:
        os.close(pidfd)
        os.close(out_r)
        os.close(err_r)
        if b.to_child is not None:
            os.close(b.to_child)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return b, rc, out, err


def test_presend_input_reaches_interactive_shell():
    b, rc, out = bridge_pty(["sh", "-i"], input=b"echo one; echo two; exit 3\n")
    text = out.getvalue()
    assert rc == 3
    assert b"one\r\n" in text and b"two\r\n" in text


def test_input_held_until_first_output():
    # The program prints a marker only after draining (TCSAFLUSH) its terminal: input sent
    # before the marker would be discarded.  Held input arrives after it.
    script = "import sys,termios,tty,time; time.sleep(0.3); " \
             "termios.tcflush(0, termios.TCIFLUSH); print('READY', flush=True); " \
             "print('got', sys.stdin.readline().strip(), flush=True)"
    b, rc, out = bridge_pty(["python3", "-c", script], input=b"hello\n", ready_wait=5.0)
    assert rc == 0
    assert b"got hello" in out.getvalue()


def test_ready_wait_is_bounded():
    t = time.monotonic()
    b, rc, out = bridge_pty(["cat"], input=b"x\n", ready_wait=0.3)
    assert rc == 0
    assert out.getvalue().count(b"x\r\n") == 2  # echo + cat
    assert time.monotonic() - t < 3


@pytest.mark.parametrize("data", [b"hello", b"hello\n", b""])
def test_eof_on_pty_ends_wc(data):
    b, rc, out = bridge_pty(["wc", "-c"], input=data, timeout=10)
    assert not b.timed_out
    # The echo of the input comes first ("hello5\r\n"): the count is the trailing number.
    assert re.search(rb"(\d+)\s*$", out.getvalue()).group(1) == str(len(data)).encode()


def test_output_drained_after_exit():
    n = 300_000
    b, rc, out = bridge_pty(["python3", "-c", f"import os; os.write(1, b'a' * {n})"], raw=True)
    assert rc == 0 and out.getvalue() == b"a" * n


def test_background_holder_does_not_hang():
    t = time.monotonic()
    b, rc, out = bridge_pty(["sh", "-c", "setsid sleep 20 & sleep 0.1; echo done"])
    assert b"done" in out.getvalue()
    assert time.monotonic() - t < 3


def test_pipes_byte_exact_both_directions_no_deadlock():
    data = os.urandom(4 << 20)
    # cat echoes everything while we are still writing: both directions full at once.
    b, rc, out, err = bridge_pipes(["cat"], input=data)
    assert rc == 0 and hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()


def test_pipes_separate_streams():
    b, rc, out, err = bridge_pipes(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (rc, out.getvalue(), err.getvalue()) == (7, b"out\n", b"err\n")


def test_timeout_kills_group():
    t = time.monotonic()
    b, rc, out, err = bridge_pipes(["sh", "-c", "trap '' TERM; sleep 30 & sleep 30"],
                                   timeout=0.3, kill_grace=0.5)
    assert b.timed_out and b.escalated
    assert time.monotonic() - t < 5


def test_max_output_head_and_tail():
    b, rc, out, err = bridge_pipes(
        ["python3", "-c", "import sys; sys.stdout.write('H' * 100 + 'M' * 10000 + 'T' * 100)"],
        max_output=200)
    assert out.getvalue() == b"H" * 100 + b"\n[... lxcbind: 10000 bytes omitted ...]\n" + b"T" * 100
    assert out.omitted == 10000 and out.truncated


def test_host_sink_is_bounded_and_complete():
    # A slow host reader: the bridge must pause reading (bounded buffer), not lose data.
    r, w = os.pipe()
    n = 8 << 20
    got = []

    def reader():
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            got.append(len(chunk))
            time.sleep(0.0005)

    t = threading.Thread(target=reader)
    t.start()
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=out_w)
    os.close(out_w)
    pidfd = os.pidfd_open(proc.pid)
    b = Bridge(pidfd, outputs=[(out_r, w)], buffer_size=64 * 1024)
    b.run()
    proc.wait()
    os.close(w)
    t.join()
    os.close(out_r)
    os.close(pidfd)
    assert sum(got) == n


def test_forwarded_sigterm_is_reported_and_child_killed():
    pair, proc = spawn_on_pty(["sleep", "30"])
    pidfd = os.pidfd_open(proc.pid)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    before = signal.getsignal(signal.SIGTERM)
    try:
        b = Bridge(pidfd, pgid=proc.pid, to_child=pair.master, input=b"",
                   outputs=[(pair.master, OutputBuffer())], pty_master=pair.master)
        b.run()
    finally:
        os.close(pidfd)
        pair.close()
    assert b.signal_received == signal.SIGTERM
    assert proc.wait(5) == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_output_buffer_cap_enforced_while_writing():
    buf = OutputBuffer(10)
    for _ in range(1000):
        buf.write(b"abc")
    assert buf.omitted == 2990 and buf.total == 3000
    assert buf.getvalue() == b"abcab" + b"\n[... lxcbind: 2990 bytes omitted ...]\n" + b"bcabc"
