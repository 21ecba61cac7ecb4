"""``run`` and ``interact``: a command in a container, wired to a pty or pipes by the bridge.

Two modes:

* **pipes** (``tty=False``, the default of ``run``): stdin, stdout and stderr are separate pipes;
  output is byte-exact and the streams stay apart.  With ``ctty=True`` the process also gets a
  pty as its controlling terminal (for programs that open ``/dev/tty``); what they write there
  is discarded by ``run`` and copied to the host's stderr by ``interact``.
* **pty** (``tty=True``): stdin, stdout and stderr are one pty slave, allocated from the
  container's own devpts when liblxc offers it (``tty`` inside prints ``/dev/pts/N``), else from
  the host's.  The process is a session leader with the slave as controlling terminal (liblxc
  does setsid + TIOCSCTTY because stdin is a tty).  Output is merged and goes through the line
  discipline: ``\\n`` arrives as ``\\r\\n`` and input is echoed, as on any terminal.  Canonical
  mode (the default) truncates input lines longer than 4095 bytes; binary input needs
  ``tty_raw=True`` (the slave in raw mode: byte-exact both ways, but then no in-band EOF exists,
  so the program must stop reading by itself, e.g. ``head -c N``).

Input rules: ``input`` is sent at once through pipes; on a pty it is held until the process has
printed something or ``ready_wait`` seconds have passed (see ``lxcbind.proc.bridge.Bridge``), so
bytes sent before a shell has set up its terminal are not lost.  End of input is delivered: a pipe
is closed, a pty gets the slave's VEOF (twice after a partial line).  ``input=None`` means no input
(EOF at once), never the caller's stdin.

Timeouts: SIGTERM to the process group (and the pty's foreground group), SIGKILL after
``kill_grace`` seconds; the result has ``timed_out=True``.  Processes that left the group
(``setsid``) are the sandbox's job (cgroup kill), not this module's.

Signals: while a command runs in the main thread, SIGINT/SIGTERM/SIGHUP sent to the caller are
forwarded to the command's group; once it is gone (reaped, terminal restored) the signal is
re-raised in the caller, so its own handler (or default action) runs after cleanup.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lxcbind._lite import record
from lxcbind.command import check_max_output
from lxcbind.errors import LxcError
from lxcbind.lxc.attach import pipe
from lxcbind.lxc.container import Container as _BareContainer
from lxcbind.proc.bridge import Bridge, Sink
from lxcbind.result import CompletedRun, MaxOutput, OutputBuffer

if TYPE_CHECKING:
    from lxcbind.proc import pty as _pty

__all__ = ["run", "interact", "interact_run"]

_PIPE_SIZE = 1 << 20  # fewer wakeups per megabyte; best effort (pipe-max-size may be lower)


def _pipe() -> tuple[int, int]:
    return pipe(_PIPE_SIZE)


def _open_pty(container: _BareContainer, rows_cols: tuple[int, int]) -> _pty.PtyPair:
    from lxcbind.proc import pty as _pty  # a terminal's: not on a pipe run's import path

    devpts = -1
    try:
        devpts = container.devpts_fd()
    except LxcError:
        pass  # liblxc too old or no devpts: a host pty still works, minus the name inside
    try:
        pair = _pty.open_pty(devpts if devpts >= 0 else None)
    finally:
        if devpts >= 0:
            os.close(devpts)
    try:
        # Before the process starts: a 0x0 terminal breaks programs that ask its size.
        _pty.set_winsize(pair.master, *rows_cols)
    except BaseException:
        pair.close()
        raise
    return pair


def _reraise(sig: int | None) -> None:
    """Deliver a signal the bridge intercepted to the caller's own disposition (after cleanup):
    the default SIGINT handler raises KeyboardInterrupt, a SIGTERM handler may raise SystemExit."""
    if sig is not None:
        signal.raise_signal(sig)


@record
class Plan:
    """How one attached command is wired and bounded (what ``run`` and ``interact_run``
    decide, ``_execute`` carries out): pty or pipes, where input comes from and output goes,
    the host terminal to follow, and the deadlines."""

    tty: bool
    ctty: bool
    input: bytes | None
    input_fd: int | None
    stdout_sink: Sink
    stderr_sink: Sink
    side_sink: Sink
    size: tuple[int, int]
    tty_raw: bool
    timeout: float | None
    kill_grace: float
    ready_wait: float
    raw_host: int | None = None
    winsize_from: int | None = None


def _execute(container: _BareContainer, argv: Sequence[str], plan: Plan,
             attach_kw: dict[str, Any]) -> tuple[Any, Bridge]:
    """Attach, bridge, reap.  Returns ``(process, bridge)``; the process is always reaped and
    every fd closed, whatever happens."""
    from lxcbind.proc import pty as _pty  # a terminal's: not on a pipe run's import path

    pair: _pty.PtyPair | None = None
    parent_fds: list[int] = []  # our ends: closed at the end
    child_fds: list[int] = []  # the child's ends: closed right after attach
    proc = None
    try:
        tty = plan.tty
        if tty or plan.ctty:
            pair = _open_pty(container, plan.size)
            if plan.tty_raw:
                _pty.set_raw(pair.slave)
        if tty:
            assert pair is not None
            stdin = stdout = stderr = pair.slave
            to_child: int | None = pair.master
            outputs = [(pair.master, plan.stdout_sink)]
            side: list[tuple[int, Any]] = []
            ctty_fd = None
        else:
            to_child = None
            stdin = None
            if plan.input is not None or plan.input_fd is not None:
                r, w = _pipe()
                child_fds.append(r)
                parent_fds.append(w)
                stdin, to_child = r, w
            out_r, out_w = _pipe()
            err_r, err_w = _pipe()
            child_fds += [out_w, err_w]
            parent_fds += [out_r, err_r]
            stdout, stderr = out_w, err_w
            outputs = [(out_r, plan.stdout_sink), (err_r, plan.stderr_sink)]
            ctty_fd = pair.slave if pair is not None else None
            # The slave stays open on our side while the command runs, so that its writes to
            # /dev/tty always find a reader and never turn the master into EIO-then-data.
            side = [(pair.master, plan.side_sink)] if pair is not None else []
        proc = container.attach(argv, stdin=stdin, stdout=stdout, stderr=stderr, ctty=ctty_fd,
                                **attach_kw)
        # Close our copies of the child's ends now: EOF/EIO can only come once they are gone.
        for fd in child_fds:
            os.close(fd)
        child_fds.clear()
        if tty and pair is not None:
            pair.close_slave()
        raw = _pty.RawMode(plan.raw_host) if plan.raw_host is not None else None
        bridge = Bridge(proc, pgid=proc.pid, to_child=to_child, input=plan.input,
                        input_fd=plan.input_fd,
                        outputs=outputs, side_outputs=side,
                        pty_master=pair.master if tty and pair is not None else None,
                        timeout=plan.timeout, kill_grace=plan.kill_grace,
                        ready_wait=plan.ready_wait, raw_mode=raw,
                        winsize_from=plan.winsize_from)
        if to_child is not None and to_child in parent_fds:
            parent_fds.remove(to_child)  # the bridge closes a stdin pipe at EOF
        try:
            if raw is not None:
                with raw:
                    bridge.run()
            else:
                bridge.run()
        finally:
            if bridge.to_child is not None and bridge.to_child != (pair.master if pair else -1):
                os.close(bridge.to_child)
        proc.wait()
        return proc, bridge
    finally:
        if proc is not None and proc.returncode is None:
            proc.close()  # an exception escaped: kill and reap, never leave a zombie
        for fd in child_fds + parent_fds:
            os.close(fd)
        if pair is not None:
            pair.close()


def _attach_kw(env: Mapping[str, str] | None, cwd: str | None,
               extra: dict[str, Any]) -> dict[str, Any]:
    kw = dict(extra)
    kw["env"] = env
    kw["cwd"] = cwd
    return kw


def run(
    container: _BareContainer,
    argv: Sequence[str],
    *,
    input: bytes | str | None = None,
    timeout: float | None = None,
    tty: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | None = "/",
    max_output: MaxOutput = None,
    check: bool = False,
    ctty: bool = False,
    size: tuple[int, int] | None = None,
    tty_raw: bool = False,
    kill_grace: float = 2.0,
    ready_wait: float = 0.25,
    **attach_kw: Any,
) -> CompletedRun:
    """Run ``argv`` in the running ``container`` and capture what it does.

    ``input``: bytes (str is UTF-8 encoded) for stdin, then EOF; None is an empty stdin.
    ``tty``: pty mode (merged output in ``stdout``; ``size`` = (rows, cols), default 24x80;
    ``tty_raw`` for a raw slave).  ``ctty`` (pipe mode): the process still gets a pty as
    controlling terminal.  ``max_output``: per stream, keep the first and last halves of this
    many bytes and count the rest (``truncated``, ``stdout_omitted``, ``stderr_omitted``);
    None is ``DEFAULT_MAX_OUTPUT`` (16 MiB), ``UNLIMITED`` keeps everything.
    ``timeout``: seconds, then the group is killed (``timed_out=True``); with ``check`` a
    timeout raises ``CommandTimeout`` and a non-zero exit ``CalledProcessError``.
    Other keywords (``uid``, ``gid``, ``clear_env``, ``namespaces``, ``flags``) go to
    ``Container.attach``.

    Raises ``LxcError`` when the command cannot be attached; a missing program or cwd is a
    result (``returncode`` 127/126, ``exec_error`` set), not an exception.
    """
    from lxcbind.proc import pty as _pty  # a terminal's: not on a pipe run's import path

    if isinstance(input, str):
        input = input.encode()
    limit = check_max_output(max_output, "Container.run")
    out = OutputBuffer(limit)
    err = OutputBuffer(limit)
    start = time.monotonic()
    plan = Plan(tty=tty, ctty=ctty and not tty,
                input=input if input is not None else (b"" if tty else None), input_fd=None,
                stdout_sink=out, stderr_sink=err, side_sink=OutputBuffer(0),
                size=size or _pty.DEFAULT_SIZE, tty_raw=tty_raw, timeout=timeout,
                kill_grace=kill_grace, ready_wait=ready_wait)
    proc, bridge = _execute(container, argv, plan, _attach_kw(env, cwd, attach_kw))
    result = CompletedRun.captured(argv, proc.returncode, out, err, timed_out=bridge.timed_out,
                                   started=start, exec_error=proc.exec_error, timeout=timeout)
    _reraise(bridge.signal_received)
    if check:
        result.check_returncode()
    return result


def interact_run(
    container: _BareContainer,
    argv: Sequence[str],
    *,
    tty: bool | None = None,
    stdin: int = 0,
    stdout: int = 1,
    stderr: int = 2,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = "/",
    ctty: bool = False,
    tty_raw: bool = False,
    kill_grace: float = 2.0,
    ready_wait: float = 0.25,
    **attach_kw: Any,
) -> CompletedRun:
    """Like ``interact`` but returns a ``CompletedRun`` (empty ``stdout``/``stderr``: they went
    to the caller's fds) so that ``timed_out`` and ``exec_error`` are known."""
    from lxcbind.proc import pty as _pty  # a terminal's: not on a pipe run's import path

    if tty is None:
        tty = os.isatty(stdin) and os.isatty(stdout)
    env_map = dict(env or {})
    if tty and "TERM" not in env_map and os.environ.get("TERM"):
        env_map["TERM"] = os.environ["TERM"]  # the program draws on the caller's terminal
    host_tty = stdin if os.isatty(stdin) else (stdout if os.isatty(stdout) else None)
    start = time.monotonic()
    plan = Plan(tty=tty, ctty=ctty and not tty, input=None, input_fd=stdin,
                stdout_sink=stdout, stderr_sink=stderr, side_sink=stderr,
                size=_pty.terminal_size(stdin, stdout), tty_raw=tty_raw, timeout=timeout,
                kill_grace=kill_grace, ready_wait=ready_wait,
                raw_host=stdin if tty and os.isatty(stdin) else None,
                winsize_from=host_tty if tty else None)
    proc, bridge = _execute(container, argv, plan, _attach_kw(env_map or None, cwd, attach_kw))
    # The streams went to the caller's fds: nothing captured, hence empty buffers.
    result = CompletedRun.captured(argv, proc.returncode, OutputBuffer(0), OutputBuffer(0),
                                   timed_out=bridge.timed_out, started=start,
                                   exec_error=proc.exec_error, timeout=timeout)
    _reraise(bridge.signal_received)
    return result


def interact(container: _BareContainer, argv: Sequence[str], **kwargs: Any) -> int:
    """Run ``argv`` bridged to the caller's own stdio (fds 0/1/2, or ``stdin=``/``stdout=``/
    ``stderr=``) and return the shell-style status: the exit code, 128+N after signal N, 124
    after a timeout.

    ``tty`` defaults to "stdin and stdout are terminals".  In pty mode the host terminal is in
    raw mode while the command runs (restored on every path, re-applied after SIGCONT, left
    alone in a background process group), its size is copied to the pty at start and on
    SIGWINCH, and ``TERM`` is passed from the caller's environment unless ``env`` sets it.
    The caller's stdin is always bridged, never handed to the container (a program holding the
    host terminal could inject keystrokes into it with TIOCSTI).  Keywords: see
    ``interact_run`` and ``run``.
    """
    result = interact_run(container, argv, **kwargs)
    return 124 if result.timed_out else result.exit_status


class Container(_BareContainer):
    """The liblxc handle (``lxcbind.lxc.container.Container``) plus ways to run commands in
    it: the process layer supervises the handle, the handle knows nothing of it."""

    def run(self, argv: Sequence[str], **kwargs: Any) -> CompletedRun:
        """Run ``argv`` to completion and capture it; see ``lxcbind.proc.runner.run``."""
        return run(self, argv, **kwargs)

    def interact(self, argv: Sequence[str], **kwargs: Any) -> int:
        """Run ``argv`` bridged to this process's own stdio; see ``interact`` above."""
        return interact(self, argv, **kwargs)
