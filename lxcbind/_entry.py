"""The command-line entry points, reached before anything slow is imported.

``python -m lxcbind``, ``lxcbind`` and ``lxcbind-exec`` start here: the first thing they do
is ``install_early_signals()``, and only then import the CLI (argparse, json, logging, the
sandbox, liblxc).  Until a run creates something, SIGINT/SIGTERM/SIGHUP then end the process
quietly instead of as a ``KeyboardInterrupt`` traceback from whatever was being imported;
``cleanup.FatalSignals`` takes over around everything that creates or destroys state, and
hands back to this handler when it is done.  What runs before this module (the interpreter's
own start-up: ``site`` and its ``.pth`` files) is out of lxcbind's reach: a SIGINT there is
Python's ``KeyboardInterrupt``.

Only ``os``, ``signal`` and ``sys`` are imported here, on purpose.
"""

from __future__ import annotations

import os
import signal
import sys

_FATAL = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
json_written = False   # set by the CLI once its one ``--json`` object is out


def _early_signal(signum: int, frame: object) -> None:
    """Nothing of a run exists: end as the signal itself would.  Under ``--json`` a tool still
    gets its one JSON object, and exit status 128+N; otherwise the process dies of the signal
    (so a shell sees it, as with any program that has nothing to clean up)."""
    if "--json" in sys.argv[1:] and not json_written:
        name = signal.Signals(signum).name
        # "version": cli.JSON_VERSION (not imported: nothing heavy before the handler is set)
        os.write(1, b'{"version": 1, "error": {"code": "signal", "message": "terminated by '
                    b'%s"}, "exit_code": %d}\n' % (name.encode(), 128 + signum))
        os._exit(128 + signum)
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    os._exit(128 + signum)   # not reached unless the signal is blocked: still end quietly


def install_early_signals() -> None:
    """Make ``_early_signal`` the handler of the fatal signals (idempotent).  Only for the
    command line: a library must not change its caller's signal handling."""
    for signum in _FATAL:
        if signal.getsignal(signum) is not signal.SIG_IGN:   # nohup's SIGHUP stays ignored
            signal.signal(signum, _early_signal)


def main() -> None:
    """``lxcbind`` / ``python -m lxcbind``."""
    install_early_signals()
    from .cli import main_entry

    main_entry()


def exec_main() -> None:
    """``lxcbind-exec`` (mxc's ``lxc-exec`` command line)."""
    install_early_signals()
    from .cli import exec_entry

    exec_entry()
