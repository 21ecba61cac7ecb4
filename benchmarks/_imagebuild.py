"""Build OCI image layouts and ``docker save`` archives in Python, offline, for the tests and
the benchmarks (one recipe, like ``make_busybox``).  No registry, no tool: layers are tar
streams written here, blobs are named by their sha256.

    layer = make_layer([f("bin/busybox", data, 0o755), d("etc"), wh("etc/motd"), opq("var")])
    ref = write_layout("/tmp/x", [layer], config={"Cmd": ["/bin/sh"]})       # "oci:/tmp/x:latest"
    ref = write_docker_archive("/tmp/x.tar", [layer], config={...})         # "docker-archive:..."

A layer is a list of ``tarfile.TarInfo`` (with ``.data`` for regular files), written in order:
nothing here checks or sanitizes, so a test can write the hostile entries it means to.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from typing import Any

Entry = tuple[tarfile.TarInfo, bytes]


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = 1700000000
    return ti


def f(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    ti = _info(name, tarfile.REGTYPE, mode, uid, gid)
    ti.size = len(data)
    return ti, data


def d(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return _info(name, tarfile.DIRTYPE, mode, uid, gid), b""


def sym(name: str, target: str) -> Entry:
    ti = _info(name, tarfile.SYMTYPE, 0o777)
    ti.linkname = target
    return ti, b""


def hard(name: str, target: str) -> Entry:
    ti = _info(name, tarfile.LNKTYPE, 0o644)
    ti.linkname = target
    return ti, b""


def dev(name: str, major: int = 0, minor: int = 0, kind: bytes = tarfile.CHRTYPE) -> Entry:
    ti = _info(name, kind, 0o666)
    ti.devmajor, ti.devminor = major, minor
    return ti, b""


def fifo(name: str) -> Entry:
    return _info(name, tarfile.FIFOTYPE, 0o644), b""


def wh(path: str) -> Entry:
    """The whiteout that removes ``path`` from the layers below."""
    parent, _, name = path.rpartition("/")
    return f(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opq(directory: str) -> Entry:
    """The marker that hides everything lower layers put in ``directory``."""
    return f(f"{directory}/.wh..wh..opq")


def make_tar(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return out.getvalue()


def compress(tar: bytes, how: str = "gzip") -> bytes:
    if how == "gzip":
        return gzip.compress(tar, compresslevel=1, mtime=0)
    if how == "zstd":
        import zstandard  # type: ignore[import-not-found,unused-ignore]

        return bytes(zstandard.ZstdCompressor().compress(tar))
    return tar


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_MEDIA = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
          "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
          "none": "application/vnd.oci.image.layer.v1.tar"}


def image_config(tars: list[bytes], config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]}}


def write_blob(layout: str, data: bytes) -> str:
    digest = sha(data)
    path = os.path.join(layout, "blobs", "sha256", digest[7:])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)
    return digest


def write_layout(layout: str, layers: list[list[Entry]] | list[bytes], *,
                 config: dict[str, Any] | None = None, tag: str = "latest",
                 how: str = "gzip", full_config: dict[str, Any] | None = None,
                 blobs: list[bytes] | None = None) -> str:
    """Write an OCI image layout at ``layout`` (added to any image already there: several
    tags) and return its ``oci:`` reference.  ``layers`` are entry lists or finished tars;
    ``blobs`` replaces the stored blobs (to store something else than the manifest says)."""
    tars = [t if isinstance(t, bytes) else make_tar(t) for t in layers]
    stored = [compress(t, how) for t in tars]
    cfg = json.dumps(full_config or image_config(tars, config)).encode()
    for data in blobs if blobs is not None else stored:
        write_blob(layout, data)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": write_blob(layout, cfg), "size": len(cfg)},
                "layers": [{"mediaType": _MEDIA[how], "digest": sha(b), "size": len(b)}
                           for b in stored]}
    mdata = json.dumps(manifest).encode()
    mdigest = write_blob(layout, mdata)
    index_path = os.path.join(layout, "index.json")
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as fh:
            index = json.load(fh)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": mdigest, "size": len(mdata),
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    with open(index_path, "w") as out:
        json.dump(index, out)
    with open(os.path.join(layout, "oci-layout"), "w") as out:
        json.dump({"imageLayoutVersion": "1.0.0"}, out)
    return f"oci:{layout}:{tag}"


def manifest_digest(ref: str) -> str:
    """The digest of the manifest ``ref`` (an ``oci:`` reference written above) names."""
    path, _, tag = ref[4:].rpartition(":")
    with open(os.path.join(path, "index.json")) as fh:
        for desc in json.load(fh)["manifests"]:
            if desc["annotations"]["org.opencontainers.image.ref.name"] == tag:
                return str(desc["digest"])
    raise KeyError(tag)


def write_docker_archive(path: str, layers: list[list[Entry]], *,
                         config: dict[str, Any] | None = None,
                         tags: tuple[str, ...] = ("test/image:latest",),
                         blobs: bool = False) -> str:
    """Write a ``docker save`` archive and return its ``docker-archive:`` reference (without
    a name): the legacy shape (``<id>/layer.tar``, ``<hex>.json``, ``manifest.json``), or with
    ``blobs`` Docker 25's (``blobs/sha256/<hex>`` for the config and the layers)."""
    tars = [make_tar(entries) for entries in layers]
    cfg = json.dumps(image_config(tars, config)).encode()
    files: list[tuple[str, bytes]] = []
    names = []
    for i, tar in enumerate(tars):
        name = f"blobs/sha256/{sha(tar)[7:]}" if blobs else \
            f"{hashlib.sha256(b'layer%d' % i + tar).hexdigest()}/layer.tar"
        files.append((name, tar))
        names.append(name)
    cname = f"blobs/sha256/{sha(cfg)[7:]}" if blobs else sha(cfg)[7:] + ".json"
    files.append((cname, cfg))
    files.append(("manifest.json", json.dumps(
        [{"Config": cname, "RepoTags": list(tags), "Layers": names}]).encode()))
    with tarfile.open(path, "w") as out:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))
    return f"docker-archive:{path}"


