"""The escape sequences a workload must not send to the user's terminal, removed from a byte
stream that arrives in arbitrary pieces.

A terminal obeys what its program writes.  Most of that only draws; these sequences reach
past the screen, so the bridge drops them from output bound for a host terminal:

* OSC 52 (``ESC ] 52 ; ...``): writes the user's clipboard (pasted into a host shell later),
  or with ``?`` has the terminal type the clipboard back to the workload;
* OSC 50 (``ESC ] 50 ; ...``): sets, or reports back, the font name: a string of the
  workload's choosing typed back as input;
* XTWINOPS, ``CSI Ps ; ... t``: ``21 t`` / ``20 t`` type the window title / icon label back
  as input (a title the workload set: the classic injection); the others move, resize or
  iconify the user's window or report its state;
* DECRQSS (``ESC P $ q ... ST``): has the terminal report a setting back, which some
  terminals did with the request's own text;
* tmux's passthrough (``ESC P tmux; ... ST``): hands anything, OSC 52 included, to the
  terminal outside tmux.

Everything else passes unchanged.  The parse follows the terminal's (the DEC/ECMA-48 state
machine xterm and tmux implement): C0 controls inside a sequence are executed or ignored
without ending it, ESC restarts, CAN/SUB abandon, so padding cannot hide a sequence.  Only
the 7-bit forms are recognised: the 8-bit C1 bytes (0x9b, 0x9d, 0x90) are UTF-8 continuation
bytes, which UTF-8 terminals do not take as controls.  A piece that ends inside a sequence
still being judged is held (at most ``HOLD_MAX`` bytes) until the next piece shows what it is;
a sequence being dropped is skipped without being kept, however long (an OSC 52 payload can
be megabytes).  Cheap: a piece without ESC, outside any sequence, costs one ``memchr`` (about
2 us per 64 KiB here); colour-dense output (an SGR every 12 bytes) passes at 60-90 MB/s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import re

__all__ = ["EscapeFilter"]

ESC, BEL, CAN, SUB, DEL = 0x1B, 0x07, 0x18, 0x1A, 0x7F
HOLD_MAX = 256      # longer than any real sequence head; a longer CSI is dropped whole
_DROPPED_OSC = (50, 52)
_DCS_DROPPED = ((b"$q", "dcs"), (b"tmux;", "tmux"))


# What needs no judging, however often it comes (colour-heavy output and prompts are mostly
# this): text without ESC; complete CSIs with no control inside that are not XTWINOPS (final
# byte other than 't', or 't' after an intermediate byte); complete OSCs other than 50/52
# (digits only before the ';', nothing that could end or restart them inside).  One C call
# passes a whole run of them (possessive: the classes are disjoint, nothing to backtrack).
# Compiled on first use: no ``re`` import until a piece with an ESC arrives.
_SAFE_RUN = (rb"(?:[^\x1b]++|\x1b\[[0-?]*+[ -/]*+[@-su-~]|\x1b\[[0-?]*+[ -/]++t"
             rb"|\x1b\](?!0*5[02];)[0-9]*+;[^\x07\x18\x1a\x1b]*+(?:\x07|\x1b\\))++")
# CPython before 3.11.5 matches a possessive repeat wrongly when it holds a lookahead or an
# alternative that backtracks (gh-100061, gh-106052): on Debian 12's 3.11.2 the run above took
# a whole OSC 52 as safe, now and then.  There the same run is matched greedily: the classes are
# disjoint, so the match is the same, only slower (~0.6x).
_GREEDY_RUN = _SAFE_RUN.replace(rb"++", rb"+").replace(rb"*+", rb"*")
_safe: Callable[[bytes, int], re.Match[bytes] | None] | None = None


def _safe_run() -> Callable[[bytes, int], re.Match[bytes] | None]:
    global _safe
    if _safe is None:
        import re
        import sys

        _safe = re.compile(_SAFE_RUN if sys.version_info >= (3, 11, 5) else _GREEDY_RUN).match
    return _safe


def _inert(b: int) -> bool:
    """A byte the terminal executes or ignores inside a sequence without leaving it."""
    return (b < 0x20 and b not in (ESC, CAN, SUB)) or b == DEL


class EscapeFilter:
    """``feed(piece)`` returns what of the stream may go on so far; ``flush()`` at the end
    returns what was held back (an unfinished sequence that was not being dropped)."""

    __slots__ = ("_held", "_skipping")

    def __init__(self) -> None:
        self._held = b""
        # Inside a dropped sequence: "osc" (ends at BEL or ST), "dcs" (ST), "tmux" (ST; its
        # inner ESCs come doubled) or "csi" (its final byte).
        self._skipping: str | None = None

    def feed(self, data: bytes) -> bytes:
        if not self._held and self._skipping is None and ESC not in data:
            return data   # the common case: plain output
        buf = self._held + bytes(data)
        self._held = b""
        out: list[bytes] = []
        i = self._skip(buf, 0) if self._skipping is not None else 0
        n = len(buf)
        safe = _safe_run()
        while 0 <= i < n:
            run = safe(buf, i)
            if run is not None:
                out.append(run.group())
                i = run.end()
                if i >= n:
                    break
            i = self._escape(buf, i, out)   # at an ESC the safe run did not take
        return b"".join(out)

    def flush(self) -> bytes:
        """The end of the stream: an unfinished sequence that was only being looked at goes
        out as it is; one being dropped stays dropped."""
        held = b"" if self._skipping is not None else self._held
        self._held, self._skipping = b"", None
        return held

    # -- one sequence, from its ESC at ``j``: each returns where to go on, or -1 (the rest of
    # the piece is held or skipped) ---------------------------------------------------------
    #
    # _abandoned: a sequence head cut short by ESC, CAN or SUB is dropped, not passed.  The
    # terminal discards it anyway, and passing it would let a removal splice it to what
    # follows: "ESC ] 5" + (a dropped CSI 21 t) + "2;..." would reach the terminal as OSC 52.

    def _escape(self, buf: bytes, j: int, out: list[bytes]) -> int:
        m = j + 1
        n = len(buf)
        while m < n and _inert(buf[m]):
            m += 1
        if m >= n:
            if m - j > HOLD_MAX:   # padding: the controls are executed, ESC still pending
                self._held = b"\x1b"
                return -1
            return self._hold(buf, j)
        kind = buf[m]
        if kind == 0x5D:          # ']': OSC
            return self._osc(buf, j, m + 1, out)
        if kind == 0x5B:          # '[': CSI
            return self._csi(buf, j, m + 1, out)
        if kind == 0x50:          # 'P': DCS
            return self._dcs(buf, j, m + 1, out)
        if kind == ESC:           # a new escape starts here (this one is abandoned: dropped)
            return m
        out.append(buf[j:m + 1])
        return m + 1

    def _osc(self, buf: bytes, j: int, k: int, out: list[bytes]) -> int:
        """Drop OSC 50/52; pass any other (its body is then plain bytes to us)."""
        n = len(buf)
        digits = bytearray()
        while k < n:
            b = buf[k]
            if 0x30 <= b <= 0x39:
                digits.append(b)
            elif b == BEL or not _inert(b):
                break
            k += 1
            if k - j > HOLD_MAX:              # padded past any real one: dropped
                self._skipping = "osc"
                return self._skip(buf, k)
        if k >= n:
            return self._hold(buf, j)
        if buf[k] in (ESC, CAN, SUB):        # abandoned in its head: dropped (_abandoned)
            return k
        if digits and buf[k] == 0x3B and int(digits) in _DROPPED_OSC:   # ';'
            self._skipping = "osc"
            return self._skip(buf, k + 1)
        out.append(buf[j:k])
        return k

    def _csi(self, buf: bytes, j: int, k: int, out: list[bytes]) -> int:
        """Drop ``CSI ... t`` (parameters only, no intermediate byte); pass any other."""
        n = len(buf)
        intermediate = False
        while k < n:
            b = buf[k]
            if 0x40 <= b <= 0x7E:                    # the final byte
                if not (b == 0x74 and not intermediate):   # not 't'
                    out.append(buf[j:k + 1])
                return k + 1
            if b in (ESC, CAN, SUB):                 # abandoned here: dropped (see _abandoned)
                return k
            if 0x20 <= b <= 0x2F:
                intermediate = True
            k += 1
            if k - j > HOLD_MAX:                     # no real CSI is this long
                self._skipping = "csi"
                return self._skip(buf, k)
        return self._hold(buf, j)

    def _dcs(self, buf: bytes, j: int, k: int, out: list[bytes]) -> int:
        """Drop DECRQSS and tmux's passthrough; pass any other DCS."""
        n = len(buf)
        head = bytearray()
        while k < n and k - j < HOLD_MAX:
            b = buf[k]
            if b in (ESC, CAN, SUB):         # abandoned in its head: dropped (_abandoned)
                return k
            if not _inert(b) and not (0x30 <= b <= 0x3F and not head):   # skip parameters
                head.append(b)
            k += 1
            for prefix, mode in _DCS_DROPPED:
                if head == prefix:
                    self._skipping = mode
                    return self._skip(buf, k)
            if not any(p.startswith(head) for p, _ in _DCS_DROPPED):
                out.append(buf[j:k])          # another DCS: its body is plain bytes to us
                return k
        if k - j >= HOLD_MAX:                 # padded past any real one: dropped
            self._skipping = "dcs"
            return self._skip(buf, k)
        return self._hold(buf, j)

    def _hold(self, buf: bytes, j: int) -> int:
        self._held = buf[j:]
        return -1

    def _skip(self, buf: bytes, k: int) -> int:
        """Skip the dropped sequence's body from ``k``: the index after its end, or -1 (the
        rest of the piece belongs to it; a last ESC is held: it may start the ST)."""
        mode = self._skipping
        n = len(buf)
        while k < n:
            b = buf[k]
            if mode == "csi":
                if 0x40 <= b <= 0x7E:
                    self._skipping = None
                    return k + 1
                if b in (ESC, CAN, SUB):
                    self._skipping = None
                    return k
                k += 1
                continue
            ends = [p for p in (buf.find(b"\x1b", k), buf.find(b"\x18", k),
                                buf.find(b"\x1a", k),
                                buf.find(b"\x07", k) if mode == "osc" else -1) if p >= 0]
            if not ends:
                return -1
            p = min(ends)
            if buf[p] != ESC:                 # BEL ends an OSC; CAN/SUB abandon the string
                self._skipping = None
                return p + 1
            if p + 1 >= n:
                self._held = b"\x1b"
                return -1
            if buf[p + 1] == 0x5C:            # ESC \: the string terminator
                self._skipping = None
                return p + 2
            if mode == "tmux" and buf[p + 1] == ESC:   # a doubled ESC inside the passthrough
                k = p + 2
                continue
            self._skipping = None             # ESC + anything else: a new sequence
            return p
        return -1
