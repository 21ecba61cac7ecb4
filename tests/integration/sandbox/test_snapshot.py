"""Snapshots of a running sandbox and forks, on real containers: what a snapshot keeps
(files, owners, deletions, opaque directories, hard links, sparse files), chains of
snapshots, ``fork(n)`` isolation and lifetime, ``image=`` on every entry point, a hostile
workload's attempts on the capture, consistency under writes, and that nothing is left."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lxcbind
from lxcbind.errors import SandboxError
from lxcbind.image import snapshot as snapshots
from lxcbind.image import store
from lxcbind.sandbox import idmap
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

LXCPATH = lxcbind.default_lxcpath()


def pol(**extra: object) -> dict:
    """A 0.8 deny-all policy with a test container name."""
    return {"version": "0.8.0", "containerId": new_name("snap-"), **extra}


def loops_of(path_prefix: str) -> list[str]:
    """Loop devices whose backing file lies under ``path_prefix``."""
    found = []
    for entry in os.listdir("/sys/block"):
        try:
            backing = Path(f"/sys/block/{entry}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(path_prefix):
            found.append(entry)
    return found


def mounts_mentioning(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if text in line]


@pytest.fixture
def made() -> Iterator[list[snapshots.Snapshot]]:
    """Snapshots a test makes (removed newest first even when it fails), and the check that
    nothing of a test's containers is left: no container, loop device, mount."""
    before = set(lxcbind.list_containers())
    taken: list[snapshots.Snapshot] = []
    yield taken
    for snap in reversed(taken):
        if store.get(snap.id) is not None:
            snapshots.remove(snap, LXCPATH)
    new = {n for n in set(lxcbind.list_containers()) - before
           if n.startswith("lxcbind-test-snap-")}   # forks are named after their source
    assert not new, new
    # A closed sandbox lets its loop device go in the background (``disk.Layer.close``).
    deadline = time.monotonic() + 10
    while loops_of(os.path.join(LXCPATH, "lxcbind-test-snap-")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not loops_of(os.path.join(LXCPATH, "lxcbind-test-snap-"))
    assert not mounts_mentioning("lxcbind-test-snap-")
    assert not mounts_mentioning(store.IMAGES_ROOT)


SETUP = """
set -e
mkdir -p /root/proj/deep/er /home/sandbox/work
echo hello > /root/proj/a.txt
ln /root/proj/a.txt /root/proj/a-link.txt
ln -s ../proj/a.txt /root/proj/rel-link
head -c 300000 /dev/urandom > /root/proj/deep/er/blob
truncate -s 1G /root/proj/sparse
echo tail >> /root/proj/sparse
echo mine > /home/sandbox/work/owned
chown -R 1000:1000 /home/sandbox/work
chmod 4755 /root/proj/a.txt
rm /etc/hostname
rm -r /etc/skel && mkdir /etc/skel && echo only > /etc/skel/only
"""


def test_snapshot_keeps_files_owners_deletions_opaque_dirs_links_and_holes(made):
    with lxcbind.Sandbox(pol()) as box:
        r = box.run(SETUP, text=True)
        assert r.returncode == 0, r.stderr
        lower_skel = sorted(os.listdir("/etc/skel"))
        assert lower_skel != ["only"]   # the base's skel has more than the opaque dir keeps
        snap = box.snapshot(name=new_name("named-"))
        made.append(snap)
        still = box.run("cat /root/proj/a.txt", text=True)   # thawed: the source goes on
        assert still.stdout == "hello\n"
    assert snapshots.load(snap.name).id == snap.id == snapshots.load(snap.id).id
    # On the host: 0-based owners, root-only, the hole not filled in.
    layer = Path(snap.layer)
    assert os.stat(snap.path).st_mode & 0o777 == 0o700
    assert os.stat(layer / "home/sandbox/work/owned").st_uid == 1000
    a = os.stat(layer / "root/proj/a.txt")
    assert (a.st_uid, a.st_mode & 0o7777) == (0, 0o4755)
    sparse = os.stat(layer / "root/proj/sparse")
    assert sparse.st_size > 1 << 30 and sparse.st_blocks * 512 < 1 << 20
    hostname = os.lstat(layer / "etc/hostname")
    assert stat.S_ISCHR(hostname.st_mode) and hostname.st_rdev == 0   # a whiteout
    assert os.getxattr(layer / "etc/skel", "user.overlay.opaque") == b"y"
    assert snap.size < 2 << 20   # data, not the sparse file's length

    with lxcbind.Sandbox(pol(), image=snap) as box:
        r = box.run("cat /root/proj/a.txt /root/proj/rel-link; stat -c '%i %h %a %u' "
                    "/root/proj/a.txt /root/proj/a-link.txt; stat -c %u "
                    "/home/sandbox/work/owned; ls /etc/hostname; ls /etc/skel; "
                    "md5sum < /root/proj/deep/er/blob; tail -c 5 /root/proj/sparse; "
                    "cat /proc/self/uid_map", text=True)
        lines = r.stdout.splitlines()
        assert lines[:2] == ["hello", "hello"]
        ino_a, ino_b = lines[2].split(), lines[3].split()
        assert ino_a == ino_b and ino_a[1:] == ["2", "4755", "0"]   # one inode, two names
        assert lines[4] == "1000"
        assert "No such file" in r.stderr   # the deletion is kept
        assert lines[5:6] == ["only"]   # the opaque directory hides the base's entries
        assert lines[7] == "tail"
        assert lines[8].split()[1] != "0"   # a user namespace: ids shifted into its range


def test_snapshot_of_a_snapshot_is_a_chain(made):
    with lxcbind.Sandbox(pol()) as box:
        box.run("echo one > /root/one; echo gone > /root/gone")
        first = box.snapshot()
        made.append(first)
    with lxcbind.Sandbox(pol(), image=first) as box:
        box.run("echo two > /root/two; rm /root/gone; echo changed > /root/one")
        second = box.snapshot()
        made.append(second)
    assert second.layers == (second.id, first.id) and second.parent == first.id
    r = lxcbind.run("cat /root/one /root/two; ls /root/gone", policy=pol(), image=second.id,
                    text=True)
    assert r.stdout == "changed\ntwo\n" and "No such file" in r.stderr
    with pytest.raises(SandboxError, match="parent of image"):
        snapshots.remove(first, LXCPATH)   # a later snapshot sits on it


def test_fork_gives_isolated_sandboxes_that_outlive_the_source(made):
    box = lxcbind.Sandbox(pol())
    box.open()
    try:
        box.run("echo state > /root/state")
        forks = box.fork(3)
    except BaseException:
        box.close()
        raise
    try:
        ranges = {f.name: idmap.held_ranges()[f.name].start for f in forks}
        ranges[box.name] = idmap.held_ranges()[box.name].start
        assert len(set(ranges.values())) == 4   # own id ranges
        assert len({f.name for f in forks} | {box.name}) == 4
        assert all(f.name.startswith(box.name + "-f") for f in forks)
        for i, f in enumerate(forks):
            assert f.run("cat /root/state", text=True).stdout == "state\n"
            f.run(f"echo {i} > /root/mine")
        box.run("echo source > /root/mine")
        for i, f in enumerate(forks):   # a write in one is seen by none of the others
            assert f.run("cat /root/mine", text=True).stdout == f"{i}\n"
        assert box.run("cat /root/mine", text=True).stdout == "source\n"
        (snap_id,) = {f.image.id for f in forks if f.image is not None}
        assert snapshots.load(snap_id).ephemeral
        box.close()   # the source goes; the forks go on
        assert box.name not in lxcbind.list_containers()
        for f in forks:
            assert f.run("cat /root/state", text=True).stdout == "state\n"
        forks[0].close()
        assert forks[1].run("true").returncode == 0
        assert store.get(snap_id) is not None
    finally:
        for f in forks:
            f.close()
        box.close()
    # The fork's snapshot went with its last user.
    assert store.get(snap_id) is None
    assert not [e for e in os.listdir(store.IMAGES_ROOT)
                if e.startswith(snap_id.replace(":", "-"))]   # nor its shifted copies


def test_pool_session_and_run_from_a_snapshot(made):
    with lxcbind.Sandbox(pol()) as box:
        box.run("mkdir -p /opt/app && echo 'print(6*7)' > /opt/app/main.py")
        snap = box.snapshot()
        made.append(snap)
    with lxcbind.Pool({"version": "0.8.0"}, size=2, image=snap) as pool:
        results = list(pool.map(["python3 /opt/app/main.py"] * 4))
    assert [r.stdout for r in results] == [b"42\n"] * 4
    session = lxcbind.Session.from_policy(pol(), image=snap.id)
    try:
        assert session.run("cat /opt/app/main.py").stdout == b"print(6*7)\n"
    finally:
        session.close()
    with pytest.raises(SandboxError, match="not in the store"), \
            lxcbind.Sandbox(pol(), image="no-such-snapshot"):
        pass


def test_hostile_workload_cannot_make_the_capture_write_outside_or_gain_anything(made, tmp_path):
    canary = tmp_path / "canary"
    canary.write_text("host\n")
    os.chmod(tmp_path, 0o755)
    hostile = f"""
    ln -s / /root/hostroot
    ln -s {canary} /root/canary-link
    ln -s /proc/1/root /root/init-root
    mkdir -p /root/dir && ln -s {tmp_path} /root/dir/escape
    echo x > /root/.wh.passwd; touch /etc/pam.d/.wh..wh..opq
    touch /etc/.wh.hosts
    mknod /root/null c 1 3 2>/dev/null; mknod /root/wh c 0 0 2>/dev/null
    mkfifo /root/fifo
    cp /bin/sh /root/rootshell && chmod 6755 /root/rootshell
    python3 -c "import os; os.setxattr('/etc/pam.d', 'user.overlay.opaque', b'y')" 2>/dev/null
    python3 -c "import os; os.setxattr('/root', 'trusted.overlay.redirect', b'/etc')" 2>/dev/null
    true
    """
    with lxcbind.Sandbox(pol()) as box:
        assert box.run(hostile).returncode == 0
        snap = box.snapshot()
        made.append(snap)
    assert canary.read_text() == "host\n" and sorted(os.listdir(tmp_path)) == ["canary"]
    layer = Path(snap.layer)
    for path, _dirs, files in os.walk(layer):
        for name in files:
            st = os.lstat(os.path.join(path, name))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, (path, name)
    assert os.readlink(layer / "root/hostroot") == "/"   # kept as links, never followed
    assert os.readlink(layer / "root/dir/escape") == str(tmp_path)
    assert not os.path.lexists(layer / "root/null")
    # Host users cannot reach the layer's setuid file (root-only directories).
    assert os.stat(layer / "root/rootshell").st_mode & 0o6000 == 0o6000
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "ls", str(layer / "root")], capture_output=True, text=True)
    assert os.stat(snap.path).st_mode & 0o777 == 0o700
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
    with lxcbind.Sandbox(pol(), image=snap) as box:
        r = box.run("ls /etc/pam.d | grep -c . ; cat /root/canary-link; "
                    "test -e /etc/passwd && test -e /etc/hosts && echo kept; "
                    "cat /root/.wh.passwd; ls -d /root/hostroot/usr", text=True)
        # Links resolve inside the new container; whiteout-looking names are plain files.
        lines = r.stdout.splitlines()
        assert "host" not in lines
        assert "kept" in lines and "x" in lines
        assert int(lines[0]) == len(os.listdir("/etc/pam.d"))   # not made opaque from inside
        r = box.run("touch /root/hostroot/tmp/from-fork; ls /root/dir/escape/", text=True)
        assert sorted(os.listdir(tmp_path)) == ["canary"]
    # No copy per id range: the container read the one stored layer through an idmapped
    # mount, gone from the host once it started (the fixture checks no mount is left).
    copies = [e for e in os.listdir(store.IMAGES_ROOT)
              if e.startswith(os.path.basename(snap.path) + "@")]
    assert copies == []


