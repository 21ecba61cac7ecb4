"""A root workload under the default policy tries the socket families a network namespace does
not confine (issue 20, item 3).

``AF_VSOCK`` reaches the hypervisor's vsock services whatever the container's network; the
other refused families are kernel attack surface.  The seccomp profile refuses them with EPERM,
which the kernel never answers for an unknown family (it says EAFNOSUPPORT), so every refusal
below is the profile's.  Each attack uses raw syscalls (ctypes): the plain call, ``socketpair``,
garbage in the upper half of the register, and the 32-bit entry points (``int 0x80``: the
``socketcall`` multiplexer and the direct ``socket``), which a filter for the 64-bit ABI alone
would miss.
"""

from __future__ import annotations

import textwrap

import pytest

from lxcbind.sandbox import security
from tests.conftest import IS_ROOT, NATIVE_ERROR
from tests.security.test_escape import attack

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

AF_VSOCK, AF_XDP = 40, 44
REFUSED = {"VSOCK": 40, "XDP": 44, "ALG": 38, "KCM": 41, "TIPC": 30, "CAN": 29,
           "BLUETOOTH": 31, "RDS": 21, "KEY": 15, "X25": 9, "AX25": 3, "UNUSED63": 63}

# A ctypes helper calling the i386 ABI through int 0x80 (a 64-bit process may): nr, ebx, ecx,
# edx, in code mapped below 4 GiB (MAP_32BIT) with its argument block there too.
COMPAT = textwrap.dedent("""
    import mmap
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    def low_page(prot):
        return libc.mmap(None, 4096, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)
    code = bytes.fromhex("53" "4889f8" "4889f3" "4989c8" "4889d1" "4c89c2" "cd80" "4863c0"
                         "5b" "c3")   # push rbx; ebx,ecx,edx <- args; int 0x80; movsxd; ret
    text = low_page(7)
    ctypes.memmove(text, code, len(code))
    int80 = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                             ctypes.c_long)(text)
    block = low_page(3)
    def compat(name, nr, a, b, c):
        rc = int80(nr, a, b, c)
        print(f"{name}=" + ("OK" if rc >= 0 else errno.errorcode[-rc]), flush=True)
    def compat_socket(name, family, kind):
        ctypes.memmove(block, (ctypes.c_uint32 * 3)(family, kind, 0), 12)
        compat(name + "_SOCKETCALL", 102, 1, block, 0)   # socketcall(SYS_SOCKET, args)
        compat(name + "_SOCKET32", 359, family, kind, 0)
""")


def probe(script: str) -> dict[str, str]:
    return attack(COMPAT + textwrap.dedent(script))


def test_vsock_refused_every_way() -> None:
    r = probe("""
        pair = (ctypes.c_int * 2)()
        for kind, name in ((1, "STREAM"), (2, "DGRAM"), (5, "SEQPACKET")):
            sc(name, 41, 40, kind, 0)                       # socket(AF_VSOCK, kind, 0)
            sc("PAIR_" + name, 53, 40, kind, 0, pair)       # socketpair(AF_VSOCK, ...)
        sc("HIGH_BITS", 41, 0x1_0000_0028, 1, 0)            # the kernel reads an int: 40
        compat_socket("COMPAT", 40, 1)
        sc("PYTHON", 41, 40, 1, 0)
        try:
            import socket
            socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            print("MODULE=OK")
        except OSError as exc:
            print("MODULE=" + errno.errorcode[exc.errno])
    """)
    for key in ("STREAM", "DGRAM", "SEQPACKET", "PAIR_STREAM", "PAIR_DGRAM", "PAIR_SEQPACKET",
                "HIGH_BITS", "COMPAT_SOCKETCALL", "COMPAT_SOCKET32", "MODULE"):
        assert r[key] == "EPERM", (key, r)


def test_other_families_refused() -> None:
    checks = "\n".join(f"sc('{name}_{kind}', 41, {fam}, {kind}, 0)"
                       for name, fam in REFUSED.items() for kind in (1, 2, 3, 5))
    r = probe(checks + "\ncompat_socket('COMPAT_XDP', 44, 3)\n")
    for name in REFUSED:
        for kind in (1, 2, 3, 5):
            assert r[f"{name}_{kind}"] == "EPERM", (name, kind, r)
    assert r["COMPAT_XDP_SOCKETCALL"] == r["COMPAT_XDP_SOCKET32"] == "EPERM", r


