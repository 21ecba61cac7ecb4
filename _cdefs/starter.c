/* lxcbind-starter NAME LXCPATH LOGFILE: liblxc's daemonized start of one container, in a small
 * process of its own (lxcbind/lxc/container.py, Container.start).
 *
 * Why a program.  liblxc's start() forks its caller twice, and the second fork stays as the
 * container's monitor for the container's whole life.  Called from a Python process, every
 * fork copies the page tables of the whole interpreter, and while the monitor lives each page
 * the caller then writes is copied again (~900 page faults per one-shot run, ~1 ms); liblxc
 * also moves the caller itself into the container's lxc.monitor cgroup, from which it has to
 * move back.  Exec'd by posix_spawn (no page table copied), this program is the caller
 * instead: the monitor is a fork of a 16 kB program, and the cost no longer depends on the
 * size of the Python process.  It starts exactly the container the config file on disk
 * describes; Container.start uses it only when its handle has no unsaved config item.
 *
 * Exit status: 0 started (liblxc saw it RUNNING), 1 liblxc refused (its reason is in LOGFILE,
 * ERROR level, unless the config names another log), 2 usage, 3 no handle for NAME in
 * LXCPATH. */
#include <stdio.h>
#include <string.h>

#include <lxc/lxccontainer.h>

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    struct lxc_container *c = lxc_container_new(argv[1], argv[2]);
    if (!c)
        return 3;
    /* As an in-process start does (Container._ensure_log): liblxc's errors go to LOGFILE,
     * where Python reads the reason of a failure, unless the config names a log of its own. */
    int ok = 1;
    if (c->get_config_item(c, "lxc.log.file", NULL, 0) <= 0)
        ok = c->set_config_item(c, "lxc.log.file", argv[3]) &&
             c->set_config_item(c, "lxc.log.level", "ERROR");
    ok = ok && c->want_daemonize(c, true) && c->start(c, 0, NULL);
    lxc_container_put(c);
    return ok ? 0 : 1;
}
