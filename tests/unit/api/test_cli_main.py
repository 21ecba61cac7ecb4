"""``lxcbind.cli.main(argv)`` in-process, on the paths that start no container: version, help,
usage errors, policy errors (exit 2, the field named, JSON on request) and ``--dry-run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lxcbind import __version__
from lxcbind.cli import EXIT_USAGE, _fast_run, build_parser, main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lxcbind {__version__}"


def test_run_help_gives_exit_codes_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "-h"]) == 0
    out = capsys.readouterr().out
    for code in ("124", "125", "126", "127"):
        assert code in out
    assert "lxcbind run" in out and " -- " in out


@pytest.mark.parametrize("argv, words", [
    (["run", "--"], "no command after --"),
    (["gc", "--", "true"], "takes no command"),
    (["run", "--no-such-option", "--", "true"], "unrecognized arguments"),
])
def test_usage_errors_exit_2_with_one_line(argv: list[str], words: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_policy_error_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "0.8.0", "containment": "lxc",
                               "process": {"commandLine": "true", "timeout": "soon"}}))
    assert main(["run", "--json", str(bad)]) == EXIT_USAGE
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == EXIT_USAGE and out["error"]["code"] == "policy"
    assert out["error"]["path"] == "process.timeout"


def test_missing_policy_file_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.json")]) == EXIT_USAGE
    assert "nope.json" in capsys.readouterr().err


@pytest.mark.requires_lxc   # the plan comes from the sandbox layer, which loads the binding
def test_dry_run_prints_the_plan_and_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--dry-run", str(EXAMPLES / "hello.json")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["runnable"] is True


FAST_SHAPES = [["run"], ["run", "p.json"], ["run", "-"], ["run", "--no-tty", "p.json"],
               ["run", "p.json", "--json", "--base64"], ["run", "--tty", "-v", "--net"],
               ["run", "--dry-run", "--verbose", "-", "--json"], ["run", "--warm", "p.json"]]
ARGPARSE_SHAPES = [["run", "--tty", "--no-tty"], ["run", "a", "b"], ["run", "--json", "--json"],
                   ["run", "--timeout", "3"], ["run", "--no-t"], ["run", ""], ["-v", "run"],
                   ["run", "-x"], ["gc"], ["ls", "--json"], ["run", "--log-level", "debug"]]


@pytest.mark.parametrize("words", FAST_SHAPES + ARGPARSE_SHAPES)
def test_fast_run_parse_is_argparse_or_nothing(words: list[str]) -> None:
    """The hand parser of the common ``run`` shapes gives argparse's namespace exactly, and
    leaves everything else (errors included) to argparse."""
    fast = _fast_run(words)
    assert (fast is not None) == (words in FAST_SHAPES)
    if fast is not None:
        assert vars(fast) == vars(build_parser().parse_args(words))
