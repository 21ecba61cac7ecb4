/* lxcbind-spawner: the program a Session runs inside its container (see
 * lxcbind/proc/session.py).
 *
 * Why a program of its own.  liblxc's attach() fork()s the whole caller for every command, so
 * its cost grows with the caller's memory.  A Session pays that once: one attach whose exec
 * function (lxcbind_spawner_exec in shim.c) execs *this* program, a static executable shipped
 * in the package and handed over as a sealed memfd (execveat(AT_EMPTY_PATH)): no file inside
 * the container is trusted, and nothing of the caller (its heap, argv, environment, fds)
 * survives the exec.  The process already has every bit of liblxc's setup (namespaces, cgroup,
 * capability bounding set, no_new_privs, seccomp, LSM exec label, uid/gid); it stays resident
 * and starts each later command with clone(CLONE_VM|CLONE_VFORK): no page tables are copied,
 * so a spawn costs the same whatever the size of the caller.
 *
 * Two ways in.  Attached by a Session (above): the control socket is fd 0.  Or, in a fresh
 * sandbox, as the container's init (lxc.init.cmd = "lxcbind-spawner --init PATH", see
 * lxcbind/sandbox/initspawner.py): no attach at all; it connects the control socket to the
 * host's listener at PATH, then serves exactly as when attached.  As pid 1 it has liblxc's
 * setup for an init (the same namespaces, cgroup, bounding set, no_new_privs, seccomp, LSM
 * label), no signal from inside the container reaches it (none has a handler here), it reaps
 * every orphan of the container, and its exit stops the container.
 *
 * What the commands it starts cannot do to it (they are hostile, possibly container root):
 *  - read its memory, environment or fds, ptrace it, or pidfd_getfd its sockets: it is not
 *    dumpable (PR_SET_DUMPABLE 0), and its commands never get CAP_SYS_PTRACE (dropped from
 *    the bounding set here when we may), which is the one capability that overrides that;
 *  - inherit its sockets: every descriptor of the spawner is close-on-exec, a command gets
 *    exactly its stdio and the fds the caller passed;
 *  - crash it with a request: every length is checked in 64-bit arithmetic, a bad request is
 *    refused alone and its descriptors are closed.
 * What they can do when it is attached: signal it (SIGSTOP, SIGKILL: same uid).  The host
 * never depends on it for a deadline: each START record carries a pidfd of the command, with
 * which the host signals and watches the command itself, and Session.close() kills what is
 * left through the cgroup.
 *
 * Wire format (native endianness; both ends run on the same host; numbers in spawner_proto.h):
 *   control socket = fd 0 of the spawner, SOCK_SEQPACKET.
 *   spawner -> caller, once:  record {HELLO, pid-in-container, VERSION, 0}.
 *   caller -> spawner, per command: one datagram
 *       header  u32 magic, flags, argc, envc, nextra, datalen, 0, 0     (HEADER_SIZE bytes)
 *       data    argv strings, env strings, [cwd] -- each NUL-terminated (inline, or in a
 *               memfd passed last when the MEMFD flag is set and the data is large)
 *       SCM_RIGHTS: report socket, stdin, stdout, stderr, extra fds (become 3, 4, ...), [memfd]
 *   report socket (one SOCK_SEQPACKET pair per command), records of 4 x i32:
 *       spawner -> caller  {START, pid, stage, errno} + SCM_RIGHTS [pidfd of the command]
 *                                                   stage 0: running; else it never ran
 *                          {EXIT, pid, wait status, 0}  then the spawner closes its end
 *                          {REFUSED, 0, errno, 0}       malformed request / too many children
 *       caller -> spawner  {KILL, signal, to_group, 0}  signal the command (or its group)
 *       The caller closing its end kills the command's process group (abandoned command).
 * The control socket closing (Session.close, or the caller dying) makes the spawner SIGKILL
 * every command's process group, reap them and exit.
 *
 * A command's result is its own: whenever the last running command exits, everything the
 * commands left behind (background jobs, setsid'd and double-forked daemons: all orphans come
 * to us, the subreaper) is SIGKILLed and reaped *before* that command's EXIT record is sent,
 * and so before any later command can start (one thread).  A leftover therefore never meets a
 * later command to ptrace it, write its memory or signal it.  While some command still runs
 * (a persistent shell, a spawned server, concurrent commands) nothing is killed: a leftover
 * cannot be told apart from what a running command started, so it lives until the spawner is
 * idle again.  Only our own subtree is touched, never the container's init or services, nor
 * processes liblxc attached (their parent is the host's caller).
 *
 * Rules: single-threaded, no malloc (buffers are mmap()ed at start), children reaped through
 * a signalfd so nothing accumulates however many commands run. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#include "execvpe.h"
#include "seqconnect.h"
#include "sockfilter.h"
#include "spawner_proto.h"

/* exec-failure stages, as in shim.c (the host decodes both the same way) */
#define LXCBIND_STAGE_CHDIR 1
#define LXCBIND_STAGE_CTTY 2
#define LXCBIND_STAGE_EXEC 3

