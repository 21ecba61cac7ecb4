"""Pure logic of images (no root, no containers): references, digests, the config's command
defaults and their precedence, the policy's ``lxc.rootfs`` syntax."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lxcbind.lxc._native", reason="needs the compiled module")  # sandbox

from lxcbind.command import CommandDefaults  # noqa: E402
from lxcbind.errors import ImageError, PolicyError  # noqa: E402
from lxcbind.image.config import ImageConfig, from_oci  # noqa: E402
from lxcbind.image.oci import check_digest, parse_ref  # noqa: E402
from lxcbind.image.store import Image  # noqa: E402
from lxcbind.policy.parse import load_policy  # noqa: E402
from lxcbind.sandbox import imagefs  # noqa: E402


def test_parse_ref_splits_at_the_first_existing_prefix(tmp_path: Path) -> None:
    layout = tmp_path / "with:colon"
    layout.mkdir()
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    assert parse_ref(f"oci:{layout}") == ("oci", str(layout), None)
    assert parse_ref(f"oci:{layout}:v1") == ("oci", str(layout), "v1")
    assert parse_ref(f"docker-archive:{archive}:reg:5000/x:1") == \
        ("docker-archive", str(archive), "reg:5000/x:1")
    for ref, match in [("docker://x", "expected oci:"), ("oci:rel/x", "absolute"),
                       (f"oci:{tmp_path}/missing:tag", "does not exist")]:
        with pytest.raises(ImageError, match=match):
            parse_ref(ref)


def test_check_digest() -> None:
    good = "sha256:" + "a" * 64
    assert check_digest(good, "x") == good
    for bad in ("sha256:" + "A" * 64, "sha256:../../etc/passwd", "sha512:" + "a" * 128, None,
                7, "sha256:" + "a" * 63, "sha256:" + "a" * 64 + "\n"):
        with pytest.raises(ImageError, match="x: .* is not a sha256 digest"):
            check_digest(bad, "x")


def test_config_from_oci_checks_types() -> None:
    cfg = from_oci({"config": {"Env": ["A=1", "B=x=y"], "WorkingDir": "/w", "User": "1:2",
                               "Entrypoint": ["/e"], "Cmd": ["c"]}}, "img")
    assert cfg.env_dict() == {"A": "1", "B": "x=y"} and cfg.argv == ("/e", "c")
    assert from_oci({}, "img") == ImageConfig()
    assert ImageConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    for bad in ({"Env": "A=1\0"}, {"Cmd": [1]}, {"WorkingDir": 3}, {"User": ["x"]}):
        with pytest.raises(ImageError, match="img: config.config"):
            from_oci({"config": bad}, "img")


def _image(tmp_path: Path, **config: object) -> Image:
    (tmp_path / "etc").mkdir(parents=True, exist_ok=True)
    (tmp_path / "etc" / "passwd").write_text("app:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("app:x:1001:\nextra:x:7:app\n")
    return Image("sha256:" + "b" * 64, str(tmp_path), ImageConfig(**config), None, "t", 0,
                 0.0, 0.0)


def test_defaults_precedence(tmp_path: Path) -> None:
    image = _image(tmp_path, env=("A=image", "B=image"), working_dir="/w", user="app")
    bare = load_policy({"version": "0.8.0"}, command_required=False)
    d = imagefs.defaults(CommandDefaults({}, "/", None, None, None), image, bare)
    assert (d.env, d.cwd, d.uid, d.gid) == ({"A": "image", "B": "image"}, "/w", 1000, 1001)
    policy = load_policy({"version": "0.8.0", "process": {"cwd": "/p", "env": ["B=policy"]},
                          "lxc": {"uid": 5}}, command_required=False)
    d = imagefs.defaults(CommandDefaults({"B": "policy"}, "/p", None, 5, 5), image, policy)
    assert (d.env, d.cwd, d.uid, d.gid) == ({"A": "image", "B": "policy"}, "/p", 5, 5)


def test_user_is_read_from_the_image_never_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/passwd")   # the host's: must not be read
    image = Image("sha256:" + "c" * 64, str(tmp_path), ImageConfig(user="root"), None, "t", 0,
                  0.0, 0.0)
    bare = load_policy({"version": "0.8.0"}, command_required=False)
    with pytest.raises(ImageError, match="config User 'root': .*no such user"):
        imagefs.defaults(CommandDefaults({}, "/", None, None, None), image, bare)
    big = _image(tmp_path / "x", user="70000")
    with pytest.raises(ImageError, match="outside the container's id range"):
        imagefs.defaults(CommandDefaults({}, "/", None, None, None), big, bare)


def test_argv_falls_back_to_the_image(tmp_path: Path) -> None:
    image = _image(tmp_path, entrypoint=("/bin/sh", "-c"), cmd=("echo hi",))
    bare = load_policy({"version": "0.8.0"}, command_required=False)
    assert imagefs.argv(image, bare, "run") == ["/bin/sh", "-c", "echo hi"]
    with pytest.raises(PolicyError, match="the image none either"):
        imagefs.argv(_image(tmp_path), bare, "run")


def test_policy_rootfs_and_with_image() -> None:
    def rootfs(text: str) -> object:
        return load_policy({"version": "0.8.0", "lxc": {"rootfs": text}},
                           command_required=False).lxc.rootfs

    assert rootfs("oci:/a/b:t").path == "oci:/a/b:t"   # type: ignore[attr-defined]
    assert rootfs("image:abcd").kind == "image"        # type: ignore[attr-defined]
    for bad, match in [("oci:a", "absolute"), ("image:", "needs a reference"),
                       ("docker-archive:/a\n", "control characters"), ("ociX", "expected")]:
        with pytest.raises(PolicyError, match=f"lxc.rootfs: .*{match}"):
            rootfs(bad)
    policy = load_policy({"version": "0.8.0"}, command_required=False)
    assert imagefs.with_image(policy, "1a2b3c4d").lxc.rootfs.path == "image:1a2b3c4d"
    assert imagefs.with_image(policy, "oci:/x").lxc.rootfs.path == "oci:/x"
    assert imagefs.with_image(policy, None) is policy
    with pytest.raises(TypeError):
        imagefs.with_image(policy, 3)
