"""How a command's report socket is read when the spawner closes it (no root, no liblxc).

The spawner sends a command's EXIT record and closes its end of the report socket at once.
Two things the kernel does then must not be taken for the spawner hanging up before EXIT:
ECONNRESET reported once ahead of the queue (provoked here for real), and a non-blocking read
that says EOF although the EXIT record is queued (a race inside one recvmsg call: between
finding the queue empty and checking the peer's shutdown, the peer sends and closes).  That
race cannot be provoked on demand, so its test replays what such a read returns.
"""

from __future__ import annotations

import socket
import types

from lxcbind.lxc import spawner_wire as wire
from lxcbind.proc.spawned import _RECORD, SessionProcess

EXIT = _RECORD.pack(wire.REC_EXIT, 42, 0, 0)


def _recv(sock):
    return SessionProcess._recv(types.SimpleNamespace(_sock=sock))  # type: ignore[arg-type]


def _pair():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return ours, theirs


def test_nothing_yet_is_none_and_a_record_then_eof_after_the_close():
    ours, theirs = _pair()
    try:
        assert _recv(ours) is None
        theirs.send(EXIT)
        theirs.close()
        assert _recv(ours) == (EXIT, [])
        assert _recv(ours) == (b"", [])   # a true end stays an end
    finally:
        ours.close()


def test_a_close_with_our_record_unread_there_still_gives_the_exit_record():
    ours, theirs = _pair()
    try:
        ours.send(_RECORD.pack(wire.REC_KILL, 0, 0, 0))   # never read by the peer
        theirs.send(EXIT)
        theirs.close()
        assert _recv(ours) == (EXIT, [])
        assert _recv(ours) == (b"", [])
    finally:
        ours.close()


class _Replay:
    """What the kernel's reads returned, in order (an exception is raised)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.reads = 0

    def recvmsg(self, *args):
        self.reads += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer, [], 0, None


def test_an_eof_read_while_the_exit_record_was_being_queued_is_read_again():
    replay = _Replay(b"", EXIT)
    assert _recv(replay) == (EXIT, [])
    assert replay.reads == 2


def test_every_order_of_a_racy_eof_and_a_reset_ahead_of_the_record_is_read():
    for answers in ([b"", ConnectionResetError(), EXIT], [ConnectionResetError(), EXIT]):
        assert _recv(_Replay(*answers)) == (EXIT, []), answers


def test_an_end_seen_on_the_read_after_one_is_the_end():
    # After a reset the spawner's end is closed: an EOF then is the end, as is a second EOF.
    for answers in ([b"", b"", EXIT], [ConnectionResetError(), b"", EXIT]):
        replay = _Replay(*answers)
        assert _recv(replay) == (b"", []), answers
        assert replay.reads == 2, answers