#define LXCBIND_SPAWN_STACK (256 * 1024)
/* report socket + stdio + extra + memfd: the most a well-formed request carries */
#define LXCBIND_SPAWN_NFDS_MAX (4 + LXCBIND_SPAWN_MAX_EXTRA_FDS + 1)
/* room for more than that, so a request with too many fds is seen (and its fds closed) */
#define LXCBIND_SPAWN_NFDS_ROOM 64
#define LXCBIND_TAG_CONTROL 0
#define LXCBIND_TAG_SIGNAL 1
#define LXCBIND_TAG_SLOT 2

/* What the vfork child reads (in the spawner's memory: CLONE_VM) and writes back on failure. */
struct lxcbind_spawn_child {
    const char *file;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int fds[3 + LXCBIND_SPAWN_MAX_EXTRA_FDS];
    int nfds;
    int ctty;
    int user; /* LXCBIND_SPAWN_USER: become uid/gid with groups before chdir and exec */
    uid_t uid;
    gid_t gid;
    int ngroups;
    gid_t groups[LXCBIND_SPAWN_MAX_GROUPS];
    volatile int32_t stage;
    volatile int32_t err;
};

struct lxcbind_slot {
    pid_t pid;     /* 0: free */
    int report;    /* caller's report socket (spawner's end), -1 once the caller hung up */
    uint32_t gen;  /* bumped on every use: a stale epoll event of a reused slot is ignored */
};

struct lxcbind_spawner {
    int epfd;
    int sigfd;
    char *buf;                   /* one control datagram */
    char **strings;              /* argv + envp pointer arrays */
    char *stack;                 /* the vfork child's stack */
    struct lxcbind_slot *slots;
    int used;                    /* slots[0, used) may be occupied */
    int live;
    int blind;                   /* our children could not be listed: serve no more */
};

