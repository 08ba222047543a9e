"""Thresholds for budgeted batch classification (numpy only, vectorised over samples).

Inputs are per-exit scores ``conf`` (K, n) -- the max softmax of each exit, as
``decision.confidence`` computes it, or for the ``entropy`` rule the negated entropy
(``ExitOutputs.conf_correct(rule=...)``): a sample leaves where its score reaches the
threshold -- and per-exit correctness ``correct`` (K, n) on a labelled validation set, plus
the cost of leaving at each exit (cumulative FLOPs, or measured cumulative milliseconds).
:func:`entropy_thresholds` turns thresholds on negated entropies into the max entropies an
``entropy`` operating point stores. The ``patience`` rule has no threshold to fit: each
``t`` is evaluated (:func:`patience_outcomes`) with the runtime's own ``decide``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranet_edge.errors import CalibrationError

from ..decision import decide, reaches

__all__ = [
    "EVERYBODY", "NOBODY", "Outcome", "choose_patience", "entropy_thresholds", "exit_index", "expected_calibration_error",
    "fit_temperatures", "for_accuracy", "for_budget", "outcome", "paper_thresholds", "patience_outcomes",
    "pick", "rule_exits",
]

NOBODY = 1e8  # the paper's "no sample exits here" threshold
EVERYBODY = -1e8  # the last exit's threshold


@dataclass(frozen=True)
class Outcome:
    """What a set of thresholds does on a labelled set."""

    thresholds: np.ndarray  # (K,)
    accuracy: float  # fraction correct
    expected_cost: float  # mean cost per sample, in the units of `costs`
    exit_counts: np.ndarray  # (K,) samples leaving at each exit


def paper_thresholds(conf: np.ndarray, p: float) -> np.ndarray:
    """The paper's procedure for one ``p`` (docs/reference/ranet.md, "Budgeted batch classification").

    Exit k (1-based) should take the share ``p^k / sum_j p^j`` of all n samples: among the
    samples no earlier exit took, the threshold is the confidence of the floor(n*q_k)-th
    most confident one; a count of 0, or more than are left, leaves it at 1e8.

    Returns:
        (K,) float64 thresholds, ``NOBODY`` (1e8) where no sample is to leave and
            ``EVERYBODY`` (-1e8) for the last exit.

    Raises:
        CalibrationError: when ``p`` is not above 0.
    """
    k_exits, n = conf.shape
    if p <= 0:
        raise CalibrationError(f"p={p} must be > 0 (the paper uses p = 1/20 .. 39/20)")
    powers = p ** np.arange(1, k_exits + 1, dtype=np.float64)
    share = powers / powers.sum()
    thresholds = np.full(k_exits, NOBODY, np.float64)
    taken = np.zeros(n, bool)
    for k in range(k_exits - 1):
        count = int(np.floor(n * share[k]))
        left = conf[k][~taken]
        if 0 < count <= left.size:
            # the count-th largest value among the samples left (ties do not change the value)
            thresholds[k] = np.partition(left, left.size - count)[left.size - count]
        taken |= reaches(conf[k], thresholds[k])
    thresholds[-1] = EVERYBODY
    return thresholds


def exit_index(conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """First exit whose confidence reaches its threshold (the last always accepts), by the
    runtime's own rule (``decision.reaches``: float32, ties at a threshold leave).

    Returns:
        (n,) the 0-based exit each sample leaves at (whatever ``thresholds[-1]`` holds,
            the last exit takes every sample still left).
    """
    t = np.asarray(thresholds, np.float64).copy()
    t[-1] = -np.inf
    return np.argmax(reaches(conf, t[:, None]), axis=0)


def outcome(conf: np.ndarray, correct: np.ndarray, costs: np.ndarray, thresholds: np.ndarray) -> Outcome:
    """What ``thresholds`` do on the labelled set: accuracy, mean cost per sample (``costs``
    per exit, cumulative) and how many samples leave at each exit."""
    return _outcome_of(exit_index(conf, thresholds), correct, costs, thresholds)


def _outcome_of(idx: np.ndarray, correct: np.ndarray, costs: np.ndarray, thresholds: np.ndarray) -> Outcome:
    n = correct.shape[1]
    counts = np.bincount(idx, minlength=correct.shape[0])
    acc = float(correct[idx, np.arange(n)].mean())
    cost = float(counts @ np.asarray(costs, np.float64) / n)
    return Outcome(np.asarray(thresholds, np.float64), acc, cost, counts)


def _candidates(conf: np.ndarray) -> np.ndarray:
    """Threshold sets to search over: the paper's family on a dense p grid plus one shared
    threshold for every exit (quantiles of the confidences)."""
    k = conf.shape[0]
    sets = [paper_thresholds(conf, p) for p in np.geomspace(0.02, 20.0, 160)]
    for t in np.unique(np.quantile(conf[:-1], np.linspace(0, 1, 121))):
        sets.append(np.r_[np.full(k - 1, t), EVERYBODY])
    sets.append(np.r_[np.full(k - 1, NOBODY), EVERYBODY])  # everyone to the last exit
    return np.stack(sets)


def _evaluate_all(conf, correct, costs, cands) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and expected cost of every candidate, vectorised over samples."""
    n = conf.shape[1]
    cols = np.arange(n)
    acc = np.empty(len(cands))
    cost = np.empty(len(cands))
    costs = np.asarray(costs, np.float64)
    for i, t in enumerate(cands):
        idx = exit_index(conf, t)
        acc[i] = correct[idx, cols].mean()
        cost[i] = costs[idx].mean()
    return acc, cost


