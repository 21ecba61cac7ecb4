/* lxcbind's C helpers, compiled into the cffi module (lxcbind._lxc).
 *
 * Only code that must not be Python lives here: liblxc's attach() forks the calling process,
 * so the function it runs in the child must be C (running Python after fork() in a threaded
 * interpreter hangs or aborts: lxc/python3-lxc#11, #35).  Everything is static and prefixed
 * lxcbind_ so no symbol can collide with liblxc's. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <lxc/lxccontainer.h>
#include <lxc/version.h>

#include "execvpe.h"
#include "sockfilter.h"
#include "spawner_proto.h"

#define LXCBIND_VERSION_AT_LEAST(maj, min, mic)                                    \
    (LXC_VERSION_MAJOR > (maj) ||                                                  \
     (LXC_VERSION_MAJOR == (maj) &&                                                \
      (LXC_VERSION_MINOR > (min) ||                                                \
       (LXC_VERSION_MINOR == (min) && LXC_VERSION_MICRO >= (mic)))))

static const char *const LXCBIND_BUILT_LXC_VERSION = LXC_VERSION;

#if LXCBIND_VERSION_AT_LEAST(4, 0, 5)
static const int LXCBIND_HAS_DEVPTS_FD = 1;
static int lxcbind_devpts_fd(struct lxc_container *c) { return c->devpts_fd(c); }
#else
static const int LXCBIND_HAS_DEVPTS_FD = 0;
static int lxcbind_devpts_fd(struct lxc_container *c) { (void)c; return -ENOSYS; }
#endif

/* Held around every liblxc call that can put a pidfd of a container's init into this
 * process: see lxcbind_attach. */
static pthread_mutex_t lxcbind_pidfd_mutex = PTHREAD_MUTEX_INITIALIZER;

#if LXCBIND_VERSION_AT_LEAST(4, 0, 0)
static const int LXCBIND_HAS_INIT_PIDFD = 1;
static int lxcbind_init_pidfd(struct lxc_container *c)
{
    pthread_mutex_lock(&lxcbind_pidfd_mutex);
    int fd = c->init_pidfd(c);
    pthread_mutex_unlock(&lxcbind_pidfd_mutex);
    return fd;
}
#else
static const int LXCBIND_HAS_INIT_PIDFD = 0;
static int lxcbind_init_pidfd(struct lxc_container *c) { (void)c; return -ENOSYS; }
#endif

/* LXC_ATTACH_OPTIONS_DEFAULT is an initializer macro, which cffi cannot express.  A zeroed
 * struct would mean namespaces=0 ("join none": the command runs on the host), so every
 * attach starts from this copy of the real defaults. */
static void lxcbind_attach_options_init(lxc_attach_options_t *opts)
{
    lxc_attach_options_t defaults = LXC_ATTACH_OPTIONS_DEFAULT;
    *opts = defaults;
}

#define LXCBIND_STAGE_REACHED 'R'
#define LXCBIND_STAGE_CHDIR 1
#define LXCBIND_STAGE_CTTY 2
#define LXCBIND_STAGE_EXEC 3

struct lxcbind_exec {
    const char *file;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int ctty_fd;
    int status_fd;
    int exe_fd;      /* LXCBIND_EXEC_SPAWNER: a sealed memfd holding the spawner program */
};

/* Report a failure as {stage, errno} on the status pipe; the parent reads it after the child
 * is gone, which is how "could not execute" is told apart from the program's own exit 126/127. */
static int lxcbind_fail(int status_fd, int32_t stage, int32_t err, int code)
{
    int32_t record[2] = {stage, err};
    ssize_t unused = write(status_fd, record, sizeof(record));
    (void)unused;
    return code;
}

/* The function liblxc runs in the attached child, after it has joined the container's
 * namespaces and cgroup, dropped capabilities and dup2'd the standard fds.  It must leave a
 * clean process image behind: no signal state inherited from Python (which ignores SIGPIPE
 * and may block signals), its own session (so a timeout can kill the whole process group and
 * the program cannot reach the host's terminal), no inherited descriptors, a strict cwd. */
