"""Which policies a Pool's clones serve (``sandbox.template.refusal``), and the capability
bits a clone keeps: pure logic, no root."""

from __future__ import annotations

import pytest

from lxcbind.policy.parse import load_policy
from lxcbind.sandbox import security
from lxcbind.sandbox.template import caps_mask, refusal

BASE = {"version": "0.8.0", "process": {"commandLine": "true"}}


def test_a_deny_all_policy_is_served() -> None:
    assert refusal(load_policy(BASE)) is None
    assert refusal(load_policy({**BASE, "filesystem": {"readonlyPaths": ["/srv"],
                                                       "deniedPaths": ["/etc/shadow"]},
                                "lxc": {"limits": {"memory": 1 << 28}, "uid": 1000,
                                        "gid": 1000}})) is None


@pytest.mark.parametrize(("extra", "field"), [
    ({"network": {"egress": {"default": "allow"}}}, "network"),
    ({"filesystem": {"readwritePaths": ["/srv"]}}, "filesystem.readwritePaths"),
    ({"lxc": {"allow": ["nesting"]}}, "lxc.allow"),
    ({"lxc": {"allow": ["perf"]}}, "lxc.allow"),
    ({"lxc": {"privileged": True}}, "lxc.privileged"),
    ({"lifecycle": {"destroyOnExit": False}}, "lifecycle.destroyOnExit"),
])
def test_what_clones_cannot_serve_names_its_field(extra: dict[str, object],
                                                  field: str) -> None:
    why = refusal(load_policy({**BASE, **extra}))
    assert why is not None and why[0] == field and why[1]


def test_caps_mask_is_the_container_keep_list() -> None:
    mask = caps_mask()
    assert bin(mask).count("1") == len(security.KEEP_CAPS)
    assert not mask & (1 << 21)      # CAP_SYS_ADMIN
    assert not mask & (1 << 19)      # CAP_SYS_PTRACE
    assert not mask & (1 << 31)      # CAP_SETFCAP: the template keeps it, a clone never
    assert mask & (1 << 0) and mask & (1 << 7)   # chown, setuid


def test_only_the_template_drops_the_profile_and_keeps_setfcap() -> None:
    plain = dict(security.hardening_config())
    template = dict(security.hardening_config(template=True))
    assert "lxc.seccomp.profile" in plain and "lxc.seccomp.profile" not in template
    assert "setfcap" not in plain["lxc.cap.keep"].split()
    assert template["lxc.cap.keep"].split() == [*plain["lxc.cap.keep"].split(), "setfcap"]
    assert template["lxc.no_new_privs"] == "1"
    assert template["lxc.apparmor.profile"] == "unconfined" and "lxc.apparmor.profile" not in plain
