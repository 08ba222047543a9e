"""The README's code examples run exactly as printed."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example(name: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- example:{re.escape(name)} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no example {name!r}"
    return m.group(1)


def test_generic_export_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example("generic-export"), "README.md:generic-export", "exec"), {"__name__": "example"})
    import json

    graphs = json.loads((tmp_path / "own.bundle" / "manifest.json").read_text())["graphs"]
    assert len(graphs) == 3
    # stage 2 reads a map that stage 0 made: the skip crossed exit 1's graph
    from_stage0 = set(graphs[0]["cache_outputs"]) & set(graphs[2]["inputs"])
    assert from_stage0 and not from_stage0 & set(graphs[1]["inputs"])
    assert "stage2.onnx" in capsys.readouterr().out


def test_validate_bundle_example(tmp_path, monkeypatch, capsys):
    """The validation example, run after the generic export in the same namespace."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "example"}
    exec(compile(readme_example("generic-export"), "README.md:generic-export", "exec"), namespace)
    exec(compile(readme_example("validate-bundle"), "README.md:validate-bundle", "exec"), namespace)
    import json

    stored = json.loads((tmp_path / "own.bundle" / "manifest.json").read_text())["validation"]["table"]
    assert [row.to_dict() for row in namespace["table"]] == stored  # the very table the export measured
    assert f"{len(stored)} checks passed" in capsys.readouterr().out