def test_namespaced_families_still_work() -> None:
    r = probe("""
        import socket
        def try_(name, make):
            try:
                make()
                print(f"{name}=OK")
            except OSError as exc:
                print(f"{name}=" + errno.errorcode[exc.errno])
        def tcp_loopback():
            srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
            cli = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()
            cli.sendall(b"x"); assert conn.recv(1) == b"x"
        def netlink_route():
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, 0))
            # RTM_GETLINK dump: the container's own interfaces answer
            s.send(bytes.fromhex("20000000" "1200" "0103" "01000000" "00000000") + bytes(16))
            assert len(s.recv(65536)) > 16
        try_("UNIX_STREAM", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try_("UNIX_DGRAM", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        try_("UNIX_PAIR", lambda: socket.socketpair())
        try_("INET_UDP", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try_("INET6_TCP", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
        try_("TCP_LOOPBACK", tcp_loopback)
        try_("NETLINK_ROUTE", netlink_route)
        try_("PACKET", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
        compat_socket("COMPAT_INET", 2, 1)
    """)
    for key in ("UNIX_STREAM", "UNIX_DGRAM", "UNIX_PAIR", "INET_UDP", "INET6_TCP",
                "TCP_LOOPBACK", "NETLINK_ROUTE", "PACKET"):
        assert r[key] == "OK", (key, r)
    # 32-bit programs keep the direct socket call; socket() through the socketcall multiplexer
    # is refused whatever the family (its arguments are in memory, out of a filter's reach).
    assert r["COMPAT_INET_SOCKET32"] == "OK", r
    assert r["COMPAT_INET_SOCKETCALL"] == "EPERM", r


def _refused_by_profile(domain: int) -> bool:
    """Evaluate the profile's socket lines as the kernel filter would (masked compare on the
    whole 64-bit argument register)."""
    import re

    for line in security.socket_family_rules():
        m = re.fullmatch(r"socket errno 1 \[0,(\d+),SCMP_CMP_MASKED_EQ,(\d+)\]", line)
        if m and domain & int(m[2]) == int(m[1]):
            return True
    return False


def test_profile_refuses_exactly_the_unlisted_families() -> None:
    allowed = {1, 2, 10, 16, 17}
    for family in range(0, 64):
        expected = family not in allowed and family != 0   # 0: the kernel says EAFNOSUPPORT
        assert _refused_by_profile(family) == expected, family
        # garbage in the upper half of the register does not hide the int the kernel reads
        assert _refused_by_profile(family | 0xDEAD_0000_0000) == expected, family
    for family in (64, 1000, 0x7FFF_FFFF):          # >= AF_MAX: the kernel refuses them
        assert not _refused_by_profile(family)
    rules = security.socket_family_rules()
    assert len(rules) == 18 and sum(r.startswith("socketpair ") for r in rules) == 9
    assert all(r in security.seccomp_profile(("nesting", "perf")) for r in rules)


def test_vsock_refused_through_liblxc_attach_too() -> None:
    """A command started by liblxc's attach (the pty CLI, ``Container.run``), not by the
    spawner, gets the 32-bit filter from the attach exec function."""
    import lxcbind
    from tests.security.test_escape import PRELUDE

    script = PRELUDE + COMPAT + textwrap.dedent("""
        sc("NATIVE", 41, 40, 1, 0)
        compat_socket("COMPAT", 40, 1)
        compat_socket("COMPAT_INET", 2, 1)
    """)
    with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"}}) as box:
        r = box.container.run(["python3", "-c", script], timeout=60)   # liblxc's attach
    out = dict(line.split("=", 1) for line in r.stdout.decode().split() if "=" in line)
    assert out["NATIVE"] == out["COMPAT_SOCKETCALL"] == out["COMPAT_SOCKET32"] == "EPERM", out
    assert out["COMPAT_INET_SOCKET32"] == "OK", out
