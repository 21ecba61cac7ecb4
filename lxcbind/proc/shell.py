"""``Shell``: a persistent shell in a Session, its state kept across calls.

The framing (``Frame``) is shared with the asyncio shell (``lxcbind.aio.AsyncShell``), which
drives the same exchange with the event loop's readers instead of the bridge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from lxcbind._lite import replace as _replace
from lxcbind.command import CallOptions, check_call, check_grace, check_timeout
from lxcbind.errors import ShellDied, SpawnerDied
from lxcbind.lxc.attach import pipe
from lxcbind.proc.bridge import Bridge
from lxcbind.proc.spawned import EXIT_GRACE, PIPE, SessionProcess, Stdio, kill_group_but
from lxcbind.proc.users import User
from lxcbind.result import DEFAULT_MAX_OUTPUT, CompletedRun, MaxOutput, OutputBuffer, Unlimited

__all__ = ["Shell", "Frame"]


class Spawns(Protocol):
    """What a shell needs of its session (``lxcbind.proc.session.Session``)."""

    def _spawn(self, opts: CallOptions, stdio: Stdio = ..., *,
               tty: bool = False, pass_fds: Sequence[int] = (),
               start_timeout: float = ..., user: User | None = None) -> SessionProcess: ...


class Frame:
    """One framed exchange with the shell (see ``Shell``): the script to send, the status
    lines to look for, and what each stage of a deadline does.  The caller moves the bytes
    (the bridge for ``Shell``, the event loop for ``AsyncShell``) and ends the call when
    ``parse`` says it is ``over``."""

    SIGINT_AGAIN = 0.6   # seconds without a status before the shell is interrupted again

    def __init__(self, builtin: str, command: str, prefix: bytes = b"") -> None:
        self.command = command
        nonce = os.urandom(16).hex()  # what secrets.token_hex does, without hashlib's import
        self._tag = nonce.encode()
        self._builtin = builtin
        cmd = builtin
        self.script = prefix + (
            f"{{ {cmd} printf '{nonce} R\\n' >&3; {cmd} . /proc/self/fd/6 3>&- 4>&- 5>&-\n"
            f"}} 6<<'LXCBIND_{nonce}' </dev/null >&4 2>&5\n{command}\nLXCBIND_{nonce}\n"
            f"{cmd} printf '{nonce} %d\\n' \"$?\" >&3\n").encode()
        self.status: int | None = None
        self.started = False       # the "R" line: the shell has read the whole frame
        self.interrupted = False
        self._interrupted_at = 0.0
        self.sigints = 0           # SIGINTs sent to the shell's group by this call
        self._acked = 0            # the last of them whose recovery line the shell ran
        self.killed = False
        self._kills = 0

    @property
    def recovery(self) -> bytes:
        """The line sent after the latest SIGINT: it reports status 130 if the interrupt ate
        the frame's own status line, and acknowledges that SIGINT (``A<n>``)."""
        return (f"{self._builtin} printf '{self._tag.decode()} A{self.sigints}\\n' >&3\n"
                ).encode()

    @property
    def over(self) -> bool:
        """The call is over: its status came, and every SIGINT it sent has been taken.  A
        status alone is not enough after a timeout: the command may have ended (and the shell
        reported) just before the SIGINT reached the shell, which then takes it later, while
        it reads the next frame: busybox ash, interrupted there, drops what it has read, and
        the next call waits for a status that never comes.  A recovery line is read only after
        the SIGINT sent before it has been handled."""
        return self.status is not None and self._acked == self.sigints

    def parse(self, pending: bytes, data: bytes) -> bytes:
        """Read status lines from ``pending + data``; returns the incomplete last line (the
        shell keeps it for the next read).  Lines with other nonces, or acknowledging an
        earlier SIGINT of this call, are stale recoveries."""
        lines = (pending + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == self._tag:
                word = parts[1]
                if word.isdigit():
                    if self.status is None:
                        self.status = int(word)
                elif word == b"R":
                    self.started = True
                elif word[:1] == b"A" and word[1:].isdigit() and int(word[1:]) == self.sigints:
                    self._acked = self.sigints
                    if self.status is None:
                        self.status = 130  # the interrupt ate the frame's own status line
        return rest

    def on_deadline(self, stage: str, proc: SessionProcess, send: Callable[[bytes], None],
                    input_idle: bool) -> float | None:
        """The bridge's ``on_deadline`` hook (``stage`` "term", then "kill"): returns when to
        be called again (None: never).  Interrupt with SIGINT once the frame is read (again
        while no status comes), resend the recovery line while nothing is pending, then kill
        the command's processes but the shell, then the shell."""
        if stage != "kill":
            if not self.started:
                # Still reading the frame: SIGINT now would abort the parse and leave the
                # rest of the command to run as top-level input.  Wait for "R".
                return 0.02
            now = time.monotonic()
            if not self.interrupted or (self.status is None
                                        and now - self._interrupted_at >= self.SIGINT_AGAIN):
                # Again while no status comes: a busy ash loop (``while :; do :; done``)
                # sometimes lets the first SIGINT pass without breaking out (seen in about one
                # call in ten on a loaded 2-vCPU VM); a later one always breaks it.  At its
                # prompt, ash just drops the line it was reading: the recovery line follows.
                self.interrupted = True
                self._interrupted_at = now
                self.sigints += 1
                proc.send_signal(signal.SIGINT, group=True)
                send(self.recovery)
            elif input_idle:
                send(self.recovery)  # again: an interrupted ash drops buffered input
            return 0.2
        self._kills += 1
        if self._kills == 1:
            self.killed = True
            kill_group_but(proc, proc.host_pid)
        elif self.status is None or self._kills > 2:
            proc.send_signal(signal.SIGKILL, group=True)
        elif input_idle:
            # The shell reported but has not taken the last SIGINT yet: one more round for
            # its acknowledgement before the shell, which no longer answers, is killed.
            send(self.recovery)
        return None

    def returncode(self) -> int:
        """The call's status once ``status`` arrived (130 interrupted, 137 killed)."""
        assert self.status is not None
        if self.killed:
            return 128 + signal.SIGKILL
        if self.interrupted:
            return 130
        return self.status


class _Tail:
    """The last ``limit`` bytes written (the shell's own chatter, for error messages)."""

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        del self.data[:-self.limit]
        return len(data)


class Shell:
    """A persistent shell in a Session: ``run("cd /tmp && export X=1")`` then
    ``run("pwd; echo $X")`` sees ``/tmp`` and ``1``.  Works with bash, dash, busybox ash (and is
    meant to with zsh, which this machine lacks).

    Descriptors.  The shell's own stdout and stderr (prompts, banners, "no job control" and
    job notices, the newline it prints on SIGINT) go to a pipe of their own, read and dropped
    (the last bytes are kept for error messages).  Each command gets fresh redirections from
    three pipes the shell holds: 4 (the command's stdout), 5 (its stderr) and 3 (status).
    So what a call returns is exactly what its command wrote, on every shell.

    Framing.  Each call writes to the shell's stdin::

        { command printf '<nonce> R\\n' >&3; command . /proc/self/fd/6 3>&- 4>&- 5>&-
        } 6<<'LXCBIND_<nonce>' </dev/null >&4 2>&5
        <command>
        LXCBIND_<nonce>
        command printf '<nonce> %d\\n' "$?" >&3

    The command is a quoted here-document (no expansion, no quoting to get wrong) that the
    shell sources: sourcing, unlike ``eval``, runs it as non-interactive input (bash then
    prints no ``[1] 123`` job notice), and ``command`` keeps a syntax error from aborting the
    rest of the frame.  The nonce (128 random bits, new each call) ends the here-document and
    tags the status line; a command cannot predict it.  The status is read on fd 3, which the
    command does not have: nothing it prints can end or forge a frame.  Once the status arrives
    every byte the command wrote is already in pipes 4 and 5, so they are read dry and the call
    returns (the bridge's ``done`` hook: the same loop, drain and cap as ``Session.run``).  The
    ``R`` line says the shell has read the whole frame; a timeout waits for it before sending
    SIGINT, which would otherwise abort the parse and run the rest as top-level input.  The
    command's stdin is /dev/null: it cannot eat the next frame.  (A command can of course
    redefine the shell itself, e.g. shadow ``command``; it then only spoils its own calls, and
    deadlines, enforced from the host, still hold.)

    Timeout.  The shell runs interactive (``-i``, job control off: every command is in the
    shell's process group) because only an interactive shell aborts the running command list on
    SIGINT and goes back to reading input with its state intact.  At the timeout the group gets
    SIGINT (background jobs of a non-job-control shell ignore it), again every 0.6 s while no
    status comes, and after each SIGINT a recovery line numbered after it (resent every 0.2 s:
    ash drops buffered input when interrupted); ``returncode`` is 130.  The call ends when the
    status has come *and* the shell has run the recovery line of the last SIGINT: the shell
    reads that line only after it has handled that SIGINT, so no interrupt of this call is
    still on its way when the next frame arrives (one that was, interrupting busybox ash while
    it read the next frame, made ash drop the frame and the next call wait forever).
    If no status has come ``kill_grace`` s later (the command ignores SIGINT), every process of
    the group except the shell is SIGKILLed (``returncode`` 137): an external command dies and
    the shell, alive, reports.  If the shell itself is what runs (``trap '' INT`` and a builtin
    loop), it is killed ``kill_again`` (0.5) s later (1 s if it reported but did not take its
    last SIGINT): then the state is lost.

    Death.  A shell that exits (``exit``, killed) loses its state.  Without ``restart``, the
    call during which it died raises ``ShellDied`` (after a timeout the call returns its result
    and the next call raises), as does every later call until ``restart()`` starts a new shell
    (same program, env and starting cwd).  With ``restart=True`` that happens at once and the
    result says ``shell_restarted=True``.  Processes that left the shell's process group are not
    killed by a timeout (they go at ``Session.close``).  Background jobs' output written after
    their call returned shows up in a later call.  One call at a time (a lock serializes them).
    """

    def __init__(self, session: Spawns, *, program: str = "/bin/sh",
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 start_timeout: float = 10.0, restart: bool = False,
                 user: User | None = None) -> None:
        self.session = session
        self.program = program
        self.user = user   # who the shell (and so each command of it) runs as; None: the session's
        self.restart_on_death = restart
        self._env = {"PS1": "", "PS2": "", "PS4": "+ ", "ENV": "", **(env or {})}
        self._cwd = cwd
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._chatter = _Tail()
        self.dead: ShellDied | None = None
        self._start()

    def _argv(self) -> tuple[list[str], str]:
        """How to start ``program`` interactive without rc files or line editing, and the
        prefix that runs a builtin past functions and special-builtin error exits."""
        name = os.path.basename(self.program)
        if "bash" in name:
            return [self.program, "--noediting", "--norc", "--noprofile", "-i"], "command"
        if "zsh" in name:  # zsh's ``command`` runs external programs only
            return [self.program, "-f", "-i"], "builtin"
        return [self.program, "-i"], "command"

    def _start(self) -> None:
        argv, self._prefix = self._argv()
        pipes = [pipe() for _ in range(4)]  # chatter, status, stdout, stderr
        try:
            opts = check_call(argv, env=self._env, cwd=self._cwd, call="Session.shell")
            proc = self.session._spawn(opts, Stdio(PIPE, pipes[0][1], pipes[0][1]),
                                       pass_fds=[w for _, w in pipes[1:]], user=self.user)
        except BaseException:
            for fd in (fd for pair in pipes for fd in pair):
                os.close(fd)
            raise
        for _, w in pipes:
            os.close(w)
        self.proc = proc
        self._chat, self._status, self._out, self._err = (proc._own(r) for r, _ in pipes)
        self._buf = b""
        self.dead = None
        try:
            if proc.exec_error is not None:
                proc.wait()
                raise self._died(f"could not start: {proc.exec_error}", proc.returncode)
            # No job control (commands stay in the shell's group, no notices), no history.
            script = b"set +m; unset HISTFILE; HISTSIZE=0\n"
            result = self._call("true", script, self._start_timeout, DEFAULT_MAX_OUTPUT, 2.0,
                                restart=False)
            if result is None or result.timed_out:
                raise self.dead or self._died(
                    f"did not start (no status within {self._start_timeout:g}s)", None)
        except BaseException:
            proc.close()
            raise

    @property
    def stdin_fd(self) -> int | None:
        """The shell's stdin (our end of its pipe), where frames are written."""
        return self.proc._pipes.get("stdin")

    def _died(self, why: str, returncode: int | None) -> ShellDied:
        chatter = bytes(self._chatter.data).decode(errors="replace").strip()
        self.dead = ShellDied(
            f"the persistent shell {self.program!r} {why}; its state (cwd, variables, "
            f"functions, background jobs) is lost: call restart() for a new one"
            + (f" (it said: {chatter[-300:]!r})" if chatter else ""), returncode)
        return self.dead

    @property
    def alive(self) -> bool:
        return self.dead is None and self.proc.poll() is None

    def restart(self) -> None:
        """Kill this shell (if still running) and start a new one with the same program,
        environment and starting cwd.  Everything the old one held is lost."""
        with self._lock:
            self.proc.close()
            self._start()

    def run(self, command: str, *, timeout: float | None = None,
            max_output: MaxOutput = None, text: bool = False, encoding: str | None = None,
            errors: str | None = None, check: bool = False,
            kill_grace: float = 2.0) -> CompletedRun:
        """Run ``command`` in the shell; the result's ``returncode`` is its ``$?`` (130 when
        a timeout interrupted it, 137 when it had to be killed; ``timed_out=True``).
        ``text``/``encoding``/``errors`` and ``check`` as for ``Session.run``.

        Raises ``ShellDied`` when the shell is dead (and ``restart`` is off),
        ``TypeError``/``ValueError`` on bad arguments (naming ``Shell.run``)."""
        opts = check_shell_call(command, timeout, max_output, "Shell.run", text=text,
                                encoding=encoding, errors=errors)
        grace = check_grace(kill_grace, "Shell.run")
        return self._run(command, opts, grace).finished(opts.encoding, opts.errors, check)

    def _run(self, command: str, opts: CallOptions, kill_grace: float) -> CompletedRun:
        with self._lock:
            if self.dead is not None:
                raise self.dead
            result = self._call(command, b"", opts.timeout, opts.max_output, kill_grace,
                                restart=self.restart_on_death)
            if result is None:
                assert self.dead is not None
                raise self.dead
            return result

    def _call(self, command: str, prefix: bytes, timeout: float | None,
              max_output: int | Unlimited, kill_grace: float, *,
              restart: bool) -> CompletedRun | None:
        """One framed exchange on the bridge.  When the shell dies meanwhile (``dead`` is then
        set): with ``restart`` a new shell is started and the result says so; else None,
        except after a timeout (the call's result; the next call raises)."""
        proc = self.proc
        start = time.monotonic()
        out = OutputBuffer(max_output)
        err = OutputBuffer(max_output)
        frame = Frame(self._prefix, command, prefix)

        def parse(data: bytes) -> bool:
            self._buf = frame.parse(self._buf, data)
            return frame.over

        def on_deadline(stage: str) -> float | None:
            return frame.on_deadline(stage, proc, bridge.send, not bridge._inbuf)

        stdin = self.stdin_fd
        if proc._pidfd < 0 or stdin is None:
            proc.poll()
            self._died("is gone", proc.returncode)
            return None
        bridge = Bridge(proc._pidfd, pgid=proc.host_pid if proc._alive_leader() else None,
                        to_child=stdin, input=frame.script, keep_input=True,
                        outputs=[(self._out, out), (self._err, err)],
                        side_outputs=[(self._chat, self._chatter)],
                        done=(self._status, parse), timeout=timeout, kill_grace=kill_grace,
                        kill_again=0.5, on_deadline=on_deadline, drain_quiet=0.0,
                        handle_signals=False)
        bridge.run()
        if bridge.exited or not bridge.done:  # the shell is gone (maybe just after its status)
            if not self._note_death():
                return None
        if bridge.done:
            returncode = frame.returncode()
        elif bridge.timed_out:
            returncode = 128 + signal.SIGKILL
        elif restart:
            returncode = 255 if proc.exit_status is None else proc.exit_status
        else:
            return None
        result = CompletedRun.captured([command], returncode, out, err,
                                       timed_out=bridge.timed_out, started=start,
                                       timeout=timeout)
        return self._restart_if_dead(result, restart)

    def _note_death(self) -> bool:
        """The shell process is gone: wait for its status and set ``dead``.  False when the
        spawner went with it (no status: the call cannot return a result)."""
        proc = self.proc
        try:
            proc.wait(EXIT_GRACE + 1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
        except SpawnerDied as exc:
            self._died(f"is gone with its spawner ({exc})", None)
            return False
        status = proc.exit_status
        self._died("is gone (no exit status)" if status is None else
                   f"exited (status {status})", proc.returncode)
        return True

    def _restart_if_dead(self, result: CompletedRun, restart: bool) -> CompletedRun:
        if self.dead is not None and restart:
            self.proc.close()
            self._start()
            result = _replace(result, shell_restarted=True)
        return result

    def close(self) -> None:
        """Kill the shell (and its group).  Idempotent."""
        if self.dead is None:
            self.dead = ShellDied("the persistent shell was closed")
        self.proc.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_shell_call(command: object, timeout: object, max_output: object, call: str, *,
                     text: object = False, encoding: object = None,
                     errors: object = None) -> CallOptions:
    """A shell call's arguments, checked: ``command`` is a str (shell syntax)."""
    if not isinstance(command, str):
        raise TypeError(f"{call}(): the command must be a str (shell syntax), not "
                        f"{type(command).__name__}")
    if "\0" in command:
        raise ValueError(f"{call}(): the command must not contain NUL bytes")
    opts = check_call(None, max_output=max_output, text=text, encoding=encoding, errors=errors,
                      call=call)
    # (0 is accepted: an immediate deadline, as before the checks existed)
    return opts._replace(timeout=check_timeout(timeout, call, zero=True))
