/* Test helper for test_seccompile.py, compiled at test time against _cdefs/seccompile.h.
 *
 *   runner compile PROFILE OUT   compile the profile text in file PROFILE, write the BPF
 *                                program to OUT; prints "len=N fds=same usec=T", or
 *                                "error=-E fds=same" (exit 3); "fds=leaked" if the call left
 *                                a descriptor open
 *   runner exec PROFILE PROG...  compile, then load as a clone's init will (no_new_privs, the
 *                                filter, the spawner's i386 socket filter) and exec PROG
 *   runner filters PID OUT       write every seccomp filter of process PID to OUT.0, OUT.1, ...
 *                                (0 = newest; PTRACE_SECCOMP_GET_FILTER); prints "count=N" */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "seccompile.h"
#include "sockfilter.h"

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *text = calloc(1, 1 << 20);
    size_t n;

    if (f == NULL || text == NULL)
        return NULL;
    n = fread(text, 1, (1 << 20) - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "w");

    if (f == NULL || fwrite(data, 1, len, f) != len)
        return -1;
    return fclose(f);
}

static int count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    int n = 0;

    if (dir == NULL)
        return -1;
    while (readdir(dir) != NULL)
        n++;
    closedir(dir);
    return n;
}

static int dump_filters(pid_t pid, const char *prefix)
{
    struct sock_filter buf[BPF_MAXINSNS];
    char path[4096];
    int status, count = 0;

    if (ptrace(PTRACE_SEIZE, pid, 0, 0) < 0 || ptrace(PTRACE_INTERRUPT, pid, 0, 0) < 0 ||
        waitpid(pid, &status, __WALL) < 0) {
        perror("attach");
        return 1;
    }
    for (;;) {
        long n = ptrace(PTRACE_SECCOMP_GET_FILTER, pid, (void *)(long)count, buf);

        if (n < 0)
            break;
        snprintf(path, sizeof(path), "%s.%d", prefix, count);
        if (write_file(path, buf, (size_t)n * sizeof(buf[0])) < 0) {
            perror(path);
            return 1;
        }
        count++;
    }
    if (errno != ENOENT) {
        perror("PTRACE_SECCOMP_GET_FILTER");
        return 1;
    }
    ptrace(PTRACE_DETACH, pid, 0, 0);
    printf("count=%d\n", count);
    return 0;
}

int main(int argc, char **argv)
{
    struct sock_fprog prog;
    struct timespec t0, t1;
    char *text;
    int ret, fds;

    if (argc >= 4 && strcmp(argv[1], "filters") == 0)
        return dump_filters(atoi(argv[2]), argv[3]);
    if (argc < 4 || (text = slurp(argv[2])) == NULL) {
        fprintf(stderr, "usage: runner compile PROFILE OUT | exec PROFILE PROG...\n");
        return 2;
    }
    fds = count_fds();
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ret = lxcbind_seccomp_compile(text, &prog);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fds = fds == count_fds();
    if (ret < 0) {
        printf("error=%d fds=%s\n", ret, fds ? "same" : "leaked");
        return 3;
    }
    if (strcmp(argv[1], "compile") == 0) {
        if (write_file(argv[3], prog.filter, prog.len * sizeof(prog.filter[0])) < 0)
            return 1;
        printf("len=%u fds=%s usec=%ld\n", prog.len, fds ? "same" : "leaked",
               (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000);
        lxcbind_seccomp_free(&prog);
        return 0;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0 ||
        lxcbind_filter_i386_sockets() < 0) {
        perror("load");
        return 1;
    }
    lxcbind_seccomp_free(&prog);
    execv(argv[3], argv + 3);
    perror("execv");
    return 127;
}
