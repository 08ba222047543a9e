"""The device-resident (IOBinding) path, exercised on the CPU provider: same results as the
numpy path, and cached tensors handed between graphs as OrtValues, never as host arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ranet_edge.assets import SAMPLE_IMAGES
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.device import DeviceRouter

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dev") / "bundle"
    export_checkpoint(DATA / "cifar10-w8-official.pth.tar", out, log=lambda m: None)
    return out


def test_device_path_matches_host_path(bundle):
    host = ExitChain.load(bundle)
    dev = ExitChain.load(bundle, device_io=True)
    assert host._router is None and dev._router is not None
    with np.load(SAMPLE_IMAGES) as z:
        x = host.preprocess(z["x"][:200])
    for a, b in zip(host.run_all(x), dev.run_all(x)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(10):
        t = rng.uniform(0.3, 1.0, 5).tolist()
        p, q = host.predict(x, t), dev.predict(x, t)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_array_equal(p.probabilities, q.probabilities)


def test_cached_tensors_stay_ortvalues(bundle, monkeypatch):
    seen: list[type] = []
    real_run, real_gather = DeviceRouter.run, DeviceRouter.gather

    def run(self, graph, feeds):
        seen.extend(type(v) for v in feeds.values())
        host, cache = real_run(self, graph, feeds)
        seen.extend(type(v) for v in cache.values())
        return host, cache

    gathered = {"n": 0}

    def gather(self, value, keep):
        gathered["n"] += 1
        assert isinstance(value, ort.OrtValue) and isinstance(keep, ort.OrtValue)
        return real_gather(self, value, keep)

    monkeypatch.setattr(DeviceRouter, "run", run)
    monkeypatch.setattr(DeviceRouter, "gather", gather)
    chain = ExitChain.load(bundle, device_io=True, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        x = chain.preprocess(z["x"][:64])
    res = chain.predict(x, 0.8)
    assert len(set(res.exits.tolist())) > 1
    assert seen and all(t is ort.OrtValue for t in seen)
    assert gathered["n"] > 0  # rows were gathered by the Gather session, not by numpy
