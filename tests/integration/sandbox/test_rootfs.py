"""Root filesystems: host skeleton, cached busybox base, dir, download (offline)."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from lxcbind.errors import SandboxError
from lxcbind.lxc.container import default_lxcpath
from lxcbind.policy.model import Rootfs
from lxcbind.sandbox.rootfs import (
    base_dir,
    define_container,
    ensure_base,
    remove_container,
)
from tests.conftest import new_name, requires_lxc, requires_root
from tests.integration.sandbox.test_mounts import sh

pytestmark = [requires_root, requires_lxc]


@pytest.fixture
def define(container_name):
    """``define(spec, **kw)`` → a defined container; removed (and checked gone) afterwards."""
    made = []

    def make(spec, name=None, **kw):
        c = define_container(name or container_name, spec, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        cdir = os.path.join(c.lxcpath, c.name)
        remove_container(c)
        remove_container(c)  # idempotent
        assert not c.defined
        c.close()
        assert not os.path.exists(cdir)


def snapshot(root: str) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_host_rootfs(define):
    t0 = time.monotonic()
    c = define(Rootfs("host"))
    c.start()
    assert c.attach(["/bin/true"]).wait(timeout=10) == 0
    elapsed = time.monotonic() - t0
    print(f"host define+start+true: {elapsed * 1000:.0f} ms")
    rc, out = sh(c, "/usr/bin/python3 -c 'print(6*7)'; ls /; cat /etc/gshadow; "
                    "touch /usr/x; id -un; awk 'BEGIN{print \"awk\"}'")
    assert "42" in out and "usr" in out.split() and "root" in out and "awk" in out.split()
    assert "No such file" in out and "Read-only file system" in out
    rc, out = sh(c, "ls /etc; cat /proc/self/mountinfo")
    for secret in ("gshadow", "ssh"):
        assert secret not in out.split()
    # /etc/shadow is generated (PAM needs root's entry): no password, never the host's
    rc, out = sh(c, "stat -c %a /etc/shadow; cut -d: -f2 /etc/shadow | sort -u")
    assert out.split() == ["600", "*"]
    rc, out = sh(c, "ip -o link 2>/dev/null || cat /proc/net/dev")
    assert "eth0" not in out and "lo" in out


def test_host_rootfs_is_fast(container_name):
    # Measured for the report: the whole life of a one-command container.
    times = []
    for i in range(3):
        t0 = time.monotonic()
        c = define_container(f"{container_name}{i}", Rootfs("host"))
        try:
            c.start()
            c.attach(["/bin/true"]).wait(timeout=10)
        finally:
            remove_container(c)
            c.close()
        times.append(time.monotonic() - t0)
    print("host define+start+true+destroy (ms):", [round(t * 1000) for t in times])
    assert min(times) < 1.0


def test_writes_are_thrown_away(define, container_name):
    c = define(Rootfs("host"))
    c.start()
    assert sh(c, "echo x > /etc/newfile && echo y > /root/f && cat /etc/newfile")[0] == 0
    remove_container(c)
    c2 = define(Rootfs("host"), name=container_name + "b")
    c2.start()
    rc, _ = sh(c2, "test -e /etc/newfile || test -e /root/f")
    assert rc != 0
    assert not os.path.exists(os.path.join(base_dir(Rootfs("host")), "rootfs", "etc", "newfile"))


def test_busybox_base_built_once_and_never_modified(define, container_name):
    base = ensure_base(Rootfs("busybox"))
    assert ensure_base(Rootfs("busybox")) == base
    before = snapshot(base)
    t0 = time.monotonic()
    c = define(Rootfs("busybox"))
    c.start()
    print(f"cached busybox define+start: {(time.monotonic() - t0) * 1000:.0f} ms")
    rc, out = sh(c, "echo x > /bin/added && rm /bin/ls && echo y > /etc/inittab && busybox true")
    assert rc == 0, out
    remove_container(c)
    assert snapshot(base) == before
    t0 = time.monotonic()
    c2 = define(Rootfs("busybox"), name=container_name + "b")
    assert time.monotonic() - t0 < 1.0
    c2.start()
    rc, out = sh(c2, "ls /bin/added; ls /bin/ls")
    assert "/bin/ls" in out and "No such file" in out


def test_dir_rootfs(define, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(os.path.join(ensure_base(Rootfs("busybox")), "rootfs"), root,
                    symlinks=True)
    (root / "marker").write_text("from dir")
    c = define(Rootfs("dir", path=str(root)))
    c.start()
    rc, out = sh(c, "cat /marker && echo new > /marker && echo z > /added")
    assert rc == 0 and "from dir" in out
    assert (root / "marker").read_text() == "from dir" and not (root / "added").exists()


def test_dir_rootfs_refusals(tmp_path, container_name):
    lxcdir = os.path.join("/var/lib/lxc", container_name)
    for path, why in ((str(tmp_path / "nope"), "does not exist"), (str(tmp_path), "/bin/sh"),
                      ("relative", "absolute")):
        with pytest.raises(SandboxError, match=why):
            define_container(container_name, Rootfs("dir", path=path))
        assert not os.path.exists(lxcdir)


def test_download_offline_fails_fast_with_cache_hint(container_name):
    spec = Rootfs("download", distribution="debian", release=new_name("rel-"), arch="amd64")
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as info:
        define_container(container_name, spec)
    assert time.monotonic() - t0 < 5
    message = str(info.value)
    assert "could not be fetched" in message and "--force-cache" in message
    assert f"/var/cache/lxc/download/debian/{spec.release}/amd64/default" in message
    assert not os.path.exists(os.path.join("/var/lib/lxc", container_name))
    assert not os.path.exists(base_dir(spec))
    assert not [n for n in os.listdir(os.path.dirname(base_dir(spec))) if spec.release in n]


def test_failed_define_leaves_nothing(container_name):
    with pytest.raises(SandboxError, match="lxc.nonsense"):
        define_container(container_name, Rootfs("host"), config=[("lxc.nonsense", "1")])
    assert not os.path.exists(os.path.join("/var/lib/lxc", container_name))


def test_existing_container_refused(define, container_name):
    define(Rootfs("host"))
    with pytest.raises(SandboxError, match="already exists"):
        define_container(container_name, Rootfs("host"))


def test_concurrent_base_builds_share_one(monkeypatch, tmp_path):
    import threading

    import lxcbind.sandbox.rootfs as rootfs

    monkeypatch.setattr(rootfs, "BASES_ROOT", str(tmp_path / "bases"))
    results, errors = [], []

    def build():
        try:
            results.append(ensure_base(Rootfs("busybox")))
        except BaseException as exc:  # reported below
            errors.append(exc)

    t0 = time.monotonic()
    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print(f"busybox base first build (3 concurrent callers): {time.monotonic() - t0:.2f} s")
    assert not errors and len(set(results)) == 1 and len(results) == 3
    left = [n for n in os.listdir(tmp_path / "bases") if not n.endswith(".lock")]
    assert left == [os.path.basename(results[0])]  # no half-built temp dir
    assert os.path.isfile(os.path.join(results[0], "rootfs", "bin", "busybox"))


def test_download_from_seeded_cache(define, tmp_path):
    """The offline path: an image already in LXC's cache is used with --force-cache."""
    import subprocess

    dist = new_name("dist-")
    spec = Rootfs("download", distribution=dist, release="r1", arch="amd64")
    cache = f"/var/cache/lxc/download/{dist}/r1/amd64/default"
    os.makedirs(cache)
    try:
        busybox_root = os.path.join(ensure_base(Rootfs("busybox")), "rootfs")
        subprocess.run(["tar", "-C", busybox_root, "--numeric-owner", "-cf",
                        f"{cache}/rootfs.tar.xz", "-I", "xz -0 -T2", "."], check=True)
        with open(f"{cache}/config", "w") as f:
            f.write("lxc.include = /usr/share/lxc/config/common.conf\nlxc.arch = x86_64\n")
        c = define(spec)
        c.start()
        rc, out = sh(c, "busybox true && ls /bin/busybox")
        assert rc == 0, out
        assert os.path.isdir(base_dir(spec))
    finally:
        shutil.rmtree(f"/var/cache/lxc/download/{dist}", ignore_errors=True)
        shutil.rmtree(base_dir(spec), ignore_errors=True)
        key = os.path.basename(base_dir(spec))
        lock = os.path.join(os.path.dirname(base_dir(spec)), f".{key}.lock")
        if os.path.exists(lock):
            os.unlink(lock)


