/* The wire format between lxcbind.Session (Python, on the host) and the spawner program
 * (spawner.c, inside the container).  Included by spawner.c and by the cffi module, so both
 * sides use the same numbers; described in full at the top of spawner.c. */
#ifndef LXCBIND_SPAWNER_PROTO_H
#define LXCBIND_SPAWNER_PROTO_H

#define LXCBIND_SPAWN_MAGIC 0x4c584253u /* "SBXL" */
#define LXCBIND_SPAWN_VERSION 2
#define LXCBIND_SPAWN_HEADER_SIZE 32
#define LXCBIND_SPAWN_RECORD_SIZE 16
#define LXCBIND_SPAWN_MAX_INLINE (96 * 1024)
#define LXCBIND_SPAWN_MAX_EXTRA_FDS 8
#define LXCBIND_SPAWN_MAX_STRINGS 262144
#define LXCBIND_SPAWN_MAX_CHILDREN 4096
#define LXCBIND_SPAWN_MAX_DATA (64 * 1024 * 1024)

/* request flags */
#define LXCBIND_SPAWN_CWD 1
#define LXCBIND_SPAWN_CTTY 2
#define LXCBIND_SPAWN_MEMFD 4
/* one more string after cwd: "uid:gid:g1,g2,..." (a per-call user; groups may be empty) */
#define LXCBIND_SPAWN_USER 8
#define LXCBIND_SPAWN_MAX_GROUPS 64

/* record types */
#define LXCBIND_REC_HELLO 'H'
#define LXCBIND_REC_START 'S'
#define LXCBIND_REC_EXIT 'X'
#define LXCBIND_REC_REFUSED 'E'
#define LXCBIND_REC_KILL 'K'

/* stage of a START record whose clone() itself failed (1-3 are shim.h's CHDIR/CTTY/EXEC) */
#define LXCBIND_STAGE_SPAWN 4
/* stage of a START record whose setgroups/setgid/setuid (LXCBIND_SPAWN_USER) failed */
#define LXCBIND_STAGE_USER 5

#endif
