"""The keyword checks shared by every way of running a command (no root, no liblxc)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from lxcbind.command import argv_of, check_call, check_env, check_timeout
from lxcbind.errors import PolicyError
from lxcbind.policy.defaults import default_policy
from lxcbind.policy.parse import load_policy


def test_a_str_is_a_shell_command_and_a_list_an_argv():
    assert argv_of("echo $A") == ["/bin/sh", "-c", "echo $A"]
    assert argv_of(["ls", PurePosixPath("/tmp")]) == ["ls", "/tmp"]
    assert argv_of(("a b",)) == ["a b"]


@pytest.mark.parametrize("cmd, exc, words", [
    ("", ValueError, "empty"), ([], ValueError, "empty"), (b"ls", TypeError, "not bytes"),
    (["ls", 3], TypeError, r"argv\[1\]"), (42, TypeError, "not int"),
    ("a\0b", ValueError, "NUL"),
])
def test_bad_commands_name_the_problem(cmd, exc, words):
    with pytest.raises(exc, match=words):
        argv_of(cmd, "Sandbox.run")


@pytest.mark.parametrize("value, expected", [(None, None), (3, 3.0), (0.25, 0.25)])
def test_timeouts_are_seconds(value, expected):
    assert check_timeout(value) == expected


@pytest.mark.parametrize("value, exc", [("3", TypeError), (True, TypeError), (0, ValueError),
                                        (-1, ValueError), (float("nan"), ValueError),
                                        (float("inf"), ValueError)])
def test_bad_timeouts(value, exc):
    with pytest.raises(exc, match=r"^run\(\): timeout must be"):
        check_timeout(value)


def test_env_is_a_mapping_of_names_to_strings():
    assert check_env({"A": "1", "_b": "x=y"}) == {"A": "1", "_b": "x=y"}
    for bad, exc in [(["A=1"], TypeError), ({"A": 1}, TypeError), ({"A-B": "1"}, ValueError),
                     ({"A": "\0"}, ValueError)]:
        with pytest.raises(exc, match="env"):
            check_env(bad)


def test_text_mode_and_input_encoding():
    opts = check_call("cat", input="é", text=True)
    assert (opts.input, opts.encoding, opts.errors) == ("é".encode(), "utf-8", "replace")
    opts = check_call(None, input="é", encoding="latin-1")
    assert (opts.argv, opts.input, opts.encoding) == (None, b"\xe9", "latin-1")
    assert check_call("true").encoding is None


def test_a_policy_may_leave_the_command_to_the_caller():
    with pytest.raises(PolicyError, match="process"):
        load_policy({"version": "0.8.0"})
    p = load_policy({"version": "0.8.0", "process": {"cwd": "/tmp"}}, command_required=False)
    assert (p.process.command_line, p.process.cwd) == ("", "/tmp")
    with pytest.raises(PolicyError, match="process.commandLine: must not be empty"):
        load_policy({"version": "0.8.0", "process": {"commandLine": " "}}, command_required=False)
    d = default_policy()
    assert d.version == "0.8.0" and d.network.effective().is_deny_all()
    assert d.lxc.rootfs.kind == "host" and d.process.command_line == ""
    assert default_policy("echo").process.argv == ("/bin/sh", "-c", "echo")


def test_run_keywords_typos_and_values_are_refused_naming_the_call():
    from lxcbind.command import RunKeywords, check_keywords

    check_keywords({"timeout": 3, "text": True, "check": True}, "Pool.map")
    with pytest.raises(TypeError, match=r"^Pool\.map\(\) got an unexpected keyword argument "
                                        r"'timout'"):
        check_keywords({"timout": 3}, "Pool.map")
    with pytest.raises(TypeError, match=r"^Pool\.map\(\): timeout must be a number"):
        check_keywords({"timeout": "3"}, "Pool.map")
    with pytest.raises(ValueError, match=r"^Pool\.map\(\): cwd must be an absolute path"):
        check_keywords({"cwd": "tmp"}, "Pool.map")

    class Wider(RunKeywords, total=False):
        tty: bool

    check_keywords({"tty": True}, "Session.map", Wider)
    with pytest.raises(TypeError, match="'tty'"):
        check_keywords({"tty": True}, "Pool.map")


def test_stdio_and_pass_fds_checks():
    import subprocess

    from lxcbind.command import check_fds, check_stdio

    ok = (subprocess.PIPE, None, subprocess.STDOUT)
    assert check_stdio(ok, "Session.spawn") == ok
    with open("/dev/null") as f:
        assert check_stdio((f, 5, subprocess.DEVNULL), "Session.spawn")[0] is f
    for bad, name in (((subprocess.STDOUT, None, None), "stdin"),
                      ((None, "x", None), "stdout"), ((None, None, -7), "stderr"),
                      ((True, None, None), "stdin")):
        with pytest.raises(TypeError, match=rf"^Session\.spawn\(\): {name} must be"):
            check_stdio(bad, "Session.spawn")
    assert check_fds((3, 4), "Session.spawn") == [3, 4]
    for bad in ("3", [3, -1], [True], 3):
        with pytest.raises(TypeError, match=r"^Session\.spawn\(\): pass_fds"):
            check_fds(bad, "Session.spawn")


def test_zero_timeout_only_where_asked():
    with pytest.raises(ValueError, match="> 0"):
        check_timeout(0, "Session.run")
    assert check_timeout(0, "Shell.run", zero=True) == 0.0
    with pytest.raises(TypeError):
        check_timeout(False, "Shell.run", zero=True)


def test_max_output_defaults_to_a_cap_and_unlimited_is_explicit():
    import pickle

    import lxcbind
    from lxcbind.command import check_max_output
    from lxcbind.result import DEFAULT_MAX_OUTPUT, UNLIMITED, OutputBuffer

    assert lxcbind.UNLIMITED is UNLIMITED and lxcbind.DEFAULT_MAX_OUTPUT == 16 << 20
    assert check_call("true").max_output == DEFAULT_MAX_OUTPUT       # None: the default cap
    assert check_call("true", max_output=UNLIMITED).max_output is UNLIMITED
    assert check_call("true", max_output=0).max_output == 0
    for value in (None, UNLIMITED, 7):   # idempotent: a lower layer may check again
        once = check_max_output(value)
        assert check_max_output(once) == once
    # Ray and multiprocessing send it pickled: it must come back as the one sentinel
    assert pickle.loads(pickle.dumps(UNLIMITED)) is UNLIMITED
    with pytest.raises(TypeError, match="lxcbind.UNLIMITED"):
        check_call("true", max_output="unlimited")
    with pytest.raises(ValueError, match=">= 0"):
        check_call("true", max_output=-1)
    unlimited = OutputBuffer(UNLIMITED)
    unlimited.write(b"x" * (DEFAULT_MAX_OUTPUT + 10))
    assert not unlimited.truncated and len(unlimited.getvalue()) == DEFAULT_MAX_OUTPUT + 10
