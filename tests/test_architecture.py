"""The house rules, checked on the source: layers import downwards only, no cycles, each file
states its one job, functions stay short (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "robustact"

#: lowest first; a package may import its own modules and those of lower layers only
LAYERS = [
    {"", "errors", "registry", "device", "files", "options", "distributed", "locks"},
    {"data", "activations", "attacks"},
    {"defenses"},
    {"models"},
    {"eval"},
    {"train"},
    {"rl"},
    {"results"},
    {"report"},
    {"study"},
    {"cli", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The robustact modules ``name`` imports, at module level or inside functions."""
    package = name if (SRC.parent / name.replace(".", "/") / "__init__.py").exists() \
        else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in found if m == "robustact" or m.startswith("robustact.")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in MODULES} <= set(LEVEL)


def test_imports_run_downwards_only() -> None:
    upward = [f"{m} imports {i}" for m, tree in MODULES.items() for i in _imports(m, tree)
              if not _allowed(_package(m), _package(i))]
    assert upward == []


def _allowed(importer: str, imported: str) -> bool:
    """Downwards, within a package, or among the plumbing modules (and cli/__main__)."""
    low, high = LEVEL[imported], LEVEL[importer]
    return low < high or importer == imported or (low == high and low in (0, len(LAYERS) - 1))


def test_no_import_cycle() -> None:
    graph = {m: {i for i in _imports(m, t) if i in MODULES and i != m}
             for m, t in MODULES.items()}
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_file_states_its_job(module: str) -> None:
    doc = ast.get_docstring(MODULES[module])
    assert doc and doc.strip().splitlines()[0].strip(), f"{module} has no module docstring"


def test_functions_are_short() -> None:
    long = [f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines"
            for m, tree in MODULES.items() for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
