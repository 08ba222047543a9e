"""The fp16 bundle on the device-resident path (run on the CPU provider with device_io=True):
cached feature maps go from graph to graph as float16 OrtValues, with no host round trip and
no cast, and every exit stays close to fp32 on the shipped images."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("onnx")  # converting needs the export extra: skipped in the lean install

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.export.convert import convert_bundle
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.executors.device import DeviceExecutor


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "bundle"
    convert_bundle(DEFAULT_BUNDLE, out, "fp16", log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def shipped():
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"], z["y"]


def test_fp16_bundle_hands_on_float16_caches(fp16_bundle):
    manifest = json.loads((fp16_bundle / "manifest.json").read_text())
    image = manifest["preprocessing"]["input"]
    chain = ExitChain.load(fp16_bundle, warmup=False)
    for entry, g in zip(manifest["graphs"], chain.graphs):
        types = {i.name: i.type for i in g.session.get_inputs()}
        types.update({o.name: o.type for o in g.session.get_outputs()})
        for name in entry["logits"]:
            assert types[name] == "tensor(float)"  # the host reads float32 logits
        for name in entry["inputs"] + entry["cache_outputs"]:
            want = "tensor(float)" if name == image else "tensor(float16)"
            assert types[name] == want, (entry["path"], name)
            assert entry["tensors"][name]["dtype"] == ("float32" if name == image else "float16")


def test_fp16_device_path_keeps_caches_float16_on_device(fp16_bundle, shipped, monkeypatch):
    types: list[tuple[type, str]] = []
    real_run = DeviceExecutor.run

    def run(self, g, env):
        logits, out = real_run(self, g, env)
        types.extend((type(v), v.data_type()) for n, v in [*env.values.items(), *out.values.items()] if n != "image")
        return logits, out

    monkeypatch.setattr(DeviceExecutor, "run", run)
    host = ExitChain.load(fp16_bundle, warmup=False)
    dev = ExitChain.load(fp16_bundle, warmup=False, device_io=True)
    dev_b = ExitChain.load(fp16_bundle, warmup=False, device_io=True, buckets=64)
    x = host.preprocess(shipped[0][:100])
    for a, b, c in zip(host.run_all(x), dev.run_all(x), dev_b.run_all(x)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    types.clear()
    for t in (0.6, 0.9):
        p, q, r = host.predict(x, t), dev.predict(x, t), dev_b.predict(x, t)
        assert len(set(q.exits.tolist())) > 1
        for other in (q, r):
            np.testing.assert_array_equal(p.exits, other.exits)
            np.testing.assert_array_equal(p.probabilities, other.probabilities)
    assert types and all(t is ort.OrtValue and dt == "tensor(float16)" for t, dt in types)


def test_fp16_accuracy_per_exit_close_to_fp32(fp16_bundle, shipped):
    images, labels = shipped
    fp32 = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    fp16 = ExitChain.load(fp16_bundle, warmup=False, device_io=True)
    x, labels = fp32.preprocess(images[:250]), labels[:250]
    for a, b in zip(fp32.run_all(x), fp16.run_all(x)):
        acc32, acc16 = (a.argmax(1) == labels).mean(), (b.argmax(1) == labels).mean()
        assert abs(acc32 - acc16) <= 0.01
        assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()
