/* lxcbind's resident spawner: the C half of lxcbind.Session (see lxcbind/session.py).
 *
 * Why: liblxc's attach() fork()s the whole caller for every command, so its cost grows with
 * the caller's memory.  A Session pays that once: one attach runs lxcbind_spawner_exec (below)
 * as its exec function, and the attached process, which already has every bit of liblxc's
 * setup (namespaces, cgroup, capability bounding set, no_new_privs, seccomp, LSM exec label,
 * uid/gid), stays resident and starts each later command with clone(CLONE_VM|CLONE_VFORK):
 * no page tables are copied, so a spawn costs the same whatever the caller's size.  Commands
 * are its children and inherit exactly that setup; the caps and LSM label that liblxc
 * arranges "on exec" are applied by the kernel at each command's execve, as for an attach.
 *
 * Wire format (native endianness; the caller runs on the same host):
 *   control socket = fd 0 of the spawner, SOCK_SEQPACKET.
 *   spawner -> caller, once:  record {HELLO, pid-in-container, VERSION, 0}.
 *   caller -> spawner, per command: one datagram
 *       header  u32 magic, flags, argc, envc, nextra, datalen, 0, 0     (HEADER_SIZE bytes)
 *       data    argv strings, env strings, [cwd] -- each NUL-terminated (inline, or in a
 *               memfd passed last when the MEMFD flag is set and the data is large)
 *       SCM_RIGHTS: report socket, stdin, stdout, stderr, extra fds (become 3, 4, ...), [memfd]
 *   report socket (one SOCK_SEQPACKET pair per command), records of 4 x i32:
 *       spawner -> caller  {START, pid, stage, errno}   stage 0: running; else it never ran
 *                          {EXIT, pid, wait status, 0}  then the spawner closes its end
 *                          {REFUSED, 0, errno, 0}       malformed request / too many children
 *       caller -> spawner  {KILL, signal, to_group, 0}  signal the command (or its group)
 *       The caller closing its end kills the command's process group (abandoned command).
 * The control socket closing (Session.close, or the caller dying) makes the spawner SIGKILL
 * every command's process group, reap them and exit.
 *
 * Rules: the spawner is single-threaded C, never returns into liblxc, never calls malloc (its
 * buffers are mmap()ed at start), holds no descriptor a command could inherit (all CLOEXEC and
 * the child marks everything above its own stdio close-on-exec), and reaps its children via a
 * signalfd, so nothing accumulates however many commands run.  Helpers are static, lxcbind_. */
#include <sched.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/capability.h>

#define LXCBIND_SPAWN_MAGIC 0x4c584253u /* "SBXL" */
#define LXCBIND_SPAWN_VERSION 1
#define LXCBIND_SPAWN_HEADER_SIZE 32
#define LXCBIND_SPAWN_RECORD_SIZE 16
#define LXCBIND_SPAWN_MAX_INLINE (96 * 1024)
#define LXCBIND_SPAWN_MAX_EXTRA_FDS 8
#define LXCBIND_SPAWN_MAX_STRINGS 262144
#define LXCBIND_SPAWN_MAX_CHILDREN 4096
#define LXCBIND_SPAWN_MAX_DATA (64 * 1024 * 1024)

#define LXCBIND_SPAWN_CWD 1
#define LXCBIND_SPAWN_CTTY 2
#define LXCBIND_SPAWN_MEMFD 4

#define LXCBIND_REC_HELLO 'H'
#define LXCBIND_REC_START 'S'
#define LXCBIND_REC_EXIT 'X'
#define LXCBIND_REC_REFUSED 'E'
#define LXCBIND_REC_KILL 'K'

#define LXCBIND_STAGE_SPAWN 4

#define LXCBIND_SPAWN_STACK (256 * 1024)
#define LXCBIND_SPAWN_NFDS_MAX (4 + LXCBIND_SPAWN_MAX_EXTRA_FDS + 1)
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
};