/* One record, with at most one descriptor attached (the START record's pidfd). */
static void lxcbind_record_send(int fd, int32_t type, int32_t pid, int32_t a, int32_t b,
                                int pass_fd)
{
    int32_t rec[4] = {type, pid, a, b};
    struct iovec iov = {rec, sizeof(rec)};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (pass_fd >= 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof(control.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    ssize_t unused = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)unused;
}

/* The command's side of the vfork: runs on the spawner's memory until execve or _exit, so it
 * only makes system calls and writes its failure into *k (the spawner is suspended meanwhile). */
/* In a clone (--init-fd): the descriptor limit its commands get, below the spawner's own.
 * The kernel counts descriptors in flight over unix sockets per host uid, which the clones of
 * one template share, and refuses a sender once the count passes the sender's RLIMIT_NOFILE:
 * with commands capped at half the spawner's limit, no clone can make the spawners of the
 * others fail to send their START records (each a pidfd). */
static struct rlimit lxcbind_child_nofile;
static int lxcbind_cap_nofile;

static int lxcbind_spawn_child_main(void *arg)
{
    struct lxcbind_spawn_child *k = arg;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* the spawner blocks SIGCHLD for its signalfd */
    setsid();
    if (lxcbind_cap_nofile && setrlimit(RLIMIT_NOFILE, &lxcbind_child_nofile) < 0) {
        k->stage = LXCBIND_STAGE_SPAWN;
        k->err = errno;
        _exit(126);
    }

    /* Move the received descriptors to 0, 1, 2, 3 ... in two steps so that no source is
     * overwritten before it is copied: first above every target, then into place (dup2
     * clears close-on-exec on the target; the copies above stay close-on-exec). */
    int tmp[3 + LXCBIND_SPAWN_MAX_EXTRA_FDS];
    for (int i = 0; i < k->nfds; i++) {
        tmp[i] = fcntl(k->fds[i], F_DUPFD_CLOEXEC, k->nfds);
        if (tmp[i] < 0) {
            k->stage = LXCBIND_STAGE_SPAWN;
            k->err = errno;
            _exit(126);
        }
    }
    for (int i = 0; i < k->nfds; i++) {
        if (dup2(tmp[i], i) < 0) {
            k->stage = LXCBIND_STAGE_SPAWN;
            k->err = errno;
            _exit(126);
        }
    }
    /* Everything of the spawner is close-on-exec already; this is the belt to those braces. */
    if (syscall(SYS_close_range, (unsigned)k->nfds, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) < 0) {
        for (int fd = k->nfds; fd < 65536; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    if (k->ctty && ioctl(0, TIOCSCTTY, 0) < 0) {
        k->stage = LXCBIND_STAGE_CTTY;
        k->err = errno;
        _exit(126);
    }
    if (k->user && (setgroups((size_t)k->ngroups, k->groups) < 0 || setgid(k->gid) < 0 ||
                    setuid(k->uid) < 0)) {
        k->stage = LXCBIND_STAGE_USER;
        k->err = errno;
        _exit(126);
    }
    if (k->cwd && chdir(k->cwd) < 0) {
        k->stage = LXCBIND_STAGE_CHDIR;
        k->err = errno;
        _exit(126);
    }
    int err = lxcbind_execvpe(k->file, k->argv, k->envp);
    k->stage = LXCBIND_STAGE_EXEC;
    k->err = err;
    _exit((err == ENOENT || err == ENOTDIR) ? 127 : 126);
}

static void lxcbind_close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static int lxcbind_slot_find(struct lxcbind_spawner *s, pid_t pid)
{
    for (int i = 0; i < s->used; i++)
        if (s->slots[i].pid == pid)
            return i;
    return -1;
}

static void lxcbind_slot_hangup(struct lxcbind_spawner *s, int i)
{
    struct lxcbind_slot *slot = &s->slots[i];
    if (slot->report >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, slot->report, NULL);
        close(slot->report);
        slot->report = -1;
    }
}

/* Every descriptor of one datagram, however many cmsgs carry them; returns how many were
 * received (all of them are open in fds[0, n)).  MSG_CTRUNC means the kernel dropped some. */
static int lxcbind_collect_fds(struct msghdr *msg, int *fds, int room)
{
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        uint64_t count = ((uint64_t)c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (uint64_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (nfds < room)
                fds[nfds++] = fd;
            else
                close(fd); /* cannot happen with our buffer size; never leak one anyway */
        }
    }
    return nfds;
}

/* One control datagram: validate, spawn, report START.  Never fails the spawner itself. */
/* "uid:gid:g1,g2,..." (decimal, groups may be empty) into k; 0, or -1 when malformed. */
static int lxcbind_parse_user(const char *text, struct lxcbind_spawn_child *k)
{
    unsigned long v[2 + LXCBIND_SPAWN_MAX_GROUPS];
    int n = 0;
    const char *p = text;
    for (;;) {
        if (*p < '0' || *p > '9' || n >= 2 + LXCBIND_SPAWN_MAX_GROUPS)
            return -1;
        char *end;
        errno = 0;
        v[n] = strtoul(p, &end, 10);
        if (errno || v[n] > 0xfffffffeUL)
            return -1;
        n++;
        p = end;
        if (*p == '\0')
            break;
        if ((n == 1 && *p != ':') || (n >= 2 && *p != ':' && *p != ','))
            return -1;
        if (n == 2 && *p == ':' && p[1] == '\0')
            break; /* "uid:gid:" - no supplementary groups */
        if (n >= 3 && *p == ':')
            return -1;
        p++;
    }
    if (n < 2)
        return -1;
    k->user = 1;
    k->uid = (uid_t)v[0];
    k->gid = (gid_t)v[1];
    k->ngroups = n - 2;
    for (int i = 2; i < n; i++)
        k->groups[i - 2] = (gid_t)v[i];
    return 0;
}

static void lxcbind_spawner_request(struct lxcbind_spawner *s)
{
    struct iovec iov = {s->buf, LXCBIND_SPAWN_HEADER_SIZE + LXCBIND_SPAWN_MAX_INLINE};
    union {
        char buf[CMSG_SPACE(sizeof(int) * LXCBIND_SPAWN_NFDS_ROOM)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    ssize_t n = recvmsg(0, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0)
        return; /* EAGAIN/EINTR: the loop comes back; a real error shows up as EPOLLHUP */

    int fds[LXCBIND_SPAWN_NFDS_ROOM];
    int nfds = lxcbind_collect_fds(&msg, fds, LXCBIND_SPAWN_NFDS_ROOM);
    if (nfds < 1)
        return; /* no report socket: nobody to answer */
    int report = fds[0];

    uint32_t h[8];
    int bad = EINVAL;
    char *data = NULL;
    uint64_t datalen = 0;
    int memfd = -1;
    if ((uint64_t)n < LXCBIND_SPAWN_HEADER_SIZE || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)))
        goto refuse;
    memcpy(h, s->buf, sizeof(h));
    uint32_t flags = h[1];
    uint64_t argc = h[2], envc = h[3], nextra = h[4];
    datalen = h[5];
    /* All sums in 64 bits: no u32 wrap can make a huge count look small. */
    if (h[0] != LXCBIND_SPAWN_MAGIC || argc < 1 || nextra > LXCBIND_SPAWN_MAX_EXTRA_FDS ||
        argc + envc + 3 > LXCBIND_SPAWN_MAX_STRINGS || datalen > LXCBIND_SPAWN_MAX_DATA ||
        (flags & ~(uint32_t)(LXCBIND_SPAWN_CWD | LXCBIND_SPAWN_CTTY | LXCBIND_SPAWN_MEMFD |
                             LXCBIND_SPAWN_USER)))
        goto refuse;
    uint64_t want = 4 + nextra + ((flags & LXCBIND_SPAWN_MEMFD) ? 1 : 0);
    if ((uint64_t)nfds != want || want > LXCBIND_SPAWN_NFDS_MAX)
        goto refuse;
    if (flags & LXCBIND_SPAWN_MEMFD) {
        memfd = fds[nfds - 1];
        struct stat st;
        if (fstat(memfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
            (uint64_t)st.st_size != datalen || datalen == 0)
            goto refuse;
        data = mmap(NULL, (size_t)datalen, PROT_READ, MAP_PRIVATE, memfd, 0);
        if (data == MAP_FAILED) {
            bad = errno;
            data = NULL;
            goto refuse;
        }
    } else {
        if ((uint64_t)n != LXCBIND_SPAWN_HEADER_SIZE + datalen)
            goto refuse;
        data = s->buf + LXCBIND_SPAWN_HEADER_SIZE;
    }
    int has_cwd = (flags & LXCBIND_SPAWN_CWD) != 0;
    char **argv = s->strings;
    char **envp = s->strings + argc + 1;
    char *cwd_ptr[1] = {NULL};
    char *user_ptr[1] = {NULL};
    /* argv, NULL, envp, NULL lie one after the other in s->strings (bounded above). */
    {
        uint64_t pos = 0;
        char **targets[4] = {argv, envp, cwd_ptr, user_ptr};
        uint64_t counts[4] = {argc, envc, has_cwd ? 1u : 0u,
                              (flags & LXCBIND_SPAWN_USER) ? 1u : 0u};
        for (int t = 0; t < 4; t++) {
            for (uint64_t i = 0; i < counts[t]; i++) {
                char *end = pos < datalen ? memchr(data + pos, '\0', (size_t)(datalen - pos))
                                          : NULL;
                if (!end)
                    goto refuse;
                targets[t][i] = data + pos;
                pos = (uint64_t)(end - data) + 1;
            }
        }
        if (pos != datalen)
            goto refuse;
        argv[argc] = NULL;
        envp[envc] = NULL;
    }

    int slot = -1;
    for (int i = 0; i < s->used; i++)
        if (s->slots[i].pid == 0) {
            slot = i;
            break;
        }
    if (slot < 0) {
        if (s->used >= LXCBIND_SPAWN_MAX_CHILDREN) {
            bad = EAGAIN;
            goto refuse;
        }
        slot = s->used++;
    }

    struct lxcbind_spawn_child k;
    memset(&k, 0, sizeof(k));
    k.file = argv[0];
    k.argv = argv;
    k.envp = envp;
    k.cwd = cwd_ptr[0];
    k.nfds = 3 + (int)nextra;
    for (int i = 0; i < k.nfds; i++)
        k.fds[i] = fds[1 + i];
    k.ctty = (flags & LXCBIND_SPAWN_CTTY) != 0;
    if (user_ptr[0] && lxcbind_parse_user(user_ptr[0], &k) < 0) {
        bad = EINVAL;
        goto refuse;
    }
    pid_t pid = clone(lxcbind_spawn_child_main, s->stack + LXCBIND_SPAWN_STACK,
                      CLONE_VM | CLONE_VFORK | SIGCHLD, &k);
    int clone_err = errno;
    /* The command holds its own copies now: ours must go, or pipes never see EOF. */
    lxcbind_close_fds(fds + 1, nfds - 1);
    if (data && memfd >= 0)
        munmap(data, (size_t)datalen);
    if (pid < 0) {
        lxcbind_record_send(report, LXCBIND_REC_START, -1, LXCBIND_STAGE_SPAWN, clone_err, -1);
        close(report);
        return;
    }
    s->slots[slot].pid = pid;
    s->slots[slot].report = report;
    s->slots[slot].gen++;
    s->live++;
    /* Not reaped before we say so (we reap only in lxcbind_spawner_reap), so the pidfd is
     * certainly this child's, zombie or not. */
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    lxcbind_record_send(report, LXCBIND_REC_START, pid, k.stage, k.err, pidfd);
    if (pidfd >= 0)
        close(pidfd);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
                             .data.u64 = ((uint64_t)s->slots[slot].gen << 32) |
                                         (uint64_t)(LXCBIND_TAG_SLOT + slot)};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, report, &ev) < 0) {
        /* cannot watch the caller's interest: the command still gets its EXIT record */
    }
    return;

refuse:
    if (data && memfd >= 0)
        munmap(data, (size_t)datalen);
    /* Everything of the request is closed before the answer: whoever reads it finds
     * nothing of it left open here. */
    lxcbind_close_fds(fds + 1, nfds - 1);
    lxcbind_record_send(report, LXCBIND_REC_REFUSED, 0, bad, 0, -1);
    close(report);
}

