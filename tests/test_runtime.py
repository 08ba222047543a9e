"""The torch-free runtime (issue 4): ExitChain against PyTorch and against its own full logits.

Two bundles are exported once per module: a random 'tiny' RANet (3 exits, logits scaled up so
softmax confidences spread) and the officially trained width-8 CIFAR-10 checkpoint (6 exits,
realistic confidences).
"""
from __future__ import annotations

import math
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")  # the export extra: skipped in the lean install

from runtime_bundles import images

from ranet_edge.errors import CalibrationError, InputError
from ranet_edge.runtime import ExitChain, OperatingPoint, save_point


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def torch_logits(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(x))]


def reference_decisions(logits: list[np.ndarray], thresholds, temperatures=None):
    """First exit whose max softmax reaches its threshold; the last exit always accepts."""
    k_exits = len(logits)
    temps = temperatures or [1.0] * k_exits
    probs = [softmax(z, t) for z, t in zip(logits, temps)]
    n = logits[0].shape[0]
    exits = np.empty(n, np.int64)
    for i in range(n):
        exits[i] = next((k for k in range(k_exits - 1) if probs[k][i].max() >= thresholds[k]), k_exits - 1)
    chosen = np.stack([probs[k][i] for i, k in enumerate(exits)])
    return exits, chosen.argmax(1), chosen.max(1), chosen


def assert_same_prediction(pred, exits, labels, conf, probs=None, rtol=1e-5):
    np.testing.assert_array_equal(pred.exits, exits)
    np.testing.assert_array_equal(pred.labels, labels)
    np.testing.assert_allclose(pred.confidences, conf, rtol=rtol, atol=1e-7)
    if probs is not None:
        np.testing.assert_allclose(pred.probabilities, probs, rtol=rtol, atol=1e-7)


def assert_predictions_equal(a, b):
    for field in ("labels", "exits", "confidences", "probabilities"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


# --------------------------------------------------------------------------- run_all
@pytest.mark.parametrize("which", ["tiny", "w8"])
@pytest.mark.parametrize("batch", [1, 5])
def test_run_all_equals_pytorch(request, which, batch):
    model, _ = request.getfixturevalue(which)
    chain = request.getfixturevalue(f"{which}_chain")
    x = images(batch, seed=batch)
    got, want = chain.run_all(x), torch_logits(model, x)
    assert len(got) == len(want) == chain.num_exits
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == np.float32
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), f"exit {k}"


def test_session_providers_are_reported(tiny_chain):
    assert tiny_chain.session_providers == [["CPUExecutionProvider"]] * len(tiny_chain.graphs)


# --------------------------------------------------------------------------- predict
@pytest.mark.parametrize("which", ["tiny", "w8"])
def test_predict_matches_full_logits_for_random_thresholds(request, which):
    chain = request.getfixturevalue(f"{which}_chain")
    x = images(48, seed=3)
    logits = chain.run_all(x)
    conf = [softmax(z).max(1) for z in logits]
    k_exits = chain.num_exits
    rng = np.random.default_rng(4)
    used: set[int] = set()
    for trial in range(30):
        # thresholds at random quantiles of each exit's confidences, so every exit gets traffic
        t = [float(np.quantile(conf[k], rng.uniform(0.0, 1.0))) for k in range(k_exits - 1)]
        t = [min(1.0, max(0.0, v + 1e-6)) for v in t]  # off the sample values: no float ties
        if trial % 3 == 1:
            t = t + [float(rng.uniform())]  # K values: the last one is ignored
        if trial == 0:
            t = [1.0] * (k_exits - 1)  # only the last exit
        if trial == 2:
            t = [0.0] * (k_exits - 1)  # everything leaves at exit 0
        pred = chain.predict(x, t)
        exits, labels, c, p = reference_decisions(logits, t)
        assert_same_prediction(pred, exits, labels, c, p)
        assert pred.labels.dtype == np.int64 and pred.exits.dtype == np.int64
        assert pred.confidences.dtype == np.float32 and pred.probabilities.shape == (48, logits[0].shape[1])
        used |= set(exits.tolist())
    assert used == set(range(k_exits))


def _mixed_thresholds(chain, x):
    conf = [softmax(z).max(1) for z in chain.run_all(x)]
    return [float(np.quantile(c, 0.6)) + 1e-6 for c in conf[:-1]]


def test_batch_of_64_equals_64_single_runs(w8_chain):
    x = images(64, seed=5)
    t = _mixed_thresholds(w8_chain, x)
    batch = w8_chain.predict(x, t)
    assert len(set(batch.exits.tolist())) >= 3, np.bincount(batch.exits)
    singles = [w8_chain.predict(x[i:i + 1], t) for i in range(64)]
    np.testing.assert_array_equal(batch.exits, np.concatenate([s.exits for s in singles]))
    np.testing.assert_array_equal(batch.labels, np.concatenate([s.labels for s in singles]))
    np.testing.assert_allclose(batch.confidences, np.concatenate([s.confidences for s in singles]), rtol=1e-6)
    np.testing.assert_allclose(batch.probabilities, np.concatenate([s.probabilities for s in singles]),
                               rtol=1e-6, atol=1e-8)
    # and the results come back in input order: a permuted batch gives permuted results
    perm = np.random.default_rng(6).permutation(64)
    shuffled = w8_chain.predict(np.ascontiguousarray(x[perm]), t)
    np.testing.assert_array_equal(shuffled.exits, batch.exits[perm])
    np.testing.assert_array_equal(shuffled.labels, batch.labels[perm])


