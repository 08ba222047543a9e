"""Batch buckets (shape discipline for accelerators), exercised on the CPU provider with
bucketing forced on: the same results as the unbucketed chain on both the host and the
device-resident (IOBinding) paths, and a bounded number of input shapes per graph, counted
at the ONNX Runtime calls themselves."""
from __future__ import annotations

import numpy as np
import pytest
from shape_log import ShapeLog

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import InputError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.accel import TENSORRT, check_options, graph_providers
from ranet_edge.runtime.executors.buckets import Buckets, make_buckets


@pytest.fixture(scope="module")
def x_real() -> np.ndarray:
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        return chain.preprocess(z["x"][:300])


def test_bucket_sizes():
    b = Buckets(max_batch=100)
    assert [b.size(n) for n in (1, 2, 3, 5, 37, 64, 65, 100)] == [1, 2, 4, 8, 64, 64, 100, 100]
    assert b.warm_sizes() == [1, 2, 4, 8, 16, 32, 64, 100] and b.bound() == 8
    assert Buckets(max_batch=64).warm_sizes() == [1, 2, 4, 8, 16, 32, 64]
    listed = Buckets(sizes=[8, 1, 32])
    assert [listed.size(n) for n in (1, 2, 8, 9, 32)] == [1, 8, 8, 32, 32] and listed.largest == 32
    # fixed at construction: a batch beyond the largest bucket is refused, nothing grows
    with pytest.raises(InputError, match="chunks of 32"):
        listed.size(33)
    assert listed.largest == 32 and b.size(100) == 100 and b.largest == 100
    assert Buckets(sizes=[8, 1, 32], max_batch=16).warm_sizes() == [1, 8, 16]
    rows = np.array([3, 7, 9])
    padded = Buckets(max_batch=64).pad(rows)
    assert padded.tolist() == [3, 7, 9, 9]
    assert Buckets(max_batch=64).pad(np.array([5])).tolist() == [5]


def test_make_buckets_specs():
    assert make_buckets(None, accelerator=False, max_batch=128) is None
    assert make_buckets(None, accelerator=True, max_batch=128).warm_sizes()[-1] == 128
    assert make_buckets(False, accelerator=True, max_batch=128) is None
    assert make_buckets(True, accelerator=False, max_batch=64).largest == 64
    assert make_buckets(256, accelerator=False, max_batch=128).warm_sizes()[-1] == 256
    assert make_buckets([4, 16], accelerator=False, max_batch=128).sizes == (4, 16)
    for bad in ("many", [0, 4], [1.5], 0, {"a": 1}):
        with pytest.raises(InputError):
            make_buckets(bad, accelerator=False, max_batch=128)


def test_one_max_batch_fixed_at_load(x_real):
    """max_batch is the largest bucket: chunks never exceed it, no call changes the buckets
    (a predict of 65-128 samples once raised them, shared by every thread)."""
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False, device_io=True, buckets=True)
    assert chain.max_batch == chain.buckets.largest == 128
    small = ExitChain.load(DEFAULT_BUNDLE, warmup=False, device_io=True, buckets=True, max_batch=32)
    assert small.max_batch == small.buckets.largest == 32
    log = ShapeLog.attach(small)
    res = small.predict(x_real[:100], 0.9)
    assert small.buckets.largest == 32 and max(max(s) for s in log.batch_sizes()) == 32
    np.testing.assert_array_equal(res.exits, ExitChain.load(DEFAULT_BUNDLE, warmup=False).predict(x_real[:100], 0.9).exits)
    with pytest.raises(InputError, match="largest batch bucket is 16"):
        ExitChain.load(DEFAULT_BUNDLE, warmup=False, buckets=16, max_batch=32)


def test_cpu_keeps_bucketing_off_unless_asked():
    assert ExitChain.load(DEFAULT_BUNDLE, warmup=False).buckets is None
    assert ExitChain.load(DEFAULT_BUNDLE, warmup=False, device_io=True).buckets is None
    assert ExitChain.load(DEFAULT_BUNDLE, warmup=False, buckets=32).buckets.largest == 32


