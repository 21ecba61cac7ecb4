"""`lxcbind run --json` for tools: a schema version in every object, a default output cap with
a visible marker and per-stream counts, `--max-output`, and `--base64` for binary output."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import new_name, requires_lxc, requires_root

pytestmark = [requires_root, requires_lxc]

ROOT = Path(__file__).resolve().parents[3]


def run_json(command: str, *args: str) -> tuple[int, dict]:
    doc = {"version": "0.8.0", "containerId": new_name("i12-"),
           "process": {"commandLine": command}}
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--json", *args, "-"],
                       input=json.dumps(doc).encode(), capture_output=True, timeout=120, cwd=ROOT)
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, r.stdout[:500]
    return r.returncode, json.loads(lines[0])


def test_every_json_object_has_the_schema_version():
    code, out = run_json("echo hi")
    assert code == 0 and out["version"] == 1 and out["stdout"] == "hi\n"
    assert out["encoding"] == "utf-8" and out["truncated"] is False
    assert (out["stdout_truncated"], out["stderr_truncated"]) == (False, False)
    code, out = run_json("true", "--bogus")
    assert code == 2 and out["version"] == 1 and out["error"]["code"] == "usage"
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--json", "-"],
                       input=b'{"process": {"commandLine": "true", "env": ["X"]}}',
                       capture_output=True, timeout=60, cwd=ROOT)
    out = json.loads(r.stdout)
    assert r.returncode == 2 and out["version"] == 1 and out["error"]["path"] == "process.env[0]"
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--json", "--dry-run",
                        "examples/hello.json"], capture_output=True, timeout=60, cwd=ROOT)
    assert json.loads(r.stdout)["version"] == 1


def test_max_output_cuts_each_stream_with_a_marker():
    code, out = run_json("printf HEAD; head -c 100000 /dev/zero | tr '\\0' x; printf TAIL; "
                         "printf E >&2; exit 3", "--max-output", "8")
    assert code == 3
    assert out["stdout"] == "HEAD\n[... lxcbind: 100000 bytes omitted ...]\nTAIL"
    assert out["stdout_truncated"] is True and out["stdout_omitted"] == 100000
    assert out["stderr"] == "E" and out["stderr_truncated"] is False
    assert out["stderr_omitted"] == 0 and out["truncated"] is True


def _peak(cap_args: list[str]) -> tuple[int, int, int]:
    """Run 160 MiB of output through `run --json` in a fresh wrapper process: (bytes omitted,
    characters of stdout kept, the CLI's peak RSS in KiB)."""
    probe = ("import json, resource, subprocess, sys\n"
             "doc = {'version': '0.8.0', 'containerId': sys.argv[1], 'process': "
             "{'commandLine': \"head -c 167772160 /dev/zero | tr '\\\\0' x\"}}\n"
             "r = subprocess.run([sys.executable, '-m', 'lxcbind', 'run', '--json', "
             "*sys.argv[2:], '-'], input=json.dumps(doc).encode(), capture_output=True)\n"
             "out = json.loads(r.stdout)\n"
             "print(json.dumps([out['stdout_omitted'], len(out['stdout']), "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n")
    r = subprocess.run([sys.executable, "-c", probe, new_name("i12-"), *cap_args],
                       capture_output=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return tuple(json.loads(r.stdout))


def test_default_cap_bounds_the_runners_memory():
    # Kept to 16 MiB per stream while reading, so the CLI's peak memory stays far below the
    # output's size; with the cap lifted (--max-output 0) it holds all of it.
    omitted, kept, capped_kib = _peak([])
    assert omitted == (160 << 20) - (16 << 20)
    assert kept == (16 << 20) + len(f"\n[... lxcbind: {omitted} bytes omitted ...]\n")
    omitted, kept, uncapped_kib = _peak(["--max-output", "0"])
    assert (omitted, kept) == (0, 160 << 20)
    assert capped_kib < 160 * 1024 < uncapped_kib, (capped_kib, uncapped_kib)


def test_base64_carries_binary_output_exactly():
    code, out = run_json("printf '\\000\\377\\376binary\\n'; printf '\\200' >&2", "--base64")
    assert code == 0 and out["encoding"] == "base64"
    assert base64.b64decode(out["stdout"]) == b"\x00\xff\xfebinary\n"
    assert base64.b64decode(out["stderr"]) == b"\x80"
    code, out = run_json("printf '\\377'")           # without --base64: U+FFFD, as documented
    assert out["stdout"] == "\ufffd"


def test_json_only_options_need_json():
    r = subprocess.run([sys.executable, "-m", "lxcbind", "run", "--base64", "examples/hello.json"],
                       capture_output=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and b"apply to --json" in r.stderr and r.stdout == b""
