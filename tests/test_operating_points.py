"""Operating points: the typed point, thresholds.json read and written (strict JSON, atomic,
the shipped file reproduced byte for byte), one-line errors for bad files, and resolve()
giving ExitChain its thresholds. Torch-free."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.errors import BundleError, CalibrationError
from ranet_edge.runtime import ExitChain, OperatingPoint, load_points, save_point
from ranet_edge.runtime.evaluation import calibration as cal
from ranet_edge.runtime.operating_points import FILE, NEVER, resolve, select

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / FILE).exists(), reason="no shipped bundle")


@pytest.fixture
def bundle(tmp_path) -> Path:
    return Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))


def point(**kw) -> OperatingPoint:
    base = dict(thresholds=[0.9, math.inf, 0.5, -math.inf, 0.7, -math.inf], method="test", val_accuracy=0.5,
                expected_flops=1e6, expected_ms=0.25, temperatures=[1.0, 1.5, 2.0, 1.0, 1.0, 1.2],
                provider="CPUExecutionProvider")
    return OperatingPoint(**{**base, **kw})


def test_save_and_load_round_trip(bundle):
    (bundle / FILE).unlink()
    p = point()
    assert save_point(bundle, "mine", p) == bundle / FILE
    points, default = load_points(bundle)
    assert points == {"mine": p} and default == "mine"  # the first saved is the default
    stored = json.loads((bundle / FILE).read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert stored["points"]["mine"]["thresholds"] == [0.9, NEVER, 0.5, None, 0.7, None]
    assert [p.name for p in bundle.iterdir() if p.name.endswith(".tmp")] == []
    save_point(bundle, "other", point(temperatures=None, expected_ms=None), default=True)
    points, default = load_points(bundle)
    assert set(points) == {"mine", "other"} and default == "other" and points["other"].temperatures is None


def test_the_shipped_file_is_reproduced_byte_for_byte(bundle):
    points, default = load_points(DEFAULT_BUNDLE)
    assert default in points and len(points) >= 2
    (bundle / FILE).unlink()
    for name, p in points.items():
        save_point(bundle, name, p, default=name == default)
    assert (bundle / FILE).read_bytes() == (DEFAULT_BUNDLE / FILE).read_bytes()


def test_a_failed_write_keeps_the_old_file(bundle):
    before = (bundle / FILE).read_bytes()
    with pytest.raises(ValueError):  # strict JSON: NaN is refused before anything is written
        save_point(bundle, "broken", point(expected_ms=float("nan")))
    assert (bundle / FILE).read_bytes() == before
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in DEFAULT_BUNDLE.iterdir())


def test_the_point_is_frozen_and_checked():
    p = point()
    assert isinstance(p.thresholds, tuple) and isinstance(p.temperatures, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.method = "x"
    with pytest.raises(CalibrationError, match=r"must lie in \[0, 1\], got \[1.5"):
        point(thresholds=[1.5, 0.5, 0.5, 0.5, 0.5, -math.inf])
    with pytest.raises(CalibrationError, match="last threshold must be -inf"):
        point(thresholds=[0.5] * 6)
    with pytest.raises(CalibrationError, match="one temperature > 0 per exit"):
        point(temperatures=[1.0, 2.0])
    with pytest.raises(CalibrationError, match="plain word"):
        save_point(Path("."), "a/b", p)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["points"]["p0.5"].__setitem__("speed", 3), "unknown fields ['speed'] (valid: thresholds, method"),
    (lambda d: d["points"]["p0.5"].pop("method"), "missing field points['p0.5'].method"),
    (lambda d: d["points"]["p0.5"].__setitem__("val_accuracy", "high"), "points['p0.5'].val_accuracy is 'high'"),
    (lambda d: d["points"]["p0.5"]["thresholds"].__setitem__(-1, 0.5), "last threshold must be -inf"),
    (lambda d: d["points"]["p0.5"]["thresholds"].__setitem__(0, -0.5), "must lie in [0, 1]"),
    (lambda d: d.__setitem__("default", "nope"), "the default operating point 'nope' is not stored"),
    (lambda d: d.__setitem__("points", []), "not a ranet-edge operating points file"),
])
def test_a_bad_file_is_one_line(bundle, change, fragment):
    data = json.loads((bundle / FILE).read_text())
    change(data)
    (bundle / FILE).write_text(json.dumps(data))
    for load in (load_points, lambda b: ExitChain.load(b, warmup=False)):
        with pytest.raises(BundleError) as info:
            load(bundle)
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg and msg.endswith("calibrate again"), msg


def test_fitted_from_a_calibration_outcome():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, (4, 200)).astype(np.float32)
    correct = rng.uniform(size=(4, 200)) < conf
    flops = np.array([1e6, 2e6, 3e6, 4e6])
    ms = np.array([0.1, 0.2, 0.3, 0.4])
    res = cal.outcome(conf, correct, flops, cal.paper_thresholds(conf, 0.05))  # later exits get no share
    p = OperatingPoint.fitted(res.thresholds, res.exit_counts, flops, ms, method="paper p=0.05",
                              val_accuracy=res.accuracy, temperatures=np.array([1.0, 1.1, 1.2, 1.3]))
    assert p.thresholds[-1] == -math.inf and math.inf in p.thresholds  # calibration's 1e8 read as inf
    assert [t for t in p.thresholds[:-1] if t != math.inf] == [float(t) for t in res.thresholds[:-1] if t < 1e7]
    counts = res.exit_counts
    assert p.expected_flops == pytest.approx(float((counts * flops).sum() / counts.sum()))
    assert p.expected_ms == pytest.approx(float((counts * ms).sum() / counts.sum()))
    assert p.temperatures == (1.0, 1.1, 1.2, 1.3) and p.val_accuracy == res.accuracy


def test_resolve_is_what_the_chain_predicts_with():
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    points, default = chain.operating_points, chain.default_operating_point
    k = chain.num_exits
    for spec in (None, default, "iso-accuracy-t", 0.8, [0.5] * (k - 1), [0.5] * (k - 1) + [0.1], np.float32(0.7),
                 (0.9, math.inf, 0.8, 0.7, 0.6)):
        thr, temps = resolve(spec, k, points, default)
        got_thr, got_temps = chain.resolve_thresholds(spec)
        np.testing.assert_array_equal(thr, got_thr)
        np.testing.assert_array_equal(temps, got_temps)
        assert thr[-1] == -np.inf and thr.dtype == np.float64 and temps.dtype == np.float32
    thr, temps = resolve("iso-accuracy-t", k, points, default)
    np.testing.assert_array_equal(temps, np.asarray(points["iso-accuracy-t"].temperatures, np.float32))
    thr, _ = resolve(None, k, {}, None)  # no stored point: nobody leaves early
    assert list(thr) == [np.inf] * (k - 1) + [-np.inf]
    with np.load(SAMPLE_IMAGES) as z:
        x = chain.preprocess(z["x"][:64])
    assert (chain.predict(x, thr).exits == k - 1).all()


@pytest.mark.parametrize("spec, fragment", [
    ("no-such-point", "unknown operating point 'no-such-point'; stored: iso-accuracy"),
    ([0.5, 0.5], "give 5 or 6 thresholds"),
    ([1.5] * 5, "must lie in [0, 1]"),
    (["a"] * 5, "must be numbers in [0, 1]"),
    (object(), "must be a number in [0, 1]"),
])
def test_resolve_errors(spec, fragment):
    points, default = load_points(DEFAULT_BUNDLE)
    with pytest.raises(CalibrationError) as info:
        resolve(spec, 6, points, default)
    assert fragment in str(info.value)
    if isinstance(spec, str):
        with pytest.raises(CalibrationError, match="unknown operating point"):
            select(points, spec)
