"""The package's import graph goes one way (docs/architecture.md): no cycle
between its parts, the numerical core imports nothing from the model layer, and
`data` imports nothing from either."""

from __future__ import annotations

import ast
from pathlib import Path

import pollux

SRC = Path(pollux.__file__).resolve().parent
PARTS = {
    p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()
}


def _imports_of(path: Path) -> set[str]:
    """First-level parts of pollux that ``path`` imports (lazy imports included,
    ``if TYPE_CHECKING:`` blocks left out)."""
    rel = path.relative_to(SRC).with_suffix("")
    package = list(rel.parts[:-1])  # the package that relative imports start from
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            test = node.test
            name = (
                test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            )
            if name == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node):
            for alias in node.names:
                bits = alias.name.split(".")
                if bits[0] == "pollux":
                    found.add(bits[1] if len(bits) > 1 else "__init__")

        def visit_ImportFrom(self, node):
            if node.level == 0:
                bits = (node.module or "").split(".")
                if bits[0] != "pollux":
                    return
                target = bits[1:]
            else:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # "from . import x" at the top level: a part, or a name of __init__
                found.update(
                    a.name if a.name in PARTS else "__init__" for a in node.names
                )

    Visitor().visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        part = rel.parts[0].removesuffix(".py")
        targets = _imports_of(path) - {part}
        graph.setdefault(part, set()).update(targets)
    return graph


def test_no_import_cycle_between_parts():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_core_and_data_stay_below_the_model_layer():
    graph = _graph()
    assert graph["core"] <= {"_params"}, graph["core"]
    assert graph["data"] <= {"_params"}, graph["data"]
    assert "models" not in graph["core"] and "models" not in graph["data"]
