/* Prototypes of lxcbind's own C helpers (shim.c).  Every helper is static and prefixed
 * lxcbind_ so that none can clash with a liblxc symbol (python3-lxc once exported a private
 * copy of a liblxc function and corrupted container personalities when liblxc 6 exported the
 * same name). */

/* Build-time facts, for the import-time version check and feature flags. */
static const char *const LXCBIND_BUILT_LXC_VERSION;
static const int LXCBIND_HAS_DEVPTS_FD;
static const int LXCBIND_HAS_INIT_PIDFD;

/* Exec-failure stages reported through the status pipe (see lxcbind_exec). */
#define LXCBIND_STAGE_REACHED ...
#define LXCBIND_STAGE_CHDIR ...
#define LXCBIND_STAGE_CTTY ...
#define LXCBIND_STAGE_EXEC ...

/* What the C exec function needs; owned by the caller for the duration of attach(). */
struct lxcbind_exec {
    const char *file;        /* argv[0], looked up in envp's PATH unless it holds a '/' */
    char *const *argv;
    char *const *envp;       /* the exact environment of the new program */
    const char *cwd;         /* NULL: stay where liblxc put us */
    int ctty_fd;             /* >= 0: make this tty our controlling terminal */
    int status_fd;           /* write end of a CLOEXEC pipe: "reached" byte, then failures */
    int exe_fd;              /* LXCBIND_EXEC_SPAWNER: sealed memfd of the spawner program */
    ...;
};

#define LXCBIND_EXEC_COMMAND ...
#define LXCBIND_EXEC_SPAWNER ...

void lxcbind_attach_options_init(lxc_attach_options_t *opts);
int lxcbind_attach(struct lxc_container *c, struct lxcbind_exec *payload,
                   lxc_attach_options_t *opts, pid_t *pid, pid_t init_pid, int mode);
int lxcbind_devpts_fd(struct lxc_container *c);

/* Descriptors kept in C memory, so that a Python signal handler that raises can never run
 * between a descriptor's creation (or closing) and the record of it (lxcbind/lxc/attach.py):
 * close every fds[i] >= 0 of fds[0, n) and set it to -1; open a pidfd of pid into *out (-1 on
 * failure; the errno is returned). */
void lxcbind_close_held(int *fds, int n);
int lxcbind_pidfd_open_into(pid_t pid, int *out);
int lxcbind_init_pidfd(struct lxc_container *c);