def for_accuracy(conf: np.ndarray, correct: np.ndarray, costs: np.ndarray, target: float) -> Outcome:
    """The cheapest candidate whose accuracy reaches ``target`` (a fraction).

    Candidates are the paper's thresholds on a dense grid of ``p`` and one threshold shared
    by every exit (quantiles of ``conf``), so the result is the cheapest of those, not of
    every possible threshold set.

    Raises:
        CalibrationError: when no candidate reaches ``target`` (the message gives the best).
    """
    cands = _candidates(conf)
    acc, cost = _evaluate_all(conf, correct, costs, cands)
    ok = acc >= target - 1e-12
    if not ok.any():
        raise CalibrationError(f"no operating point reaches accuracy {target:.4f} on the validation set "
                               f"(best is {acc.max():.4f}); lower --target-accuracy")
    i = np.flatnonzero(ok)[np.argmin(cost[ok])]
    return outcome(conf, correct, costs, cands[i])


def for_budget(conf: np.ndarray, correct: np.ndarray, costs: np.ndarray, budget: float) -> Outcome:
    """The most accurate candidate whose expected cost is within ``budget`` (the cheapest
    of equally accurate ones), from the candidates of :func:`for_accuracy`. A budget at
    least the first exit's cost that no candidate meets sends every sample out at exit 0.

    Raises:
        CalibrationError: when ``budget`` is below the cost of the first exit.
    """
    costs = np.asarray(costs, np.float64)
    if budget < costs[0]:
        raise CalibrationError(f"budget {budget:g} is below the cost of the first exit ({costs[0]:g}); "
                               "nothing can run within it: raise the budget")
    cands = _candidates(conf)
    acc, cost = _evaluate_all(conf, correct, costs, cands)
    ok = cost <= budget + 1e-9
    if not ok.any():  # a threshold every score reaches (0 for confidences)
        floor = min(0.0, float(conf.min()))
        cands = np.r_[cands, np.r_[np.full(conf.shape[0] - 1, floor), EVERYBODY][None]]
        return outcome(conf, correct, costs, cands[-1])
    best = np.flatnonzero(ok)
    i = best[np.lexsort((cost[best], -acc[best]))[0]]
    return outcome(conf, correct, costs, cands[i])


def entropy_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """Thresholds fitted on negated entropies as the max entropies of the ``entropy`` rule:
    ``-t`` (exact in float32, so ties stay ties), ``NOBODY`` and ``EVERYBODY`` kept."""
    t = np.asarray(thresholds, np.float64)
    return np.where(np.abs(t) < 1e7, -t, t)


def rule_exits(logits: list[np.ndarray], thresholds: np.ndarray, temperatures: np.ndarray | None,
               rule: str) -> np.ndarray:
    """(n,) the exit each sample takes under ``rule``, decided by the runtime's own
    :func:`~ranet_edge.runtime.decision.decide` exit after exit (the ``patience`` streak carried)."""
    n, last = len(logits[0]), len(logits) - 1
    out, alive, state = np.full(n, last), np.ones(n, bool), None
    for k, z in enumerate(logits):
        d = decide(z, thresholds[k], 1.0 if temperatures is None else float(temperatures[k]), alive, rule, state)
        out[d.take], state = k, d.state
        alive &= ~d.take
    return out


