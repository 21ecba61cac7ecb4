"""Pure logic of the warm CLI client (``lxcbind._cliclient``): when a run is asked to be handed
over, and how descriptors are read from a reply.  The handing over itself, with real
processes: tests/integration/api/test_warm_cli.py."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from lxcbind import _cliclient


@pytest.fixture
def no_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    monkeypatch.delenv("LXCBIND_WARM", raising=False)
    monkeypatch.delenv("LXCBIND_WARM_CLI", raising=False)


@pytest.mark.parametrize(("argv", "env", "wanted"), [
    (["run", "--warm", "p.json", "--", "true"], {}, True),
    (["run", "p.json", "--", "true"], {}, False),
    (["run", "p.json", "--", "echo", "--warm"], {}, False),   # the command's word, not ours
    (["run", "p.json", "--", "true"], {"LXCBIND_WARM": "1"}, True),
    (["run", "--warm", "p.json"], {"LXCBIND_WARM_CLI": "0"}, False),
    (["ls"], {"LXCBIND_WARM": "1"}, True),   # asked; the forked CLI declines other commands
])
def test_wanted(no_terminals: None, monkeypatch: pytest.MonkeyPatch, argv: list[str],
                env: dict[str, str], wanted: bool) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _cliclient.wanted(argv) is wanted


def test_a_terminal_on_any_stdio_is_never_handed_over(no_terminals: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for fd in (0, 1, 2):
        monkeypatch.setattr(os, "isatty", lambda f, fd=fd: f == fd)
        assert not _cliclient.wanted(["run", "--warm", "p.json"])


def test_received_fds_reads_scm_rights_only() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        a.sendmsg([b"P"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                            r.to_bytes(4, sys.byteorder) + w.to_bytes(4, sys.byteorder))])
        _, ancillary, _, _ = b.recvmsg(16, socket.CMSG_SPACE(8))
        fds = _cliclient.received_fds(ancillary)
        assert len(fds) == 2 and all(os.path.samestat(os.fstat(x), os.fstat(y))
                                     for x, y in zip(fds, (r, w), strict=True))
        for fd in fds:
            os.close(fd)
        assert _cliclient.received_fds([(socket.SOL_SOCKET, 99, b"\0" * 8)]) == []
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
