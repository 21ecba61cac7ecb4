/* The i386-ABI socket filter shared by the spawner and the attach exec function. */
#ifndef LXCBIND_SOCKFILTER_H
#define LXCBIND_SOCKFILTER_H

#include <errno.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

/* The container's seccomp profile refuses socket families by the domain argument, but liblxc
 * skips such rules for the i386 ABI (libseccomp names its socket calls as multiplexed pseudo
 * calls), so a 64-bit workload could still make an AF_VSOCK socket through int 0x80.  Stack a
 * filter for that ABI alone: direct socket/socketpair (359/360) only for AF_UNIX, AF_INET,
 * AF_INET6, AF_NETLINK and AF_PACKET (security.py's list), and no socket or socketpair through
 * the socketcall multiplexer (102), whose arguments sit in memory a filter cannot read.
 * Inherited by every command and irremovable; installed by both ways a command starts (the
 * spawner, and shim.c's attach exec function).  0 on success (or on a non-x86-64 build). */
static inline int lxcbind_filter_i386_sockets(void)
{
#if defined(__x86_64__)
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_I386, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),                 /* 2 */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 102, 0, 3),               /* 4: socketcall */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 1, 9, 0),                 /* 6: SYS_SOCKET */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 8, 8, 9),                 /* 7: SYS_SOCKETPAIR */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 359, 1, 0),               /* 8: socket */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 360, 0, 7),               /* 9: socketpair */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 1, 5, 0),                 /* 11: AF_UNIX */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 2, 4, 0),                 /* AF_INET */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 10, 3, 0),                /* AF_INET6 */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 16, 2, 0),                /* AF_NETLINK */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 17, 1, 0),                /* 15: AF_PACKET */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),         /* 16 */
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),                 /* 17 */
    };
    struct sock_fprog prog = {(unsigned short)(sizeof(code) / sizeof(code[0])), code};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
#else
    return 0;
#endif
}

#endif