def patience_outcomes(logits: list[np.ndarray], correct: np.ndarray, costs: np.ndarray,
                      temperatures: np.ndarray | None = None) -> list[Outcome]:
    """What the ``patience`` rule does for each ``t`` in 1 .. K-1 (larger ``t`` sends every
    sample to the last exit): accuracy, mean cost per sample and exit counts; each outcome's
    thresholds are ``[t] * (K - 1) + [-inf]``, an operating point's form."""
    k = len(logits)
    out = []
    for t in range(1, k):
        thr = np.r_[np.full(k - 1, float(t)), -np.inf]
        out.append(_outcome_of(rule_exits(logits, thr, temperatures, "patience"), correct, costs, thr))
    return out


def pick(outcomes: list[Outcome], target: float | None = None, budget: float | None = None) -> Outcome:
    """Of fixed outcomes (:func:`patience_outcomes`): the cheapest reaching accuracy ``target``,
    or the most accurate within ``budget`` (in the outcomes' cost units); ties go to the cheaper.

    Raises:
        CalibrationError: none reaches ``target``, or none fits ``budget`` (the message gives
            the best accuracy, or the lowest cost).
    """
    if target is not None:
        ok = [o for o in outcomes if o.accuracy >= target - 1e-12]
        if not ok:
            raise CalibrationError(f"no patience reaches accuracy {target:.4f} on the validation set (best is "
                                   f"{max(o.accuracy for o in outcomes):.4f}); lower --target-accuracy")
        return min(ok, key=lambda o: o.expected_cost)
    ok = [o for o in outcomes if o.expected_cost <= budget + 1e-9]
    if not ok:
        raise CalibrationError(f"no patience fits the budget {budget:g} (the cheapest costs "
                               f"{min(o.expected_cost for o in outcomes):g}); raise the budget")
    return min(ok, key=lambda o: (-o.accuracy, o.expected_cost))


def choose_patience(logits: list[np.ndarray], correct: np.ndarray, flops: np.ndarray, exit_ms: np.ndarray,
                    temperatures: np.ndarray | None = None, target: float | None = None,
                    budget_mflops: float | None = None,
                    budget_ms: float | None = None) -> tuple[Outcome, str, str, list[dict]]:
    """The ``patience`` t for one goal (exactly one of ``target``, ``budget_mflops``,
    ``budget_ms``) by :func:`pick`, as (its outcome with FLOPs as cost, method, default name,
    every t's row: ``t``, ``accuracy``, ``expected_flops``, ``expected_ms``, ``exit_counts``).

    Raises:
        CalibrationError: as :func:`pick`.
    """
    by_flops = patience_outcomes(logits, correct, flops, temperatures)
    by_ms = patience_outcomes(logits, correct, exit_ms, temperatures)
    table = [{"t": t, "accuracy": f.accuracy, "expected_flops": f.expected_cost, "expected_ms": m.expected_cost,
              "exit_counts": f.exit_counts.tolist()} for t, (f, m) in enumerate(zip(by_flops, by_ms), 1)]
    if target is not None:
        res, method = pick(by_flops, target=target), f"cheapest with val accuracy >= {target:.4f}"
    elif budget_mflops is not None:
        res = pick([Outcome(o.thresholds, o.accuracy, o.expected_cost / 1e6, o.exit_counts) for o in by_flops],
                   budget=budget_mflops)
        method = f"most accurate within {budget_mflops:g} MFLOPs"
    else:
        res, method = pick(by_ms, budget=budget_ms), f"most accurate within {budget_ms:g} ms"
    t = int(res.thresholds[0])
    return by_flops[t - 1], f"t={t}, {method}", f"patience{t}", table


def fit_temperatures(logits: list[np.ndarray], labels: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Per-exit softmax temperature minimising the validation negative log-likelihood.

    A grid search (97 temperatures from 0.25 to 8, geometric), not an optimiser: each
    temperature is one of the grid's values.

    Args:
        logits: one (n, C) array per exit.
        labels: (n,) true class indices, or one such array per exit (each in its exit's classes).

    Returns:
        (K,) one temperature per exit, to divide the logits by before the softmax.
    """
    grid = np.geomspace(0.25, 8.0, 97)
    out = []
    for k, z in enumerate(logits):
        z = z.astype(np.float64)
        y = labels[k] if isinstance(labels, list) else labels
        best, best_t = np.inf, 1.0
        for t in grid:
            s = z / t
            s = s - s.max(axis=1, keepdims=True)
            nll = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))
            if nll < best:
                best, best_t = nll, float(t)
        out.append(best_t)
    return np.asarray(out)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of one exit's (n, C) probabilities: over ``bins`` equal-width confidence bins, the
    share of samples in each times the gap between its mean confidence and its accuracy."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)
