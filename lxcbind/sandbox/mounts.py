"""The filesystem policy turned into ``lxc.mount.entry`` items.

Semantics (mxc's, with its known bugs fixed; see ``notes/policy-format.md`` §3 and §6):

* Identity mapping: a host path appears at the same path inside the container.  The container
  path is the host path's *real* location (symlinks resolved), so a path reached through a
  symlink (``/lib/x`` on a merged-usr host) lands where the rootfs can hold it.
* The most specific path wins: entries are applied shallow to deep; at equal depth
  denied > read-only > read-write (the last mount wins).
* Aliases (different paths, one inode by ``os.stat``) all get the strictest intent of the
  group, so a denied symlink or a hard link cannot be read through its other name.
* Read-write and read-only are plain (non-recursive) binds, and every mount the host has below
  a granted path is re-bound on its own with the same intent: read-only is read-only all the
  way down, and no pseudo filesystem (proc, sysfs ...) of the host leaks through a grant.
* A denied regular file (anything not a directory) is masked by ``/dev/null`` bound read-only
  (reads empty); a denied directory by an empty read-only tmpfs (lists empty).  When granted
  paths are nested inside a denied directory the tmpfs must hold their mountpoints: it is then
  writable but limited to exactly the inodes of those mountpoints (``nr_inodes``), so nothing
  else can ever be created in it.
* A denied symlink masks its real target; a dangling one is refused (it cannot be masked
  safely).  A denied path missing on the host is masked only if the container's rootfs has it
  (``optional`` entries) and skipped for the ``host`` rootfs, whose only non-host content is
  lxcbind's own skeleton.
* Files can be granted (``create=file``); spaces are escaped (``\\040``); control characters
  (newline, tab ...) are refused because they could break or inject config lines.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence

from lxcbind._lite import record, sha256_hex
from lxcbind.errors import PolicyError, SandboxError
from lxcbind.lxc import mountinfo as _mountinfo
from lxcbind.state import STATE_ROOT

RW, RO, DENIED = "rw", "ro", "denied"
# Higher rank wins a tie at the same depth (it is mounted later).
_RANK = {RW: 1, RO: 2, DENIED: 3}
_FIELD = {RW: "filesystem.readwritePaths", RO: "filesystem.readonlyPaths",
          DENIED: "filesystem.deniedPaths"}

# Host mounts below a granted path that are never re-bound into the container: kernel
# interfaces whose host instance would describe or control the host, not the container.
_PSEUDO_FS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs",
    "securityfs", "bpf", "fusectl", "configfs", "pstore", "binfmt_misc", "autofs", "efivarfs",
    "nsfs", "hugetlbfs", "rpc_pipefs", "selinuxfs",
})

_MASK_DIR_OPTS = "nosuid,nodev,noexec,mode=0755"


@record
class MountEntry:
    """One ``lxc.mount.entry``: ``target`` is relative to the rootfs (no leading ``/``).

    ``owner`` (uid, gid) makes it an idmapped bind: the host ``owner`` appears as the
    container's root, and what the container's root creates lands owned by ``owner``."""

    source: str
    target: str
    fstype: str
    options: str
    owner: tuple[int, int] | None = None
    staged: bool = False    # the source is reached through a host-side bind (see idmap)

    def config_value(self, container_dir: str = "") -> str:
        """The entry as liblxc parses it (fstab syntax: whitespace and ``\\`` escaped).  An
        idmapped entry names the user-namespace file, and a staged one its staged source,
        that ``idmap.stage`` makes in the container's directory before each start."""
        from lxcbind.sandbox.idmap import staged_path, userns_path

        options, source = self.options, self.source
        if self.owner is not None:
            options += f",idmap={_escape(userns_path(container_dir, self.owner))}"
        if self.staged:
            source = staged_path(container_dir, self.source)
        return f"{_escape(source)} {_escape(self.target)} {self.fstype} {options} 0 0"


def _escape(text: str) -> str:
    # liblxc reads entries with getmntent(), which decodes these octal escapes.
    return text.replace("\\", "\\134").replace(" ", "\\040")


@record(frozen=False)
class _Item:
    """One policy path after resolution."""

    intent: str
    field: str          # JSON path, e.g. filesystem.deniedPaths[1]
    given: str
    real: str           # resolved absolute path: the container path (identity mapping)
    exists: bool
    is_dir: bool = False
    key: tuple[int, int] | None = None


def _check_string(field: str, path: object) -> str:
    if not isinstance(path, str) or not path.strip():
        raise PolicyError(field, "must be a non-empty path")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise PolicyError(field, f"path {path!r} contains a control character (newline, tab ...)"
                          " which could break or inject LXC config lines")
    if not path.startswith("/"):
        raise PolicyError(field, f"path {path!r} must be absolute")
    return path


