"""cffi builders for ``lxcbind._lxc`` and ``lxcbind._nft`` (build time only: setup.py names
them in cffi_modules).

Reads the declarations under ``_cdefs/`` and compiles them, with lxcbind's C helpers, against
the installed ``<lxc/lxccontainer.h>`` (``_lxc``) and ``<nftables/libnftables.h>`` (``_nft``).
Two modules, so that a run without a network device never loads libnftables and the five
libraries it needs (~0.7 ms of every CLI start).  Nothing imports this module at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from cffi import FFI

CDEFS = Path(__file__).resolve().parent.parent / "_cdefs"

# Order matters: lxc.h defines the types shim.h uses.
DECLARATIONS = ["lxc.h", "libc.h", "shim.h", "spawner.h", "userns.h"]
C_SOURCES = ["shim.c", "userns.c"]
NFT_DECLARATIONS = ["nft.h"]
NFT_SOURCES = ["nft.c"]
# The spawner is a program of its own, not part of the module (see build_spawner); so is the
# starter, liblxc's start in a small process (see build_starter).
SPAWNER_SOURCE = "spawner.c"
SPAWNER_NAME = "lxcbind-spawner"
# The cloner, a Pool's template init that makes light clones (issue #23), is static too.
CLONER_SOURCE = "cloner.c"
CLONER_NAME = "lxcbind-cloner"
STARTER_SOURCE = "starter.c"
STARTER_NAME = "lxcbind-starter"

MISSING_LXC = (
    "lxcbind: liblxc and its headers were not found ({why}).\n"
    "On Debian/Ubuntu install them with:  apt-get install lxc lxc-dev pkg-config"
)


MISSING_NFT = (
    "lxcbind: libnftables and its headers were not found ({why}).\n"
    "On Debian/Ubuntu install them with:  apt-get install libnftables-dev pkg-config"
)


MISSING_SECCOMP = (
    "lxcbind: libseccomp and its headers were not found ({why}).\n"
    "On Debian/Ubuntu install them with:  apt-get install libseccomp-dev pkg-config"
)


def _pkg_flags(package: str, missing: str) -> dict[str, list[str]]:
    """Compiler and linker flags for one library from pkg-config, failing with a package hint."""
    if shutil.which("pkg-config") is None:
        sys.exit(missing.format(why="pkg-config is not installed"))
    try:
        cflags = subprocess.run(
            ["pkg-config", "--cflags", package], check=True, capture_output=True, text=True
        ).stdout.split()
        libs = subprocess.run(
            ["pkg-config", "--libs", package], check=True, capture_output=True, text=True
        ).stdout.split()
    except subprocess.CalledProcessError as exc:
        sys.exit(missing.format(why=exc.stderr.strip() or f"pkg-config {package} failed"))
    return {
        "include_dirs": [f[2:] for f in cflags if f.startswith("-I")],
        "libraries": [f[2:] for f in libs if f.startswith("-l")],
        "library_dirs": [f[2:] for f in libs if f.startswith("-L")],
    }


def _with_cdefs(flags: dict[str, list[str]]) -> dict[str, list[str]]:
    return {key: value + ([str(CDEFS)] if key == "include_dirs" else [])
            for key, value in flags.items()}


def _source(name: str) -> str:
    return (CDEFS / name).read_text()


def build_spawner(target: Path) -> None:
    """Compile the session spawner (``_cdefs/spawner.c``) into a static executable at
    ``target``.  Static: it is exec'd inside containers whose root filesystem (and libc) may
    be anything, from a memfd, so it must need no file there.  Called by setup.py's
    build_ext."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("lxcbind: a C compiler (gcc) is needed to build the session spawner")
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [cc, "-static", "-O2", "-s", "-Wall", "-Werror=implicit-function-declaration",
               "-I", str(CDEFS), "-o", str(target), str(CDEFS / SPAWNER_SOURCE)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        hint = ("\nA static libc is needed (Debian/Ubuntu: apt-get install libc6-dev)"
                if "cannot find -lc" in done.stderr else "")
        sys.exit(f"lxcbind: building the session spawner failed:\n{done.stderr}{hint}")


def build_cloner(target: Path) -> None:
    """Compile the template's init (``_cdefs/cloner.c``) into a static executable at
    ``target``: static for the spawner's reason (it runs in a container whose root
    filesystem may be anything), with libseccomp (``_cdefs/seccompile.h``: the clones'
    filter is compiled once per template).  Called by setup.py's build_ext."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("lxcbind: a C compiler (gcc) is needed to build the template's cloner")
    cflags, libs = seccomp_flags()
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [cc, "-static", "-O2", "-s", "-Wall", "-Werror=implicit-function-declaration",
               *cflags, "-o", str(target), str(CDEFS / CLONER_SOURCE), *libs]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        hint = ("\nA static libseccomp is needed (Debian/Ubuntu: apt-get install "
                "libseccomp-dev)" if "lseccomp" in done.stderr else "")
        sys.exit(f"lxcbind: building the template's cloner failed:\n{done.stderr}{hint}")


def build_starter(target: Path) -> None:
    """Compile the starter (``_cdefs/starter.c``: liblxc's start in a small process of its
    own) at ``target``, linked against the installed liblxc.  Called by setup.py's build_ext."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("lxcbind: a C compiler (gcc) is needed to build the container starter")
    flags = _pkg_flags("lxc", MISSING_LXC)
    target.parent.mkdir(parents=True, exist_ok=True)
    command = [cc, "-O2", "-s", "-Wall", "-Werror=implicit-function-declaration",
               *(f"-I{d}" for d in flags["include_dirs"]), "-o", str(target),
               str(CDEFS / STARTER_SOURCE),
               *(f"-L{d}" for d in flags["library_dirs"]),
               *(f"-l{name}" for name in flags["libraries"])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lxcbind: building the container starter failed:\n{done.stderr}")


def seccomp_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for a program including ``_cdefs/seccompile.h``, which
    compiles the container's seccomp profile with libseccomp (the template's cloner; the
    link flags go after the sources, and libseccomp.a also links statically)."""
    flags = _pkg_flags("libseccomp", MISSING_SECCOMP)
    return ([*(f"-I{d}" for d in flags["include_dirs"]), "-I", str(CDEFS)],
            [*(f"-L{d}" for d in flags["library_dirs"]),
             *(f"-l{name}" for name in flags["libraries"])])


_STRICT = ["-Werror=incompatible-pointer-types", "-Werror=implicit-function-declaration"]

ffibuilder = FFI()
ffibuilder.cdef("\n".join(_source(name) for name in DECLARATIONS))
ffibuilder.set_source(
    "lxcbind._lxc",
    "\n".join(_source(name) for name in C_SOURCES),
    extra_compile_args=_STRICT,
    **_with_cdefs(_pkg_flags("lxc", MISSING_LXC)),
)

# lxcbind.lxc.nftables drives nftables in-process (no nft program); loaded by networked runs.
nftbuilder = FFI()
nftbuilder.cdef("\n".join(_source(name) for name in NFT_DECLARATIONS))
nftbuilder.set_source(
    "lxcbind._nft",
    "\n".join(_source(name) for name in NFT_SOURCES),
    extra_compile_args=_STRICT,
    **_with_cdefs(_pkg_flags("libnftables", MISSING_NFT)),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    nftbuilder.compile(verbose=True)
