"""A SIGINT while the command line is still loading ends it quietly: no ``KeyboardInterrupt``
traceback, death by SIGINT (a shell's 130), nothing left behind.

lxcbind's first instruction, as the command line, is its signal handler (the top of
``lxcbind/__init__.py``): the only window left is the interpreter's own start-up (``site`` and
the ``.pth`` files of the installation), which runs before any lxcbind code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]

# A sitecustomize (imported by site, before runpy locates lxcbind) that records, through an
# audit hook, every module imported from the moment lxcbind's own code starts executing, and
# whether the CLI's handler was in place by then.
SPY = textwrap.dedent("""
    import _signal, atexit, json, os, sys

    seen = []
    started = []

    def ours():
        return callable(_signal.getsignal(_signal.SIGTERM))

    def hook(event, args):
        if event == "exec" and not started and \\
                getattr(args[0], "co_filename", "").endswith("lxcbind/__init__.py"):
            started.append(True)
        elif event == "import" and started:
            seen.append([args[0], ours()])

    def report():
        with open(os.environ["SPY_OUT"], "w") as f:
            json.dump(seen, f)

    sys.addaudithook(hook)
    atexit.register(report)
    # A stock python3 (Debian's) has not imported __future__ by now; some installations' .pth
    # files have.  Forgotten, so that an import of it by lxcbind shows here too.
    sys.modules.pop("__future__", None)
""")


def test_the_handler_is_lxcbinds_first_instruction(tmp_path: Path) -> None:
    """Nothing is imported between the start of lxcbind's code and the handler but the one
    small module that installs it (no ``typing``, ``signal``/``enum``, ``lxcbind._entry``)."""
    (tmp_path / "sitecustomize.py").write_text(SPY)
    out = tmp_path / "seen.json"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "SPY_OUT": str(out)}
    for argv in (["-m", "lxcbind", "--version"], ["-m", "lxcbind", "run", "--dry-run", "--",
                                                  "true"]):
        done = subprocess.run([sys.executable, *argv], capture_output=True, env=env,
                              cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        seen = json.loads(out.read_text())
        before = [name for name, installed in seen if not installed]
        assert before in ([], ["lxcbind._early"]), f"imported before the handler: {before}"
        assert any(installed for _, installed in seen)   # and it is installed


def test_a_library_import_leaves_signal_handling_alone() -> None:
    code = ("import signal, lxcbind, lxcbind.cli; "
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "
            "signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.split() == ["True", "True"], done.stderr


def _handler_installed(pid: int) -> bool:
    """lxcbind's handler is in place: SIGTERM is caught (``SigCgt``; Python itself catches
    only SIGINT)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def test_sigint_while_the_cli_loads_ends_quietly(tmp_path: Path) -> None:
    """30 SIGINTs at random moments of the first 80 ms after lxcbind's first instruction (the
    CLI, the policy, the sandbox and the binding being imported, setup starting)."""
    from lxcbind import list_containers

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path = tmp_path / "p.json"
    for trial in range(30):
        name = new_name("early-")
        path.write_text(json.dumps({"version": "0.8.0", "containerId": name,
                                    "process": {"commandLine": "sleep 100"}}))
        json_mode = trial % 3 == 2
        proc = subprocess.Popen(
            [sys.executable, "-m", "lxcbind", "run", "--no-tty", *(["--json"] * json_mode),
             str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 30
            while not _handler_installed(proc.pid) and proc.poll() is None:
                assert time.monotonic() < deadline, "the handler never appeared"
                time.sleep(0.0005)
            delay = rng.uniform(0, 0.08)
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        what = f"trial {trial} (seed {seed}): SIGINT after {delay * 1000:.1f} ms"
        text = err.decode(errors="replace")
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, f"{what}: {text}"
        if json_mode:
            objects = [json.loads(line) for line in out.decode().splitlines()]
            assert len(objects) == 1 and objects[0]["exit_code"] == 130, (what, out)
            assert proc.returncode == 130, what
        else:
            # dead of the signal while nothing existed yet, or 130 after cleaning up
            assert proc.returncode in (-signal.SIGINT, 128 + signal.SIGINT), (what, text)
        assert name not in list_containers(), what
