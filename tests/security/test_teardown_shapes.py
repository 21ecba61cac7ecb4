"""Attack: the workload shapes its writable layer so that tearing it down crashes the caller.

Root in the container, default policy, real syscalls: a tree thousands of levels deep (the
``mkdir d && cd d`` loop that overflowed liblxc's recursive removal on the caller's stack:
SIGSEGV in the CLI, ``run()``, a ``Pool``'s reaper, and then in every ``gc``), a wide
directory, 255-byte names nested past PATH_MAX, sockets, FIFOs, a sparse 1 TiB file, mode 000
directories and files.  For each way in (CLI, ``run()``, ``Sandbox``, ``Pool``, ``gc`` after a
SIGKILLed runner) the caller must survive with the workload's exit, nothing may be left
(container, its directory, id range, ownership record) and the next run must work.

Every caller runs in a child process with a private ``LXCBIND_STATE_DIR``: where the defect is
present the child dies, and what it leaves is only visible to this test (its records are not in
the host's state directory, so no other run's garbage collection meets the tree), and the
fixture removes it with GNU ``rm`` (iterative).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxcbind.lxc.container import default_lxcpath
from lxcbind.sandbox import idmap
from tests.conftest import IS_ROOT, NATIVE_ERROR, new_name

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}"),
              # The bounds are the callers' own timeouts below; a slow host (an emulated VM:
              # a 20,000-level tree made and removed) needs more than pytest's default 300 s.
              pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
EXIT = 7   # the workload's own exit status, which every caller must report

# Runs inside the container as its root: argv is depth, width, what to make.  Deep and long
# trees are made in pieces of at most PIECE bytes of path, each piece then moved under the
# next (rename of a short source into a piece's bottom): what a workload confined by AppArmor
# does to get past its path limit (2 x PATH_MAX: every mkdir deeper than that is ENAMETOOLONG),
# so the trees are as deep on every host.
SHAPE = r"""
import os, socket, sys
depth, width, kinds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
PIECE = 3000
os.makedirs("/root/t", exist_ok=True)
os.chdir("/root/t")

def chained(name, levels, size, mk):
    # /root/t/<name>: ``levels`` levels of ``size`` bytes of path made by mk(i) (which makes
    # one in the current directory and enters it), in pieces of at most PIECE bytes.
    top = os.open("/root/t", os.O_RDONLY | os.O_DIRECTORY)
    done = 0
    while done < levels:
        os.chdir("/root/t")
        os.mkdir(".piece")
        os.chdir(".piece")
        made = 0
        while done + made < levels and (made + 1) * size <= PIECE:
            mk(done + made)
            made += 1
        if done:   # what is made so far goes under this piece's bottom
            bottom = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
            os.rename(name, "rest", src_dir_fd=top, dst_dir_fd=bottom)
            os.close(bottom)
        os.chdir("/root/t")
        os.rename(".piece", name, src_dir_fd=top, dst_dir_fd=top)
        done += made
    os.close(top)

def long_level(i):
    os.mkdir("L" * 255)
    os.chdir("L" * 255)
    os.mkfifo("p")

def deep_level(i):
    os.mkdir("d")
    os.chdir("d")
    if i % 500 == 499:
        os.chmod(".", 0)                 # unreadable levels on the way down

