"""A Pool's replacement containers are set up without the cgroup-migration primer (issue #23:
its repeated no-op migrations cost 0.5-1 ms of CPU per container, and a replacement is on no
caller's path), while a one-shot run, whose latency it is for, still primes."""

from __future__ import annotations

import threading

import pytest

import lxcbind
from tests.conftest import IS_ROOT, NATIVE_ERROR
from tests.integration.sandbox.conftest import wait_full

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}")]

POLICY = {"version": "0.8.0", "process": {"commandLine": "true"}}


@pytest.fixture
def kicks(monkeypatch):
    """The names of the threads that kicked the primer (it still primes when kicked)."""
    from lxcbind.lxc import cgroups

    seen: list[str] = []
    real = cgroups._primer.kick

    def kick() -> None:
        seen.append(threading.current_thread().name)
        real()
    monkeypatch.setattr(cgroups._primer, "kick", kick)
    return seen


def test_a_pools_starts_do_not_prime_a_one_shot_run_does(kicks):
    from lxcbind.sandbox import core

    opened: list[str] = []
    real_open = core.Sandbox.open

    def counting_open(self: core.Sandbox) -> None:
        opened.append(threading.current_thread().name)
        real_open(self)

    core.Sandbox.open = counting_open   # type: ignore[method-assign]
    try:
        with lxcbind.Pool(POLICY, size=2) as pool:
            for _ in range(3):
                assert pool.run(["/bin/true"]).returncode == 0
            wait_full(pool)
        assert len(opened) >= 5   # 2 at first, then a replacement per run: all set up ...
        assert all(name.startswith("lxcbind-pool-start") for name in opened)
        assert kicks == []        # ... and none primed
        assert lxcbind.run(POLICY).returncode == 0
    finally:
        core.Sandbox.open = real_open   # type: ignore[method-assign]
    assert kicks == [threading.current_thread().name]   # the one-shot run primed, here


def test_unprimed_is_this_threads_only_and_nests(kicks):
    from lxcbind.lxc import cgroups

    with cgroups.unprimed():
        with cgroups.unprimed():
            cgroups.prime_migration()
        cgroups.prime_migration()   # still inside the outer block
        worker = threading.Thread(target=cgroups.prime_migration, name="another-thread")
        worker.start()
        worker.join()
    assert kicks == ["another-thread"]
    cgroups.prime_migration()
    assert kicks == ["another-thread", threading.current_thread().name]