def test_predict_stages_gives_predict_graph_by_graph(w8_chain):
    x = images(40, seed=8)
    t = _mixed_thresholds(w8_chain, x)
    whole = w8_chain.predict(x, t)
    stages = list(w8_chain.predict_stages(x, t))
    # one yield per graph run, stopping after the graph that decides the last sample
    assert len(stages) == whole.exits.max() + 1
    seen = np.concatenate([s.rows for s in stages])
    assert sorted(seen.tolist()) == list(range(40))  # every sample exactly once
    for g, s in enumerate(stages):
        assert set(s.exits.tolist()) <= {g}  # per-exit bundle: graph g carries exit g
        np.testing.assert_array_equal(s.exits, whole.exits[s.rows])
        np.testing.assert_array_equal(s.labels, whole.labels[s.rows])
        np.testing.assert_array_equal(s.confidences, whole.confidences[s.rows])
        np.testing.assert_array_equal(s.probabilities, whole.probabilities[s.rows])
    assert len(stages[0].rows) == (whole.exits == 0).sum() > 0

    everything_at_0 = list(w8_chain.predict_stages(x, 0.0))
    assert len(everything_at_0) == 1 and sorted(everything_at_0[0].rows.tolist()) == list(range(40))
    only_last = list(w8_chain.predict_stages(x[:1], 1.0))  # batch 1 goes through the same loop
    assert [len(s.rows) for s in only_last] == [0] * (w8_chain.num_exits - 1) + [1]
    assert only_last[0].probabilities.shape == (0, 10)
    # input and thresholds are checked at the call, not at the first next()
    with pytest.raises(CalibrationError):
        w8_chain.predict_stages(x, [2.0] * 5)
    with pytest.raises(InputError):
        w8_chain.predict_stages(x.astype(np.float64), t)


def test_thread_safety(w8_chain):
    batches = [images(n, seed=10 + n) for n in (7, 16, 23, 32)]
    t = _mixed_thresholds(w8_chain, np.concatenate(batches))
    expected = [w8_chain.predict(b, t) for b in batches]
    expected_all = [w8_chain.run_all(b) for b in batches]
    results: dict[int, list] = {i: [] for i in range(4)}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            start.wait()
            for rep in range(6):
                if rep % 3 == 2:
                    results[i].append(w8_chain.run_all(batches[i]))
                else:
                    results[i].append(w8_chain.predict(batches[i], t))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    for i in range(4):
        assert len(results[i]) == 6
        for rep, res in enumerate(results[i]):
            if rep % 3 == 2:
                for g, w in zip(res, expected_all[i]):
                    np.testing.assert_array_equal(g, w)
            else:
                assert_predictions_equal(res, expected[i])


# --------------------------------------------------------------------------- threshold forms
def test_threshold_forms(tiny_chain):
    x = images(32, seed=7)
    logits = tiny_chain.run_all(x)
    k_exits = tiny_chain.num_exits
    assert k_exits == 3
    conf = [softmax(z).max(1) for z in logits]
    t = [float(np.median(c)) + 1e-6 for c in conf[:-1]]

    short = tiny_chain.predict(x, t)
    assert_same_prediction(short, *reference_decisions(logits, t))
    assert_predictions_equal(tiny_chain.predict(x, t + [0.99]), short)
    assert_predictions_equal(tiny_chain.predict(x, tuple(t)), short)
    assert_predictions_equal(tiny_chain.predict(x, np.asarray(t)), short)

    single = float(np.median(conf[0])) + 1e-6
    assert_predictions_equal(tiny_chain.predict(x, single), tiny_chain.predict(x, [single] * (k_exits - 1)))
    assert_same_prediction(tiny_chain.predict(x, single), *reference_decisions(logits, [single] * 2))

    none = tiny_chain.predict(x)  # no default operating point: everything runs to the last exit
    assert tiny_chain.default_operating_point is None
    assert (none.exits == k_exits - 1).all()
    np.testing.assert_array_equal(none.labels, logits[-1].argmax(1))


@pytest.mark.parametrize("make", [np.float32, np.float64, np.array], ids=["float32", "float64", "0d-array"])
def test_single_numpy_threshold(tiny_chain, make):
    """A single threshold may come straight from numpy (np.quantile of float32 confidences...)."""
    x = images(16, seed=12)
    value = float(np.float32(np.median(softmax(tiny_chain.run_all(x)[0]).max(1)) + 1e-6))  # exact in float32
    assert_predictions_equal(tiny_chain.predict(x, make(value)), tiny_chain.predict(x, value))


