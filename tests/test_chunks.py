"""predict and run_all process large arrays in chunks of max_batch samples: same results,
no graph run ever sees more. (Peak memory itself is measured by benchmarks/predict_memory.py,
never asserted in a test.) Torch-free: runs on the shipped bundle, in the lean install too."""
from __future__ import annotations

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import InputError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.chain import DEFAULT_MAX_BATCH
from ranet_edge.runtime.executors.host import HostExecutor
from ranet_edge.runtime.preprocess import PreprocessSpec, normalize

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no shipped bundle")


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    with np.load(SAMPLE_IMAGES) as z:
        images = z["x"][:300]
    return ExitChain.load(DEFAULT_BUNDLE, warmup=False).preprocess(images)


@pytest.mark.parametrize("device_io", [False, True])
def test_chunked_results_equal_one_run(x, device_io):
    small = ExitChain.load(DEFAULT_BUNDLE, max_batch=7, device_io=device_io)
    whole = ExitChain.load(DEFAULT_BUNDLE, max_batch=len(x), device_io=device_io)
    for a, b in zip(small.run_all(x), whole.run_all(x)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for t in (None, 0.9, "p0.5"):
        p, q = small.predict(x, t), whole.predict(x, t)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_allclose(p.probabilities, q.probabilities, rtol=1e-6, atol=1e-8)
        assert p.probabilities.shape == (len(x), 10) and p.confidences.dtype == np.float32


def test_no_graph_run_sees_more_than_max_batch(x, monkeypatch):
    chain = ExitChain.load(DEFAULT_BUNDLE, max_batch=64)
    seen: list[int] = []
    real_run = HostExecutor.run

    def run(self, g, env):
        seen.append(next(iter(env.values.values())).shape[0])
        return real_run(self, g, env)

    monkeypatch.setattr(HostExecutor, "run", run)
    chain.predict(x, 0.99)
    assert seen and max(seen) == 64
    chain.run_all(x)  # the host executor runs pre-bound plans, one per chunk size (and batch 1: the warm-up)
    assert chain.executor.plan_sizes == {1, 64, len(x) % 64}


def test_default_and_bad_max_batch():
    assert ExitChain.load(DEFAULT_BUNDLE, warmup=False).max_batch == DEFAULT_MAX_BATCH
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(InputError, match="max_batch"):
            ExitChain.load(DEFAULT_BUNDLE, max_batch=bad, warmup=False)


def test_nan_found_in_any_chunk(x):
    chain = ExitChain.load(DEFAULT_BUNDLE, max_batch=16, warmup=False)
    bad = x.copy()
    bad[-1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        chain.predict(bad)


def test_normalize_writes_the_same_bits_without_temporaries():
    spec = PreprocessSpec.for_dataset("cifar10")
    batch = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    mean = np.asarray(spec.mean, np.float32) * 255.0
    inv = 1.0 / (np.asarray(spec.std, np.float32) * 255.0)
    want = np.ascontiguousarray(((batch.astype(np.float32) - mean) * inv).transpose(0, 3, 1, 2))
    got = normalize(batch, spec)
    assert got.flags.c_contiguous and got.dtype == np.float32 and got.tobytes() == want.tobytes()
