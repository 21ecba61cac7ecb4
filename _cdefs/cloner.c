/* lxcbind-cloner: the init of a Pool's warm template container; it makes one light sandbox
 * (a "clone") per command (lxcbind/sandbox/template.py and clone.py, issue #23).
 *
 * Why.  A fresh liblxc container costs 20-26 ms of machine CPU (starter, monitor, ten v1
 * cgroup hierarchies, config parsing, init setup).  A clone is one clone3() of this small
 * program with new user, pid, mount, ipc, uts and network namespaces, a few mounts, and an
 * exec of the session spawner: the same isolation a container's init gets, without liblxc.
 *
 * Where it runs.  As lxc.init.cmd of the template (a real unprivileged LXC container of the
 * Pool's policy, with its own host id range), started by lxcbind's sandbox machinery, WITHOUT
 * liblxc's seccomp profile (it must create namespaces and mount) and with no workload of its
 * own: nothing but this program ever runs in the template.  It connects its control socket to
 * the host's listener like ``lxcbind-spawner --init`` (the host checks SO_PEERCRED).
 *
 * Wire format (SOCK_SEQPACKET, native endianness, both ends on one host):
 *   host -> cloner  struct lxcbind_clone_request {magic, op, caps, tmpfs_size, uid, gid,
 *                   hostname}; op PROFILE: the seccomp profile text follows in the same
 *                   datagram (liblxc's v2 format, compiled once here); op CLONE: SCM_RIGHTS
 *                   [the clone's end of its spawner channel].
 *   cloner -> host  struct lxcbind_clone_reply {magic, status (0 or an errno), pid, step}:
 *                   pid is the clone's init in the template's pid namespace; the host finds
 *                   it among the cloner's children and opens its pidfd itself.
 * A clone's init (the child) then waits for one byte on its spawner channel: the host sends it
 * once it has put the child into the clone's own cgroup.  The child then sets itself up (see
 * lxcbind_clone_child) and execs ``lxcbind-spawner --init-fd N``; if a step fails it writes
 * one line "lxcbind-cloner: STEP: ERROR" on the channel (never the size of the spawner's
 * HELLO record) and exits 125.
 *
 * Rules: single-threaded; children are reaped by the kernel (SIGCHLD ignored: no zombie can
 * accumulate, and a pidfd still reports the exit); the control socket closing (the Pool closed
 * or its process died) ends the template, and with it every clone (their pid namespaces are
 * nested in the template's). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "seccompile.h"
#include "seqconnect.h"

#define LXCBIND_CLONE_MAGIC 0x4c58434cu /* "LXCL" */
#define LXCBIND_CLONE_OP_PROFILE 1u
#define LXCBIND_CLONE_OP_CLONE 2u
#define LXCBIND_CLONE_MAX_PROFILE (256u * 1024u)

struct lxcbind_clone_request {
    uint32_t magic;
    uint32_t op;
    uint64_t caps;       /* capabilities a clone's init keeps (bit = capability number) */
    uint64_t tmpfs_size; /* bytes of the clone's writable layer (its upper tmpfs) */
    int64_t uid;         /* the spawner's user once connected (-1: the clone's root) */
    int64_t gid;
    char hostname[64];
};

struct lxcbind_clone_reply {
    uint32_t magic;
    int32_t status;
    int32_t pid;
    int32_t step;
};

/* Where the clone builds its root: an empty read-only tmpfs of the template's made for it;
 * mounting on it changes only the clone's own mount namespace, and nothing is ever written
 * to the template's filesystems. */
#define LXCBIND_SCRATCH "/dev/.lxcbind-clone"
#define LXCBIND_NEWROOT LXCBIND_SCRATCH "/root"
#define LXCBIND_SPAWNER "/dev/.lxcbind/lxcbind-spawner"
#define LXCBIND_LAYERS "/dev/.lxcbind-layers"
#define LXCBIND_CHANNEL_FD 3
#define LXCBIND_MOUNTINFO_MAX (1u << 20)