def test_stored_operating_points(tiny_copy):
    x = images(32, seed=8)
    plain = ExitChain.load(tiny_copy, warmup=False)
    logits = plain.run_all(x)
    conf = [softmax(z).max(1) for z in logits]
    t = [float(np.median(c)) + 1e-6 for c in conf[:-1]]
    save_point(tiny_copy, "fast", OperatingPoint(thresholds=t + [-math.inf], method="test", val_accuracy=0.5,
                                                 expected_flops=1e6, expected_ms=None))
    temps = [2.0, 1.5, 1.0]
    t_cal = [float(np.median(softmax(z, tt).max(1))) + 1e-6 for z, tt in zip(logits[:-1], temps[:-1])]
    save_point(tiny_copy, "calibrated", OperatingPoint(thresholds=t_cal + [-math.inf], method="test",
                                                       val_accuracy=0.6, expected_flops=2e6, expected_ms=1.0,
                                                       temperatures=temps))
    chain = ExitChain.load(tiny_copy)
    assert set(chain.operating_points) == {"fast", "calibrated"}
    assert chain.default_operating_point == "fast"  # the first one saved

    by_name = chain.predict(x, "fast")
    assert_predictions_equal(by_name, chain.predict(x, t))
    assert_predictions_equal(chain.predict(x), by_name)  # None -> the default point
    assert_same_prediction(chain.predict(x, "calibrated"), *reference_decisions(logits, t_cal, temps))

    save_point(tiny_copy, "calibrated", chain.operating_points["calibrated"], default=True)
    chain = ExitChain.load(tiny_copy, warmup=False)
    assert chain.default_operating_point == "calibrated"
    assert_predictions_equal(chain.predict(x), chain.predict(x, "calibrated"))

    with pytest.raises(CalibrationError, match="unknown operating point"):
        chain.predict(x, "no-such-point")


@pytest.mark.parametrize("bad", [
    [0.5], [0.5, 0.5, 0.5, 0.5], [], [1.5, 0.5], [0.5, -0.1], 1.01, -0.5, [float("nan"), 0.5], "nope",
    [[0.5, 0.5]], [None, 0.5],
], ids=["too-short", "too-long", "empty", "above-1", "negative", "single-above-1", "single-negative", "nan",
        "unknown-name", "nested", "none-value"])
def test_bad_thresholds(tiny_chain, bad):
    with pytest.raises(CalibrationError):
        tiny_chain.predict(images(2, seed=9), bad)


# --------------------------------------------------------------------------- refusals
def test_preprocess(tiny_chain):
    rng = np.random.default_rng(0)
    ims = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    batch = tiny_chain.preprocess(ims)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    pre = tiny_chain.manifest.data["preprocessing"]
    mean, std = np.asarray(pre["mean"]), np.asarray(pre["std"])
    want = ((np.stack(ims) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(batch, want, rtol=1e-5, atol=1e-5)
    big = tiny_chain.preprocess([rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)])
    assert big.shape == (1, 3, 32, 32)
    assert tiny_chain.predict(batch).labels.shape == (3,)
    with pytest.raises(InputError):
        tiny_chain.preprocess([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(InputError):
        tiny_chain.preprocess([])


# --------------------------------------------------------------------------- torch-free
def test_runtime_import_leaves_torch_out():
    code = ("import sys; import ranet_edge.runtime; from ranet_edge.runtime import ExitChain; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxsim') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout, result.stdout
    assert result.stdout.strip() == "[]"


def test_graphs_with_two_exits_route_like_the_rule(tmp_path):
    """Sub-network granularity (graphs carrying two exits): predict equals the exit rule applied
    exit by exit to run_all's logits, at thresholds where a whole batch leaves in graph 0."""
    from msdnet_toy import save_random_ranet

    from ranet_edge.export.exporter import ExportSpec
    from ranet_edge.export.ranet import export_checkpoint
    from ranet_edge.runtime.decision import confidence as decision_confidence
    from ranet_edge.runtime.decision import decide

    out = tmp_path / "subnet"
    save_random_ranet("cifar10-w8", tmp_path / "w8.pt", seed=4, logit_scale=20.0)
    export_checkpoint(tmp_path / "w8.pt", out, ExportSpec(granularity="subnetwork"), log=lambda _m: None)
    chain = ExitChain.load(out)
    assert any(len(g.exits) > 1 for g in chain.graphs)
    x = images(24, seed=21)
    logits = chain.run_all(x)
    t0 = float(np.median(decision_confidence(logits[0])))  # half leave at exit 0, the rest at exit 1
    for thresholds in ([t0, 0.0, 0.5, 0.5, 0.5], 0.5, 0.0, 0.9, [0.99, 0.3, 0.9, 0.6, 0.5]):
        thr, temps = chain.resolve_thresholds(thresholds)
        want, alive = np.full(len(x), -1), np.ones(len(x), bool)
        for k, z in enumerate(logits):
            d = decide(z, thr[k], temps[k], alive)
            want[d.take], alive = k, alive & ~d.take
        got = chain.predict(x, thresholds)
        np.testing.assert_array_equal(got.exits, want)
        np.testing.assert_array_equal(got.labels, [logits[k][i].argmax() for i, k in enumerate(want)])
