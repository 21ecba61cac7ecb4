"""Sandboxes on images: ``image=`` on run, Sandbox, Session.from_policy and Pool, a policy's
``lxc.rootfs``, the config's defaults and their precedence, kept containers, and the store's
rootfs untouched by what runs on it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pytest

import lxcbind
from benchmarks._imagebuild import d, f, sym, wh, write_layout
from lxcbind.errors import PolicyError
from lxcbind.image import store
from lxcbind.sandbox.core import delete_container
from tests.conftest import new_name
from tests.integration.image.conftest import Imported

APPLETS = ("sh", "cat", "id", "pwd", "env", "true", "echo", "ls", "touch", "rm", "sleep", "mkdir")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1000:\n"


def busybox_image(layout: str, config: dict[str, object] | None = None) -> str:
    """A two-layer image of the host's static busybox; the second layer whites out a file."""
    with open("/bin/busybox", "rb") as fh:
        bb = fh.read()
    base = [d("bin"), f("bin/busybox", bb, 0o755)] + [sym(f"bin/{a}", "busybox")
                                                       for a in APPLETS]
    base += [d("etc"), f("etc/passwd", PASSWD), f("etc/group", GROUP), d("work"),
             f("work/gone", b"x"), d("home"), d("home/app", 0o755, 1000, 1000),
             d("tmp", 0o1777)]
    return write_layout(layout, [base, [wh("work/gone"), f("work/hello", b"from the image\n")]],
                        config=config)


CONFIG = {"Env": ["FOO=image", "BAR=image"], "WorkingDir": "/work", "User": "app",
          "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $FOO $BAR; id -u; pwd"]}


@pytest.fixture
def image_ref(tmp_path: Path, imported: Imported) -> str:
    ref = busybox_image(str(tmp_path / "layout"), CONFIG)
    imported(ref)   # removed after the test
    return ref


def _tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            h.update(f"{dirpath}/{name} {st.st_mode} {st.st_uid} {st.st_size}".encode())
    return h.hexdigest()


def test_run_uses_the_image_and_its_defaults(image_ref: str) -> None:
    result = lxcbind.run(image=image_ref, text=True)
    assert result.returncode == 0, result
    assert result.stdout == "image image\n1000\n/work\n"
    assert result.image == store.lookup(image_ref).id
    # The policy overrides the image, the call overrides both.
    policy = {"version": "0.8.0", "process": {"env": ["BAR=policy"], "cwd": "/tmp"},
              "lxc": {"uid": 0}}
    result = lxcbind.run("echo $FOO $BAR; id -u; pwd; ls /work", policy=policy,
                         image=image_ref, env={"FOO": "call"}, text=True)
    assert result.stdout == "call policy\n0\n/tmp\nhello\n", result


def test_policy_rootfs_names_the_image(image_ref: str) -> None:
    policy = {"version": "0.8.0", "lxc": {"rootfs": image_ref},
              "process": {"commandLine": "cat /work/hello"}}
    result = lxcbind.run(policy=policy, text=True)
    assert result.stdout == "from the image\n"
    short = store.lookup(image_ref).short_id
    result = lxcbind.run(["cat", "/work/hello"], image=short, text=True)   # by id
    assert result.stdout == "from the image\n"


def test_bad_references_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="lxc.rootfs: oci: the path must be absolute"):
        lxcbind.run("true", policy={"version": "0.8.0", "lxc": {"rootfs": "oci:x"}})
    with pytest.raises(lxcbind.errors.ImageError, match="does not exist"):
        lxcbind.run("true", image=f"oci:{tmp_path}/none")
    with pytest.raises(lxcbind.errors.ImageError, match="not in the store"):
        lxcbind.run("true", image="0123456789ab")