static struct sock_fprog lxcbind_filter; /* the compiled profile; len 0 until PROFILE */
static int lxcbind_spawner_fd = -1;      /* the spawner program, opened before the host
                                            empties the channel directory */

static int lxcbind_send(int ctl, int32_t status, int32_t pid, int32_t step, int fd)
{
    struct lxcbind_clone_reply reply = {LXCBIND_CLONE_MAGIC, status, pid, step};
    struct iovec iov = {&reply, sizeof(reply)};
    char control[CMSG_SPACE(sizeof(int))];
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    memset(control, 0, sizeof(control));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(ctl, &msg, MSG_NOSIGNAL) < 0 ? -1 : 0;
}

/* -- the child: one clone's init, until it execs the spawner -------------------------------- */

/* One line on the spawner channel saying which step failed, then exit 125. */
static void lxcbind_die(const char *step)
{
    char line[256];
    int n = snprintf(line, sizeof(line), "lxcbind-cloner: %s: %s", step, strerror(errno));
    if (n > 0) {
        if (n == 16) /* never the size of a HELLO record (4 x i32) */
            line[n++] = '.';
        send(LXCBIND_CHANNEL_FD, line, (size_t)n, MSG_NOSIGNAL);
    }
    _exit(125);
}

static int lxcbind_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void lxcbind_unescape(char *s)
{
    char *out = s;
    while (*s) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7' &&
            s[3] >= '0' && s[3] <= '7') {
            *out++ = (char)(((s[1] - '0') << 6) | ((s[2] - '0') << 3) | (s[3] - '0'));
            s += 4;
        } else {
            *out++ = *s++;
        }
    }
    *out = '\0';
}

