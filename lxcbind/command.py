"""The command model shared by every way of running something: checks and normalisation of
the keywords ``cmd``, ``env``, ``cwd``, ``input``, ``timeout``, ``max_output`` and ``text``.

A command is a ``str`` (run as ``/bin/sh -c CMD``) or a sequence of ``str`` (an argv, run as
is).  ``env`` is a mapping merged over the policy's ``process.env``; ``cwd`` an absolute path
inside the container; ``timeout`` seconds (an int or float > 0; None for none); ``max_output``
bytes kept per stream (an int >= 0; None: ``DEFAULT_MAX_OUTPUT``, 16 MiB; ``UNLIMITED``: no
cap, an explicit choice, since a workload's output then lives in the caller's memory).
Misuse is a ``TypeError`` or ``ValueError`` raised here, before anything is set up, naming the
keyword and the call.

Nothing here touches liblxc or the host: the CLI and the unit tests import it freely.
"""

# No ``from __future__ import annotations``: its string fields make typing compile() each
# field of a NamedTuple/TypedDict at import, and a process's first compile() costs ~1 ms
# (issue #23; tests/integration/api/test_cli.py checks a pipe run compiles none).
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypedDict

from lxcbind._lite import lazy_re
from lxcbind.result import DEFAULT_MAX_OUTPUT, MaxOutput, Unlimited

Command = str | Sequence[str]

ENV_KEY = lazy_re(r"[A-Za-z_][A-Za-z0-9_]*")  # a variable name (also policy process.env)


class RunKeywords(TypedDict, total=False):
    """The keywords every ``run`` takes (``lxcbind.run``, ``Sandbox.run``, ``Session.run``,
    ``Pool.run``, ``AsyncSession.run``), for the calls that pass them on (``map``, the
    pools): ``**kw: Unpack[RunKeywords]`` makes a misspelt keyword a type error, and
    ``check_keywords`` a ``TypeError`` at run time."""

    input: bytes | str | None
    timeout: float | None
    env: Mapping[str, str] | None
    cwd: str | None
    max_output: MaxOutput
    text: bool
    encoding: str | None
    errors: str | None
    check: bool


def check_keywords(keywords: Mapping[str, Any], call: str,
                   allowed: type[RunKeywords] = RunKeywords) -> None:
    """``TypeError`` naming ``call`` for a keyword that is not one of ``allowed`` (a
    ``RunKeywords`` TypedDict), and the usual checks of the values (so that a pool or a map
    refuses before any command runs)."""
    names = set(allowed.__annotations__)   # (a TypedDict's include its bases')
    unknown = sorted(set(keywords) - names)
    if unknown:
        raise TypeError(f"{call}() got an unexpected keyword argument {unknown[0]!r} (run "
                        f"keywords: {', '.join(sorted(names))})")
    checked = set(RunKeywords.__annotations__) - {"check"}
    check_call(None, **{k: v for k, v in keywords.items() if k in checked}, call=call)


class CallOptions(NamedTuple):
    """A command's specification, checked: what every layer below the API passes down."""

    argv: list[str] | None          # None: the policy's own command
    env: dict[str, str]
    cwd: str | None
    input: bytes | None
    timeout: float | None
    max_output: int | Unlimited     # resolved: never None (see check_max_output)
    encoding: str | None            # None: bytes results (text=False)
    errors: str


class CommandDefaults(NamedTuple):
    """What a sandbox's policy gives every command run in it: the base environment (the
    call's ``env`` is merged over it), the working directory, the timeout and the user."""

    env: dict[str, str]
    cwd: str
    timeout: float | None
    uid: int | None
    gid: int | None

    def overridden(self, opts: CallOptions) -> "CommandDefaults":
        """These defaults with what one call names (``opts``) in their place."""
        return self._replace(env={**self.env, **opts.env}, cwd=opts.cwd or self.cwd,
                             timeout=self.timeout if opts.timeout is None else opts.timeout)


def argv_of(cmd: Any, call: str = "run") -> list[str]:
    """``cmd`` as an argv: a str becomes ``/bin/sh -c CMD``; a list/tuple is copied."""
    if isinstance(cmd, str):
        if "\0" in cmd:
            raise ValueError(f"{call}(): the command must not contain NUL bytes")
        if not cmd.strip():
            raise ValueError(f"{call}(): the command is empty")
        return ["/bin/sh", "-c", cmd]
    if isinstance(cmd, (bytes, bytearray)):
        raise TypeError(f"{call}(): the command must be a str or a list of str, not bytes "
                        "(decode it first)")
    if not isinstance(cmd, Sequence):
        raise TypeError(f"{call}(): the command must be a str (run by /bin/sh -c) or a list "
                        f"of str (an argv), not {type(cmd).__name__}")
    argv = []
    for i, item in enumerate(cmd):
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, str):
            raise TypeError(f"{call}(): argv[{i}] must be a str, not {type(item).__name__}")
        if "\0" in item:
            raise ValueError(f"{call}(): argv[{i}] must not contain NUL bytes")
        argv.append(item)
    if not argv:
        raise ValueError(f"{call}(): the argv is empty")
    return argv


def check_timeout(timeout: Any, call: str = "run", *, zero: bool = False) -> float | None:
    """Seconds as a float (> 0; ``zero``: >= 0, an immediate deadline), or None."""
    if timeout is None:
        return None
    if zero and timeout == 0 and not isinstance(timeout, bool):
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{call}(): timeout must be a number of seconds (int or float) or "
                        f"None, not {type(timeout).__name__} {timeout!r}")
    if not timeout > 0 or timeout != timeout or timeout == float("inf"):
        raise ValueError(f"{call}(): timeout must be > 0 seconds (None for no timeout), "
                         f"got {timeout!r}")
    return float(timeout)