def test_writes_never_reach_the_store(image_ref: str) -> None:
    image = store.lookup(image_ref)
    before = _tree_digest(image.rootfs)
    result = lxcbind.run("rm -f /work/hello; echo x > /bin/busybox; touch /new; "
                         "echo done", image=image_ref, policy={"version": "0.8.0",
                                                                "lxc": {"uid": 0}}, text=True)
    assert result.stdout.endswith("done\n")
    assert _tree_digest(image.rootfs) == before
    assert open(image.rootfs + "/work/hello").read() == "from the image\n"


def test_unprivileged_containers_read_the_one_stored_copy_idmapped(image_ref: str) -> None:
    """No copy per id range: each container reads the stored rootfs through an idmapped,
    read-only mount, gone from the host once it started; its root changes files only in its
    own layer."""
    image = store.lookup(image_ref)
    before = _tree_digest(image.rootfs)
    top = os.path.basename(os.path.dirname(image.rootfs))
    policy = {"version": "0.8.0", "lxc": {"uid": 0}}
    with lxcbind.Sandbox(policy, image=image_ref) as a, \
            lxcbind.Sandbox(policy, image=image_ref) as b:
        assert not [line for line in open("/proc/self/mountinfo")
                    if f"/{a.name}/" in line or f"/{b.name}/" in line]
        for box in (a, b):
            assert box.run("ls -ln /home | grep app", text=True).stdout.split()[2:4] == \
                ["1000", "1000"]
        r = a.run("chmod 777 /bin/busybox && chown 5:5 /work/hello && echo x >> /work/hello "
                  "&& rm /etc/group && ls -ln /work/hello", text=True)
        assert r.returncode == 0 and r.stdout.split()[2:4] == ["5", "5"], r
        assert b.run("cat /work/hello /etc/group", text=True).stdout.startswith(
            "from the image\nroot:x:0:")
    assert not any(e.startswith(f"{top}@") for e in os.listdir(store.IMAGES_ROOT))
    assert _tree_digest(image.rootfs) == before
    assert open(image.rootfs + "/work/hello").read() == "from the image\n"


def test_an_image_owning_files_beyond_the_range_gets_a_shifted_copy(tmp_path: Path,
                                                                     imported: Imported) -> None:
    """Through an idmapped mount a file owned by id 100000 would stay unmapped (not even the
    container's root could change it); such an image gets the shifted copy, where it is
    ``nobody``'s like any out-of-range owner."""
    with open("/bin/busybox", "rb") as fh:
        bb = fh.read()
    tree = [d("bin"), f("bin/busybox", bb, 0o755)] + [sym(f"bin/{a}", "busybox")
                                                       for a in APPLETS]
    tree += [d("etc"), f("etc/passwd", PASSWD), f("etc/group", GROUP), d("tmp", 0o1777),
             d("big", 0o777, 100000, 100000), f("big/file", b"big\n", 0o666, 100000, 100000)]
    image = imported(write_layout(str(tmp_path / "layout"), [tree]))
    top = os.path.basename(os.path.dirname(image.rootfs))
    r = lxcbind.run("ls -ln /big/file; echo more >> /big/file && chown 0 /big/file && "
                    "touch /big/new && echo changed", image=image.id,
                    policy={"version": "0.8.0", "lxc": {"uid": 0}}, text=True)
    assert r.stdout.split()[2:4] == ["65534", "65534"] and r.stdout.endswith("changed\n"), r
    assert any(e.startswith(f"{top}@") for e in os.listdir(store.IMAGES_ROOT))
    assert open(image.rootfs + "/big/file").read() == "big\n"


def test_session_sandbox_and_pool(image_ref: str) -> None:
    image_id = store.lookup(image_ref).id
    session = lxcbind.Session.from_policy({"version": "0.8.0"}, image=image_ref)
    try:
        result = session.run(["cat", "/work/hello"])
        assert result.stdout == b"from the image\n" and result.image == image_id
    finally:
        session.close()
    with lxcbind.Sandbox(image=image_ref) as box:
        assert box.image is not None and box.image.id == image_id
        assert box.run("pwd", text=True).stdout == "/work\n"
        assert box.run().stdout.startswith(b"image image")     # the image's command
    with lxcbind.Pool({"version": "0.8.0"}, size=2, image=image_ref) as pool:
        results = pool.map(["cat /work/hello"] * 4)
        assert [r.stdout for r in results] == [b"from the image\n"] * 4
        assert {r.image for r in results} == {image_id}


