"""Inspect AI's own conformance suite (``inspect_ai.util._sandbox.self_check``) against the
``lxcbind`` provider, run the way Inspect's runner does: every check against one sample's
sandbox, as container root (the default policy), with a non-root default user (config
``user="sandbox"``: every check passes) and with the policy fixing ``lxc.uid`` 1000.

Allowed failures, each for a stated reason and nothing else:
* as root: the two checks Inspect itself lists as known failures for Docker's default root
  sandbox (``*_without_permissions``: root writes a read-only file);
* with ``lxc.uid`` fixed by the policy: ``test_exec_as_user`` (it runs ``adduser`` as root,
  and such a policy refuses every other user, by design).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import lxcbind
from tests.conftest import requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

try:
    from inspect_ai.util._sandbox import self_check

    from lxcbind.inspect import LxcbindSandboxConfig, LxcbindSandboxEnvironment
except ImportError as exc:  # pragma: no cover - the extra is installed by .ci/run
    pytest.skip(f"inspect-ai is not importable ({exc}); install the extra: "
                "pip install -e '.[inspect]'", allow_module_level=True)

ROOT_KNOWN = {"test_write_text_file_without_permissions",
              "test_write_binary_file_without_permissions"}
FIXED_UID = {"test_exec_as_user"}


async def _self_check(config: Any) -> tuple[dict[str, str], str]:
    """Every check's failure (name → why), from one sample's sandbox, and its container."""
    await LxcbindSandboxEnvironment.task_init("selfcheck", config)
    envs = await LxcbindSandboxEnvironment.sample_init("selfcheck", config, {})
    failures: dict[str, str] = {}
    env = envs["default"]
    assert isinstance(env, LxcbindSandboxEnvironment) and env.session.session is not None
    name = env.session.session.container.name
    assert name in lxcbind.list_containers()
    try:
        for name in self_check.__all__:
            try:
                await getattr(self_check, name)(env)
            except BaseException as exc:  # noqa: BLE001 - each check's outcome is reported
                if not isinstance(exc, Exception):
                    raise
                failures[name] = f"{type(exc).__name__}: {exc}"
    finally:
        await LxcbindSandboxEnvironment.sample_cleanup("selfcheck", config, envs, False)
        await LxcbindSandboxEnvironment.task_cleanup("selfcheck", config, True)
    return failures, name


def test_self_check_as_container_root() -> None:
    failures, name = asyncio.run(_self_check(None))
    assert len(self_check.__all__) >= 40
    assert set(failures) <= ROOT_KNOWN, failures
    assert name not in lxcbind.list_containers()   # the sample's container went with it


def test_self_check_with_a_non_root_default_user_passes_every_check() -> None:
    # Docker's non-root setup: commands run as uid 1000, root is there for exec(user="root")
    failures, name = asyncio.run(_self_check(LxcbindSandboxConfig(user="sandbox")))
    assert failures == {}
    assert name not in lxcbind.list_containers()


def test_self_check_as_a_non_root_user() -> None:
    config = LxcbindSandboxConfig(policy={"version": "0.8.0",
                                          "lxc": {"uid": 1000, "gid": 1000}})
    failures, name = asyncio.run(_self_check(config))
    assert set(failures) <= FIXED_UID, failures
    assert name not in lxcbind.list_containers()


EVAL = '''
import json, sys
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.solver import solver
from inspect_ai.util import sandbox

@solver
def probe():
    async def solve(state, generate):
        box = sandbox()
        await box.write_file("notes/in.txt", state.input_text)
        r = await box.exec(["sh", "-c", "cat notes/in.txt; echo; pwd; hostname"])
        state.metadata["out"] = r.stdout
        from lxcbind.inspect import LxcbindSandboxEnvironment   # only now: Inspect found it
        ours = box.as_type(LxcbindSandboxEnvironment)
        state.metadata["name"] = ours.session.session.container.name
        return state
    return solve

task = Task(dataset=[Sample(input="one"), Sample(input="two")], solver=probe(),
            sandbox="lxcbind")
log, = eval(task, model="mockllm/model", log_dir=sys.argv[1], display="none")
print(json.dumps({"status": log.status,
                  "out": sorted(s.metadata["out"] for s in log.samples),
                  "names": [s.metadata["name"] for s in log.samples]}))
'''


def test_an_eval_finds_sandbox_lxcbind_without_importing_it(tmp_path) -> None:
    # Inspect finds the provider through the package's entry point (pip install), not an import
    import json
    import subprocess
    import sys
    from importlib.metadata import entry_points

    assert any(ep.value == "lxcbind.inspect" for ep in entry_points(group="inspect_ai")), \
        "lxcbind's inspect_ai entry point is not installed: pip install -e '.[inspect]'"
    script = tmp_path / "eval_it.py"
    script.write_text(EVAL)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "logs")],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "success", result
    one, two = result["out"]
    assert one.startswith("one\n/tmp/inspect\n") and two.startswith("two\n/tmp/inspect\n")
    assert one.split("\n")[2] != two.split("\n")[2]   # two samples, two containers
    assert set(result["names"]) & set(lxcbind.list_containers()) == set()   # all destroyed


@pytest.mark.parametrize("config, match", [
    (LxcbindSandboxConfig(policy={"version": "0.8.0", "containerId": "fixed"}), "containerId"),
    (LxcbindSandboxConfig(policy={"version": "0.8.0", "lifecycle": {"destroyOnExit": False}}),
     "destroyOnExit"),
    (LxcbindSandboxConfig(policy={"version": "0.8.0", "lxc": {"uid": "x"}}), "lxc.uid"),
    (LxcbindSandboxConfig(workdir="relative"), "absolute"),
    (LxcbindSandboxConfig(user="sandbox", policy={"version": "0.8.0", "lxc": {"uid": 1000}}),
     "lxc.uid"),
    ("/no/such/policy.json", "/no/such/policy.json"),
])
def test_a_bad_config_fails_the_task_before_any_sample(config, match) -> None:
    with pytest.raises(ValueError, match=match):
        asyncio.run(LxcbindSandboxEnvironment.task_init("t", config))


def test_connection_is_a_working_lxcbind_attach_command() -> None:
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    async def main() -> tuple[str, str, subprocess.CompletedProcess[str]]:
        envs = await LxcbindSandboxEnvironment.sample_init("conn", None, {})
        try:
            env = envs["default"]
            assert isinstance(env, LxcbindSandboxEnvironment)
            await env.write_file("seen.txt", "from the sample")
            connection = await env.connection()
            with pytest.raises(NotImplementedError):
                await env.connection(user="nobody")
            words = shlex.split(connection.command)
            assert words[:2] == ["lxcbind", "attach"] and connection.type == "lxcbind"
            root = str(Path(__file__).resolve().parents[3])
            done = subprocess.run(
                [sys.executable, "-m", "lxcbind", *words[1:], "--", "cat",
                 "/tmp/inspect/seen.txt"], capture_output=True, text=True, timeout=60,
                stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=root))
            return words[2], str(connection.container), done
        finally:
            await LxcbindSandboxEnvironment.sample_cleanup("conn", None, envs, False)

    name, container, done = asyncio.run(main())
    assert name == container
    assert (done.returncode, done.stdout) == (0, "from the sample"), done.stderr
    assert name not in lxcbind.list_containers()
