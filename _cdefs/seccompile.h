/* The container's seccomp profile, compiled once into the BPF program liblxc would load for it.
 *
 * A template's cloner (cloner.c) starts many light containers and must give each exactly the
 * filter a full container gets.  A full container's filter is what liblxc 5.0.2 builds from
 * the profile text security.seccomp_profile() writes (lxc.seccomp.profile): parsed by
 * liblxc's seccomp.c, built with libseccomp, loaded with seccomp_load().  Parsing and
 * building cost milliseconds (libseccomp's rule database and BPF generation), loading costs
 * microseconds: so the template compiles the text once, here, and every clone loads the same
 * program with prctl().  tests/integration/lxc/test_seccompile.py compares the program with
 * the one liblxc loaded into a real container, instruction by instruction.
 *
 * Same semantics as liblxc 5.0.2 for that text, by making the same libseccomp calls in the
 * same order (the BPF is then the same):
 *  - format "2" / "denylist" or "allowlist" [default action] / rule lines; a denylist's
 *    default is allow and its rules' default action kill, an allowlist's the reverse;
 *  - one context per ABI the host runs: native, plus i386 and x32 on x86_64 (arm on aarch64),
 *    each with no_new_privs left to the caller (SCMP_FLTATR_CTL_NNP 0) and libseccomp's
 *    other attributes at their defaults, merged into the native one; a call from any other
 *    ABI is killed (libseccomp's default bad-arch action);
 *  - a rule line "name [action] [index,value,op(,mask)]...": resolved by name on the native
 *    ABI, then on each compat ABI; a name libseccomp does not know at all is skipped on every
 *    ABI (silently, as liblxc does); a name that exists only on a compat ABI (vm86, stime)
 *    or not on one (socket on i386, where libseccomp has only the socketcall pseudo call)
 *    gets its rule where it exists only.  That last case is why the spawner stacks an i386
 *    socket filter of its own (sockfilter.h): argument rules on socket never reach int 0x80;
 *  - "reject_force_umount": umount2 with MNT_FORCE answers EACCES, on every ABI;
 *  - sections "[all]", "[x86]", "[x32]", "[x86_64]" (lower or upper case) all mean every ABI
 *    on x86_64 (liblxc adds the rules to every context whatever the section); a section of
 *    another architecture skips its rules; an unknown section is an error.
 * Stricter than liblxc, where liblxc would quietly accept what is certainly a mistake: an
 * unknown action word, an errno outside 0..4095, an argument group that does not parse,
 * trailing text, a control character, a rule line starting with a blank (liblxc would read an
 * empty name and drop the rule) are -EINVAL; version 1 profiles and the "notify" action (it
 * needs a supervisor) are -EOPNOTSUPP.
 *
 * Header-only (static functions) for inclusion in cloner.c; link with -lseccomp.  Never exits
 * or prints.  Not thread-safe only in that libseccomp's first call probes the kernel. */
#ifndef LXCBIND_SECCOMPILE_H
#define LXCBIND_SECCOMPILE_H

#include <errno.h>
#include <seccomp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/filter.h>

#define LXCBIND_SCMP_MAX_COMPAT 2
#define LXCBIND_SCMP_MAX_ARGS 6
#define LXCBIND_SCMP_MAX_ERRNO 4095

struct lxcbind_scmp_rule {
    const char *name;
    uint32_t action;
    unsigned int nargs;
    struct scmp_arg_cmp args[LXCBIND_SCMP_MAX_ARGS];
};

/* The ABIs liblxc fills for [all] on this host, after the native one. */
static unsigned int lxcbind_scmp_compat(uint32_t compat[LXCBIND_SCMP_MAX_COMPAT])
{
#if defined(__x86_64__)
    compat[0] = SCMP_ARCH_X86;
    compat[1] = SCMP_ARCH_X32;
    return 2;
#elif defined(__aarch64__)
    compat[0] = SCMP_ARCH_ARM;
    return 1;
#else
    (void)compat;
    return 0;
#endif
}

