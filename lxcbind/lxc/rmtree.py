"""Remove a tree the workload shaped, with bounded stack, memory and descriptors.

Why not ``shutil.rmtree`` or liblxc's ``destroy()``: both recurse once per directory level.
A workload that runs ``mkdir d && cd d`` a few thousand times made liblxc's recursive removal
of the overlay's upper layer overflow the C stack of whatever thread called ``destroy()`` (the
CLI, ``run()``, a ``Pool``'s reaper: SIGSEGV, everything left behind, and the next ``gc`` met
the same tree).  Python 3.11's ``shutil.rmtree`` recurses the same way (RecursionError, and
paths past PATH_MAX).  So the writable layer is emptied here first, and liblxc only ever meets
an empty one.

The algorithm is flat past a fixed depth.  Emptying a directory unlinks what is not a
directory, removes the empty subdirectories, and empties the others in place for the first
``_IN_PLACE`` levels (so a normal small layer costs no more calls than a plain removal).
Below that, a subdirectory is *hoisted*: renamed into a holding directory made inside the
tree's root (same filesystem, so ``rename()`` works) under a counter name (``0``, ``1``, ...).
Then each hoisted directory is opened by its number and emptied the same way (its own deep
subdirectories get higher numbers), then removed.  Whatever the depth, at most ``_IN_PLACE``
frames, scandir buffers and a few more descriptors are in use, the rest of the state is two
integers, and ``os.scandir`` streams entries in fixed-size chunks, so a directory of millions
of entries costs no more memory than one of ten.  Every call is relative to a directory
descriptor (names, never paths: no PATH_MAX), nothing follows a symbolic link
(``O_NOFOLLOW``, ``unlinkat``, ``renameat``), no special file is ever opened (FIFOs, sockets and
devices are only unlinked; a sparse file of any size is one unlink), and a directory on another
device (a mount point) is neither entered nor moved (one above it may be hoisted: the mount
moves with it, still reported).  lxcbind removes the writable layer only once the container
is stopped: no process of the workload renames things under it meanwhile.

What cannot be removed (a mount point, an immutable file) stays and is reported in one
``RemovalError`` (a bounded number of examples, and a count), never by a crash.
"""

from __future__ import annotations

import errno
import os
import stat

from lxcbind.errors import SandboxError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_EXAMPLES = 5   # problems quoted in a RemovalError; the rest are only counted
_IN_PLACE = 8   # levels removed in place before hoisting starts (frames, fds: bounded)


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
    """One removal: the holding directory (made on first need), its counter, what failed."""

    def __init__(self, root: str, root_fd: int) -> None:
        self.root = root
        self.root_fd = root_fd
        self.dev = os.fstat(root_fd).st_dev
        self.hold_name = ""
        self.hold_fd = -1
        self.issued = 0      # names 0 .. issued-1 were given out in the holding directory
        self.failures = 0
        self.examples: list[str] = []

    def fail(self, text: str) -> None:
        self.failures += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(text)

    def close(self) -> None:
        if self.hold_fd >= 0:
            os.close(self.hold_fd)
            self.hold_fd = -1

    def _hold(self) -> int:
        """The holding directory's descriptor, made in the root at the first hoist (a small
        tree never needs one: two metadata writes saved on every teardown)."""
        if self.hold_fd < 0:
            while True:
                # os.urandom, not ``secrets``: that imports hmac and OpenSSL's hashlib (~3 ms
                # of every CLI run) for a name that only has to be unlikely to exist.
                name = f".lxcbind-rm-{os.urandom(6).hex()}"
                try:
                    os.mkdir(name, 0o700, dir_fd=self.root_fd)
                    break
                except FileExistsError:
                    continue
            self.hold_name = name
            self.hold_fd = os.open(name, _DIR_FLAGS, dir_fd=self.root_fd)
        return self.hold_fd

    def empty(self, fd: int, level: int, *, is_root: bool = False, report: bool = True) -> bool:
        """Empty the directory open as ``fd``; True when nothing was left in it.  Scanned
        again while a pass changed something (readdir while entries go may miss some); the
        problems of the last pass, one that changed nothing, are the ones reported (unless
        not ``report``: a directory emptied in place that keeps something is hoisted, and
        its problems are reported once, where the holding directory is drained)."""
        while True:
            changed, problems = False, []
            with os.scandir(fd) as entries:   # scandir dups fd: ours stays open
                for entry in entries:
                    if is_root and entry.name == self.hold_name:
                        continue
                    problem = self._remove_entry(fd, entry, level)
                    if problem is None:
                        changed = True
                    else:
                        problems.append(problem)
            if not problems:
                return True
            if not changed:
                for problem in problems:
                    if problem and report:   # "": a race, seen again by a later pass
                        self.fail(problem)
                return False

    def _remove_entry(self, fd: int, entry: os.DirEntry[str], level: int) -> str | None:
        """Remove (or hoist) one entry: None when it is gone from ``fd``, else the problem."""
        name = entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if not is_dir:
            try:
                os.unlink(name, dir_fd=fd)
                return None
            except FileNotFoundError:
                return None
            except IsADirectoryError:
                pass       # d_type said otherwise: handled as a directory below
            except OSError as exc:
                return f"{name!r}: {exc.strerror}"
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{name!r}: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return ""     # replaced meanwhile: the next pass unlinks it
        if st.st_dev != self.dev:
            return f"{name!r}: a mount point (not entered)"
        try:
            os.rmdir(name, dir_fd=fd)   # empty already: one call
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                return f"{name!r}: {exc.strerror}"
        if level < _IN_PLACE:
            # A few levels in place (bounded: at most _IN_PLACE frames and descriptors), so a
            # normal small layer needs no holding directory and no rename.
            try:
                sub = self._open_dir(fd, name)
            except OSError as exc:
                return f"{name!r}: {exc.strerror}"
            try:
                emptied = self.empty(sub, level + 1, report=False)
            finally:
                os.close(sub)
            if emptied:
                try:
                    os.rmdir(name, dir_fd=fd)
                    return None
                except OSError as exc:
                    return f"{name!r}: {exc.strerror}"
        try:
            os.rename(name, str(self.issued), src_dir_fd=fd, dst_dir_fd=self._hold())
        except OSError as exc:
            return f"{name!r}: {exc.strerror}"
        self.issued += 1
        return None

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
                self.fail(f"hoisted directory {name}: {exc.strerror}")
                continue
            try:
                emptied = self.empty(fd, 1)
            finally:
                os.close(fd)
            if emptied:
                try:
                    os.rmdir(name, dir_fd=self.hold_fd)
                except OSError as exc:
                    self.fail(f"hoisted directory {name}: {exc.strerror}")

    @staticmethod
    def _open_dir(dir_fd: int, name: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            # Mode 000 stops a caller without CAP_DAC_OVERRIDE: the directory is ours to
            # remove (nothing of the workload runs any more to swap it for a link).
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
    rm = _Remover(path, root_fd)
    try:
        rm.empty(root_fd, 0, is_root=True)
        rm.drain()
    finally:
        rm.close()
    if rm.hold_name:
        try:
            os.rmdir(rm.hold_name, dir_fd=root_fd)
        except OSError as exc:
            if rm.failures == 0:
                rm.fail(f"holding directory {rm.hold_name}: {exc.strerror}")
    if rm.failures:
        raise RemovalError(path, rm.examples, rm.failures)
