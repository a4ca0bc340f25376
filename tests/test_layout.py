"""The package's layering, read from the source: no import cycle, a pure-Python language layer.

Every ``import`` statement counts, also those inside functions: a cycle hidden in a function
still ties two modules together.
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tinytrace"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = ("tinytrace", *path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of everything ``name`` imports (module or package, internal or not)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    return out


def _edges(name: str, path: Path) -> set[str]:
    """Internal modules ``name`` depends on: each imported module and the packages above it
    (their ``__init__`` runs first), except the packages ``name`` itself lives in."""
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    out = set()
    for target in _imports(name, path):
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            t = ".".join(parts[:i])
            if t in MODULES and t not in own and t != name:
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    assert _cycles(graph) == []


LANG = sorted(n for n in MODULES if n.startswith("tinytrace.lang"))
ALLOWED_INTERNAL = ("tinytrace.lang", "tinytrace.presets")


@pytest.mark.parametrize("name", LANG)
def test_the_language_layer_is_pure_python(name):
    """``lang/`` is the TinyTracing language: no torch, numpy or pandas, and nothing of the
    package above it (the dependency-free ``presets`` helper aside)."""
    imported = _imports(name, MODULES[name])
    heavy = {m for m in imported if m.split(".")[0] in {"torch", "numpy", "pandas"}}
    above = {m for m in imported if m.startswith("tinytrace")
             and not m.startswith(ALLOWED_INTERNAL) and m != "tinytrace"}
    assert not heavy and not above, (heavy, above)


# ARCHITECTURE.md's layers, bottom first: a module imports only from its layer or those below
LAYERS = [("tinytrace", "tinytrace.presets", "tinytrace.interrupt"), ("tinytrace.lang",),
          ("tinytrace.data",),
          ("tinytrace.model", "tinytrace.provenance"),
          ("tinytrace.train", "tinytrace.evaluate", "tinytrace.hub"),
          ("tinytrace.experiments", "tinytrace.bench"), ("tinytrace.report",),
          ("tinytrace.cli", "tinytrace.__main__")]


def _layer(name: str) -> int | None:
    """The layer of the longest listed name that is ``name`` or a package above it (the root
    package only as itself: it is no catch-all); None where no layer names it."""
    hits = [p for layer in LAYERS for p in layer
            if name == p or (p != "tinytrace" and name.startswith(p + "."))]
    if not hits:
        return None
    best = max(hits, key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def test_every_module_has_a_layer():
    assert [n for n in MODULES if _layer(n) is None] == []
    assert _layer("tinytrace.lang.fast") == 1 and _layer("tinytrace.cli.data") == 7
    assert _layer("tinytrace") == 0 and _layer("tinytrace.stray") is None


def test_no_module_imports_a_layer_above_it():
    upward = sorted((name, t) for name, path in MODULES.items() for t in _edges(name, path)
                    if _layer(t) > _layer(name))
    assert upward == []


def test_presets_imports_nothing_from_the_package():
    assert not {m for m in _imports("tinytrace.presets", MODULES["tinytrace.presets"])
                if m.startswith("tinytrace")}
