/* Syscall numbers by name, one table per x86 ABI (probe_nrs.c, built three times). */
struct probe_nr {
    const char *name;
    long nr;
};

extern const struct probe_nr probe_nrs_x86_64[], probe_nrs_i386[], probe_nrs_x32[];
