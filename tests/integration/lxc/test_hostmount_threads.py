"""Idmapped mounts made from several threads at once (a Pool's starters do): each one forks a
child that holds a user namespace open, and a child that kept another thread's pipe ends
would keep that thread waiting for its child forever (seen: a Pool on a snapshot hung in
``lxcbind_userns_open``).  Run in a subprocess with a deadline, so a deadlock fails the test
instead of hanging the suite; on failure its whole process group is killed and its mounts
detached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from lxcbind.lxc import hostmount

SCRIPT = textwrap.dedent("""
    import os, sys, threading
    from lxcbind.lxc import hostmount

    root = sys.argv[1]
    src = os.path.join(root, "src")
    errors = []

    def worker(n):
        for i in range(40):
            target = os.path.join(root, f"t{n}-{i}")
            os.mkdir(target)
            try:
                hostmount.idmapped_bind(src, target, 100000 * (n + 1), 65536)
            except OSError as exc:
                errors.append(exc)
                return
            finally:
                hostmount.detach(target)
                os.rmdir(target)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("errors", len(errors), errors[:1])
""")


def test_idmapped_mounts_from_many_threads_at_once_never_deadlock(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the forked children too
        proc.communicate()
        for target in tmp_path.glob("t*"):
            hostmount.detach(str(target))
        raise AssertionError("idmapped mounts from 6 threads deadlocked") from None
    assert proc.returncode == 0, err
    assert out.strip() == "errors 0 []", out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