def test_a_workload_writing_during_the_snapshot_gets_a_consistent_layer(made):
    writer = ("mkdir /root/w; i=0; while :; do i=$((i+1)); echo $i > /root/w/$i; "
              "echo $i > /root/w/.t; mv /root/w/.t /root/w/last; done")   # last: never half-written
    with lxcbind.Sandbox(pol()) as box:
        box.run(f"nohup sh -c '{writer}' >/dev/null 2>&1 & sleep 0.3")
        snap = box.snapshot()
        made.append(snap)
        assert int(box.run("cat /root/w/last").stdout) > 0   # thawed: it went on writing
    check = ("last=$(cat /root/w/last); n=$(ls /root/w | grep -vc last); "
             "for k in $(seq 1 $last); do [ \"$(cat /root/w/$k)\" = $k ] || echo bad $k; done; "
             "echo $last $n")
    r = lxcbind.run(check, policy=pol(), image=snap, text=True)
    last, count = r.stdout.split()[-2:]
    assert "bad" not in r.stdout
    # Every file up to the one ``last`` names is there, and at most one more (being written).
    assert int(last) > 0 and int(count) in (int(last), int(last) + 1)


def test_snapshot_of_a_privileged_sandbox_without_a_disk_limit(made):
    doc = pol(lxc={"privileged": True, "limits": {"disk": "max"}})
    with lxcbind.Sandbox(doc) as box:
        box.run("echo priv > /root/p; rm -r /etc/skel; mkdir /etc/skel")
        snap = box.snapshot()
        made.append(snap)
    assert os.getxattr(Path(snap.layer, "etc/skel"), "trusted.overlay.opaque") == b"y"
    r = lxcbind.run("cat /root/p; ls -A /etc/skel | wc -l", policy=pol(), image=snap, text=True)
    assert r.stdout.split() == ["priv", "0"]
    r = lxcbind.run("cat /root/p; ls -A /etc/skel | wc -l", policy=doc, image=snap, text=True)
    assert r.stdout.split() == ["priv", "0"]


