"""``_cdefs/seccompile.h`` builds the same seccomp filter liblxc builds from the container's
profile (issue #23: a template's clones must get exactly a full container's filter).

Three kinds of proof, for every profile ``security.seccomp_profile()`` can produce (each
``lxc.allow`` subset, with and without the setuid refusal of a writable bind of host root):

* the program: the BPF the header compiles is, instruction for instruction, one of the
  filters liblxc loaded into a real container started with that policy (read from the
  container's init with ``PTRACE_SECCOMP_GET_FILTER``);
* the behaviour: a probe (``seccompile/probe.c``) attempts every call the profile names, and
  a sample of allowed ones, on the three x86 ABIs (x86_64, i386 through ``int 0x80``, x32);
  run on the host under the compiled filter (``seccompile/runner.c exec``: no_new_privs, the
  filter, the spawner's i386 socket filter, as a clone's init will load them) and inside the
  real container, it must print the same lines; each call the profile refuses must be refused
  with the profile's errno, and the same probe without any filter must get another answer
  (the refusal is the filter's, not the kernel's);
* the parser: text it cannot compile as liblxc would is an error code, never a guess.

The probe's calls are harmless even unfiltered, as host root (bad pointers, invalid flags, a
path under a missing directory, fd -1): see probe.c.
"""

from __future__ import annotations

import itertools
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lxcbind
from lxcbind import _build
from lxcbind.policy.model import OPT_INS
from lxcbind.sandbox import security
from tests.conftest import IS_ROOT, NATIVE_ERROR, new_name

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="needs root"),
              pytest.mark.skipif(bool(NATIVE_ERROR), reason=f"no binding: {NATIVE_ERROR}"),
              pytest.mark.skipif(platform.machine() != "x86_64",
                                 reason="the probe speaks the three x86 ABIs")]

SOURCES = Path(__file__).resolve().parent / "seccompile"
VARIANTS = [(allow, deny_setid) for n in range(len(OPT_INS) + 1)
            for allow in itertools.combinations(OPT_INS, n) for deny_setid in (False, True)]
IDS = [f"{'+'.join(allow) or 'default'}{'-setid' if deny_setid else ''}"
       for allow, deny_setid in VARIANTS]
# Calls the probe makes that no profile names (allowed everywhere), besides the profile's.
SAMPLED = ("getpid", "read", "umount", "socketcall", "vhangup")
EINVAL, EOPNOTSUPP = 22, 95


class Tools:
    """The runner and the probe, compiled for this test session."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        cc = shutil.which("gcc") or shutil.which("cc")
        assert cc, "gcc is needed"
        cflags, libs = _build.seccomp_flags()
        self.runner = folder / "runner"
        self._cc([cc, "-O2", "-Wall", "-Werror", *cflags, "-o", str(self.runner),
                  str(SOURCES / "runner.c"), *libs])
        (folder / "names.h").write_text(_names_header())
        objects = []
        for abi in ("X86_64", "I386", "X32"):
            objects.append(str(folder / f"nrs_{abi}.o"))
            self._cc([cc, "-c", "-O2", "-Wall", "-Werror", f"-DPROBE_{abi}", "-I", str(folder),
                      "-I", str(SOURCES), "-o", objects[-1], str(SOURCES / "probe_nrs.c")])
        self.probe = folder / "probe"
        # static and not position-independent: runs in any container, strings below 4 GiB
        self._cc([cc, "-O2", "-Wall", "-Werror", "-static", "-no-pie", "-I", str(SOURCES),
                  "-o", str(self.probe), str(SOURCES / "probe.c"), *objects])

    @staticmethod
    def _cc(command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def compile(self, profile: str) -> tuple[int, bytes]:
        """(0, program) or (-errno, b"") from lxcbind_seccomp_compile."""
        source, out = self.folder / "profile", self.folder / "program"
        source.write_text(profile)
        out.unlink(missing_ok=True)
        done = subprocess.run([self.runner, "compile", source, out], capture_output=True,
                              text=True, timeout=60)
        if done.returncode == 3:
            return int(done.stdout.split()[0].removeprefix("error=")), b""
        assert done.returncode == 0, (done.stdout, done.stderr)
        program = out.read_bytes()
        assert f"len={len(program) // 8} " in done.stdout, done.stdout
        return 0, program

    def filters(self, pid: int) -> list[bytes]:
        """Every seccomp filter of process ``pid``, newest first."""
        prefix = self.folder / f"filters-{pid}"
        done = subprocess.run([self.runner, "filters", str(pid), prefix], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        count = int(done.stdout.strip().removeprefix("count="))
        return [Path(f"{prefix}.{i}").read_bytes() for i in range(count)]

    def probe_on_host(self, profile: str | None) -> list[str]:
        """The probe's lines on the host: under the compiled profile, or with no filter."""
        source = self.folder / "probe-profile"
        source.write_text(profile or "")
        command = [str(self.probe)] if profile is None else \
            [str(self.runner), "exec", str(source), str(self.probe)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, start_new_session=True)
        assert done.returncode == 0, (done.stdout, done.stderr)
        return done.stdout.splitlines()


