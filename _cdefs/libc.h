/* cdef of the one libc call Python needs beside liblxc: freeing what liblxc malloc()s for us
 * (list_all_containers' names, config_file_name).  The C helpers include the system headers
 * themselves, and the pty code uses Python's fcntl/os. */

void free(void *ptr);

/* Punching the holes a container's disk image gained back out, so that the image can be
 * reused (lxcbind/sandbox/disk.py); Python's os module has no fallocate with modes. */
typedef int... off_t;
int fallocate(int fd, int mode, off_t offset, off_t len);
