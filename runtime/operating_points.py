"""Named operating points (per-exit thresholds) stored beside the manifest."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ranet_edge.errors import BundleError, CalibrationError

from .manifest import write_json_atomic

FILE = "thresholds.json"
FORMAT = "ranet-edge-operating-points"
NEVER = 1e8  # stored for "nobody leaves here" (the paper's value): no softmax confidence reaches it


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: list[float]  # one per exit; the last is always -inf (accept everything)
    method: str  # how it was chosen, e.g. "paper p=0.5" or "budget 10 MFLOPs"
    val_accuracy: float  # on the validation split it was fitted on (fraction)
    expected_flops: float  # per image, on that split
    expected_ms: float | None  # per image, from measured cumulative stage latency
    temperatures: list[float] | None = None  # per-exit softmax temperatures, if fitted
    provider: str | None = None  # where expected_ms was measured


def _read(bundle: Path) -> dict:
    path = bundle / FILE
    if not path.exists():
        return {"format": FORMAT, "schema_version": 1, "default": None, "points": {}}
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); delete it and calibrate again") from None
    if data.get("format") != FORMAT or not isinstance(data.get("points"), dict):
        raise BundleError(f"{path} is not a ranet-edge operating points file; delete it and calibrate again")
    return data


def thresholds_to_json(thresholds: list[float]) -> list[float | None]:
    """Strict-JSON thresholds: ``inf`` ("nobody leaves here") -> 1e8, which a driver in any
    language compares like any other number; ``-inf`` (the last exit accepts all) -> null."""
    return [None if t == float("-inf") else (NEVER if t > 1.0 else float(t)) for t in thresholds]


def thresholds_from_json(values: list[float | None]) -> list[float]:
    """Inverse of :func:`thresholds_to_json` (older files that hold Infinity read the same)."""
    return [float("-inf") if t is None else (float("inf") if float(t) > 1.0 else float(t)) for t in values]


def load_points(bundle: str | os.PathLike) -> tuple[dict[str, OperatingPoint], str | None]:
    data = _read(Path(bundle))
    points = {}
    for name, d in data["points"].items():
        d = dict(d)
        d["thresholds"] = thresholds_from_json(d["thresholds"])
        points[name] = OperatingPoint(**d)
    return points, data.get("default")


def save_point(bundle: str | os.PathLike, name: str, point: OperatingPoint, default: bool = False) -> Path:
    """Add or replace ``name``; the first point saved becomes the default."""
    if not name or any(c in name for c in "/\\\n"):
        raise CalibrationError(f"operating point name {name!r} must be a plain word like 'fast'")
    bundle = Path(bundle)
    data = _read(bundle)
    d = asdict(point)
    d["thresholds"] = thresholds_to_json(point.thresholds)
    data["points"][name] = d
    if default or not data.get("default"):
        data["default"] = name
    write_json_atomic(bundle / FILE, data)
    return bundle / FILE
