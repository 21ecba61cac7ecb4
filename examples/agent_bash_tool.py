"""The shell tool of a coding agent: one persistent bash per conversation, the project's
working directory bound read-write from the host, a timeout per command that interrupts only
that command, and output capped with a visible marker, as a model wants it.

    python3 examples/agent_bash_tool.py [WORKDIR]     (as root; WORKDIR defaults to a temp dir)
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lxcbind  # noqa: E402

MAX_OUTPUT = 8192          # bytes per stream that reach the model
DEFAULT_TIMEOUT = 30.0     # seconds per command


class BashTool:
    """``tool(command)`` → the text a model sees: output, then the exit status."""

    def __init__(self, workdir: str) -> None:
        policy = {"version": "0.8.0",
                  "process": {"cwd": workdir, "env": ["LANG=C.UTF-8"]},
                  "filesystem": {"readwritePaths": [workdir]},
                  "lxc": {"limits": {"memory": "1G", "pids": 512}}}
        self.session = lxcbind.Session.from_policy(policy)
        self.shell = self.session.shell(program="/bin/bash", restart=True)

    def __call__(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        r = self.shell.run(command, timeout=timeout, max_output=MAX_OUTPUT)
        parts = [r.stdout.decode(errors="replace")]
        if r.stderr:
            parts.append("[stderr]\n" + r.stderr.decode(errors="replace"))
        if r.timed_out:
            parts.append(f"[timed out after {timeout:g}s; the shell is still yours]")
        if r.shell_restarted:
            parts.append("[the shell had died: a new one was started, its state is gone]")
        parts.append(f"[exit status {r.returncode}]")
        return "\n".join(p.rstrip("\n") for p in parts if p)

    def close(self) -> None:
        self.shell.close()
        self.session.close()


def main() -> int:
    workdir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="agent-work-")
    tool = BashTool(os.path.realpath(workdir))
    try:
        steps = [
            "pwd && echo 'print(6 * 7)' > answer.py && python3 answer.py",
            "cd /tmp && export GREETING=hi && f() { echo \"$GREETING from $(pwd)\"; }",
            "f",                                            # state kept across calls
            "echo to-stderr >&2; false",
            "seq 1 100000",                                 # capped, with a marker
            "sleep 60",                                     # interrupted by its timeout
            "echo still $GREETING",                         # ... and the shell lived on
        ]
        for command in steps:
            timeout = 1.0 if command.startswith("sleep") else DEFAULT_TIMEOUT
            print(f"$ {command}\n{tool(command, timeout=timeout)}\n")
    finally:
        tool.close()
    created = os.path.join(workdir, "answer.py")
    st = os.stat(created)
    print(f"host: {created} owned by uid {st.st_uid} (the work dir's owner: "
          f"{os.stat(workdir).st_uid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
