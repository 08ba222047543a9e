"""What a predict call's ``thresholds``, ``rule`` and ``patience`` resolve to: one threshold
and one temperature per exit, and the exit rule (:mod:`~ranet_edge.runtime.decision`), from a
stored operating point's name, one value, one value per exit, or the bundle's default.
:mod:`~ranet_edge.runtime.operating_points` re-exports these names; ``ExitChain`` memoises
:func:`resolve_rule` per call form (:func:`cached`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ranet_edge.errors import CalibrationError

from .decision import RULES

__all__ = ["RANGES", "cached", "check_rule", "check_thresholds", "resolve", "resolve_rule", "select"]

#: What a finite threshold is, per rule (``inf``: nobody leaves there, ``-inf``: everybody).
RANGES = {"max_prob": "in [0, 1]", "entropy": "a max entropy >= 0", "patience": "a whole number >= 1"}
_VALID = {"max_prob": lambda t: 0.0 <= t <= 1.0, "entropy": lambda t: t >= 0.0,
          "patience": lambda t: t >= 1.0 and t.is_integer()}


def check_rule(rule: Any) -> str:
    """``rule`` if it is one of :data:`~ranet_edge.runtime.decision.RULES`.

    Raises:
        CalibrationError: another value (the message lists the rules).
    """
    if rule not in RULES:
        raise CalibrationError(f"unknown exit rule {rule!r}; use one of {', '.join(RULES)}")
    return rule


def check_thresholds(values: Sequence[float], what: str = "thresholds", rule: str = "max_prob") -> None:
    """Every threshold but the last is +-inf (inf: nobody leaves there) or a finite value of
    ``rule`` (:data:`RANGES`: in [0, 1] for ``max_prob``, >= 0 for ``entropy``, a whole number
    >= 1 for ``patience``); the last is not checked (the last exit accepts every sample).

    Raises:
        CalibrationError: when one of them is NaN or a finite value out of range; the
            message names ``what``.
    """
    head = [float(v) for v in values[:-1]]
    ok = _VALID[check_rule(rule)]
    if any(math.isnan(t) or (math.isfinite(t) and not ok(t)) for t in head):
        raise CalibrationError(f"{what} must lie in [0, 1], got {head}" if rule == "max_prob" else
                               f"{what} of the {rule} rule must each be {RANGES[rule]} (or inf: nobody leaves "
                               f"there), got {head}")


def select(points: Mapping[str, Any], name: str) -> Any:
    """The stored point ``name``.

    Raises:
        CalibrationError: when no point is called ``name`` (the message lists the stored ones).
    """
    try:
        return points[name]
    except KeyError:
        stored = ", ".join(sorted(points)) or "none (run `ranet-edge calibrate`)"
        raise CalibrationError(f"unknown operating point {name!r}; stored: {stored}") from None


def resolve(spec: Any, num_exits: int, points: Mapping[str, Any],
            default: str | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`resolve_rule` for callers that decide by ``max_prob`` only: (thresholds,
    temperatures).

    Raises:
        CalibrationError: as :func:`resolve_rule`, and when ``spec`` resolves to a point of
            another rule (those thresholds mean something else).
    """
    thr, temps, rule = resolve_rule(spec, num_exits, points, default)
    if rule != "max_prob":
        raise CalibrationError(f"operating point {spec or default!r} is for the {rule!r} rule; this caller "
                               "decides by max_prob only: name a max_prob point")
    return thr, temps


def resolve_rule(spec: Any, num_exits: int, points: Mapping[str, Any], default: str | None,
                 rule: str | None = None, patience: Any = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(thresholds float64, temperatures float32, rule) for what a predict call passed, one
    value per exit each; the last threshold is -inf.

    ``spec``: None (the default point, or no early exit when there is none), a stored
    point's name (its rule and temperatures come with it), one number for every exit but the
    last, or ``num_exits - 1`` or ``num_exits`` numbers, in ``rule``'s range (:data:`RANGES`);
    ``inf`` means "nobody leaves here". ``rule``: None (the point's, else ``max_prob``) or one
    of :data:`~ranet_edge.runtime.decision.RULES`. ``patience=t`` is ``rule="patience"``
    with ``t`` as every exit's threshold. Temperatures are 1 unless a stored point carries its own.

    Raises:
        CalibrationError: an unknown rule, a point stored for another rule than ``rule``,
            ``patience`` with thresholds or another rule or not a whole number >= 1; ``spec``
            naming no stored point, not a number or a list of numbers, of the wrong count, or
            holding a value out of the rule's range.
    """
    k = num_exits
    temps = np.ones(k, np.float32)
    if rule is not None:
        check_rule(rule)
    if patience is not None:
        if rule not in (None, "patience"):
            raise CalibrationError(f"patience={patience!r} goes with rule='patience', not {rule!r}")
        if spec is not None:
            raise CalibrationError("give patience=t or patience thresholds, not both")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise CalibrationError(f"patience={patience!r} must be a whole number >= 1 (PABEE's t)")
        rule, spec = "patience", [int(patience)] * (k - 1)
    if spec is None:
        if default is None:
            if rule == "patience":
                raise CalibrationError("rule='patience' needs patience=t (a whole number >= 1)")
            return np.r_[np.full(k - 1, np.inf), -np.inf], temps, rule or "max_prob"
        spec = default
    if isinstance(spec, str):
        point = select(points, spec)
        if rule is not None and rule != point.rule:
            raise CalibrationError(f"operating point {spec!r} is for the {point.rule!r} rule, not {rule!r}; "
                                   f"give {rule} thresholds or name a point stored for {rule}")
        rule = point.rule
        if point.temperatures:
            temps = np.asarray(point.temperatures, np.float32)
        spec = point.thresholds
    rule = rule or "max_prob"
    if np.ndim(spec) == 0 and not isinstance(spec, bool):  # one value (numpy scalars too)
        try:
            spec = [float(spec)] * (k - 1)
        except (TypeError, ValueError):
            raise CalibrationError(f"threshold {spec!r} must be a number {RANGES[rule]}") from None
    try:
        t = np.asarray(list(spec), np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"thresholds {spec!r} must be numbers {RANGES[rule]}") from None
    if t.ndim != 1 or len(t) not in (k - 1, k):
        raise CalibrationError(f"give {k - 1} or {k} thresholds (one per exit, the last always "
                               f"accepts), got {len(t) if t.ndim == 1 else t.shape}")
    head = t[: k - 1]
    check_thresholds([*head.tolist(), -math.inf], rule=rule)
    return np.r_[head, -np.inf], temps, rule


def cached(cache: dict, spec: Any, rule: str | None, patience: Any, num_exits: int,
           points: Mapping[str, Any], default: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`resolve_rule`, memoised in ``cache`` for the hashable forms (a name, a value, a
    tuple/list; at most 256 of them).

    Raises:
        CalibrationError: as :func:`resolve_rule`.
    """
    key = (tuple(spec) if isinstance(spec, list) else spec, rule, patience)
    try:
        hit = cache.get(key)
    except TypeError:  # unhashable (an array): resolve every time
        return resolve_rule(spec, num_exits, points, default, rule, patience)
    if hit is None:
        hit = resolve_rule(spec, num_exits, points, default, rule, patience)
        if len(cache) < 256:
            cache[key] = hit
    return hit