def check_grace(kill_grace: Any, call: str = "run") -> float:
    """``kill_grace``: seconds (>= 0) between SIGTERM (or SIGINT) and SIGKILL at a timeout."""
    if isinstance(kill_grace, bool) or not isinstance(kill_grace, (int, float)):
        raise TypeError(f"{call}(): kill_grace must be a number of seconds, not "
                        f"{type(kill_grace).__name__}")
    if not 0 <= kill_grace < float("inf"):
        raise ValueError(f"{call}(): kill_grace must be >= 0 seconds, got {kill_grace!r}")
    return float(kill_grace)


def check_max_output(max_output: Any, call: str = "run") -> int | Unlimited:
    """Bytes kept per stream: None is ``DEFAULT_MAX_OUTPUT``; ``UNLIMITED`` stays (no cap).
    Idempotent, so a layer may check again what an upper layer already resolved."""
    if max_output is None:
        return DEFAULT_MAX_OUTPUT
    if isinstance(max_output, Unlimited):
        return max_output
    if isinstance(max_output, bool) or not isinstance(max_output, int):
        raise TypeError(f"{call}(): max_output must be an int (bytes per stream), None (the "
                        f"default, {DEFAULT_MAX_OUTPUT >> 20} MiB) or lxcbind.UNLIMITED, not "
                        f"{type(max_output).__name__}")
    if max_output < 0:
        raise ValueError(f"{call}(): max_output must be >= 0, got {max_output}")
    return max_output


def check_env(env: Any, call: str = "run") -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"{call}(): env must be a mapping of str to str (e.g. {{'A': '1'}}), "
                        f"not {type(env).__name__}")
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{call}(): env keys and values must be str, got {key!r}: "
                            f"{type(value).__name__}")
        if not ENV_KEY.fullmatch(key):
            raise ValueError(f"{call}(): env: invalid variable name {key!r}")
        if "\0" in value:
            raise ValueError(f"{call}(): env[{key!r}] must not contain NUL bytes")
        out[key] = value
    return out


def check_container_path(value: Any, call: str, what: str) -> str:
    """An absolute path inside the container (str or path-like), or ``TypeError`` /
    ``ValueError`` naming ``call`` and the argument ``what``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{call}(): {what} must be a str (a path inside the container), not "
                        f"{type(value).__name__}")
    if not value.startswith("/") or "\0" in value:
        raise ValueError(f"{call}(): {what} must be an absolute path inside the container, "
                         f"got {value!r}")
    return value


def check_cwd(cwd: Any, call: str = "run") -> str | None:
    return None if cwd is None else check_container_path(cwd, call, "cwd")


def check_input(data: Any, encoding: str | None, call: str = "run") -> bytes | None:
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode(encoding or "utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{call}(): input must be bytes or str, not {type(data).__name__}")


def check_call(cmd: Any, *, env: Any = None, cwd: Any = None, input: Any = None,
               timeout: Any = None, max_output: Any = None, text: Any = False,
               encoding: Any = None, errors: Any = None, call: str = "run") -> CallOptions:
    """All keywords of one call checked at once (see the module docstring)."""
    if encoding is not None and not isinstance(encoding, str):
        raise TypeError(f"{call}(): encoding must be a str, not {type(encoding).__name__}")
    if errors is not None and not isinstance(errors, str):
        raise TypeError(f"{call}(): errors must be a str, not {type(errors).__name__}")
    decode = bool(text) or encoding is not None or errors is not None
    return CallOptions(
        argv=None if cmd is None else argv_of(cmd, call),
        env=check_env(env, call), cwd=check_cwd(cwd, call),
        input=check_input(input, encoding, call), timeout=check_timeout(timeout, call),
        max_output=check_max_output(max_output, call),
        encoding=(encoding or "utf-8") if decode else None, errors=errors or "replace")


def check_stdio(stdio: tuple[Any, Any, Any], call: str) -> tuple[Any, Any, Any]:
    """``(stdin, stdout, stderr)`` of a spawn: ``PIPE``, ``DEVNULL``, ``None``, an fd >= 0 or
    a file object (``STDOUT`` for stderr only); ``TypeError`` naming ``call`` otherwise."""
    for name, value in zip(("stdin", "stdout", "stderr"), stdio, strict=True):
        if value is None or value in (subprocess.PIPE, subprocess.DEVNULL) or (
                value == subprocess.STDOUT and name == "stderr"):
            continue
        fd_like = (isinstance(value, int) and value >= 0) or callable(
            getattr(value, "fileno", None))
        if isinstance(value, bool) or not fd_like:
            allowed = "PIPE, DEVNULL, STDOUT, None" if name == "stderr" else "PIPE, DEVNULL, None"
            raise TypeError(f"{call}(): {name} must be {allowed}, an fd >= 0 or a file object, "
                            f"not {value!r}")
    return stdio


def check_fds(fds: Any, call: str) -> list[int]:
    """``pass_fds``: a sequence of descriptors (ints >= 0)."""
    if isinstance(fds, (str, bytes)) or not isinstance(fds, Sequence):
        raise TypeError(f"{call}(): pass_fds must be a sequence of fds, not {type(fds).__name__}")
    out = []
    for fd in fds:
        if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
            raise TypeError(f"{call}(): pass_fds must hold fds (ints >= 0), not {fd!r}")
        out.append(fd)
    return out
