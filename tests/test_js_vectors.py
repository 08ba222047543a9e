"""The JavaScript driver's shared test vectors (js/test/fixtures) are what the Python runtime
answers today: regenerated here and compared with the committed ones, so they cannot rot
silently. (The JS tests compare the JS driver with these vectors: `make test-js`.)"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "js" / "test" / "fixtures"
FIX = "regenerate them with `.venv/bin/python js/tools/make_vectors.py` and commit the result"


def _make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", ROOT / "js" / "tools" / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    if not (COMMITTED / "vectors.json").is_file():
        pytest.skip("js/test/fixtures/vectors.json is absent: nothing to compare")
    out = tmp_path_factory.mktemp("js") / "test" / "fixtures"
    fresh = _make_vectors().build(out)
    committed = json.loads((COMMITTED / "vectors.json").read_text())
    return fresh, committed, out


def test_same_bundle_images_and_input(vectors):
    fresh, committed, _ = vectors
    for key in ["bundle", "manifest_sha256", "thresholds_sha256", "images", "input_sha256", "logits",
                "default_operating_point", "margin"]:
        assert fresh[key] == committed[key], f"vectors field {key!r} is stale; {FIX}"


def _logits(folder: Path, shape: list[int]) -> np.ndarray:
    return np.frombuffer((folder / "logits.f32").read_bytes(), "<f4").reshape(shape)


def test_logits_current(vectors):
    fresh, committed, out = vectors
    new, old = _logits(out, fresh["logits"]["shape"]), _logits(COMMITTED, committed["logits"]["shape"])
    for k in range(new.shape[0]):
        rel = np.abs(new[k] - old[k]).max() / np.abs(old[k]).max()
        assert rel <= 1e-5, f"exit {k}: committed logits differ by {rel:.2e} relative; {FIX}"


def test_predictions_current(vectors):
    fresh, committed, _ = vectors
    assert fresh["predictions"].keys() == committed["predictions"].keys(), FIX
    for key, new in fresh["predictions"].items():
        old = committed["predictions"][key]
        for field in ["exits", "labels", "exit_counts", "near_threshold"]:
            assert new[field] == old[field], f"{key}: {field} changed; {FIX}"
        assert np.allclose(new["confidences"], old["confidences"], rtol=0, atol=1e-5), f"{key}: {FIX}"


def test_image_files_current(vectors):
    fresh, committed, out = vectors
    assert fresh["files"] == committed["files"], f"decoded or fitted pixels of the fixture images changed; {FIX}"
    names = sorted(p.name for p in (COMMITTED / "images").iterdir())
    assert names == sorted(fresh["files"]), f"js/test/fixtures/images holds other files; {FIX}"
    for name in names:
        assert (out / "images" / name).read_bytes() == (COMMITTED / "images" / name).read_bytes(), f"{name}: {FIX}"


def test_cli_output_current(vectors):
    fresh, committed, _ = vectors
    assert fresh["cli"].keys() == committed["cli"].keys()
    for spec, new in fresh["cli"].items():
        old = committed["cli"][spec]
        assert new["args"] == old["args"], FIX
        new_rows, old_rows = json.loads(new["stdout"]), json.loads(old["stdout"])
        for a, b in zip(new_rows, old_rows, strict=True):
            assert {k: v for k, v in a.items() if k != "confidence"} == {k: v for k, v in b.items() if k != "confidence"}, FIX
            assert abs(a["confidence"] - b["confidence"]) <= 2e-6, FIX

