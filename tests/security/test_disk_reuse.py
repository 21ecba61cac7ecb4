"""Reused disk images (``lxcbind/sandbox/diskpool.py``): an image goes from one container to
the next only reset to its empty filesystem, never to two containers at once, never while a
loop device still holds it, and nothing of it outlives a runner killed with SIGKILL.

The attacks: a workload writes a secret everywhere it can in its layer (file data, names, a
directory of them), then the next container of that size reads its whole layer and the test
reads the image's every byte on the host; runs race for one clean image; an image is handed
to ``recycle`` dirty and still attached; a runner that holds an image is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import lxcbind
from lxcbind.lxc.container import default_lxcpath
from lxcbind.sandbox import disk, diskpool
from tests.conftest import IS_ROOT, NATIVE_ERROR, new_name

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16 << 20   # its own pool: no other test (nor the default) uses 16 MiB images
PREFIX = f"ext4-{SIZE}-{disk._SCHEMA}."


def policy(command: str = "true", **extra: object) -> dict:
    d = {"version": "0.8.0", "process": {"commandLine": command},
         "lxc": {"limits": {"disk": f"{SIZE >> 20}M"}}}
    d.update(extra)
    return d


def free_images() -> set[str]:
    try:
        return {n for n in os.listdir(Path(diskpool.FREE)) if n.startswith(PREFIX)}
    except FileNotFoundError:
        return set()


def wait_for(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(predicate())  # type: ignore[operator]


@pytest.fixture
def empty_pool() -> Iterator[None]:
    """No clean 16 MiB image to start with (they are a cache: removing them is harmless)."""
    for name in free_images():
        os.unlink(Path(diskpool.FREE) / name)
    yield


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory on the state directory's filesystem (where images live), removed after."""
    path = Path(diskpool.FREE).parent / f"test-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o700, parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_the_next_container_gets_nothing_of_the_last_workload(empty_pool: None) -> None:
    secret = uuid.uuid4().hex
    write = (f"set -e; mkdir /{secret}-dir; for i in $(seq 40); do echo {secret} > "
             f"/{secret}-dir/{secret}-$i; done; head -c 3000000 /dev/zero | tr '\\0' x > /big; "
             f"yes {secret} | head -c 2000000 > /data; sync")
    first = lxcbind.run(["sh", "-c", write], policy=policy())
    assert first.returncode == 0, first.stderr
    # Its image, reset, is published once the kernel has let go of it.
    assert wait_for(lambda: len(free_images()) == 1)
    (published,) = free_images()
    raw = (Path(diskpool.FREE) / published).read_bytes()
    assert secret.encode() not in raw and b"x" * 4096 not in raw
    template = Path(disk.template(SIZE)).read_bytes()
    assert raw == template   # byte for byte the empty filesystem

    # The next container of that size takes it: it finds an empty layer.
    with lxcbind.Sandbox(policy()) as box:
        assert published not in free_images()   # claimed
        image = os.path.join(default_lxcpath(), box.name, disk.IMAGE)
        assert os.path.isfile(image)
        look = box.run(["sh", "-c", f"ls -a /; cat /data /big 2>&1 | head -c 200; "
                                    f"find / -xdev -name '*{secret}*' 2>/dev/null | head -3"])
        assert secret not in look.stdout.decode()
        assert "big" not in look.stdout.decode().split()
        assert "No such file" in look.stdout.decode()


def test_racing_runs_never_share_an_image(empty_pool: None) -> None:
    # Seed the pool with clean images, then start more sandboxes at once than it holds.
    with lxcbind.Pool(policy(), size=3) as pool:
        for _ in range(3):
            pool.run("true")
    assert wait_for(lambda: len(free_images()) >= 2)
    boxes: list[lxcbind.Sandbox] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start() -> None:
        try:
            box = lxcbind.Sandbox(policy())
            box.open()
            with lock:
                boxes.append(box)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        inodes = set()
        for box in boxes:
            st = os.stat(os.path.join(default_lxcpath(), box.name, disk.IMAGE))
            inodes.add((st.st_dev, st.st_ino))
            # Each container writes its name; each reads back only its own.
            assert box.run(["sh", "-c", f"echo {box.name} > /who"]).returncode == 0
        assert len(inodes) == len(boxes) == 5
        for box in boxes:
            assert box.run(["cat", "/who"]).stdout.decode().strip() == box.name
    finally:
        for box in boxes:
            box.close()


def test_a_claim_is_one_rename_and_only_one_run_wins(scratch: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskpool, "FREE", str(scratch / "free"))
    (scratch / "free").mkdir()
    (scratch / "free" / f"ext4-{SIZE}-x.0.img").write_bytes(b"image")
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        dst = str(scratch / f"c{i}.img")
        barrier.wait()
        if diskpool.claim(SIZE, "x", dst):
            wins.append(dst)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and Path(wins[0]).read_bytes() == b"image"
    assert not diskpool.claim(SIZE, "x", str(scratch / "again.img"))
    assert not diskpool.claim(SIZE, "other-schema", str(scratch / "again.img"))


