"""asyncio: ``AsyncSession`` and ``AsyncPool``, driven by the event loop's own readers.

A command's pipes, its report socket and its pidfd are watched with ``loop.add_reader``: no
thread waits for a command, so cancelling the task that awaits ``run()`` (``asyncio.wait_for``,
``TaskGroup``, Ctrl-C in ``asyncio.run``) kills the command's process group from the host at
once, and nothing of it survives.  Output rules are the bridge's (``lxcbind.proc.bridge``): input
then EOF, output drained after exit until it stays quiet for 0.1 s (2 s at most: a background
process holding the pipe), timeout = SIGTERM to the group then SIGKILL after ``kill_grace``.

Setting a sandbox up and tearing it down are blocking liblxc calls of a few tens of
milliseconds; they run in the loop's default executor (a cancelled set-up is torn down as soon
as it finishes).  Starting a command waits for the spawner's START record (well under a
millisecond) on the loop's thread.

    async with lxcbind.AsyncSession.from_policy(policy) as s:
        r = await s.run("make test", timeout=60)
        async for stream, chunk in s.stream("pytest -x"):   # ("stdout" | "stderr", bytes)
            ...
        async with await s.shell(program="/bin/bash") as sh:  # state kept across calls
            await sh.run("cd /tmp")
            print((await sh.run("pwd")).stdout)                # b"/tmp\n"

``AsyncShell`` drives the framing of the persistent shell (``lxcbind.proc.shell``) on the
loop's readers too: cancelling ``sh.run()`` interrupts only the running command (SIGINT to it,
then SIGKILL to its processes but the shell), and the shell keeps its state; only when the
shell itself does not come back (``trap '' INT`` and a builtin loop) is it killed, and the
loss is reported as the sync ``Shell`` reports it (``ShellDied``, or with ``restart=True`` a
new shell and ``shell_restarted=True`` on the next result).
"""

from lxcbind.aio.session import AsyncPool as AsyncPool
from lxcbind.aio.session import AsyncSession as AsyncSession
from lxcbind.aio.shell import AsyncShell as AsyncShell

__all__ = ["AsyncPool", "AsyncSession", "AsyncShell"]
