"""Remove a tree the workload shaped, with bounded stack, memory and descriptors.

Why not ``shutil.rmtree`` or liblxc's ``destroy()``: both recurse once per directory level.
A workload that runs ``mkdir d && cd d`` a few thousand times made liblxc's recursive removal
of the overlay's upper layer overflow the C stack of whatever thread called ``destroy()`` (the
CLI, ``run()``, a ``Pool``'s reaper: SIGSEGV, everything left behind, and the next ``gc`` met
the same tree).  Python 3.11's ``shutil.rmtree`` recurses the same way (RecursionError, and
paths past PATH_MAX).  So the writable layer is emptied here first, and liblxc only ever meets
an empty one.

The algorithm is flat.  A *holding* directory is made inside the tree's root (same
filesystem, so ``rename()`` works).  Emptying a directory unlinks what is not a directory,
removes the empty subdirectories, and *hoists* every other subdirectory into the holding
directory under a counter name (``0``, ``1``, ...).  Then each hoisted directory is opened by
its number and emptied the same way (its own subdirectories get higher numbers), then removed.
Whatever the depth, no stack of frames, paths or open descriptors grows: the state is two
integers, at most four descriptors are open, and ``os.scandir`` streams entries in fixed-size
chunks, so a directory of millions of entries costs no more memory than one of ten.  Every call
is relative to a directory descriptor (names, never paths: no PATH_MAX), nothing follows a
symbolic link (``O_NOFOLLOW``, ``unlinkat``, ``renameat``), no special file is ever opened
(FIFOs, sockets and devices are only unlinked; a sparse file of any size is one unlink), and a
directory on another device (a mount point) is neither entered nor moved.

What cannot be removed (a mount point, an immutable file) stays and is reported in one
``RemovalError`` (a bounded number of examples, and a count), never by a crash.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from lxcbind.errors import SandboxError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_EXAMPLES = 5   # problems quoted in a RemovalError; the rest are only counted


class RemovalError(SandboxError):
    """Part of a tree could not be removed; ``left`` counts the entries that stayed."""

    def __init__(self, root: str, examples: list[str], left: int) -> None:
        more = f" (and {left - len(examples)} more)" if left > len(examples) else ""
        super().__init__(f"could not remove everything under {root}: "
                         f"{'; '.join(examples)}{more}")
        self.root = root
        self.examples = examples
        self.left = left


class _Remover:
    """One removal: the holding directory's descriptor, its counters, what failed."""

    def __init__(self, root: str, root_fd: int, hold_name: str, hold_fd: int) -> None:
        self.root = root
        self.root_fd = root_fd
        self.dev = os.fstat(root_fd).st_dev
        self.hold_name = hold_name
        self.hold_fd = hold_fd
        self.issued = 0      # names 0 .. issued-1 were given out in the holding directory
        self.failures = 0
        self.examples: list[str] = []
        self._pending: list[str] = []   # this pass's problems: only a last pass's count
        self._pending_count = 0

    def fail(self, what: str, exc: OSError | None = None, *, final: bool = True) -> None:
        text = f"{what}: {exc.strerror}" if exc is not None else what
        if not final:
            if len(self._pending) < _EXAMPLES:
                self._pending.append(text)
            self._pending_count += 1
            return
        self.failures += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(text)

    def empty(self, fd: int, skip: str | None = None) -> bool:
        """Empty the directory open as ``fd``; True when nothing was left in it.  Scanned
        again while a pass changed something: readdir while entries go is allowed to miss
        some, and a pass that changes nothing ends it."""
        while True:
            changed = left = False
            self._pending, self._pending_count = [], 0
            with os.scandir(fd) as entries:   # scandir dups fd: ours stays open
                for entry in entries:
                    if entry.name == skip:
                        continue
                    done = self._remove_entry(fd, entry)
                    changed |= done
                    left |= not done
            if not left:
                return True
            if not changed:   # the problems of this last pass are the ones that stay
                self.failures += self._pending_count
                room = _EXAMPLES - len(self.examples)
                self.examples.extend(self._pending[:max(0, room)])
                return False

    def _remove_entry(self, fd: int, entry: os.DirEntry[str]) -> bool:
        name = entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if not is_dir:
            try:
                os.unlink(name, dir_fd=fd)
                return True
            except FileNotFoundError:
                return True
            except IsADirectoryError:
                pass       # d_type said otherwise: handled as a directory below
            except OSError as exc:
                self.fail(repr(name), exc, final=False)
                return False
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self.fail(repr(name), exc, final=False)
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False  # changed under us (nothing of the workload runs): next pass
        if st.st_dev != self.dev:
            self.fail(f"{name!r}: a mount point (not entered)", final=False)
            return False
        try:
            os.rmdir(name, dir_fd=fd)   # empty already: one call, nothing to hoist
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                self.fail(repr(name), exc, final=False)
                return False
        try:
            os.rename(name, str(self.issued), src_dir_fd=fd, dst_dir_fd=self.hold_fd)
        except OSError as exc:
            self.fail(repr(name), exc, final=False)
            return False
        self.issued += 1
        return True

    def drain(self) -> None:
        """Empty and remove every hoisted directory, in the order they were hoisted (emptying
        one hoists more: the loop runs until the counter stops growing)."""
        done = 0
        while done < self.issued:
            name = str(done)
            done += 1
            try:
                fd = self._open_dir(self.hold_fd, name)
            except OSError as exc:
                self.fail(f"hoisted directory {name}", exc)
                continue
            try:
                emptied = self.empty(fd)
            finally:
                os.close(fd)
            if emptied:
                try:
                    os.rmdir(name, dir_fd=self.hold_fd)
                except OSError as exc:
                    self.fail(f"hoisted directory {name}", exc)

    @staticmethod
    def _open_dir(dir_fd: int, name: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            # Mode 000 stops a caller without CAP_DAC_OVERRIDE: the directory is ours to
            # remove (it was renamed here, so it is a directory and not a link).
            os.chmod(name, 0o700, dir_fd=dir_fd)
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def remove_tree(path: str, *, keep_root: bool = False) -> None:
    """Remove the directory ``path`` and everything under it (only its contents when
    ``keep_root``).  A missing ``path`` is fine; a ``path`` that is not a directory (a link
    included) is unlinked.  Raises ``RemovalError`` naming what stayed; never recurses.

    ``path`` itself is trusted (lxcbind's own directory); below it, nothing is."""
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    try:
        parent_fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            root_fd = _Remover._open_dir(parent_fd, base)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            os.unlink(base, dir_fd=parent_fd)
            return
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise RemovalError(path, [f"cannot open: {exc.strerror}"], 1) from None
            os.unlink(base, dir_fd=parent_fd)    # a symbolic link: the link goes, not its target
            return
        try:
            _remove_below(path, root_fd)
        finally:
            os.close(root_fd)
        if not keep_root:
            try:
                os.rmdir(base, dir_fd=parent_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise RemovalError(path, [f"{path}: {exc.strerror}"], 1) from None
    finally:
        os.close(parent_fd)


def _remove_below(path: str, root_fd: int) -> None:
    while True:
        hold_name = f".lxcbind-rm-{secrets.token_hex(6)}"
        try:
            os.mkdir(hold_name, 0o700, dir_fd=root_fd)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise RemovalError(path, [f"cannot make a holding directory: {exc.strerror}"],
                               1) from None
    hold_fd = os.open(hold_name, _DIR_FLAGS, dir_fd=root_fd)
    try:
        rm = _Remover(path, root_fd, hold_name, hold_fd)
        # The root's own entries, then the hoisted ones; again while the root still has some
        # (a hoisted directory that could not be emptied leaves the holding one non-empty).
        rm.empty(root_fd, skip=hold_name)
        rm.drain()
    finally:
        os.close(hold_fd)
    try:
        os.rmdir(hold_name, dir_fd=root_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or rm.failures == 0:
            rm.fail(f"holding directory {hold_name}", exc)
    if rm.failures:
        raise RemovalError(path, rm.examples, rm.failures)
