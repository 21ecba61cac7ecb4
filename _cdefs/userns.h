/* Host-side user namespaces for idmapped mounts (userns.c). */

/* Make a user namespace with the given uid_map/gid_map contents (e.g. "1000 1073741824 1\n")
 * and bind-mount its nsfs file onto `target` (an existing empty file), so that liblxc can use
 * `idmap=<target>` on a mount entry.  Returns 0 or -errno. */
int lxcbind_userns_bind(const char *target, const char *uid_map, const char *gid_map);

/* Mount an idmapped, read-only, nosuid, nodev clone of the directory `source` at `target` (an
 * existing empty directory), private: files owned by layer id N appear owned by the host id
 * `map` gives N ("0 <start> 65536\n", for uids and gids).  The new mount API (open_tree,
 * mount_setattr, move_mount).  Returns 0 or -errno. */
int lxcbind_idmapped_bind(const char *source, const char *target, const char *map);

/* Undo lxcbind_userns_bind (libc). */
#define MNT_DETACH ...
int umount2(const char *target, int flags);

/* Bind-mount `source` onto `target` (an existing file or directory) and make the new mount
 * private, so nothing propagates between it and the container's copy.  Returns 0 or -errno. */
int lxcbind_bind_private(const char *source, const char *target);

/* Mount a filesystem on the host (libc): the disk limit's per-container ext4 layer.
 * Returns 0, or -1 with errno set. */
#define MS_NOSUID ...
#define MS_NODEV ...
#define MS_NOATIME ...
int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
