"""Pseudo-terminals: allocation, window size, line-discipline queries, host raw mode.

This module is the only place in lxcbind that issues pty/termios ioctls.

* ``open_pty(devpts_fd)`` allocates a pair from a container's own devpts mount when given one
  (the slave is then ``/dev/pts/N`` *inside* the container, so ``tty`` works there), else from
  the host's devpts (the process still gets a controlling terminal, but the slave has no name
  inside the container).
* ``get_winsize``/``set_winsize`` read and set ``struct winsize``.  A fresh pty is 0x0, which
  breaks programs (busybox ``stty size`` fails), so callers set a size before the process starts.
* ``eof_bytes(master, last)`` says what to write on the master to deliver end-of-input to the
  program on the slave (a pty has no half-close).
* ``RawMode`` puts the *host* terminal in raw mode for the duration of a bridge and restores it.

All descriptors returned are close-on-exec; the caller owns and closes them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
from typing import Any

__all__ = [
    "PtyPair", "open_pty", "get_winsize", "set_winsize", "terminal_size", "eof_bytes",
    "make_raw", "set_raw", "foreground_pgrp", "RawMode", "DEFAULT_SIZE",
]

DEFAULT_SIZE = (24, 80)

# <asm-generic/ioctls.h>; the termios module does not export these two.
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): lock/unlock the slave
TIOCGPTPEER = 0x5441  # _IO('T', 0x41): open the slave from the master (Linux 4.13+)


class PtyPair:
    """A master/slave pair.  ``source`` is ``"container"`` (from the container's devpts) or
    ``"host"``.  ``close_slave()`` and ``close()`` are idempotent."""

    def __init__(self, master: int, slave: int, source: str) -> None:
        self.master = master
        self.slave = slave
        self.source = source

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        self.close_slave()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PtyPair master={self.master} slave={self.slave} source={self.source}>"


def _open_in_devpts(devpts_fd: int) -> tuple[int, int]:
    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
    master = os.open("ptmx", flags, dir_fd=devpts_fd)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        # TIOCGPTPEER opens the slave through the master's own devpts instance.  Opening
        # "/dev/pts/N" by path would resolve in the *host's* mount namespace and find the
        # wrong pty (or none).
        slave = fcntl.ioctl(master, TIOCGPTPEER, flags)
    except BaseException:
        os.close(master)
        raise
    return master, slave


def open_pty(devpts_fd: int | None = None) -> PtyPair:
    """A new pty pair, from ``devpts_fd``'s devpts instance when given and usable, else from the
    host's.  A container devpts can refuse (``lxc.pty.max`` reached: ENOSPC; old kernel without
    TIOCGPTPEER: EINVAL/ENOTTY); the host pty is then the working fallback."""
    if devpts_fd is not None and devpts_fd >= 0:
        try:
            master, slave = _open_in_devpts(devpts_fd)
            return PtyPair(master, slave, "container")
        except OSError:
            pass
    master, slave = os.openpty()  # Python makes both non-inheritable (O_CLOEXEC)
    return PtyPair(master, slave, "host")


def get_winsize(fd: int) -> tuple[int, int] | None:
    """``(rows, cols)`` of the terminal ``fd``, or None when it is not a terminal or is 0x0."""
    try:
        rows, cols = termios.tcgetwinsize(fd)
    except (OSError, termios.error):
        return None
    if rows <= 0 or cols <= 0:
        return None
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set the window size (on a master it is the slave's size; the kernel sends SIGWINCH to the
    slave's foreground process group when it changes)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def terminal_size(*fds: int) -> tuple[int, int]:
    """The size of the first of ``fds`` that is a sized terminal, else ``DEFAULT_SIZE`` (24x80)."""
    for fd in fds:
        if fd is not None and fd >= 0:
            size = get_winsize(fd)
            if size:
                return size
    return DEFAULT_SIZE


def eof_bytes(master: int, last_byte: int | None) -> bytes:
    """What to write on ``master`` so that the program on the slave sees end-of-input.

    On Linux ``tcgetattr`` on a master returns the *slave's* termios, so the current mode is
    known at the moment EOF is delivered:

    * canonical mode: the slave's VEOF character.  VEOF only ends input at the start of a line;
      after a partial line the first VEOF just hands the partial line to ``read``, so it is sent
      twice when the last byte sent was not a newline (``wc -c`` on ``hello`` then counts 5 and
      ends).
    * non-canonical with ISIG on (interactive line editors such as busybox lineedit and
      readline keep ISIG): VEOF once; they read it as end-of-input on an empty line.
    * raw (non-canonical, ISIG off): nothing.  A raw slave has no in-band EOF, and injecting a
      byte would corrupt binary input; such a program must end by itself.
    """
    try:
        attrs = termios.tcgetattr(master)
    except (OSError, termios.error):
        return b""
    lflag, cc = attrs[3], attrs[6]
    veof = cc[termios.VEOF]
    veof = veof if isinstance(veof, bytes) else bytes([veof])
    if veof in (b"", b"\0"):  # _POSIX_VDISABLE
        return b""
    if lflag & termios.ICANON:
        at_line_start = last_byte is None or last_byte in (0x0A, 0x0D) or veof[0] == last_byte
        return veof if at_line_start else veof * 2
    if lflag & termios.ISIG:
        return veof
    return b""


def make_raw(attrs: list[Any]) -> list[Any]:
    """A copy of termios ``attrs`` in raw mode (what cfmakeraw(3) does): no input translation,
    no output post-processing, no echo, no line editing, no signal characters, 8-bit."""
    new: list[Any] = [list(a) if isinstance(a, list) else a for a in attrs]
    new[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    new[1] &= ~termios.OPOST
    new[2] &= ~(termios.CSIZE | termios.PARENB)
    new[2] |= termios.CS8
    new[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    new[6][termios.VMIN] = 1
    new[6][termios.VTIME] = 0
    return new


def set_raw(fd: int) -> None:
    """Put terminal ``fd`` (e.g. a slave, before the process starts) in raw mode: byte-exact in
    both directions, but then end-of-input cannot be delivered in-band (see ``eof_bytes``)."""
    termios.tcsetattr(fd, termios.TCSANOW, make_raw(termios.tcgetattr(fd)))


def foreground_pgrp(fd: int) -> int | None:
    """The foreground process group of the terminal (on a master: of its slave), as a pid in the
    caller's pid namespace; None when there is none or ``fd`` is not a terminal."""
    try:
        pgrp = os.tcgetpgrp(fd)
    except OSError:
        return None
    return pgrp if pgrp > 0 else None