static void lxcbind_record_send(int fd, int32_t type, int32_t pid, int32_t a, int32_t b)
{
    int32_t rec[4] = {type, pid, a, b};
    ssize_t unused = send(fd, rec, sizeof(rec), MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)unused;
}

/* The command's side of the vfork: runs on the spawner's memory until execve or _exit, so it
 * only makes system calls and writes its failure into *k (the spawner is suspended meanwhile). */
static int lxcbind_spawn_child_main(void *arg)
{
    struct lxcbind_spawn_child *k = arg;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* the spawner blocks SIGCHLD for its signalfd */
    setsid();

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
    if (syscall(SYS_close_range, (unsigned)k->nfds, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) < 0) {
        for (int fd = k->nfds; fd < 65536; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    if (k->ctty && ioctl(0, TIOCSCTTY, 0) < 0) {
        k->stage = LXCBIND_STAGE_CTTY;
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

/* One control datagram: validate, spawn, report START.  Never fails the spawner itself. */
static void lxcbind_spawner_request(struct lxcbind_spawner *s)
{
    struct iovec iov = {s->buf, LXCBIND_SPAWN_HEADER_SIZE + LXCBIND_SPAWN_MAX_INLINE};
    union {
        char buf[CMSG_SPACE(sizeof(int) * LXCBIND_SPAWN_NFDS_MAX)];
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

    int fds[LXCBIND_SPAWN_NFDS_MAX];
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < count && nfds < LXCBIND_SPAWN_NFDS_MAX; i++)
            memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (nfds < 1)
        return; /* no report socket: nobody to answer */
    int report = fds[0];

    uint32_t h[8];
    int bad = EINVAL;
    char *data = NULL;
    size_t datalen = 0;
    int memfd = -1;
    if (n < LXCBIND_SPAWN_HEADER_SIZE || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)))
        goto refuse;
    memcpy(h, s->buf, sizeof(h));
    uint32_t flags = h[1], argc = h[2], envc = h[3], nextra = h[4];
    datalen = h[5];
    if (h[0] != LXCBIND_SPAWN_MAGIC || argc < 1 || nextra > LXCBIND_SPAWN_MAX_EXTRA_FDS ||
        argc + envc + 3 > LXCBIND_SPAWN_MAX_STRINGS || datalen > LXCBIND_SPAWN_MAX_DATA)
        goto refuse;
    int want = 4 + (int)nextra + ((flags & LXCBIND_SPAWN_MEMFD) ? 1 : 0);
    if (nfds != want)
        goto refuse;
    if (flags & LXCBIND_SPAWN_MEMFD) {
        memfd = fds[nfds - 1];
        struct stat st;
        if (fstat(memfd, &st) < 0 || (size_t)st.st_size != datalen || datalen == 0)
            goto refuse;
        data = mmap(NULL, datalen, PROT_READ | PROT_WRITE, MAP_PRIVATE, memfd, 0);
        if (data == MAP_FAILED) {
            bad = errno;
            data = NULL;
            goto refuse;
        }
    } else {
        if ((size_t)n != LXCBIND_SPAWN_HEADER_SIZE + datalen)
            goto refuse;
        data = s->buf + LXCBIND_SPAWN_HEADER_SIZE;
    }
    int has_cwd = (flags & LXCBIND_SPAWN_CWD) != 0;
    char **argv = s->strings;
    char **envp = s->strings + argc + 1;
    char *cwd_ptr[1] = {NULL};
    /* argv, NULL, envp, NULL lie one after the other in s->strings. */
    {
        size_t pos = 0;
        char **targets[3] = {argv, envp, cwd_ptr};
        unsigned counts[3] = {argc, envc, has_cwd ? 1u : 0u};
        for (int t = 0; t < 3; t++) {
            for (unsigned i = 0; i < counts[t]; i++) {
                char *end = pos < datalen ? memchr(data + pos, '\0', datalen - pos) : NULL;
                if (!end)
                    goto refuse;
                targets[t][i] = data + pos;
                pos = (size_t)(end - data) + 1;
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
    pid_t pid = clone(lxcbind_spawn_child_main, s->stack + LXCBIND_SPAWN_STACK,
                      CLONE_VM | CLONE_VFORK | SIGCHLD, &k);
    int clone_err = errno;
    /* The command holds its own copies now: ours must go, or pipes never see EOF. */
    lxcbind_close_fds(fds + 1, nfds - 1);
    if (data && memfd >= 0)
        munmap(data, datalen);
    if (pid < 0) {
        lxcbind_record_send(report, LXCBIND_REC_START, -1, LXCBIND_STAGE_SPAWN, clone_err);
        close(report);
        return;
    }
    s->slots[slot].pid = pid;
    s->slots[slot].report = report;
    s->slots[slot].gen++;
    s->live++;
    lxcbind_record_send(report, LXCBIND_REC_START, pid, k.stage, k.err);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
                             .data.u64 = ((uint64_t)s->slots[slot].gen << 32) |
                                         (uint64_t)(LXCBIND_TAG_SLOT + slot)};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, report, &ev) < 0) {
        /* cannot watch the caller's interest: the command still gets its EXIT record */
    }
    return;

refuse:
    if (data && memfd >= 0)
        munmap(data, datalen);
    lxcbind_record_send(report, LXCBIND_REC_REFUSED, 0, bad, 0);
    lxcbind_close_fds(fds, nfds);
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
            continue;
        if (s->slots[i].report >= 0)
            lxcbind_record_send(s->slots[i].report, LXCBIND_REC_EXIT, pid, status, 0);
        lxcbind_slot_hangup(s, i);
        s->slots[i].pid = 0;
        s->live--;
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

/* Mark as "not needed" what only the caller needs: the capabilities beyond the bounding set
 * liblxc left us (a command gets at most the bounding set at its execve anyway). */
static void lxcbind_clamp_caps(void)
{
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

#if defined(__x86_64__)
#define LXCBIND_SHED_MIN (1024 * 1024)
#define LXCBIND_SHED_MAX_RANGES 65536

/* Give back the copy of the caller's memory that fork() gave us.  The spawner is a fork of the
 * caller and never execs, so without this it pins (copy-on-write) every page the caller had at
 * session start: a caller that later frees 1 GiB would still cost 1 GiB, and every later write
 * by the caller would pay a page copy.  Unmapped: every private anonymous mapping of 1 MiB or
 * more (Python arenas, big objects, other threads' stacks and malloc arenas), except the ones
 * this thread runs on (its stack, its TLS block and DTV) and the .bss continuation of a mapped
 * file.  The spawner itself never calls malloc, so nothing it uses lives there.  Best effort:
 * without /proc, nothing is shed. */
static void lxcbind_shed_caller_memory(void)
{
    uintptr_t keep[3];
    uintptr_t tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    keep[0] = (uintptr_t)&tp;                 /* our stack */
    keep[1] = tp;                             /* TCB + static TLS (errno) */
    keep[2] = tp ? ((uintptr_t *)tp)[1] : 0;  /* the DTV (tcbhead_t.dtv) */

    uintptr_t (*ranges)[2] = mmap(NULL, sizeof(*ranges) * LXCBIND_SHED_MAX_RANGES,
                                  PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ranges == MAP_FAILED)
        return;
    int count = 0;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[8192];
        size_t have = 0;
        uintptr_t prev_end = 0;
        int prev_file = 0;
        for (;;) {
            ssize_t n = read(fd, buf + have, sizeof(buf) - have);
            if (n <= 0)
                break;
            have += (size_t)n;
            char *line = buf, *nl;
            while ((nl = memchr(line, '\n', (size_t)(buf + have - line)))) {
                *nl = '\0';
                /* start-end perms offset dev inode [path] */
                char *p = line;
                uintptr_t start = strtoul(p, &p, 16);
                uintptr_t end = strtoul(p + 1, &p, 16);
                char perms[5] = {0};
                memcpy(perms, p + 1, 4);
                p += 5;
                strtoul(p, &p, 16);              /* offset */
                while (*p == ' ') p++;
                while (*p && *p != ' ') p++;     /* dev */
                unsigned long inode = strtoul(p, &p, 10);
                while (*p == ' ') p++;
                int named = *p != '\0';
                int anon = !named && inode == 0;
                int file = inode != 0;
                int pinned = 0;
                for (int k = 0; k < 3; k++)
                    if (keep[k] >= start && keep[k] < end)
                        pinned = 1;
                if (anon && perms[3] == 'p' && end - start >= LXCBIND_SHED_MIN && !pinned &&
                    !(prev_file && prev_end == start) &&
                    !((uintptr_t)ranges >= start && (uintptr_t)ranges < end) &&
                    count < LXCBIND_SHED_MAX_RANGES) {
                    ranges[count][0] = start;
                    ranges[count][1] = end;
                    count++;
                }
                prev_end = end;
                prev_file = file;
                line = nl + 1;
            }
            have = (size_t)(buf + have - line);
            memmove(buf, line, have);
            if (have == sizeof(buf))
                have = 0; /* an absurd line: drop it */
        }
        close(fd);
    }
    for (int i = 0; i < count; i++)
        munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0]);
    munmap(ranges, sizeof(*ranges) * LXCBIND_SHED_MAX_RANGES);
}
#endif

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

    lxcbind_record_send(0, LXCBIND_REC_HELLO, getpid(), LXCBIND_SPAWN_VERSION, 0);

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
        }
    }

    /* The caller is gone or closed the session: no command may outlive it. */
    for (int i = 0; i < s.used; i++)
        if (s.slots[i].pid > 0)
            lxcbind_kill_command(s.slots[i].pid, SIGKILL, 1);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0)
            break;
        int i = lxcbind_slot_find(&s, pid);
        if (i >= 0) {
            if (s.slots[i].report >= 0)
                lxcbind_record_send(s.slots[i].report, LXCBIND_REC_EXIT, pid, status, 0);
            lxcbind_slot_hangup(&s, i);
            s.slots[i].pid = 0;
        }
    }
    return 0;
}

