"""A root workload under the default policy tries every escape in ``notes/isolation.md`` §1.

Each test runs the attack *as the workload* (container root, real syscalls through busybox
tools or python3's ctypes on the host rootfs) and asserts both that it was refused and that
the host is unchanged.  Attack scripts print ``NAME=<errno or OK>`` lines that the tests parse.
"""

from __future__ import annotations

import os
import textwrap
import uuid

import pytest

import lxcbind
from tests.conftest import IS_ROOT, NATIVE_ERROR

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

# ctypes helpers the attack scripts share: raw syscalls, reported as NAME=OK or NAME=<errno>.
PRELUDE = textwrap.dedent("""
    import ctypes, ctypes.util, errno, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def report(name, rc):
        print(f"{name}=" + ("OK" if rc >= 0 else errno.errorcode[ctypes.get_errno()]), flush=True)
    def sc(name, nr, *args):
        report(name, libc.syscall(nr, *[ctypes.c_long(a) if isinstance(a, int) else a
                                        for a in args]))
""")


def attack_run(script: str, **policy_extra: object) -> tuple[dict[str, str], lxcbind.CompletedRun]:
    """Run a python3 attack script as the workload: its NAME=RESULT lines, and the result."""
    code = PRELUDE + textwrap.dedent(script)
    policy = {"version": "0.8.0", "process": {"commandLine": f"python3 - <<'EOF'\n{code}\nEOF"}}
    policy.update(policy_extra)  # type: ignore[arg-type]
    result = lxcbind.run(policy, timeout=60)
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, (out, result.stderr.decode(errors="replace"))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line), result


def attack(script: str, **policy_extra: object) -> dict[str, str]:
    return attack_run(script, **policy_extra)[0]


def shell(command: str, **policy_extra: object) -> lxcbind.CompletedRun:
    policy = {"version": "0.8.0", "process": {"commandLine": command}}
    policy.update(policy_extra)  # type: ignore[arg-type]
    return lxcbind.run(policy, timeout=60)


def test_workload_root_is_not_host_root() -> None:
    r = shell("cat /proc/self/uid_map /proc/self/gid_map; id -u")
    lines = r.stdout.decode().split()
    assert lines[0:3] != ["0", "0", "4294967295"]
    assert lines[0] == "0" and int(lines[1]) >= 1 << 30 and lines[2] == "65536"
    assert lines[-1] == "0"  # root inside, an unprivileged id outside