def test_gc_prunes_stale_unused_bases_only(tmp_path):
    """A base whose key went stale is removed by gc unless a container's overlay uses it."""
    import uuid

    from lxcbind.sandbox import rootfs
    from lxcbind.sandbox.core import gc

    current = rootfs.ensure_base(rootfs.Rootfs("busybox"))
    stale = os.path.join(rootfs.BASES_ROOT, f"busybox-stale{uuid.uuid4().hex[:6]}")
    used = os.path.join(rootfs.BASES_ROOT, f"busybox-used{uuid.uuid4().hex[:6]}")
    name = new_name()
    cdir = os.path.join(default_lxcpath(), name)
    for d in (stale, used):
        os.makedirs(os.path.join(d, "rootfs"))
    os.makedirs(cdir)
    try:
        with open(os.path.join(cdir, "config"), "w") as f:
            f.write(f"lxc.rootfs.path = overlay:{used}/rootfs:{cdir}/delta0\n")
        gc()
        assert not os.path.exists(stale)
        assert os.path.isdir(used) and os.path.isdir(current)
    finally:
        shutil.rmtree(cdir, ignore_errors=True)
        for d in (stale, used):
            shutil.rmtree(d, ignore_errors=True)


def test_gc_prunes_shifted_copies_of_stale_bases_and_keeps_current_ones(tmp_path):
    """Shifted copies (``<key>@<start>``) go with their base: a stale base's copy is pruned
    once unused for the grace period; a current base's copy stays."""
    import time
    import uuid

    from lxcbind.sandbox import rootfs
    from lxcbind.sandbox.core import gc
    from lxcbind.sandbox.idmap import FIRST_ID

    current = os.path.basename(rootfs.ensure_base(rootfs.Rootfs("busybox")))
    stale_key = f"busybox-stale{uuid.uuid4().hex[:6]}"
    made = {
        "stale copy, old": os.path.join(rootfs.BASES_ROOT, f"{stale_key}@{FIRST_ID}"),
        "stale copy, just used": os.path.join(rootfs.BASES_ROOT, f"{stale_key}@{FIRST_ID * 2}"),
        "current copy, old": os.path.join(rootfs.BASES_ROOT, f"{current}@{FIRST_ID + 7}"),
    }
    try:
        for path in made.values():
            os.makedirs(os.path.join(path, "rootfs"))
        long_ago = time.time() - 2 * rootfs._PRUNE_GRACE
        for label in ("stale copy, old", "current copy, old"):
            os.utime(made[label], (long_ago, long_ago))
        gc()
        assert not os.path.exists(made["stale copy, old"])
        assert os.path.isdir(made["stale copy, just used"])
        assert os.path.isdir(made["current copy, old"])
    finally:
        for path in made.values():
            shutil.rmtree(path, ignore_errors=True)
