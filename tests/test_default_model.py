"""The shipped default model: its bundle is exactly what exporting its checkpoint gives, on
any CPU, and its exits really differ in confidence."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, DEFAULT_CHECKPOINT, SAMPLE_IMAGES

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="this checkout ships no default model")


def test_shipped_weights_are_the_float64_fold_of_the_shipped_checkpoint():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from fold_reference import assert_weights_are_reference, reference_fold

    expected = reference_fold(torch.load(DEFAULT_CHECKPOINT, weights_only=True)["model"])
    assert assert_weights_are_reference(DEFAULT_BUNDLE, expected) > 100


def _fixed_part(manifest: dict) -> dict:
    """The manifest without what the exporting machine measured: the differences between
    ONNX Runtime and PyTorch in the validation table depend on both libraries' CPU kernels."""
    manifest = json.loads(json.dumps(manifest))
    for row in manifest["validation"]["table"]:
        row.pop("max_abs_diff"), row.pop("max_rel_diff")
    return manifest


@pytest.mark.slow
def test_shipped_bundle_is_the_export_of_the_shipped_checkpoint(tmp_path):
    """Every graph byte for byte (its weights are the fold above, the rest is structure),
    and the manifest but for the measured differences."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_checkpoint

    export_checkpoint(DEFAULT_CHECKPOINT, tmp_path / "b", ExportSpec(monolithic=True), log=lambda m: None)
    made = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert made == sorted(p.name for p in DEFAULT_BUNDLE.iterdir() if p.name != "thresholds.json")
    for f in made:
        shipped, fresh = DEFAULT_BUNDLE / f, tmp_path / "b" / f
        if f == "manifest.json":
            assert _fixed_part(json.loads(shipped.read_text())) == _fixed_part(json.loads(fresh.read_text()))
        else:
            assert shipped.read_bytes() == fresh.read_bytes(), f


def test_default_model_is_trained():
    from ranet_edge.runtime import ExitChain

    chain = ExitChain.load(DEFAULT_BUNDLE)
    with np.load(SAMPLE_IMAGES) as z:
        x, y = chain.preprocess(z["x"]), z["y"]
    logits = chain.run_all(x)
    acc = [float((z.argmax(1) == y).mean()) for z in logits]
    # trained (chance is 0.1), and the deeper exits beat the first one on these 500 images
    assert min(acc) > 0.75 and max(acc[1:]) > acc[0]
    res = chain.predict(x, 0.9)
    assert len(set(res.exits.tolist())) >= 3  # confidences differ: samples leave at several exits
    assert chain.class_names[:3] == ["airplane", "automobile", "bird"]
