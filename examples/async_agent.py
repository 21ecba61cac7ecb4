"""An asyncio agent loop: several tool calls at once in one sandbox, a long command streamed,
a runaway command cut off by its timeout, a cancelled call that leaves nothing running, and a
persistent bash whose state survives a cancelled command.

    python3 examples/async_agent.py        (as root; prints what each step saw)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lxcbind  # noqa: E402

POLICY = {"version": "0.8.0", "process": {"commandLine": "true"},
          "lxc": {"limits": {"memory": "512M", "pids": 256}}}


async def cancel_after(call: Coroutine[Any, Any, object], seconds: float) -> bool:
    """Start ``call``, cancel it ``seconds`` later (the user pressed stop); True if it was."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(seconds)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


async def main() -> int:
    async with lxcbind.AsyncSession.from_policy(POLICY) as sandbox:
        # Tool calls the model asked for in one turn run concurrently.
        calls = ["uname -s", "python3 -c 'print(sum(range(10)))'", "ls / | wc -l"]
        for call, result in zip(calls, await asyncio.gather(*(sandbox.run(c, timeout=10)
                                                              for c in calls)), strict=True):
            print(f"{call!r} -> {result.returncode} {result.stdout.decode().strip()!r}")

        # A long command, streamed as it prints.
        lines = 0
        async for stream, chunk in sandbox.stream("for i in 1 2 3; do echo step $i; "
                                                  "sleep 0.1; done", timeout=10):
            lines += chunk.count(b"\n")
            print(f"  [{stream}] {chunk.decode().rstrip()}")

        # A runaway command: the timeout kills it, the sandbox stays usable.
        runaway = await sandbox.run("while :; do :; done", timeout=0.5)
        print(f"runaway: timed_out={runaway.timed_out}")

        # The user interrupts a call: cancelling the task kills the command.
        if await cancel_after(sandbox.run("sleep 600"), 0.2):
            print("cancelled: the command is gone")
        after = await sandbox.run("ps -eo args | grep -c '^sleep 600' || true")
        print(f"sleep processes left: {after.stdout.decode().strip()}")

        # A persistent bash for the agent: state carries over, and cancelling a call stops
        # only its command.
        async with await sandbox.shell(program="/bin/bash") as sh:
            await sh.run("cd /tmp && export STEP=1")
            await cancel_after(sh.run("sleep 600"), 0.2)
            state = (await sh.run("echo $PWD $STEP")).stdout.decode().strip()
            print(f"shell after a cancelled call: {state}")
        ok = lines == 3 and runaway.timed_out and after.stdout.strip() == b"0"
        return 0 if ok and state == "/tmp 1" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
