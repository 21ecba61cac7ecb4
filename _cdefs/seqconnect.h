/* The connect of an init (the spawner's --init, the template's cloner) to the host's
 * listener: a SOCK_SEQPACKET unix socket at ``path``, the path the host bound in before start.
 * Returns the connected descriptor (close-on-exec), or -1 (errno set; ENAMETOOLONG when the
 * path does not fit in sun_path). */
#ifndef LXCBIND_SEQCONNECT_H
#define LXCBIND_SEQCONNECT_H

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static inline int lxcbind_seqpacket_connect(const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(addr.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

#endif
