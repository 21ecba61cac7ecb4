"""``python -m lxcbind`` / ``lxcbind``: run one command under a JSON policy, or collect garbage.

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
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

from ._entry import install_early_signals

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_SANDBOX = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

JSON_VERSION = 1                     # the shape of --json objects; bumped when a field changes
JSON_MAX_OUTPUT = 16 << 20           # --json's default cap, bytes per stream

log = logging.getLogger("lxcbind")


def _traceback() -> str:
    import traceback

    return traceback.format_exc()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, as documented
        raise _UsageError(message)


class _UsageError(Exception):
    pass


class _RunnerFailure(Exception):
    """lxcbind-exec only: the run ended in what mxc calls a runner error (exit 255)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lxcbind",
                     description="Run commands in LXC containers through liblxc.")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default=None, help="log level on stderr (default: warning; -v: debug)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a policy's command in a fresh container")
    run.add_argument("policy", nargs="?", help="policy JSON file, or - for stdin")
    run.add_argument("--config", metavar="PATH", help="policy JSON file (as in mxc)")
    run.add_argument("--config-base64", metavar="B64", help="policy as base64 (as in mxc)")
    tty = run.add_mutually_exclusive_group()
    tty.add_argument("--tty", dest="tty", action="store_true", default=None,
                     help="use a pty (default when stdin is a terminal)")
    tty.add_argument("--no-tty", dest="tty", action="store_false", help="use pipes")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="overrides process.timeout")
    run.add_argument("--json", action="store_true",
                     help="print exactly one JSON object (result or error) on stdout")
    run.add_argument("--max-output", type=_byte_count, metavar="BYTES", default=None,
                     help=f"--json: bytes kept per stream, head and tail (default "
                          f"{JSON_MAX_OUTPUT >> 20} MiB; 0: no cap)")
    run.add_argument("--base64", action="store_true",
                     help="--json: stdout/stderr as base64 (for binary output)")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and print the effective plan; create nothing")
    run.add_argument("-v", "--verbose", action="store_true", dest="run_verbose",
                     help=argparse.SUPPRESS)
    sub.add_parser("gc", help="destroy what runners killed with SIGKILL left behind")
    return parser


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bytes, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


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
    from .policy import decode_base64_policy, load_policy, load_policy_file

    if args.config_base64 is not None:
        return decode_base64_policy(args.config_base64)
    source = args.config or args.policy
    if source is None:
        raise _UsageError("no policy given: pass a path, -, --config PATH or --config-base64 B64")
    if source == "-":
        return load_policy(sys.stdin.buffer.read(), origin="<stdin>")
    return load_policy_file(source)


def _emit(obj: dict[str, Any]) -> None:
    """One JSON object on stdout; every one carries the schema ``version`` of --json."""
    from . import _entry

    _entry.json_written = True   # a late signal must not add a second object
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
    return result.exit_status


def _run(args: argparse.Namespace) -> int:
    from .cleanup import FatalSignals
    from .sandbox import Sandbox, network_notice, network_refusal

    if (getattr(args, "max_output", None) is not None or getattr(args, "base64", False)) \
            and not args.json:
        raise _UsageError("--max-output and --base64 apply to --json (captured output)")
    policy = _load(args)
    for warning in policy.warnings:
        log.warning("%s", warning)
    notice = network_notice(policy)   # capabilities mode: say what is not enforced
    if args.dry_run:
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
        with Sandbox(policy, log=lambda m: log.info("%s", m), signals=signals) as box:
            if args.json:
                cap = JSON_MAX_OUTPUT if args.max_output is None else (args.max_output or None)
                result = box.run(timeout=timeout, tty=bool(args.tty), max_output=cap)
            else:
                result = box.interact(timeout=timeout, tty=args.tty)
            name = box.name
    failure = None
    if result.exec_error is not None:
        what = "process.cwd" if result.exec_error.stage == "chdir" else "process.commandLine"
        failure = (f"{what}: {result.exec_error.filename}: "
                   f"{os.strerror(result.exec_error.errno)}")
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
    if args.json:
        _emit({"exit_code": code, "returncode": result.returncode, "signal": result.signal,
               "timed_out": result.timed_out, "duration": round(result.duration, 6),
               "oom_killed": result.oom_killed, "pids_limited": result.pids_limited,
               "container": name, "network_enforced": notice is None,
               "network_notice": notice, **_json_output(result, args.base64)})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; returns the exit code (see the module docstring)."""
    from .cleanup import Terminated
    from .errors import LxcbindError, PolicyError, SandboxError

    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _error("usage", str(exc), EXIT_USAGE, as_json)
    verbose = args.verbose or getattr(args, "run_verbose", False)
    level = args.log_level or ("debug" if verbose else "warning")
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="lxcbind: %(message)s")
    as_json = getattr(args, "json", False)
    started = time.monotonic()
    try:
        if args.command == "gc":
            from .cleanup import FatalSignals
            from .sandbox import gc

            with FatalSignals():   # a signal lets gc finish the container it is removing
                removed = gc(log=lambda m: log.info("%s", m))
            sys.stdout.write("".join(f"removed {name}\n" for name in removed))
            return 0
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
    With another thread still running, the ordinary exit (which waits for it) is kept."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
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
    parser = _Parser(prog="lxcbind-exec",
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


def _exec_delete(args: argparse.Namespace) -> int:
    from .errors import LxcbindError
    from .policy import _CONTAINER_ID
    from .sandbox import delete_container

    name = args.containername
    if not name:
        raise _UsageError("--containername is required with --delete")
    if not _CONTAINER_ID.fullmatch(name):
        raise _UsageError(f"--containername: invalid container name {name!r}")
    from .cleanup import FatalSignals

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
    from .cleanup import Terminated
    from .errors import LxcbindError, PolicyError, SandboxError

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
        run_args = argparse.Namespace(policy=args.config_path, config=args.config,
                                      config_base64=args.config_base64, tty=None, timeout=None,
                                      json=False, dry_run=False, mxc=True)
        if args.dry_run:
            from .sandbox import network_refusal

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
