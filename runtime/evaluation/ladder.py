"""A ladder of operating points: N points at even steps of expected cost (numpy only).

The cheapest rung sends every sample out at exit 0; the dearest is the most accurate
candidate of :mod:`.calibration` (the cheapest of equally accurate ones); rung ``i`` is the
most accurate candidate whose expected cost is within ``c0 + i * (c_top - c0) / (N - 1)``.
Budgets grow, so accuracy never falls along the ladder (two neighbouring rungs can hold the
same thresholds when no candidate lies between their budgets).

Rungs are stored as ordinary operating points named ``ladder-0`` .. ``ladder-(N-1)``, cheapest
first, beside the bundle's other points: ``ranet-edge serve --slo-ms`` moves along them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ranet_edge.errors import CalibrationError

from .calibration import EVERYBODY, Outcome, _candidates, _evaluate_all, for_budget, outcome

__all__ = ["PREFIX", "fit_ladder", "is_rung", "ladder_name", "ladder_names"]

PREFIX = "ladder-"
_NAME = re.compile(r"^ladder-(0|[1-9][0-9]*)$")


def ladder_name(i: int) -> str:
    """The stored name of rung ``i`` (0: the cheapest)."""
    return f"{PREFIX}{i}"


def is_rung(name: str) -> bool:
    """Whether ``name`` is a ladder rung's name (``ladder-<i>``)."""
    return _NAME.match(name) is not None


def ladder_names(points: Mapping[str, object]) -> list[str]:
    """The ladder's rungs among ``points`` (a bundle's stored points), cheapest first; [] when
    the bundle stores none.

    Raises:
        CalibrationError: the stored rungs are not ``ladder-0`` .. ``ladder-(N-1)`` without a
            gap, or fewer than 2.
    """
    found = sorted(int(m.group(1)) for m in map(_NAME.match, points) if m)
    if not found:
        return []
    if found != list(range(len(found))) or len(found) < 2:
        raise CalibrationError(f"the bundle's ladder holds rungs {found}, not 0..N-1 with N >= 2; "
                               "write it again with `ranet-edge calibrate BUNDLE --ladder N`")
    return [ladder_name(i) for i in found]


def fit_ladder(conf: np.ndarray, correct: np.ndarray, costs: np.ndarray, n: int) -> list[Outcome]:
    """``n`` outcomes at even steps of expected cost, cheapest first (see the module doc).

    Args:
        conf: (K, m) per-exit confidences on the fitting images.
        correct: (K, m) per-exit correctness.
        costs: (K,) cumulative cost of leaving at each exit (ms or FLOPs).
        n: rungs, at least 2.

    Returns:
        ``n`` outcomes; the first has every sample at exit 0, the last is the most accurate.

    Raises:
        CalibrationError: ``n`` below 2, or costs that do not grow from exit to exit.
    """
    costs = np.asarray(costs, np.float64)
    if n < 2:
        raise CalibrationError(f"a ladder needs at least 2 rungs, got {n}; pass --ladder 2 or more")
    if conf.shape[0] < 2 or not np.all(np.diff(costs) > 0):
        raise CalibrationError(f"a ladder needs at least 2 exits of growing cost, got costs {costs.tolist()}")
    k = conf.shape[0]
    bottom = outcome(conf, correct, costs, np.r_[np.zeros(k - 1), EVERYBODY])  # threshold 0: all leave at exit 0
    cands = _candidates(conf)
    acc, cost = _evaluate_all(conf, correct, costs, cands)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    top = float(cost[best].min())
    rungs = [bottom]
    for budget in np.linspace(costs[0], max(top, costs[0]), n)[1:]:
        pick = for_budget(conf, correct, costs, float(budget))
        rungs.append(pick if pick.accuracy >= rungs[-1].accuracy else rungs[-1])
    return rungs