def _busy_copy(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A copy of the 16 MiB template in a scratch ``busy/`` (``FREE`` a scratch one too),
    dirtied inside and outside the template's data, as a workload's filesystem would be."""
    monkeypatch.setattr(diskpool, "FREE", str(scratch / "free"))
    monkeypatch.setattr(diskpool, "BUSY", str(scratch / "busy"))
    (scratch / "busy").mkdir()
    source = disk.template(SIZE)
    path = str(scratch / "busy" / "c.0.img")
    os.close(disk._copy_sparse(source, path))
    with open(path, "r+b") as f:
        for offset in (0, 1024, 5 << 20, SIZE - 4096):   # superblock, and data elsewhere
            f.seek(offset)
            f.write(b"SECRET" * 600)
    return source, path


def test_recycle_publishes_exactly_the_template_and_nothing_else(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, path = _busy_copy(scratch, monkeypatch)
    fd = diskpool.hold(path)
    try:
        assert diskpool.recycle(fd, source, disk._template_extents(source), disk._SCHEMA)
    finally:
        os.close(fd)
    assert not os.path.exists(path)
    (published,) = os.listdir(scratch / "free")
    assert published.startswith(PREFIX)
    clean = (scratch / "free" / published).read_bytes()
    assert clean == Path(source).read_bytes() and b"SECRET" not in clean
    pfd = os.open(scratch / "free" / published, os.O_RDONLY)
    try:
        assert diskpool.data_extents(pfd, SIZE) == disk._template_extents(source)
    finally:
        os.close(pfd)


def test_an_image_a_loop_device_still_holds_is_neither_reused_nor_swept(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, path = _busy_copy(scratch, monkeypatch)
    image = os.open(path, os.O_RDWR)
    device, dev = disk._attach_loop(image, path)   # autoclear: goes when dev is closed
    try:
        assert diskpool.backing_loops(path) == [os.path.basename(device)]
        fd = diskpool.hold(path)
        try:
            assert not diskpool.recycle(fd, source, disk._template_extents(source),
                                        disk._SCHEMA)
        finally:
            os.close(fd)
        assert os.path.exists(path) and not (scratch / "free").exists()
        assert diskpool.sweep() == []   # no runner holds it, but the loop device does
        assert os.path.exists(path)
    finally:
        os.close(dev)
        os.close(image)
    assert wait_for(lambda: not diskpool.backing_loops(path))
    assert diskpool.sweep() == ["c.0.img"]
    assert not os.path.exists(path)


def test_an_image_whose_runner_was_sigkilled_is_swept_by_gc(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner killed while it held a retired image: its flock goes with it, and ``lxcbind
    gc`` (the real ``busy/``) removes the image; while the runner lives, nothing touches it."""
    Path(diskpool.BUSY).mkdir(mode=0o700, parents=True, exist_ok=True)
    name = new_name()
    path = str(Path(diskpool.BUSY) / f"{name}.0.img")
    # Made outside busy/ and moved in only once held, as a runner's retire does: unheld in
    # busy/ even for a moment, any run's sweep on the machine may remove it meanwhile.
    made = str(Path(diskpool.BUSY).parent / f".{name}.0.img")
    os.close(disk._copy_sparse(disk.template(SIZE), made))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lxcbind.sandbox import diskpool; "
         f"diskpool.hold({made!r}); print('held', flush=True); time.sleep(100)"],
        stdout=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        os.rename(made, path)
        assert os.path.basename(path) not in diskpool.sweep()
        assert os.path.exists(path)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(made)   # the holder never held it (it failed before the rename)
    r = subprocess.run([sys.executable, "-m", "lxcbind", "gc"], capture_output=True,
                       timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(path)


def test_an_image_the_workload_wrote_much_into_is_removed_not_reset(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reset walks the image's extents, as many as the workload made: past a bound the
    image is removed instead, so no workload decides what the caller's process spends."""
    source, path = _busy_copy(scratch, monkeypatch)
    monkeypatch.setattr(diskpool, "MAX_WRITTEN", 1 << 20)
    with open(path, "r+b") as f:
        for block in range(0, 8 << 20, 8192):   # every other block: one extent each
            f.seek(block)
            f.write(b"w" * 4096)
    fd = diskpool.hold(path)
    try:
        assert not diskpool.recycle(fd, source, disk._template_extents(source), disk._SCHEMA)
    finally:
        os.close(fd)
    assert not os.path.exists(path) and not (scratch / "free").exists()


def test_a_one_shot_cli_run_leaves_its_image_reset_not_busy(empty_pool: None) -> None:
    """The CLI ends right after its run: the release under way is waited for at exit, so the
    image is in ``free/``, reset, and nothing of the run is left in ``busy/``."""
    import json

    name = new_name()
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--no-tty", "-"],
                       input=json.dumps(policy("echo hello > /greeting", containerId=name))
                       .encode(), capture_output=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    busy = os.listdir(Path(diskpool.BUSY)) if Path(diskpool.BUSY).exists() else []
    assert not [n for n in busy if n.startswith(name + ".")]
    (published,) = free_images()
    template = Path(disk.template(SIZE)).read_bytes()
    assert (Path(diskpool.FREE) / published).read_bytes() == template
    assert not os.path.exists(os.path.join(default_lxcpath(), name))


def test_the_next_run_sweeps_an_image_nothing_holds() -> None:
    """Not only ``gc``: every run's garbage collection removes a retired image whose runner
    is gone and that no loop device holds (one directory read when there is none)."""
    Path(diskpool.BUSY).mkdir(mode=0o700, parents=True, exist_ok=True)
    path = str(Path(diskpool.BUSY) / f"{new_name()}.0.img")
    os.close(disk._copy_sparse(disk.template(SIZE), path))
    r = lxcbind.run(["true"], policy=policy())
    assert r.returncode == 0
    assert not os.path.exists(path)