def test_privileged_container_on_an_image(image_ref: str) -> None:
    """No user namespace: the image's own rootfs is the lower layer (no shifted copy), and
    the container's writes still go to its own layer."""
    image = store.lookup(image_ref)
    before = _tree_digest(image.rootfs)
    policy = {"version": "0.8.0", "lxc": {"privileged": True, "uid": 0}}
    result = lxcbind.run("touch /work/new && cat /work/hello && ls /work", policy=policy,
                         image=image_ref, text=True)
    assert result.stdout == "from the image\nhello\nnew\n", result
    assert _tree_digest(image.rootfs) == before
    top = os.path.basename(os.path.dirname(image.rootfs))
    assert not any(e.startswith(f"{top}@") for e in os.listdir(store.IMAGES_ROOT))


def test_kept_sandbox_on_an_image(image_ref: str) -> None:
    """A kept container has no spawner as init: it gets liblxc's init.lxc running busybox's
    sleep, and what a run writes is still there for the next."""
    name = new_name("img-kept-")
    doc = {"version": "0.8.0", "containerId": name, "lifecycle": {"destroyOnExit": False},
           "lxc": {"uid": 0}}
    try:
        with lxcbind.Sandbox(doc, image=image_ref) as box:
            assert box.run("echo kept > /work/mark; cat /work/hello").returncode == 0
        with lxcbind.Sandbox(doc, image=image_ref) as box:
            assert box.run("cat /work/mark", text=True).stdout == "kept\n"
        with pytest.raises(lxcbind.errors.ImageError, match=f"in use by container.*{name}"):
            store.remove(image_ref)
    finally:
        delete_container(name)


def test_image_record_json_shape(image_ref: str) -> None:
    image = store.lookup(image_ref)
    with contextlib.suppress(FileNotFoundError):
        data = json.load(open(os.path.join(os.path.dirname(image.rootfs), "image.json")))
        assert data["config"]["user"] == "app"


def test_python_project_image_graded_in_a_pool(tmp_path: Path, imported: Imported) -> None:
    """The README's kind of use: an image with the host's Python and a small project; each
    variant of the project is graded in a fresh container of a Pool."""
    from benchmarks._imagebuild import python_image

    ref = python_image(str(tmp_path / "py"))
    image = imported(ref)
    result = lxcbind.run(image=image, text=True)            # the image's Cmd: its grader
    assert json.loads(result.stdout) == {"passed": 3, "total": 3}, result
    variants = ["a + b", "a - b", "b + a", "a * b"]
    commands = [f"sed -i 's/return a + b/return {v}/' calc/ops.py && python3 grade.py"
                for v in variants]
    with lxcbind.Pool({"version": "0.8.0"}, size=2, image=image) as pool:
        results = pool.map(commands)
    assert [json.loads(r.stdout)["passed"] for r in results] == [3, 0, 3, 0]
    assert [r.returncode for r in results] == [0, 1, 0, 1]
    assert {r.image for r in results} == {image.id}


def test_asyncio_session_and_pool(image_ref: str) -> None:
    import asyncio

    async def main() -> tuple[bytes, list[bytes]]:
        async with lxcbind.AsyncSession.from_policy({"version": "0.8.0"},
                                                    image=image_ref) as session:
            one = (await session.run(["cat", "/work/hello"])).stdout
        pool = lxcbind.AsyncPool({"version": "0.8.0"}, size=2, image=image_ref)
        try:
            many = [r.stdout for r in await asyncio.gather(
                *(pool.run(["cat", "/work/hello"]) for _ in range(3)))]
        finally:
            await pool.close()
        return one, many

    one, many = asyncio.run(main())
    assert one == b"from the image\n" and many == [b"from the image\n"] * 3
