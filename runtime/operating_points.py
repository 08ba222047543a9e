"""Operating points: named per-exit thresholds (and optional temperatures), with the exit rule
they are for, stored beside the manifest in ``thresholds.json``.

This module owns them: the typed :class:`OperatingPoint`, reading and writing the file
(strict JSON, written to a temporary path and renamed), choosing the thresholds a call asks
for (:func:`resolve`: a stored name, one value, one value per exit, or the bundle's default)
and building a point from a calibration outcome (:meth:`OperatingPoint.fitted`).
:class:`~ranet_edge.runtime.chain.ExitChain` holds the points of its bundle and asks
:func:`resolve` for the thresholds of each call.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ranet_edge.errors import BundleError, CalibrationError

from ._fields import Fields, is_num, is_str, or_none
from .decision import RULES
from .exit_rules import RANGES, check_rule, check_thresholds, resolve, resolve_rule, select  # noqa: F401  (re-exported)
from .files import write_json_atomic

__all__ = [
    "FILE", "FORMAT", "NEVER", "OperatingPoint", "check_thresholds", "load_points", "resolve", "resolve_rule",
    "save_point", "save_points", "select", "thresholds_from_json", "thresholds_to_json",
]

FILE = "thresholds.json"
FORMAT = "ranet-edge-operating-points"
NEVER = 1e8  # stored for "nobody leaves here" (the paper's value): no softmax confidence reaches it


@dataclass(frozen=True)
class OperatingPoint:
    """Per-exit thresholds and what they did on the split they were fitted on.

    Thresholds and temperatures are stored as tuples of floats whatever sequence was given.
    ``rule`` says which exit rule the thresholds are for (:mod:`~ranet_edge.runtime.decision`):
    for ``patience`` each threshold is the number of agreeing exits that exit asks for.

    Raises:
        CalibrationError: when the rule is unknown, the last threshold is not -inf, another is
            out of the rule's range (inf aside), or the temperatures are not one finite value
            > 0 per exit.
    """

    thresholds: tuple[float, ...]  # one per exit, in the rule's range (inf: nobody leaves); the last is -inf
    method: str  # how it was chosen, e.g. "paper p=0.5" or "most accurate within 10 MFLOPs"
    val_accuracy: float  # on the validation split it was fitted on (fraction)
    expected_flops: float  # per image, on that split (official cumulative counts)
    expected_ms: float | None  # per image, from measured cumulative stage latency
    temperatures: tuple[float, ...] | None = None  # per-exit softmax temperatures, if fitted
    provider: str | None = None  # where expected_ms was measured
    rule: str = "max_prob"  # the exit rule (decision.RULES); bundles that store none: max_prob

    def __post_init__(self) -> None:
        thresholds = tuple(float(t) for t in self.thresholds)
        if len(thresholds) < 1 or thresholds[-1] != -math.inf:
            raise CalibrationError(f"an operating point's last threshold must be -inf (the last exit accepts "
                                   f"every sample), got {list(thresholds)}")
        check_thresholds(thresholds, rule=self.rule)
        object.__setattr__(self, "thresholds", thresholds)
        if self.temperatures is not None:
            temps = tuple(float(t) for t in self.temperatures)
            if len(temps) != len(thresholds) or not all(t > 0 and math.isfinite(t) for t in temps):
                raise CalibrationError(f"give one temperature > 0 per exit ({len(thresholds)}), got {list(temps)}")
            object.__setattr__(self, "temperatures", temps)

    @classmethod
    def fitted(cls, thresholds: Sequence[float], exit_counts: Sequence[int], flops: Sequence[float],
               exit_ms: Sequence[float], *, method: str, val_accuracy: float,
               temperatures: Sequence[float] | None = None, provider: str | None = None,
               rule: str = "max_prob") -> OperatingPoint:
        """The point of calibration's ``thresholds`` (its 1e8 "nobody" read as inf, the last
        set to -inf), its expected cost weighted by how many images left at each exit.
        ``rule="entropy"``: ``thresholds`` are max entropies, as calibration returns them.

        Args:
            thresholds: one per exit, as :mod:`~ranet_edge.runtime.evaluation.calibration`
                returns them.
            exit_counts: images that left at each exit on the validation split.
            flops: official cumulative FLOPs to each exit.
            exit_ms: measured ms per image to each exit.

        Raises:
            CalibrationError: when a threshold lies outside [0, 1] or a temperature is not > 0.
        """
        counts = np.asarray(exit_counts)
        return cls(
            thresholds=[float(t) if t < 1e7 else math.inf for t in thresholds[:-1]] + [-math.inf], rule=rule,
            method=method, val_accuracy=float(val_accuracy),
            expected_flops=float(counts @ np.asarray(flops, np.float64) / counts.sum()),
            expected_ms=float(counts @ np.asarray(exit_ms, np.float64) / counts.sum()),
            temperatures=None if temperatures is None else [float(t) for t in temperatures], provider=provider)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (strict JSON: see :func:`thresholds_to_json`)."""
        d = {"thresholds": thresholds_to_json(self.thresholds, self.rule), "method": self.method,
             "val_accuracy": self.val_accuracy, "expected_flops": self.expected_flops,
             "expected_ms": self.expected_ms,
             "temperatures": None if self.temperatures is None else list(self.temperatures),
             "provider": self.provider}
        return d if self.rule == "max_prob" else {**d, "rule": self.rule}  # older files: max_prob

    @classmethod
    def from_dict(cls, d: Any, path: Path | str = FILE, name: str = "?") -> OperatingPoint:
        """Read the stored form of the point called ``name`` in the file ``path``.

        Raises:
            BundleError: when ``d`` is not an object, has unknown keys (the message lists the
                valid ones) or a missing or invalid value.
        """
        fix = "delete it and calibrate again"
        f = Fields(Path(path), d, f"points[{name!r}]", fix)
        valid = [x.name for x in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise BundleError(f"{path}: points[{name!r}] has unknown fields {unknown} (valid: {', '.join(valid)}); {fix}")
        try:
            rule = f("rule", lambda v: v in RULES, f"one of {', '.join(RULES)}", "max_prob")
            return cls(
                thresholds=thresholds_from_json(f("thresholds", _stored_thresholds, "a list of numbers (null: -inf)"),
                                                rule), rule=rule,
                method=f("method", is_str, "a description"), val_accuracy=f("val_accuracy", is_num, "a fraction"),
                expected_flops=f("expected_flops", is_num, "FLOPs per image"),
                expected_ms=f("expected_ms", or_none(is_num), "null or ms per image", None),
                temperatures=f("temperatures", or_none(lambda v: isinstance(v, list) and all(map(is_num, v))),
                               "null or one number per exit", None),
                provider=f("provider", or_none(is_str), "null or a provider name", None))
        except CalibrationError as exc:
            raise BundleError(f"{path}: points[{name!r}]: {exc}; {fix}") from None


def _stored_thresholds(v: Any) -> bool:
    return isinstance(v, list) and all(t is None or is_num(t) for t in v)


def thresholds_to_json(thresholds: Sequence[float], rule: str = "max_prob") -> list[float | None]:
    """Strict-JSON thresholds: ``inf`` ("nobody leaves here") -> 1e8, which a driver in any
    language compares like any other number (for ``max_prob``, anything above 1); ``-inf`` (the
    last exit accepts all) -> null."""
    top = 1.0 if rule == "max_prob" else NEVER
    return [None if t == float("-inf") else (NEVER if t > top or t == math.inf else float(t)) for t in thresholds]


def thresholds_from_json(values: Sequence[float | None], rule: str = "max_prob") -> list[float]:
    """Inverse of :func:`thresholds_to_json` (older files that hold Infinity read the same):
    null -> -inf; above 1 (``max_prob``) or from 1e8 on (the other rules) -> inf."""
    never = (lambda t: t > 1.0) if rule == "max_prob" else (lambda t: t >= NEVER)
    return [float("-inf") if t is None else (float("inf") if never(float(t)) else float(t)) for t in values]


def _read(bundle: Path) -> dict:
    path = bundle / FILE
    if not path.exists():
        return {"format": FORMAT, "schema_version": 1, "default": None, "points": {}}
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); delete it and calibrate again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("points"), dict):
        raise BundleError(f"{path} is not a ranet-edge operating points file; delete it and calibrate again")
    return data


