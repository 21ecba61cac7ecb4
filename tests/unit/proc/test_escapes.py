"""The escape filter of output bound for a host terminal (``lxcbind.proc.escapes``): what is
dropped, what passes unchanged, and the same answer however the stream is cut into pieces."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest

from lxcbind.proc import escapes
from lxcbind.proc.escapes import HOLD_MAX, EscapeFilter


@pytest.fixture(autouse=True, params=["possessive", "greedy"])
def fast_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test with each form of the fast path: the possessive run (CPython >= 3.11.5) and
    the greedy one older CPythons get (their possessive repeats mismatch: gh-100061)."""
    if request.param == "possessive" and sys.version_info < (3, 11, 5):
        pytest.skip("this CPython's possessive repeats are the buggy ones; it uses the greedy run")
    pattern = escapes._SAFE_RUN if request.param == "possessive" else escapes._GREEDY_RUN
    saved = escapes._safe
    escapes._safe = re.compile(pattern).match
    yield
    escapes._safe = saved

E = b"\x1b"
ST = E + b"\\"


def whole(data: bytes) -> bytes:
    f = EscapeFilter()
    return f.feed(data) + f.flush()


def pieces(data: bytes, cuts: list[int]) -> bytes:
    f = EscapeFilter()
    out, last = [], 0
    for cut in cuts + [len(data)]:
        out.append(f.feed(data[last:cut]))
        last = cut
    return b"".join(out) + f.flush()


# (stream, what the terminal may get)
CASES = [
    (b"plain text\r\n", b"plain text\r\n"),
    # clipboard write / read, both terminators, leading zeros and ignored controls inside
    (b"a" + E + b"]52;c;ZXZpbA==\x07b", b"ab"),
    (b"a" + E + b"]52;c;?" + ST + b"b", b"ab"),
    (b"a" + E + b"]052;c;ZXZpbA==\x07b", b"ab"),
    (b"a" + E + b"]5\x002;c;eA==\x07b", b"ab"),
    (b"a" + E + b"]" + b"0" * 40 + b"52;c;eA==\x07b", b"ab"),
    (b"a" + E + b"]50;?\x07b", b"ab"),                     # font name report
    # the escape restarted, or padded with controls executed inside it
    (b"a" + E + E + b"]52;c;eA==\x07b", b"ab"),
    (b"a" + E + b"\x07]52;c;eA==\x07b", b"ab"),
    # a removal never splices an abandoned head to what follows it
    (b"a" + E + b"]5" + E + b"[21t2;c;eA==\x07b", b"a2;c;eA==\x07b"),
    (b"a" + E + E + b"[21t]52;c;eA==\x07b", b"a]52;c;eA==\x07b"),
    (b"a" + E + b"P$" + E + b"[21tqm" + ST + b"b", b"aqm" + ST + b"b"),
    (b"a" + E + b"[1" + E + b"[21ttb", b"atb"),
    # abandoned by CAN, or by a new sequence: what follows is judged on its own
    (b"a" + E + b"]52;c;eA\x18rest", b"arest"),
    (b"a" + E + b"]52;c;eA" + E + b"[1mbold", b"a" + E + b"[1mbold"),
    # window operations: title/icon reports, moves, resizes; controls inside a CSI
    (b"a" + E + b"[21tb", b"ab"),
    (b"a" + E + b"[20tb", b"ab"),
    (b"a" + E + b"[8;24;80tb", b"ab"),
    (b"a" + E + b"[2\n1tb", b"ab"),
    # requests whose answer echoes text; tmux's passthrough (inner ESCs doubled)
    (b"a" + E + b"P$qm" + ST + b"b", b"ab"),
    (b"a" + E + b"P1$r0m" + ST + b"b", b"a" + E + b"P1$r0m" + ST + b"b"),
    (b"a" + E + b"Ptmux;" + E + E + b"]52;c;eA==\x07" + ST + b"b", b"ab"),
    (b"a" + E + b"Ptmux;" + E + E + b"]52;c;eA==" + E + E + b"\\" + ST + b"b", b"ab"),
    # screen's passthrough: the inner OSC 52 is found and dropped (the DCS head it cut too)
    (b"a" + E + b"P" + E + b"]52;c;eA==\x07" + ST + b"b", b"a" + ST + b"b"),
    # what passes: colours, modes, titles, hyperlinks, prompts marks, sixels, charsets
    (E + b"[1;38;2;255;0;0mred" + E + b"[0m", E + b"[1;38;2;255;0;0mred" + E + b"[0m"),
    (E + b"[?25l" + E + b"[?1049h" + E + b"[H", E + b"[?25l" + E + b"[?1049h" + E + b"[H"),
    (E + b"]0;my title\x07", E + b"]0;my title\x07"),
    (E + b"]8;;http://x/" + ST + b"link" + E + b"]8;;" + ST,
     E + b"]8;;http://x/" + ST + b"link" + E + b"]8;;" + ST),
    (E + b"]133;A\x07$ ", E + b"]133;A\x07$ "),
    (E + b"]4;1;?\x07", E + b"]4;1;?\x07"),
    (E + b"P0;1;0q#0;2;0;0;0" + ST, E + b"P0;1;0q#0;2;0;0;0" + ST),
    (E + b"(B" + E + b"7" + E + b"8", E + b"(B" + E + b"7" + E + b"8"),
    (E + b"[1 t", E + b"[1 t"),                            # an intermediate: not XTWINOPS
    ("é ü 中".encode() + b"\x9b21t\x9d52;x\x07", "é ü 中".encode() + b"\x9b21t\x9d52;x\x07"),
]


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_what_passes_however_the_stream_is_cut(stream: bytes, expected: bytes) -> None:
    assert whole(stream) == expected
    for cut in range(len(stream) + 1):                 # every cut in two
        assert pieces(stream, [cut]) == expected, cut
    assert pieces(stream, list(range(1, len(stream)))) == expected   # byte by byte


