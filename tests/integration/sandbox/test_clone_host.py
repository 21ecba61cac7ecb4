"""What a clone needs of the kernel (``template.host_refusal``): user extended attributes on
tmpfs, where a clone's overlay keeps its whiteouts and opaque directories.  Where the kernel
has them, a clone removes and remakes a directory of its image like a container does; where
it has not (Linux before 6.6: Debian 12's 6.1), ``Pool(clones=True)`` says so and leaves
nothing behind, instead of clones whose ``rm -rf`` of an image directory fails with EIO."""

from __future__ import annotations

import os

import pytest

import lxcbind
from lxcbind.errors import SandboxError
from lxcbind.lxc.container import default_lxcpath
from tests.conftest import CLONE_REFUSAL, IS_ROOT, NATIVE_ERROR, new_name

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

# A directory of the image with entries (no bind mount in it, unlike /etc): its entries go
# first (whiteouts), then the directory (a whiteout over a merged directory), then it is made
# again (an opaque directory).
REMAKE = ("set -e; test -n \"$(ls -A /var)\"; rm -rf /var; test ! -e /var; mkdir /var; "
          "echo fresh > /var/x; ls -A /var; "
          "python3 -c 'import os; os.setxattr(\"/var/x\", \"user.t\", b\"1\"); "
          "print(os.getxattr(\"/var/x\", \"user.t\").decode())'")


def policy() -> dict[str, object]:
    return {"version": "0.8.0", "containerId": new_name("clonehost-"),
            "process": {"commandLine": "true"}}


@pytest.mark.skipif(CLONE_REFUSAL is not None, reason=str(CLONE_REFUSAL))
def test_a_clone_removes_and_remakes_a_directory_of_its_image() -> None:
    with lxcbind.Pool(policy(), size=1, clones=True) as pool:
        r = pool.run(["sh", "-c", REMAKE])
        assert (r.returncode, r.stdout, r.stderr) == (0, b"x\n1\n", b""), r
        # The next clone has the image's /var again.
        again = pool.run(["sh", "-c", "test ! -e /var/x && ls -A /var"])
        assert again.returncode == 0 and again.stdout, again


@pytest.mark.skipif(CLONE_REFUSAL is None, reason="this kernel has user xattrs on tmpfs")
def test_clones_are_refused_where_tmpfs_has_no_user_xattrs() -> None:
    p = policy()
    with pytest.raises(SandboxError, match=r"Linux 6\.6 or later.*clones=False"):
        lxcbind.Pool(p, size=1, clones=True)
    assert not os.path.exists(os.path.join(default_lxcpath(), str(p["containerId"])))
    # A container Pool of the same policy works there.
    with lxcbind.Pool(p, size=1) as pool:
        assert pool.run(["sh", "-c", REMAKE]).stdout == b"x\n1\n"
