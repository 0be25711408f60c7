"""The import graph of the product: layers import downward only, and no module imports itself back.

Layers, bottom up: ``core`` (storage, artifacts, registry, config, classes, NAIP, logging);
``inference`` on core; ``training`` on core and inference (it measures the served path);
``observability`` on core and inference; ``setup`` (the CLI and the dev tools) above all. Every
import counts, also the ones inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "inference", "training", "observability", "setup")
#: What each layer may import, besides itself.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "inference": {"core"},
    "training": {"core", "inference"},
    "observability": {"core", "inference"},
    "setup": {"core", "inference", "training", "observability"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                out[_module_name(path)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Project modules that ``name`` imports: ``from a import b`` counts as ``a.b`` when that is a module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target != name:
                yield target


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: set(_imports(name, path, known)) for name, path in known.items()}


def test_layers_import_downward_only() -> None:
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        for target in targets
        if (layer := source.split(".")[0]) != (other := target.split(".")[0]) and other not in ALLOWED[layer]
    )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    # Package __init__ modules re-export their children; an edge child -> own package is not a cycle.
    for source in graph:
        graph[source] = {t for t in graph[source] if not source.startswith(t + ".")}
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_graph_sees_the_imports_it_checks() -> None:
    # A test that cannot fail is no test: the parser must find known edges, lazy ones included.
    graph = _graph()
    assert "core.storage" in graph["core.artifacts"]
    assert "core.naip" in graph["inference.predict"]
    assert any(t.startswith("training.") for t in graph["setup.cli"])