/* Our /proc/<pid>/task/<pid>/children, opened once at start (main) and re-read from offset 0
 * each time (a seq_file: every read from 0 lists the children of that moment).  Looked up
 * again at each kill, the path would be the workload's to change: a command that may mount
 * (the ``nesting`` opt-in, a privileged container) could bury /proc under a tmpfs, and the
 * kill would find nobody to kill.  An open file cannot be redirected by any later mount. */
static int lxcbind_children_fd = -1;

static int lxcbind_open_children(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int)getpid());
    lxcbind_children_fd = open(path, O_RDONLY | O_CLOEXEC);
    return lxcbind_children_fd;
}

/* SIGKILL every child of ours and its process group; the first ``room`` pids signalled are
 * stored in ``killed`` (may be NULL); returns how many were signalled, or -1 when the list of
 * children could not be read (the caller must then fail closed: a leftover may live).  As the
 * subreaper, our children are the commands and whatever they orphaned (a daemon that setsid'd
 * and double-forked included): a process cannot leave the subtree of its subreaper. */
static int lxcbind_kill_children(pid_t *killed, int room)
{
    int fd = lxcbind_children_fd;
    if (fd < 0 || lseek(fd, 0, SEEK_SET) != 0)
        return -1;
    char buf[4096];
    size_t have = 0;
    int count = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        char *p = buf, *space;
        while ((space = strchr(p, ' '))) { /* the list is "pid pid ... " */
            pid_t pid = (pid_t)strtol(p, NULL, 10);
            if (pid > 0) {
                kill(-pid, SIGKILL); /* its group, when it leads one */
                if (kill(pid, SIGKILL) == 0) {
                    if (killed && count < room)
                        killed[count] = pid;
                    count++;
                }
            }
            p = space + 1;
        }
        have = strlen(p);
        memmove(buf, p, have);
    }
    return count;
}

