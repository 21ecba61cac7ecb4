"""Run an interactive busybox shell through ``Container.interact`` in the current terminal.

Used by test_bridge.py inside a tmux pane:  tmux_driver.py CONTAINER_NAME RESULT_FILE

Writes ``pid=``, then ``status=`` (the shell-style exit status) or ``exit=sigterm``, then
``destroyed=yes`` to RESULT_FILE.  SIGTERM becomes SystemExit, so the container is destroyed
and the terminal restored on that path too.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

from tests.conftest import make_busybox  # noqa: E402


class Terminated(SystemExit):
    pass


def on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def main() -> int:
    name, result_path = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)   # tmux kill-server (a failed test's teardown)
    with open(result_path, "w") as result:
        result.write(f"pid={os.getpid()}\n")
        result.flush()
        c = make_busybox(name)
        try:
            status = c.interact(["sh", "-i"], tty=True, env={"PS1": "CT# "}, kill_grace=0.5)
            result.write(f"status={status}\n")
        except Terminated:
            result.write("exit=sigterm\n")
        finally:
            c.destroy()
            c.close()
            result.write("destroyed=yes\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