static int lxcbind_exec(void *payload)
{
    struct lxcbind_exec *x = payload;
    ssize_t unused = write(x->status_fd, "R", 1);
    (void)unused;

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++)
        sigaction(sig, &dfl, NULL);

    /* Never CAP_SYS_PTRACE in a workload: it overrides PR_SET_DUMPABLE 0, which is what keeps
     * a Session's spawner (and its sockets) out of its commands' reach; dropped here too so
     * that a one-shot command and a session command are confined alike.  Without CAP_SETPCAP
     * (a non-root uid) there is nothing to drop: such a process has no capabilities. */
    prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0);
    /* The socket families of 32-bit x86 calls, which the container's profile cannot check:
     * in every container with no_new_privs (lxcbind's sandboxes always have it; without it,
     * and without CAP_SYS_ADMIN, no filter can be added, and such a binding-level container
     * has none of lxcbind's seccomp profile either). */
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 && lxcbind_filter_i386_sockets() < 0)
        return lxcbind_fail(x->status_fd, LXCBIND_STAGE_EXEC, errno, 126);

    /* liblxc already made us a session leader when stdin is a tty; otherwise do it here. */
    if (getsid(0) != getpid())
        setsid();
    if (x->ctty_fd >= 0 && ioctl(x->ctty_fd, TIOCSCTTY, 0) < 0)
        return lxcbind_fail(x->status_fd, LXCBIND_STAGE_CTTY, errno, 126);

    /* liblxc closes nothing: mark every descriptor above stderr close-on-exec (the status
     * pipe already is, so it stays usable until execve). */
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) < 0) {
        long max = sysconf(_SC_OPEN_MAX);
        for (int fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    if (x->cwd && chdir(x->cwd) < 0)
        return lxcbind_fail(x->status_fd, LXCBIND_STAGE_CHDIR, errno, 126);

    int err = lxcbind_execvpe(x->file, x->argv, x->envp);
    return lxcbind_fail(x->status_fd, LXCBIND_STAGE_EXEC, err,
                        (err == ENOENT || err == ENOTDIR) ? 127 : 126);
}

#define LXCBIND_FD_BITS 65536

/* Mark the open descriptors of this process (below LXCBIND_FD_BITS) in a bitmap. */
static int lxcbind_open_fds(unsigned char *bits)
{
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return -1;
    int self = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        int fd = atoi(entry->d_name);
        if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9' && fd != self && fd < LXCBIND_FD_BITS)
            bits[fd / 8] |= (unsigned char)(1u << (fd % 8));
    }
    closedir(dir);
    return 0;
}

/* The pid a pidfd refers to (its fdinfo "Pid:" line), or -1 for any other kind of fd. */
static pid_t lxcbind_pidfd_pid(int fd)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    int info = open(path, O_RDONLY | O_CLOEXEC);
    if (info < 0)
        return -1;
    ssize_t n = read(info, buf, sizeof(buf) - 1);
    close(info);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *line = strstr(buf, "\nPid:");
    return line ? (pid_t)atoi(line + 5) : -1;
}

/* c->attach() with lxcbind_exec (or, for a Session, the spawner) as the exec function.
 *
 * liblxc 5.0 leaks, in the caller, the pidfd of the container's init that it fetches for every
 * attach (get_attach_context asks the monitor for it; only the forked child closes it): a
 * thousand attaches, a thousand fds.  What leaks is exactly a new descriptor of the monitor's
 * own pidfd file, so that is what is closed: the fds that appear during the call and are the
 * same open file (kcmp KCMP_FILE) as a reference descriptor fetched the same way just before.
 * A pidfd another thread opens with pidfd_open() is another file and is never touched.  The
 * only other ways to get that file (another attach, which is using its copy until it forks,
 * and lxcbind_init_pidfd) hold the same mutex, so none can be mistaken for this call's leak.
 * When init_pid is 0 (unknown) or no reference can be had, nothing is closed. */