def test_bad_names_and_counts_are_clear_errors(made):
    with lxcbind.Sandbox(pol()) as box:
        with pytest.raises(SandboxError, match="snapshot name"):
            box.snapshot(name="../evil")
        with pytest.raises(ValueError, match="fork"):
            box.fork(0)
        snap = box.snapshot(name=new_name("dup-"))
        made.append(snap)
        with pytest.raises(SandboxError, match="is taken"):
            box.snapshot(name=snap.name)
    with pytest.raises(SandboxError, match="not running"):
        box.snapshot()


def test_cli_runs_from_a_snapshot_by_name_and_refuses_an_unknown_one(made):
    import sys

    with lxcbind.Sandbox(pol()) as box:
        box.run("echo from-snapshot > /root/mark")
        snap = box.snapshot(name=new_name("cli-"))
        made.append(snap)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--image", str(snap.name),
                           "--no-tty", "--", "cat", "/root/mark"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert (done.returncode, done.stdout) == (0, "from-snapshot\n"), done.stderr
    done = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--image", "no-such-snap",
                           "--", "true"], capture_output=True, text=True, env=env, timeout=120)
    # (the oci branch's contract: an image not in the store is a set-up failure, 125)
    assert done.returncode in (2, 125) and "'no-such-snap': not in the store" in done.stderr
    assert "Traceback" not in done.stderr