def load_points(bundle: str | os.PathLike) -> tuple[dict[str, OperatingPoint], str | None]:
    """The operating points stored in ``bundle`` by name, and the default's name (None: none).

    A bundle without ``thresholds.json`` has none: ``({}, None)``.

    Raises:
        BundleError: when ``thresholds.json`` is not valid JSON, not an operating points file,
            holds an invalid point, or names a default it does not store.
    """
    path = Path(bundle) / FILE
    data = _read(Path(bundle))
    points = {name: OperatingPoint.from_dict(d, path, name) for name, d in data["points"].items()}
    default = Fields(path, data, "", "delete it and calibrate again")("default", or_none(is_str), "a point's name",
                                                                      None)
    if default is not None and default not in points:
        raise BundleError(f"{path}: the default operating point {default!r} is not stored; "
                          "delete it and calibrate again")
    return points, default


def save_point(bundle: str | os.PathLike, name: str, point: OperatingPoint, default: bool = False) -> Path:
    """Add or replace ``name`` (written atomically); the first point saved becomes the default,
    and ``default=True`` makes this one the default.

    Returns:
        The path of ``thresholds.json``.

    Raises:
        CalibrationError: when ``name`` is empty or holds a slash, backslash or newline.
        BundleError: when the ``thresholds.json`` already there cannot be read.
    """
    if not name or any(c in name for c in "/\\\n"):
        raise CalibrationError(f"operating point name {name!r} must be a plain word like 'fast'")
    bundle = Path(bundle)
    data = _read(bundle)
    data["points"][name] = point.to_dict()
    if default or not data.get("default"):
        data["default"] = name
    write_json_atomic(bundle / FILE, data)
    return bundle / FILE


def save_points(bundle: str | os.PathLike, points: Mapping[str, OperatingPoint],
                drop: Callable[[str], bool] = lambda _name: False) -> Path:
    """Remove the stored points whose name ``drop`` accepts, then add or replace ``points``,
    in one atomic write. The default is left as it is (none stays none).

    Returns:
        The path of ``thresholds.json``.

    Raises:
        CalibrationError: a name is empty or holds a slash, backslash or newline, or the
            default would no longer be stored.
        BundleError: when the ``thresholds.json`` already there cannot be read.
    """
    bundle = Path(bundle)
    data = _read(bundle)
    for name in points:
        if not name or any(c in name for c in "/\\\n"):
            raise CalibrationError(f"operating point name {name!r} must be a plain word like 'fast'")
    data["points"] = {k: v for k, v in data["points"].items() if not drop(k)}
    data["points"].update({name: point.to_dict() for name, point in points.items()})
    if data.get("default") is not None and data["default"] not in data["points"]:
        raise CalibrationError(f"the default operating point {data['default']!r} would be removed; make another "
                               "point the default first (`ranet-edge calibrate ... --default`)")
    write_json_atomic(bundle / FILE, data)
    return bundle / FILE
