"""The on-device exit decision (runtime/decide.onnx) on the CPU provider, against the runtime's
rule (runtime.decision through routing.decide_exit): same exits, ties at the threshold
included, over random and adversarial logits and several batch sizes. Torch-free."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ranet_edge.runtime.capture import scan_ops
from ranet_edge.runtime.decision import confidence
from ranet_edge.runtime.decision_graph import (
    GRAPH_PATH,
    band,
    decide,
    decide_on_host,
    graph_bytes,
    left_rows,
    split,
)
from ranet_edge.runtime.routing import decide_exit


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(graph_bytes(), providers=["CPUExecutionProvider"])


def test_shipped_graph_is_the_builders_output():
    pytest.importorskip("onnx")
    from ranet_edge.export.decision_graph import build_bytes

    assert GRAPH_PATH.read_bytes() == build_bytes(), "run: python -m ranet_edge.export.decision_graph"


def test_graph_has_nothing_that_blocks_capture():
    ops = scan_ops(graph_bytes())
    assert not {"NonZero", "Compress", "Unique", "If", "Loop"} & set(ops)
    assert {"CumSum", "ScatterElements", "Gather"} <= set(ops)


def rule(z, alive, thr, temp):
    """What ExitChain's routing decides for these rows: (leaving rows, labels, conf, probs)."""
    rows = np.arange(len(z))
    # decide_exit takes "alive" as the rows an earlier exit did not take; dead rows = taken
    _, part = decide_exit(z, 0, thr, temp, rows, alive.copy())
    if part is None:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), None
    return part.rows, part.labels, part.confidences, part.probabilities


def check(session, z, alive, thr, temp):
    summary, probs, go_on = decide(session, z, alive, thr, temp)
    go, left, _, order = split(summary)
    rows, labels, conf, p = left_rows(summary, probs)
    want_rows, want_labels, want_conf, want_p = rule(z, alive, thr, temp)
    np.testing.assert_array_equal(rows, want_rows)  # same exits, same order (row order)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(conf, want_conf, rtol=2e-6)
    if want_p is not None:
        np.testing.assert_allclose(p, want_p, rtol=2e-5, atol=1e-7)
    want_go = alive & ~np.isin(np.arange(len(z)), want_rows)
    np.testing.assert_array_equal(go_on, want_go)
    assert go == want_go.sum() and left == len(want_rows)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(z)))  # a permutation
    np.testing.assert_array_equal(order[:go], np.flatnonzero(want_go))
    return summary


@pytest.mark.parametrize("n", [1, 2, 7, 64, 256])
@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_random_logits_same_exits(session, n, classes):
    rng = np.random.default_rng(n * 1000 + classes)
    for scale in (0.3, 2.0, 8.0):
        z = (rng.standard_normal((n, classes)) * scale).astype(np.float32)
        conf = confidence(z)
        for temp in (1.0, 0.7, 1.9):
            alive = rng.random(n) < 0.8
            for thr in (*np.quantile(conf, [0.1, 0.5, 0.9]), 0.0, 1.0, np.inf, -np.inf):
                check(session, z, alive, float(thr), temp)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_ties_at_the_threshold_leave(session, n):
    """Thresholds equal to a row's float32 confidence as the rule computes it (the tie leaves),
    and one ulp either side of it."""
    rng = np.random.default_rng(n)
    for classes in (10, 1000):
        z = (rng.standard_normal((n, classes)) * 3).astype(np.float32)
        alive = np.ones(n, bool)
        for temp in (1.0, 1.3):
            conf = confidence(z, temp)
            for c in conf[: min(n, 8)]:
                for thr in (c, np.nextafter(c, np.float32(2)), np.nextafter(c, np.float32(-1))):
                    check(session, z, alive, float(thr), temp)
                    near = decide(session, z, alive, float(thr), temp, exact=False)[0][2]
                    assert near > 0  # the tying row is inside the band: re-decided by the rule


def test_adversarial_rows(session):
    """Equal logits (conf exactly 1/c), one-hot huge logits (conf 1), two equal top classes,
    tiny and large magnitudes, with thresholds at those exact values."""
    c = 10
    rows = [np.zeros(c), np.full(c, 7.5), np.r_[1e4, np.zeros(c - 1)], np.r_[3.0, 3.0, np.zeros(c - 2)],
            np.r_[-1e4, np.zeros(c - 1)], np.linspace(-50, 50, c), np.full(c, -3.0) + np.arange(c) * 1e-6]
    z = np.array(rows, np.float32)
    alive = np.ones(len(z), bool)
    conf = confidence(z)
    for temp in (1.0, 0.5, 3.0):
        for thr in (*confidence(z, temp), np.float32(1 / c), np.float32(0.5), np.float32(1.0), *conf):
            check(session, z, alive, float(thr), temp)
    check(session, z, np.zeros(len(z), bool), 0.0, 1.0)  # nobody alive: nobody leaves


def test_band_holds_without_the_host(session):
    """The device's own decision (no host re-decision) already equals the rule on every row
    outside the band: the band is wide enough for this provider's exp and sum."""
    rng = np.random.default_rng(7)
    for classes in (10, 100, 1000):
        z = (rng.standard_normal((512, classes)) * rng.uniform(0.1, 10)).astype(np.float32)
        conf = confidence(z)
        for thr in np.quantile(conf, np.linspace(0.02, 0.98, 25)):
            summary, _, go_on = decide(session, z, np.ones(len(z), bool), float(thr), 1.0, exact=False)
            near = (conf >= thr * (1 - band(classes))) & (conf < thr * (1 + band(classes)))
            want = conf < np.float32(thr)
            np.testing.assert_array_equal(go_on[~near], want[~near])
            assert summary[2] >= near.sum() - 2  # the device counts (about) the same near rows


def test_host_decision_matches_rule():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((9, 10)).astype(np.float32)
    alive = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    summary, probs, go_on = decide_on_host(z, alive, 0.3, 1.0)
    rows, labels, conf, _ = left_rows(summary, probs)
    want = rule(z, alive, 0.3, 1.0)
    np.testing.assert_array_equal(rows, want[0])
    np.testing.assert_array_equal(labels, want[1])
    np.testing.assert_array_equal(conf, want[2])  # host: bit for bit