@pytest.mark.parametrize("device_io", [False, True], ids=["host", "device_io"])
def test_bucketed_results_identical_and_shapes_bounded(x_real, device_io):
    plain = ExitChain.load(DEFAULT_BUNDLE, device_io=device_io, buckets=False, warmup=False)
    bucketed = ExitChain.load(DEFAULT_BUNDLE, device_io=device_io, buckets=64, warmup=False)
    seen_plain, seen_b = ShapeLog.attach(plain), ShapeLog.attach(bucketed)
    rng = np.random.default_rng(0)
    for _ in range(8):
        n = int(rng.integers(1, 65))
        x = x_real[rng.choice(len(x_real), n, replace=False)]
        t = rng.uniform(0.4, 1.0, 5).tolist()
        p, q = plain.predict(x, t), bucketed.predict(x, t)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_array_equal(p.confidences, q.confidences)
        np.testing.assert_array_equal(p.probabilities, q.probabilities)
        for a, b in zip(plain.run_all(x), bucketed.run_all(x)):
            assert a.shape == b.shape == (n, 10)
            np.testing.assert_array_equal(a, b)
    allowed = set(Buckets(max_batch=64).warm_sizes())
    for sizes in seen_b.batch_sizes():
        assert set(sizes) <= allowed, sizes
    assert max(seen_b.distinct()) <= len(allowed)
    # the counter is not vacuous: the same work unbucketed shows many more shapes
    assert max(seen_plain.distinct()) > len(allowed)
    assert sum(seen_plain.distinct()) > 2 * sum(seen_b.distinct())


def test_warmup_compiles_every_bucket_and_reports_it():
    chain = ExitChain.load(DEFAULT_BUNDLE, buckets=16, warmup=True, device_io=True)
    report = chain.load_report
    assert report.warm_sizes == (1, 2, 4, 8, 16) and report.warmup_s > 0 and report.load_s > 0
    assert report.total_s == pytest.approx(report.load_s + report.warmup_s)
    log = ShapeLog.attach(chain)  # warm-up again, this time counted at the sessions
    for b in chain.buckets.warm_sizes():
        chain.run_all(np.zeros((b, *chain.input_shape), np.float32))
    assert log.batch_sizes() == [[1, 2, 4, 8, 16]] * len(chain.graphs)
    cold = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    assert cold.load_report.warm_sizes == () and cold.load_report.warmup_s == 0


def test_shape_log_detach_restores_sessions(x_real):
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    before = [g.session for g in chain.graphs]
    log = ShapeLog.attach(chain)
    chain.predict(x_real[:1])
    assert sum(log.distinct()) >= 1
    log.detach(chain)
    assert [g.session for g in chain.graphs] == before
    chain.predict(x_real[:3])


def test_cudnn_search_mode_checked():
    check_options([("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"])
    with pytest.raises(InputError, match="EXHAUSTIVE, HEURISTIC, DEFAULT"):
        check_options([("CUDAExecutionProvider", {"cudnn_conv_algo_search": "FASTEST"})])


def test_tensorrt_profiles_and_engine_cache(tmp_path, monkeypatch):
    """TensorRT options per graph, checked against the shapes the sessions really declare."""
    monkeypatch.setenv("RANET_EDGE_CACHE", str(tmp_path))
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    sizes = Buckets(max_batch=64).warm_sizes()
    for entry, g in zip(chain.manifest.graphs, chain.graphs):
        providers = graph_providers([TENSORRT, "CPUExecutionProvider"], chain.manifest, entry, sizes)
        name, opts = providers[0]
        assert name == TENSORRT and providers[-1] == "CPUExecutionProvider"
        assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"].startswith(str(tmp_path))
        declared = {i.name: i.shape for i in g.session.get_inputs()}
        for key, batch in (("trt_profile_min_shapes", 1), ("trt_profile_opt_shapes", 64),
                           ("trt_profile_max_shapes", 64)):
            parsed = {}
            for item in opts[key].split(","):
                tensor, dims = item.rsplit(":", 1)
                parsed[tensor] = [int(d) for d in dims.split("x")]
            assert set(parsed) == set(declared)
            for tensor, dims in parsed.items():
                assert dims == [batch, *declared[tensor][1:]]
    user = graph_providers([(TENSORRT, {"trt_engine_cache_path": str(tmp_path / "mine")})],
                           chain.manifest, chain.manifest.graphs[0], sizes)
    assert user[0][1]["trt_engine_cache_path"] == str(tmp_path / "mine")
    assert graph_providers(["CPUExecutionProvider"], chain.manifest, chain.manifest.graphs[0], sizes) == [
        "CPUExecutionProvider"]
