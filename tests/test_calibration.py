"""Calibration: the paper's procedure against a literal loop-by-loop implementation, budgets,
targets, temperatures, and operating points stored and used by predict."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ranet_edge.errors import CalibrationError
from ranet_edge.runtime.evaluation import calibration as cal


def literal_paper(conf: np.ndarray, p: float) -> np.ndarray:
    """The official dynamic_evaluate threshold loop, sample by sample."""
    k_exits, n = conf.shape
    probs = [p ** (k + 1) for k in range(k_exits)]
    total = sum(probs)
    probs = [q / total for q in probs]
    order = [sorted(range(n), key=lambda i: -conf[k][i]) for k in range(k_exits)]
    filtered = [0] * n
    thresholds = [1e8] * k_exits
    for k in range(k_exits - 1):
        out_n = math.floor(n * probs[k])
        count = 0
        for i in range(n):
            idx = order[k][i]
            if filtered[idx] == 0:
                count += 1
                if count == out_n:
                    thresholds[k] = conf[k][idx]
                    break
        for i in range(n):
            filtered[i] += int(conf[k][i] >= thresholds[k])
    thresholds[-1] = -1e8
    return np.asarray(thresholds)


def random_conf(rng, k, n, ties=False):
    conf = rng.uniform(0.1, 1.0, (k, n))
    if ties:
        conf = np.round(conf, 1)  # many exact ties
    return conf


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_paper_thresholds_match_literal_loop(seed, ties):
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(2, 8)), int(rng.integers(5, 300))
    conf = random_conf(rng, k, n, ties)
    for p in [i / 20 for i in range(1, 40)]:
        np.testing.assert_array_equal(cal.paper_thresholds(conf, p), literal_paper(conf, p))


def test_paper_edge_cases():
    conf = np.array([[0.9, 0.8, 0.7], [0.5, 0.6, 0.7], [0.3, 0.2, 0.1]])
    # n=3, p tiny: floor(3*q1) = 3 for exit 1, then 0 left for exit 2 -> 1e8
    t = cal.paper_thresholds(conf, 0.01)
    np.testing.assert_array_equal(t, literal_paper(conf, 0.01))
    assert t[1] == cal.NOBODY
    # p large: the first share floors to 0 -> nobody leaves at exit 1
    t = cal.paper_thresholds(conf, 1.95)
    assert t[0] == cal.NOBODY and t[-1] == cal.EVERYBODY
    with pytest.raises(CalibrationError):
        cal.paper_thresholds(conf, 0.0)


def test_exit_index_and_outcome():
    conf = np.array([[0.95, 0.2], [0.5, 0.9], [0.1, 0.1]])
    correct = np.array([[True, False], [False, True], [True, True]])
    out = cal.outcome(conf, correct, np.array([1.0, 2.0, 3.0]), np.array([0.9, 0.8, -1e8]))
    assert out.exit_counts.tolist() == [1, 1, 0]
    assert out.accuracy == 1.0 and out.expected_cost == 1.5


def _synthetic(rng, n=4000, k=5):
    """Later exits are more accurate; confidence tracks correctness."""
    skill = np.linspace(0.55, 0.9, k)
    correct = rng.random((k, n)) < skill[:, None]
    conf = np.clip(np.where(correct, 0.7, 0.45) + rng.normal(0, 0.15, (k, n)), 0.05, 1.0)
    costs = np.cumsum(rng.uniform(1, 3, k))
    return conf, correct, costs


def test_budget_and_target_met_on_validation():
    rng = np.random.default_rng(1)
    conf, correct, costs = _synthetic(rng)
    for budget in np.linspace(costs[0], costs[-1], 7):
        out = cal.for_budget(conf, correct, costs, budget)
        assert out.expected_cost <= budget + 1e-9
    best_single = correct.mean(axis=1).max()
    for target in (0.6, 0.7, best_single - 0.01):
        out = cal.for_accuracy(conf, correct, costs, target)
        assert out.accuracy >= target - 1e-12
    with pytest.raises(CalibrationError, match="below the cost of the first exit"):
        cal.for_budget(conf, correct, costs, costs[0] * 0.5)
    with pytest.raises(CalibrationError, match="no operating point reaches"):
        cal.for_accuracy(conf, correct, costs, 1.01)


def test_fifty_thousand_by_eight_takes_the_paper_shares():
    # the validation-set size of an ImageNet run: every exit takes exactly floor(n * q_k) of
    # the samples left (distinct confidences), by the same rule the chain applies. How fast
    # this is is measured by benchmarks/calibration_speed.py, not asserted here.
    rng = np.random.default_rng(0)
    conf = rng.random((8, 50000))
    for p in (0.1, 0.5, 1.0, 1.9):
        t = cal.paper_thresholds(conf, p)
        share = p ** np.arange(1, 9) / (p ** np.arange(1, 9)).sum()
        counts = np.bincount(cal.exit_index(conf, t), minlength=8)
        want = np.floor(50000 * share[:-1]).astype(int)
        assert (counts[:-1] == want).all(), (p, counts, want)
        assert counts.sum() == 50000


def test_temperatures_reduce_nll_on_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    logits = rng.normal(0, 1, (2000, 10))
    logits[np.arange(2000), labels] += 1.0
    over = logits * 6.0  # overconfident
    (t,) = cal.fit_temperatures([over], labels)
    assert t > 2.0
    from ranet_edge.runtime.chain import softmax

    before = cal.expected_calibration_error(softmax(over), labels)
    after = cal.expected_calibration_error(softmax(over, t), labels)
    assert after < before
