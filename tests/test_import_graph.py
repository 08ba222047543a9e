"""The modules of each package import one another without a circle, counting the imports made
at module level (``if TYPE_CHECKING:`` blocks included; imports inside functions are the
lazy ones, made on purpose)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ranet_edge.export": ROOT / "export", "ranet_edge.runtime": ROOT / "runtime",
            "ranet_edge": ROOT / "ranet_edge"}


def module_of(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            return ".".join((package, *parts))
    raise AssertionError(path)


def top_level_imports(path: Path) -> set[str]:
    """Modules ``path`` imports at module level, resolved to absolute names."""
    name = module_of(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found


def graph() -> dict[str, set[str]]:
    files = [p for folder in PACKAGES.values() for p in folder.rglob("*.py")]
    modules = {module_of(p): p for p in files}
    return {name: {m for m in top_level_imports(p) if m in modules and m != name} for name, p in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    found = cycle(graph())
    assert found is None, " -> ".join(found)


def test_the_check_sees_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", ["ranet_edge.export.write", "ranet_edge.export.exporter"])
def test_export_spec_lives_apart_from_the_exporter_and_the_writer(module):
    edges = graph()
    assert "ranet_edge.export.spec" in edges[module]
    assert "ranet_edge.export.exporter" not in edges["ranet_edge.export.write"]


def test_the_runtime_imports_nothing_of_the_cli_layer():
    """The build detection lives in the runtime; the runtime reads only ranet_edge.errors above it."""
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("ranet_edge.runtime"):
            outside = {t for t in targets if not t.startswith("ranet_edge.runtime")}
            assert outside <= {"ranet_edge", "ranet_edge.errors"}, (name, outside)
