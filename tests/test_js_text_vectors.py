"""The JavaScript driver's text vectors (js/test/fixtures/text-vectors.json) are what the Python
runtime answers today on the committed text bundle (js/test/fixtures/text-bundle): regenerated
here (torch-free: the bundle is read, not exported) and compared with the committed ones, so
they cannot rot silently. `make test-js` compares the JS driver with them (js/test/text.test.js)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "js" / "test" / "fixtures"
FIX = "regenerate them with `.venv/bin/python js/tools/make_text_vectors.py` and commit the result"


def _tool():
    spec = importlib.util.spec_from_file_location("make_text_vectors", ROOT / "js" / "tools" / "make_text_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vectors():
    committed = json.loads((FIXTURES / "text-vectors.json").read_text())
    return _tool().build(), committed


def test_the_committed_bundle_is_a_valid_text_bundle_under_1_mb():
    from ranet_edge.runtime import load_manifest

    bundle = FIXTURES / "text-bundle"
    man = load_manifest(bundle)  # sha256 of every graph checked
    assert [(i.name, i.dtype, i.axes) for i in man.inputs] == [
        ("input_ids", "int64", ("batch", "sequence")), ("attention_mask", "int64", ("batch", "sequence"))]
    assert [e.num_classes for e in man.exits] == [3, 5, 5, 5, 5] and man.preprocessing is None
    assert sum(f.stat().st_size for f in bundle.iterdir()) < 1_000_000


def test_text_vectors_current(vectors):
    fresh, committed = vectors
    for key in ("bundle", "manifest_sha256", "exit_classes", "margin"):
        assert fresh[key] == committed[key], f"text vectors field {key!r} is stale; {FIX}"
    assert [s["name"] for s in fresh["sets"]] == [s["name"] for s in committed["sets"]], FIX
    for new, old in zip(fresh["sets"], committed["sets"], strict=True):
        assert new["inputs"] == old["inputs"], FIX
        for k, (a, b) in enumerate(zip(new["logits"], old["logits"], strict=True)):
            rel = np.abs(np.subtract(a, b)).max() / np.abs(b).max()
            assert rel <= 1e-5, f"{new['name']} exit {k}: committed logits differ by {rel:.2e} relative; {FIX}"
        assert new["predictions"].keys() == old["predictions"].keys(), FIX
        for key, p in new["predictions"].items():
            q = old["predictions"][key]
            for field in ("rule", "exits", "labels", "exit_counts", "near_threshold", "anytime"):
                assert p[field] == q[field], f"{new['name']} {key}: {field} changed; {FIX}"
            assert np.allclose(p["probabilities"], q["probabilities"], rtol=0, atol=1e-6), FIX


def test_the_vectors_exercise_every_rule_and_exit_width(vectors):
    """What the JS test relies on: two sequence lengths, samples at several exits under every
    rule (patience 1 lets samples out at exit 2, never at exit 1 where the class count changes),
    probabilities padded to 5 with zeros beyond exit 0's 3 classes, labels in the exit's range."""
    fresh, _ = vectors
    assert sorted({s["length"] for s in fresh["sets"]}) == [7, 19]
    for s in fresh["sets"]:
        for key, p in s["predictions"].items():
            exits, labels = np.array(p["exits"]), np.array(p["labels"])
            counts = np.bincount(exits, minlength=5)
            assert (counts > 0).sum() >= 2, f"{s['name']} {key}: {counts}"
            if key == "patience:1":
                assert counts[:2].sum() == 0 and counts[2] > 0
            probs = np.array(p["probabilities"]).reshape(s["n"], 5)
            widths = np.array(fresh["exit_classes"])[exits]
            assert (labels < widths).all()
            assert not probs[exits == 0][:, 3:].any()
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
