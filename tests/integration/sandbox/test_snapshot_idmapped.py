"""A snapshot's layers reach an unprivileged container as idmapped, read-only mounts of the one
stored copy (``imagefs.lowers``), not as a copy per id range: what the container sees, what
its root can and cannot do to the layer, that the host keeps no mount, and a kept container
that starts again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

import lxcbind
from lxcbind.image import snapshot as snapshots
from lxcbind.image import store
from lxcbind.sandbox import idmap
from tests.conftest import new_name, requires_lxc, requires_root
from tests.integration.sandbox.test_snapshot import made, mounts_mentioning, pol

pytestmark = [requires_root, requires_lxc]
_ = made   # the fixture: snapshots removed, nothing of the test's containers left

LXCPATH = lxcbind.default_lxcpath()

SETUP = """
set -e
mkdir -p /opt/layer/dir /home/u
echo original > /opt/layer/file
echo run > /opt/layer/tool && chmod 755 /opt/layer/tool
echo old > /opt/layer/old
echo u > /home/u/owned && chmod 644 /home/u/owned && chown -R 1000:1001 /home/u
"""   # (the modes written out: a command's umask is its caller's, whatever the test runner's)

# Root of a fork goes after the lower layer with real syscalls.  Each line prints what
# happened; the overlay copies a changed file up, so the fork's own view changes, and the
# stored layer must not.
ATTACK = r"""
import os, errno
def attempt(what, fn):
    try:
        fn()
        print(what, "ok")
    except OSError as exc:
        print(what, errno.errorcode.get(exc.errno, exc.errno))
def append():
    with open("/opt/layer/file", "a") as f:
        f.write("changed\n")
attempt("append", append)
attempt("chmod", lambda: os.chmod("/opt/layer/tool", 0o4777))
attempt("chown", lambda: os.chown("/home/u/owned", 5, 5))
attempt("utime", lambda: os.utime("/opt/layer/tool", (1, 1)))
attempt("xattr", lambda: os.setxattr("/opt/layer/tool", "user.overlay.redirect", b"/etc"))
attempt("unlink", lambda: os.unlink("/home/u/owned"))
attempt("rename", lambda: os.rename("/opt/layer/old", "/opt/layer/moved"))
# The lower layer's own path, as the overlay names it: unreachable from inside.
opts = [l for l in open("/proc/self/mountinfo") if " / / " in l][0]
lower = opts.split("lowerdir=")[1].split(",")[0].split(":")[0]
attempt("open-lower", lambda: os.open(lower + "/opt/layer/file", os.O_WRONLY | os.O_TRUNC))
print("lower-mounted", any(f" {lower} " in l for l in open("/proc/self/mountinfo")))
print("lower", lower)
"""


def fingerprint(root: str) -> str:
    """Every entry of ``root``: path, mode, owner, size, modify time, xattrs, content."""
    h = hashlib.sha256()
    for path, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(path, name)
            st = os.lstat(p)
            h.update(f"{p}|{st.st_mode}|{st.st_uid}|{st.st_gid}|{st.st_size}|"
                     f"{st.st_mtime_ns}|{sorted(os.listxattr(p, follow_symlinks=False))}"
                     .encode())
            if os.path.isfile(p) and not os.path.islink(p):
                h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_forks_share_the_stored_layer_read_only_through_idmapped_mounts(made):
    with lxcbind.Sandbox(pol()) as box:
        assert box.run(SETUP).returncode == 0
        snap = box.snapshot()
        made.append(snap)
    before = fingerprint(snap.layer)
    with lxcbind.Sandbox(pol(), image=snap) as a, lxcbind.Sandbox(pol(), image=snap) as b:
        ranges = {idmap.held_ranges()[x.name].start for x in (a, b)}
        assert len(ranges) == 2
        # Owners as the snapshot had them, in each container's own ids.
        for box in (a, b):
            r = box.run("stat -c '%u:%g' /opt/layer/file /home/u/owned; cat /opt/layer/file",
                        text=True)
            assert r.stdout.split() == ["0:0", "1000:1001", "original"]
        # The host holds no mount of the layer once they run, and no copy per id range.
        assert not mounts_mentioning(os.path.join(LXCPATH, a.name))
        assert not [e for e in os.listdir(store.IMAGES_ROOT)
                    if e.startswith(os.path.basename(snap.path) + "@")]
        r = a.run(["python3", "-c", ATTACK], text=True)
        assert r.returncode == 0, r.stderr
        got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        # Overlay semantics: each change lands in a's own upper layer...
        for what in ("append", "chmod", "chown", "utime", "unlink", "rename"):
            assert got[what] == "ok", (what, got)
        # (an overlay attribute set from inside is escaped by the kernel or refused: either
        # way, the fingerprint below says the stored layer did not get it) ...and the lower
        # layer's path leads nowhere.
        assert got["lower"].startswith(os.path.join(LXCPATH, a.name, idmap.STAGING))
        assert got["open-lower"] == "ENOENT"
        assert got["lower-mounted"] == "False"
        assert a.run("cat /opt/layer/file; stat -c %a /opt/layer/tool; ls /opt/layer",
                     text=True).stdout.split() == ["original", "changed", "4777", "dir",
                                                   "file", "moved", "tool"]
        # b and the stored layer are untouched.
        assert b.run("cat /opt/layer/file; stat -c '%a %u' /opt/layer/tool /home/u/owned",
                     text=True).stdout.split() == ["original", "755", "0", "644", "1000"]
        # Remounting the root read-write (it is) or over the lower path is of no use either.
        r = a.run(f"mount -o remount,rw / && mount -o remount,rw {got['lower']}; "
                  f"echo x > {got['lower']}/opt/layer/file", text=True)
        assert r.returncode != 0
        assert fingerprint(snap.layer) == before
    assert fingerprint(snap.layer) == before


def test_a_kept_container_on_a_snapshot_starts_again(made):
    with lxcbind.Sandbox(pol()) as box:
        box.run("echo kept-layer > /root/from-snapshot")
        snap = box.snapshot()
        made.append(snap)
    name = new_name("snap-kept-")
    doc = {"version": "0.8.0", "containerId": name, "lifecycle": {"destroyOnExit": False}}
    try:
        for i in range(2):
            with lxcbind.Sandbox(doc, image=snap) as box:
                assert box.reused == (i == 1)
                r = box.run(f"cat /root/from-snapshot; echo {i} >> /root/runs; cat /root/runs",
                            text=True)
                assert r.stdout.split() == ["kept-layer", *[str(j) for j in range(i + 1)]]
            # (a kept container's disk layer stays mounted; its layer mounts do not)
            assert not mounts_mentioning(os.path.join(LXCPATH, name, idmap.STAGING))
            # The stopped container still counts as a user of the layer.
            assert name in store.users(store.get(snap.id), LXCPATH)
            with pytest.raises(lxcbind.errors.ImageError, match="in use"):
                snapshots.remove(snap, LXCPATH)
    finally:
        lxcbind.sandbox.core.delete_container(name)
    assert not mounts_mentioning(os.path.join(LXCPATH, name))


def test_a_runner_killed_with_the_layers_mounted_leaves_nothing_after_gc(made):
    import subprocess
    import sys
    import textwrap

    with lxcbind.Sandbox(pol()) as box:
        box.run("echo x > /root/x")
        snap = box.snapshot()
        made.append(snap)
    name = new_name("snap-killed-")
    # The runner dies where the layers are mounted on the host and liblxc would start.
    script = textwrap.dedent(f"""
        import os, lxcbind
        from lxcbind.lxc.container import Container
        def die(self, *args, **kwargs):
            print(open("/proc/self/mountinfo").read().count("/{name}/"), flush=True)
            os.kill(os.getpid(), 9)
        Container.start = die
        lxcbind.Sandbox({pol(containerId=name)!r}, image={snap.id!r}).open()
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == -9, done.stderr
    assert int(done.stdout) >= 1   # the layer's mount was there when it died
    assert mounts_mentioning(os.path.join(LXCPATH, name, idmap.STAGING))
    assert name in store.users(store.get(snap.id), LXCPATH)
    lxcbind.gc()
    assert name not in lxcbind.list_containers()
    assert not mounts_mentioning(os.path.join(LXCPATH, name))
    assert not os.path.lexists(os.path.join(LXCPATH, name))