def test_gc_removes_a_fork_snapshot_whose_runner_died(made):
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, lxcbind
        box = lxcbind.Sandbox({pol()!r}); box.open()
        forks = box.fork(1)
        print(forks[0].image.id, box.name, forks[0].name, flush=True)
        os.kill(os.getpid(), 9)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    sid, *names = done.stdout.split()
    path = snapshots.load(sid).path
    assert os.path.isdir(path)
    # Older than the grace period a fresh fork snapshot gets.
    snap = snapshots.load(sid)
    record = Path(path, "snapshot.json")
    import json

    data = json.loads(record.read_text())
    data["created"] = snap.created - 3600
    record.write_text(json.dumps(data))
    lxcbind.gc()
    assert not set(names) & set(lxcbind.list_containers())
    assert not os.path.exists(path)


def test_snapshot_of_a_sandbox_on_an_imported_image_is_in_the_store(made, tmp_path):
    import json
    import sys

    from tests.integration.image.test_run_image import CONFIG, busybox_image

    ref = busybox_image(str(tmp_path / "layout"), CONFIG)
    image = lxcbind.image.import_image(ref)
    try:
        # As root (the policy's lxc.uid over the image's User, app, who may not write /work).
        with lxcbind.Sandbox(pol(lxc={"uid": 0}), image=ref) as box:
            done = box.run(["/bin/sh", "-c", "echo set-up > /work/state; rm /work/hello"])
            assert done.returncode == 0, done
            snap = box.snapshot(name=new_name("oci-"))
            made.append(snap)
        assert snap.base.kind == "image" and store.get(snap.id).parent == image.id
        assert store.get(snap.id).config == image.config   # the image's defaults carry over
        # Without a command: the image's Entrypoint + Cmd, with its Env, WorkingDir, User.
        r = lxcbind.run(policy=pol(), image=snap.name, text=True)
        assert r.stdout.split("\n")[:3] == ["image image", "1000", "/work"], r
        r = lxcbind.run(["/bin/sh", "-c", "cat /work/state; ls /work"], policy=pol(),
                        image=snap, text=True)
        assert r.stdout.split() == ["set-up", "state"]   # the deletion kept, over the image
        with pytest.raises(SandboxError, match="parent of image"):
            store.remove(image.id)   # the snapshot sits on it
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
        done = subprocess.run([sys.executable, "-m", "lxcbind", "image", "ls", "--json"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert snap.id in done.stdout and json.loads(done.stdout)
    finally:
        for s in reversed(made):
            if store.get(s.id) is not None:
                snapshots.remove(s, LXCPATH)
        store.remove(image.id)


def test_a_tree_deeper_than_a_path_can_be_fails_cleanly_and_thaws(made):
    # Each level's name is 200 bytes: 30 levels are a 6 KB path, past PATH_MAX (4096).
    deep = ("cd /root && i=0; while [ $i -lt 30 ]; do d=$(printf 'd%.0s' $(seq 200)); "
            "mkdir $d && cd $d; i=$((i+1)); done; echo bottom > f")
    with lxcbind.Sandbox(pol()) as box:
        assert box.run(deep).returncode == 0
        before = {s.id for s in snapshots.snapshots()}
        with pytest.raises(SandboxError, match="cannot copy the writable layer"):
            box.snapshot()
        assert {s.id for s in snapshots.snapshots()} == before
        assert not [e for e in os.listdir(store.IMAGES_ROOT) if e.startswith(".build-snap-")]
        # Thawed: the workload runs on.
        assert box.run("echo alive", timeout=30).stdout == b"alive\n"


def test_fork_is_all_or_nothing(made, tmp_path):
    # The forks cannot be set up (their policy binds a host directory that is gone by then):
    # fork() raises, and neither a fork nor its snapshot is left.
    shared = tmp_path / "shared"
    shared.mkdir()
    doc = pol(filesystem={"readwritePaths": [str(shared)]})
    with lxcbind.Sandbox(doc) as box:
        before = {s.id for s in snapshots.snapshots()}
        names_before = set(lxcbind.list_containers())
        shared.rmdir()
        with pytest.raises(SandboxError, match=str(shared)):
            box.fork(3)
        assert {s.id for s in snapshots.snapshots()} == before
        assert not {n for n in set(lxcbind.list_containers()) - names_before
                    if n.startswith(box.name)}
        assert box.run("echo alive").stdout == b"alive\n"