def _rules(profile: str) -> list[str]:
    """The rule lines (after the version and list style; no section lines)."""
    return [line for line in profile.splitlines()[2:] if line and not line.startswith("[")]


def _names_header() -> str:
    """names.h: every call any profile names, and the sampled ones."""
    names = set(SAMPLED)
    for allow, deny_setid in VARIANTS:
        profile = security.seccomp_profile(allow, deny_setid)
        names.update(line.split()[0] for line in _rules(profile))
    names.discard("reject_force_umount")
    return "".join(f"#ifdef __NR_{n}\n    {{\"{n}\", __NR_{n}}},\n#endif\n" for n in sorted(names))


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return Tools(tmp_path_factory.mktemp("seccompile"))


@pytest.fixture(scope="module")
def unfiltered(tools: Tools) -> dict[tuple[str, str], str]:
    return _parse(tools.probe_on_host(None))


def _policy(allow: tuple[str, ...], deny_setid: bool, folder: Path) -> dict[str, object]:
    policy: dict[str, object] = {"version": "0.8.0", "containerId": new_name("seccompile-"),
                                 "process": {"commandLine": "true"},
                                 "lxc": {"allow": list(allow)}}
    if deny_setid:   # a writable bind of a root-owned directory: setuid bits are refused
        rw = folder / "rw"
        rw.mkdir(exist_ok=True)
        assert rw.stat().st_uid == 0
        policy["filesystem"] = {"readwritePaths": [str(rw)]}
    return policy


@pytest.fixture
def sandbox_for(tmp_path: Path) -> Iterator[Callable[[tuple[str, ...], bool], lxcbind.Sandbox]]:
    """Starts the sandbox of a variant; closes it after the test, whatever happened."""
    boxes: list[lxcbind.Sandbox] = []

    def start(allow: tuple[str, ...], deny_setid: bool) -> lxcbind.Sandbox:
        box = lxcbind.Sandbox(_policy(allow, deny_setid, tmp_path))
        boxes.append(box)
        box.open()
        return box

    yield start
    for box in boxes:
        box.close()


# -- the program --------------------------------------------------------------------------------