def test_where_the_kernel_cannot_idmap_a_layer_each_range_gets_a_shifted_copy(made, monkeypatch):
    import errno

    from lxcbind.lxc import hostmount
    from lxcbind.sandbox import imagefs

    with lxcbind.Sandbox(pol()) as box:
        box.run("echo x > /root/x && chown 1000 /root/x")
        snap = box.snapshot()
        made.append(snap)

    def refused(source: str, *args: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument", source)   # what 6.1 says for tmpfs

    monkeypatch.setattr(imagefs, "_NO_IDMAP", [])
    monkeypatch.setattr(hostmount, "idmapped_bind", refused)
    with lxcbind.Sandbox(pol(), image=snap) as box:
        assert box.run("stat -c %u /root/x; cat /root/x", text=True).stdout.split() == \
            ["1000", "x"]
        start = idmap.held_ranges()[box.name].start
        copy = os.path.join(store.IMAGES_ROOT, f"{os.path.basename(snap.path)}@{start}")
        assert os.stat(os.path.join(copy, "rootfs", "root", "x")).st_uid == start + 1000
    assert imagefs._NO_IDMAP == [errno.EINVAL]


def test_the_idmapped_layer_mount_shifts_owners_and_is_read_only_nosuid_nodev(tmp_path):
    from lxcbind.lxc import hostmount

    layer, target = tmp_path / "layer", tmp_path / "mnt"
    (layer / "d").mkdir(parents=True)
    (layer / "d" / "f").write_text("stored\n")
    os.chown(layer / "d" / "f", 1000, 1001)
    os.chown(layer / "d", 70000, 0)   # beyond the range: the overflow id
    target.mkdir()
    start = idmap.FIRST_ID + 12345 * idmap.RANGE   # a range no container holds
    hostmount.idmapped_bind(str(layer), str(target), start, idmap.RANGE)
    try:
        line = [m for m in mounts_mentioning(str(target)) if f" {target} " in m][0]
        options = line.split()[5].split(",")
        assert {"ro", "nosuid", "nodev", "idmapped"} <= set(options), line
        assert os.stat(target / "d" / "f")[4:6] == (start + 1000, start + 1001)
        assert os.stat(target)[4:6] == (start, start)
        assert os.stat(target / "d").st_uid == 65534
        for attempt in (lambda: (target / "d" / "f").write_text("x"),
                        lambda: os.chmod(target / "d" / "f", 0o777),
                        lambda: os.chown(target / "d" / "f", 0, 0),
                        lambda: (target / "new").touch()):
            with pytest.raises(OSError) as caught:   # even host root
                attempt()
            assert caught.value.errno == 30   # EROFS
    finally:
        assert hostmount.detach(str(target))
    assert not mounts_mentioning(str(target))
    assert (layer / "d" / "f").read_text() == "stored\n"
    assert os.stat(layer / "d" / "f")[4:6] == (1000, 1001)
