"""Apply an image's layers to a directory, treating every layer as hostile.

Each layer is streamed once: raw bytes → sha256 and size check of the blob → gzip or zstd
decompression (sniffed from the magic bytes, not trusted from a media type) → sha256 of the
uncompressed tar (the config's ``diff_id``) and the unpacked-size budget → ``tarfile`` in
stream mode.  A digest or size mismatch is found at the end of the layer; the directory being
built is then thrown away by the caller (the store builds in a temporary directory), so
nothing of an unverified layer is ever used.

Writes never leave the root.  Every entry's name is split into components; an absolute name,
a ``..`` component or a name deeper than ``MAX_DEPTH`` is refused.  The parent directory is
reached from the root's descriptor one component at a time with ``O_NOFOLLOW|O_DIRECTORY``
(missing ones are created), so a symbolic link (or a hard link, or a file) standing where a
directory is expected refuses the entry instead of being followed; the entry itself is created
relative to that descriptor with ``O_EXCL|O_NOFOLLOW`` after what stood there is removed.  A
hard link's target is resolved the same way, inside the root: it can only name a file of the
image (``link(2)`` on a directory fails; on a symbolic link it links the link itself).
A symbolic link's target is stored as it is: it is only ever resolved inside the container.

OCI semantics: a later layer's entry replaces what lower layers had at that name (a directory
meeting a directory keeps its contents and takes the new owner and mode); ``.wh.NAME`` removes
NAME; ``.wh..wh..opq`` empties its directory of what lower layers put there.  A character
device 0/0 is *not* a whiteout in an OCI layer (that is overlayfs' on-disk form): like every
device node it is dropped, and reported in ``dropped``.  Setuid and setgid bits are kept (the
container's ids are shifted: they give nothing on the host).  Extended attributes are not
applied.

Bounds: no extended (PAX, long-name) header over 1 MiB is read, an image has at most
``MAX_ENTRIES`` entries, and the budget (``max_size``) bounds the uncompressed bytes of all
layers together and counts the full size of every regular file (a sparse entry included), so
neither a gzip bomb nor a sparse giant can fill the host's disk or the caller's memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tarfile
import zlib
from typing import IO

from lxcbind.errors import ImageError
from lxcbind.image.oci import BoundedTarInfo, Layer
from lxcbind.lxc import rmtree

MAX_DEPTH = 256          # path components: deeper trees are refused (and copied recursively later)
MAX_ENTRIES = 2_000_000  # tar entries of one image: bounds the memory a layer's bookkeeping takes
_CHUNK = 1 << 20
_MAX_DROPPED = 100       # names of dropped entries kept for the record
_WH = ".wh."
_OPAQUE = ".wh..wh..opq"


class Budget:
    """Bytes an import may still write; ``charge`` raises once the limit is passed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, n: int, where: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise ImageError(f"{where}: the image unpacks to more than {self.limit} bytes "
                             "(max_size)")