def test_plain_output_is_returned_as_it_is() -> None:
    data = b"x" * 65536
    assert EscapeFilter().feed(data) is data


def test_a_huge_clipboard_payload_is_skipped_without_being_kept() -> None:
    f = EscapeFilter()
    assert f.feed(b"before" + E + b"]52;c;") == b"before"
    for _ in range(64):
        assert f.feed(b"QUFB" * 4096) == b""
        assert len(f._held) <= HOLD_MAX
    assert f.feed(b"QUFB\x07after") == b"after"
    assert f.flush() == b""


def test_an_unfinished_sequence_is_held_then_flushed_or_dropped() -> None:
    f = EscapeFilter()
    assert f.feed(b"abc" + E + b"[1") == b"abc"
    assert f.flush() == E + b"[1"               # not a dropped one: the terminal decides
    f = EscapeFilter()
    assert f.feed(b"abc" + E + b"]52;c;eA") == b"abc"
    assert f.flush() == b""                      # a dropped one stays dropped


@pytest.mark.parametrize("head", [E + b"[", E + b"]5", E + b"P"])
def test_padding_cannot_hold_memory_or_hide_a_sequence(head: bytes) -> None:
    f = EscapeFilter()
    out = [f.feed(b"a" + head)]
    for _ in range(100):
        out.append(f.feed(b"\x00" * 1000 if head != E + b"[" else b"1;" * 500))
        assert len(f._held) <= HOLD_MAX + 2
    out.append(f.feed(b"2;c;eA==\x07t" if head == E + b"]5" else b"$q\x07t" + ST))
    out.append(f.feed(b"b") + f.flush())
    joined = b"".join(out)
    assert b"52;" not in joined and b"$q" not in joined and joined.endswith(b"b")


def test_padding_after_esc_keeps_the_escape_pending() -> None:
    f = EscapeFilter()
    out = f.feed(b"a" + E) + f.feed(b"\x00" * (HOLD_MAX * 4)) + f.feed(b"]52;c;eA==\x07b")
    assert b"52" not in out + f.flush() and out.endswith(b"b")


def test_random_streams_cut_anywhere_leave_nothing_to_drop() -> None:
    """Fuzz: streams of sequence fragments give the same output whole and in random pieces,
    and filtering that output again changes nothing (nothing droppable was left or made)."""
    import os
    import random

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    tokens = [E, b"]", b"[", b"P", b"5", b"2", b"0", b";", b"c;", b"?", b"\x07", b"\\", b"t",
              b"2;", b"21", b"$", b"q", b"tmux;", b"\x18", b"\x00", b"\n", b"m", b"x", b" "]
    for trial in range(3000):
        stream = b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 40)))
        expected = whole(stream)
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream), rng.randrange(4))))
        assert pieces(stream, cuts) == expected, (seed, trial, stream, cuts)
        assert whole(expected) == expected, (seed, trial, stream, expected)
