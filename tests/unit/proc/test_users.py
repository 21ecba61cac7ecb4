"""Resolving a per-call user from account-file contents (pure logic, hostile input)."""

from __future__ import annotations

import pytest

from lxcbind.proc.users import MAX_ACCOUNT_FILE, User, check_user, refusal, resolve

PASSWD = (b"root:x:0:0:root:/root:/bin/sh\n"
          b"alice:x:1001:1001::/home/alice:/bin/sh\n"
          b"# comment:x:5:5::/:/bin/sh\n"
          b"broken line\n"
          b"big:x:4294967296:1::/:/bin/sh\n"
          b"neg:x:-1:1::/:/bin/sh\n")
GROUP = b"alice:x:1001:\nteam:x:50:bob,alice\nwheel:x:10:alice\nodd:x:zz:alice\n"


def test_names_uids_and_uid_gid_resolve_from_the_files():
    assert resolve("alice", PASSWD, GROUP) == User(1001, 1001, (1001, 50, 10), "alice",
                                                   "/home/alice")
    assert resolve("1001", PASSWD, GROUP).name == "alice"
    assert resolve("1001:50", PASSWD, GROUP).gid == 50
    assert resolve("0", PASSWD, b"") == User(0, 0, (0,), "root", "/root")
    assert resolve("4242", PASSWD, GROUP) == User(4242, 4242, (4242,), None, None)
    assert User(1, 2, (2, 3), None, None).wire() == "1:2:2,3"


@pytest.mark.parametrize("name", ["big", "neg", "# comment", "nobody", "broken line"])
def test_malformed_or_missing_entries_are_no_user(name):
    with pytest.raises(ValueError, match="no such user"):
        resolve(name, PASSWD, GROUP)


def test_only_the_first_mebibyte_is_read_and_too_many_groups_are_refused():
    padded = b"x" * MAX_ACCOUNT_FILE + b"\nlate:x:7:7::/:/bin/sh\n"
    with pytest.raises(ValueError):
        resolve("late", padded, b"")
    many = b"".join(b"g%d:x:%d:alice\n" % (i, 100 + i) for i in range(80))
    with pytest.raises(ValueError, match="groups"):
        resolve("alice", PASSWD, many)


def test_check_user_and_the_fixed_uid_refusal():
    assert check_user(None, "run") is None and check_user(5, "run") == "5"
    for bad in ("", "a:b", "1:2:3", " x", "x\n", "9" * 11 + ":1"):
        with pytest.raises(ValueError):
            check_user(bad, "run")
    with pytest.raises(TypeError):
        check_user(True, "run")
    alice = resolve("alice", PASSWD, GROUP)
    assert refusal("alice", alice, None, None, "run") is None
    assert refusal("alice", alice, 1001, 1001, "run") is None
    assert "lxc.uid=1000" in str(refusal("alice", alice, 1000, 1000, "run"))
