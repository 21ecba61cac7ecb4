"""benchmarks/_cpuphases.py's attribution of ``perf script`` samples: whose CPU counts, for
which step, process and mechanism (pure logic on a made-up script; the recording itself
needs perf and root, and is what ``bench_floor.py --cpu`` runs)."""

from __future__ import annotations

from benchmarks import _cpuphases

ME = 1000
MS = _cpuphases.PERIOD_NS / 1e6   # one sample's CPU, in ms


def sample(comm: str, pid: int, t: float, *frames: str) -> str:
    """A sample block as `perf script` prints it: the call chain leaf first."""
    chain = "".join(f"\t    ffffffff81000000 {f}+0x10 ([kernel.kallsyms])\n" for f in frames)
    return f"{comm} {pid}/{pid} {t:.6f}: \n{chain}"


def fork(child: int, father: int, t: float) -> str:
    return (f"python3 {father}/{father} {t:.6f}: "
            f"PERF_RECORD_FORK({child}:{child}):({father}:{father})\n")


def attribute(blocks: list[str]) -> dict[str, object]:
    marks = _cpuphases.Marks()
    marks.timeline = [(0, "after the run (background)"), (2_000_000_000, "start"),
                      (3_000_000_000, "stop")]
    return _cpuphases._attribute("\n".join(blocks), marks, 1_000_000_000, 9_000_000_000,
                                 count=2, me=ME)


def test_samples_count_for_the_run_its_descendants_and_kernel_threads_only() -> None:
    result = attribute([
        fork(1001, ME, 1.5), fork(1002, 1001, 1.6),
        sample("python3", ME, 1.7, "__x64_sys_openat", "do_syscall_64"),
        sample("python3", ME, 2.7, "kernfs_iop_lookup", "__x64_sys_newfstatat", "do_syscall_64"),
        sample("lxcbind-starter", 1002, 2.5, "cgroup_mkdir", "kernfs_iop_mkdir"),
        sample("kworker/0:1", 7, 3.5, "css_killed_work_fn", "process_one_work"),
        sample("kdamond.0", 8, 3.6, "damon_pa_check_accesses", "kdamond_fn"),
        sample("kworker/1:2", 9, 3.7, "virtio_transport_rx_work", "process_one_work"),
        sample("other-job", 4242, 3.8, "__x64_sys_read"),
        sample("python3", ME, 9.5, "__x64_sys_read"),   # after the window: not counted
    ])
    assert result["total"] == 4 * MS / 2
    assert result["foreign"] == MS / 2 and result["machine"] == 2 * MS / 2
    assert result["phase"] == {"after the run (background)": MS / 2, "start": 2 * MS / 2,
                               "stop": MS / 2}
    assert result["process"] == {"python3": 2 * MS / 2, "lxcbind-starter [2]": MS / 2,
                                 "kernel threads": MS / 2}
    assert result["process_mechanism"] == {"python3": {"syscall openat": MS / 2,
                                                       "kernfs (cgroup/sys files)": MS / 2},
                                           "lxcbind-starter [2]": {"cgroup fs": MS / 2},
                                           "kernel threads": {"cgroup fs": MS / 2}}


def test_a_recycled_pid_belongs_to_its_latest_parent() -> None:
    result = attribute([
        fork(1001, 555, 1.1),                       # someone else's process first
        sample("sh", 1001, 1.2, "__x64_sys_read"),
        fork(1001, ME, 2.1),                        # the pid reused by a child of ours
        sample("sh", 1001, 2.2, "__x64_sys_read"),
    ])
    assert result["foreign"] == MS / 2 and result["process"] == {"sh": MS / 2}


def test_the_interpreter_is_named_with_libpython_or_linked_in() -> None:
    def chain(dso: str) -> list[str]:
        return [f"\t    7f0000001000 _PyEval_EvalFrameDefault+0x10 ({dso})"]
    assert _cpuphases._mechanism(chain("/usr/lib/libpython3.11.so.1.0")) == "python (interpreter)"
    assert _cpuphases._mechanism(chain("/usr/bin/python3.11")) == "python (interpreter)"
    assert _cpuphases._mechanism(chain("/usr/bin/perl")) == "user (other)"
