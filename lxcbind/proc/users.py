"""A per-call user (``run(..., user=...)``), resolved from the container's own account files.

``user`` is a name (``"alice"``), a uid (``1001`` or ``"1001"``) or ``"uid:gid"``.  The uid,
primary gid, supplementary groups and home come from the container's ``/etc/passwd`` and
``/etc/group``, read through the session's spawner as the session's user (never from the
host's files).  The workload may have written those files, so they are parsed as hostile
input: at most ``MAX_ACCOUNT_FILE`` bytes each, malformed lines skipped, ids only decimal
and below 2^32-1, at most ``MAX_GROUPS`` groups.  In a sandbox whose commands run as
container root that is no escalation (the workload is root there already); a policy that
fixes ``lxc.uid`` refuses every other user (``refusal``).

The spawner gets ``"uid:gid:g1,g2,..."`` and, in the command's child, calls setgroups,
setgid, then setuid before chdir and exec: a non-root user keeps no capabilities.
"""

# No ``from __future__ import annotations``: its string fields make typing compile() each
# field of a NamedTuple/TypedDict at import, and a process's first compile() costs ~1 ms
# (issue #23; tests/integration/api/test_cli.py checks a pipe run compiles none).
from collections.abc import Mapping
from typing import Any, NamedTuple

from lxcbind.lxc.spawner_wire import MAX_GROUPS

MAX_ACCOUNT_FILE = 1 << 20
_ID_MAX = 0xFFFFFFFE


class User(NamedTuple):
    """Who a command runs as: ids, and (when /etc/passwd names it) name and home."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str | None
    home: str | None

    def wire(self) -> str:
        """The spawner's form: ``uid:gid:g1,g2,...``."""
        return f"{self.uid}:{self.gid}:" + ",".join(str(g) for g in self.groups)

    def env(self) -> dict[str, str]:
        """HOME, USER and LOGNAME for the command (a call's own ``env`` goes over them)."""
        out = {"HOME": self.home or "/"}
        if self.name:
            out["USER"] = out["LOGNAME"] = self.name
        return out


def check_user(user: Any, call: str) -> str | None:
    """``user`` as given (a name, uid or ``uid:gid``) in str form, or ``TypeError``/
    ``ValueError`` naming ``call``."""
    if user is None:
        return None
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if not isinstance(user, str):
        raise TypeError(f"{call}(): user must be a name, a uid or 'uid:gid', not "
                        f"{type(user).__name__}")
    if not user or "\0" in user or "\n" in user or user.count(":") > 1 or user.strip() != user:
        raise ValueError(f"{call}(): user must be a name, a uid or 'uid:gid', got {user!r}")
    if ":" in user and not all(_id(part) is not None for part in user.split(":")):
        raise ValueError(f"{call}(): user 'uid:gid' must be two numbers, got {user!r}")
    return user


def _id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    value = int(text)
    return value if value <= _ID_MAX else None


def _records(data: bytes, fields: int) -> list[list[str]]:
    out = []
    for line in data[:MAX_ACCOUNT_FILE].decode(errors="replace").split("\n"):
        parts = line.split(":")
        if len(parts) >= fields and parts[0] and not line.startswith("#"):
            out.append(parts)
    return out


def resolve(user: str, passwd: bytes, group: bytes, call: str = "run") -> User:
    """The ``User`` that ``user`` (checked by ``check_user``) names in the given contents of
    ``/etc/passwd`` and ``/etc/group`` (either may be empty: missing).  A name that is not
    in passwd is a ``ValueError``; a uid need not be."""
    entries = _records(passwd, 7)
    name: str | None = None
    home: str | None = None
    if ":" in user:
        uid_text, gid_text = user.split(":")
        uid, gid = _id(uid_text), _id(gid_text)
        assert uid is not None and gid is not None
        entry = next((e for e in entries if _id(e[2]) == uid), None)
    elif _id(user) is not None:
        uid = _id(user)
        assert uid is not None
        entry = next((e for e in entries if _id(e[2]) == uid), None)
        gid = _id(entry[3]) if entry is not None else uid
    else:
        entry = next((e for e in entries if e[0] == user), None)
        if entry is None or _id(entry[2]) is None or _id(entry[3]) is None:
            raise ValueError(f"{call}(): user {user!r}: no such user in the container's "
                             "/etc/passwd")
        uid, gid = _id(entry[2]), _id(entry[3])
    if gid is None or uid is None:
        raise ValueError(f"{call}(): user {user!r}: its /etc/passwd entry has no valid gid")
    if entry is not None:
        name, home = entry[0], entry[5] or None
    groups = [gid]
    if name is not None:
        for record in _records(group, 4):
            number = _id(record[2])
            if number is not None and name in record[3].split(",") and number not in groups:
                groups.append(number)
    if len(groups) > MAX_GROUPS:
        raise ValueError(f"{call}(): user {user!r} is in {len(groups)} groups; at most "
                         f"{MAX_GROUPS} are supported")
    return User(uid, gid, tuple(groups), name, home)


def refusal(user: str, resolved: User, session_uid: int | None, session_gid: int | None,
            call: str) -> ValueError | None:
    """Why ``user`` (``resolved``) cannot run in a session whose every command runs as
    ``session_uid`` (a policy's ``lxc.uid``), or None when it can: only that user itself."""
    if session_uid is None or (resolved.uid == session_uid and (
            session_gid is None or resolved.gid == session_gid)):
        return None
    return ValueError(f"{call}(): user {user!r}: the policy fixes lxc.uid={session_uid}, so "
                      "every command runs as that user; a per-call user needs a policy "
                      "without lxc.uid (commands as container root)")


def merged_env(user: User, env: Mapping[str, str]) -> dict[str, str]:
    """The user's HOME/USER/LOGNAME under the call's own ``env``."""
    return {**user.env(), **env}