@pytest.mark.parametrize(("allow", "deny_setid"), VARIANTS, ids=IDS)
def test_program_is_the_one_liblxc_loads(tools: Tools, sandbox_for: Callable[..., lxcbind.Sandbox],
                                         allow: tuple[str, ...],
                                         deny_setid: bool) -> None:
    rc, ours = tools.compile(security.seccomp_profile(allow, deny_setid))
    assert rc == 0 and 0 < len(ours) // 8 <= 4096
    box = sandbox_for(allow, deny_setid)
    loaded = tools.filters(box.container.init_pid)
    # liblxc's filter and the spawner's i386 socket filter (sockfilter.h, 18 instructions)
    assert len(loaded) == 2 and sorted(len(f) // 8 for f in loaded)[0] == 18, \
        [len(f) // 8 for f in loaded]
    assert ours in loaded, ("compiled", len(ours) // 8, "loaded", [len(f) // 8 for f in loaded])


def test_profiles_differ_so_the_comparison_can_fail(tools: Tools) -> None:
    programs = {tools.compile(security.seccomp_profile(a, d))[1] for a, d in VARIANTS}
    assert len(programs) == len(VARIANTS)


# -- the behaviour ------------------------------------------------------------------------------

def _parse(lines: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for line in lines:
        abi, label, result = line.split()
        assert (abi, label) not in out, line
        out[abi, label] = result
    return out


NAMESPACES = {"NEWNS": 0x20000, "NEWCGROUP": 0x2000000, "NEWUTS": 0x4000000,
              "NEWIPC": 0x8000000, "NEWUSER": 0x10000000, "NEWPID": 0x20000000,
              "NEWNET": 0x40000000}
MODES = {"suid": 0o4755, "sgid": 0o2755, "plain": 0o755, "suid+hi": 0x1_0000_4755}
MODE_INDEX = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "open": 2, "openat": 3,
              "creat": 1, "mknod": 1, "mknodat": 2}   # the probe's mode argument
I386_SOCKET_FAMILIES = (1, 2, 10, 16, 17)   # sockfilter.h, the spawner's i386 socket filter


def _refusal(profile: str, abi: str, label: str) -> str | None:
    """The errno name the profile's text says this attempt gets, None if it allows it."""
    import errno

    rules = _rules(profile)
    name, _, variant = label.partition("/")
    plain = {r.split()[0]: int(r.split()[2]) for r in rules if "[" not in r
             and r != "reject_force_umount"}
    masked = [(m[1], int(m[2]), int(m[3]), int(m[4])) for r in rules if (m := re.fullmatch(
        r"(\w+) errno 1 \[(\d),(\d+),SCMP_CMP_MASKED_EQ,(\d+)\]", r))]
    assert len(masked) + len(plain) + 1 == len(rules), "a rule shape this test does not model"

    def refused(call: str, index: int, value: int) -> bool:
        return any(n == call and i == index and value & mask == want
                   for n, i, want, mask in masked)

    if name in plain:
        return errno.errorcode[plain[name]]
    if label == "umount2/force" and "reject_force_umount" in rules:
        return "EACCES"
    if name == "socketcall":   # i386 only: the spawner's filter refuses every socket call
        return "EPERM"
    if name in ("socket", "socketpair"):
        family = int(variant, 16)
        if abi == "i386":      # libseccomp has no direct i386 socket: liblxc skips the rules
            return None if family & 0xFFFF_FFFF in I386_SOCKET_FAMILIES else "EPERM"
        return "EPERM" if refused(name, 0, family) else None
    if name == "clone":        # CLONE_SIGHAND (0x800) makes an allowed clone EINVAL
        ns, hi = variant.removesuffix("+hi"), variant.endswith("+hi")
        flags = NAMESPACES.get(ns, 0) | 0x800 | (1 << 32 if hi and abi != "i386" else 0)
        return "EPERM" if refused("clone", 0, flags) else None
    if name in MODE_INDEX:
        mode = MODES[variant] | (0o100000 if name.startswith("mknod") else 0)
        return "EPERM" if refused(name, MODE_INDEX[name], mode) else None
    return None


@pytest.mark.parametrize(("allow", "deny_setid"), VARIANTS, ids=IDS)
def test_probe_answers_as_in_a_real_container(tools: Tools,
                                              unfiltered: dict[tuple[str, str], str],
                                              sandbox_for: Callable[..., lxcbind.Sandbox],
                                              allow: tuple[str, ...], deny_setid: bool) -> None:
    profile = security.seccomp_profile(allow, deny_setid)
    host = tools.probe_on_host(profile)
    box = sandbox_for(allow, deny_setid)
    box.put("/tmp/probe", tools.probe.read_bytes())
    r = box.run("chmod 755 /tmp/probe && exec /tmp/probe", timeout=120)
    assert r.returncode == 0, r.stderr
    inside = r.stdout.decode().splitlines()
    assert host == inside, "\n".join(f"{h!r:45} {c!r}" for h, c in zip(host, inside, strict=False)
                                     if h != c)

    results = _parse(host)
    assert results.keys() == unfiltered.keys()
    for (abi, label), got in results.items():
        want = _refusal(profile, abi, label)
        if want is not None:
            assert got == want, (abi, label, got, want)
            if not (abi == "x32" and want == "ENOSYS"):   # no x32 kernel: ENOSYS either way
                assert unfiltered[abi, label] != want, ("the kernel refuses it anyway", abi,
                                                        label)
        else:
            assert got == unfiltered[abi, label], (abi, label, got, "allowed, yet")
    # every call the profile names was attempted, on x86_64 or on i386 where it exists only
    attempted = {label.partition("/")[0] for _, label in results}
    named = {rule.split()[0] for rule in _rules(profile)} - {"reject_force_umount"}
    assert named <= attempted, named - attempted
    assert ("x86_64", "umount2/force") in results and ("i386", "socket/0x28") in results


def test_refused_attempts_cover_every_abi(tools: Tools) -> None:
    """The probe reaches the i386 and x32 entry points at all (else the comparison above would
    be vacuous for them)."""
    lines = _parse(tools.probe_on_host(security.seccomp_profile()))
    for abi in ("x86_64", "i386", "x32"):
        assert lines[abi, "keyctl"] == "EPERM", abi
        assert lines[abi, "socket/0x28"] == "EPERM", abi
    assert lines["i386", "getpid"] == lines["x86_64", "getpid"] == "OK"
    assert lines["i386", "socket/0x2"] == lines["x86_64", "socket/0x2"] == "EINVAL"


# -- the parser ---------------------------------------------------------------------------------

HEAD = "2\ndenylist\n[all]\n"


@pytest.mark.parametrize(("text", "errno_"), [
    ("", EINVAL),
    ("3\ndenylist\n", EINVAL),
    ("2\n", EINVAL),
    ("1\nallowlist\n", EOPNOTSUPP),
    ("2\ngreylist\n", EINVAL),
    ("2\ndenylist frobnicate\n", EINVAL),
    (HEAD + "keyctl frobnicate\n", EINVAL),
    (HEAD + "keyctl errno\n", EINVAL),
    (HEAD + "keyctl errno x\n", EINVAL),
    (HEAD + "keyctl errno -1\n", EINVAL),
    (HEAD + "keyctl errno 5000\n", EINVAL),
    (HEAD + "keyctl errno 1 extra\n", EINVAL),
    (HEAD + "keyctl notify\n", EOPNOTSUPP),
    (HEAD + "keyctl log\n", EINVAL),
    (HEAD + " keyctl errno 1\n", EINVAL),
    (HEAD + "keyctl errno 1\r\n", EINVAL),
    (HEAD + "socket errno 1 [0,40]\n", EINVAL),
    (HEAD + "socket errno 1 [6,40,SCMP_CMP_EQ]\n", EINVAL),
    (HEAD + "socket errno 1 [0,40,SCMP_CMP_ALMOST]\n", EINVAL),
    (HEAD + "socket errno 1 [0,-40,SCMP_CMP_EQ]\n", EINVAL),
    (HEAD + "socket errno 1 [0,40,SCMP_CMP_MASKED_EQ,0xzz]\n", EINVAL),
    (HEAD + "socket errno 1 [0,40,SCMP_CMP_EQ,1,2]\n", EINVAL),
    (HEAD + "socket errno 1 [0,40,SCMP_CMP_EQ\n", EINVAL),
    (HEAD + "socket [0,40,SCMP_CMP_EQ]\n", EINVAL),
    (HEAD + "socket errno 1 [0,40,SCMP_CMP_EQ] junk\n", EINVAL),
    (HEAD + "socket errno 1" + " [0,1,SCMP_CMP_EQ]" * 7 + "\n", EINVAL),
    ("2\ndenylist\n[martian]\nkeyctl errno 1\n", EINVAL),
    ("2\ndenylist\n[all] \n", EINVAL),
], ids=lambda v: repr(v)[-40:] if isinstance(v, str) else str(v))
def test_bad_profile_is_an_error(tools: Tools, text: str, errno_: int) -> None:
    assert tools.compile(text) == (-errno_, b"")


def _program(tools: Tools, text: str) -> bytes:
    rc, program = tools.compile(text)
    assert rc == 0, (rc, text)
    return program


def test_what_liblxc_skips_is_skipped(tools: Tools) -> None:
    base = _program(tools, HEAD + "keyctl errno 1\n")
    assert base != _program(tools, HEAD)
    # a name libseccomp does not know: no rule, on any ABI (liblxc logs it and goes on)
    assert _program(tools, HEAD + "keyctl errno 1\nno_such_call errno 1\n") == base
    # another architecture's section; comments and blank lines
    assert _program(tools, HEAD + "keyctl errno 1\n[arm64]\nbpf errno 1\n[S390X]\nbpf\n") == base
    assert _program(tools, HEAD + "# c\n\nkeyctl errno 1 # why\n   \n") == base
    # rules before any section apply on x86_64, and every x86 section means every ABI
    assert _program(tools, "2\ndenylist\nkeyctl errno 1\n") == base
    for section in ("[x86_64]", "[X86]", "[x32]", "[ALL]"):
        assert _program(tools, f"2\ndenylist\n{section}\nkeyctl errno 1\n") == base, section
    assert _program(tools, HEAD + "keyctl errno 1") == base   # no final newline


def test_equivalent_spellings(tools: Tools) -> None:
    masked = _program(tools, HEAD + "socket errno 1 [0,40,SCMP_CMP_MASKED_EQ,0xff]\n")
    assert masked == _program(tools, HEAD + "socket errno 1 [0,0x28,&=,255]\n")
    assert masked != _program(tools, HEAD + "socket errno 1 [0,40,SCMP_CMP_MASKED_EQ,0xf0ff]\n")
    eq = _program(tools, HEAD + "socket errno 1 [0,40,SCMP_CMP_EQ]\n")
    assert eq == _program(tools, HEAD + "socket errno 1 [0,40,==,12345]\n")   # mask ignored
    assert eq != masked
    assert _program(tools, "2\nblacklist\nkeyctl errno 1\n") == \
        _program(tools, "2\ndenylist\nkeyctl errno 1\n")
    # the default action and the list style change the program
    assert len({_program(tools, text) for text in (
        "2\ndenylist\nkeyctl errno 1\n", "2\ndenylist errno 38\nkeyctl errno 1\n",
        "2\nallowlist\nkeyctl\n", "2\ndenylist\nkeyctl\n", "2\ndenylist\nkeyctl trap\n",
        "2\ndenylist\nkeyctl errno 2\n")}) == 6


def test_compile_closes_what_it_opens(tools: Tools) -> None:
    """The cloner compiles once per template and lives on: no descriptor (the export memfd)
    may stay open, on success or on error (the runner counts its own fds around the call)."""
    for text in (security.seccomp_profile(("nesting",), True), HEAD + "keyctl frobnicate\n"):
        source = tools.folder / "profile"
        source.write_text(text)
        done = subprocess.run([tools.runner, "compile", source, tools.folder / "program"],
                              capture_output=True, text=True, timeout=60)
        assert "fds=same" in done.stdout, done.stdout
