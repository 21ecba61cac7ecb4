/* cdef of the one libc call Python needs beside liblxc: freeing what liblxc malloc()s for us
 * (list_all_containers' names, config_file_name).  The C helpers include the system headers
 * themselves, and the pty code uses Python's fcntl/os. */

void free(void *ptr);
