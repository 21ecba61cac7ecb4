"""Read an image source offline: an OCI image layout directory (``oci:/path[:tag]``) or a
``docker save`` archive (``docker-archive:/path.tar[:name:tag]``), down to its verified
config and the list of its layers.

Nothing here trusts the source.  Every JSON document is read with a size bound and checked
against the digest that names it before it is parsed; a digest is ``sha256:`` and 64 lowercase
hex digits (anything else, ``sha256:../../etc/passwd`` included, is refused before it is used as
a file name); blobs are opened below the layout one component at a time without following a
symbolic link.  Layers are only *opened* here: ``unpack`` checks their digest and size while it
streams them (a layer is never read twice).

A docker archive names its config ``<hex>.json`` (or ``blobs/sha256/<hex>``) and its layers
``<id>/layer.tar`` (or ``blobs/sha256/<hex>``): the config is verified by its name, and each
layer by the config's ``rootfs.diff_ids`` (the digest of the uncompressed tar) and, when its
name is a digest, by that too.  Its store key is the config's digest (Docker's image id); an
OCI layout's is the manifest's digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tarfile
from typing import IO, Any

from lxcbind._lite import lazy_re, record
from lxcbind.errors import ImageError

_DIGEST = lazy_re(r"sha256:[0-9a-f]{64}")
_JSON_MAX = 4 << 20          # bytes: a manifest, index or config larger than this is refused
_REF_NAME = "org.opencontainers.image.ref.name"
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


MAX_HEADER = 1 << 20       # bytes: a longer PAX or GNU long-name header is refused


class BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses an extended header (PAX, GNU long name or link) larger than
    ``MAX_HEADER`` before ``tarfile`` reads it whole into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and \
                self.size > MAX_HEADER:
            raise ImageError(f"an extended tar header of {self.size} bytes (more than "
                             f"{MAX_HEADER})")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


@record(frozen=True)
class Layer:
    """One layer to apply: where it is (``name``: a blob digest or an archive member), the
    digests and size it must have (None = not known from the source)."""

    index: int
    name: str
    digest: str | None      # of the blob as stored (compressed)
    size: int | None        # of the blob as stored
    diff_id: str | None     # of the uncompressed tar (the config's rootfs.diff_ids)


@record(frozen=True)
class Manifest:
    """A resolved image: its store key, the parsed config, the layers in order."""

    key: str
    config: dict[str, Any]
    layers: tuple[Layer, ...]


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """``(kind, path, name)`` of an image reference; the path is absolute and exists.  A tag
    (``oci:``) or ``name:tag`` (``docker-archive:``) is split off only when what precedes it
    exists, so a path with ``:`` in it still works."""
    kind, sep, rest = ref.partition(":")
    if not sep or kind not in ("oci", "docker-archive"):
        raise ImageError(f"image {ref!r}: expected oci:/PATH[:TAG] or "
                         "docker-archive:/PATH.tar[:NAME:TAG]")
    if not rest.startswith("/"):
        raise ImageError(f"image {ref!r}: the path must be absolute")
    if os.path.lexists(rest):
        return kind, rest, None
    # The first ':' whose prefix exists ends the path: a docker name may hold ':' (a port).
    at = rest.find(":")
    while at != -1:
        if os.path.lexists(rest[:at]) and rest[at + 1:]:
            return kind, rest[:at], rest[at + 1:]
        at = rest.find(":", at + 1)
    raise ImageError(f"image {ref!r}: {rest} does not exist")


def check_digest(value: object, where: str) -> str:
    """``value`` if it is a ``sha256:<64 hex>`` digest, else an ImageError naming ``where``."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise ImageError(f"{where}: {str(value)[:100]!r} is not a sha256 digest "
                         "(sha256: and 64 lowercase hex digits)")
    return value


def _verified_json(data: bytes, digest: str | None, where: str) -> Any:
    if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageError(f"{where}: content does not match its digest {digest}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{where}: not valid JSON ({exc})") from None


