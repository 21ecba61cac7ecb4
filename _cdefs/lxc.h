/* cdef shape of <lxc/lxccontainer.h> and <lxc/attach_options.h>, declaring only what
 * lxcbind's Python code uses (tests/unit/lxc/test_cdefs.py checks each name).  Build input only:
 * read by lxcbind/_build.py, never imported at run time.
 *
 * Structs are partial (`...;`): liblxc says "changing the order of struct members is an API
 * change" and has appended members in minor releases, so the C compiler fills in offsets and
 * sizes.  Members that do not exist in every supported release (devpts_fd, init_pidfd,
 * set_timeout) are reached only through the version-guarded helpers in shim.c. */

typedef int... pid_t;
typedef int... uid_t;
typedef int... gid_t;

struct bdev_specs;

typedef enum lxc_attach_env_policy_t {
    LXC_ATTACH_CLEAR_ENV,
    ...
} lxc_attach_env_policy_t;

#define LXC_ATTACH_DEFAULT ...
#define LXC_CREATE_QUIET ...

typedef struct lxc_attach_options_t {
    int attach_flags;
    int namespaces;
    char *initial_cwd;
    uid_t uid;
    gid_t gid;
    lxc_attach_env_policy_t env_policy;
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    ...;
} lxc_attach_options_t;

struct lxc_container {
    char *name;
    char *error_string;
    int error_num;
    char *config_path;

    bool (*is_defined)(struct lxc_container *c);
    const char *(*state)(struct lxc_container *c);
    bool (*is_running)(struct lxc_container *c);
    pid_t (*init_pid)(struct lxc_container *c);
    bool (*load_config)(struct lxc_container *c, const char *alt_file);
    bool (*start)(struct lxc_container *c, int useinit, char * const argv[]);
    bool (*stop)(struct lxc_container *c);
    bool (*want_daemonize)(struct lxc_container *c, bool state);
    char *(*config_file_name)(struct lxc_container *c);
    bool (*wait)(struct lxc_container *c, const char *state, int timeout);
    bool (*set_config_item)(struct lxc_container *c, const char *key, const char *value);
    bool (*destroy)(struct lxc_container *c);
    bool (*save_config)(struct lxc_container *c, const char *alt_file);
    bool (*create)(struct lxc_container *c, const char *t, const char *bdevtype,
                   struct bdev_specs *specs, int flags, char *const argv[]);
    bool (*clear_config_item)(struct lxc_container *c, const char *key);
    int (*get_config_item)(struct lxc_container *c, const char *key, char *retv, int inlen);
    ...;
};

struct lxc_container *lxc_container_new(const char *name, const char *configpath);
int lxc_container_put(struct lxc_container *c);
const char *lxc_get_version(void);
const char *lxc_get_global_config_item(const char *key);
int list_all_containers(const char *lxcpath, char ***names, struct lxc_container ***cret);
