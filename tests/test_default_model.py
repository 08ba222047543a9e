"""The shipped default model: its bundle is exactly what exporting its checkpoint gives,
and its exits really differ in confidence."""
from __future__ import annotations

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, DEFAULT_CHECKPOINT, SAMPLE_IMAGES

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="this checkout ships no default model")


def test_shipped_bundle_is_the_export_of_the_shipped_checkpoint(tmp_path):
    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_checkpoint

    export_checkpoint(DEFAULT_CHECKPOINT, tmp_path / "b", ExportSpec(monolithic=True), log=lambda m: None)
    for f in sorted(p.name for p in (tmp_path / "b").iterdir()):
        shipped = DEFAULT_BUNDLE / f
        assert shipped.exists(), f
        if f == "manifest.json":  # the validation table's measured differences may vary in the last bits
            import json

            a, b = json.loads(shipped.read_text()), json.loads((tmp_path / "b" / f).read_text())
            a.pop("validation"), b.pop("validation")
            a["model"].pop("checkpoint"), b["model"].pop("checkpoint")
            assert a == b
        else:
            assert shipped.read_bytes() == (tmp_path / "b" / f).read_bytes(), f


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
