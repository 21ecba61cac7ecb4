/* Probe for test_seccompile.py: tries syscalls the container profile decides on, through the
 * three x86 ABIs a 64-bit process can use (x86_64, i386 by int 0x80, x32 by the x32 bit), and
 * prints one line per attempt: "ABI LABEL RESULT" (RESULT: OK or the errno's name).
 *
 * Every attempt is harmless even with no filter at all, as host root: its arguments make the
 * kernel fail it after the filter (a bad pointer, an invalid flag, a path under a directory
 * that does not exist, fd -1), never before a privilege check that could differ between the
 * host and a container (so both runs print the same) and with an errno a refusal never gives
 * (so a refusal is visible).  Static, non-PIE: its strings lie below 4 GiB for the i386 ABI. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "probe.h"

#define BAD 1L          /* an address that is never mapped */
#define POISON 0x2000L  /* CLONE_PTRACE: unshare() refuses it (EINVAL) before anything else */
#define SIGHAND 0x800L  /* CLONE_SIGHAND without CLONE_VM: clone() says EINVAL, nothing made */
#define FLAGS 0x7fff8000L  /* bits no flags argument accepts */
#define AT_CWD -100L
#define CREATE 0x41L    /* O_CREAT | O_WRONLY */
#define IFREG 0100000L

static const char nopath_s[] = "/nonexistent-lxcbind-probe/x";
#define NOPATH ((long)nopath_s)
static unsigned int socketcall_args[3];

/* i386 syscall: eax nr; ebx, ecx, edx, esi, edi, ebp the arguments (truncated to 32 bits). */
__attribute__((naked, noinline)) static long int80(long nr, long a0, long a1, long a2, long a3,
                                                   long a4, long a5)
{
    __asm__ volatile(
        "push %rbx\n\t"
        "push %rbp\n\t"
        "mov %rdi, %rax\n\t"
        "mov %rsi, %rbx\n\t"
        "mov %rcx, %r10\n\t"
        "mov %rdx, %rcx\n\t"
        "mov %r10, %rdx\n\t"
        "mov %r8, %rsi\n\t"
        "mov %r9, %rdi\n\t"
        "mov 24(%rsp), %rbp\n\t"
        "int $0x80\n\t"
        "pop %rbp\n\t"
        "pop %rbx\n\t"
        "movslq %eax, %rax\n\t"
        "ret\n\t");
}

enum abi { X86_64, I386, X32 };
static const char *const abi_names[] = {"x86_64", "i386", "x32"};
static enum abi abi;

static long lookup(const char *name)
{
    const struct probe_nr *table = abi == X86_64 ? probe_nrs_x86_64
                                   : abi == I386 ? probe_nrs_i386 : probe_nrs_x32;

    for (; table->name != NULL; table++)
        if (strcmp(table->name, name) == 0)
            return table->nr;
    return -1;
}

static void call(const char *label, long a0, long a1, long a2, long a3, long a4, long a5)
{
    char name[64];
    long nr, rc;
    int err = 0;

    snprintf(name, sizeof(name), "%.*s", (int)strcspn(label, "/"), label);
    nr = lookup(name);
    if (nr < 0)
        return;   /* no such call on this ABI */
    if (abi == I386) {
        rc = int80(nr, a0, a1, a2, a3, a4, a5);
        if (rc < 0 && rc >= -4095) {
            err = (int)-rc;
            rc = -1;
        }
    } else {
        errno = 0;
        rc = syscall(nr, a0, a1, a2, a3, a4, a5);
        err = errno;
    }
    printf("%s %s %s\n", abi_names[abi], label, rc < 0 ? strerrorname_np(err) : "OK");
    fflush(stdout);
}

#define C0(label) call(label, 0, 0, 0, 0, 0, 0)
#define C(label, ...) call_args(label, (long[6]){__VA_ARGS__})
static void call_args(const char *label, const long a[6])
{
    call(label, a[0], a[1], a[2], a[3], a[4], a[5]);
}

