/* execvpe() without glibc's surprises, shared by the attach shim (shim.c, in the cffi module)
 * and the spawner program (spawner.c, a static executable): both include this file. */
#ifndef LXCBIND_EXECVPE_H
#define LXCBIND_EXECVPE_H

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define LXCBIND_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *lxcbind_env_path(char *const *envp)
{
    for (; envp && *envp; envp++)
        if (strncmp(*envp, "PATH=", 5) == 0)
            return *envp + 5;
    return LXCBIND_DEFAULT_PATH;
}

/* execvpe(), but searching the PATH of the *new* environment (glibc searches the caller's)
 * and without glibc's silent /bin/sh retry on ENOEXEC.  Returns the errno that decides the
 * exit status: ENOENT means "not found", anything else "found but not executable". */
static int lxcbind_execvpe(const char *file, char *const argv[], char *const envp[])
{
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    const char *path = lxcbind_env_path(envp);
    size_t flen = strlen(file);
    int saw_eacces = 0;
    char buf[4096];
    for (const char *p = path;; ) {
        const char *end = strchrnul(p, ':');
        size_t dlen = (size_t)(end - p);
        const char *dir = dlen ? p : "."; /* an empty PATH entry means the cwd */
        if (dlen == 0)
            dlen = 1;
        if (dlen + flen + 2 <= sizeof(buf)) {
            memcpy(buf, dir, dlen);
            buf[dlen] = '/';
            memcpy(buf + dlen + 1, file, flen + 1);
            execve(buf, argv, envp);
            switch (errno) {
            case EACCES: saw_eacces = 1; break;
            case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT: break;
            default: return errno;
            }
        }
        if (*end == '\0')
            break;
        p = end + 1;
    }
    return saw_eacces ? EACCES : ENOENT;
}

#endif
