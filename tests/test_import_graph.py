"""The modules of each package import one another without a circle, and the runtime imports
nothing above it.

Two readings of a module's imports: those made at module level (``if TYPE_CHECKING:``
blocks and ``try``/``if`` bodies included), which must form no circle, and every import
anywhere in the module, functions included (``ast.walk``), which the layering rules read:
an import deferred into a function is still a dependency."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ranet_edge.export": ROOT / "export", "ranet_edge.runtime": ROOT / "runtime",
            "ranet_edge": ROOT / "ranet_edge"}
#: What the runtime may import from ranet_edge outside itself.
RUNTIME_MAY_IMPORT = {"ranet_edge", "ranet_edge.errors"}


def module_of(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            return ".".join((package, *parts))
    raise AssertionError(path)


def _statements(path: Path, everywhere: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``path``: at module level (into ``if`` and ``try`` blocks),
    or with ``everywhere`` every one in the module, function bodies included."""
    tree = ast.parse(path.read_text())
    if everywhere:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def imports(path: Path, everywhere: bool = False) -> dict[str, int]:
    """Names ``path`` imports, resolved to absolute names (``from a import b`` gives ``a`` and
    ``a.b``), each with the line of its first import."""
    name = module_of(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in _statements(path, everywhere):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for n in names:
            found.setdefault(n, node.lineno)
    return found


def top_level_imports(path: Path) -> set[str]:
    """Modules ``path`` imports at module level, resolved to absolute names."""
    return set(imports(path))


def modules() -> dict[str, Path]:
    return {module_of(p): p for folder in PACKAGES.values() for p in folder.rglob("*.py")}


def graph(everywhere: bool = False) -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(p, everywhere) if m in mods and m != name} for name, p in mods.items()}


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


def test_imports_inside_functions_are_read(tmp_path, monkeypatch):
    folder = tmp_path / "runtime"
    folder.mkdir()
    (folder / "m.py").write_text("import os\n\n\ndef f():\n    from ranet_edge.doctor import x\n"
                                 "    from .plugins import select\n")
    monkeypatch.setitem(PACKAGES, "ranet_edge.runtime", folder)
    assert top_level_imports(folder / "m.py") == {"os"}
    assert imports(folder / "m.py", everywhere=True) == {
        "os": 1, "ranet_edge.doctor": 5, "ranet_edge.doctor.x": 5,
        "ranet_edge.runtime.plugins": 6, "ranet_edge.runtime.plugins.select": 6}


@pytest.mark.parametrize("module", ["ranet_edge.export.write", "ranet_edge.export.exporter"])
def test_export_spec_lives_apart_from_the_exporter_and_the_writer(module):
    edges = graph()
    assert "ranet_edge.export.spec" in edges[module]
    assert "ranet_edge.export.exporter" not in edges["ranet_edge.export.write"]


def test_convert_and_qnn_do_not_import_each_other():
    """Not even inside a function: what they share is export/int8_stages.py."""
    edges = graph(everywhere=True)
    assert "ranet_edge.export.convert" not in edges["ranet_edge.export.qnn"]
    assert "ranet_edge.export.int8_stages" in edges["ranet_edge.export.qnn"]
    assert "ranet_edge.export.int8_stages" in edges["ranet_edge.export.convert"]


def runtime_imports_above() -> list[tuple[str, int, str]]:
    """Every import of a runtime module, at module level or inside a function, of a
    ranet_edge module outside the runtime other than ranet_edge.errors: (file, line, module)."""
    mods = modules()
    found: dict[tuple[str, str], int] = {}
    for name, path in sorted(mods.items()):
        if not name.startswith("ranet_edge.runtime"):
            continue
        for target, line in imports(path, everywhere=True).items():
            if target.split(".")[0] != "ranet_edge" or target.startswith("ranet_edge.runtime"):
                continue
            # `from ranet_edge.errors import X` names ranet_edge.errors.X: judge the module it reads
            parts = target.split(".")
            module = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in mods),
                          target)
            if module not in RUNTIME_MAY_IMPORT:
                found.setdefault((path.relative_to(ROOT).as_posix(), module), line)
    return [(file, line, module) for (file, module), line in found.items()]


def test_the_runtime_imports_nothing_above_it_but_errors():
    """Nothing of the CLI layer, doctor, export or serve, at module level or in a function."""
    found = runtime_imports_above()
    assert found == [], found


def test_the_layering_check_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    folder = tmp_path / "runtime"
    folder.mkdir()
    (folder / "ok.py").write_text("from ranet_edge.errors import BundleError\nimport ranet_edge\n")
    (folder / "bad.py").write_text("def f():\n    from ranet_edge.doctor import captured_output\n")
    monkeypatch.setitem(PACKAGES, "ranet_edge.runtime", folder)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert runtime_imports_above() == [("runtime/bad.py", 2, "ranet_edge.doctor")]