def config_digest(archive_ref: str) -> str:
    """The id (config digest) of the image in a ``docker-archive:`` reference written above."""
    with tarfile.open(archive_ref.split(":", 1)[1].split(":")[0]) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        name: str = json.load(member)[0]["Config"]
        return "sha256:" + name.rsplit("/", 1)[-1].removesuffix(".json")


# -- an image with a small Python project, from the host's files ---------------------------

_SKIP = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
         "pydoc_data", "__pycache__", "site-packages", "dist-packages"}

PROJECT = {
    "calc/__init__.py": "",
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    "grade.py": (
        "import json, sys\n"
        "from calc import ops\n"
        "cases = [((2, 3), 5), ((-1, 1), 0), ((10, 5), 15)]\n"
        "passed = sum(ops.add(*args) == want for args, want in cases)\n"
        "print(json.dumps({'passed': passed, 'total': len(cases)}))\n"
        "sys.exit(0 if passed == len(cases) else 1)\n"),
}


def _tree_entries(paths: list[str], made: set[str]) -> list[Entry]:
    """Entries for host files (and directories walked), their parent directories first; a
    symbolic link is kept as a link."""
    out: list[Entry] = []

    def parents(rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                out.append(d(parent))

    def one(path: str) -> None:
        rel = path.lstrip("/")
        if rel in made:
            return
        parents(rel)
        made.add(rel)
        if os.path.islink(path):
            out.append(sym(rel, os.readlink(path)))
        elif os.path.isdir(path):
            out.append(d(rel))
            for name in sorted(os.listdir(path)):
                if name not in _SKIP:
                    one(os.path.join(path, name))
        elif os.path.isfile(path):
            with open(path, "rb") as fh:
                out.append(f(rel, fh.read(), os.stat(path).st_mode & 0o777))

    def chain(path: str) -> None:
        # The directories resolved (the image has the host's top-level links), then the
        # file itself and, if it is a link, what it points to (ld.so is a chain of them).
        path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        one(path)
        if os.path.islink(path):
            chain(os.path.join(os.path.dirname(path), os.readlink(path)))

    for path in paths:
        chain(path)
    return out


def _libraries(program: str) -> list[str]:
    import subprocess

    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            libs.append(path)
    return libs


def python_image(layout: str, project: dict[str, str] | None = None) -> str:
    """An OCI layout of three layers: busybox and the merged-/usr links, the host's Python
    (its interpreter, the libraries it links, its standard library without tests and GUI),
    and a small project in ``/work/project`` (``PROJECT``: a package and a grader printing
    JSON).  Config: ``WorkingDir`` the project, ``Cmd`` its grader.  About 45 MB."""
    made: set[str] = set()
    with open("/bin/busybox", "rb") as fh:
        base = [d("usr"), d("usr/bin"), f("usr/bin/busybox", fh.read(), 0o755)]
    made |= {"usr", "usr/bin"}
    base += [sym(f"usr/bin/{a}", "busybox") for a in ("sh", "ls", "cat", "echo", "true",
                                                       "env", "cp", "mkdir", "rm", "sed")]
    for top in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + top):
            base.append(sym(top, os.readlink("/" + top)))
            made.add(top)
    base += [d("etc"), f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
             f("etc/group", b"root:x:0:\n"), d("tmp", 0o1777), d("root", 0o700)]
    made |= {"etc", "tmp", "root"}
    version = os.path.basename(os.path.realpath("/usr/bin/python3"))      # python3.11
    runtime = _tree_entries(["/usr/bin/python3"] + _libraries("/usr/bin/python3") +
                            [f"/usr/lib/{version}"], made)
    files = project or PROJECT
    code = [d("work"), d("work/project")] + [
        f(f"work/project/{name}", text.encode()) for name, text in sorted(files.items())
        if not name.endswith("/")]
    dirs = sorted({os.path.dirname(n) for n in files if "/" in n})
    code[2:2] = [d(f"work/project/{x}") for x in dirs]
    return write_layout(layout, [base, runtime, code], config={
        "Env": ["PATH=/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"],
        "WorkingDir": "/work/project", "Cmd": ["python3", "grade.py"]})
