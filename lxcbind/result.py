"""The result of one command: ``CompletedRun``, shaped like ``subprocess.CompletedProcess``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from lxcbind._lite import record, replace
from lxcbind.errors import CalledProcessError, ExecError, TimeoutExpired


def exec_line(error: ExecError) -> bytes:
    """The line a shell would print for a command that could not be started, in the
    command's stderr: ``lxcbind: foo: No such file or directory``, ``lxcbind: cd: /nope: Not a
    directory`` for its working directory."""
    why = os.strerror(error.errno) if error.errno else str(error)
    where = {"chdir": "cd: ", "ctty": "controlling terminal: "}.get(error.stage, "")
    return f"lxcbind: {where}{error.filename or ''}: {why}\n".encode(errors="replace")


# "Full": less than 2 MiB + 1/128 of the size left for the workload, or no inode.  After
# ENOSPC, ext4 leaves up to about a megabyte unused (delayed allocation's reservations).
FULL_MARGIN = 2 << 20


def filesystem_full(fd: int) -> bool:
    """Whether the filesystem of ``fd`` (a sandbox's writable layer: the ext4 disk layer, or a
    clone's tmpfs) has (nearly) no bytes or no inodes left for the workload: what
    ``disk_limited`` reports.  False for ``fd < 0`` or a filesystem that cannot be asked."""
    if fd < 0:
        return False
    try:
        st = os.fstatvfs(fd)
    except OSError:
        return False
    margin = FULL_MARGIN + st.f_blocks * st.f_frsize // 128
    return st.f_favail == 0 or st.f_bavail * st.f_frsize < margin


@record(uncompared=("exec_error",))
class CompletedRun:
    """What a command did.

    ``returncode`` follows ``subprocess``: the exit code, or ``-N`` when signal N killed it;
    ``exit_status`` is the shell form (128+N).  ``stdout``/``stderr`` are bytes (``stderr`` is
    empty in tty mode, where both streams share the terminal; ``str`` after ``text=True``).
    With an output cap, ``truncated`` is True when either stream was cut,
    ``stdout_truncated``/``stderr_truncated`` say which, ``*_omitted`` count the bytes dropped
    between the kept head and tail, and the stream holds ``omitted_marker(n)`` where it was
    cut.  ``exec_error`` is set when the command never started (missing cwd or program).
    ``oom_killed`` / ``pids_limited``: while it ran, the sandbox's memory limit killed a
    process / its process limit refused a fork (set by sandbox runs, which know the limits).
    ``disk_limited``: when it ended, the sandbox's writable layer (``lxc.limits.disk``) was full
    (bytes or inodes): a write may have failed with ENOSPC.
    ``image``: the id of the stored image the sandbox's root filesystem came from (None for
    the other root filesystems).
    ``shell_restarted``: the persistent shell running it died and a new one replaced it (its
    cwd, variables and functions are lost; ``Session.shell(restart=True)``).
    """

    args: Sequence[str]
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    duration: float = 0.0
    truncated: bool = False
    stdout_omitted: int = 0
    stderr_omitted: int = 0
    exec_error: ExecError | None = None   # not compared
    timeout: float | None = None
    oom_killed: bool = False        # the container's memory limit killed a process meanwhile
    pids_limited: bool = False      # a fork was refused at the container's process limit
    disk_limited: bool = False      # the container's writable layer was full when it ended
    shell_restarted: bool = False   # a persistent shell died in this call and was restarted
    image: str | None = None        # the id of the stored image the sandbox ran on

    @property
    def signal(self) -> int | None:
        """The signal that killed the command, if one did."""
        return -self.returncode if self.returncode < 0 else None

    @property
    def exit_status(self) -> int:
        """Shell-style status: the exit code, or 128+N for death by signal N."""
        return exit_status(self.returncode)

    @classmethod
    def captured(cls, args: Sequence[str], returncode: int, out: OutputBuffer,
                 err: OutputBuffer, *, timed_out: bool, started: float,
                 exec_error: ExecError | None = None,
                 timeout: float | None = None) -> CompletedRun:
        """The result of a run whose streams were captured in ``out``/``err``; ``started``
        is its ``time.monotonic()`` start.  Every way of running a command builds it here.
        A command that never started has one line saying why in ``stderr`` (``exec_line``),
        before anything else there: a caller that shows only the streams (a model, a log)
        sees the reason, not a bare 127."""
        stderr = err.getvalue()
        if exec_error is not None:
            stderr = exec_line(exec_error) + stderr
        return cls(args=list(args), returncode=returncode, stdout=out.getvalue(),
                   stderr=stderr, timed_out=timed_out,
                   duration=time.monotonic() - started,
                   truncated=out.truncated or err.truncated, stdout_omitted=out.omitted,
                   stderr_omitted=err.omitted, exec_error=exec_error, timeout=timeout)

    @property
    def stdout_truncated(self) -> bool:
        """``stdout`` was cut by the output cap (``stdout_omitted`` bytes dropped)."""
        return self.stdout_omitted > 0

    @property
    def stderr_truncated(self) -> bool:
        """``stderr`` was cut by the output cap (``stderr_omitted`` bytes dropped)."""
        return self.stderr_omitted > 0

    def check_returncode(self) -> None:
        """Raise ``lxcbind.TimeoutExpired`` or ``lxcbind.CalledProcessError`` (subclasses of
        ``LxcbindError`` and of their ``subprocess`` namesakes) unless it succeeded."""
        if self.timed_out:
            raise TimeoutExpired(self)
        if self.returncode:
            raise CalledProcessError(self.returncode, list(self.args), self.stdout,
                                     self.stderr, self)

    def finished(self, encoding: str | None, errors: str, check: bool) -> CompletedRun:
        """What a ``run`` returns: decoded when ``encoding`` is set (``text=True``), and with
        ``check`` its ``check_returncode`` done."""
        result = self if encoding is None else self.decoded(encoding, errors)
        if check:
            result.check_returncode()
        return result

    def decoded(self, encoding: str = "utf-8", errors: str = "replace") -> CompletedRun:
        """This result with ``stdout``/``stderr`` decoded to ``str`` (``text=True``).  The
        default ``errors="replace"``: a hostile command's invalid bytes never raise."""
        return replace(self, **{name: bytes(value).decode(encoding, errors)
                                 for name in ("stdout", "stderr")
                                 if isinstance(value := getattr(self, name), (bytes, bytearray))})