/* A section line: 1 = its rules apply here, 0 = another architecture's (skipped), -EINVAL =
 * unknown.  liblxc accepts each name in lower or upper case only, and on x86_64 adds the rules
 * of [x86], [x32] and [x86_64] to every ABI, like those of [all] (arm and arm64 on aarch64). */
static int lxcbind_scmp_section(const char *line)
{
#if defined(__x86_64__)
#define LXCBIND_SCMP_X86 1
#else
#define LXCBIND_SCMP_X86 0
#endif
    static const struct { const char *lower, *upper; int here; } sections[] = {
        {"[all]", "[ALL]", 1},
        {"[x86]", "[X86]", LXCBIND_SCMP_X86}, {"[x32]", "[X32]", LXCBIND_SCMP_X86},
        {"[x86_64]", "[X86_64]", LXCBIND_SCMP_X86},
        {"[arm]", "[ARM]", !LXCBIND_SCMP_X86}, {"[arm64]", "[ARM64]", !LXCBIND_SCMP_X86},
        {"[ppc64le]", "[PPC64LE]", 0}, {"[ppc64]", "[PPC64]", 0}, {"[ppc]", "[PPC]", 0},
        {"[mips64]", "[MIPS64]", 0}, {"[mips64n32]", "[MIPS64N32]", 0}, {"[mips]", "[MIPS]", 0},
        {"[mipsel64]", "[MIPSEL64]", 0}, {"[mipsel64n32]", "[MIPSEL64N32]", 0},
        {"[mipsel]", "[MIPSEL]", 0}, {"[s390x]", "[S390X]", 0}, {"[s390]", "[S390]", 0},
    };
#undef LXCBIND_SCMP_X86

    for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
        if (strcmp(line, sections[i].lower) == 0 || strcmp(line, sections[i].upper) == 0)
            return sections[i].here;
    return -EINVAL;
}

/* The next blank-separated word of *cursor (NUL-terminated in place), or NULL at the end of
 * the line or at a comment. */
static char *lxcbind_scmp_word(char **cursor)
{
    char *p = *cursor, *word;

    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '#') {
        *cursor = p;
        return NULL;
    }
    word = p;
    while (*p != '\0' && *p != ' ' && *p != '\t')
        p++;
    if (*p != '\0')
        *p++ = '\0';
    *cursor = p;
    return word;
}

/* An unsigned number, the whole of [s, end) (decimal, 0x hex or 0 octal, like liblxc). */
static int lxcbind_scmp_number(const char *s, const char *end, uint64_t *value)
{
    char buf[32], *stop;
    size_t len = (size_t)(end - s);

    if (len == 0 || len >= sizeof(buf) || s[0] == '-' || s[0] == '+' || s[0] == ' ')
        return -EINVAL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    *value = strtoull(buf, &stop, 0);
    return errno != 0 || *stop != '\0' ? -EINVAL : 0;
}

/* An action word (and its errno): 0, -EINVAL unknown, -EOPNOTSUPP notify. */
static int lxcbind_scmp_action(const char *word, char **cursor, uint32_t *action)
{
    if (strcmp(word, "kill") == 0) {
        *action = SCMP_ACT_KILL;
    } else if (strcmp(word, "allow") == 0) {
        *action = SCMP_ACT_ALLOW;
    } else if (strcmp(word, "trap") == 0) {
        *action = SCMP_ACT_TRAP;
    } else if (strcmp(word, "errno") == 0) {
        const char *number = lxcbind_scmp_word(cursor);
        uint64_t e;

        if (number == NULL || lxcbind_scmp_number(number, number + strlen(number), &e) < 0 ||
            e > LXCBIND_SCMP_MAX_ERRNO)
            return -EINVAL;
        *action = SCMP_ACT_ERRNO((uint32_t)e);
    } else if (strcmp(word, "notify") == 0) {
        return -EOPNOTSUPP;
    } else {
        return -EINVAL;
    }
    return 0;
}

/* One "[index,value,op]" or "[index,value,op,mask]" group, as liblxc builds it: for a masked
 * compare the mask is the first datum and the value the second, other compares ignore it. */
