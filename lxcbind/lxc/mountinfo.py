"""``/proc/self/mountinfo``, parsed once and unescaped (mount points may hold spaces)."""

# No ``from __future__ import annotations``: its string fields make typing compile() each
# field of a NamedTuple/TypedDict at import, and a process's first compile() costs ~1 ms
# (issue #23; tests/integration/api/test_cli.py checks a pipe run compiles none).
from typing import NamedTuple


class Mount(NamedTuple):
    point: str      # unescaped
    fstype: str
    options: str    # per-superblock options


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


_last: tuple[str, bytes, list[Mount]] | None = None


def mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts of ``path``; parsed again only when its text changed since the last call
    (a run reads the table several times, and parsing costs far more than reading)."""
    global _last
    with open(path, "rb") as f:
        data = f.read()
    last = _last
    if last is not None and last[0] == path and last[1] == data:
        return list(last[2])
    found = []
    for raw in data.splitlines():
        if raw:
            left, _, right = raw.decode("utf-8", "surrogateescape").partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5:
                continue
            found.append(Mount(_unescape(fields[4]), tail[0] if tail else "",
                               tail[2] if len(tail) > 2 else ""))
    _last = (path, data, found)
    return list(found)


def below(path: str, source: str = "/proc/self/mountinfo") -> list[Mount]:
    """Mounts strictly below ``path``, shallow first."""
    prefix = path.rstrip("/") + "/"
    return sorted((m for m in mounts(source) if m.point.startswith(prefix)),
                  key=lambda m: m.point.count("/"))
