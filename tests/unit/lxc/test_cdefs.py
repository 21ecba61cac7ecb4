"""The C layer is declared once and only as far as it is used: every name the cffi
declarations (``_cdefs/*.h`` named in ``lxcbind/_build.py``) give Python is used by the package,
and ``_cdefs/README.md`` lists every file there.  Pure text checks: no compiled module needed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CDEFS = ROOT / "_cdefs"


def _build_constant(name: str) -> list[str]:
    tree = ast.parse((ROOT / "lxcbind" / "_build.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
            value = ast.literal_eval(node.value)
            return [value] if isinstance(value, str) else list(value)
    raise AssertionError(f"_build.py has no {name}")


def _declared(header: str) -> set[str]:
    text = re.sub(r"/\*.*?\*/", "", (CDEFS / header).read_text(), flags=re.S)
    names = set(re.findall(r"^#define\s+(\w+)", text, re.M))             # constants
    names |= set(re.findall(r"\(\*(\w+)\)\s*\(", text))                   # methods (struct members)
    names |= set(re.findall(r"^[\w \t*]+?\b(\w+)[ \t]*\((?!\*)", text, re.M))  # functions
    names |= set(re.findall(r"^[ \t]+(?!struct )[\w \t*]+?\b(\w+)[ \t]*;", text, re.M))  # fields
    names |= set(re.findall(r"^[ \t]+(\w+),?[ \t]*$", text, re.M))              # enum members
    return names


def test_every_declared_name_is_used_by_python() -> None:
    python = "\n".join(p.read_text() for p in (ROOT / "lxcbind").rglob("*.py"))
    unused = {
        header: sorted(n for n in _declared(header) if not re.search(rf"\b{n}\b", python))
        for header in _build_constant("DECLARATIONS")
    }
    assert not any(unused.values()), f"declared for Python but never used: {unused}"


def test_readme_lists_every_c_file() -> None:
    readme = (CDEFS / "README.md").read_text()
    files = sorted(p.name for p in CDEFS.iterdir() if p.suffix in (".h", ".c"))
    assert files, "no C files found"
    assert [f for f in files if f"`{f}`" not in readme] == []
    for name in _build_constant("DECLARATIONS") + _build_constant("C_SOURCES") + \
            _build_constant("SPAWNER_SOURCE"):
        assert (CDEFS / name).is_file(), name
