"""A workload that floods its output cannot grow the caller's memory: every collecting API
keeps ``lxcbind.DEFAULT_MAX_OUTPUT`` bytes per stream unless the call says otherwise.

Each call runs in a child interpreter that reports its own peak RSS (``VmHWM``) before and
after: the test process's memory is not part of the measure, and a regression (everything
kept) shows as ~512 MiB of growth.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lxcbind
from lxcbind.result import omitted_marker
from tests.conftest import destroy_quietly, new_name

FLOOD = 512 << 20        # stdout
ERR_FLOOD = 64 << 20     # stderr (pipe modes)
GROWTH_LIMIT = 128 << 20  # two 16 MiB streams, their joined copies and decoding: far below

CHILD = r"""
import asyncio, json, sys
import lxcbind

api, name, out_size, err_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
extra = json.loads(sys.argv[5])
if extra.pop("unlimited", False):
    extra["max_output"] = lxcbind.UNLIMITED
policy = {"version": "0.8.0", "containerId": name, "process": {"commandLine": "true"}}
cmd = f"head -c {out_size} /dev/zero; head -c {err_size} /dev/zero >&2; echo done >&2"

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

def measured(call):
    call("true")   # everything imported and warm: the growth is the flood's alone
    before = hwm()
    r = call(cmd)
    return r, hwm() - before

if api == "run":
    r, growth = measured(lambda c: lxcbind.run(c, policy=policy, **extra))
elif api == "sandbox":
    with lxcbind.Sandbox(policy) as box:
        r, growth = measured(lambda c: box.run(c, **extra))
elif api == "session":
    with lxcbind.Session.from_policy(policy) as s:
        r, growth = measured(lambda c: s.run(c, **extra))
elif api == "on_output":
    seen = [0]
    def count(stream, chunk):
        seen[0] += len(chunk)
    with lxcbind.Session.from_policy(policy) as s:
        r, growth = measured(lambda c: s.run(c, on_output=count, **extra))
    assert seen[0] >= out_size + err_size, seen   # the callback sees every byte
elif api == "shell":
    with lxcbind.Session.from_policy(policy) as s, s.shell() as sh:
        r, growth = measured(lambda c: sh.run(c, **extra))
elif api == "communicate":
    with lxcbind.Session.from_policy(policy) as s:
        def call(c):
            with s.spawn(c) as p:
                out, err = p.communicate(**extra)
                return lxcbind.CompletedRun(args=[c], returncode=p.returncode, stdout=out,
                                            stderr=err)
        r, growth = measured(call)
elif api == "aio":
    async def main():
        async with lxcbind.AsyncSession.from_policy(policy) as s:
            await s.run("true")
            before = hwm()
            r = await s.run(cmd, **extra)
            return r, hwm() - before
    r, growth = asyncio.run(main())
elif api == "aio_shell":
    async def main():
        async with lxcbind.AsyncSession.from_policy(policy) as s:
            async with await s.shell() as sh:
                await sh.run("true")
                before = hwm()
                r = await sh.run(cmd, **extra)
                return r, hwm() - before
    r, growth = asyncio.run(main())
print(json.dumps({"growth": growth, "returncode": r.returncode, "out_len": len(r.stdout),
                  "err_len": len(r.stderr), "out_tail": r.stdout[-64:].decode("latin-1"),
                  "err_tail": r.stderr[-64:].decode("latin-1"),
                  "truncated": r.truncated, "stdout_truncated": r.stdout_truncated,
                  "stderr_truncated": r.stderr_truncated, "stdout_omitted": r.stdout_omitted,
                  "stderr_omitted": r.stderr_omitted,
                  "marker_in_stdout": b"bytes omitted ...]" in r.stdout}))
"""


def flood(api: str, out_size: int, err_size: int, **extra: object) -> dict[str, object]:
    name = new_name("flood-")
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, api, name, str(out_size),
                               str(err_size), json.dumps(extra)],
                              capture_output=True, text=True, timeout=600)
    finally:
        destroy_quietly(name)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


APIS = ["run", "sandbox", "session", "on_output", "shell", "communicate", "aio", "aio_shell"]


@pytest.mark.parametrize("api", APIS)
def test_a_flood_keeps_the_callers_memory_bounded_by_default(api: str) -> None:
    got = flood(api, FLOOD, ERR_FLOOD)
    cap = lxcbind.DEFAULT_MAX_OUTPUT
    assert got["returncode"] == 0
    assert got["growth"] < GROWTH_LIMIT, f"{api}: the caller grew by {got['growth'] >> 20} MiB"
    assert got["marker_in_stdout"], got
    # communicate returns bytes only: its cut shows as the marker and the sizes
    marker_len = len(omitted_marker(FLOOD - cap))
    assert got["out_len"] == cap + marker_len
    assert got["err_len"] == cap + len(omitted_marker(ERR_FLOOD + 5 - cap))
    assert str(got["err_tail"]).endswith("done\n")   # the tail is kept: the end is there
    if api != "communicate":
        assert got["truncated"] and got["stdout_truncated"] and got["stderr_truncated"]
        assert got["stdout_omitted"] == FLOOD - cap
        assert got["stderr_omitted"] == ERR_FLOOD + 5 - cap


@pytest.mark.parametrize("api", ["session", "shell", "communicate", "aio"])
def test_unlimited_is_an_explicit_choice_that_keeps_everything(api: str) -> None:
    size = lxcbind.DEFAULT_MAX_OUTPUT + (4 << 20)
    got = flood(api, size, 0, unlimited=True)
    assert got["out_len"] == size and got["err_len"] == 5
    assert not got["marker_in_stdout"]
    if api != "communicate":
        assert not got["truncated"] and got["stdout_omitted"] == 0


def test_an_explicit_cap_still_applies() -> None:
    got = flood("session", 1 << 20, 0, max_output=4096)
    assert got["stdout_omitted"] == (1 << 20) - 4096
    assert got["out_len"] == 4096 + len(omitted_marker((1 << 20) - 4096))
