"""``put``/``get`` through the sandbox's spawner: no attach, the builtin exception types,
relative paths, ``parents``; the same on ``Session`` and ``AsyncSession``.  The workload may
prepare the paths to trap the host side; nothing of the host changes."""

from __future__ import annotations

import asyncio
import errno
import pickle

import pytest

import lxcbind
from lxcbind.lxc.container import Container as _BareContainer
from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]


def pol(**extra: dict) -> dict:
    doc: dict = {"version": "0.8.0", "containerId": new_name("files-")}
    for key, value in extra.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


@pytest.fixture
def no_attach(monkeypatch):
    """Any liblxc attach from now on fails the test (put/get must go through a spawner)."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("put/get attached to the container")
    monkeypatch.setattr(_BareContainer, "attach_request", refuse)


def test_files_go_through_the_init_spawner_without_any_attach(no_attach):
    with lxcbind.Sandbox(pol(process={"cwd": "/tmp"})) as box:
        box.put("/tmp/a", b"one")
        assert box.get("/tmp/a") == b"one"
        box.put("rel", "two")                          # relative: against process.cwd
        assert box.get("/tmp/rel") == b"two" and box.get("rel") == b"two"
        box.put("deep/er/file", b"3", parents=True)    # parents created on request
        assert box.get("/tmp/deep/er/file") == b"3"
        assert box.run("stat -c %F /tmp/deep/er", text=True).stdout == "directory\n"
        assert box._sessions == []                     # no second spawner either


def test_errors_are_the_builtins_and_still_lxcbind_errors():
    with lxcbind.Sandbox(pol(lxc={"uid": 1000, "gid": 1000})) as box:
        box.run("mkdir /tmp/dir; echo x > /tmp/file")
        cases = [
            (lambda: box.get("/tmp/missing"), FileNotFoundError, errno.ENOENT),
            (lambda: box.put("/tmp/no/parent", b"x"), FileNotFoundError, errno.ENOENT),
            (lambda: box.get("/tmp/dir"), IsADirectoryError, errno.EISDIR),
            (lambda: box.put("/tmp/dir", b"x"), IsADirectoryError, errno.EISDIR),
            (lambda: box.get("/tmp/file/x"), NotADirectoryError, errno.ENOTDIR),
            (lambda: box.put("/tmp/file/x", b"x", parents=True), FileExistsError, errno.EEXIST),
            (lambda: box.put("/root/x", b"x"), PermissionError, errno.EACCES),
            (lambda: box.get("/etc/shadow-nope/x"), FileNotFoundError, errno.ENOENT),
        ]
        for call, kind, code in cases:
            with pytest.raises(kind) as info:
                call()
            error = info.value
            assert isinstance(error, lxcbind.FileTransferError)
            assert isinstance(error, lxcbind.LxcbindError)
            assert error.errno == code, error
            back = pickle.loads(pickle.dumps(error))
            assert type(back) is type(error) and back.errno == code
            assert back.filename == error.filename
        assert box.get("/tmp/file") == b"x\n"   # nothing above changed it


def test_a_path_named_like_an_error_does_not_change_the_errno():
    with lxcbind.Sandbox(pol()) as box:
        box.run("mkdir -p '/tmp/Permission denied'")
        with pytest.raises(IsADirectoryError):
            box.get("/tmp/Permission denied")
        with pytest.raises(FileNotFoundError):
            box.get("/tmp/Is a directory: Permission denied")


def test_a_kept_container_attaches_one_file_session_and_reuses_it(monkeypatch):
    name = new_name("files-kept-")
    doc = {"version": "0.8.0", "containerId": name, "lifecycle": {"destroyOnExit": False}}
    try:
        with lxcbind.Sandbox(doc) as box:
            calls = []
            real = _BareContainer.attach_request

            def counting(self, *args, **kwargs):
                calls.append(args)
                return real(self, *args, **kwargs)
            monkeypatch.setattr(_BareContainer, "attach_request", counting)
            for i in range(3):
                box.put(f"/tmp/{i}", str(i))
                assert box.get(f"/tmp/{i}") == str(i).encode()
            assert len(calls) == 1   # one spawner, attached once
    finally:
        lxcbind.sandbox.core.delete_container(name)


def test_the_workload_cannot_turn_get_into_an_endless_read_or_a_host_read(tmp_path):
    secret = tmp_path / "host-only"
    secret.write_text("host secret")
    with lxcbind.Sandbox(pol()) as box:
        # container root points the path at a host-looking file and at devices
        box.run(f"ln -s {secret} /tmp/link; ln -s /dev/zero /tmp/zero; mkfifo /tmp/fifo")
        with pytest.raises(FileNotFoundError):
            box.get("/tmp/link")        # resolved inside the container: no such file there
        for path in ("/tmp/zero", "/tmp/fifo"):
            with pytest.raises(PermissionError, match="not a regular file"):
                box.get(path, timeout=10)
        with pytest.raises(PermissionError):
            box.put("/tmp/zero", b"x")
    assert secret.read_text() == "host secret"


def test_session_and_async_session_have_put_and_get():
    with lxcbind.Session.from_policy(pol()) as s:
        s.put("/tmp/s", b"sync")
        assert s.get("/tmp/s") == b"sync"

    async def main() -> bytes:
        async with lxcbind.AsyncSession.from_policy(pol(process={"cwd": "/tmp"})) as a:
            await a.put("x/y", b"async", parents=True)
            with pytest.raises(IsADirectoryError):
                await a.get("x")
            return await a.get("/tmp/x/y")
    assert asyncio.run(main()) == b"async"


def _peak_growth_mib(call) -> float:
    """How far this process's peak RSS rose above its RSS during ``call`` (peak reset first)."""
    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # resets VmHWM to the current RSS
    before = status("VmRSS:")
    call()
    return (status("VmHWM:") - before) / 1024


