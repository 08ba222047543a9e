"""The library behind calibrate / eval / bench / demo (ranet_edge.tasks), without the CLI."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.data import load_labelled, split_val
from ranet_edge.errors import DataError, InputError
from ranet_edge.runtime import ExitChain
from ranet_edge.tasks import Calibrated, DataOptions, Evaluation, Goal, calibrate, early_exit, evaluate


@pytest.fixture()
def bundle(tmp_path):
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    out = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, out, ignore=shutil.ignore_patterns("thresholds.json"))
    return out


def test_goal_needs_exactly_one_target():
    with pytest.raises(InputError, match="exactly one"):
        Goal()
    with pytest.raises(InputError, match="exactly one"):
        Goal(p=0.5, budget_ms=1.0)


def test_data_loading_policy():
    every = load_labelled()
    assert every.images.dtype == np.uint8 and len(every.images) == len(every.labels) == 500
    held = load_labelled(SAMPLE_IMAGES, holdout=100, seed=3)
    assert len(held.images) == 100 and held.source == str(SAMPLE_IMAGES)
    with pytest.raises(DataError, match="--holdout 501"):
        load_labelled(SAMPLE_IMAGES, holdout=501)
    fit, rest = split_val(10, 4, seed=0)
    assert len(fit) == 4 and len(rest) == 6 and not set(fit) & set(rest)
    with pytest.raises(DataError, match="--val-size 10"):
        split_val(10, 10, need_eval=True)


@pytest.mark.slow
def test_calibrate_returns_the_point_it_stores_and_the_chain_takes_its_exits(bundle):
    res = calibrate(bundle, Goal(p=0.5), DataOptions(SAMPLE_IMAGES, holdout=120), name="half")
    assert isinstance(res, Calibrated) and res.name == "half" and res.val_images == 120
    chain = ExitChain.load(bundle, warmup=False)
    assert chain.operating_points["half"].thresholds == res.point.thresholds
    labelled = load_labelled(SAMPLE_IMAGES, holdout=120)
    exits = chain.predict(chain.preprocess(labelled.images), "half").exits
    np.testing.assert_array_equal(np.bincount(exits, minlength=chain.num_exits), res.outcome.exit_counts)
    assert res.to_dict()["exit_counts"] == res.outcome.exit_counts.tolist()


@pytest.mark.slow
def test_evaluate_and_early_exit(bundle):
    ev = evaluate(bundle, DataOptions(SAMPLE_IMAGES, holdout=60), batch_size=30)
    assert isinstance(ev, Evaluation) and ev.val_images == ev.eval_images == 30
    assert len(ev.anytime) == ExitChain.load(bundle, warmup=False).num_exits and len(ev.budgeted) == 39
    assert all(sum(r["exit_counts"]) == 30 for r in ev.budgeted)
    labelled = load_labelled(SAMPLE_IMAGES, holdout=40)
    r = early_exit(DEFAULT_BUNDLE, labelled.images, labelled.labels)
    assert sum(row.images for row in r.rows) == 40
    assert r.expected_flops <= r.final_flops


def test_unseen_by_calibration_is_the_split_calibrate_did_not_fit_on():
    from ranet_edge.tasks import unseen_by_calibration

    data = DataOptions(SAMPLE_IMAGES, val_size=250)
    everything = load_labelled(SAMPLE_IMAGES)
    fit, rest = split_val(len(everything.labels), 250, 0, False)
    unseen = unseen_by_calibration(data)
    assert len(unseen.labels) == len(everything.labels) - 250
    np.testing.assert_array_equal(unseen.images, everything.images[rest])
    np.testing.assert_array_equal(unseen.labels, everything.labels[rest])
    assert not set(rest) & set(fit)
    with pytest.raises(InputError, match="val_size"):
        unseen_by_calibration(DataOptions(SAMPLE_IMAGES))


def test_bundle_info_reads_the_manifest():
    import json

    from ranet_edge.tasks import bundle_info

    rep = bundle_info(DEFAULT_BUNDLE)
    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert [r["flops"] for r in rep["exits"]] == [e["flops"] for e in manifest["exits"]]
    assert rep["total_cache_bytes_per_sample"] == sum(
        {e["graph"]: e["cache_bytes_per_sample"] for e in manifest["exits"]}.values())
    json.dumps(rep, allow_nan=False)  # what `info --json` prints