class RawMode:
    """Raw mode on the host terminal ``fd`` for the duration of a ``with`` block.

    Nothing is changed when ``fd`` is not a terminal, or when this process is in a background
    process group of its controlling terminal (changing modes from there raises SIGTTOU, and the
    terminal belongs to the foreground job).  The saved mode is restored with TCSADRAIN, which
    lets pending output finish and keeps type-ahead (TCSAFLUSH would throw the user's typing
    away), on every exit path of the block.  ``reapply()`` is for SIGCONT: a job-control shell
    resets the terminal while we are stopped.  ``active`` says whether raw mode was applied.

    Not thread-safe; meant for the thread that runs the bridge.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    @property
    def active(self) -> bool:
        return self.saved is not None

    def _in_foreground(self) -> bool:
        try:
            return os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError as exc:
            # ENOTTY: a terminal that is not our controlling terminal (e.g. a pty a test or a
            # driver handed us) - nobody else's job, so it is ours to change.
            return exc.errno == errno.ENOTTY

    def __enter__(self) -> RawMode:
        if self.fd < 0 or not os.isatty(self.fd) or not self._in_foreground():
            return self
        saved = termios.tcgetattr(self.fd)
        termios.tcsetattr(self.fd, termios.TCSADRAIN, make_raw(saved))
        self.saved = saved
        return self

    def reapply(self) -> None:
        """Raw mode again (after SIGCONT), if it was applied and we are in the foreground."""
        if self.saved is not None and self._in_foreground():
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, make_raw(self.saved))
            except (OSError, termios.error):
                pass

    def restore(self) -> None:
        """Restore the saved mode now.  Idempotent."""
        saved, self.saved = self.saved, None
        if saved is not None and self._in_foreground():
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
            except (OSError, termios.error):
                pass

    def __exit__(self, *exc: object) -> None:
        self.restore()