def _resolve(field: str, intent: str, path: str) -> _Item:
    real = os.path.realpath(path)
    if os.path.lexists(path) and not os.path.exists(path):
        # realpath could not get past a symlink: masking or binding it is impossible to do
        # safely (mounting over a symlink aborts the start).
        raise PolicyError(field, f"{path!r} is a dangling symlink (to {real!r}) and cannot be "
                          "safely bound or masked; refusing to start")
    if real == "/":
        raise PolicyError(field, "the root directory itself cannot be bound or masked; name "
                          "the directories below it")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return _Item(intent, field, path, real, exists=False)
    except NotADirectoryError:
        return _Item(intent, field, path, real, exists=False)
    except OSError as exc:
        # Fail closed: an unreadable path (EACCES, a dead network mount) cannot be classified.
        raise PolicyError(field, f"cannot inspect {path!r}: {exc.strerror}") from None
    return _Item(intent, field, path, real, exists=True, is_dir=stat.S_ISDIR(st.st_mode),
                 key=(st.st_dev, st.st_ino))


def _depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


def _under(child: str, parent: str) -> bool:
    """``child`` strictly below ``parent`` (component boundary: ``/data`` ≠ ``/database``)."""
    return child.startswith(parent.rstrip("/") + "/")


def host_submounts(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """``(mountpoint, fstype)`` of every host mount strictly below ``path``, shallow first."""
    return [(m.point, m.fstype) for m in _mountinfo.below(path, mountinfo)]


def _bind(source: str, target: str, intent: str, is_dir: bool) -> MountEntry:
    options = ["bind"]
    if intent == RO:
        options.append("ro")
    options.append("create=dir" if is_dir else "create=file")
    return MountEntry(source, target.lstrip("/"), "none", ",".join(options))


def _mountpoints_needed(denied: str, nested: Iterable[_Item]) -> int:
    """Inodes a mask tmpfs needs for the mountpoints (and their parents) of ``nested``."""
    paths: set[str] = set()
    for item in nested:
        rel = item.real[len(denied.rstrip("/")) + 1:].split("/")
        for i in range(1, len(rel) + 1):
            paths.add("/".join(rel[:i]))
    return len(paths)


def plan_mounts(readwrite: Sequence[str], readonly: Sequence[str], denied: Sequence[str], *,
                rootfs_kind: str, idmapped: bool = False) -> list[MountEntry]:
    """The mount entries, in order, that apply the filesystem policy to a container.

    ``idmapped`` (unprivileged containers): every host bind is *staged* (its source is bound
    by host root into the container's directory first, so the container's mapped root, which
    may not traverse the host path, can reach it) and idmapped: the host path's owner appears
    as the container's root, so the workload can read what the owner can, write what a
    read-write grant allows, and its files land owned by that owner.
    liblxc mounts idmapped entries in a second pass, after all plain ones, so everything
    below an idmapped bind is made idmapped too (masks become idmapped read-only binds of an
    empty file or directory): the order the policy needs is kept.

    Raises ``PolicyError`` (with the JSON path, e.g. ``filesystem.deniedPaths[1]``) for a bad
    path string or a dangling denied symlink, ``SandboxError`` naming a read-write or read-only
    path that does not exist.  Reads the host (stat, realpath, mountinfo); changes nothing.
    """
    items: list[_Item] = []
    for intent, paths in ((RW, readwrite), (RO, readonly), (DENIED, denied)):
        if isinstance(paths, str):
            raise PolicyError(_FIELD[intent], "must be a list of paths, not a string")
        for index, path in enumerate(paths):
            field = f"{_FIELD[intent]}[{index}]"
            items.append(_resolve(field, intent, _check_string(field, path)))

    for item in items:
        if item.intent != DENIED and not item.exists:
            raise SandboxError(f"{item.field}: {item.given!r} does not exist on the host")

    # Aliases: one object reached by several names gets the strictest intent under all of them.
    strictest: dict[tuple[int, int], str] = {}
    for item in items:
        if item.key is not None:
            best = strictest.get(item.key, RW)
            strictest[item.key] = item.intent if _RANK[item.intent] > _RANK[best] else best
    for item in items:
        if item.key is not None:
            item.intent = strictest[item.key]

    # One entry per container path: the strictest intent wins (identical or aliased strings).
    by_target: dict[str, _Item] = {}
    for item in items:
        held = by_target.get(item.real)
        if held is None or _RANK[item.intent] > _RANK[held.intent]:
            by_target[item.real] = item
    chosen = sorted(by_target.values(), key=lambda it: (_depth(it.real), _RANK[it.intent]))

    def nearest_ancestor(path: str) -> _Item | None:
        best = None
        for other in chosen:
            deeper = best is None or _depth(other.real) > _depth(best.real)
            if _under(path, other.real) and deeper:
                best = other
        return best

    planned: list[tuple[int, int, MountEntry]] = []  # (depth, rank, entry); rank 0 = derived
    for item in chosen:
        parent = nearest_ancestor(item.real)
        if item.intent == DENIED:
            if parent is not None and parent.intent == DENIED:
                continue  # already hidden by the enclosing mask (whose tmpfs could not hold it)
            if not item.exists:
                if rootfs_kind == "host":
                    continue  # the host rootfs has nothing the host lacks (skeleton aside)
                target = item.real.lstrip("/")
                # Whichever kind the container's path turns out to be, one of these applies;
                # a missing path makes both fail, and `optional` then skips them.
                planned.append((_depth(item.real), 3, MountEntry(
                    "tmpfs", target, "tmpfs", f"ro,{_MASK_DIR_OPTS},size=4k,optional")))
                planned.append((_depth(item.real), 3, MountEntry(
                    "/dev/null", target, "none", "bind,ro,optional")))
                continue
            if not item.is_dir:
                planned.append((_depth(item.real), 3, MountEntry(
                    "/dev/null", item.real.lstrip("/"), "none", "bind,ro,create=file")))
                continue
            nested = [o for o in chosen if o.intent != DENIED and _under(o.real, item.real)]
            if nested:
                inodes = 1 + _mountpoints_needed(item.real, nested)
                options = f"rw,{_MASK_DIR_OPTS},size=4k,nr_inodes={inodes},create=dir"
            else:
                options = f"ro,{_MASK_DIR_OPTS},size=4k,create=dir"
            planned.append((_depth(item.real), 3,
                            MountEntry("tmpfs", item.real.lstrip("/"), "tmpfs", options)))
            continue

        planned.append((_depth(item.real), _RANK[item.intent],
                        _bind(item.real, item.real, item.intent, item.is_dir)))
        if not item.is_dir:
            continue
        # Host mounts below a grant: re-bind each one that this grant (and no deeper policy
        # path) governs, with this grant's intent.
        for point, fstype in host_submounts(item.real):
            if fstype in _PSEUDO_FS or point in by_target:
                continue
            owner = nearest_ancestor(point)
            if owner is not item:
                continue
            try:
                is_dir = stat.S_ISDIR(os.stat(point).st_mode)
            except OSError:
                continue  # overmounted or vanished: nothing to show
            planned.append((_depth(point), 0, _bind(point, point, item.intent, is_dir)))

    planned.sort(key=lambda t: (t[0], t[1]))
    entries = [entry for _, _, entry in planned]
    return _idmap_entries(entries, {it.real: it for it in chosen}) if idmapped else entries


MASK_ROOT = os.path.join(STATE_ROOT, "masks")


def _mask_source(is_dir: bool, mountpoints: Sequence[tuple[str, bool]] = ()) -> str:
    """An empty, root-owned, read-only file or directory to bind over a denied path; a
    directory holds the (relative path, is_dir) mountpoints of grants nested inside it.
    Content-addressed and never changed once made, so containers share them."""
    name = "file" if not is_dir else "dir-" + sha256_hex(
        repr(sorted(mountpoints)).encode())[:16]
    path = os.path.join(MASK_ROOT, name)
    if os.path.lexists(path):
        return path
    os.makedirs(MASK_ROOT, 0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    if not is_dir:
        with open(tmp, "w"):
            pass
        os.chmod(tmp, 0o444)
    else:
        os.mkdir(tmp, 0o755)
        for rel, sub_is_dir in sorted(mountpoints):
            target = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(target), 0o555, exist_ok=True)
            if sub_is_dir:
                os.makedirs(target, 0o555, exist_ok=True)
            else:
                with open(target, "w"):
                    pass
        for folder, _, _ in os.walk(tmp):
            os.chmod(folder, 0o555)
    try:
        os.rename(tmp, path)
    except OSError:  # another run made it first: same content
        import shutil

        shutil.rmtree(tmp, ignore_errors=True) if is_dir else os.unlink(tmp)
    return path


def _idmap_entries(entries: list[MountEntry], items: dict[str, _Item]) -> list[MountEntry]:
    """Make every host bind idmapped (owner = the host path's owner: it appears as the
    container's root, read-only binds stay read-only) and staged, and every mask below an
    idmapped entry an idmapped bind of an empty file or directory (see ``plan_mounts``)."""
    out: list[MountEntry] = []
    mapped: list[MountEntry] = []
    for entry in entries:
        target = "/" + entry.target
        above = [m for m in mapped if _under(target, "/" + m.target)]
        parent = max(above, key=lambda m: len(m.target)) if above else None
        if entry.fstype == "none" and entry.source != "/dev/null":
            st = os.stat(entry.source)
            entry = MountEntry(entry.source, entry.target, entry.fstype, entry.options,
                               (st.st_uid, st.st_gid), staged=True)
        elif parent is not None:
            if "optional" in entry.options.split(","):
                continue  # a missing denied path below a host directory: nothing to mask
            is_dir = entry.fstype == "tmpfs"
            nested = [(it.real[len(target) + 1:], it.is_dir) for it in items.values()
                      if it.intent != DENIED and _under(it.real, target)] if is_dir else []
            entry = MountEntry(_mask_source(is_dir, nested), entry.target, "none",
                               f"bind,ro,create={'dir' if is_dir else 'file'}", parent.owner)
        if entry.owner is not None:
            mapped.append(entry)
        out.append(entry)
    return out


def maps_host_root_writable(entries: Sequence[MountEntry]) -> bool:
    """Whether a writable idmapped bind maps host uid or gid 0 to the container's root (then
    setuid/setgid bits must be refused: such a file would be setuid-root on the host)."""
    return any(e.owner is not None and 0 in e.owner and "ro" not in e.options.split(",")
               for e in entries)
