"""The package's import graph goes one way (docs/architecture.md).

Every import counts — at module level, inside functions (lazy) and under
``if TYPE_CHECKING:`` — because each is a dependency a reader must follow:

- no cycle between modules, nor between the package's parts;
- each layer imports only from the layers below it (`LAYERS`);
- no private name crosses from one part into another: a part's private modules
  (``pollux.fit._em``) and private names (``_helper``) are its own, and what
  two parts share lives in a module without a leading underscore.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pollux

SRC = Path(pollux.__file__).resolve().parent

#: What each part may import (besides itself). The top-level private modules
#: ``_params`` (names shared by all) and ``_jaxcache`` are parts of their own.
LAYERS = {
    "_params": set(),
    "core": {"_params"},
    "data": {"_params"},
    "transforms": {"_params", "core"},
    "observation": {"_params", "core", "transforms"},
    "io": {"_params", "data", "transforms", "observation"},
    "fit": {"_params", "core", "data", "transforms", "io"},
    "models": {"_params", "core", "data", "transforms", "observation", "io", "fit"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = ["pollux", *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` of every import of pollux in ``path`` (``name`` None for
    ``import x``); relative imports resolved."""
    module = _module_name(path)
    package = (
        module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    )
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("pollux")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "pollux":
                found += [(target, a.name) for a in node.names]
    return found


def _resolve(
    target: str, name: str | None, modules: set[str]
) -> tuple[str, str | None]:
    """``(module, name)`` with ``from package import submodule`` made a module."""
    if name is not None and f"{target}.{name}" in modules:
        return f"{target}.{name}", None
    return target, name


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str | None]]]:
    paths = list(SRC.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    edges = []
    for path in paths:
        src = _module_name(path)
        for target, name in _imports(path):
            target, name = _resolve(target, name, modules)
            graph[src].add(target)
            edges.append((src, target, name))
    return graph, edges


def _part(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "__init__"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail, nxt]
            if nxt not in state and (found := visit(nxt, [*trail, nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_no_import_cycle_between_modules():
    graph, _ = _graph()
    # A package's __init__ re-exports its modules; an import of the package from
    # one of its own modules would be a cycle through it, so it stays an edge.
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_cycle_between_parts():
    graph, _ = _graph()
    parts: dict[str, set[str]] = {}
    for src, targets in graph.items():
        parts.setdefault(_part(src), set()).update(
            _part(t) for t in targets if _part(t) != _part(src)
        )
    assert _cycle(parts) is None, " -> ".join(_cycle(parts))


def test_each_layer_imports_only_the_layers_below():
    graph, _ = _graph()
    for src, targets in graph.items():
        part = _part(src)
        if part not in LAYERS:
            continue
        above = {_part(t) for t in targets} - LAYERS[part] - {part}
        assert not above, f"{src} imports {sorted(above)}, above its layer"


def test_no_private_name_crosses_a_part():
    _, edges = _graph()
    crossing = []
    for src, target, name in edges:
        if _part(src) == _part(target) or _part(target) in {"_params", "_jaxcache"}:
            continue
        private_module = any(b.startswith("_") for b in target.split(".")[2:])
        private_name = (
            name is not None and name.startswith("_") and not name.endswith("__")
        )
        if private_module or private_name:
            crossing.append(
                f"{src} imports {target}{'' if name is None else '.' + name}"
            )
    assert not crossing, crossing


def test_the_fitting_layer_never_sees_the_model_objects():
    graph, _ = _graph()
    for src, targets in graph.items():
        if _part(src) == "fit":
            assert not any(_part(t) == "models" for t in targets), src