/* The exec function of the session's one attach.  liblxc has joined the namespaces and
 * cgroup, set personality, dropped the bounding set, set no_new_privs, dup'd stdio (fd 0 is
 * the control socket) and loaded seccomp; what it leaves "for the exec" is finished per
 * command by the kernel.  Start from the same clean state lxcbind_exec gives a program. */
static int lxcbind_spawner_exec(void *payload)
{
    struct lxcbind_exec *x = payload;
    ssize_t unused = write(x->status_fd, "R", 1);
    (void)unused;

    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++)
        sigaction(sig, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Out of the caller's process group and terminal: a Ctrl-C there must not kill it. */
    if (getsid(0) != getpid())
        setsid();
    /* Container processes must not ptrace or read the memory of a copy of the caller. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* A fork of the caller looks like the caller in ps; say what it is. */
    prctl(PR_SET_NAME, "lxcbind-spawn", 0, 0, 0);
    lxcbind_clamp_caps();
    /* Every descriptor of the caller is ours too (fork, no exec): drop them all, or a
     * pipe the caller closes would never see EOF.  The status pipe goes with them. */
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    }
    if (x->cwd && chdir(x->cwd) < 0) {
        /* stay where liblxc put us; commands chdir for themselves */
    }
#if defined(__x86_64__)
    lxcbind_shed_caller_memory(); /* x (the payload) lives in the caller's heap: not after */
#endif
    _exit(lxcbind_spawner_loop());
}