def _want(obj: Any, key: str, kind: type, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise ImageError(f"{where}: missing or invalid {key!r}")
    return value


class Source:
    """An open image source: ``open_blob`` gives a layer's raw bytes (unverified), ``read``
    a bounded, verified JSON document; ``close`` releases it.  Use as a context manager."""

    ref: str

    def resolve(self, name: str | None) -> Manifest:
        raise NotImplementedError

    def open_blob(self, layer: Layer) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(ref: str) -> tuple[Source, str | None]:
    """The source ``ref`` names (opened) and the tag or name it asks for."""
    kind, path, name = parse_ref(ref)
    if kind == "oci":
        return _Layout(ref, path), name
    return _Archive(ref, path), name


class _Layout(Source):
    def __init__(self, ref: str, path: str) -> None:
        self.ref = ref
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"image {ref!r}: cannot open the layout: {exc.strerror}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def _open(self, parts: list[str], where: str) -> int:
        """A descriptor for ``parts`` below the layout, no symbolic link followed."""
        fd = self.fd
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
                nfd = os.open(part, flags, dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd = nfd
        except OSError as exc:
            if fd != self.fd:
                os.close(fd)
            raise ImageError(f"image {self.ref!r}: {where}: {'/'.join(parts)}: "
                             f"{exc.strerror}") from None
        return fd

    def _read(self, parts: list[str], digest: str | None, size: int | None, where: str) -> Any:
        fd = self._open(parts, where)
        with os.fdopen(fd, "rb") as f:
            data = f.read(_JSON_MAX + 1)
        if len(data) > _JSON_MAX:
            raise ImageError(f"image {self.ref!r}: {where}: larger than {_JSON_MAX} bytes")
        if size is not None and len(data) != size:
            raise ImageError(f"image {self.ref!r}: {where}: {len(data)} bytes, "
                             f"the descriptor says {size}")
        return _verified_json(data, digest, f"image {self.ref!r}: {where}")

    def _blob(self, desc: Any, where: str) -> tuple[Any, str]:
        digest = check_digest(desc.get("digest") if isinstance(desc, dict) else None,
                              f"image {self.ref!r}: {where}.digest")
        size = _want(desc, "size", int, f"image {self.ref!r}: {where}")
        return self._read(["blobs", "sha256", digest[7:]], digest, size, where), digest

    def resolve(self, name: str | None) -> Manifest:
        layout = self._read(["oci-layout"], None, None, "oci-layout")
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise ImageError(f"image {self.ref!r}: oci-layout: not an OCI image layout")
        index = self._read(["index.json"], None, None, "index.json")
        where = "index.json"
        while True:
            manifests = _want(index, "manifests", list, f"image {self.ref!r}: {where}")
            i, desc = self._select(manifests, name, where)
            where = f"{where} manifests[{i}]"
            doc, digest = self._blob(desc, where)
            if desc.get("mediaType") in _INDEX_TYPES or doc.get("mediaType") in _INDEX_TYPES:
                index, name = doc, None  # a nested index: pick this machine's platform
                continue
            return self._manifest(doc, digest, where)

    def _select(self, manifests: list[Any], name: str | None,
                where: str) -> tuple[int, dict[str, Any]]:
        arch = _ARCH.get(platform.machine(), platform.machine())
        found = []
        for i, desc in enumerate(manifests):
            if not isinstance(desc, dict):
                raise ImageError(f"image {self.ref!r}: {where} manifests[{i}]: not an object")
            notes = desc.get("annotations") or {}
            plat = desc.get("platform") or {}
            if name is not None and notes.get(_REF_NAME) != name:
                continue
            if name is None and plat and (plat.get("os"), plat.get("architecture")) != \
                    ("linux", arch):
                continue
            found.append((i, desc))
        if len(found) == 1:
            return found[0]
        tags = sorted(str((d.get("annotations") or {}).get(_REF_NAME)) for d in manifests
                      if isinstance(d, dict))
        what = f"no manifest tagged {name!r}" if name is not None and not found else (
            "no manifest for linux/" + arch if not found else "more than one manifest")
        raise ImageError(f"image {self.ref!r}: {where}: {what} (tags: {', '.join(tags)}); "
                         "name one as oci:PATH:TAG")

    def _manifest(self, doc: Any, digest: str, where: str) -> Manifest:
        cdesc = _want(doc, "config", dict, f"image {self.ref!r}: {where}")
        config, _ = self._blob(cdesc, f"{where} config")
        diff_ids = ((config.get("rootfs") or {}).get("diff_ids") or []) \
            if isinstance(config, dict) else []
        layers = []
        for i, ldesc in enumerate(_want(doc, "layers", list, f"image {self.ref!r}: {where}")):
            lwhere = f"image {self.ref!r}: {where} layers[{i}]"
            ldigest = check_digest(ldesc.get("digest") if isinstance(ldesc, dict) else None,
                                   lwhere + ".digest")
            size = _want(ldesc, "size", int, lwhere)
            diff = check_digest(diff_ids[i], f"{lwhere}: config rootfs.diff_ids[{i}]") \
                if i < len(diff_ids) else None
            layers.append(Layer(i, ldigest, ldigest, size, diff))
        if not isinstance(config, dict):
            raise ImageError(f"image {self.ref!r}: {where} config: not an object")
        return Manifest(digest, config, tuple(layers))

    def open_blob(self, layer: Layer) -> IO[bytes]:
        digest = check_digest(layer.digest, f"image {self.ref!r}: layer {layer.index}")
        fd = self._open(["blobs", "sha256", digest[7:]], f"layer {layer.index}")
        return os.fdopen(fd, "rb")


class _Archive(Source):
    def __init__(self, ref: str, path: str) -> None:
        self.ref = ref
        try:
            self.tar = tarfile.open(path, "r:*", tarinfo=BoundedTarInfo)
        except (OSError, tarfile.TarError, ImageError) as exc:
            raise ImageError(f"image {ref!r}: not a readable tar archive ({exc})") from None

    def close(self) -> None:
        self.tar.close()

    def _member(self, name: object, where: str) -> tarfile.TarInfo:
        if not isinstance(name, str) or name.startswith("/") or ".." in name.split("/"):
            raise ImageError(f"image {self.ref!r}: {where}: {str(name)[:100]!r} is not a "
                             "relative path inside the archive")
        try:
            member = self.tar.getmember(name)
        except KeyError:
            raise ImageError(f"image {self.ref!r}: {where}: {name} is not in the archive") \
                from None
        if not member.isfile():
            raise ImageError(f"image {self.ref!r}: {where}: {name} is not a regular file")
        return member

    def _read(self, name: object, digest: str | None, where: str) -> Any:
        member = self._member(name, where)
        if member.size > _JSON_MAX:
            raise ImageError(f"image {self.ref!r}: {where}: larger than {_JSON_MAX} bytes")
        f = self.tar.extractfile(member)
        assert f is not None  # a regular file
        return _verified_json(f.read(), digest, f"image {self.ref!r}: {where}")

    def resolve(self, name: str | None) -> Manifest:
        entries = self._read("manifest.json", None, "manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ImageError(f"image {self.ref!r}: manifest.json: not a list of images")
        found = [(i, e) for i, e in enumerate(entries) if isinstance(e, dict) and
                 (name is None or name in (e.get("RepoTags") or ()))]
        if len(found) != 1:
            tags = [t for e in entries if isinstance(e, dict) for t in e.get("RepoTags") or ()]
            what = f"no image named {name!r}" if name is not None else "more than one image"
            raise ImageError(f"image {self.ref!r}: manifest.json: {what} (names: "
                             f"{', '.join(map(str, tags))}); name one as "
                             "docker-archive:PATH:NAME:TAG")
        i, entry = found[0]
        where = f"manifest.json[{i}]"
        cname = _want(entry, "Config", str, f"image {self.ref!r}: {where}")
        cdigest = self._digest_of(cname)
        if cdigest is None:
            raise ImageError(f"image {self.ref!r}: {where}.Config: {cname[:100]!r} is not named "
                             "by its digest: it cannot be verified")
        config = self._read(cname, cdigest, f"{where}.Config")
        if not isinstance(config, dict):
            raise ImageError(f"image {self.ref!r}: {where}.Config: not an object")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        names = _want(entry, "Layers", list, f"image {self.ref!r}: {where}")
        if len(diff_ids) != len(names):
            raise ImageError(f"image {self.ref!r}: {where}: {len(names)} layers but the config "
                             f"lists {len(diff_ids)} rootfs.diff_ids")
        layers = []
        for j, lname in enumerate(names):
            lwhere = f"{where}.Layers[{j}]"
            member = self._member(lname, lwhere)
            diff = check_digest(diff_ids[j], f"image {self.ref!r}: config rootfs.diff_ids[{j}]")
            layers.append(Layer(j, lname, self._digest_of(lname), member.size, diff))
        return Manifest(cdigest, config, tuple(layers))

    @staticmethod
    def _digest_of(name: str) -> str | None:
        """The digest a member's name states (``<hex>.json``, ``blobs/sha256/<hex>``)."""
        base = name.rsplit("/", 1)[-1]
        base = base[:-5] if base.endswith(".json") else base
        candidate = "sha256:" + base
        return candidate if _DIGEST.fullmatch(candidate) else None

    def open_blob(self, layer: Layer) -> IO[bytes]:
        f = self.tar.extractfile(self._member(layer.name, f"layer {layer.index}"))
        assert f is not None
        return f