def test_no_sys_admin_no_ptrace_no_new_privs_seccomp() -> None:
    r = shell("grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
    status = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    for field in ("CapEff", "CapBnd"):
        caps = int(status[field], 16)
        assert not caps & (1 << 21), "CAP_SYS_ADMIN kept"
        assert not caps & (1 << 19), "CAP_SYS_PTRACE kept"
        assert not caps & (1 << 31), "CAP_SETFCAP kept"
        assert caps & (1 << 0) and caps & (1 << 1)  # chown, dac_override: ordinary root work
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


def test_remount_usr_rw_and_write_refused(tmp_path) -> None:
    marker = f"lxcbind-escape-{uuid.uuid4().hex[:8]}"
    r = shell(f"mount -o remount,bind,rw /usr; echo rc=$?; touch /usr/{marker}; echo t=$?")
    out = r.stdout.decode()
    assert "rc=0" not in out and "t=0" not in out
    assert not os.path.exists(f"/usr/{marker}")


def test_mount_family_refused() -> None:
    res = attack("""
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        os.makedirs("/tmp/p", exist_ok=True)
        report("MOUNT_PROC", libc.mount(b"proc", b"/tmp/p", b"proc", 0, None))
        report("REMOUNT_SYS_RW", libc.mount(None, b"/sys", None, 32 | 4096 | 0x20, None))
        report("UMOUNT_PROC", libc.umount2(b"/proc", 2))
        sc("FSOPEN", 430, b"proc", 0)
        sc("OPEN_TREE", 428, -100, b"/usr", 1)
    """)
    assert res == {"MOUNT_PROC": "EPERM", "REMOUNT_SYS_RW": "EPERM", "UMOUNT_PROC": "EPERM",
                   "FSOPEN": "EPERM", "OPEN_TREE": "EPERM"}
    with open("/proc/sys/kernel/core_pattern") as f:
        assert "lxcbind" not in f.read()


def test_core_pattern_and_sysfs_not_writable() -> None:
    before = open("/proc/sys/kernel/core_pattern").read()
    r = shell("echo '|/tmp/evil' > /proc/sys/kernel/core_pattern; echo a=$?; "
              "echo mem > /sys/power/state; echo b=$?")
    out = r.stdout.decode()
    assert "a=0" not in out and "b=0" not in out
    assert open("/proc/sys/kernel/core_pattern").read() == before


def test_kernel_interfaces_refused() -> None:
    res = attack("""
        sc("KEYCTL", 250, 0, -4)                      # KEYCTL_GET_KEYRING_ID, user keyring
        sc("ADD_KEY", 248, b"user", b"k", b"v", 1, -4)
        attr = (ctypes.c_uint32 * 30)(1, 4, 4, 1)     # BPF_MAP_TYPE_HASH, key 4, value 4
        sc("BPF", 321, 0, attr, 120)
        pattr = (ctypes.c_uint32 * 32)(0, 128, 0)     # PERF_TYPE_HARDWARE, size 128
        sc("PERF_SYSTEM_WIDE", 298, pattr, -1, 0, -1, 0)
        sc("UNSHARE_USER", 272, 0x10000000)
        sc("UNSHARE_NET", 272, 0x40000000)
        sc("CLONE_NEWUSER", 56, 0x10000000 | 17, 0, 0, 0, 0)
        sc("SETNS", 308, os.open("/proc/self/ns/user", os.O_RDONLY), 0)
        handle = (ctypes.c_char * 136)()
        ctypes.memmove(handle, (ctypes.c_uint32 * 2)(8, 1), 8)
        sc("OPEN_BY_HANDLE_AT", 304, os.open("/", os.O_RDONLY), handle, 0)
        sc("USERFAULTFD", 323, 0)
        sc("KEXEC_LOAD", 246, 0, 0, 0, 0)
        sc("INIT_MODULE", 175, 0, 0, b"")
        sc("IO_URING_SETUP", 425, 1, (ctypes.c_char * 120)())
        report("MKNOD_BLOCK", libc.mknod(b"/tmp/sda", 0o60600, os.makedev(8, 0)))
        report("KILL_HOST_INIT_PID", libc.kill(999999, 0))
    """)
    refused = ("EPERM", "EACCES", "ENOSYS")
    for name, outcome in res.items():
        if name == "KILL_HOST_INIT_PID":
            assert outcome == "ESRCH"
        else:
            assert outcome in refused, (name, outcome)
    assert len(res) == 15


def test_cgroup_limits_cannot_be_lifted() -> None:
    policy = {"version": "0.8.0", "process": {"commandLine": "true"},
              "lxc": {"limits": {"pids": 77, "memory": "300M"}}}
    with lxcbind.Sandbox(policy) as box:
        r = box.container.run(["/bin/sh", "-c",
                               "for f in /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max "
                               "/sys/fs/cgroup/memory/memory.limit_in_bytes; do "
                               "[ -e $f ] && { echo max > $f && echo LIFTED $f; }; done; true"])
        assert b"LIFTED" not in r.stdout
        from lxcbind.lxc import cgroups
        pid = box.container.init_pid
        assert pid
        pids_dir = cgroups.process_dir(pid, "pids")
        assert pids_dir and open(os.path.join(pids_dir, "pids.max")).read().strip() == "77"


def test_denied_mask_cannot_be_unmounted(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET\n")
    r = shell(f"umount {secret}; umount -l {secret}; cat {secret}; echo done",
              filesystem={"deniedPaths": [str(secret)], "readonlyPaths": [str(tmp_path)]})
    assert b"TOPSECRET" not in r.stdout
    assert b"done" in r.stdout
    assert secret.read_text() == "TOPSECRET\n"


def test_mask_under_read_write_bind_holds(tmp_path) -> None:
    """liblxc mounts idmapped entries after plain ones: a mask must not end up underneath."""
    work = tmp_path / "work"
    (work / "private").mkdir(parents=True)
    (work / "private" / "key").write_text("TOPSECRET\n")
    (work / "token").write_text("TOKEN\n")
    r = shell(f"cat {work}/private/key {work}/token; ls {work}/private; echo done",
              filesystem={"readwritePaths": [str(work)],
                          "deniedPaths": [str(work / "private"), str(work / "token")]})
    assert b"TOPSECRET" not in r.stdout and b"TOKEN" not in r.stdout
    assert b"done" in r.stdout


def test_rw_bind_files_land_owned_by_directory_owner(tmp_path) -> None:
    work = tmp_path / "user-dir"
    work.mkdir()
    os.chown(work, 1000, 1000)
    r = shell(f"echo hi > {work}/out && mkdir {work}/sub && ls -ln {work}",
              filesystem={"readwritePaths": [str(work)]})
    assert r.returncode == 0, r.stderr
    for name in ("out", "sub"):
        st = os.stat(work / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert (work / "out").read_text() == "hi\n"


def test_rw_bind_of_root_dir_cannot_make_setuid_or_fcaps(tmp_path) -> None:
    work = tmp_path / "root-dir"
    work.mkdir()
    res = attack(f"""
        import shutil
        path = "{work}/sh"
        shutil.copy("/bin/sh", path)
        report("CHMOD_SUID", libc.chmod(path.encode(), 0o4755))
        report("CHMOD_SGID", libc.chmod(path.encode(), 0o2755))
        report("CREAT_SUID", libc.open(b"{work}/x", os.O_CREAT | os.O_WRONLY, 0o4755))
        cap = (ctypes.c_uint32 * 5)(0x02000001, 1 << 21, 0, 0, 0)  # v2: cap_sys_admin=ep
        report("SETCAP", libc.setxattr(path.encode(), b"security.capability", cap, 20, 0))
    """, filesystem={"readwritePaths": [str(work)]})
    assert res["CHMOD_SUID"] == "EPERM" and res["CHMOD_SGID"] == "EPERM"
    assert res["CREAT_SUID"] == "EPERM"
    assert res["SETCAP"] in ("EPERM", "EINVAL")
    for entry in work.iterdir():
        st = entry.lstat()
        assert not st.st_mode & 0o6000, entry
        assert b"security.capability" not in [a.encode() for a in os.listxattr(entry)]


def test_two_sandboxes_never_share_an_id_range() -> None:
    policy = {"version": "0.8.0", "process": {"commandLine": "true"}}
    with lxcbind.Sandbox(policy) as a, lxcbind.Sandbox(policy) as b:
        maps = [box.container.run(["cat", "/proc/self/uid_map"]).stdout.split()[1]
                for box in (a, b)]
        assert maps[0] != maps[1]
        from lxcbind.sandbox import idmap
        held = idmap.held_ranges()
        assert a.name in held and b.name in held
    held = idmap.held_ranges()
    assert a.name not in held and b.name not in held


def test_oom_kill_is_reported() -> None:
    r = shell("exec python3 -c \"b = bytearray(600 << 20); print('survived')\"",
              lxc={"limits": {"memory": "200M"}})
    assert r.oom_killed
    assert r.returncode == -9 and b"survived" not in r.stdout


def test_fork_bomb_hits_the_pids_limit() -> None:
    res, result = attack_run("""
        import signal, time
        children = []
        try:
            for _ in range(500):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children.append(pid)
            print("FORK=unlimited")
        except BlockingIOError:
            print(f"FORK=EAGAIN after {len(children)}")
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    """, lxc={"limits": {"pids": 64}})
    assert res["FORK"].startswith("EAGAIN after")
    assert int(res["FORK"].split()[-1]) < 64
    assert result.pids_limited


def test_cpu_limit_is_set() -> None:
    r = shell("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu.max 2>/dev/null; true",
              lxc={"limits": {"cpu": 0.5}})
    assert r.stdout.split()[0] in (b"50000",) or r.stdout.startswith(b"50000 100000")


def test_privileged_is_explicit_and_warned(tmp_path) -> None:
    import json
    import subprocess
    import sys
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"version": "0.8.0", "lxc": {"privileged": True},
                                  "process": {"commandLine": "head -1 /proc/self/uid_map"}}))
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", str(policy)], capture_output=True,
                       timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode == 0
    assert r.stdout.split() == [b"0", b"0", b"4294967295"]
    assert r.stderr.count(b"not a sandbox") == 1


def test_nothing_left_behind_after_runs() -> None:
    from lxcbind.sandbox import idmap
    names = set()
    for _ in range(2):
        with lxcbind.Sandbox({"version": "0.8.0", "process": {"commandLine": "true"}}) as box:
            names.add(box.name)
    assert not names & set(idmap.held_ranges())
    with open("/proc/self/mountinfo") as f:
        assert "userns-" not in f.read()