static int lxcbind_under(const char *path, const char *top)
{
    size_t n = strlen(top);
    return strncmp(path, top, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* ``target`` in the clone's root for the template's mount point ``point``: liblxc may have
 * made the mount point in the template's own upper layer (create=dir/file), which is not
 * one of the clone's layers; then it is made here, in the clone's own writable layer. */
static void lxcbind_mountpoint(const char *point, char *target)
{
    struct stat st;
    if (lstat(target, &st) == 0)
        return;
    if (stat(point, &st) < 0)
        lxcbind_die("stat a template mount");
    size_t skip = strlen(LXCBIND_NEWROOT) + 1;
    for (char *slash = strchr(target + skip, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        int rc = mkdir(target, 0755);
        *slash = '/';
        if (rc < 0 && errno != EEXIST)
            lxcbind_die("make a mount point's parent");
    }
    if (S_ISDIR(st.st_mode)) {
        if (mkdir(target, 0755) < 0 && errno != EEXIST)
            lxcbind_die("make a mount point");
    } else {
        int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            lxcbind_die("make a mount point");
        close(fd);
    }
}

/* The template's mounts below its root (the host's system directories, the policy's
 * read-only binds, the masks of denied paths), bound again with what is below them, the top
 * one remounted read-only, at the same place in the clone's root: the overlay shows only the
 * root filesystem itself.  /proc, /sys, /dev and /tmp are the clone's own.  Mount flags the
 * template's mounts had are kept (they are locked: a less privileged mount namespace cannot
 * clear them anyway). */
static void lxcbind_rebind_submounts(void)
{
    char *buf = mmap(NULL, LXCBIND_MOUNTINFO_MAX, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        lxcbind_die("mmap");
    int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        lxcbind_die("open /proc/self/mountinfo");
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, buf + used, LXCBIND_MOUNTINFO_MAX - 1 - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            lxcbind_die("read /proc/self/mountinfo");
        if (n == 0)
            break;
        used += (size_t)n;
        if (used >= LXCBIND_MOUNTINFO_MAX - 1) {
            errno = E2BIG;
            lxcbind_die("read /proc/self/mountinfo");
        }
    }
    close(fd);
    buf[used] = '\0';
    char target[PATH_MAX + sizeof(LXCBIND_NEWROOT)];
    /* The last mount bound with its subtree: what is below it came along (a mount with
     * mounts below it can only be bound whole in a less privileged mount namespace: the
     * kernel locks them together). */
    char done[PATH_MAX] = "";
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        /* id parent major:minor root mountpoint options ... */
        char *field[6] = {0};
        char *p = line;
        for (int i = 0; i < 6 && p; i++) {
            field[i] = p;
            p = strchr(p, ' ');
            if (p)
                *p++ = '\0';
        }
        if (!field[5])
            continue;
        char *point = field[4], *opts = field[5];
        lxcbind_unescape(point);
        if (strcmp(point, "/") == 0 || lxcbind_under(point, "/proc") ||
            lxcbind_under(point, "/sys") || lxcbind_under(point, "/dev") ||
            strcmp(point, "/tmp") == 0 || (done[0] && lxcbind_under(point, done)))
            continue;
        if ((size_t)snprintf(target, sizeof(target), "%s%s", LXCBIND_NEWROOT, point) >=
            sizeof(target)) {
            errno = ENAMETOOLONG;
            lxcbind_die("rebind");
        }
        unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY;
        char *o = opts;
        for (char *tok = strtok(o, ","); tok; tok = strtok(NULL, ",")) {
            if (strcmp(tok, "nosuid") == 0)
                flags |= MS_NOSUID;
            else if (strcmp(tok, "nodev") == 0)
                flags |= MS_NODEV;
            else if (strcmp(tok, "noexec") == 0)
                flags |= MS_NOEXEC;
            else if (strcmp(tok, "noatime") == 0)
                flags |= MS_NOATIME;
            else if (strcmp(tok, "nodiratime") == 0)
                flags |= MS_NODIRATIME;
            else if (strcmp(tok, "relatime") == 0)
                flags |= MS_RELATIME;
            else if (strcmp(tok, "strictatime") == 0)
                flags |= MS_STRICTATIME;
        }
        lxcbind_mountpoint(point, target);
        if (mount(point, target, NULL, MS_BIND | MS_REC, NULL) < 0)
            lxcbind_die("bind a template mount");
        snprintf(done, sizeof(done), "%s", point);
        if (mount(NULL, target, NULL, flags, NULL) < 0)
            lxcbind_die("remount a bind read-only");
    }
    munmap(buf, LXCBIND_MOUNTINFO_MAX);
}

static void lxcbind_bind_node(const char *name)
{
    char source[64], target[sizeof(LXCBIND_NEWROOT) + 64];
    snprintf(source, sizeof(source), "/dev/%s", name);
    snprintf(target, sizeof(target), "%s/dev/%s", LXCBIND_NEWROOT, name);
    int fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        lxcbind_die("create a device node's mount point");
    close(fd);
    if (mount(source, target, NULL, MS_BIND, NULL) < 0)
        lxcbind_die("bind a device node");
}

static void lxcbind_mkdir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        lxcbind_die("mkdir");
}

/* A boot id of the clone's own (liblxc gives every container one): the host's would tell
 * clones apart from nothing and link them to the host. */
static void lxcbind_boot_id(const char *path)
{
    unsigned char r[16];
    if (syscall(SYS_getrandom, r, sizeof(r), 0) != (long)sizeof(r))
        lxcbind_die("getrandom");
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40); /* a version 4 UUID, as the kernel's */
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    char text[40];
    snprintf(text, sizeof(text),
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
             r[13], r[14], r[15]);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
        lxcbind_die("write the clone's boot_id");
    close(fd);
}

/* /sys/fs/cgroup as a container's cgroup:mixed shows it, read-only: the hierarchies of the
 * clone's limits (memory, pids, cpu), each at the clone's own cgroup (its cgroup namespace's
 * root), or the unified hierarchy on a cgroup v2 host.  Read-only: the host made the clone's
 * cgroup and keeps it; the workload cannot make sub-cgroups. */