if "special" in kinds:
    os.mkfifo("fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind("sock")
    with open("sparse", "wb") as f:
        f.truncate(1 << 40)
    os.mkdir("locked")
    open("locked/f", "w").close()
    os.chmod("locked/f", 0)
    os.chmod("locked", 0)
if width:
    os.mkdir("wide")
    for i in range(width):
        os.close(os.open(f"wide/{i:0200d}", os.O_CREAT | os.O_WRONLY, 0o644))
if "long" in kinds:
    chained("long", 40, 256, long_level)   # 40 x 256 bytes: far past PATH_MAX (4096)
if depth:
    chained("d", depth, 2, deep_level)
print("shaped", flush=True)
sys.exit(EXIT)
""".replace("EXIT", str(EXIT))

ALL = "special,long"


def shape_argv(depth: int, width: int = 0, kinds: str = ALL) -> list[str]:
    return ["/usr/bin/python3", "-c", SHAPE, str(depth), str(width), kinds]


def policy(name: str | None, disk: str = "max") -> dict[str, object]:
    """The writable layer on the host's filesystem (``disk: max``), where removal has to walk
    the workload's tree; a disk-limited layer (the default) goes as one filesystem."""
    doc: dict[str, object] = {"version": "0.8.0", "lxc": {"limits": {"disk": disk}}}
    if name is not None:
        doc["containerId"] = name
    return doc


class Host:
    """A private state directory, and what to check and clean in it."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "LXCBIND_STATE_DIR": str(state)}
        self.names: set[str] = set()

    def records(self) -> list[dict[str, object]]:
        owners = self.state / "owners"
        if not owners.is_dir():
            return []
        return [json.loads(p.read_text()) for p in owners.glob("*.json")]

    def python(self, code: str, *args: str,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], env=self.env, text=True,
                              capture_output=True, timeout=timeout, cwd=ROOT)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lxcbind", *args], env=self.env,
                              text=True, capture_output=True, timeout=timeout, cwd=ROOT,
                              stdin=subprocess.DEVNULL)

    def assert_clean(self, names: set[str], *, only: bool = False) -> None:
        """``names`` are gone with their id ranges and records; no record at all is left
        unless ``only``."""
        lxcpath = default_lxcpath()
        assert names, "the test lost track of its containers"
        for name in names:
            assert not os.path.lexists(os.path.join(lxcpath, name)), f"{name} left behind"
            assert name not in idmap.held_ranges(), f"{name}'s id range left behind"
        left = [rec["container"] for rec in self.records()]
        assert not (set(left) & names if only else left), f"records left behind: {left}"

    def assert_next_run_works(self) -> None:
        name = new_name("next-")
        self.names.add(name)
        path = self.state / "next.json"
        path.write_text(json.dumps(policy(name)))
        r = self.cli("run", str(path), "--no-tty", "--", "echo", "next", timeout=300)
        assert (r.returncode, r.stdout) == (0, "next\n"), r.stderr
        self.assert_clean({name})

    def cleanup(self) -> None:
        """What a crashed caller left: its records' containers (GNU rm is iterative)."""
        from lxcbind import Container

        leftovers = {(str(r["container"]), str(r["lxcpath"])) for r in self.records()}
        leftovers |= {(n, default_lxcpath()) for n in self.names}
        for name, lxcpath in leftovers:
            cdir = os.path.join(lxcpath, name)
            if os.path.isdir(cdir):
                with Container(name, lxcpath) as c:
                    c.stop()
                subprocess.run(["rm", "-rf", "--one-file-system", cdir], check=False)
            idmap.release(name, lxcpath)
        if leftovers:   # the network state of a crashed --net run (in this state directory)
            self.python(_NET_CLEANUP, *sorted(n for n, _ in leftovers), timeout=120)


_NET_CLEANUP = """
import contextlib, sys
from lxcbind.net import leases, network
for name in sys.argv[1:]:
    if network.has_table(name) or name in leases.leases():
        with contextlib.suppress(Exception):
            network.teardown_orphan(name)
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path / "state")
    try:
        yield h
    finally:
        h.cleanup()


def named(host: Host, tag: str) -> str:
    name = new_name(tag)
    host.names.add(name)
    return name


# -- every way in, with every shape at once -------------------------------------------------

DEPTH = 3000
WIDTH = 5000


def test_cli_survives_a_workload_shaped_layer(host: Host) -> None:
    name = named(host, "cli-")
    path = host.state.parent / "policy.json"
    path.write_text(json.dumps(policy(name)))
    r = host.cli("run", str(path), "--no-tty", "--", *shape_argv(DEPTH, WIDTH))
    assert r.returncode == EXIT, (r.returncode, r.stderr[-2000:])
    assert r.stdout == "shaped\n"
    host.assert_clean({name})
    host.assert_next_run_works()


RUN = """
import json, sys, lxcbind
r = lxcbind.run(json.loads(sys.argv[2]), policy=json.loads(sys.argv[1]), timeout=300)
print(r.stdout.decode(), end="")
sys.exit(r.returncode)
"""


def test_run_survives_a_workload_shaped_layer(host: Host) -> None:
    name = named(host, "run-")
    r = host.python(RUN, json.dumps(policy(name)), json.dumps(shape_argv(DEPTH, WIDTH)))
    assert r.returncode == EXIT, (r.returncode, r.stderr[-2000:])
    assert r.stdout == "shaped\n"
    host.assert_clean({name})
    host.assert_next_run_works()


SANDBOX = """
import json, sys, lxcbind
with lxcbind.Sandbox(json.loads(sys.argv[1])) as box:
    r = box.run(json.loads(sys.argv[2]), timeout=300)
    again = box.run("echo again")      # the same sandbox still works after the shaping
print(r.stdout.decode() + again.stdout.decode(), end="")
sys.exit(r.returncode)
"""


def test_sandbox_survives_a_workload_shaped_layer(host: Host) -> None:
    name = named(host, "box-")
    r = host.python(SANDBOX, json.dumps(policy(name)), json.dumps(shape_argv(DEPTH, WIDTH)))
    assert r.returncode == EXIT, (r.returncode, r.stderr[-2000:])
    assert r.stdout == "shaped\nagain\n"
    host.assert_clean({name})
    host.assert_next_run_works()


POOL = """
import json, os, sys, threading, time, lxcbind
from lxcbind.state import STATE_DIR
seen, done = set(), threading.Event()
def watch():   # every container the pool makes has a record while it exists
    while not done.is_set():
        try:
            seen.update(p[:-5] for p in os.listdir(STATE_DIR / "owners") if p.endswith(".json"))
        except FileNotFoundError:
            pass
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
with lxcbind.Pool(json.loads(sys.argv[1]), size=1) as pool:
    r = pool.run(["/bin/sh", "-c", 'cat /proc/sys/kernel/hostname; exec "$@"', "sh",
                  *json.loads(sys.argv[2])], timeout=300)
    after = [pool.run(["echo", str(i)], timeout=60).stdout.decode() for i in range(2)]
done.set()
shaped, out = r.stdout.decode().split("\\n", 1)
print(json.dumps({"rc": r.returncode, "out": out, "after": after,
                  "names": sorted(seen | {shaped})}))
"""


def test_pool_owner_survives_a_workload_shaped_layer(host: Host) -> None:
    r = host.python(POOL, json.dumps(policy(None)), json.dumps(shape_argv(DEPTH, WIDTH)))
    # A crash of the reaper thread takes the pool's owner with it: no result at all.
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    out = json.loads(r.stdout)
    host.names.update(out["names"])
    assert (out["rc"], out["out"], out["after"]) == (EXIT, "shaped\n", ["0\n", "1\n"])
    host.assert_clean(set(out["names"]))
    host.assert_next_run_works()


KILLED = """
import json, os, signal, sys, lxcbind
box = lxcbind.Sandbox(json.loads(sys.argv[1]))
box.open()
r = box.run(json.loads(sys.argv[2]), timeout=300)
print(r.returncode, flush=True)
os.kill(os.getpid(), signal.SIGKILL)   # the runner dies with its container up
"""


def test_gc_finishes_a_killed_runners_shaped_layer(host: Host) -> None:
    name = named(host, "gc-")
    r = host.python(KILLED, json.dumps(policy(name)), json.dumps(shape_argv(DEPTH, WIDTH)))
    assert (r.returncode, r.stdout) == (-9, f"{EXIT}\n"), r.stderr[-2000:]
    assert [rec["container"] for rec in host.records()] == [name]
    assert os.path.isdir(os.path.join(default_lxcpath(), name))
    g = host.cli("gc", timeout=600)
    assert g.returncode == 0, (g.returncode, g.stderr[-2000:])
    host.assert_clean({name})
    host.assert_next_run_works()


# -- one shape at a time, at sizes past what anything recursive survives ----------------------

@pytest.mark.parametrize("depth, width, kinds, disk", [
    pytest.param(20_000, 0, "", "max", id="deep-20000"),
    pytest.param(20_000, 0, "", "1G", id="deep-20000-disk-limited"),
    pytest.param(0, 100_000, "", "max", id="wide-100000"),
    pytest.param(0, 0, "long", "max", id="long-names-past-PATH_MAX"),
    pytest.param(0, 0, "special", "max", id="sockets-fifos-sparse-mode000"),
])
def test_run_survives_each_shape(host: Host, depth: int, width: int, kinds: str,
                                 disk: str) -> None:
    name = named(host, "shape-")
    r = host.python(RUN, json.dumps(policy(name, disk)),
                    json.dumps(shape_argv(depth, width, kinds)), timeout=1200)
    assert r.returncode == EXIT, (r.returncode, r.stderr[-2000:])
    assert r.stdout == "shaped\n"
    host.assert_clean({name})


# -- what cannot be removed: reported, skipped, finished later --------------------------------

def immutable(path: str, on: bool) -> None:
    """The host pins a file (the workload cannot: CAP_LINUX_IMMUTABLE is the host's)."""
    subprocess.run(["chattr", "+i" if on else "-i", path], check=True, capture_output=True)


def test_gc_reports_and_skips_what_it_cannot_remove(host: Host) -> None:
    bad, good = named(host, "bad-"), named(host, "good-")
    r = host.python(KILLED, json.dumps(policy(bad)), json.dumps(shape_argv(DEPTH)))
    assert (r.returncode, r.stdout) == (-9, f"{EXIT}\n"), r.stderr[-2000:]
    pinned = os.path.join(default_lxcpath(), bad, "delta0", "root", "t", "sparse")
    immutable(pinned, True)
    try:
        # The second runner's own garbage collection meets the bad leftover first: it skips it.
        r = host.python(KILLED, json.dumps(policy(good)), json.dumps(shape_argv(DEPTH)))
        assert (r.returncode, r.stdout) == (-9, f"{EXIT}\n"), r.stderr[-2000:]
        assert sorted(rec["container"] for rec in host.records()) == sorted([bad, good])
        g = host.cli("gc", timeout=600)
        assert g.returncode == 1, g.stderr
        lines = [line for line in g.stderr.splitlines() if "could not remove" in line]
        assert len(lines) == 1 and bad in lines[0], g.stderr
        assert "Traceback" not in g.stderr
        assert f"removed {good}\n" in g.stdout
        host.assert_clean({good}, only=True)
        # The bad leftover is still recorded, and does not stop the next run (whose own
        # garbage collection meets it first).
        assert [rec["container"] for rec in host.records()] == [bad]
        name = named(host, "next-")
        path = host.state.parent / "next.json"
        path.write_text(json.dumps(policy(name)))
        r = host.cli("run", str(path), "--no-tty", "--", "echo", "next", timeout=300)
        assert (r.returncode, r.stdout) == (0, "next\n"), r.stderr
        assert "could not remove" in r.stderr and bad in r.stderr   # said, once, and skipped
    finally:   # hoisted by the attempts, but still in the container's directory
        for path in Path(default_lxcpath(), bad).rglob("sparse"):
            immutable(str(path), False)
    g = host.cli("gc", timeout=600)
    assert g.returncode == 0, g.stderr
    host.assert_clean({bad, good, name})


FAILING = """
import json, os, subprocess, sys, lxcbind
from lxcbind.errors import SandboxError
box = lxcbind.Sandbox(json.loads(sys.argv[1]))
box.open()
r = box.run(json.loads(sys.argv[2]), timeout=300)
pinned = os.path.join(box.lxcpath, box.name, "delta0", "root", "t", "sparse")
subprocess.run(["chattr", "+i", pinned], check=True)
try:
    box.close()
except SandboxError as exc:
    print("teardown failed:", exc)
sys.exit(r.returncode)
"""


def test_a_failed_teardown_leaves_a_record_that_gc_finishes(host: Host) -> None:
    name = named(host, "fail-")
    r = host.python(FAILING, json.dumps(policy(name)), json.dumps(shape_argv(DEPTH)))
    assert r.returncode == EXIT, r.stderr[-2000:]
    assert "teardown failed:" in r.stdout and "sparse" in r.stdout, r.stdout
    assert [rec["container"] for rec in host.records()] == [name]
    pinned = os.path.join(default_lxcpath(), name, "delta0", "root", "t", "sparse")
    lost = [p for p in Path(default_lxcpath(), name).rglob("sparse")]
    assert not os.path.lexists(pinned) and len(lost) == 1   # hoisted, kept, nothing else
    immutable(str(lost[0]), False)
    g = host.cli("gc", timeout=600)
    assert g.returncode == 0, g.stderr
    assert f"removed {name}\n" in g.stdout
    host.assert_clean({name})
    host.assert_next_run_works()


NET_STATE = """
import json, sys
from lxcbind.net import leases, network
print(json.dumps([network.has_table(n) or n in leases.leases() for n in sys.argv[1:]]))
"""


def test_cli_with_net_leaves_no_network_state(host: Host) -> None:
    """With ``--net`` the run also owns an nft table and a lease: they go too, and a killed
    runner's go with gc."""
    name, killed = named(host, "net-"), named(host, "netkill-")
    path = host.state.parent / "policy.json"
    path.write_text(json.dumps(policy(name)))
    r = host.cli("run", str(path), "--no-tty", "--net", "--", *shape_argv(DEPTH, WIDTH))
    assert r.returncode == EXIT, (r.returncode, r.stderr[-2000:])
    host.assert_clean({name})
    doc = {**policy(killed), "network": {"egress": {"default": "allow"}}}
    k = host.python(KILLED, json.dumps(doc), json.dumps(shape_argv(DEPTH)))
    assert (k.returncode, k.stdout) == (-9, f"{EXIT}\n"), k.stderr[-2000:]
    assert json.loads(host.python(NET_STATE, killed).stdout) == [True]   # the test is real
    g = host.cli("gc", timeout=600)
    assert g.returncode == 0, g.stderr
    host.assert_clean({killed})
    state = host.python(NET_STATE, name, killed)
    assert json.loads(state.stdout) == [False, False], state.stderr


DESTROY = """
import sys, lxcbind
with lxcbind.Container(sys.argv[1]) as c:
    c.destroy()
    print(c.defined)
"""


def test_the_bindings_destroy_survives_a_shaped_layer(host: Host) -> None:
    """``lxcbind.Container.destroy()`` (the binding, no sandbox) on a container left running
    with every shape inside: liblxc only meets empty layers."""
    name = named(host, "bind-")
    r = host.python(KILLED, json.dumps(policy(name)), json.dumps(shape_argv(DEPTH, WIDTH)))
    assert (r.returncode, r.stdout) == (-9, f"{EXIT}\n"), r.stderr[-2000:]
    d = host.python(DESTROY, name)
    assert (d.returncode, d.stdout) == (0, "False\n"), d.stderr[-2000:]
    assert not os.path.lexists(os.path.join(default_lxcpath(), name))
    g = host.cli("gc", timeout=600)   # the record and id range of the killed runner
    assert g.returncode == 0, g.stderr
    host.assert_clean({name})
