"""The ViT-with-exits example of docs/guides/models.md: it runs as printed, its bundle chains
the token sequence from graph to graph, and ``predict`` routes each image as the max-softmax
rule applied to PyTorch's own logits says."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_readme_examples import run_example

pytest.importorskip("torch")
pytest.importorskip("onnx")


def test_the_vit_example_exports_chains_and_routes_by_the_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns = run_example("vit-exits")
    manifest = json.loads((tmp_path / "vit.bundle" / "manifest.json").read_text())
    assert [g["exits"] for g in manifest["graphs"]] == [[0], [1], [2]]
    handed = manifest["graphs"][1]["tensors"]
    assert any(t["shape"][1:] == [17, 64] for t in handed.values())  # class token + 16 patches, width 64
    ref = [z.numpy() for z in ns["reference"]]
    conf = [np.exp(z - z.max(1, keepdims=True)) for z in ref]
    conf = [(c / c.sum(1, keepdims=True)).max(1) for c in conf]
    thr = [0.22, 0.17, -np.inf]
    want = np.array([next(k for k in range(3) if conf[k][i] >= thr[k]) for i in range(len(ref[0]))])
    near = np.array([any(abs(conf[k][i] - thr[k]) < 1e-5 for k in range(2)) for i in range(len(want))])
    got = ns["prediction"]
    assert (got.exits[~near] == want[~near]).all()
    assert (got.labels == np.array([ref[k][i].argmax() for i, k in enumerate(got.exits)])).all()
    assert capsys.readouterr().out.splitlines()[-1].startswith("3 ")  # the example's own line, printed last
