"""The session spawner's wire format, as the C side defines it (``_cdefs/spawner_proto.h``).

The binding layer re-exports the constants so that the process layer speaks the protocol
without touching ``lib`` itself; the struct layouts are checked against C's sizes at import.
"""

from __future__ import annotations

import struct

from lxcbind.lxc._native import lib

HEADER = struct.Struct("=8I")
RECORD = struct.Struct("=4i")
assert HEADER.size == lib.LXCBIND_SPAWN_HEADER_SIZE
assert RECORD.size == lib.LXCBIND_SPAWN_RECORD_SIZE

VERSION = lib.LXCBIND_SPAWN_VERSION
MAGIC = lib.LXCBIND_SPAWN_MAGIC
MAX_INLINE = lib.LXCBIND_SPAWN_MAX_INLINE
MAX_EXTRA_FDS = lib.LXCBIND_SPAWN_MAX_EXTRA_FDS
REC_HELLO = lib.LXCBIND_REC_HELLO
REC_START = lib.LXCBIND_REC_START
REC_EXIT = lib.LXCBIND_REC_EXIT
REC_REFUSED = lib.LXCBIND_REC_REFUSED
REC_KILL = lib.LXCBIND_REC_KILL
FLAG_CWD = lib.LXCBIND_SPAWN_CWD
FLAG_CTTY = lib.LXCBIND_SPAWN_CTTY
FLAG_MEMFD = lib.LXCBIND_SPAWN_MEMFD
FLAG_USER = lib.LXCBIND_SPAWN_USER   # a per-call user: "uid:gid:g1,g2" after cwd
MAX_GROUPS = lib.LXCBIND_SPAWN_MAX_GROUPS
EXEC_SPAWNER = lib.LXCBIND_EXEC_SPAWNER   # attach mode: exec the spawner program
STAGES = {
    lib.LXCBIND_STAGE_CHDIR: "chdir",
    lib.LXCBIND_STAGE_CTTY: "ctty",
    lib.LXCBIND_STAGE_EXEC: "exec",
    lib.LXCBIND_STAGE_SPAWN: "spawn",
    lib.LXCBIND_STAGE_USER: "user",
}
