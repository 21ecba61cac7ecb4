"""asyncio API: runs on the loop's readers, cancellation kills the command, nothing leaks."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import lxcbind
from tests.conftest import IS_ROOT, NATIVE_ERROR

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

POLICY = {"version": "0.8.0", "process": {"commandLine": "true"}}


def host_pids_of(pattern: bytes) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").startswith(pattern):
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_run_captures_like_session_run() -> None:
    async def main() -> lxcbind.CompletedRun:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            return await s.run("echo out; echo err >&2; cat; exit 3", input=b"in\n")
    r = asyncio.run(main())
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\nin\n", b"err\n")


def test_many_commands_run_concurrently_on_one_loop() -> None:
    async def main() -> tuple[list[lxcbind.CompletedRun], float]:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            t = time.monotonic()
            runs = await asyncio.gather(*(s.run(f"sleep 0.5; echo {i}") for i in range(6)))
            return runs, time.monotonic() - t
    runs, elapsed = asyncio.run(main())
    assert [r.stdout for r in runs] == [f"{i}\n".encode() for i in range(6)]
    assert elapsed < 6 * 0.5  # they overlapped: no thread per command, no serialization


def test_cancelling_the_task_kills_the_command() -> None:
    marker = b"sleep 987"

    async def main() -> None:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            task = asyncio.ensure_future(s.run("sleep 987"))
            await asyncio.sleep(0.5)
            assert host_pids_of(marker)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            deadline = time.monotonic() + 5
            while host_pids_of(marker) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not host_pids_of(marker)  # killed at cancellation, session still open
            r = await s.run("echo still-here")
            assert r.stdout == b"still-here\n"
    asyncio.run(main())


def test_timeout_and_streaming() -> None:
    async def main() -> tuple[lxcbind.CompletedRun, list[tuple[str, bytes]]]:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            r = await s.run("echo begun; sleep 30", timeout=0.5)
            chunks = [c async for c in s.stream("for i in 1 2 3; do echo $i; sleep 0.1; done; "
                                                "echo e >&2")]
            return r, chunks
    r, chunks = asyncio.run(main())
    assert r.timed_out and r.stdout == b"begun\n"
    out = b"".join(data for name, data in chunks if name == "stdout")
    assert out == b"1\n2\n3\n" and ("stderr", b"e\n") in chunks
    assert len([c for c in chunks if c[0] == "stdout"]) >= 2  # it streamed, not one blob


def test_async_pool_fresh_container_each() -> None:
    async def main() -> list[lxcbind.CompletedRun]:
        async with lxcbind.AsyncPool(POLICY, size=2) as pool:
            return await asyncio.gather(*(pool.run("hostname") for _ in range(4)))
    runs = asyncio.run(main())
    names = {r.stdout.strip() for r in runs}
    assert len(names) == 4
    assert not {n.decode() for n in names} & set(lxcbind.list_containers())


def test_async_shell_keeps_state_without_leaking_its_framing() -> None:
    async def main() -> list[lxcbind.CompletedRun]:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            async with await s.shell(program="/bin/bash") as sh:
                return [await sh.run("cd /tmp && export X=42 && f() { echo fn; }"),
                        await sh.run("pwd; echo $X; f; echo to-err >&2; (exit 3)"),
                        await sh.run("sleep 30", timeout=0.5),
                        await sh.run("echo after")]
    first, second, timed, after = asyncio.run(main())
    assert (first.returncode, first.stdout, first.stderr) == (0, b"", b"")
    assert (second.returncode, second.stdout, second.stderr) == (3, b"/tmp\n42\nfn\n",
                                                                 b"to-err\n")
    assert timed.timed_out and timed.returncode == 130
    assert after.stdout == b"after\n" and not after.shell_restarted


def test_cancelling_an_async_shell_call_interrupts_only_the_command() -> None:
    marker = b"sleep 6543"

    async def main() -> lxcbind.CompletedRun:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            async with await s.shell(program="/bin/bash") as sh:
                await sh.run("cd /tmp; X=5")
                task = asyncio.ensure_future(sh.run("sleep 6543; echo not-reached"))
                await asyncio.sleep(0.5)
                assert host_pids_of(marker)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert not host_pids_of(marker)   # gone by the time the cancel returned
                assert sh.alive
                return await sh.run("pwd; echo $X")
    r = asyncio.run(main())
    assert (r.stdout, r.stderr) == (b"/tmp\n5\n", b"")   # the state survived
    assert not r.shell_restarted


@pytest.mark.parametrize("restart", [False, True])
def test_cancel_of_a_shell_that_ignores_sigint_reports_the_loss(restart: bool) -> None:
    async def main() -> lxcbind.CompletedRun | Exception:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            async with await s.shell(program="/bin/bash", restart=restart) as sh:
                await sh.run("cd /tmp")
                task = asyncio.ensure_future(
                    sh.run("trap '' INT; while :; do :; done", kill_grace=0.3))
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert not sh.alive   # the shell itself was what ran: it had to go
                try:
                    return await sh.run("pwd")
                except lxcbind.ShellDied as exc:
                    return exc
    got = asyncio.run(main())
    if restart:
        assert isinstance(got, lxcbind.CompletedRun)
        assert got.shell_restarted and got.stdout == b"/\n"   # a new shell: state lost
    else:
        assert isinstance(got, lxcbind.ShellDied)
        assert "state" in str(got) and "restart()" in str(got)


def test_async_pool_checks_keywords_before_taking_a_container_and_maps_in_order() -> None:
    async def main() -> list[lxcbind.CompletedRun]:
        async with lxcbind.AsyncPool(POLICY, size=2) as pool:
            with pytest.raises(TypeError, match=r"^AsyncPool\.run\(\) got an unexpected "
                                                r"keyword argument 'timout'"):
                await pool.run("true", timout=3)  # type: ignore[call-arg]
            with pytest.raises(TypeError, match=r"^AsyncPool\.run\(\): timeout must be"):
                await pool.run("true", timeout="3")  # type: ignore[typeddict-item]
            assert pool.pool.ready <= 2
            return await pool.map([f"echo {i}" for i in range(4)], timeout=30, text=True)
    runs = asyncio.run(main())
    assert [r.stdout for r in runs] == [f"{i}\n" for i in range(4)]


def test_async_run_checks_arguments_and_takes_text() -> None:
    async def main() -> lxcbind.CompletedRun:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            with pytest.raises(TypeError, match=r"^AsyncSession\.run\(\): env must be"):
                await s.run("true", env=["A=1"])  # type: ignore[arg-type]
            return await s.run("printf '\\303\\251'", text=True)
    assert asyncio.run(main()).stdout == "é"


def test_async_shell_timeout_of_a_shell_that_ignores_sigint_restarts_it() -> None:
    async def main() -> tuple[lxcbind.CompletedRun, lxcbind.CompletedRun]:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            async with await s.shell(program="/bin/bash", restart=True) as sh:
                await sh.run("cd /tmp")
                stuck = await sh.run("trap '' INT; while :; do :; done", timeout=0.3,
                                     kill_grace=0.3)
                return stuck, await sh.run("pwd")
    stuck, after = asyncio.run(main())
    assert stuck.timed_out and stuck.returncode == 137 and stuck.shell_restarted
    assert after.stdout == b"/\n" and not after.shell_restarted   # a new shell, reported once


def test_async_shell_timeout_interrupts_again_while_no_status_comes() -> None:
    # As Shell (they share the framing): a first SIGINT that only runs a self-removing trap
    # is followed by another, so the call ends interrupted (130) and the shell keeps its state.
    async def main() -> tuple[lxcbind.CompletedRun, lxcbind.CompletedRun]:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            async with await s.shell() as sh:
                await sh.run("cd /tmp")
                stuck = await sh.run("trap 'trap - INT' INT; while :; do :; done", timeout=0.3)
                return stuck, await sh.run("pwd")
    stuck, after = asyncio.run(main())
    assert stuck.timed_out and stuck.returncode == 130 and not stuck.shell_restarted, stuck
    assert after.stdout == b"/tmp\n"


def test_async_shell_timeout_returns_only_once_the_shell_took_its_sigint(monkeypatch) -> None:
    # As test_session.py's test of Shell (late_sigint.py forces the window): the call waits
    # until the shell has taken its SIGINT, so none reaches the shell during the next call.
    from tests.integration.proc.late_sigint import LateSigint

    async def main() -> tuple[lxcbind.CompletedRun, bool, LateSigint, lxcbind.CompletedRun]:
        async with lxcbind.AsyncSession.from_policy(POLICY) as s:
            async with await s.shell() as sh:
                await sh.run("cd /tmp")
                late = LateSigint(sh.shell)
                late.install(monkeypatch)
                try:
                    r = await sh.run("sleep 1", timeout=0.3, kill_grace=30)
                    early = late.stopped_with_sigint()
                finally:
                    late.release()
                monkeypatch.undo()
                return r, early, late, await sh.run("pwd", timeout=30)
    r, early, late, after = asyncio.run(main())
    assert not early, "the call returned before the shell took its SIGINT"
    late.check()
    assert r.timed_out and r.returncode == 130, r
    assert after.stdout == b"/tmp\n"
