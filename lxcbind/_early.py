"""Early signal handling for the command line: what ends a CLI process that receives
SIGINT/SIGTERM/SIGHUP before a run has created anything.

Installed as the first thing lxcbind's code does when it is the command line: the top of
``lxcbind/__init__.py`` (``install_if_cli``: ``python -m lxcbind`` and the ``lxcbind`` /
``lxcbind-exec`` scripts import the package first), again by ``lxcbind._entry``.  Only ``os``,
``sys`` and ``_signal`` (the C module behind ``signal``, whose enums cost milliseconds of
import in which a SIGINT would still be a ``KeyboardInterrupt``) are used, to install it and in
the handler; see ``_entry``'s docstring for what is out of reach.
"""

import os
import sys

TYPE_CHECKING = False   # (typing itself costs milliseconds of import)
if TYPE_CHECKING:
    import signal as _signal  # the same functions, with stubs
else:
    import _signal

_FATAL = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)
# The handler uses only what was loaded before it was installed: it may run while any module
# is half imported, ``signal`` itself included (its enums would then not exist yet).
_NAMES: dict[int, bytes] = {_signal.SIGINT: b"SIGINT", _signal.SIGTERM: b"SIGTERM",
                          _signal.SIGHUP: b"SIGHUP"}
_SCRIPTS = ("lxcbind", "lxcbind-exec")
json_written = False   # set by the CLI once its one ``--json`` object is out


def _early_signal(signum: int, frame: object) -> None:
    """Nothing of a run exists: end as the signal itself would.  Under ``--json`` a tool still
    gets its one JSON object, and exit status 128+N; otherwise the process dies of the signal
    (so a shell sees it, as with any program that has nothing to clean up)."""
    if "--json" in sys.argv[1:] and not json_written:
        name = _NAMES.get(signum, b"signal %d" % signum)
        # "version": cli.JSON_VERSION (not imported: nothing heavy before the handler is set)
        os.write(1, b'{"version": 1, "error": {"code": "signal", "message": "terminated by '
                    b'%s"}, "exit_code": %d}\n' % (name, 128 + signum))
        os._exit(128 + signum)
    _signal.signal(signum, _signal.SIG_DFL)
    _signal.raise_signal(signum)
    os._exit(128 + signum)   # not reached unless the signal is blocked: still end quietly


def install_early_signals() -> None:
    """Make ``_early_signal`` the handler of the fatal signals (idempotent).  Only for the
    command line: a library must not change its caller's signal handling."""
    for signum in _FATAL:
        if _signal.getsignal(signum) != _signal.SIG_IGN:   # nohup's SIGHUP stays ignored
            _signal.signal(signum, _early_signal)


def starting_cli(argv: list[str], orig_argv: list[str]) -> bool:
    """Whether this interpreter is starting lxcbind's command line, judged while the package
    is first imported: ``python -m lxcbind`` (runpy is still locating the module, so
    ``argv[0]`` is ``"-m"`` and the word it replaced, ``orig_argv[-len(argv)]``, names it) or
    a script named ``lxcbind``/``lxcbind-exec`` (the console scripts)."""
    if not argv:
        return False
    if argv[0] == "-m":
        word = orig_argv[-len(argv)] if len(orig_argv) >= len(argv) else ""
        return word == "lxcbind" or (word.startswith("-") and word.endswith("mlxcbind"))
    return argv[0].rpartition("/")[2] in _SCRIPTS


def install_if_cli() -> None:
    """``install_early_signals`` when this process is the command line (``starting_cli``)."""
    if starting_cli(getattr(sys, "argv", []), getattr(sys, "orig_argv", [])):
        install_early_signals()