static void lxcbind_mount_cgroups(const char *top)
{
    const unsigned long ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
    char buf[4096];
    int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        lxcbind_die("open /proc/self/cgroup");
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        lxcbind_die("read /proc/self/cgroup");
    buf[n] = '\0';
    int legacy = 0;
    for (char *line = buf; *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : "")
        legacy |= strncmp(line, "0::", 3) != 0;
    if (!legacy) {
        if (mount("cgroup2", top, "cgroup2", ro, NULL) < 0)
            lxcbind_die("mount cgroup2");
        return;
    }
    if (mount("cgroup", top, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k") < 0)
        lxcbind_die("mount /sys/fs/cgroup");
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *controllers = strchr(line, ':');
        char *end = controllers ? strchr(controllers + 1, ':') : NULL;
        if (!end)
            continue;
        *end = '\0';
        controllers++;
        int wanted = 0;
        char copy[256];
        snprintf(copy, sizeof(copy), "%s", controllers);
        for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ","))
            wanted |= strcmp(tok, "memory") == 0 || strcmp(tok, "pids") == 0 ||
                      strcmp(tok, "cpu") == 0;
        if (!wanted)
            continue;
        char where[PATH_MAX];
        snprintf(where, sizeof(where), "%s/%s", top, controllers);
        lxcbind_mkdir(where, 0755);
        if (mount("cgroup", where, "cgroup", ro, controllers) < 0)
            lxcbind_die("mount a cgroup hierarchy");
    }
    if (mount(NULL, top, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "mode=0755,size=64k") < 0)
        lxcbind_die("make /sys/fs/cgroup read-only");
}