def exit_status(returncode: int) -> int:
    """Shell-style status of a ``subprocess``-style returncode: the exit code, or 128+N for
    death by signal N (-N).  The one home of this formula."""
    return 128 - returncode if returncode < 0 else returncode


DEFAULT_MAX_OUTPUT = 16 << 20
"""Bytes kept per stream when a call does not say (``max_output=None``): a long test or build
log fits whole, and a workload that floods its output costs the caller at most 32 MiB (two
streams) per running command, not gigabytes.  The CLI's ``--json`` uses the same cap."""


class Unlimited:
    """The type of ``UNLIMITED``: ``max_output=lxcbind.UNLIMITED`` keeps every byte a command
    writes (the caller's memory then grows with the workload's output)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "lxcbind.UNLIMITED"

    def __reduce__(self) -> str:
        return "UNLIMITED"   # pickles (Ray, multiprocessing) as the module's one instance


UNLIMITED = Unlimited()
MaxOutput = int | Unlimited | None
"""A ``max_output`` keyword: bytes per stream (an int >= 0), ``UNLIMITED``, or None for
``DEFAULT_MAX_OUTPUT``."""


def omitted_marker(count: int) -> bytes:
    """What a capped stream holds where ``count`` bytes were dropped: on a line of its own,
    so a reader (a person, a model) cannot mistake the join for the command's own output."""
    return b"\n[... lxcbind: %d bytes omitted ...]\n" % count


class OutputBuffer:
    """Captured bytes of one stream, optionally capped while reading.

    Without a cap (``limit`` None or ``UNLIMITED``: the API's defaults are resolved before,
    see ``lxcbind.command.check_max_output``) everything is kept.  With ``limit`` bytes, at
    most ``limit`` bytes are ever held: the first ``limit - limit // 2`` (the head) and the
    last ``limit // 2`` (the tail); ``omitted`` counts the bytes dropped between them, and
    ``getvalue`` puts ``omitted_marker(omitted)`` there.  The cap is enforced in ``write``, so
    a command printing gigabytes costs no more memory than the cap.
    """

    def __init__(self, limit: int | Unlimited | None = None) -> None:
        if isinstance(limit, Unlimited):
            limit = None
        if limit is not None and limit < 0:
            raise ValueError("max_output must be >= 0")
        self.limit = limit
        self._head: list[bytes] = []
        self._head_len = 0
        self._tail = bytearray()
        self.omitted = 0
        self.total = 0

    @property
    def truncated(self) -> bool:
        return self.omitted > 0

    def write(self, data: bytes) -> int:
        n = len(data)
        self.total += n
        if self.limit is None:
            self._head.append(bytes(data))
            return n
        head_room = (self.limit - self.limit // 2) - self._head_len
        if head_room > 0:
            take = data[:head_room]
            self._head.append(bytes(take))
            self._head_len += len(take)
            data = data[head_room:]
            if not data:
                return n
        tail_cap = self.limit // 2
        if len(data) >= tail_cap:
            self.omitted += len(self._tail) + len(data) - tail_cap
            self._tail = bytearray(data[len(data) - tail_cap:]) if tail_cap else bytearray()
        else:
            self._tail += data
            excess = len(self._tail) - tail_cap
            if excess > 0:
                del self._tail[:excess]
                self.omitted += excess
        return n

    def getvalue(self) -> bytes:
        """Head + marker + tail (everything, when nothing was omitted)."""
        marker = omitted_marker(self.omitted) if self.omitted else b""
        return b"".join(self._head) + marker + bytes(self._tail)
