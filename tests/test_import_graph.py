"""The import rules of the house, read from the source (every import statement, at module level or
inside a function, and `importlib.import_module("parity...")`: a lazy import is still an edge).

- references import nothing of parity outside parity.reference (parity._errors excepted);
- the registry imports nothing of parity; only the catalog loads the specs and the backends;
- backends never import each other, nor properties or tools;
- properties and tools reach implementations only through the catalog (no parity.optimized);
- the pytest plugin does not import the command line (parity.tools);
- no import circle anywhere.

`python -m tests.test_import_graph` prints the graph's summary.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "parity"
BACKENDS = ("triton", "tilelang", "flashinfer")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The deepest known module that `name` designates (a name imported from a package that is
    not a module of its own designates the package)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def edges() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            elif (  # importlib.import_module("parity.x"): a dynamic import is an edge too
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            for t in targets:
                if not t.startswith("parity"):
                    continue
                r = _resolve(t, known)
                if r and r != mod:
                    graph[mod].add(r)
    # `from pkg import sub` adds both pkg and pkg.sub; keep pkg only when a name of pkg itself
    # is used: importing a submodule runs pkg's __init__, but that is not a dependency on it
    for mod in graph:
        subs = {t for t in graph[mod]}
        for t in list(subs):
            if any(o.startswith(t + ".") for o in subs) and known[t].name == "__init__.py":
                graph[mod].discard(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _backend_of(mod: str) -> str | None:
    parts = mod.split(".")
    if len(parts) >= 3 and parts[1] == "optimized":
        return parts[2] if parts[2] in BACKENDS else "stack" if parts[2] == "stack" else None
    return None


def violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        for d in sorted(deps):
            why = None
            if mod.startswith("parity.reference") and not (
                d.startswith("parity.reference") or d == "parity._errors"
            ):
                why = "a reference imports parity outside parity.reference"
            elif mod == "parity.registry":
                why = "the registry imports parity"
            elif d.startswith("parity.properties.specs") and not (
                mod.startswith("parity.properties.specs") or mod == "parity.catalog"
            ):
                why = "only the catalog loads the specs"
            elif mod.startswith("parity.optimized"):
                mb, db = _backend_of(mod), _backend_of(d)
                if db is not None and mb is not None and db != mb:
                    why = "a backend imports another backend"
                elif d.startswith(("parity.properties", "parity.tools", "parity.catalog")):
                    why = "a backend imports the harness"
            elif mod.startswith(("parity.properties", "parity.tools")) and d.startswith(
                "parity.optimized"
            ):
                why = "the harness reaches a backend other than through the catalog"
            elif mod.startswith("parity.testing") and d.startswith("parity.tools"):
                why = "the pytest plugin imports the command line"
            if why:
                bad.append(f"{mod} -> {d}: {why}")
    return bad


def test_no_import_circle():
    found = cycles(edges())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_import_rules():
    bad = violations(edges())
    assert not bad, "import rules broken:\n" + "\n".join(bad)


def test_the_graph_sees_imports():
    """A check that cannot fail is a defect: the reader must see the edges it judges."""
    g = edges()
    assert "parity.registry" in g["parity.catalog"]
    assert "parity.properties.specs" in g["parity.catalog"]  # importlib.import_module
    assert any(d.startswith("parity.reference") for d in g["parity.properties.specs.swiglu"])
    planted = {"parity.a": {"parity.b"}, "parity.b": {"parity.a"}}
    assert cycles(planted) == [["parity.a", "parity.b"]]
    assert violations({"parity.registry": {"parity.catalog"}})
    assert violations({"parity.tools.x": {"parity.optimized.triton.quant"}})
    assert violations({"parity.optimized.triton.quant": {"parity.optimized.tilelang.mhc"}})
    assert violations({"parity.testing.pytest_plugin": {"parity.tools.worker"}})


if __name__ == "__main__":
    g = edges()
    n_edges = sum(len(v) for v in g.values())
    print(f"{len(g)} modules, {n_edges} parity-internal imports")
    print(f"import circles: {len(cycles(g))}")
    bad = violations(g)
    print(f"rule violations: {len(bad)}")
    for b in bad:
        print("  " + b)
