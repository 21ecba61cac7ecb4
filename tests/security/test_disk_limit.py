"""The disk limit (``lxc.limits.disk``): a root workload tries to fill the host's disk.

Each test writes as the workload (container root, real syscalls) past the limit, in bytes or
in inodes, and asserts the refusal (ENOSPC), what ``df`` shows inside, that the result says so
(``disk_limited`` in ``run()``, a ``Session``, a ``Pool``, the CLI's ``--json`` and its stderr
line), and that the host is unchanged: no image, loop device or mount left, on every path
(a normal end, a SIGKILLed runner + ``gc``, a runner killed between define and start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import lxcbind
from lxcbind.lxc.container import default_lxcpath
from lxcbind.sandbox import core, disk, diskpool
from tests.conftest import _NAMES_MADE, IS_ROOT, NATIVE_ERROR, new_name

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20

# Writes 1 MiB chunks until the kernel refuses, then prints how far it got and the errno.
FILL = textwrap.dedent("""
    import errno, os
    n = 0
    try:
        with open("/fill", "wb", buffering=0) as f:
            while n < 4096:
                f.write(b"x" * (1 << 20)); n += 1
            os.fsync(f.fileno())
        print("FILL=OK", n)
    except OSError as exc:
        print("FILL=" + errno.errorcode[exc.errno], n)
""")

# Creates empty files until the kernel refuses.
FLOOD = textwrap.dedent("""
    import errno, os
    os.mkdir("/flood"); n = 0
    try:
        while n < 100000:
            os.close(os.open(f"/flood/{n}", os.O_CREAT | os.O_WRONLY)); n += 1
        print("FLOOD=OK", n)
    except OSError as exc:
        print("FLOOD=" + errno.errorcode[exc.errno], n)
