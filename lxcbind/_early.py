"""Early signal handling for the command line (only ``os``, ``signal`` and ``sys``): what
ends a CLI process that receives SIGINT/SIGTERM/SIGHUP before a run has created anything.
Installed by ``lxcbind._entry`` first thing; see its docstring."""

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
