"""Streaming a spawned command's pipes: the loop behind ``SessionProcess.communicate`` and
``iter_output`` (``chunks``), the ``on_output`` sink of ``Session.run`` (``Tee``), and the
incremental decoding of text mode (a multi-byte character split across two reads is decoded
once both halves are there).

The drain rule is the bridge's (``lxcbind.proc.bridge``): once the command has exited its
output is read until every pipe is at EOF, or stays quiet for ``DRAIN_QUIET`` s (at most
``DRAIN_GRACE`` s): a background process that kept the pipe open does not hold the caller.
Everything here works on descriptors the caller owns; nothing is closed but the stdin it is
told to close.
"""

from __future__ import annotations

import codecs
import errno
import os
import select
import time
from collections.abc import Callable, Iterator
from typing import Any

from lxcbind.proc.bridge import Writable

DRAIN_QUIET = 0.1
DRAIN_GRACE = 2.0
CHUNK = 65536

OutputCallback = Callable[[str, Any], None]
"""``on_output(stream, chunk)``: ``stream`` is ``"stdout"`` or ``"stderr"``; ``chunk`` is bytes,
or str when the call decodes (``text=True``/``encoding=``)."""


class Deadline(Exception):
    """The deadline passed before the command's output ended (internal: callers turn it into
    ``lxcbind.TimeoutExpired`` after killing the command)."""


def decoder(encoding: str | None, errors: str) -> Callable[[bytes, bool], Any]:
    """``decode(data, final)``: bytes unchanged when ``encoding`` is None, else an incremental
    decoder (keeps an incomplete trailing character for the next call)."""
    if encoding is None:
        return _unchanged
    return codecs.getincrementaldecoder(encoding)(errors).decode


def _unchanged(data: bytes, final: bool = False) -> bytes:
    return data


def chunks(readers: dict[int, str], writer: int | None, data: bytes, exited: int,
           deadline: float | None,
           close_writer: Callable[[], None]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` as the ``readers`` (fd → stream name) produce output, while
    ``data`` is written to ``writer`` (then ``close_writer()``: EOF for the command).  Ends
    when every reader is at EOF, or after ``exited`` (a pidfd; -1: none) became readable and
    the output stayed quiet (see the module docstring).  Raises ``Deadline`` at ``deadline``
    (a ``time.monotonic()`` value).  The readers are left open."""
    pending = memoryview(data)
    if writer is not None and not pending:
        close_writer()
        writer = None
    if writer is not None:
        os.set_blocking(writer, False)
    open_readers = dict(readers)
    drain_until: float | None = None
    poller = select.poll()
    for fd in open_readers:
        poller.register(fd, select.POLLIN)
    if writer is not None:
        poller.register(writer, select.POLLOUT)
    if exited >= 0:
        poller.register(exited, select.POLLIN)
    while open_readers or writer is not None:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise Deadline()
        waits = [t - now for t in (deadline, drain_until) if t is not None]
        if drain_until is not None:
            waits.append(DRAIN_QUIET)
        events = poller.poll(max(0, int(min(waits) * 1000) + 1) if waits else None)
        if not events and drain_until is not None:
            return  # quiet after the exit: a leftover process holds the pipe
        for fd, _ in events:
            if fd == exited:
                poller.unregister(exited)
                drain_until = time.monotonic() + DRAIN_GRACE
            elif fd == writer:
                try:
                    pending = pending[os.write(writer, pending[:CHUNK]):]
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    pending = pending[:0]   # it stopped reading: the rest is not wanted
                if not pending:
                    poller.unregister(writer)
                    close_writer()
                    writer = None
            else:
                try:
                    got = os.read(fd, CHUNK)
                except OSError as exc:
                    if exc.errno == errno.EAGAIN:
                        continue
                    got = b""   # EIO and friends: the end of this stream
                if got:
                    yield open_readers[fd], got
                else:
                    poller.unregister(fd)
                    del open_readers[fd]
        if drain_until is not None and time.monotonic() >= drain_until:
            return


def read_chunk(fd: int) -> bytes | None:
    """One non-blocking read: None when nothing is there yet, ``b""`` at the end of the stream
    (EOF, or an error such as EIO on a pty master)."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Tee:
    """An output sink (the bridge writes into it) that keeps the bytes in ``buffer`` and
    passes each chunk on to ``callback(name, chunk)``, decoded when ``encoding`` is set."""

    def __init__(self, buffer: Writable, name: str, callback: OutputCallback,
                 encoding: str | None, errors: str) -> None:
        self.buffer = buffer
        self.name = name
        self.callback = callback
        self._decode = decoder(encoding, errors)
        self._text = encoding is not None

    def write(self, data: bytes) -> int:
        self.buffer.write(data)
        chunk = self._decode(bytes(data), False)
        if chunk:
            self.callback(self.name, chunk)
        return len(data)

    def finish(self) -> None:
        """Pass on what the decoder still holds (an incomplete character at the end)."""
        if self._text:
            rest = self._decode(b"", True)
            if rest:
                self.callback(self.name, rest)