static int lxcbind_scmp_arg(const char *word, struct scmp_arg_cmp *cmp)
{
    static const struct { const char *name, *symbol; enum scmp_compare op; } ops[] = {
        {"SCMP_CMP_NE", "!=", SCMP_CMP_NE}, {"SCMP_CMP_LT", "<", SCMP_CMP_LT},
        {"SCMP_CMP_LE", "<=", SCMP_CMP_LE}, {"SCMP_CMP_EQ", "==", SCMP_CMP_EQ},
        {"SCMP_CMP_GE", ">=", SCMP_CMP_GE}, {"SCMP_CMP_GT", ">", SCMP_CMP_GT},
        {"SCMP_CMP_MASKED_EQ", "&=", SCMP_CMP_MASKED_EQ},
    };
    const char *field[4], *stop[4];
    const char *p = word + 1, *end = word + strlen(word);
    uint64_t index, value, mask = 0;
    unsigned int nfields = 0;
    size_t i;

    if (word[0] != '[' || end == word + 1 || end[-1] != ']')
        return -EINVAL;
    end--;
    while (nfields < 4) {
        const char *comma = memchr(p, ',', (size_t)(end - p));

        field[nfields] = p;
        stop[nfields++] = comma != NULL ? comma : end;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    if (nfields < 3 || stop[nfields - 1] != end ||
        lxcbind_scmp_number(field[0], stop[0], &index) < 0 || index >= LXCBIND_SCMP_MAX_ARGS ||
        lxcbind_scmp_number(field[1], stop[1], &value) < 0 ||
        (nfields == 4 && lxcbind_scmp_number(field[3], stop[3], &mask) < 0))
        return -EINVAL;
    for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        size_t len = (size_t)(stop[2] - field[2]);

        if ((strlen(ops[i].name) == len && strncmp(field[2], ops[i].name, len) == 0) ||
            (strlen(ops[i].symbol) == len && strncmp(field[2], ops[i].symbol, len) == 0))
            break;
    }
    if (i == sizeof(ops) / sizeof(ops[0]))
        return -EINVAL;
    cmp->arg = (unsigned int)index;
    cmp->op = ops[i].op;
    cmp->datum_a = ops[i].op == SCMP_CMP_MASKED_EQ ? mask : value;
    cmp->datum_b = ops[i].op == SCMP_CMP_MASKED_EQ ? value : 0;
    return 0;
}

/* A rule line (modified in place; rule->name points into it). */
static int lxcbind_scmp_parse_rule(char *line, uint32_t default_action,
                                   struct lxcbind_scmp_rule *rule)
{
    char *cursor = line, *word;
    int ret;

    memset(rule, 0, sizeof(*rule));
    if (line[0] == ' ' || line[0] == '\t')
        return -EINVAL;
    rule->name = lxcbind_scmp_word(&cursor);
    rule->action = default_action;
    /* after the name an action; argument groups only after one (liblxc reads "[" where it
     * expects an action as an unknown action) */
    word = lxcbind_scmp_word(&cursor);
    if (word == NULL)
        return 0;
    ret = lxcbind_scmp_action(word, &cursor, &rule->action);
    if (ret < 0)
        return ret;
    for (word = lxcbind_scmp_word(&cursor); word != NULL; word = lxcbind_scmp_word(&cursor)) {
        if (rule->nargs == LXCBIND_SCMP_MAX_ARGS)
            return -EINVAL;
        ret = lxcbind_scmp_arg(word, &rule->args[rule->nargs++]);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* liblxc's do_resolve_add_rule: 1 when the name is unknown everywhere (the caller skips the
 * compat ABIs too), 0 when added or not applicable on this ABI, -errno on failure. */
static int lxcbind_scmp_add(scmp_filter_ctx ctx, uint32_t arch, const struct lxcbind_scmp_rule *rule)
{
    int nr;

    if (arch != SCMP_ARCH_NATIVE && seccomp_arch_exist(ctx, arch) != 0)
        return -EINVAL;
    if (strncmp(rule->name, "reject_force_umount", 19) == 0)
        return seccomp_rule_add_exact(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(umount2), 1,
                                      SCMP_A1(SCMP_CMP_MASKED_EQ, MNT_FORCE, MNT_FORCE));
    nr = seccomp_syscall_resolve_name(rule->name);
    if (nr == __NR_SCMP_ERROR)
        return 1;
    if (nr < 0 && arch == SCMP_ARCH_NATIVE)
        return 0;   /* a pseudo number: the call exists on a compat ABI only */
    if (arch != SCMP_ARCH_NATIVE && seccomp_syscall_resolve_name_arch(arch, rule->name) < 0)
        return 0;
    return seccomp_rule_add_exact_array(ctx, rule->action, nr, rule->nargs, rule->args);
}

/* A context as liblxc makes one: its default action, no_new_privs left to the loader.  (liblxc
 * also means to turn nop-skip on, under "#ifdef SCMP_FLTATR_ATL_TSKIP": no such macro exists,
 * libseccomp's attribute is the enum value SCMP_FLTATR_API_TSKIP, so it never does: neither
 * do we.) */
static scmp_filter_ctx lxcbind_scmp_context(uint32_t default_action)
{
    scmp_filter_ctx ctx = seccomp_init(default_action);

    if (ctx == NULL)
        return NULL;
    if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0) < 0) {
        seccomp_release(ctx);
        return NULL;
    }
    return ctx;
}