/* Called when no command runs: every child of ours is then something a command left behind
 * (orphans come to us, the subreaper; as the container's init, to us anyway).  SIGKILL them,
 * reap them, and again for what their death orphaned, until a pass finds none: nothing an
 * earlier command started can then touch a later one (ptrace it, write its memory, stop or
 * kill it), since every later command starts after this returns (one thread).  Only our own
 * subtree: never the container's own init or services, nor processes attached by liblxc
 * (their parent is the host's caller).  A child we may not signal (EPERM) is left alone.
 * Returns -1 when the children could not be listed: nothing is known to be clean. */
static int lxcbind_kill_leftovers(void)
{
    pid_t killed[256];
    int n;
    while ((n = lxcbind_kill_children(killed, 256)) > 0) {
        for (int i = 0; i < n && i < 256; i++) {
            while (waitpid(killed[i], NULL, 0) < 0 && errno == EINTR)
                ;
        }
    }
    return n;
}

static void lxcbind_spawner_reap(struct lxcbind_spawner *s)
{
    struct signalfd_siginfo info[8];
    while (read(s->sigfd, info, sizeof(info)) > 0)
        ;
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        int i = lxcbind_slot_find(s, pid);
        if (i < 0)
            continue; /* a leftover that died on its own */
        s->slots[i].pid = 0;
        s->live--;
        /* The last running command is gone: whatever the commands left behind goes before
         * its result is reported (see lxcbind_kill_leftovers).  If that cannot be done, fail
         * closed: no EXIT record (the caller sees the spawner hang up, an error, never a
         * clean result) and no further command; the loop ends and we exit. */
        if (s->live == 0 && lxcbind_kill_leftovers() < 0) {
            s->blind = 1;
            return;
        }
        if (s->slots[i].report >= 0)
            lxcbind_record_send(s->slots[i].report, LXCBIND_REC_EXIT, pid, status, 0, -1);
        lxcbind_slot_hangup(s, i);
        while (s->used > 0 && s->slots[s->used - 1].pid == 0)
            s->used--;
    }
}

