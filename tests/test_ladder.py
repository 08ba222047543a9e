"""`calibrate --ladder N`: N operating points at even steps of expected cost, stored as
ladder-0 .. ladder-(N-1), and the ladder the shipped bundle carries."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.cli import get_cli
from ranet_edge.errors import CalibrationError
from ranet_edge.runtime import ExitChain, OperatingPoint
from ranet_edge.runtime.evaluation import calibration as cal
from ranet_edge.runtime.evaluation.ladder import fit_ladder, is_rung, ladder_names
from ranet_edge.runtime.operating_points import load_points, save_points


def _synthetic(seed=0, n=3000, k=5):
    """Later exits are more accurate; confidence tracks correctness."""
    rng = np.random.default_rng(seed)
    skill = np.linspace(0.55, 0.9, k)
    correct = rng.random((k, n)) < skill[:, None]
    conf = np.clip(np.where(correct, 0.75, 0.45) + rng.normal(0, 0.15, (k, n)), 0.01, 0.999)
    return conf, correct


@pytest.mark.parametrize("n", [2, 5, 9])
def test_ladder_spans_exit_zero_to_most_accurate_at_even_budgets(n):
    conf, correct = _synthetic()
    costs = np.array([1.0, 1.8, 2.5, 3.1, 3.6])
    rungs = fit_ladder(conf, correct, costs, n)
    assert len(rungs) == n
    assert rungs[0].exit_counts.tolist() == [conf.shape[1], 0, 0, 0, 0] and rungs[0].expected_cost == costs[0]
    acc_all, cost_all = cal._evaluate_all(conf, correct, costs, cal._candidates(conf))
    assert rungs[-1].accuracy == acc_all.max()
    budgets = np.linspace(costs[0], cost_all[acc_all >= acc_all.max() - 1e-12].min(), n)
    for r, b in zip(rungs, budgets, strict=True):
        assert r.expected_cost <= b + 1e-9
        # the most accurate candidate within the budget, and nothing above its accuracy fits
        assert r.accuracy >= acc_all[cost_all <= b + 1e-9].max() - 1e-12 or r is rungs[0]
    accs = [r.accuracy for r in rungs]
    assert accs == sorted(accs) and accs[-1] > accs[0]


def test_ladder_refuses_bad_sizes():
    conf, correct = _synthetic(n=50)
    with pytest.raises(CalibrationError, match="at least 2 rungs"):
        fit_ladder(conf, correct, np.arange(1.0, 6.0), 1)
    with pytest.raises(CalibrationError, match="growing cost"):
        fit_ladder(conf, correct, np.ones(5), 3)


def _point(acc: float) -> OperatingPoint:
    return OperatingPoint([0.5, -math.inf], "test", acc, 1.0, 0.1)


def test_save_points_replaces_the_ladder_and_keeps_the_rest(tmp_path):
    save_points(tmp_path, {"mine": _point(0.5), "ladder-fast": _point(0.5)})
    save_points(tmp_path, {f"ladder-{i}": _point(i / 10) for i in range(4)}, drop=is_rung)
    points, default = load_points(tmp_path)
    assert default is None and ladder_names(points) == ["ladder-0", "ladder-1", "ladder-2", "ladder-3"]
    save_points(tmp_path, {f"ladder-{i}": _point(i / 10) for i in range(2)}, drop=is_rung)
    points, _ = load_points(tmp_path)
    assert sorted(points) == ["ladder-0", "ladder-1", "ladder-fast", "mine"]
    save_points(tmp_path, {"ladder-7": _point(0.1)})
    with pytest.raises(CalibrationError, match=r"rungs \[0, 1, 7\], not 0..N-1"):
        ladder_names(load_points(tmp_path)[0])


def test_calibrate_ladder_flag_errors(tmp_path):
    run = CliRunner().invoke
    for args, msg in [(["--ladder", "1"], "at least 2 rungs"), (["--ladder", "3", "--name", "x"], "drop --name"),
                      (["--ladder", "3", "--p", "0.5"], "exactly one of")]:
        res = run(get_cli(), ["calibrate", str(tmp_path), *args])
        assert res.exit_code == 2 and msg in res.output, res.output


@pytest.mark.skipif(not (DEFAULT_BUNDLE / "thresholds.json").exists(), reason="no shipped bundle")
def test_shipped_bundle_carries_a_ladder_that_predict_follows():
    """The shipped ladder was fitted on the training run's 5,000-image validation split, like
    the bundle's other points (benchmarks/ship_default_model.sh), which a clone does not have.
    What the shipped 500 images can check: the default point is still iso-accuracy, rung 0
    sends every image to exit 0, stored accuracy and ms never fall along the ladder, and on
    these images each rung's accuracy and mean FLOPs stay close to what it stores."""
    chain = ExitChain.load(DEFAULT_BUNDLE)
    names = ladder_names(chain.operating_points)
    assert len(names) >= 6 and chain.default_operating_point == "iso-accuracy"
    with np.load(SAMPLE_IMAGES) as z:
        x, y = chain.preprocess(z["x"]), z["y"]
    flops = np.asarray(chain.manifest.exit_costs("flops"), np.float64)
    points = [chain.operating_points[name] for name in names]
    for name, point in zip(names, points):
        res = chain.predict(x, name)
        assert float((res.labels == y).mean()) == pytest.approx(point.val_accuracy, abs=0.03), name
        assert float(flops[res.exits].mean()) == pytest.approx(point.expected_flops, rel=0.06), name
    assert chain.predict(x, names[0]).exits.max() == 0
    assert points[0].expected_flops == pytest.approx(flops[0], rel=1e-9)
    accs = [p.val_accuracy for p in points]
    assert accs == sorted(accs) and accs[-1] > accs[0]
    ms = [p.expected_ms for p in points]
    assert ms == sorted(ms)


@pytest.mark.slow
def test_calibrate_ladder_cli_writes_rungs_and_keeps_default(tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    with np.load(SAMPLE_IMAGES) as z:
        np.savez(tmp_path / "val.npz", x=z["x"][:200], y=z["y"][:200])
    res = CliRunner().invoke(get_cli(), ["calibrate", str(bundle), "--ladder", "4", "--data",
                                         str(tmp_path / "val.npz"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output[res.output.index("{"):])
    assert [r["name"] for r in rep["ladder"]] == ["ladder-0", "ladder-1", "ladder-2", "ladder-3"]
    assert rep["default"] == "iso-accuracy" and rep["val_images"] == 200
    points, default = load_points(bundle)
    assert default == "iso-accuracy" and ladder_names(points) == [r["name"] for r in rep["ladder"]]
    assert {"iso-accuracy", "iso-accuracy-t", "p0.5"} <= set(points)
    ms = [r["expected_ms"] for r in rep["ladder"]]
    assert ms == sorted(ms) and rep["ladder"][0]["exit_counts"][0] == 200
