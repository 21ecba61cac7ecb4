"""How the kernel keeps a limit written to a cgroup file (``cgroups.stored_limit``), against
which ``verify_limits`` compares the read-back: the rules of mm/page_counter.c (memory limits
are whole pages, clamped at LONG_MAX / PAGE_SIZE pages; v2 shows that maximum as ``max``) and
of pids.max / cpu.max / the v1 CFS files (kept as written)."""

from __future__ import annotations

import os

import pytest

from lxcbind.lxc import cgroups
from lxcbind.policy.model import Limits
from lxcbind.sandbox import security

PAGE = 4096
MEMORY_FILES = ("memory.max", "memory.swap.max", "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes")


@pytest.mark.parametrize("name", MEMORY_FILES)
@pytest.mark.parametrize(("written", "shown"), [
    ("3105462272", "3105460224"),     # half of a 6 GiB guest's RAM: 758169.5 pages
    ("100000001", "99999744"),
    ("4294967296", "4294967296"),     # already whole pages
    ("4095", "0"),                    # less than a page: a limit of zero pages
    ("0", "0"),
])
def test_memory_limits_round_down_to_whole_pages(name: str, written: str, shown: str) -> None:
    assert cgroups.stored_limit(name, written, PAGE) == shown


def test_the_page_size_is_the_kernels() -> None:
    big = 16384   # arm64 and others run 16 KiB or 64 KiB pages
    assert cgroups.stored_limit("memory.max", "100000001", big) == str(100000001 // big * big)
    here = os.sysconf("SC_PAGE_SIZE")
    assert cgroups.stored_limit("memory.max", "100000001") == str(100000001 // here * here)


def test_the_page_counter_maximum_is_max_on_v2_and_a_number_on_v1() -> None:
    top = str((2**63 - 1) // PAGE * PAGE)    # 9223372036854771712, what v1 shows unlimited
    assert cgroups.stored_limit("memory.max", "max", PAGE) == "max"
    assert cgroups.stored_limit("memory.max", str(2**64), PAGE) == "max"   # clamped
    assert cgroups.stored_limit("memory.limit_in_bytes", "-1", PAGE) == top
    assert cgroups.stored_limit("memory.limit_in_bytes", str(2**64), PAGE) == top
    assert cgroups.unlimited("memory.limit_in_bytes", top, PAGE)
    assert not cgroups.unlimited("memory.limit_in_bytes", str(int(top) - PAGE), PAGE)
    assert cgroups.unlimited("memory.max", "max") and not cgroups.unlimited("memory.max", "0")


@pytest.mark.parametrize(("name", "written"), [
    ("pids.max", "1024"), ("pids.max", "max"), ("cpu.max", "150000 100000"),
    ("cpu.cfs_quota_us", "150000"), ("cpu.cfs_period_us", "100000"),
])
def test_pids_and_cpu_limits_are_kept_as_written(name: str, written: str) -> None:
    assert cgroups.stored_limit(name, written, PAGE) == written


def test_cpu_unlimited_reads_max_on_v2_and_minus_one_on_v1() -> None:
    assert cgroups.unlimited("cpu.max", "max 100000")
    assert not cgroups.unlimited("cpu.max", "150000 100000")
    assert cgroups.unlimited("cpu.cfs_quota_us", "-1")
    assert not cgroups.unlimited("cpu.cfs_quota_us", "100000")
    assert cgroups.unlimited("pids.max", "max") and not cgroups.unlimited("pids.max", "1024")


def test_the_default_memory_limit_is_whole_pages() -> None:
    """The default (half the host's memory, at most 4 GiB) is what the kernel keeps as is:
    half of an odd number of pages would otherwise be rounded, on every small host."""
    memory = security.resolve(Limits()).memory
    assert memory is not None and memory % os.sysconf("SC_PAGE_SIZE") == 0
    assert cgroups.stored_limit("memory.max", str(memory)) == str(memory)
