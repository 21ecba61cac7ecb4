"""The starter's PATH: liblxc must find unprivileged stand-ins of shadow's newuidmap and
newgidmap first, so that it writes the id maps itself instead of starting /bin/sh and the real
tools (four programs) at every container start (``lxc.container.STARTER_PATH``)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from lxcbind.lxc import container


@pytest.mark.parametrize("tool", ["newuidmap", "newgidmap"])
def test_the_first_id_map_tool_on_the_starters_path_is_an_unprivileged_stand_in(
        tool: str) -> None:
    found = shutil.which(tool, path=container.STARTER_PATH)
    assert found == os.path.join(container.NO_IDMAP_TOOLS, tool)
    st = os.stat(found)
    # what liblxc's idmaptool_on_path_and_privileged asks: executable, but neither setuid nor
    # given CAP_SETUID/CAP_SETGID
    assert st.st_mode & 0o111 and not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    with pytest.raises(OSError):
        os.getxattr(found, "security.capability")
    assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    # and were it run, it changes nothing
    r = subprocess.run([found, "1", "0", "0", "1"], capture_output=True, timeout=30)
    assert r.returncode == 1 and r.stdout == r.stderr == b""


def test_the_rest_of_the_starters_path_is_the_usual_one() -> None:
    """What liblxc may still look up (``apparmor_parser`` for a generated profile, a hook's
    commands) is found where it would be without the stand-ins."""
    rest = container.STARTER_PATH.split(":", 1)[1]
    assert rest == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert sorted(os.listdir(container.NO_IDMAP_TOOLS)) == ["newgidmap", "newuidmap"]
