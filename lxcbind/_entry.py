"""The command-line entry points, reached before anything slow is imported.

``python -m lxcbind``, ``lxcbind`` and ``lxcbind-exec`` start here, after the package's
``__init__`` installed the early handler as its first instruction (``_early.install_if_cli``);
the first thing they do is ``install_early_signals()`` again (idempotent: for callers that
reach this module some other way), and only then import the CLI (argparse, json, logging, the
sandbox, liblxc).  Until a run creates something, SIGINT/SIGTERM/SIGHUP then end the process
quietly instead of as a ``KeyboardInterrupt`` traceback from whatever was being imported;
``cleanup.FatalSignals`` takes over around everything that creates or destroys state, and
hands back to this handler when it is done.  What runs before this module (the interpreter's
own start-up: ``site`` and its ``.pth`` files, and runpy locating the package) is out of
lxcbind's reach: a SIGINT there is Python's ``KeyboardInterrupt``.

Only ``lxcbind._early`` (``sys``, ``_signal``) is imported here, on purpose (not even
``__future__``), and ``lxcbind._cliclient`` (modules built into the interpreter) before the
CLI: a warm run is handed to a warm CLI server from there.
"""

from lxcbind._early import install_early_signals


def main() -> None:
    """``lxcbind`` / ``python -m lxcbind``."""
    install_early_signals()
    import sys

    from lxcbind._cliclient import hand_over

    hand_over(sys.argv[1:])   # a warm CLI server runs it, and this ends here; or not served
    from lxcbind.cli import main_entry

    main_entry()


def exec_main() -> None:
    """``lxcbind-exec`` (mxc's ``lxc-exec`` command line)."""
    install_early_signals()
    from lxcbind.cli import exec_entry

    exec_entry()