static void lxcbind_kill_command(pid_t pid, int sig, int group)
{
    if (group)
        kill(-pid, sig); /* the command is a session (and group) leader: setsid in the child */
    kill(pid, sig);
}

static void lxcbind_spawner_slot_event(struct lxcbind_spawner *s, uint64_t tag, uint32_t events)
{
    int i = (int)(uint32_t)tag - LXCBIND_TAG_SLOT;
    if (i < 0 || i >= s->used)
        return;
    struct lxcbind_slot *slot = &s->slots[i];
    if (slot->pid == 0 || slot->report < 0 || slot->gen != (uint32_t)(tag >> 32))
        return; /* freed or reused since epoll_wait returned this event */
    if (events & EPOLLIN) {
        int32_t rec[4];
        ssize_t n;
        while ((n = recv(slot->report, rec, sizeof(rec), MSG_DONTWAIT)) == (ssize_t)sizeof(rec)) {
            if (rec[0] == LXCBIND_REC_KILL && rec[1] > 0 && rec[1] < _NSIG)
                lxcbind_kill_command(slot->pid, rec[1], rec[2] != 0);
        }
        if (n == 0) /* the caller closed its end */
            events |= EPOLLHUP;
    }
    if (events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) {
        /* Abandoned: nobody will read the result, so the command must not outlive it. */
        lxcbind_kill_command(slot->pid, SIGKILL, 1);
        lxcbind_slot_hangup(s, i);
    }
}

/* Keep only what the bounding set allows (liblxc dropped the bounding set; a command gets at
 * most that at its execve anyway), and take CAP_SYS_PTRACE out of the bounding set for good:
 * with it a command could read or steer the spawner despite PR_SET_DUMPABLE 0.  Needs
 * CAP_SETPCAP; a session running as a non-root uid has no capabilities to lose. */
static void lxcbind_clamp_caps(void)
{
    prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0);
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) < 0)
        return;
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1)
            continue;
        uint32_t mask = ~(1u << (cap % 32));
        data[cap / 32].effective &= mask;
        data[cap / 32].permitted &= mask;
        data[cap / 32].inheritable &= mask;
    }
    syscall(SYS_capset, &head, data);
}

