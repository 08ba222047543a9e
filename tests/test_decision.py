"""One decision rule (issue 12): calibration's predicted exits equal the chain's, ties included.

Runs on the shipped default bundle and images (torch-free, so the lean install runs it too).
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain, OperatingPoint, decision, save_point
from ranet_edge.runtime.evaluation import ExitOutputs
from ranet_edge.runtime.evaluation import calibration as cal


@pytest.fixture(scope="module")
def shipped():
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        x, y = chain.preprocess(z["x"][:96]), z["y"][:96].astype(np.int64)
    return chain, x, ExitOutputs(chain.run_all(x), y)


def runtime_thresholds(t: np.ndarray) -> list[float]:
    """Calibration's thresholds as an operating point stores them (1e8: nobody leaves)."""
    return [float(v) if v <= 1.0 else math.inf for v in t[:-1]]


def all_paths_exits(chain: ExitChain, x: np.ndarray, thresholds) -> list[np.ndarray]:
    """The exits of the batch path, the one-sample path and predict_stages."""
    batch = chain.predict(x, thresholds).exits
    one = np.array([chain.predict(x[i:i + 1], thresholds).exits[0] for i in range(len(x))])
    staged = np.empty(len(x), np.int64)
    for part in chain.predict_stages(x, thresholds):
        staged[part.rows] = part.exits
    return [batch, one, staged]


@pytest.mark.parametrize("p", [0.25, 0.5, 1.0, 1.5])
def test_paper_thresholds_sit_on_a_sample_and_the_chain_agrees(shipped, p):
    chain, x, outs = shipped
    conf, _ = outs.conf_correct()
    assert conf.dtype == np.float32
    t = cal.paper_thresholds(conf, p)
    # the paper's thresholds are sample confidences: that sample ties and must leave there
    ties = [k for k in range(len(t) - 1) if t[k] <= 1 and (conf[k] == t[k]).any()]
    assert ties, "expected at least one threshold equal to a sample's confidence"
    expected = cal.exit_index(conf, t)
    for k in ties:
        tied = np.flatnonzero(conf[k] == t[k])
        assert (expected[tied] <= k).all()
        # The paths below must see each tied confidence to the last bit: the one-sample path runs
        # the graphs at batch 1, the batch path runs later graphs on the rows still going on. Where
        # ONNX Runtime gives a sample other last bits at another batch size (a platform's kernels,
        # not the rule), fail saying so. (Bit-equal on x86_64 and on arm64 under qemu: docs/guides/arm64.md.)
        for i in tied:
            alone = decision.confidence(chain.run_all(x[i:i + 1])[k])[0]
            assert alone == conf[k, i], (
                f"exit {k}, sample {i}: confidence {alone!r} at batch 1 but {conf[k, i]!r} in a batch of {len(x)}; "
                "this platform's ONNX Runtime kernels change the last bits with the batch size, so an exact "
                "tie cannot hold on every path")
    for got in all_paths_exits(chain, x, runtime_thresholds(t)):
        np.testing.assert_array_equal(got, expected)


def test_float64_threshold_that_rounds_onto_a_confidence(shipped):
    """A threshold just above a float32 confidence, by less than half a float32 step, is that
    confidence in float32: calibration and every chain path let the sample leave."""
    chain, x, outs = shipped
    conf, _ = outs.conf_correct()
    c = conf[0][np.argsort(conf[0])[len(x) // 2]]
    above = float(c) + float(np.spacing(c)) * 0.25
    assert above > float(c) and np.float32(above) == c
    t = np.r_[above, np.full(conf.shape[0] - 2, cal.NOBODY), cal.EVERYBODY]
    expected = cal.exit_index(conf, t)
    assert (expected[conf[0] == c] == 0).all()
    for got in all_paths_exits(chain, x, runtime_thresholds(t)):
        np.testing.assert_array_equal(got, expected)


def test_temperatures_from_an_operating_point(shipped, tmp_path):
    chain, x, outs = shipped
    temps = np.array([1.7, 0.8, 2.3, 1.1, 1.4, 1.0])[: chain.num_exits]
    conf, _ = outs.conf_correct(temps)
    t = cal.paper_thresholds(conf, 0.6)
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    save_point(bundle, "hot", OperatingPoint(thresholds=runtime_thresholds(t) + [-math.inf], method="test",
                                             val_accuracy=0.0, expected_flops=0.0, expected_ms=None,
                                             temperatures=[float(v) for v in temps]))
    loaded = ExitChain.load(bundle, warmup=False)
    expected = cal.exit_index(conf, t)
    for got in all_paths_exits(loaded, x, "hot"):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_constructed_logits_whose_confidence_is_the_threshold(temperature):
    # equal logits: confidence exactly 1/classes, at any temperature
    z = np.array([[0.0, 0.0], [3.0, 3.0], [1.0, -1.0], [-1.0, 1.0]], np.float32)
    conf = decision.confidence(z, temperature)
    assert conf.dtype == np.float32
    assert conf[0] == conf[1] == np.float32(0.5)
    for threshold in (0.5, float(conf[2])):
        decided = decision.decide(z, threshold, temperature)
        runtime_taken = decided.take
        calibrated = cal.exit_index(np.stack([conf, np.ones_like(conf)]), np.array([threshold, cal.EVERYBODY]))
        np.testing.assert_array_equal(runtime_taken, calibrated == 0)
        assert runtime_taken[conf == np.float32(threshold)].all() and (conf == np.float32(threshold)).sum() == 2
        np.testing.assert_array_equal(decided.confidences, conf[runtime_taken])
    np.testing.assert_array_equal(decision.softmax(z, temperature).max(axis=1), conf)


def test_per_row_thresholds_equal_the_scalar_rule():
    """The serving engine passes one threshold and temperature per row (rows of several
    requests): bit for bit what the scalar form gives each row; -inf takes every alive row."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (40, 10)).astype(np.float32)
    thr = rng.uniform(0.2, 1.0, 40).astype(np.float32)
    temps = rng.choice(np.array([1.0, 1.5, 0.7], np.float32), 40)
    alive = rng.random(40) > 0.2
    rows = decision.decide(z, thr, temps, alive)
    for i in range(40):
        one = decision.decide(z[i:i + 1], thr[i], temps[i], alive[i:i + 1])
        assert one.take[0] == rows.take[i]
        if one.take[0]:
            j = int(rows.take[:i].sum())
            assert one.labels[0] == rows.labels[j] and one.confidences[0] == rows.confidences[j]
            np.testing.assert_array_equal(one.probabilities[0], rows.probabilities[j])
    last = decision.decide(np.full((3, 4), np.nan, np.float32), -np.inf, 1.0, np.array([True, False, True]))
    assert last.take.tolist() == [True, False, True]  # the last exit takes every alive row, whatever its logits
    nobody = decision.decide(z, np.inf)
    assert not nobody.take.any() and nobody.probabilities.shape == (0, 10)


def test_results_place_rows_decided_out_of_order():
    """A graph with two exits lists the rows its first exit took, then its second's: every row
    of the batch at once, but not in input order (a shortcut once took them as in order)."""
    from ranet_edge.runtime.results import Results, StageRows

    r = Results(3)
    r.fill(StageRows(np.array([2, 0, 1]), np.array([7, 8, 9]), np.array([1, 0, 0]),
                     np.array([0.7, 0.8, 0.9], np.float32), np.eye(3, dtype=np.float32)))
    p = r.prediction()
    assert p.labels.tolist() == [8, 9, 7] and p.exits.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(p.confidences, np.array([0.8, 0.9, 0.7], np.float32))
