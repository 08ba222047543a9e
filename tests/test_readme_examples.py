"""The code examples of the README and of the docs pages run exactly as printed.

An example is a ```python block right after a ``<!-- example:NAME -->`` line, in README.md or
any page under docs/. Every one runs here, in a temporary working directory; some get more
checks of what they wrote."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE = re.compile(r"<!-- example:([\w-]+) -->\s*```python\n(.*?)```", re.S)
FOLLOWS = {"validate-bundle": "generic-export"}  # runs in the namespace the other left


def examples() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for page in PAGES:
        for name, code in EXAMPLE.findall(page.read_text()):
            assert name not in found, f"example {name!r} is in {found[name][0].name} and {page.name}"
            found[name] = (page, code)
    return found


def readme_example(name: str) -> str:
    found = examples()
    assert name in found, f"no page has an example {name!r}"
    return found[name][1]


def run_example(name: str, namespace: dict | None = None) -> dict:
    page, code = examples()[name]
    for module in ("torch", "onnx", "jsonschema", "tokenizers"):
        if re.search(rf"^\s*(import|from) {module}\b", code, re.M):
            pytest.importorskip(module)
    namespace = {"__name__": "example"} if namespace is None else namespace
    exec(compile(code, f"{page.relative_to(ROOT)}:{name}", "exec"), namespace)
    return namespace


def test_the_pages_hold_their_examples():
    found = examples()
    assert {"readme-runtime"} <= {n for n, (p, _) in found.items() if p == README}
    assert {"generic-export", "validate-bundle", "getting-started", "embed-app", "load-manifest",
            "validate-schema"} <= set(found)


@pytest.mark.parametrize("name", sorted(set(examples()) - set(FOLLOWS)))
def test_example_runs(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_example(name)
    assert capsys.readouterr().out.strip(), f"example {name!r} printed nothing"


def test_generic_export_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_example("generic-export")
    graphs = json.loads((tmp_path / "own.bundle" / "manifest.json").read_text())["graphs"]
    assert len(graphs) == 3
    # stage 2 reads a map that stage 0 made: the skip crossed exit 1's graph
    from_stage0 = set(graphs[0]["cache_outputs"]) & set(graphs[2]["inputs"])
    assert from_stage0 and not from_stage0 & set(graphs[1]["inputs"])
    assert "stage2.onnx" in capsys.readouterr().out


def test_validate_bundle_example(tmp_path, monkeypatch, capsys):
    """The validation example, run after the generic export in the same namespace."""
    monkeypatch.chdir(tmp_path)
    namespace = run_example("generic-export")
    run_example("validate-bundle", namespace)
    stored = json.loads((tmp_path / "own.bundle" / "manifest.json").read_text())["validation"]["table"]
    assert [row.to_dict() for row in namespace["table"]] == stored  # the very table the export measured
    assert f"{len(stored)} checks passed" in capsys.readouterr().out


def test_readme_runtime_example_routes_per_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run_example("readme-runtime")
    exits = ns["result"].exits
    assert len(exits) == 64 and len(set(exits.tolist())) > 1  # samples of one batch leave at different exits
    assert len(ns["logits_per_exit"]) == 6
