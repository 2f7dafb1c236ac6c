"""The package's shape: imports point one way (no circle, no arrow back up the layers of
docs/concepts.md), and no library module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "prefheads"
MAX_LINES = 400

# top to bottom, as drawn in docs/concepts.md ("How the package fits together"); a module may
# import from its own layer or a lower one
LAYERS = [
    {"cli", "docgen"},
    {"commands"},
    {"recipes", "demo"},
    {"training", "eval", "infer"},
    {"model"},
    {"binding", "headio", "card"},
    {"engine", "hooks", "heads", "poolers", "losses", "lmscores", "chat", "rawtext", "families", "loading",
     "fingerprint",
     "tasks"},
    {"registry", "types", "optim", "progress", "cliargs", "inhouse"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the prefheads modules it imports anywhere (functions and type-checking blocks too)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for mod, path in modules.items():
        base = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.startswith("prefheads")}
            elif isinstance(node, ast.ImportFrom):
                src = node.module or ""
                if node.level:
                    up = base
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    src = f"{up}.{src}" if src else up
                if src.startswith("prefheads"):
                    found |= {resolve(f"{src}.{a.name}") if f"{src}.{a.name}" in modules else resolve(src)
                              for a in node.names}
        edges[mod] = {m for m in found if m and m != mod and m != "prefheads"}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def _top(mod: str) -> str:
    return mod.split(".")[1] if "." in mod else mod


def test_no_import_circle_between_modules_or_packages():
    edges = _imports(_modules())
    assert _cycles(edges) == []
    packages: dict[str, set[str]] = {}
    for a, bs in edges.items():
        packages.setdefault(_top(a), set()).update(_top(b) for b in bs if _top(b) != _top(a))
    assert _cycles(packages) == []


def test_imports_never_point_up_the_layers():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    modules = _modules()
    assert {_top(m) for m in modules if m != "prefheads"} == set(layer), "every module and package has a layer"
    back = [f"{a} -> {b}" for a, bs in _imports(modules).items() if a != "prefheads"
            for b in bs if layer[_top(b)] < layer[_top(a)]]
    assert back == []


def test_no_library_module_over_400_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