class _Hashing:
    """A reader that hashes and counts what passes through; optionally charges a budget."""

    def __init__(self, raw: IO[bytes] | _Hashing | _Decompressing, budget: Budget | None,
                 where: str) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0
        self.budget = budget
        self.where = where

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else _CHUNK)
        self.sha.update(data)
        self.count += len(data)
        if self.budget is not None:
            self.budget.charge(len(data), self.where)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _Decompressing:
    """gzip (every member), zstd or plain, picked from the first bytes; output bounded per
    ``read`` so a bomb never sits in memory."""

    def __init__(self, raw: _Hashing, where: str) -> None:
        self.raw = raw
        self.head = raw.read(4)
        self.kind = "gzip" if self.head[:2] == b"\x1f\x8b" else \
            "zstd" if self.head == b"\x28\xb5\x2f\xfd" else "tar"
        self.zlib: zlib._Decompress | None = None
        self.pending = b""
        self.zstd: IO[bytes] | None = None
        if self.kind == "gzip":
            self.zlib = zlib.decompressobj(wbits=31)
            self.pending = self.head
        elif self.kind == "zstd":
            try:
                import zstandard  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                raise ImageError(f"{where}: the layer is zstd-compressed and this Python has no "
                                 "zstd decompressor (install python3-zstandard)") from None
            self.zstd = zstandard.ZstdDecompressor().stream_reader(
                _Prefixed(self.head, raw),  # type: ignore[arg-type]  # only read() is used
                read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        n = n if n is not None and n > 0 else _CHUNK
        if self.kind == "tar":
            if self.head:
                data, self.head = self.head[:n], self.head[n:]
                return data
            return self.raw.read(n)
        if self.zstd is not None:
            try:
                return self.zstd.read(n)
            except Exception as exc:  # zstandard.ZstdError is not importable without it
                raise ImageError(f"{self.raw.where}: corrupt zstd data ({exc})") from None
        assert self.zlib is not None
        try:
            while True:
                if self.zlib.unconsumed_tail:
                    out = self.zlib.decompress(self.zlib.unconsumed_tail, n)
                elif self.pending:
                    data, self.pending = self.pending, b""
                    out = self.zlib.decompress(data, n)
                else:
                    data = self.raw.read(_CHUNK)
                    if not data:
                        if not self.zlib.eof:
                            raise ImageError(f"{self.raw.where}: truncated gzip data")
                        return b""
                    out = self.zlib.decompress(data, n)
                if self.zlib.eof and self.zlib.unused_data:
                    # Another gzip member follows (``cat a.gz b.gz`` is valid gzip).
                    self.pending = self.zlib.unused_data
                    self.zlib = zlib.decompressobj(wbits=31)
                if out:
                    return out
        except zlib.error as exc:
            raise ImageError(f"{self.raw.where}: corrupt gzip data ({exc})") from None


class _Prefixed:
    def __init__(self, head: bytes, rest: _Hashing) -> None:
        self.head = head
        self.rest = rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            return data
        return self.rest.read(n)


class Tree:
    """The directory being built (``root``), with what was dropped from it."""

    def __init__(self, root: str, budget: Budget) -> None:
        self.root = root
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.budget = budget
        self.dropped: list[str] = []
        self.entries = 0
        self._cache: tuple[tuple[str, ...], int] | None = None
        self._layer_paths: set[str] = set()

    def close(self) -> None:
        self._forget()
        os.close(self.fd)

    def _forget(self) -> None:
        if self._cache is not None:
            os.close(self._cache[1])
            self._cache = None

    def apply(self, raw: IO[bytes], layer: Layer, where: str) -> None:
        """Stream one layer onto the tree; verify its digests and size once it is read."""
        blob = _Hashing(raw, None, where)
        plain = _Hashing(_Decompressing(blob, where), self.budget, where)
        self._layer_paths = set()
        try:
            with tarfile.open(fileobj=plain, mode="r|",  # type: ignore[call-overload]
                              tarinfo=BoundedTarInfo) as tar:
                for member in tar:
                    self.entries += 1
                    if self.entries > MAX_ENTRIES:
                        raise ImageError(f"{where}: more than {MAX_ENTRIES} entries in the image")
                    self._entry(tar, member, where)
        except tarfile.TarError as exc:
            raise ImageError(f"{where}: not a valid tar stream ({exc})") from None
        except ImageError as exc:
            if str(exc).startswith("an extended tar header"):
                raise ImageError(f"{where}: {exc}") from None
            raise
        plain.drain()  # the end-of-archive padding is part of the diff_id
        blob.drain()
        self._layer_paths = set()
        if layer.size is not None and blob.count != layer.size:
            raise ImageError(f"{where}: {blob.count} bytes, the manifest says {layer.size}")
        if layer.digest is not None and blob.digest() != layer.digest:
            raise ImageError(f"{where}: content does not match its digest {layer.digest}")
        if layer.diff_id is not None and plain.digest() != layer.diff_id:
            raise ImageError(f"{where}: uncompressed content does not match the config's "
                             f"diff_id {layer.diff_id}")

    # -- one entry -------------------------------------------------------------------------

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo, where: str) -> None:
        here = f"{where}: entry {m.name!r}"
        parts = _parts(m.name, here)
        if not parts:
            return  # the root itself: its owner and mode are the store's
        name = parts[-1]
        if name.startswith(_WH):
            self._whiteout(parts, here)
            return
        if m.ischr() or m.isblk():
            if len(self.dropped) < _MAX_DROPPED:
                self.dropped.append("/".join(parts))
            return
        if m.issparse():  # the stream holds only the data; the file takes its full size
            self.budget.charge(max(m.size, 0), here)
        pfd = self._parent(parts, here)
        path = "/".join(parts)
        try:
            if m.isdir():
                if not self._clear(pfd, name, parts, keep_dir=True):
                    os.mkdir(name, 0o700, dir_fd=pfd)
                self._meta(pfd, name, m)
            elif m.isreg():
                self._clear(pfd, name, parts, keep_dir=False)
                self._write(tar, m, pfd, name)
            elif m.issym():
                self._clear(pfd, name, parts, keep_dir=False)
                os.symlink(m.linkname, name, dir_fd=pfd)
                os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            elif m.islnk():
                self._hardlink(m, pfd, name, parts, here)
            elif m.isfifo():
                self._clear(pfd, name, parts, keep_dir=False)
                os.mkfifo(name, 0o600, dir_fd=pfd)
                self._meta(pfd, name, m)
            else:
                raise ImageError(f"{here}: unsupported entry type {m.type!r}")
        except OSError as exc:
            raise ImageError(f"{here}: {exc.strerror}") from None
        self._layer_paths.add(path)

    def _write(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, name: str) -> None:
        src = tar.extractfile(m)
        assert src is not None
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            while chunk := src.read(_CHUNK):
                _write_all(fd, chunk)
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid bits
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)

    def _meta(self, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        _chmod_at(pfd, name, m.mode & 0o7777)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, name: str, parts: list[str],
                  here: str) -> None:
        target = _parts(m.linkname, f"{here}: hard link target {m.linkname!r}")
        if not target:
            raise ImageError(f"{here}: hard link to the root directory")
        if target == parts:
            return  # a link to itself: what is there stays
        tfd = self._walk(target[:-1], create=False, here=f"{here}: hard link target")
        try:
            st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(f"{here}: hard link to a directory ({m.linkname!r})")
            self._clear(pfd, name, parts, keep_dir=False)
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            raise ImageError(f"{here}: hard link target {m.linkname!r} is not in the image") \
                from None
        finally:
            os.close(tfd)

    def _whiteout(self, parts: list[str], here: str) -> None:
        name = parts[-1]
        self._forget()
        opaque = name == _OPAQUE   # its directory exists in this layer; a whiteout's may not
        pfd = self._walk(parts[:-1], create=opaque, here=here, missing_ok=not opaque)
        if pfd < 0:
            return   # nothing there to remove
        try:
            if opaque:
                prefix = "/".join(parts[:-1])
                with os.scandir(pfd) as entries:
                    names = [e.name for e in entries]
                for child in names:
                    if f"{prefix}/{child}".lstrip("/") not in self._layer_paths:
                        self._remove(pfd, child, parts[:-1] + [child])
            else:
                victim = name[len(_WH):]
                if victim in ("", ".", ".."):
                    raise ImageError(f"{here}: invalid whiteout")
                target = parts[:-1] + [victim]
                if "/".join(target) in self._layer_paths:
                    return   # a whiteout hides only what lower layers have (OCI)
                with contextlib.suppress(FileNotFoundError):
                    self._remove(pfd, victim, target)
        except OSError as exc:
            raise ImageError(f"{here}: {exc.strerror}") from None
        finally:
            os.close(pfd)

    # -- descriptors and removal -----------------------------------------------------------

    def _parent(self, parts: list[str], here: str) -> int:
        """The (cached) descriptor of ``parts``' parent directory; owned by the cache."""
        key = tuple(parts[:-1])
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        fd = self._walk(parts[:-1], create=True, here=here)
        self._forget()
        self._cache = (key, fd)
        return fd

    def _walk(self, parts: list[str], *, create: bool, here: str,
              missing_ok: bool = False) -> int:
        """A new descriptor of the directory ``parts`` below the root, reached without
        following a symbolic link; missing directories are made (0755, root) if ``create``,
        else -1 if ``missing_ok``."""
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    nfd = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._layer_paths.add("/".join(parts[:i + 1]))  # an opaque dir keeps it
                    nfd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as exc:
            os.close(fd)
            at = "/".join(parts[:i + 1])
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ImageError(f"{here}: {at} is a symbolic link or not a directory: "
                                 "nothing is written through it") from None
            if isinstance(exc, FileNotFoundError):
                if missing_ok:
                    return -1
                raise ImageError(f"{here}: {at} is not in the image") from None
            raise ImageError(f"{here}: {at}: {exc.strerror}") from None
        return fd

    def _clear(self, pfd: int, name: str, parts: list[str], *, keep_dir: bool) -> bool:
        """Remove what stands at ``name`` (True: a directory that stays, as ``keep_dir``
        asks)."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        self._remove(pfd, name, parts)
        return False

    def _remove(self, pfd: int, name: str, parts: list[str]) -> None:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            return
        # The parent chain was just walked without links: this path names the directory.
        key = tuple(parts)
        if self._cache is not None and self._cache[0][:len(key)] == key:
            self._forget()
        rmtree.remove_tree(os.path.join(self.root, *parts))


def _parts(name: str, here: str) -> list[str]:
    if name.startswith("/"):
        raise ImageError(f"{here}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{here}: '..' in the path")
    if len(parts) > MAX_DEPTH:
        raise ImageError(f"{here}: deeper than {MAX_DEPTH} directories")
    return parts


def _chmod_at(pfd: int, name: str, mode: int) -> None:
    # chmod() with follow_symlinks=False is not supported on Linux; only directories and
    # FIFOs come here, just created or checked under a descriptor nobody else writes to.
    os.chmod(name, mode, dir_fd=pfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
