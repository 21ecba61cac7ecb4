"""The package's shape: layers import only downward, no import cycles, only the binding layer
touches the cffi module.  Reads the source with ``ast`` (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "lxcbind"

# Lowest first.  A module may import from its own layer and the layers before it.
LAYERS = [
    ("leaf", ("lxcbind.errors", "lxcbind.result", "lxcbind.state", "lxcbind.policy",
              "lxcbind._lite", "lxcbind.command", "lxcbind._early", "lxcbind._cliclient")),
    ("binding", ("lxcbind.lxc", "lxcbind._lxc", "lxcbind._nft")),
    ("process", ("lxcbind.proc",)),
    ("network", ("lxcbind.net",)),
    ("image", ("lxcbind.image",)),
    ("sandbox", ("lxcbind.sandbox",)),
    ("api", ("lxcbind.aio", "lxcbind.cli", "lxcbind.fanout", "lxcbind.ray", "lxcbind.inspect",
             "lxcbind.__init__", "lxcbind.__main__", "lxcbind")),
]


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_build.py":
            continue  # build time only
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported lxcbind module, line) for every import in the file, nested ones included."""
    tree = ast.parse(path.read_text())
    package = module.rsplit(".", 1)[0] if not path.name == "__init__.py" else module
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("lxcbind")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("lxcbind"):
                out.append((name, node.lineno))
                out += [(f"{name}.{a.name}", node.lineno) for a in node.names
                        if f"{name}.{a.name}" in modules()]
    return out


def test_layers_import_only_downward() -> None:
    bad = []
    for module, path in modules().items():
        mine = layer_of(module)
        for target, line in imports_of(module, path):
            if target in ("lxcbind",):
                continue  # the lazy facade: only api-layer modules may use it (below)
            if layer_of(target) > mine:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} {module} "
                           f"({LAYERS[mine][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not bad, "\n".join(bad)


def test_only_the_binding_layer_touches_the_cffi_modules() -> None:
    bad = [f"{module} imports {target}"
           for module, path in modules().items() if not module.startswith("lxcbind.lxc.")
           for target, _ in imports_of(module, path)
           if target.startswith(("lxcbind._lxc", "lxcbind._nft", "lxcbind.lxc._native"))]
    assert not bad, bad


def test_no_import_cycles_between_modules() -> None:
    graph = {m: {t for t, _ in imports_of(m, p) if t in modules() and t != m}
             for m, p in modules().items()}
    for m in graph:  # a package's __init__ re-exporting its modules is not a cycle
        if m.endswith("__init__") or m.count(".") == 1 and (PACKAGE / m.split(".")[1]).is_dir():
            graph[m] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def test_public_names_are_written_out_for_type_checkers() -> None:
    """``__all__`` is a literal (mypy --strict counts its names as re-exported), it matches the
    lazy-import map, and the ``TYPE_CHECKING`` block imports each name from where it lives."""
    import lxcbind

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    static_all: list[str] | None = None
    checked: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            static_all = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                for alias in imp.names:
                    checked[alias.name] = imp.module.removeprefix("lxcbind.")
    assert static_all == sorted(lxcbind._WHERE) + ["__version__"]
    assert checked == lxcbind._WHERE   # and test_status checks that each name resolves


def test_tests_mirror_the_layers() -> None:
    """tests/unit and tests/integration have one folder per layer (``base`` for the leaves,
    ``api`` for the ways in, ``project`` for repository-wide checks) and no loose test files."""
    tests = PACKAGE.parent / "tests"
    layers = {"base", "policy", "lxc", "proc", "net", "image", "sandbox", "api", "project"}
    for kind in ("unit", "integration"):
        folders = {p.name for p in (tests / kind).iterdir()
                   if p.is_dir() and p.name != "__pycache__"}
        assert folders and folders <= layers, (kind, folders - layers)
        assert not list((tests / kind).glob("test_*.py")), f"loose tests in tests/{kind}"
