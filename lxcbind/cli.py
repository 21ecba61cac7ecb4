"""``python -m lxcbind`` / ``lxcbind``: run one command under a JSON policy (or the embedded
default, with options that build or override one), manage kept containers (``ls``, ``exec``,
``rm``), or collect garbage.

Exit codes (the contract the README documents):

    the command's own   the command ran and exited
    128+N               the command died of signal N, or lxcbind got fatal signal N (after cleanup)
    124                 timeout (the command and what it started were killed)
    125                 the sandbox could not be set up or failed; also an internal error
    126 / 127           the command could not be executed / was not found in the container
    2                   usage or policy error (one line on stderr naming the field)

With ``--json`` exactly one JSON object goes to stdout on every path, and the command's output
is captured into it instead of being streamed.  No traceback ever reaches the user; ``-v``
shows progress (and, for an internal error, the traceback).

Over 500 lines as one thing: the command line (parser, exit codes, JSON shapes) of every
subcommand; what each does lives in the layers below.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import argparse

from lxcbind._early import install_early_signals

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_SANDBOX = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

JSON_VERSION = 1                     # the shape of --json objects; bumped when a field changes
JSON_MAX_OUTPUT = 16 << 20           # --json's default cap, bytes per stream (the API's too)

# In a CLI forked by the warm CLI server (``lxcbind.cliserver``): told, before the run reads
# or writes anything, whether this process serves it (``forked.decide(True)``) or the client
# runs the CLI itself (``decide(False)`` does not return).
forked: Any = None



class _Log:
    """The CLI's log: ``lxcbind: message`` lines on stderr at or above a level.

    ``logging`` costs ~4.5 ms to import (a tenth of issue #15's one-shot budget) and a run
    without a network never needs it, so messages are written directly until ``stdlib()``
    hands over to the standard ``lxcbind`` logger: for the networked path (whose modules log
    through ``logging``) and the exec front end's log file.  Same format either way.
    """

    _LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def __init__(self) -> None:
        self.level = 30
        self._logger: Any = None   # a logging.Logger once stdlib() ran

    def configure(self, level: str) -> None:
        self.level = self._LEVELS[level]

    def stdlib(self) -> Any:
        """Configure and use the standard ``lxcbind`` logger from now on; returns it."""
        if self._logger is None:
            import logging

            logging.basicConfig(stream=sys.stderr, level=self.level,
                                format="lxcbind: %(message)s")
            self._logger = logging.getLogger("lxcbind")
        return self._logger

    def _emit(self, level: int, fmt: str, args: tuple[object, ...]) -> None:
        if self._logger is not None:
            self._logger.log(level, fmt, *args)
        elif level >= self.level:
            sys.stderr.write(f"lxcbind: {fmt % args if args else fmt}\n")

    def debug(self, fmt: str, *args: object) -> None:
        self._emit(10, fmt, args)

    def info(self, fmt: str, *args: object) -> None:
        self._emit(20, fmt, args)

    def warning(self, fmt: str, *args: object) -> None:
        self._emit(30, fmt, args)


log = _Log()


def _traceback() -> str:
    import traceback

    return traceback.format_exc()


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse's parser, whose errors exit 2 with one line (as documented).  argparse is
    imported here, not at the top: the common ``run`` shapes never need it (``_fast_run``)."""
    global _Parser
    if _Parser is None:
        import argparse

        class Parser(argparse.ArgumentParser):
            def error(self, message: str) -> Any:
                raise _UsageError(message)

        _Parser = Parser
    return _Parser


_Parser: type[argparse.ArgumentParser] | None = None


class _UsageError(Exception):
    pass


class _RunnerFailure(Exception):
    """lxcbind-exec only: the run ended in what mxc calls a runner error (exit 255)."""


HELP_EPILOG = """\
exit codes:
  the command's own  the command ran and exited
  128+N              the command died of signal N, or lxcbind got fatal signal N (after cleanup)
  124                timeout: the command and what it started were killed
  125                the sandbox could not be set up or failed (or an internal error)
  126 / 127          the command could not be executed / was not found in the container
  2                  usage or policy error (one line on stderr naming the field)

examples:
  lxcbind run -- uname -a              # default policy: no network, host /usr read-only
  lxcbind run --rw "$PWD" --cwd "$PWD" --net --timeout 600 -- sh -c 'make && make test'
  lxcbind run policy.json --json       # a policy's own command; one JSON object on stdout
"""

_LOG_LEVELS = ["debug", "info", "warning", "error"]


def _add_command_options(p: argparse.ArgumentParser) -> None:
    """What ``run`` and ``exec`` share: how the command runs and what comes back."""
    tty = p.add_mutually_exclusive_group()
    tty.add_argument("--tty", dest="tty", action="store_true", default=None,
                     help="use a pty (default when stdin is a terminal)")
    tty.add_argument("--no-tty", dest="tty", action="store_false", help="use pipes")
    p.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                   help="overrides process.timeout")
    p.add_argument("--cwd", metavar="DIR", help="overrides process.cwd")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="adds to process.env (repeatable; last wins)")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object (result or error) on stdout")
    p.add_argument("--max-output", type=_byte_count, metavar="BYTES", default=None,
                   help=f"--json: bytes kept per stream, head and tail (default "
                        f"{JSON_MAX_OUTPUT >> 20} MiB; 0: no cap)")
    p.add_argument("--base64", action="store_true",
                   help="--json: stdout/stderr as base64 (for binary output)")
    p.add_argument("-v", "--verbose", action="store_true", dest="run_verbose",
                   help="progress on stderr")
    p.add_argument("--log-level", choices=_LOG_LEVELS, dest="run_log_level",
                   help="log level on stderr (default: warning; -v: debug)")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from lxcbind import __version__

    parser_class = _parser_class()
    parser = parser_class(prog="python -m lxcbind", epilog=HELP_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Run commands in LXC containers through liblxc.")
    parser.add_argument("--version", action="version", version=f"lxcbind {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--log-level", choices=_LOG_LEVELS,
                        default=None, help="log level on stderr (default: warning; -v: debug)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=parser_class)
    run = sub.add_parser(
        "run", help="run a command (or a policy's own) in a fresh container",
        usage="%(prog)s [POLICY] [options] [-- CMD [ARG ...]]", epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run CMD (an argv: use sh -c '...' for a shell line) or, without one, the "
                    "policy's process.commandLine, in a fresh container; without POLICY, under "
                    "the embedded default policy (schema 0.8, no network, the host's root "
                    "filesystem).  The options build on or override the policy.")
    run.add_argument("policy", nargs="?", help="policy JSON file, or - for stdin")
    run.add_argument("--config", metavar="PATH", help="policy JSON file (as in mxc)")
    run.add_argument("--config-base64", metavar="B64", help="policy as base64 (as in mxc)")
    _add_command_options(run)
    run.add_argument("--rw", action="append", default=[], metavar="PATH",
                     help="adds to filesystem.readwritePaths (repeatable)")
    run.add_argument("--ro", action="append", default=[], metavar="PATH",
                     help="adds to filesystem.readonlyPaths (repeatable)")
    run.add_argument("--deny", action="append", default=[], metavar="PATH",
                     help="adds to filesystem.deniedPaths (repeatable)")
    run.add_argument("--net", action="store_true",
                     help="open egress (replaces the network section: schema 0.8 "
                          "egress.default allow, NAT; inbound stays denied)")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and print the effective plan; create nothing")
    run.add_argument("--warm", action="store_true",
                     help="run in a clone from the warm server of this policy (lxcbind warm "
                          "POLICY) when one runs, else in a fresh container (also: "
                          "LXCBIND_WARM=1)")
    run.add_argument("--image", metavar="REF",
                     help="root filesystem from an image (replaces lxc.rootfs): oci:/PATH[:TAG], "
                          "docker-archive:/PATH.tar[:NAME:TAG] or a stored image's id; without "
                          "a command, the image's Entrypoint+Cmd runs")
    sub.add_parser("gc", help="destroy what runners killed with SIGKILL left behind")
    warm = sub.add_parser(
        "warm", help="serve clones of a warm template of POLICY to run --warm (foreground)",
        description="Start one template container of POLICY, keep READY clones of it made "
                    "ahead, and hand one to each `lxcbind run --warm` (or lxcbind.run(..., "
                    "warm=True)) of the same policy (its process, limits and user may differ), "
                    "until SIGTERM/SIGINT or --idle seconds without a client; then remove "
                    "everything.  Root only.")
    warm.add_argument("policy", help="policy JSON file, or - for stdin")
    warm.add_argument("--ready", type=_count, default=2, metavar="N",
                      help="clones kept made ahead (default 2)")
    warm.add_argument("--idle", type=_seconds, metavar="SECONDS",
                      help="stop after this long without a client (default: never)")
    warm.add_argument("-v", "--verbose", action="store_true", dest="run_verbose",
                      help="progress on stderr")
    warm.add_argument("--log-level", choices=_LOG_LEVELS, dest="run_log_level",
                      help="log level on stderr (default: warning; -v: debug)")
    ls = sub.add_parser("ls", help="list lxcbind's kept containers (and those in use)")
    ls.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ex = sub.add_parser(
        "exec", help="run a command in a kept container, under the policy it was kept with",
        usage="%(prog)s ID [options] -- CMD [ARG ...]", epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run CMD in the kept container ID (see `ls`) under the policy it was kept "
                    "with: the same mounts, isolation and network rules, applied again (the "
                    "container restarts, as for any run that reuses a kept container).")
    ex.add_argument("id", metavar="ID", help="the container's name (its containerId)")
    _add_command_options(ex)
    at = sub.add_parser(
        "attach", help="enter a live sandbox (a shell, or CMD) under its own isolation",
        usage="%(prog)s ID [--tty | --no-tty] [-- CMD [ARG ...]]",
        description="Attach a login shell (or CMD) to the running sandbox ID while the run "
                    "that owns it is alive (lxcbind run, a Sandbox, an Inspect sample): the "
                    "sandbox's namespaces, cgroup, capabilities, seccomp and user apply.  "
                    "Host root only.")
    at.add_argument("id", metavar="ID", help="the sandbox's container name")
    at.add_argument("--tty", dest="tty", action="store_true", default=None,
                    help="a pty even when stdin/stdout are not a terminal")
    at.add_argument("--no-tty", dest="tty", action="store_false", help="pipes, never a pty")
    rm = sub.add_parser("rm", help="remove kept containers and everything they own")
    rm.add_argument("ids", nargs="+", metavar="ID", help="container names")
    from lxcbind.cli_image import add_parser as add_image_parser

    add_image_parser(sub)
    return parser


# ``run``'s options that take no value, as build_parser() defines them: (dest, value).
_RUN_FLAGS = {"--tty": ("tty", True), "--no-tty": ("tty", False), "--json": ("json", True),
              "--base64": ("base64", True), "--net": ("net", True),
              "--dry-run": ("dry_run", True), "-v": ("run_verbose", True),
              "--warm": ("warm", True),
              "--verbose": ("run_verbose", True)}


def _fast_run(words: list[str]) -> argparse.Namespace | None:
    """What ``build_parser().parse_args(words)`` returns, for the common shapes only:
    ``run``, then at most one policy (a path not starting with ``-``, or ``-``) and options
    without a value, each once (``--tty``/``--no-tty`` not together); None for anything else
    (argparse then parses it, with its own messages).  Building argparse's parser and
    importing it cost ~3.5 ms of a one-shot run.  tests/unit/test_cli_main.py checks the
    results against argparse's."""
    if not words or words[0] != "run" or len(set(words)) != len(words):
        return None
    args: dict[str, Any] = {
        "verbose": False, "log_level": None, "command": "run", "policy": None, "config": None,
        "config_base64": None, "tty": None, "timeout": None, "cwd": None, "env": [],
        "json": False, "max_output": None, "base64": False, "run_verbose": False,
        "run_log_level": None, "rw": [], "ro": [], "deny": [], "net": False, "dry_run": False,
        "warm": False, "image": None}
    for word in words[1:]:
        flag = _RUN_FLAGS.get(word)
        if flag is not None:
            if flag[0] == "tty" and args["tty"] is not None:
                return None   # --tty with --no-tty: argparse's error
            args[flag[0]] = flag[1]
        elif (word == "-" or word[:1] not in ("", "-")) and args["policy"] is None:
            args["policy"] = word
        else:
            return None
    from types import SimpleNamespace

    return cast("argparse.Namespace", SimpleNamespace(**args))


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _integer(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an int of at least ``minimum`` (``what`` it counts, for the error)."""
    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


_count = _integer(1, "a number")
_byte_count = _integer(0, "a number of bytes")


def _json_output(result: Any, as_base64: bool) -> dict[str, Any]:
    """The captured streams of a --json result: text (UTF-8, invalid bytes replaced) or
    base64, with what the cap cut from each."""
    if as_base64:
        import base64

        out = {"encoding": "base64", "stdout": base64.b64encode(result.stdout).decode("ascii"),
               "stderr": base64.b64encode(result.stderr).decode("ascii")}
    else:
        out = {"encoding": "utf-8", "stdout": result.stdout.decode(errors="replace"),
               "stderr": result.stderr.decode(errors="replace")}
    out.update(truncated=result.truncated, stdout_truncated=result.stdout_truncated,
               stderr_truncated=result.stderr_truncated, stdout_omitted=result.stdout_omitted,
               stderr_omitted=result.stderr_omitted)
    return out


def _load(args: argparse.Namespace) -> Any:
    return _load_document(args)[0]


def _load_document(args: argparse.Namespace) -> tuple[Any, dict[str, Any], str]:
    """The policy to run, the JSON document it was parsed from (after the command-line
    overrides) and its origin.  Without a policy source: the embedded default, which needs
    a command (``-- CMD``)."""
    from lxcbind.policy.defaults import DEFAULT_POLICY
    from lxcbind.policy.parse import (
        base64_policy_bytes,
        load_policy,
        policy_document,
        read_policy_file,
    )

    source = getattr(args, "config", None) or getattr(args, "policy", None)
    if getattr(args, "document", None) is not None:       # exec: the kept container's policy
        doc, origin = args.document
    elif args.config_base64 is not None:
        doc, origin = policy_document(base64_policy_bytes(args.config_base64)), "<base64>"
    elif source == "-":
        doc, origin = policy_document(sys.stdin.buffer.read()), "<stdin>"
    elif source is not None:
        doc, origin = policy_document(read_policy_file(source)), source
    elif getattr(args, "cmd", None) or getattr(args, "image", None):
        doc, origin = json.loads(json.dumps(DEFAULT_POLICY)), "<default>"
    else:
        raise _UsageError("no policy and no command: pass a policy (a path, -, --config PATH "
                          "or --config-base64 B64) or a command after -- (e.g. lxcbind run -- "
                          "uname -a)")
    _override(doc, args)
    image = getattr(args, "image", None) or ""
    return load_policy(doc, origin=origin, command_required=not image), doc, origin


def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """``doc[key]`` to edit, created if absent; a section of the wrong type is left alone
    (and reported by ``load_policy``, naming it)."""
    if doc.get(key) is None:
        doc[key] = {}
    value = doc[key]
    return value if isinstance(value, dict) else {}


def _append(section: dict[str, Any], key: str, items: list[str]) -> None:
    if items:
        have = section.get(key)
        section[key] = (have if isinstance(have, list) else []) + list(items)


def _override(doc: dict[str, Any], args: argparse.Namespace) -> None:
    """Apply ``-- CMD``, ``--cwd``, ``--env``, ``--rw``/``--ro``/``--deny`` and ``--net`` to a
    policy document; ``load_policy`` then validates the result like any policy (a bad path
    is reported at its JSON path, e.g. ``filesystem.readwritePaths[0]``)."""
    cmd = getattr(args, "cmd", None)
    env = getattr(args, "env", None) or []
    for entry in env:
        if "=" not in entry or entry.startswith("="):
            raise _UsageError(f"--env: expected K=V, got {entry!r}")
    if cmd or getattr(args, "cwd", None) is not None or env:
        process = _section(doc, "process")
        if cmd:
            import shlex

            # The policy format's command is a shell line: quote the argv so it runs as given.
            process["commandLine"] = shlex.join(cmd)
        if getattr(args, "cwd", None) is not None:
            process["cwd"] = args.cwd
        _append(process, "env", env)
    lists = [("readwritePaths", getattr(args, "rw", None)),
             ("readonlyPaths", getattr(args, "ro", None)),
             ("deniedPaths", getattr(args, "deny", None))]
    if any(items for _, items in lists):
        fs = _section(doc, "filesystem")
        for key, items in lists:
            _append(fs, key, items or [])
    if getattr(args, "image", None):
        from lxcbind.policy.parse import IMAGE_PREFIXES, image_ref

        ref = args.image if args.image.startswith(IMAGE_PREFIXES) else f"image:{args.image}"
        _section(doc, "lxc")["rootfs"] = image_ref(ref, "--image")
    if getattr(args, "net", False):
        # Open egress, enforced: under schema 0.8 an egress default of allow (NAT, inbound
        # denied); under 0.6/0.7 the same in legacy firewall mode.
        import re

        m = re.match(r"(\d+)\.(\d+)\.", doc.get("version") or "") \
            if isinstance(doc.get("version"), str) else None
        modern = m is not None and (int(m[1]), int(m[2])) >= (0, 8)
        doc["network"] = {"egress": {"default": "allow"}} if modern else \
            {"enforcementMode": "firewall", "defaultPolicy": "allow"}


def _emit(obj: dict[str, Any]) -> None:
    """One JSON object on stdout; every one carries the schema ``version`` of --json."""
    from lxcbind import _early

    _early.json_written = True   # a late signal must not add a second object
    sys.stdout.write(json.dumps({"version": JSON_VERSION, **obj}) + "\n")
    sys.stdout.flush()


def _error(code: str, message: str, exit_code: int, as_json: bool, path: str | None = None) -> int:
    if as_json:
        err: dict[str, Any] = {"code": code, "message": message}
        if path is not None:
            err["path"] = path
        _emit({"error": err, "exit_code": exit_code})
    else:
        sys.stderr.write(f"lxcbind: {message}\n")
    return exit_code


def _exit_code(result: Any) -> int:
    if result.timed_out:
        return EXIT_TIMEOUT
    if result.exec_error is not None:
        return EXIT_NOT_FOUND if result.exec_error.errno in (errno.ENOENT, errno.ENOTDIR) \
            and result.exec_error.stage == "exec" else EXIT_CANNOT_EXECUTE
    return int(result.exit_status)


def _wants_warm(args: argparse.Namespace) -> bool:
    return not getattr(args, "dry_run", False) and not getattr(args, "mxc", False) and (
        getattr(args, "warm", False) or os.environ.get("LXCBIND_WARM") == "1")


def _run(args: argparse.Namespace) -> int:
    from lxcbind.lxc import cgroups

    warm = _wants_warm(args)
    if forked is not None and (not warm or (getattr(args, "config", None)
                                            or getattr(args, "policy", None)) == "-"):
        forked.decide(False)   # a fresh container, or a policy on stdin: in the client
    if not warm:
        # Set off the grace period liblxc's start() waits for, while the rest is imported and
        # the policy read (Sandbox.open primes again: a prime within one grace period is
        # immediate).
        cgroups.prime_migration()
    if (getattr(args, "max_output", None) is not None or getattr(args, "base64", False)) \
            and not args.json:
        raise _UsageError("--max-output and --base64 apply to --json (captured output)")
    policy, document, origin = _load_document(args)   # a policy error is 2 even without liblxc
    if warm and not policy.network.effective().is_deny_all():
        if forked is not None:
            forked.decide(False)
        log.info("no warm server serves a policy with network access (clones have no network "
                 "device): a fresh container")
    elif warm:
        code = _run_warm(args, policy)
        if code is not None:
            return code
        cgroups.prime_migration()
    from lxcbind.sandbox.cleanup import FatalSignals
    from lxcbind.sandbox.core import Sandbox, network_notice, network_refusal

    if not policy.network.effective().is_deny_all():
        log.stdlib()   # the network modules log through ``logging``
    for warning in policy.warnings:
        log.warning("%s", warning)
    notice = network_notice(policy)   # capabilities mode: say what is not enforced
    if getattr(args, "dry_run", False):
        plan = policy.to_plan()
        refusal = network_refusal(policy)
        plan["runnable"] = refusal is None
        if refusal:
            plan["refusal"] = refusal
        plan["networkEnforced"] = notice is None
        plan["networkNotice"] = notice
        if args.json:
            _emit({"dry_run": True, "plan": plan, "exit_code": 0})
        else:
            sys.stdout.write(json.dumps(plan, indent=2) + "\n")
        return 0
    timeout = args.timeout if args.timeout is not None else None
    if notice is not None:
        sys.stderr.write(f"lxcbind: {notice}\n")
    with FatalSignals() as signals:
        with Sandbox(policy, log=lambda m: log.info("%s", m),
                     warn=lambda m: log.warning("%s", m), signals=signals) as box:
            if args.json:
                from lxcbind.result import UNLIMITED, MaxOutput

                cap: MaxOutput = JSON_MAX_OUTPUT if args.max_output is None else (
                    args.max_output or UNLIMITED)
                result = box.run(timeout=timeout, tty=bool(args.tty), max_output=cap)
            else:
                result = box.interact(timeout=timeout, tty=args.tty)
            name = box.name
    if not policy.lifecycle.destroy_on_exit:
        from lxcbind.sandbox import kept

        kept.save(name, document, origin)   # for `lxcbind exec NAME -- CMD` and `ls`
    return _report(args, result, name, notice)


def _run_warm(args: argparse.Namespace, policy: Any) -> int | None:
    """``run --warm``: the command in a clone from the warm server of ``policy``
    (``lxcbind.proc.warm``: neither the sandbox layer nor liblxc's start is loaded), or None
    when there is none (said at -v): the caller then runs a fresh container."""
    from lxcbind.command import check_call
    from lxcbind.errors import Terminated
    from lxcbind.proc.warm import open_clone

    session = open_clone(policy, log=lambda m: log.info("%s", m))
    if forked is not None:
        forked.decide(session is not None)
    if session is None:
        return None
    if forked is not None:
        log.info("run by the warm CLI server (forked as process %d)", os.getpid())
    for warning in policy.warnings:   # (the fresh container's path says them otherwise)
        log.warning("%s", warning)
    log.info("running in clone %s of the warm server", session.container.name)

    def terminated(signum: int, frame: object) -> None:
        raise Terminated(signum)   # as FatalSignals: the session closes, then 128+N

    import signal

    previous = {sig: signal.signal(sig, terminated)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        with session:
            if args.json:
                from lxcbind.result import UNLIMITED, MaxOutput

                cap: MaxOutput = JSON_MAX_OUTPUT if args.max_output is None else (
                    args.max_output or UNLIMITED)
                result = session.run_call(check_call(None, timeout=args.timeout,
                                                     max_output=cap), tty=bool(args.tty))
            else:
                tty = args.tty if args.tty is not None else os.isatty(0) and os.isatty(1)
                result = session.interact_call(check_call(None, timeout=args.timeout),
                                               tty=tty)
            name = session.container.name
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _report(args, result, name, None)


def _report(args: argparse.Namespace, result: Any, name: str, notice: str | None) -> int:
    """The run's exit code, and what it says on stderr (or its one --json object)."""
    failure = None
    if result.exec_error is not None:
        what = "process.cwd" if result.exec_error.stage == "chdir" else "process.commandLine"
        failure = (f"{what}: {result.exec_error.filename}: "
                   f"{os.strerror(result.exec_error.errno or 0)}")
    elif result.timed_out:
        failure = f"timed out after {result.timeout:g}s; the command was killed"
    if failure is not None and getattr(args, "mxc", False):
        raise _RunnerFailure(failure)   # lxcbind-exec: mxc reports these as runner errors
    if failure is not None and (result.exec_error is not None or not args.json):
        sys.stderr.write(f"lxcbind: {failure}\n")
    code = _exit_code(result)
    if result.oom_killed and not args.json:
        sys.stderr.write("lxcbind: the sandbox ran out of memory (lxc.limits.memory) and the "
                         "kernel killed a process\n")
    if result.pids_limited and not args.json:
        sys.stderr.write("lxcbind: the sandbox reached its process limit (lxc.limits.pids); "
                         "a fork was refused\n")
    if result.disk_limited and not args.json:
        sys.stderr.write("lxcbind: the sandbox's disk is full (lxc.limits.disk); writes failed "
                         "with ENOSPC\n")
    if args.json:
        _emit({"exit_code": code, "returncode": result.returncode, "signal": result.signal,
               "timed_out": result.timed_out, "duration": round(result.duration, 6),
               "oom_killed": result.oom_killed, "pids_limited": result.pids_limited,
               "disk_limited": result.disk_limited, "image": result.image,
               "container": name, "network_enforced": notice is None,
               "network_notice": notice, **_json_output(result, args.base64)})
    return code


def _warm(args: argparse.Namespace) -> int:
    """``lxcbind warm POLICY``: a warm server in the foreground (``lxcbind.sandbox.warm``);
    0 once SIGTERM/SIGINT or --idle stopped it and everything is removed."""
    from lxcbind.errors import Terminated
    from lxcbind.policy.parse import load_policy, policy_document, read_policy_file
    from lxcbind.sandbox.cleanup import FatalSignals
    from lxcbind.sandbox.warm import WarmServer

    if args.policy == "-":
        doc, origin = policy_document(sys.stdin.buffer.read()), "<stdin>"
    else:
        doc, origin = policy_document(read_policy_file(args.policy)), args.policy
    policy = load_policy(doc, origin=origin, command_required=False)
    for warning in policy.warnings:
        log.warning("%s", warning)
    with FatalSignals() as signals:
        try:
            server = WarmServer(policy, ready=args.ready, idle=args.idle,
                                log=lambda m: log.info("%s", m))
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        cli_server = None
        try:
            cli_server = _start_cli_server()
            sys.stdout.write(f"serving {server.path}\n")   # for scripts: it is ready now
            sys.stdout.flush()
            server.serve()
        except Terminated as exc:
            log.info("stopping after %s", exc)
        finally:
            with signals.shielded():
                if cli_server is not None:
                    cli_server.terminate()   # no new run; those in progress end with...
                server.close()               # ...their clones, torn down here
                if cli_server is not None:
                    import subprocess

                    try:
                        cli_server.wait(timeout=10)
                    except subprocess.TimeoutExpired:   # a run stuck writing to its client
                        cli_server.kill()              # (who then sends it SIGHUP)
                        cli_server.wait()
    return 0


def _start_cli_server() -> Any:
    """A warm CLI server (``lxcbind.cliserver``) beside this ``lxcbind warm``, importing the
    same ``lxcbind`` (this one's directory first on its path), as a ``subprocess.Popen``; None
    (with a warning) when it did not come up: ``run --warm`` then loads the CLI in each run."""
    import select
    import subprocess

    from lxcbind import _cliclient

    parent = os.path.dirname(os.path.dirname(os.path.abspath(_cliclient.__file__)))
    code = (f"import sys; sys.path.insert(0, {parent!r}); "
            "from lxcbind.cliserver import main; main()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if not line.startswith(b"ready "):
        proc.kill()
        proc.wait()
        log.warning("the warm CLI server did not start: each run --warm loads the CLI itself")
        return None
    return proc


def _container_id(name: str) -> str:
    from lxcbind.policy.parse import _CONTAINER_ID

    if not _CONTAINER_ID.fullmatch(name):
        raise _UsageError(f"invalid container name {name!r}")
    return name


def _ls(args: argparse.Namespace) -> int:
    """``lxcbind ls``: lxcbind's containers that outlived their run (or are in use by one)."""
    from lxcbind.sandbox import kept

    rows = kept.listing()
    if args.json:
        _emit({"containers": [{"name": k.name, "state": k.state, "policy": k.origin}
                              for k in rows], "exit_code": 0})
        return 0
    width = max([len(k.name) for k in rows] + [4])
    lines = [f"{'NAME':<{width}}  {'STATE':<8}  POLICY"]
    lines += [f"{k.name:<{width}}  {k.state:<8}  {k.origin or '-'}" for k in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _ours(name: str) -> bool:
    from lxcbind.lxc.container import Container
    from lxcbind.sandbox import kept

    with Container(name) as c:
        return c.defined and kept.is_ours(c)


def _rm(args: argparse.Namespace) -> int:
    """``lxcbind rm ID ...``: destroy each kept container and what it owns (network state,
    id range, records), under its lock.  Exit 1 if one was not there; containers lxcbind did
    not make are refused."""
    from lxcbind.sandbox import kept
    from lxcbind.sandbox.core import delete_container

    code = 0
    for name in map(_container_id, args.ids):
        if not _ours(name):
            sys.stderr.write(f"lxcbind: rm: no container {name!r} made by lxcbind\n")
            code = 1
            continue
        delete_container(name, log=lambda m: log.info("%s", m))
        kept.remove(name)
        sys.stdout.write(f"removed {name}\n")
    return code


def _exec_kept(args: argparse.Namespace) -> int:
    """``lxcbind exec ID -- CMD``: ``run`` under the policy the container was kept with."""
    from lxcbind.sandbox import kept

    name = _container_id(args.id)
    if not args.cmd:
        raise _UsageError("exec needs a command: lxcbind exec ID -- CMD [ARG ...]")
    if not _ours(name):
        raise _UsageError(f"no kept container {name!r} (see lxcbind ls)")
    record = kept.load(name)
    if record is None:
        raise _UsageError(f"container {name!r} has no recorded policy (kept by the Python API "
                          f"or an older lxcbind); run it with its policy: lxcbind run POLICY "
                          f"-- CMD, with containerId {name!r}")
    args.document = (record["policy"], str(record.get("origin") or "<kept>"))
    args.policy = args.config = args.config_base64 = None
    return _run(args)


def _attach(args: argparse.Namespace) -> int:
    """``lxcbind attach ID [-- CMD]``: a shell (or CMD) in a live sandbox."""
    import signal

    from lxcbind.result import exec_line
    from lxcbind.sandbox.enter import enter

    # A stopped attach would hold its command's zombie unreaped, and the sandbox's teardown
    # (its pid namespace) waits for that: job-control stops are ignored (SIGSTOP cannot be).
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    result = enter(_container_id(args.id), args.cmd, tty=args.tty)
    if result.exec_error is not None:   # its stderr went to ours: the reason was not in it
        sys.stderr.write(exec_line(result.exec_error).decode(errors="replace"))
    return _exit_code(result)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (see the module docstring)."""
    from lxcbind.errors import LxcbindError, PolicyError, SandboxError, Terminated

    words = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--" in words:   # everything after the first "--" is the command (run, exec)
        command = words[words.index("--") + 1:]
        words = words[:words.index("--")]
    as_json = "--json" in words
    try:
        args = _fast_run(words) or build_parser().parse_args(words)
        args.cmd = command
        if command is not None and args.command not in ("run", "exec", "attach"):
            raise _UsageError(f"{args.command} takes no command (nothing after --)")
        if command is not None and not command:
            raise _UsageError("no command after --")
    except _UsageError as exc:
        return _error("usage", str(exc), EXIT_USAGE, as_json)
    except SystemExit as exc:   # --help, --version: printed, done
        return exc.code if isinstance(exc.code, int) else 0
    verbose = args.verbose or getattr(args, "run_verbose", False)
    level = args.log_level or getattr(args, "run_log_level", None) or \
        ("debug" if verbose else "warning")
    log.configure(level)
    as_json = getattr(args, "json", False)
    if forked is not None and args.command != "run":
        forked.decide(False)
    started = time.monotonic()
    try:
        if args.command == "gc":
            from lxcbind.sandbox.cleanup import FatalSignals
            from lxcbind.sandbox.core import gc

            skipped: list[str] = []   # one line each, on stderr; gc goes on with the rest

            def warn(message: str) -> None:
                skipped.append(message)
                log.warning("%s", message)

            with FatalSignals():   # a signal lets gc finish the container it is removing
                removed = gc(log=lambda m: log.info("%s", m), warn=warn)
            sys.stdout.write("".join(f"removed {name}\n" for name in removed))
            return 1 if skipped else 0
        if args.command == "ls":
            return _ls(args)
        if args.command == "warm":
            return _warm(args)
        if args.command == "rm":
            return _rm(args)
        if args.command == "exec":
            return _exec_kept(args)
        if args.command == "attach":
            return _attach(args)
        if args.command == "image":
            from lxcbind.cli_image import main as image_main

            return image_main(args, _emit)
        return _run(args)
    except _UsageError as exc:
        return _error("usage", str(exc), EXIT_USAGE, as_json)
    except PolicyError as exc:
        return _error("policy", str(exc), EXIT_USAGE, as_json, path=exc.path)
    except Terminated as exc:
        code = 128 + exc.signum
        log.info("cleaned up after %s", exc)
        if as_json:
            _emit({"error": {"code": "signal", "message": str(exc)}, "exit_code": code})
        return code
    except (SandboxError, LxcbindError, OSError) as exc:
        log.debug("%s", _traceback())
        return _error("sandbox", str(exc).replace("\n", " | "), EXIT_SANDBOX, as_json)
    except Exception as exc:  # an internal error: one line, never a traceback by default
        log.debug("%s", _traceback())
        return _error("internal", f"internal error: {type(exc).__name__}: {exc} "
                      "(rerun with -v for details)", EXIT_SANDBOX, as_json)
    finally:
        log.debug("done in %.3fs", time.monotonic() - started)


def main_entry() -> None:
    """Entry point (``_entry.main`` installs the signal handling before importing this)."""
    install_early_signals()
    try:
        code = main()
    except BrokenPipeError:
        code = 128 + 13
    exit_now(code)


def exit_now(code: int) -> None:
    """End the command-line process without the interpreter's teardown.

    Freeing every module and object of a process about to end costs 10-14 ms here (as much as
    stopping the container), and a one-shot run pays it every time.  Everything the run
    created is already undone when this is called, so what remains is what the caller is owed:
    the ``atexit`` handlers (logging flushes and closes its files), then stdout and stderr.
    With another non-daemon thread still running, the ordinary exit (which waits for it) is
    kept; a daemon thread (``cgroups.prime_migration``'s) is not waited for by either."""
    threading = sys.modules.get("threading")
    if threading is not None and any(
            t.is_alive() and not t.daemon and t is not threading.main_thread()
            for t in threading.enumerate()):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:   # the reader went away: as main_entry reports it
        code = code or 128 + 13
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


# --------------------------------------------------------------------------- lxcbind-exec

EXEC_PARSE = 1      # mxc: the policy or the command line could not be used
EXEC_RUNNER = 255   # mxc: the runner failed (its exit code -1); an error envelope on stderr


def build_exec_parser() -> argparse.ArgumentParser:
    """The command line of mxc's ``lxc-exec``, on lxcbind's run path."""
    parser = _parser_class()(
        prog="lxcbind-exec",
        description="Run a policy's command like mxc's lxc-exec, through lxcbind.")
    parser.add_argument("config_path", nargs="?", metavar="CONFIG_PATH",
                        help="policy JSON file (or - for stdin)")
    parser.add_argument("--config", metavar="PATH", help="policy JSON file")
    parser.add_argument("--config-base64", metavar="B64", help="policy as base64")
    parser.add_argument("--debug", action="store_true", help="progress lines on stderr")
    parser.add_argument("--log-file", metavar="PATH",
                        help="append the progress lines to PATH (created if missing)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the policy and exit without running anything")
    parser.add_argument("--experimental", action="store_true",
                        help="accepted for compatibility (no effect)")
    parser.add_argument("--allow-testing-features", action="store_true",
                        help="accepted for compatibility (builtinTestServer is refused for LXC)")
    parser.add_argument("--delete", action="store_true",
                        help="destroy the container named by --containername and exit")
    parser.add_argument("--containername", metavar="NAME", help="container for --delete")
    return parser


def _envelope(message: str) -> int:
    """mxc's runner-error contract: the message, then one JSON envelope line, on stderr."""
    sys.stderr.write(f"lxcbind-exec: {message}\n")
    sys.stderr.write(json.dumps({"error": {"code": "backend_error", "message": message}}) + "\n")
    sys.stderr.flush()
    return EXEC_RUNNER


def _exec_logging(args: argparse.Namespace) -> None:
    import logging

    logger = logging.getLogger("lxcbind")
    logger.setLevel(logging.DEBUG if (args.debug or args.log_file) else logging.WARNING)
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.DEBUG if args.debug else logging.WARNING)
    stream.setFormatter(logging.Formatter("lxcbind: %(message)s"))
    logger.addHandler(stream)
    if args.log_file:
        try:
            handler = logging.FileHandler(args.log_file, mode="a", encoding="utf-8")
        except OSError as exc:   # as lxc-exec: a warning, the run goes on
            sys.stderr.write(f"lxcbind-exec: warning: cannot open log file {args.log_file!r}: "
                             f"{exc.strerror or exc}\n")
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s lxcbind: %(message)s"))
            logger.addHandler(handler)
    log._logger = logger


def _exec_delete(args: argparse.Namespace) -> int:
    from lxcbind.errors import LxcbindError
    from lxcbind.policy.parse import _CONTAINER_ID
    from lxcbind.sandbox.core import delete_container

    name = args.containername
    if not name:
        raise _UsageError("--containername is required with --delete")
    if not _CONTAINER_ID.fullmatch(name):
        raise _UsageError(f"--containername: invalid container name {name!r}")
    from lxcbind.sandbox.cleanup import FatalSignals

    try:
        with FatalSignals():   # a signal waits for the lock's release and the record's removal
            existed = delete_container(name, log=lambda m: log.info("%s", m))
    except (LxcbindError, OSError) as exc:   # as lxc-exec --delete: 1 when it failed
        sys.stderr.write(f"lxcbind-exec: --delete {name}: {exc}\n")
        return EXEC_PARSE
    log.info("%s", f"deleted {name!r}" if existed else f"no container {name!r}")
    return 0


def exec_main(argv: Sequence[str] | None = None) -> int:
    """``lxcbind-exec``: mxc's ``lxc-exec`` command line and exit-code contract on the code
    path of ``lxcbind run``.  Returns the command's own status; 1 when the command line or the
    policy cannot be used (one line on stderr); 255 when the runner fails (including a
    timeout), with ``{"error": {"code": "backend_error", "message": ...}}`` on stderr; 128+N
    when lxcbind itself got fatal signal N (after cleanup)."""
    from lxcbind.errors import LxcbindError, PolicyError, SandboxError, Terminated

    try:
        args = build_exec_parser().parse_args(argv)
    except _UsageError as exc:
        sys.stderr.write(f"lxcbind-exec: {exc}\n")
        return EXEC_PARSE
    _exec_logging(args)
    try:
        if args.delete:
            return _exec_delete(args)
        if args.config_base64 is None and args.config is None and args.config_path is None:
            raise _UsageError("no config provided: use a positional path, --config or "
                              "--config-base64")
        import argparse

        run_args = argparse.Namespace(policy=args.config_path, config=args.config,
                                      config_base64=args.config_base64, tty=None, timeout=None,
                                      json=False, dry_run=False, mxc=True)
        if args.dry_run:
            from lxcbind.sandbox.core import network_refusal

            refusal = network_refusal(_load(run_args))
            if refusal:
                sys.stderr.write(f"lxcbind-exec: {refusal}\n")
            result = "validation failed" if refusal else "validation passed"
            sys.stdout.write(f"Dry run completed. Result: {result}\n")
            return EXEC_PARSE if refusal else 0
        return _run(run_args)
    except (_UsageError, PolicyError) as exc:
        sys.stderr.write(f"lxcbind-exec: {exc}\n")
        return EXEC_PARSE
    except Terminated as exc:
        log.info("cleaned up after %s", exc)
        return 128 + exc.signum
    except _RunnerFailure as exc:
        return _envelope(str(exc))
    except (SandboxError, LxcbindError, OSError) as exc:
        log.debug("%s", _traceback())
        return _envelope(str(exc).replace("\n", " | "))
    except Exception as exc:  # an internal error: one line, never a traceback by default
        log.debug("%s", _traceback())
        return _envelope(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug "
                         "for details)")


def exec_entry() -> None:
    """Entry point of ``lxcbind-exec`` (through ``_entry.exec_main``)."""
    install_early_signals()
    try:
        code = exec_main()
    except BrokenPipeError:
        code = 128 + 13
    exit_now(code)
