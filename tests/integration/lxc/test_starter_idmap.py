"""liblxc's start in ``lxcbind-starter`` writes the id maps itself, even where shadow's
privileged newuidmap and newgidmap are installed (``lxc.container.STARTER_PATH``).

A real container start through liblxc, with a *privileged* (setuid) newuidmap and newgidmap on
the starter's PATH that record being run and map nothing: found first, liblxc runs them and
the start fails (the control); behind lxcbind's unprivileged stand-ins, liblxc never runs them
and the container gets its private id range all the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lxcbind
from lxcbind.lxc import container
from lxcbind.sandbox.idmap import FIRST_ID, RANGE
from tests.conftest import IS_ROOT, NATIVE_ERROR

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

POLICY = {"version": "0.8.0", "process": {"commandLine": "true"}}
REST = container.STARTER_PATH.split(":", 1)[1]


def shadow_tools(folder: Path) -> Path:
    """A directory with setuid-marked newuidmap and newgidmap that leave a mark and fail."""
    tools = folder / "shadow"
    tools.mkdir()
    for tool in ("newuidmap", "newgidmap"):
        path = tools / tool
        path.write_text(f"#!/bin/sh\necho \"$@\" > {folder / (tool + '.ran')}\nexit 1\n")
        os.chmod(path, 0o4755)   # what liblxc takes for privileged
    return tools


def test_liblxc_writes_the_maps_itself_behind_the_stand_ins(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    tools = shadow_tools(tmp_path)
    monkeypatch.setattr(container, "_STARTER_ENV", {"PATH": f"{tools}:{REST}"})
    with pytest.raises(lxcbind.LxcbindError):
        lxcbind.run("true", policy=POLICY, timeout=60)
    assert (tmp_path / "newuidmap.ran").exists()   # the control: liblxc did use it
    (tmp_path / "newuidmap.ran").unlink()
    monkeypatch.setattr(container, "_STARTER_ENV",
                        {"PATH": f"{container.NO_IDMAP_TOOLS}:{tools}:{REST}"})
    r = lxcbind.run("cat /proc/self/uid_map /proc/self/gid_map", policy=POLICY, timeout=60)
    assert r.returncode == 0, r
    maps = [line.split() for line in r.stdout.decode().splitlines()]
    assert len(maps) == 2
    for inside, outside, count in maps:
        assert inside == "0" and int(count) == RANGE and int(outside) >= FIRST_ID, maps
    assert maps[0] == maps[1]
    assert not list(tmp_path.glob("*.ran"))
