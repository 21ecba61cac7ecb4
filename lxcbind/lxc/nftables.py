"""nftables, in-process: a thin owner of one libnftables context.

lxcbind never spawns the ``nft`` program: ``Nft.run`` hands a script to
``nft_run_cmd_from_buffer`` and reads libnftables' own output and error buffers, so a failure
comes back as an ``NftError`` carrying nft's message (with the offending line marked), and
applying rules costs no fork+exec.

Contract:

* **One script, one transaction.**  libnftables sends every command of one buffer in a single
  netlink batch, which the kernel commits all-or-nothing.  ``apply`` relies on that: a script
  that deletes and re-creates a table replaces it atomically, with no instant where the old
  rules are gone and the new ones not yet there.
* **Network namespace.**  A context talks to the network namespace its netlink socket was
  opened in, which is the namespace of the *thread* that opened it (namespaces are per thread
  on Linux).  ``Nft()`` uses the caller's namespace.  ``Nft(netns=path)`` (``/run/netns/NAME``
  or ``/proc/PID/ns/net``) starts one dedicated worker thread, moves that thread alone into the
  namespace with ``setns(2)``, creates the context there and runs every later call on it, so
  the rest of the process never changes namespace.  Tests use this to apply tables inside
  throwaway namespaces instead of the host's.
* **Thread-safety.**  libnftables contexts are not thread-safe; a lock serializes every call.
* **Lifetime.**  ``Nft`` is a context manager; ``close()`` is idempotent and frees the context.

Helpers validate family and table names before putting them into a script, so a caller's
string can never inject extra commands.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lxcbind.errors import LxcbindError

__all__ = ["FAMILIES", "Nft", "NftError"]

T = TypeVar("T")

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
# Plain identifiers only: nft accepts more, but these never need quoting or clash with syntax.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class NftError(LxcbindError):
    """A libnftables command failed.  ``message`` is nft's own error text, ``rc`` its status."""

    def __init__(self, message: str, rc: int = -1) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc


def _lib() -> tuple[Any, Any]:
    # libnftables is a compiled module of its own (``lxcbind._nft``): a run without a network
    # device never loads it, nor the five libraries it links.
    try:
        from lxcbind._nft import ffi, lib
    except ImportError as exc:  # pragma: no cover - depends on the build
        raise ImportError(
            f"lxcbind's compiled module lxcbind._nft is missing or cannot load ({exc}). "
            "Install libnftables (apt-get install libnftables-dev pkg-config) and rebuild: "
            "pip install -e .") from exc
    return ffi, lib


def _check_table(family: str, name: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown nftables family {family!r} (expected one of {FAMILIES})")
    if not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"invalid nftables table name {name!r}")


class Nft:
    """One libnftables context (see the module docstring).

    Raises:
        NftError: the context cannot be created, or ``netns`` cannot be entered.
    """

    def __init__(self, netns: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._ctx: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.netns = None if netns is None else os.fspath(netns)
        if self.netns is not None:
            # One worker, reused for every call: it stays in the namespace it entered.
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="lxcbind-nft")
        try:
            self._ctx = self._call(self._open)
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- plumbing

    def _call(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            return fn()
        return self._pool.submit(fn).result()

    def _open(self) -> Any:
        ffi, lib = _lib()
        if self.netns is not None:
            fd = os.open(self.netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if lib.setns(fd, lib.CLONE_NEWNET) != 0:
                    err = ffi.errno
                    raise NftError(f"cannot enter network namespace {self.netns}: "
                                   f"{os.strerror(err)}")
            finally:
                os.close(fd)
        ctx = lib.nft_ctx_new(lib.NFT_CTX_DEFAULT)
        if ctx == ffi.NULL:
            raise NftError("nft_ctx_new failed (out of memory?)")
        # Buffer both streams: otherwise libnftables prints to the process's stdout/stderr.
        if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
            lib.nft_ctx_free(ctx)
            raise NftError("cannot buffer libnftables output")
        return ctx

    def _run(self, script: bytes) -> tuple[int, str, str]:
        ffi, lib = _lib()
        rc = lib.nft_run_cmd_from_buffer(self._ctx, script)
        # Reading a buffer also rewinds it, so the next command starts with empty buffers.
        out = lib.nft_ctx_get_output_buffer(self._ctx)
        err = lib.nft_ctx_get_error_buffer(self._ctx)
        return (rc, ffi.string(out).decode(errors="replace") if out != ffi.NULL else "",
                ffi.string(err).decode(errors="replace") if err != ffi.NULL else "")

    def close(self) -> None:
        """Free the context and stop the namespace worker.  Idempotent."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
            if ctx is not None:
                _, lib = _lib()
                self._call(lambda: lib.nft_ctx_free(ctx))
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- API

    def run(self, script: str) -> str:
        """Run an nft script (any commands, ``list`` included); return what nft printed.

        Raises:
            NftError: nft rejected the script or the kernel refused the transaction; the
                message is libnftables' error text (nothing of the script was applied).
        """
        if "\0" in script:
            raise ValueError("nft script contains a NUL byte")
        data = script.encode()
        with self._lock:
            if self._ctx is None:
                raise NftError("this Nft context is closed")
            rc, out, err = self._call(lambda: self._run(data))
        if rc != 0:
            raise NftError(err.strip() or f"nft command failed (status {rc})", rc)
        return out

    def apply(self, script: str) -> None:
        """Apply a ruleset script as one transaction: all of it, or (on error) none of it.

        Raises:
            NftError: as for ``run``.
        """
        self.run(script)

    def list_table_names(self, prefix: str = "",
                         family: str | None = None) -> list[tuple[str, str]]:
        """``(family, name)`` of every table whose name starts with ``prefix``, sorted."""
        if family is not None and family not in FAMILIES:
            raise ValueError(f"unknown nftables family {family!r}")
        out = self.run("list tables" if family is None else f"list tables {family}")
        found = []
        for line in out.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "table" and words[2].startswith(prefix):
                found.append((words[1], words[2]))
        return sorted(found)

    def table_exists(self, family: str, name: str) -> bool:
        _check_table(family, name)
        return (family, name) in self.list_table_names(name, family)

    def delete_table(self, family: str, name: str) -> None:
        """Delete a table with everything in it; a missing table is not an error.

        ``add`` then ``delete`` in one transaction: nft 1.0.6 has no ``destroy`` command, and
        ``add table`` is a no-op on an existing table, so this never fails on absence and never
        races with another process creating the table in between.
        """
        _check_table(family, name)
        self.run(f"add table {family} {name}\ndelete table {family} {name}\n")
