"""`lxcbind run -- bash` from a real terminal of the host, whatever its number.

Every devpts instance numbers its ptys from 0: the host's pts/1 and the container's pts/1
(usually the command's pty) share a device number.  The check that keeps the caller's
terminal out of the container must tell them apart by the devpts instance too, so the CLI
works from the host's pts/0, pts/1, pts/2, pts/5 alike.  Input is typed before the container
is up, as an agent's host pty does, and must reach the shell.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import destroy_quietly, new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]


def hold_pty_numbered(index: int) -> tuple[list[int], int, int]:
    """Open host ptys until one is /dev/pts/``index`` (the kernel hands out the lowest free
    number); the lower ones stay open, so that the number is really taken.  Returns the fds
    to close, and the master and slave of the wanted pty."""
    held: list[int] = []
    try:
        while True:
            master, slave = os.openpty()
            held += [master, slave]
            number = int(os.ttyname(slave).rsplit("/", 1)[1])
            if number == index:
                return held, master, slave
            if number > index:
                pytest.skip(f"/dev/pts/{index} is in use by another process")
    except BaseException:
        for fd in held:
            os.close(fd)
        raise


def read_until_eof(master: int, timeout: float) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:   # every slave closed: the CLI and its children exited
                break
            raise
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _make_controlling_terminal() -> None:
    # In the child, after setsid (start_new_session): stdin, the slave, becomes its terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_cli_on_terminal(args: list[str], master: int, slave: int,
                        held: list[int]) -> tuple[bytes, int]:
    """``python -m lxcbind ARGS`` with ``slave`` as its stdio and controlling terminal: what
    reached the terminal (read from ``master`` until EOF) and the exit status.  ``slave`` is
    closed here (and taken out of ``held``) so that EOF comes when the CLI is gone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "lxcbind", *args],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
                            start_new_session=True, preexec_fn=_make_controlling_terminal)
    os.close(slave)
    held.remove(slave)
    try:
        output = read_until_eof(master, 120)
        return output, proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("index", [0, 1, 2, 5])
def test_interactive_run_from_host_pty_number(index: int, tmp_path: Path) -> None:
    name = new_name("pts-")
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"version": "0.8.0", "containerId": name,
                                  "process": {"commandLine": "true"}}))
    held, master, slave = hold_pty_numbered(index)
    try:
        # Typed ahead, before anything runs: the line waits in the terminal's input queue.
        os.write(master, b"echo hi-$((6*7)); exit 3\n")
        output, code = run_cli_on_terminal(
            ["run", str(policy), "--", "bash", "--norc", "--noprofile"], master, slave, held)
    finally:
        for fd in held:
            os.close(fd)
        destroy_quietly(name)
    text = output.decode(errors="replace")
    assert "caller's terminal" not in text and "internal error" not in text, text
    assert code == 3, text
    assert "hi-42" in text, text   # the shell ran the pre-sent line (the echo alone has $((..)))


@pytest.mark.parametrize("mode", ["--tty", "--no-tty"])
def test_clipboard_and_report_sequences_never_reach_the_terminal(mode: str,
                                                                tmp_path: Path) -> None:
    """The workload writes OSC 52 (clipboard), CSI 21 t (title report) and DECRQSS between
    ordinary text, a title and colours: the user's terminal gets everything but those."""
    name = new_name("osc-")
    policy = tmp_path / "p.json"
    script = (r"printf 'A\033]52;c;ZWNobyBwd25lZA==\007B\033[21tC\033]0;my title\007D"
              r"\033P$qm\033\\E\033[1mF\033[0m\n'")
    policy.write_text(json.dumps({"version": "0.8.0", "containerId": name,
                                  "process": {"commandLine": script}}))
    master, slave = os.openpty()
    held = [master, slave]
    try:
        output, code = run_cli_on_terminal(["run", mode, str(policy)], master, slave, held)
    finally:
        for fd in held:
            os.close(fd)
        destroy_quietly(name)
    assert code == 0, output
    assert b"]52;" not in output and b"[21t" not in output and b"$q" not in output, output
    assert b"AB" in output and b"C\x1b]0;my title\x07D" in output, output
    assert b"E\x1b[1mF\x1b[0m" in output, output