static void *lxcbind_map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static int lxcbind_spawner_loop(void)
{
    struct lxcbind_spawner s;
    memset(&s, 0, sizeof(s));
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    s.sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    s.epfd = epoll_create1(EPOLL_CLOEXEC);
    s.buf = lxcbind_map(LXCBIND_SPAWN_HEADER_SIZE + LXCBIND_SPAWN_MAX_INLINE);
    s.strings = lxcbind_map(sizeof(char *) * LXCBIND_SPAWN_MAX_STRINGS);
    s.stack = lxcbind_map(LXCBIND_SPAWN_STACK);
    s.slots = lxcbind_map(sizeof(struct lxcbind_slot) * LXCBIND_SPAWN_MAX_CHILDREN);
    if (s.sigfd < 0 || s.epfd < 0 || !s.buf || !s.strings || !s.stack || !s.slots)
        return 125;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LXCBIND_TAG_CONTROL};
    if (epoll_ctl(s.epfd, EPOLL_CTL_ADD, 0, &ev) < 0)
        return 125;
    ev.data.u64 = LXCBIND_TAG_SIGNAL;
    if (epoll_ctl(s.epfd, EPOLL_CTL_ADD, s.sigfd, &ev) < 0)
        return 125;

    lxcbind_record_send(0, LXCBIND_REC_HELLO, getpid(), LXCBIND_SPAWN_VERSION, 0, -1);

    int running = 1;
    while (running) {
        struct epoll_event events[32];
        int n = epoll_wait(s.epfd, events, 32, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == LXCBIND_TAG_SIGNAL) {
                lxcbind_spawner_reap(&s);
            } else if (tag == LXCBIND_TAG_CONTROL) {
                if (events[i].events & EPOLLIN)
                    lxcbind_spawner_request(&s);
                /* EOF (SEQPACKET reads 0) shows as EPOLLIN|EPOLLHUP; stop only once drained */
                if (events[i].events & (EPOLLHUP | EPOLLERR)) {
                    char probe;
                    if (recv(0, &probe, 1, MSG_DONTWAIT | MSG_PEEK) <= 0)
                        running = 0;
                }
            } else {
                lxcbind_spawner_slot_event(&s, tag, events[i].events);
            }
            if (s.blind) {
                running = 0;
                break;
            }
        }
    }

    /* The caller is gone or closed the session: no command may outlive it, nor anything a
     * command left behind (we are the subreaper of all of it: see main). */
    for (int i = 0; i < s.used; i++)
        if (s.slots[i].pid > 0)
            lxcbind_kill_command(s.slots[i].pid, SIGKILL, 1);
    /* Blind (our children cannot be listed): what is left cannot be found, so we cannot wait
     * for it either.  Exit: as the container's init that kills the rest of the container; an
     * attached spawner's caller sees us gone and its close() kills what is left through the
     * cgroup. */
    if (s.blind || lxcbind_children_fd < 0)
        return 125;
    for (;;) {
        if (lxcbind_kill_children(NULL, 0) < 0)
            return 125;
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            break;
        int i = lxcbind_slot_find(&s, pid);
        if (i >= 0) {
            if (s.slots[i].report >= 0)
                lxcbind_record_send(s.slots[i].report, LXCBIND_REC_EXIT, pid, status, 0, -1);
            lxcbind_slot_hangup(&s, i);
            s.slots[i].pid = 0;
        }
    }
    return 0;
}

/* Init mode: connect the control socket to the host's listener at ``path`` (a fresh sandbox
 * binds it in before start; nothing else of the container exists yet) and make it fd 0, with
 * /dev/null as fds 1 and 2 in place of the console liblxc gave us. */
static int lxcbind_connect_control(const char *path)
{
    int fd = lxcbind_seqpacket_connect(path);
    if (fd < 0)
        return -1;
    if (dup2(fd, 0) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0)
        return -1;
    close(null);
    return 0;
}

/* Init mode of a clone (lxcbind-cloner, see _cdefs/cloner.c): the control socket is the
 * inherited, already connected descriptor ``text``; it becomes fd 0 as with --init. */
static int lxcbind_take_control(const char *text)
{
    char *end;
    errno = 0;
    long fd = strtol(text, &end, 10);
    if (errno || *text < '0' || *text > '9' || *end || fd < 3 || fd > 65535)
        return -1;
    int type = 0;
    socklen_t len = sizeof(type);
    if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET)
        return -1;
    if (dup2((int)fd, 0) < 0)
        return -1;
    close((int)fd);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0)
        return -1;
    if (null > 2) /* a clone's init comes with 0-2 closed: null is then 1 itself */
        close(null);
    return 0;
}