static void probe_all(void)
{
    static const struct { const char *name; long flag; } ns[] = {
        {"NEWNS", 0x20000}, {"NEWCGROUP", 0x2000000}, {"NEWUTS", 0x4000000},
        {"NEWIPC", 0x8000000}, {"NEWUSER", 0x10000000}, {"NEWPID", 0x20000000},
        {"NEWNET", 0x40000000},
    };
    static const struct { const char *name; long mode; } modes[] = {
        {"suid", 04755}, {"sgid", 02755}, {"plain", 0755}, {"suid+hi", 0x100004755L},
    };
    static const long families[] = {0x100000028L, 0x100000002L, 0xffffffffL, -1L};
    char label[64];

    /* allowed everywhere: the probe itself works */
    C0("getpid");
    C("read", -1, 0, 0);

    /* refused by every profile */
    C("keyctl", 0x7fff);
    C("add_key", BAD, BAD, 0, 0, -4);
    C("request_key", BAD, BAD, 0, 0);
    C("bpf", 0x7fff, 0, 0);
    C("userfaultfd", FLAGS);
    C("open_by_handle_at", -1, BAD, FLAGS);
    C("name_to_handle_at", -1, BAD, BAD, BAD, FLAGS);
    C("kexec_load", 0, 0, 0, FLAGS);
    C("kexec_file_load", -1, -1, 0, 0, FLAGS);
    C("init_module", BAD, 0, BAD);
    C("finit_module", -1, BAD, FLAGS);
    C("delete_module", BAD, 0);
    C("acct", BAD);
    C("swapon", BAD, FLAGS);
    C("swapoff", BAD);
    C("reboot", 0, 0, 0, 0);   /* no magic: EINVAL */
    C("syslog", 0x7fff, 0, 0);
    C("quotactl", 0x7fff, BAD, 0, 0);
    C("quotactl_fd", -1, 0x7fff, 0, 0);
    C0("lookup_dcookie");
    C0("nfsservctl");
    C("iopl", 99);
    C("ioperm", 0x7fffffff, 1, 1);
    C("uselib", BAD);
    C("ustat", 0, BAD);
    C("sysfs", 99, 0, 0);
    C("_sysctl", BAD);
    C("vm86", 0x7fff, BAD);
    C("vm86old", BAD);
    C("clock_settime", 0x7fff, BAD);
    C("settimeofday", BAD, BAD);
    C("stime", BAD);
    C("clock_adjtime", 0x7fff, BAD);
    C("fanotify_init", FLAGS, 0);
    C("io_uring_setup", 0, BAD);
    C("io_uring_enter", -1, 0, 0, 0, 0, 0);
    C("io_uring_register", -1, 0, 0, 0);
    if (open("/dev/tty", O_RDWR | O_NOCTTY) < 0)
        C0("vhangup");   /* no controlling terminal: a no-op even if it ran */

    /* opt-ins: perf, ptrace */
    C("perf_event_open", BAD, 0, -1, -1, 0);
    C("ptrace", 0x7fff, 0x7fffffff, 0, 0);
    C("process_vm_readv", 0x7fffffff, 0, 0, 0, 0, FLAGS);
    C("process_vm_writev", 0x7fffffff, 0, 0, 0, 0, FLAGS);
    C("pidfd_getfd", -1, 0, 0);

    /* opt-in nesting: mounts and namespaces */
    C("mount", 0, NOPATH, BAD, 0, 0);
    C("umount", NOPATH);
    C("umount2", NOPATH, FLAGS);
    C("umount2/force", NOPATH, FLAGS | 1);   /* MNT_FORCE: reject_force_umount */
    C("pivot_root", BAD, BAD);
    C("move_mount", -1, BAD, -1, BAD, FLAGS);
    C("open_tree", -1, BAD, FLAGS);
    C("fsopen", BAD, FLAGS);
    C("fsconfig", -1, 0x7fff, 0, 0, 0);
    C("fsmount", -1, FLAGS, 0);
    C("fspick", -1, BAD, FLAGS);
    C("mount_setattr", -1, BAD, FLAGS, 0, 0);
    C("setns", -1, 0);
    C("unshare/plain", POISON);
    C("unshare/NEWTIME", 0x80 | POISON);
    C("clone/plain", SIGHAND);
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
        snprintf(label, sizeof(label), "unshare/%s", ns[i].name);
        C(label, ns[i].flag | POISON);
        snprintf(label, sizeof(label), "clone/%s", ns[i].name);
        C(label, ns[i].flag | SIGHAND);
        snprintf(label, sizeof(label), "clone/%s+hi", ns[i].name);
        C(label, ns[i].flag | SIGHAND | 0x100000000L);
    }
    C("clone3", BAD, 0);

    /* socket families: an invalid type makes an allowed family EINVAL, nothing is made */
    for (long family = 0; family <= 64 + 4; family++) {
        long f = family <= 64 ? family : families[family - 65];

        snprintf(label, sizeof(label), "socket/%#lx", f);
        C(label, f, 0x40000001, 0);
        snprintf(label, sizeof(label), "socketpair/%#lx", f);
        C(label, f, 0x40000001, 0, BAD);
        socketcall_args[0] = (unsigned int)f;
        socketcall_args[1] = 0x40000001;
        snprintf(label, sizeof(label), "socketcall/%#lx", f);
        C(label, 1, (long)socketcall_args);   /* SYS_SOCKET */
    }

    /* setuid and setgid bits (refused when a writable bind maps host root) */
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        long m = modes[i].mode;
#define M(call) (snprintf(label, sizeof(label), call "/%s", modes[i].name), label)
        C(M("chmod"), NOPATH, m);
        C(M("fchmod"), -1, m);
        C(M("fchmodat"), AT_CWD, NOPATH, m);
        C(M("fchmodat2"), AT_CWD, NOPATH, m, 0);
        C(M("open"), NOPATH, CREATE, m);
        C(M("openat"), AT_CWD, NOPATH, CREATE, m);
        C(M("creat"), NOPATH, m);
        C(M("mknod"), NOPATH, IFREG | m, 0);
        C(M("mknodat"), AT_CWD, NOPATH, IFREG | m, 0);
#undef M
    }
    C("openat2", AT_CWD, NOPATH, BAD, 24);
}

int main(void)
{
    setsid();
    for (abi = X86_64; abi <= X32; abi++)
        probe_all();
    return 0;
}
