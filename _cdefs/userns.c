/* A user namespace that exists only to describe an id mapping for an idmapped mount.
 *
 * liblxc's `idmap=<path>` mount option wants a path to a user-namespace file.  Nothing needs to
 * run in that namespace: a child process unshares it, the parent writes the maps and
 * bind-mounts /proc/<child>/ns/user onto `target`, and the child exits.  The bind mount keeps the
 * namespace alive until the caller unmounts it (right after the container started).
 * The child only makes async-signal-safe system calls: this runs in a threaded interpreter. */
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>

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

static int lxcbind_userns_bind(const char *target, const char *uid_map, const char *gid_map)
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
        close(ready[0]);
        close(hold[1]);  /* else the read below never sees EOF */
        char byte = unshare(CLONE_NEWUSER) == 0 ? 1 : 0;
        if (write(ready[1], &byte, 1) != 1)
            _exit(1);
        /* Wait until the parent is done with our namespace (EOF on `hold`). */
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
    if (!err) {
        snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
        if (mount(path, target, NULL, MS_BIND, NULL) < 0)
            err = -errno;
    }
    close(ready[0]);
    close(hold[1]);  /* the child exits now */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
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
