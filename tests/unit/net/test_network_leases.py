"""Address leases: whose a lease is (the runner identity of ``lxcbind.state``, boot id
included) and how a lease file written by another version is read.  No root, no netlink."""

from __future__ import annotations

import os

from lxcbind import state
from lxcbind.net.leases import Lease


def lease_of(identity: dict[str, object]) -> Lease:
    return Lease("c", "10.213.0.2", "10.213.0.1", 16, "lxcbabcdefghijk",
                 identity["runner_pid"], identity["runner_start"] or 0, "", identity["boot_id"])


def test_a_lease_of_this_runner_is_alive() -> None:
    assert lease_of(state.runner_identity()).runner_alive()


def test_a_lease_from_another_boot_is_dead_even_if_the_pid_matches() -> None:
    # After a reboot the same pid can belong to a process with the same start tick.
    me = state.runner_identity()
    assert me["boot_id"], "no boot id on this kernel"
    assert not lease_of({**me, "boot_id": "00000000-0000-0000-0000-000000000000"}).runner_alive()


def test_a_lease_whose_process_is_gone_or_recycled_is_dead() -> None:
    me = state.runner_identity()
    assert not lease_of({**me, "runner_start": (me["runner_start"] or 0) + 1}).runner_alive()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert not lease_of({**me, "runner_pid": pid}).runner_alive()


def test_lease_file_entries_of_other_versions_are_read() -> None:
    old = {"container": "c", "address": "10.213.0.2", "gateway": "10.213.0.1", "prefix": 16,
           "veth": "lxcbabcdefghijk", "runner_pid": 1, "runner_start": 5, "lxcpath": ""}
    lease = Lease.from_json(old)            # written before the boot id was recorded
    assert lease.boot_id == "" and lease.runner_pid == 1
    assert Lease.from_json({**old, "boot_id": "b", "added_later": 1}).boot_id == "b"
    assert ("lxc.net.0.ipv4.address", "10.213.0.2/32") in lease.config