""")

STATVFS = "python3 -c \"import os; s = os.statvfs('/'); print(s.f_blocks * s.f_frsize, s.f_files)\""


def py(script: str) -> str:
    return f"python3 - <<'EOF'\n{script}\nEOF"


def doc(command: str, limit: object, **extra: object) -> dict:
    d = {"version": "0.8.0", "process": {"commandLine": command},
         "lxc": {"limits": {"disk": limit}}}
    d.update(extra)
    return d


def field(out: bytes, name: str) -> tuple[str, int]:
    for line in out.decode().splitlines():
        if line.startswith(name + "="):
            what, count = line[len(name) + 1:].split()
            return what, int(count)
    raise AssertionError(out)


def layer_leftovers() -> set[str]:
    """Loop devices backed by a container's layer image, and layer mounts, on the host."""
    found = set()
    for entry in os.scandir("/sys/block"):
        try:
            backing = Path(f"/sys/block/{entry.name}/loop/backing_file").read_text()
        except OSError:
            continue
        if backing.strip().removesuffix(" (deleted)").endswith("/" + disk.IMAGE):
            found.add(f"{entry.name}: {backing.strip()}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.endswith("/" + disk.LAYER) and point.startswith(default_lxcpath()):
            found.add(f"mount {point}")
    return found


@pytest.fixture
def host_unchanged():
    """Nothing of a layer outlives the test: no loop device, no mount, no image.  The kernel
    frees the loop device a moment after the container's last process: wait for it, bounded."""
    before = layer_leftovers()
    yield
    deadline = time.monotonic() + 10
    while layer_leftovers() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert layer_leftovers() - before == set()
    lxcpath = default_lxcpath()
    assert not [n for n in os.listdir(lxcpath) if os.path.exists(f"{lxcpath}/{n}/{disk.IMAGE}")
                and n in _NAMES_MADE]   # only this session's: parallel runs may hold theirs


def test_writing_past_the_byte_limit_gets_enospc_and_is_reported(host_unchanged) -> None:
    r = lxcbind.run(doc(py(FILL), "32M"), timeout=120)
    what, mib = field(r.stdout, "FILL")
    assert what == "ENOSPC", r.stdout
    assert 16 <= mib < 32, mib          # most of the layer, never more than the limit
    assert r.disk_limited and not r.oom_killed


def test_an_inode_flood_gets_enospc_and_is_reported(host_unchanged) -> None:
    # 16 MiB at one inode per 16 KiB: 1,024 inodes, long before the bytes run out.
    r = lxcbind.run(doc(py(FLOOD), "16M"), timeout=120)
    what, files = field(r.stdout, "FLOOD")
    assert what == "ENOSPC", r.stdout
    assert 900 <= files <= 1024, files
    assert r.disk_limited


def test_df_inside_shows_the_limit_in_bytes_and_inodes(host_unchanged) -> None:
    r = lxcbind.run(doc(STATVFS, "64M"))
    size, inodes = map(int, r.stdout.split())
    assert 60 * MIB <= size <= 64 * MIB, size    # the filesystem's own overhead aside
    assert inodes == 64 * MIB // disk.INODE_RATIO
    r = lxcbind.run(doc("df -P / | tail -1", "64M"))
    assert 60 * 1024 <= int(r.stdout.split()[1]) <= 64 * 1024   # 1K blocks
    assert not r.disk_limited


def test_the_default_limit_is_not_the_hosts_disk(host_unchanged) -> None:
    r = lxcbind.run(STATVFS)
    size = int(r.stdout.split()[0])
    expected = disk.resolve(None, default_lxcpath())
    assert expected is not None and expected <= disk.DEFAULT_CAP
    assert 0.95 * expected <= size <= expected
    host = os.statvfs(default_lxcpath())
    assert size < host.f_blocks * host.f_frsize


def test_a_normal_run_is_not_disk_limited_and_max_means_none(host_unchanged) -> None:
    r = lxcbind.run(doc("head -c 4M /dev/zero > /f && echo ok", "32M"))
    assert r.stdout == b"ok\n" and not r.disk_limited
    # "max": no layer of its own (the upper directory is on the host's filesystem, as before).
    r = lxcbind.run(doc(STATVFS, "max"))
    host = os.statvfs(default_lxcpath())
    assert int(r.stdout.split()[0]) == host.f_blocks * host.f_frsize
    assert not r.disk_limited


def test_the_cli_reports_it_in_json_and_on_stderr(host_unchanged) -> None:
    policy = json.dumps(doc(py(FILL), "32M")).encode()
    for args in (["--json"], []):
        p = subprocess.run([sys.executable, "-m", "lxcbind", "run", *args, "-"], input=policy,
                           capture_output=True, timeout=120, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        if args:
            out = json.loads(p.stdout)
            assert out["disk_limited"] is True and "ENOSPC" in out["stdout"]
            assert b"lxc.limits.disk" not in p.stderr
        else:
            assert p.stderr.count(b"lxc.limits.disk") == 1, p.stderr
            assert field(p.stdout, "FILL")[0] == "ENOSPC"
    p = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--json", "-"],
                       input=json.dumps(doc("true", "32M")).encode(), capture_output=True,
                       timeout=120, cwd=ROOT)
    assert json.loads(p.stdout)["disk_limited"] is False


@pytest.mark.parametrize("value", ["0", 0, -1, "-5M", "12X", "1K", True, "2P", [], "10 G"])
def test_a_bad_size_is_a_policy_error_naming_the_field(value: object) -> None:
    p = subprocess.run([sys.executable, "-m", "lxcbind", "run", "-"],
                       input=json.dumps(doc("true", value)).encode(), capture_output=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 2, (value, p.stderr)
    assert b"lxc.limits.disk" in p.stderr and b"Traceback" not in p.stderr
    assert b"out of range" in p.stderr or b"expected a size" in p.stderr   # a known field


def test_session_and_sandbox_results_say_so(host_unchanged) -> None:
    with lxcbind.Sandbox(doc("true", "32M")) as box:
        assert not box.run("true").disk_limited
        assert box.run(py(FILL)).disk_limited
        assert box.run("rm /fill; true").disk_limited is False   # space is back
        with box.session() as s:
            assert s.run(py(FILL)).disk_limited


def test_a_pool_run_is_limited_and_the_next_one_is_fresh(host_unchanged) -> None:
    with lxcbind.Pool(doc("true", "32M"), size=1) as pool:
        r = pool.run(py(FILL), timeout=120)
        assert field(r.stdout, "FILL")[0] == "ENOSPC" and r.disk_limited
        r = pool.run("ls /fill 2>&1; df -P / | tail -1")
        assert b"No such file" in r.stdout and not r.disk_limited


def test_a_kept_container_keeps_its_writes_and_its_limit(host_unchanged) -> None:
    name = new_name()
    kept = {"containerId": name, "lifecycle": {"destroyOnExit": False}}
    try:
        r = lxcbind.run(doc("head -c 8M /dev/zero > /kept && echo ok", "32M", **kept))
        assert r.stdout == b"ok\n"
        r = lxcbind.run(doc("ls -s /kept; " + py(FILL), "32M", **kept), timeout=120)
        assert b"/kept" in r.stdout and field(r.stdout, "FILL")[0] == "ENOSPC"
        assert 8 <= field(r.stdout, "FILL")[1] < 24 and r.disk_limited
    finally:
        core.delete_container(name)
    assert not os.path.exists(os.path.join(default_lxcpath(), name))


def test_sigkill_of_the_runner_then_gc_leaves_no_layer(host_unchanged) -> None:
    name = new_name()
    proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(doc("echo started; sleep 100", "32M", containerId=name))
                     .encode())
    proc.stdin.close()
    try:
        assert proc.stdout.readline() == b"started\n"
        image = os.path.join(default_lxcpath(), name, disk.IMAGE)
        assert any(image in item for item in layer_leftovers())   # held by the container
        proc.kill()
        proc.wait(timeout=10)
        owner = json.loads(Path(f"/var/lib/lxcbind/owners/{name}.json").read_text())
        assert "disk" in owner["created"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(os.path.join(default_lxcpath(), name))


def test_a_runner_killed_between_define_and_start_leaves_nothing_after_gc(
        host_unchanged) -> None:
    """What gc does with the record of a runner that died with the layer mounted on the host
    and the container never started."""
    from lxcbind.lxc.container import Container
    from lxcbind.policy.model import Rootfs
    from lxcbind.sandbox import rootfs

    name = new_name()
    c = rootfs.define_container(name, Rootfs("host"), disk_size=32 * MIB)
    c.close()   # the runner is gone: nothing of it is left but the files and the mount
    cdir = os.path.join(default_lxcpath(), name)
    assert os.path.ismount(os.path.join(cdir, disk.LAYER))
    core._remove_named(name, default_lxcpath())   # gc's removal of an orphan
    with Container(name) as probe:
        assert not probe.defined
    assert not os.path.exists(cdir)


def test_other_ways_past_the_limit_are_refused_too(host_unchanged) -> None:
    """fallocate, a sparse file filled in, writes elsewhere in the layer, and reaching the
    loop device behind it: ENOSPC, or no access at all."""
    script = textwrap.dedent("""
        import errno, os
        def attempt(name, fn):
            try:
                fn(); print(f"{name}=OK 0")
            except OSError as exc:
                print(f"{name}={errno.errorcode[exc.errno]} 0")
        def falloc():
            fd = os.open("/big", os.O_CREAT | os.O_WRONLY)
            try:
                os.posix_fallocate(fd, 0, 64 << 20)
            finally:
                os.close(fd)   # its blocks are freed at unlink only once it is closed
        def sparse_then_fill():
            with open("/sparse", "wb") as f:
                f.truncate(1 << 40)          # a 1 TiB sparse file costs nothing ...
                os.posix_fallocate(f.fileno(), 0, 64 << 20)   # ... filling it in does
        def elsewhere():
            for d in ("/var/tmp", "/home/sandbox", "/root"):
                with open(d + "/fill", "wb") as f:
                    for _ in range(64):
                        f.write(b"x" * (1 << 20))
                    f.flush(); os.fsync(f.fileno())
        def loop_control():
            os.open("/dev/loop-control", os.O_RDWR)
        def loop_node():
            os.mknod("/tmp/loop", 0o600 | 0o060000, os.makedev(7, 0))
            os.open("/tmp/loop", os.O_RDWR)
        attempt("FALLOCATE", falloc); os.unlink("/big")
        attempt("SPARSE", sparse_then_fill); os.unlink("/sparse")
        attempt("ELSEWHERE", elsewhere)
        attempt("LOOPCTL", loop_control)
        attempt("LOOPNODE", loop_node)
    """)
    r = lxcbind.run(doc(py(script), "32M"), timeout=120)
    for name in ("FALLOCATE", "SPARSE", "ELSEWHERE"):
        assert field(r.stdout, name)[0] == "ENOSPC", (name, r.stdout, r.stderr)
    assert field(r.stdout, "LOOPCTL")[0] == "ENOENT"          # not in the container's /dev
    assert field(r.stdout, "LOOPNODE")[0] in ("EPERM", "EACCES"), r.stdout
    assert r.disk_limited


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.15, 0.2, 0.3, 0.45])
def test_a_signal_during_setup_leaves_no_layer(host_unchanged, tmp_path: Path,
                                              delay: float) -> None:
    """SIGTERM at moments spread over the runner's setup (copy, attach, mount, start):
    whatever it cut short, nothing of the layer is left."""
    import signal

    name = new_name()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(doc("sleep 30", "32M", containerId=name)))
    proc = subprocess.Popen([sys.executable, "-m", "lxcbind", "run", "--json", str(policy)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    # -15: still importing, before anything exists (the handlers are not installed yet).
    assert proc.returncode in (143, -signal.SIGTERM), (proc.returncode, out, err)
    assert b"Traceback" not in err
    assert not os.path.exists(os.path.join(default_lxcpath(), name))


@pytest.fixture
def cache_on_another_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The image cache on a tmpfs of its own (as under a state directory in a tmpfs /tmp, or a
    /var/lib/lxc on its own volume), the container directories where they are."""
    images = tmp_path / "disk"
    images.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=256M", "lxcbind-test",
                    str(images)], check=True)
    try:
        monkeypatch.setattr(disk, "IMAGES", str(images))
        monkeypatch.setattr(diskpool, "FREE", str(images / "free"))
        monkeypatch.setattr(diskpool, "BUSY", str(images / "busy"))
        yield images
    finally:
        disk._finish_pending(timeout=30)   # recycling threads read the patched paths
        # A retired image stays open by its loop device until the kernel frees it.
        deadline = time.monotonic() + 10
        while subprocess.run(["umount", str(images)], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, f"{images} still busy"
            time.sleep(0.05)


def test_the_limit_holds_with_the_cache_on_another_filesystem(
        host_unchanged, cache_on_another_filesystem: Path) -> None:
    """Copying the cached image into the container's directory crosses filesystems (EXDEV for
    copy_file_range since Linux 5.19): it is copied all the same and the limit holds, twice
    (the second run after the first one's image went back to the cache)."""
    assert os.stat(cache_on_another_filesystem).st_dev != os.stat(default_lxcpath()).st_dev
    for _ in range(2):
        r = lxcbind.run(doc(py(FILL), "32M"), timeout=120)
        what, mib = field(r.stdout, "FILL")
        assert what == "ENOSPC", (r.stdout, r.stderr)
        assert 16 <= mib < 32, mib
        assert r.disk_limited