def test_put_file_and_get_file_stream_large_files_in_bounded_memory(tmp_path):
    source = tmp_path / "src.bin"
    with open(source, "wb") as f:       # 64 MiB, not all one byte
        for i in range(64):
            f.write(bytes([i]) * (1 << 20))
    with lxcbind.Sandbox(pol(process={"cwd": "/tmp"})) as box:
        with open(source, "rb") as f:
            assert _peak_growth_mib(lambda: box.put_file("in/big.bin", f, parents=True)) < 16
        r = box.run("wc -c < /tmp/in/big.bin; od -An -tu1 -j 67108863 -N1 /tmp/in/big.bin",
                    text=True)
        assert r.stdout.split() == [str(64 << 20), "63"]
        out = tmp_path / "out.bin"
        with open(out, "wb") as f:
            assert _peak_growth_mib(lambda: box.get_file("in/big.bin", f)) < 16
        # the same through put/get holds it all: the check above can fail
        data = source.read_bytes()
        assert _peak_growth_mib(lambda: box.put("/tmp/whole", data)) > 32
        assert out.read_bytes() == source.read_bytes()
        with open(tmp_path / "small", "wb") as f:
            with pytest.raises(lxcbind.FileTransferError) as info:
                box.get_file("/tmp/in/big.bin", f, max_size=1 << 20)
            assert info.value.errno == errno.EFBIG
        assert (tmp_path / "small").read_bytes() == b""   # refused before writing
        with open(tmp_path / "x", "wb") as f:
            for path, kind in (("/tmp/nope", FileNotFoundError), ("/tmp", IsADirectoryError),
                               ("/dev/zero", PermissionError)):
                with pytest.raises(kind):
                    box.get_file(path, f, timeout=10)
            with pytest.raises(IsADirectoryError), open(source, "rb") as src:
                box.put_file("/tmp/in", src)
        with pytest.raises(TypeError, match="fileno"):
            box.put_file("/tmp/x", b"bytes are put()'s")