/* What liblxc gives a container, made again in the clone's own namespaces. */
static void lxcbind_make_root(uint64_t tmpfs_size)
{
    char opts[96];
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        lxcbind_die("make mounts private");
    /* The writable layer: a tmpfs of the policy's disk size, charged to the clone's memory
     * cgroup, gone with the clone's mount namespace (nothing on the host to clean up). */
    /* One inode per 16 KiB, as the ext4 layer of a container (sandbox/disk.py). */
    if (tmpfs_size)
        snprintf(opts, sizeof(opts), "size=%llu,nr_inodes=%llu,mode=0755",
                 (unsigned long long)tmpfs_size,
                 (unsigned long long)(tmpfs_size / 16384 > 1024 ? tmpfs_size / 16384 : 1024));
    else
        snprintf(opts, sizeof(opts), "mode=0755");
    if (mount("lxcbind-layer", LXCBIND_SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
        lxcbind_die("mount the writable layer");
    lxcbind_mkdir(LXCBIND_SCRATCH "/upper", 0755);
    lxcbind_mkdir(LXCBIND_SCRATCH "/work", 0755);
    lxcbind_mkdir(LXCBIND_NEWROOT, 0755);
    /* The template's root's lower layers, top first, bound at /dev/.lxcbind-layers/N by the
     * template's config ("/" itself cannot be a layer: it has locked mounts below it; nor
     * can the template's upper, in use by its own overlay: see lxcbind_mountpoint). */
    char options[4096];
    int used = snprintf(options, sizeof(options), "upperdir=%s/upper,workdir=%s/work,"
                        "userxattr,lowerdir=", LXCBIND_SCRATCH, LXCBIND_SCRATCH);
    for (int i = 0; i < 64; i++) {
        char layer[64];
        struct stat st;
        snprintf(layer, sizeof(layer), "%s/%d", LXCBIND_LAYERS, i);
        if (stat(layer, &st) < 0)
            break;
        used += snprintf(options + used, sizeof(options) - (size_t)used, "%s%s",
                         i ? ":" : "", layer);
        if ((size_t)used >= sizeof(options)) {
            errno = E2BIG;
            lxcbind_die("the root overlay's options");
        }
    }
    if (mount("overlay", LXCBIND_NEWROOT, "overlay", 0, options) < 0)
        lxcbind_die("mount the root overlay");

    const char *r = LXCBIND_NEWROOT;
    char path[sizeof(LXCBIND_NEWROOT) + 64];
#define AT(sub) (snprintf(path, sizeof(path), "%s%s", r, sub), path)
    /* /tmp first: the policy's binds below it go on top of the clone's own tmpfs. */
    struct stat st;
    if (stat(AT("/tmp"), &st) == 0 && S_ISDIR(st.st_mode) &&
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
        lxcbind_die("mount /tmp");
    lxcbind_rebind_submounts();
    lxcbind_mkdir(AT("/dev"), 0755);
    if (mount("none", AT("/dev"), "tmpfs", MS_NOSUID | MS_NOEXEC, "size=500000,mode=0755") < 0)
        lxcbind_die("mount /dev");
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++)
        lxcbind_bind_node(nodes[i]);
    lxcbind_mkdir(AT("/dev/pts"), 0755);
    if (mount("devpts", AT("/dev/pts"), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0 &&
        mount("devpts", AT("/dev/pts"), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0)
        lxcbind_die("mount /dev/pts");
    if (symlink("pts/ptmx", AT("/dev/ptmx")) < 0 || symlink("/proc/self/fd", AT("/dev/fd")) < 0 ||
        symlink("/proc/self/fd/0", AT("/dev/stdin")) < 0 ||
        symlink("/proc/self/fd/1", AT("/dev/stdout")) < 0 ||
        symlink("/proc/self/fd/2", AT("/dev/stderr")) < 0)
        lxcbind_die("symlinks in /dev");
    lxcbind_mkdir(AT("/dev/shm"), 01777);
    if (mount("shm", AT("/dev/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
        lxcbind_die("mount /dev/shm");
    lxcbind_mkdir(AT("/dev/mqueue"), 0755);
    if (mount("mqueue", AT("/dev/mqueue"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        lxcbind_die("mount /dev/mqueue");

    /* /proc of the new pid namespace, as proc:mixed: /proc/sys and sysrq-trigger read-only.
     * (The kernel allows it because the template shows a whole proc and sysfs, at
     * /dev/.lxcbind-proc and /dev/.lxcbind-sys, which no clone can reach.) */
    lxcbind_mkdir(AT("/proc"), 0555);
    if (mount("proc", AT("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        lxcbind_die("mount /proc");
    static const char *const ro_proc[] = {"/proc/sys", "/proc/sysrq-trigger"};
    for (size_t i = 0; i < 2; i++) {
        if (access(AT(ro_proc[i]), F_OK) < 0 && errno == ENOENT)
            continue; /* no sysrq on this kernel */
        if (mount(AT(ro_proc[i]), path, NULL, MS_BIND, NULL) < 0 ||
            mount(NULL, path, NULL,
                  MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  NULL) < 0)
            lxcbind_die("make /proc/sys read-only");
    }
    /* On top of the read-only /proc/sys (a bind below it would be hidden by that one). */
    char boot_id[sizeof(path)];
    snprintf(boot_id, sizeof(boot_id), "%s/dev/.lxc-boot-id", r);
    lxcbind_boot_id(boot_id);
    if (mount(boot_id, AT("/proc/sys/kernel/random/boot_id"), NULL, MS_BIND, NULL) < 0 ||
        mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV |
              MS_NOEXEC, NULL) < 0)
        lxcbind_die("bind the clone's boot_id");
    lxcbind_mkdir(AT("/sys"), 0555);
    if (mount("sysfs", AT("/sys"), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
              NULL) < 0)
        lxcbind_die("mount /sys");
    lxcbind_mount_cgroups(AT("/sys/fs/cgroup"));
#undef AT

    /* The new root; the template's is detached: nothing of it stays reachable. */
    if (chdir(LXCBIND_NEWROOT) < 0)
        lxcbind_die("chdir to the new root");
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        lxcbind_die("pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        lxcbind_die("detach the template's root");
    if (chdir("/") < 0)
        lxcbind_die("chdir /");
}

static void lxcbind_loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        lxcbind_die("socket for lo");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        lxcbind_die("lo flags");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        lxcbind_die("bring lo up");
    close(s);
}

/* On an AppArmor host the template runs unconfined (the cloner mounts); a clone's exec
 * changes to the profile liblxc gives a container, or the clone does not start (never a
 * weaker profile than a container's). */
static void lxcbind_apparmor(void)
{
    char label[256];
    int fd = open("/proc/self/attr/apparmor/current", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* no AppArmor in this kernel */
    ssize_t n = read(fd, label, sizeof(label) - 1);
    close(fd);
    if (n <= 0)
        return; /* AppArmor is not the active LSM */
    if (lxcbind_write_file("/proc/self/attr/apparmor/exec", "exec lxc-container-default-cgns") < 0)
        lxcbind_die("AppArmor: change to lxc-container-default-cgns at exec");
}

/* A container init's privileges: the bounding set and capabilities cut to ``keep``, no
 * ambient capabilities, no_new_privs, and the template's compiled seccomp filter. */
static void lxcbind_drop_privileges(uint64_t keep)
{
    for (int cap = 0; cap < 64; cap++) {
        if (keep & (1ull << cap))
            continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            lxcbind_die("drop a capability from the bounding set");
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        lxcbind_die("clear ambient capabilities");
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    for (int i = 0; i < 2; i++) {
        uint32_t word = (uint32_t)(keep >> (32 * i));
        data[i].effective = data[i].permitted = word; /* inheritable: none, as liblxc's */
    }
    if (syscall(SYS_capset, &head, data) < 0)
        lxcbind_die("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        lxcbind_die("no_new_privs");
    if (lxcbind_filter.len == 0) { /* never a clone without its filter */
        errno = ENOPROTOOPT;
        lxcbind_die("no seccomp filter");
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &lxcbind_filter, 0, 0) < 0)
        lxcbind_die("load the seccomp filter");
}

static void lxcbind_clone_child(const struct lxcbind_clone_request *req, int channel)
{
    /* The channel becomes fd 3, the spawner program fd 4; nothing else survives.  (Both are
     * first moved above 10, out of each other's way.) */
    int high_channel = fcntl(channel, F_DUPFD, 10);
    int high_spawner = fcntl(lxcbind_spawner_fd, F_DUPFD_CLOEXEC, 10);
    if (high_channel < 0 || high_spawner < 0 || dup3(high_channel, LXCBIND_CHANNEL_FD, 0) < 0)
        _exit(125);
    if (dup3(high_spawner, 4, O_CLOEXEC) < 0)
        lxcbind_die("dup");
    if (syscall(SYS_close_range, 5U, ~0U, 0U) < 0)
        lxcbind_die("close_range");
    for (int fd = 0; fd < 3; fd++)
        close(fd);
    signal(SIGCHLD, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* the cloner gone: so is the clone */
    /* Wait until the host has put us into the clone's own cgroup. */
    char go;
    ssize_t n;
    do
        n = recv(LXCBIND_CHANNEL_FD, &go, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n != 1 || go != 'G')
        _exit(125);
    if (unshare(CLONE_NEWCGROUP) < 0)
        lxcbind_die("unshare the cgroup namespace");
    if (sethostname(req->hostname, strnlen(req->hostname, sizeof(req->hostname))) < 0)
        lxcbind_die("sethostname");
    lxcbind_loopback_up();
    lxcbind_make_root(req->tmpfs_size);
    lxcbind_apparmor();
    lxcbind_drop_privileges(req->caps);
    char ids[2][24];
    snprintf(ids[0], sizeof(ids[0]), "%lld", (long long)req->uid);
    snprintf(ids[1], sizeof(ids[1]), "%lld", (long long)req->gid);
    char *argv[] = {"lxcbind-spawner", "--init-fd", "3", ids[0], ids[1], NULL};
    char *envp[] = {"container=lxc", NULL};
    syscall(SYS_execveat, 4, "", argv, envp, AT_EMPTY_PATH);
    lxcbind_die("exec the spawner");
}

/* -- the cloner's loop ---------------------------------------------------------------------- */

/* The template's ids 0..65535, one to one: the clone's root is the template's root (the same
 * host uid), but its namespaces belong to its own user namespace.  Returns the failed step. */
static int lxcbind_write_maps(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
    if (lxcbind_write_file(path, "0 0 65536\n") < 0)
        return 2;
    snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
    if (lxcbind_write_file(path, "0 0 65536\n") < 0)
        return 4;
    return 0;
}

static void lxcbind_clone(int ctl, const struct lxcbind_clone_request *req, int channel)
{
    int pidfd = -1;
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS |
                 CLONE_NEWNET | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0) {
        lxcbind_send(ctl, errno, 0, 1, -1);
        return;
    }
    if (pid == 0)
        lxcbind_clone_child(req, channel); /* never returns */
    int step = lxcbind_write_maps((pid_t)pid);
    if (step != 0) {
        int saved = errno;
        syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        close(pidfd);
        lxcbind_send(ctl, saved, 0, step, -1);
        return;
    }
    /* No descriptor in the reply: the host opens the pidfd itself (it finds the child among
     * ours).  An SCM_RIGHTS message from here would count against the unix sockets' in-flight
     * limit of the template's host uid, which every clone shares: a clone holding fds in
     * flight could make that send fail. */
    close(pidfd);
    lxcbind_send(ctl, 0, (int32_t)pid, 0, -1);
}

/* The profile text, compiled once per template; every clone loads the same program. */
static void lxcbind_profile(int ctl, const char *text)
{
    (void)lxcbind_seccomp_free; /* the program lives as long as the template */
    if (lxcbind_filter.len != 0) {
        lxcbind_send(ctl, EEXIST, 0, 3, -1); /* never replaced */
        return;
    }
    int rc = lxcbind_seccomp_compile(text, &lxcbind_filter);
    lxcbind_send(ctl, rc < 0 ? -rc : 0, 0, 3, -1);
}

/* ``lxcbind-cloner --init PATH``: the template's init; PATH is the host's listener. */
int main(int argc, char **argv)
{
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_NAME, "lxcbind-cloner", 0, 0, 0);
    if (argc != 3 || strcmp(argv[1], "--init") != 0)
        return 2;
    /* Before connecting: once connected, the host empties the directory. */
    lxcbind_spawner_fd = open(LXCBIND_SPAWNER, O_RDONLY | O_CLOEXEC);
    if (lxcbind_spawner_fd < 0)
        return 125;
    int ctl = lxcbind_seqpacket_connect(argv[2]);
    if (ctl < 0)
        return 125;
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0)
        return 125;
    close(null);
    signal(SIGCHLD, SIG_IGN); /* clones are reaped by the kernel */
    signal(SIGPIPE, SIG_IGN);
    size_t cap = sizeof(struct lxcbind_clone_request) + LXCBIND_CLONE_MAX_PROFILE + 1;
    char *buf = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 125;
    for (;;) {
        char control[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {buf, cap - 1};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        ssize_t n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0; /* the host is gone: so is the template, and every clone with it */
        int fd = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
                c->cmsg_len == CMSG_LEN(sizeof(int)) && fd < 0)
                memcpy(&fd, CMSG_DATA(c), sizeof(int));
        }
        struct lxcbind_clone_request req;
        if ((size_t)n < sizeof(req) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            lxcbind_send(ctl, EINVAL, 0, 0, -1);
        } else {
            memcpy(&req, buf, sizeof(req));
            buf[n] = '\0';
            if (req.magic != LXCBIND_CLONE_MAGIC)
                lxcbind_send(ctl, EINVAL, 0, 0, -1);
            else if (req.op == LXCBIND_CLONE_OP_PROFILE)
                lxcbind_profile(ctl, buf + sizeof(req));
            else if (req.op == LXCBIND_CLONE_OP_CLONE && fd >= 0)
                lxcbind_clone(ctl, &req, fd);
            else
                lxcbind_send(ctl, EINVAL, 0, 0, -1);
        }
        if (fd >= 0)
            close(fd);
    }
}