/* The BPF of ctx into a malloc'd program. */
static int lxcbind_scmp_export(scmp_filter_ctx ctx, struct sock_fprog *prog)
{
    struct stat st;
    size_t done = 0;
    int fd, ret;

    fd = (int)syscall(SYS_memfd_create, "lxcbind-seccomp", 1U /* MFD_CLOEXEC */);
    if (fd < 0)
        return -errno;
    ret = seccomp_export_bpf(ctx, fd);
    if (ret == 0 && fstat(fd, &st) < 0)
        ret = -errno;
    if (ret == 0 && (st.st_size <= 0 || st.st_size % sizeof(struct sock_filter) != 0))
        ret = -EIO;
    if (ret == 0 && (size_t)st.st_size / sizeof(struct sock_filter) > BPF_MAXINSNS)
        ret = -E2BIG;   /* the kernel would refuse it */
    if (ret == 0) {
        prog->filter = malloc((size_t)st.st_size);
        if (prog->filter == NULL)
            ret = -ENOMEM;
    }
    while (ret == 0 && done < (size_t)st.st_size) {
        ssize_t n = pread(fd, (char *)prog->filter + done, (size_t)st.st_size - done,
                          (off_t)done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            ret = n < 0 ? -errno : -EIO;
        else
            done += (size_t)n;
    }
    close(fd);
    if (ret == 0) {
        prog->len = (unsigned short)(st.st_size / sizeof(struct sock_filter));
    } else {
        free(prog->filter);
        prog->filter = NULL;
    }
    return ret;
}

static void lxcbind_seccomp_free(struct sock_fprog *prog)
{
    free(prog->filter);
    prog->filter = NULL;
    prog->len = 0;
}

/* Compile profile_text into *prog (free it with lxcbind_seccomp_free).  0, or -errno:
 * -EINVAL for text that does not parse, -EOPNOTSUPP for what liblxc would do and this does
 * not (see the top of this file), or libseccomp's error. */
static int lxcbind_seccomp_compile(const char *profile_text, struct sock_fprog *prog)
{
    uint32_t compat[LXCBIND_SCMP_MAX_COMPAT];
    scmp_filter_ctx ctx = NULL, contexts[LXCBIND_SCMP_MAX_COMPAT] = {NULL};
    unsigned int ncompat = lxcbind_scmp_compat(compat), i;
    uint32_t default_policy, default_rule;
    char *text, *line, *next, *cursor, *word;
    struct lxcbind_scmp_rule rule;
    int applies = 1, ret = 0;

    prog->len = 0;
    prog->filter = NULL;
#if !defined(__x86_64__) && !defined(__aarch64__)
    (void)profile_text;
    return -EOPNOTSUPP;   /* liblxc's architecture table is not reproduced here */
#endif
    for (const char *p = profile_text; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 && *p != '\n' && *p != '\t')
            return -EINVAL;
    text = strdup(profile_text);
    if (text == NULL)
        return -ENOMEM;

    /* "2", then the list style with an optional default action */
    line = text;
    next = strchr(line, '\n');
    if (next != NULL)
        *next++ = '\0';
    cursor = line;
    word = lxcbind_scmp_word(&cursor);
    if (word == NULL || lxcbind_scmp_word(&cursor) != NULL || strcmp(word, "2") != 0) {
        ret = word != NULL && strcmp(word, "1") == 0 ? -EOPNOTSUPP : -EINVAL;
        goto out;
    }
    if (next == NULL) {
        ret = -EINVAL;
        goto out;
    }
    line = next;
    next = strchr(line, '\n');
    if (next != NULL)
        *next++ = '\0';
    cursor = line;
    word = lxcbind_scmp_word(&cursor);
    if (word != NULL && (strcmp(word, "denylist") == 0 || strcmp(word, "blacklist") == 0)) {
        default_policy = SCMP_ACT_ALLOW;
        default_rule = SCMP_ACT_KILL;
    } else if (word != NULL && (strcmp(word, "allowlist") == 0 ||
                                strcmp(word, "whitelist") == 0)) {
        default_policy = SCMP_ACT_KILL;
        default_rule = SCMP_ACT_ALLOW;
    } else {
        ret = -EINVAL;
        goto out;
    }
    word = lxcbind_scmp_word(&cursor);
    if (word != NULL) {
        ret = lxcbind_scmp_action(word, &cursor, &default_policy);
        if (ret == 0 && lxcbind_scmp_word(&cursor) != NULL)
            ret = -EINVAL;
        if (ret < 0)
            goto out;
    }

    /* liblxc: the main context starts as kill and is reset to the default policy; each
     * compat ABI gets a context of its own, merged at the end */
    ret = -ENOMEM;
    ctx = lxcbind_scmp_context(SCMP_ACT_KILL);
    if (ctx == NULL)
        goto out;
    for (i = 0; i < ncompat; i++) {
        contexts[i] = lxcbind_scmp_context(default_policy);
        if (contexts[i] == NULL)
            goto out;
        ret = seccomp_arch_add(contexts[i], compat[i]);
        if (ret == 0)
            ret = seccomp_arch_remove(contexts[i], SCMP_ARCH_NATIVE);
        if (ret < 0)
            goto out;
        ret = -ENOMEM;
    }
    if (default_policy != SCMP_ACT_KILL) {
        ret = seccomp_reset(ctx, default_policy);
        if (ret == 0)
            ret = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
        if (ret < 0)
            goto out;
    }

    ret = 0;
    for (line = next; line != NULL && ret == 0; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        if (line[0] == '#' || line[strspn(line, " \t")] == '\0')
            continue;
        if (line[0] == '[') {
            ret = lxcbind_scmp_section(line);
            applies = ret;
            if (ret > 0)
                ret = 0;
            continue;
        }
        if (!applies)
            continue;
        ret = lxcbind_scmp_parse_rule(line, default_rule, &rule);
        if (ret < 0)
            break;
        ret = lxcbind_scmp_add(ctx, SCMP_ARCH_NATIVE, &rule);
        if (ret == 1) {   /* unknown name: liblxc skips it on every ABI */
            ret = 0;
            continue;
        }
        for (i = 0; i < ncompat && ret == 0; i++)
            ret = lxcbind_scmp_add(contexts[i], compat[i], &rule);
    }
    if (ret < 0)
        goto out;

    for (i = 0; i < ncompat; i++) {
        ret = seccomp_merge(ctx, contexts[i]);
        if (ret < 0)
            goto out;
        contexts[i] = NULL;   /* merged: released by libseccomp */
    }
    ret = lxcbind_scmp_export(ctx, prog);

out:
    for (i = 0; i < ncompat; i++)
        if (contexts[i] != NULL)
            seccomp_release(contexts[i]);
    if (ctx != NULL)
        seccomp_release(ctx);
    free(text);
    return ret;
}

#endif
