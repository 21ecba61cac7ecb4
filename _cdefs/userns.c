/* A user namespace that exists only to describe an id mapping for an idmapped mount.
 *
 * liblxc's `idmap=<path>` mount option wants a path to a user-namespace file.  Nothing needs to
 * run in that namespace: a child process unshares it, the parent writes the maps and
 * opens /proc/<child>/ns/user (lxcbind_userns_open), the child exits, and the open file is
 * bind-mounted onto `target` (lxcbind_userns_bind).  The bind mount keeps the
 * namespace alive until the caller unmounts it (right after the container started).
 * The child only makes async-signal-safe system calls: this runs in a threaded interpreter. */
#include <sched.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/mount.h>

static int lxcbind_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int err = n < 0 ? -errno : ((size_t)n == len ? 0 : -EIO);
    close(fd);
    return err;
}

/* In a child forked from a threaded caller: close every descriptor but `keep_a` and `keep_b`.
 * Another thread may have pipes of its own open at the moment of the fork (two starters
 * making idmapped mounts at once); a child that kept their write ends would keep the other
 * child from ever seeing its EOF, and both callers would wait in waitpid() forever. */
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
static void lxcbind_close_all_but(int keep_a, int keep_b)
{
    int lo = keep_a < keep_b ? keep_a : keep_b, hi = keep_a < keep_b ? keep_b : keep_a;
    if (lo > 3 && syscall(SYS_close_range, 3U, (unsigned)(lo - 1), 0U) < 0)
        goto slow;
    if (hi > lo + 1 && syscall(SYS_close_range, (unsigned)(lo + 1), (unsigned)(hi - 1), 0U) < 0)
        goto slow;
    if (syscall(SYS_close_range, (unsigned)(hi + 1), ~0U, 0U) < 0)
        goto slow;
    return;
slow:  /* a kernel before 5.9 */
    for (int fd = 3; fd < 65536; fd++)
        if (fd != keep_a && fd != keep_b)
            close(fd);
}

/* Defined below: a user namespace with these maps, as an open file, or -errno. */
static int lxcbind_userns_open(const char *uid_map, const char *gid_map);

static int lxcbind_userns_bind(const char *target, const char *uid_map, const char *gid_map)
{
    int ns = lxcbind_userns_open(uid_map, gid_map);
    if (ns < 0)
        return ns;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", ns);
    int err = mount(path, target, NULL, MS_BIND, NULL) < 0 ? -errno : 0;
    close(ns);  /* the bind mount keeps the namespace */
    return err;
}

static int lxcbind_bind_private(const char *source, const char *target)
{
    if (mount(source, target, NULL, MS_BIND, NULL) < 0)
        return -errno;
    if (mount(NULL, target, NULL, MS_PRIVATE, NULL) < 0) {
        int err = -errno;
        umount2(target, MNT_DETACH);
        return err;
    }
    return 0;
}

/* The new mount API, by number: glibc 2.36 has no wrappers (same numbers on every arch). */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

/* A user namespace with these maps, as an open file (O_CLOEXEC), or -errno.  Same dance as
 * a child unshares, the parent writes its maps and opens its ns file. */
static int lxcbind_userns_open(const char *uid_map, const char *gid_map)
{
    int ready[2], hold[2];
    if (pipe2(ready, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(hold, O_CLOEXEC) < 0) {
        int err = -errno;
        close(ready[0]);
        close(ready[1]);
        return err;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        close(ready[0]); close(ready[1]); close(hold[0]); close(hold[1]);
        return err;
    }
    if (pid == 0) {
        lxcbind_close_all_but(ready[1], hold[0]);
        char byte = unshare(CLONE_NEWUSER) == 0 ? 1 : 0;
        if (write(ready[1], &byte, 1) != 1)
            _exit(1);
        while (read(hold[0], &byte, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    char byte = 0;
    ssize_t n;
    do {
        n = read(ready[0], &byte, 1);
    } while (n < 0 && errno == EINTR);
    int err = (n == 1 && byte == 1) ? 0 : -EPERM;
    char path[64];
    if (!err) {
        snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
        err = lxcbind_write_file(path, uid_map);
    }
    if (!err) {
        snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
        err = lxcbind_write_file(path, gid_map);
    }
    int fd = -1;
    if (!err) {
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            err = -errno;
    }
    close(ready[0]);
    close(hold[1]);  /* the child exits now; the open file keeps the namespace */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return err ? err : fd;
}

static int lxcbind_idmapped_bind(const char *source, const char *target, const char *map)
{
    int ns = lxcbind_userns_open(map, map);
    if (ns < 0)
        return ns;
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source,
                            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_NO_AUTOMOUNT);
    if (tree < 0) {
        int err = -errno;
        close(ns);
        return err;
    }
    struct mount_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.attr_set = MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    attr.userns_fd = (unsigned long long)ns;
    int err = 0;
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0)
        err = -errno;
    close(ns);  /* the mount holds the mapping from now on */
    if (!err && syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        err = -errno;
    close(tree);
    if (!err && mount(NULL, target, NULL, MS_PRIVATE, NULL) < 0) {
        err = -errno;
        umount2(target, MNT_DETACH);
    }
    return err;
}