#define LXCBIND_EXEC_COMMAND 0 /* lxcbind_exec: run one program */
#define LXCBIND_EXEC_SPAWNER 1 /* lxcbind_spawner_exec (spawner.c): a Session's spawner */

/* The exec function of a Session's one attach: exec the spawner program (spawner.c) from the
 * sealed memfd in exe_fd, with nothing of the caller: argv is just its name, the environment
 * is empty, and every descriptor but the control socket (0) and /dev/null (1, 2) is gone at
 * the exec.  liblxc has joined the namespaces and cgroup, dropped the bounding set, set
 * no_new_privs and loaded seccomp; the kernel finishes the rest at this execve, as for any
 * command.  Until the exec this process is a copy of the caller: not dumpable meanwhile. */
static int lxcbind_spawner_exec(void *payload)
{
    struct lxcbind_exec *x = payload;
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    ssize_t unused = write(x->status_fd, "R", 1);
    (void)unused;
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) < 0) {
        for (int fd = 3; fd < 65536; fd++)
            if (fd != x->exe_fd && fd != x->status_fd)
                close(fd);
    }
    char *const argv[] = {(char *)"lxcbind-spawner", NULL};
    char *const envp[] = {NULL};
    /* A CLOEXEC memfd is fine here: the kernel holds the file; only scripts need the fd. */
    syscall(SYS_execveat, x->exe_fd, "", argv, envp, AT_EMPTY_PATH);
    return lxcbind_fail(x->status_fd, LXCBIND_STAGE_EXEC, errno, 126);
}

/* One C call each, so that no Python signal handler runs in between: see shim.h. */
static void lxcbind_close_held(int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        int fd = fds[i];
        fds[i] = -1;
        if (fd >= 0)
            close(fd);
    }
}

static int lxcbind_pidfd_open_into(pid_t pid, int *out)
{
    *out = (int)syscall(SYS_pidfd_open, pid, 0);
    if (*out < 0) {
        *out = -1;
        return errno;
    }
    return 0; /* close-on-exec: pidfd_open always sets it */
}

static int lxcbind_same_file(int a, int b)
{
    pid_t self = getpid();
    return syscall(SYS_kcmp, self, self, 0 /* KCMP_FILE */, a, b) == 0;
}

static int lxcbind_attach(struct lxc_container *c, struct lxcbind_exec *payload,
                          lxc_attach_options_t *opts, pid_t *pid, pid_t init_pid, int mode)
{
    lxc_attach_exec_t exec_function = mode == LXCBIND_EXEC_SPAWNER ? lxcbind_spawner_exec
                                                                    : lxcbind_exec;
    static unsigned char before[LXCBIND_FD_BITS / 8], after[LXCBIND_FD_BITS / 8];
    pthread_mutex_lock(&lxcbind_pidfd_mutex);
    int ref = -1;
#if LXCBIND_VERSION_AT_LEAST(4, 0, 0)
    if (init_pid > 0) {
        ref = c->init_pidfd(c);
        if (ref >= 0 && (lxcbind_pidfd_pid(ref) != init_pid || !lxcbind_same_file(ref, ref))) {
            close(ref); /* not the init we know, or no kcmp: do not guess */
            ref = -1;
        }
    }
#endif
    int scanned = 0;
    if (ref >= 0) {
        memset(before, 0, sizeof(before));
        scanned = lxcbind_open_fds(before) == 0;
    }
    int ret = c->attach(c, exec_function, payload, opts, pid);
    if (scanned) {
        memset(after, 0, sizeof(after));
        if (lxcbind_open_fds(after) == 0) {
            for (int i = 0; i < LXCBIND_FD_BITS / 8; i++) {
                unsigned char fresh = after[i] & (unsigned char)~before[i];
                for (int b = 0; fresh && b < 8; b++, fresh >>= 1)
                    if ((fresh & 1) && lxcbind_same_file(i * 8 + b, ref))
                        close(i * 8 + b);
            }
        }
    }
    if (ref >= 0)
        close(ref);
    pthread_mutex_unlock(&lxcbind_pidfd_mutex);
    return ret;
}