/* A decimal id of 0..2^32-2 (the user-namespace range), or -1. */
static long lxcbind_parse_id(const char *text)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno || *text < '0' || *text > '9' || *end || value > 4294967294UL)
        return -1;
    return (long)value;
}

/* Become the user the commands run as (a policy's lxc.uid/lxc.gid), as liblxc's attach does
 * for an attached spawner: no supplementary groups, then the gid, then the uid (which drops
 * every capability). */
static int lxcbind_become(long uid, long gid)
{
    if (setgroups(0, NULL) < 0 && errno != EPERM)
        return -1;
    if (gid >= 0 && setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) < 0)
        return -1;
    if (uid >= 0 && setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) < 0)
        return -1;
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* a change of credentials resets it */
    return 0;
}

/* ``lxcbind-spawner``: attached by Session, control socket on fd 0.
 * ``lxcbind-spawner --init-fd N [UID GID]``: the same, as a clone's init (lxcbind-cloner),
 * with the control socket inherited as fd N instead of connected to a path.
 * ``lxcbind-spawner --init PATH [UID GID]``: the container's init (lxc.init.cmd) of a fresh
 * sandbox, which then needs no attach at all; its control socket connects to PATH, and with
 * UID and GID (-1: unchanged) it serves as that user.  As pid 1 it also reaps every orphan of
 * the container, and when it exits the container stops. */
int main(int argc, char **argv)
{
    /* First, before anything a command could want: nobody without CAP_SYS_PTRACE may ptrace
     * us, read /proc/<us>/mem|environ|fd, or pidfd_getfd our sockets.  (The exec cleared the
     * flag the exec function had set: a plain exec makes a process dumpable again.) */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int as_init = (argc == 3 || argc == 5) &&
                  (strcmp(argv[1], "--init") == 0 || strcmp(argv[1], "--init-fd") == 0);
    int by_fd = as_init && strcmp(argv[1], "--init-fd") == 0;
    long uid = -1, gid = -1;
    if (as_init && argc == 5) {
        uid = strcmp(argv[3], "-1") == 0 ? -1 : lxcbind_parse_id(argv[3]);
        gid = strcmp(argv[4], "-1") == 0 ? -1 : lxcbind_parse_id(argv[4]);
        if ((uid < 0 && strcmp(argv[3], "-1") != 0) || (gid < 0 && strcmp(argv[4], "-1") != 0))
            return 125;
    }
    prctl(PR_SET_NAME, as_init ? "lxcbind-init" : "lxcbind-spawn", 0, 0, 0);
    if (as_init && (by_fd ? lxcbind_take_control(argv[2])
                          : lxcbind_connect_control(argv[2])) < 0)
        return 125;
    struct rlimit nofile;
    if (by_fd && getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_max >= 2048) {
        lxcbind_child_nofile.rlim_max = nofile.rlim_max / 2;
        lxcbind_child_nofile.rlim_cur = nofile.rlim_cur < nofile.rlim_max / 2
                                            ? nofile.rlim_cur : nofile.rlim_max / 2;
        lxcbind_cap_nofile = 1;
        nofile.rlim_cur = nofile.rlim_max; /* ours: the whole hard limit */
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    /* What a command orphans (a daemon that setsid'd out of its group) comes to us rather than
     * to the container's init, so that close() can still find and kill it. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    /* Our own session: a Ctrl-C on the caller's terminal must not reach us or our commands. */
    if (getsid(0) != getpid())
        setsid();
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++)
        sigaction(sig, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    lxcbind_clamp_caps();
    /* As in shim.c: wherever no_new_privs is set (always in lxcbind's sandboxes). */
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1 && lxcbind_filter_i386_sockets() < 0)
        return 125; /* never serve commands without it */
    if ((uid >= 0 || gid >= 0) && lxcbind_become(uid, gid) < 0)
        return 125; /* never serve as root what was meant to run as a user */
    /* fd 0 is the control socket, 1 and 2 /dev/null; nothing else may exist, and ours are
     * close-on-exec so that no command inherits one. */
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    }
    for (int fd = 0; fd < 3; fd++)
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    /* Before any command runs, hence before any could hide /proc: without it no leftover
     * could be killed, and a command's result would not be its own. */
    if (lxcbind_open_children() < 0)
        return 125;
    if (chdir("/") < 0) {
        /* stay where liblxc put us; commands chdir for themselves */
    }
    return lxcbind_spawner_loop();
}
