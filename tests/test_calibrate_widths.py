"""Calibration of a bundle whose exits differ in class count (20 coarse classes at exit 0, 100
fine ones at exits 1-4): the labels name the fine classes, a coarse exit is scored through a
label map (fine -> coarse), and without one every calibrate form refuses in one line.

Each stored operating point is checked end to end, independently of the calibration code:
``chain.predict`` at the stored point on the fitting images, scored here (a sample at exit 0
is right when its label is the coarse class of its fine label), must give the accuracy and
exit counts calibrate reported, for ``--p``, ``--target-accuracy``, ``--rule entropy``,
``--rule patience`` and every rung of ``--ladder``; ``eval``'s anytime top-1 and budgeted runs
are scored the same way.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ranet_edge.errors import CalibrationError
from ranet_edge.runtime import ExitChain

torch = pytest.importorskip("torch")
from test_exit_rules import COUNTS, CoarseThenFine  # noqa: E402

from ranet_edge.export.exporter import ExportSpec, export_model  # noqa: E402

N = 96


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """(bundle, npz of labelled images, label map file, coarse map, images, labels). The map is
    fixed (fine class c is coarse class c // 5); 40% of the labels are the last exit's answer
    (fine exits are often right), 30% a fine class of the coarse class exit 0 answers (exit 0 is
    right there, the fine exits mostly wrong), the rest random."""
    root = tmp_path_factory.mktemp("widths")
    torch.manual_seed(0)
    bundle = root / "bundle"
    export_model(CoarseThenFine().eval(), bundle, (3, 32, 32), ExportSpec(validate_batches=(2,)), log=lambda _m: None)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    logits = chain.run_all(chain.preprocess(x))
    coarse = np.arange(100) // 5
    u = rng.random(N)
    near = 5 * logits[0].argmax(1) + rng.integers(0, 5, N)
    y = np.where(u < 0.4, logits[-1].argmax(1), np.where(u < 0.7, near, rng.integers(0, 100, N))).astype(np.int64)
    np.savez(root / "data.npz", x=x, y=y)
    (root / "map.json").write_text(json.dumps({"20": coarse.tolist()}))
    return bundle, root / "data.npz", root / "map.json", coarse, x, y


def _scored(bundle, point: str, x, y, coarse):
    """(accuracy, exit counts) of the stored ``point`` on ``x``, scored here."""
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    res = chain.predict(chain.preprocess(x), point)
    want = np.where(res.exits == 0, coarse[y], y)
    assert (res.labels[res.exits == 0] < COUNTS[0]).all()
    return float((res.labels == want).mean()), np.bincount(res.exits, minlength=len(COUNTS)).tolist()


def test_without_a_label_map_every_form_refuses_in_one_line(mixed_data, run):
    bundle, data, _, _, _, _ = mixed_data
    for extra in (["--p", "0.5"], ["--target-accuracy", "0.1", "--rule", "entropy"],
                  ["--target-accuracy", "0.1", "--rule", "patience"], ["--ladder", "3"]):
        res = run("calibrate", bundle, "--data", data, *extra)
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("error: exit 0 answers in 20 classes but the labels name the last exit's 100: scoring "
                               "it needs a mapping from those 100 classes to its 20; pass --label-map FILE"), line
    assert "thresholds.json" not in {p.name for p in bundle.iterdir()}  # nothing written


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "cannot read label map"),
    (json.dumps({"20": list(range(20))}), "'20' must list 100 whole numbers"),
    (json.dumps({"10": [0] * 100}), "maps to '10' classes, but the exits of another count than the labels' 100 have [20]"),
    (json.dumps({"20": [25] * 100}), "'20' holds class 25, outside 0..19"),
    (json.dumps("x"), "must be a JSON object or list"),
])
def test_a_bad_label_map_is_one_line(tmp_path, content, message):
    from ranet_edge.runtime.evaluation.labels import read_label_map

    path = tmp_path / "map.json"
    path.write_text(content)
    with pytest.raises(CalibrationError) as info:
        read_label_map(path, COUNTS, 100)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_plain_list_maps_the_one_other_count(tmp_path):
    from ranet_edge.runtime.evaluation.labels import exit_labels, read_label_map

    rng = np.random.default_rng(0)
    coarse, y = rng.integers(0, 20, 100), rng.integers(0, 100, 50)
    path = tmp_path / "list.json"
    path.write_text(json.dumps(coarse.tolist()))
    per_exit = exit_labels(y, COUNTS, 100, read_label_map(path, COUNTS, 100))
    np.testing.assert_array_equal(per_exit[0], coarse[y])
    assert all(e is y for e in per_exit[1:])
    with pytest.raises(CalibrationError, match="a list, but the exits have 2 class counts"):
        read_label_map(path, (10, 20, 100), 100)
    with pytest.raises(CalibrationError, match="exit 1 answers in 10 classes .* pass --label-map FILE, a JSON "
                                               r'\{"10": \[the class, among 10, of each of the 100 label classes\]\}'):
        exit_labels(y, (20, 10, 100), 100, read_label_map(tmp_path / "list.json", (20, 100), 100))


@pytest.mark.slow
def test_calibrate_scores_the_coarse_exit_through_the_map(mixed_data, run):
    bundle, data, label_map, coarse, x, y = mixed_data
    cases = {"p0.5": ["--p", "0.5", "--temperature"], "entropy-acc0.200": ["--target-accuracy", "0.2", "--rule", "entropy"],
             "patience": ["--budget-mflops", "1000", "--rule", "patience"]}
    for name, extra in cases.items():
        res = run("calibrate", bundle, "--data", data, "--label-map", label_map, "--json", *extra)
        assert res.exit_code == 0, res.output
        got = json.loads(res.output[res.output.index("{"):])
        if name != "patience":
            assert got["name"] == name
        assert got["val_images"] == N
        acc, counts = _scored(bundle, got["name"], x, y, coarse)
        assert got["exit_counts"] == counts and abs(got["val_accuracy"] - acc) < 1e-12, (name, got, acc, counts)
        assert counts[0] > 0 or name == "patience", "samples leave at the coarse exit"
    shown = run("calibrate", bundle, "--data", data, "--label-map", label_map, "--p", "0.5", "--name", "shown")
    assert shown.exit_code == 0 and f"  labels       mapped by {label_map} at exits of another class count" in shown.output
    # the coarse exit earns its credit: scored against the fine labels it would be almost always wrong
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    res = chain.predict(chain.preprocess(x), "p0.5")
    at0 = res.exits == 0
    assert (res.labels[at0] == coarse[y[at0]]).mean() > (res.labels[at0] == y[at0]).mean() + 0.2


def test_a_ladder_scores_every_rung_through_the_map(mixed_data, run):
    bundle, data, label_map, coarse, x, y = mixed_data
    res = run("calibrate", bundle, "--data", data, "--label-map", label_map, "--ladder", "3", "--json")
    assert res.exit_code == 0, res.output
    rungs = json.loads(res.output[res.output.index("{"):])["ladder"]
    assert [r["name"] for r in rungs] == ["ladder-0", "ladder-1", "ladder-2"]
    assert rungs[0]["exit_counts"][0] == N  # the cheapest rung: everything at the coarse exit
    for r in rungs:
        acc, counts = _scored(bundle, r["name"], x, y, coarse)
        assert r["exit_counts"] == counts and abs(r["val_accuracy"] - acc) < 1e-12, (r, acc, counts)
    shown = run("calibrate", bundle, "--data", data, "--label-map", label_map, "--ladder", "2")
    assert shown.exit_code == 0 and f"(labels mapped by {label_map} at exits of another class count" in shown.output


def test_exit_outputs_score_each_exit_in_its_own_classes():
    """conf_correct, anytime's top-1 and the temperatures read each exit's labels in its own
    classes (synthetic logits: exit 0 answers the coarse class, exits 1-2 the fine one)."""
    from ranet_edge.runtime.evaluation import ExitOutputs, anytime, fit_temperatures

    rng = np.random.default_rng(3)
    y = rng.integers(0, 100, 64)
    coarse = np.arange(100) // 5
    z0 = rng.standard_normal((64, 20)).astype(np.float32)
    z0[np.arange(64), coarse[y]] += 6.0  # exit 0 right on every coarse class
    z1 = rng.standard_normal((64, 100)).astype(np.float32)
    z1[np.arange(64), y] += np.where(np.arange(64) < 32, 6.0, -6.0)  # exit 1 right on the first half only
    z2 = z1.copy()
    z2[np.arange(64), y] += 12.0  # exit 2 right everywhere
    outs = ExitOutputs([z0, z1, z2], y, [coarse[y], y, y])
    _, correct = outs.conf_correct()
    assert correct.mean(axis=1).tolist() == [1.0, 0.5, 1.0]
    assert [r["top1"] for r in anytime(outs, [1, 2, 3], [0.1, 0.2, 0.3])] == [1.0, 0.5, 1.0]
    # scored against the fine labels, exit 0 would be right only where c // 5 == c (classes 0)
    assert ExitOutputs([z0, z1, z2], y).conf_correct()[1][0].mean() < 0.1
    temps = fit_temperatures([z0, z1, z2], [coarse[y], y, y])
    assert temps.shape == (3,) and (temps > 0).all()


def test_eval_scores_each_exit_and_each_budgeted_run_through_the_map(mixed_data):
    from ranet_edge.data import split_val
    from ranet_edge.tasks import DataOptions, evaluate

    bundle, data, label_map, coarse, x, y = mixed_data
    with pytest.raises(CalibrationError, match="exit 0 answers in 20 classes"):
        evaluate(bundle, DataOptions(data), threads=1)
    ev = evaluate(bundle, DataOptions(data, label_map=label_map), threads=1, batch_size=16)
    val_idx, eval_idx = split_val(N, None, 0, True)
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    xe, ye = chain.preprocess(x[eval_idx]), y[eval_idx]
    logits = chain.run_all(xe)
    for row, z, want in zip(ev.anytime, logits, [coarse[ye], ye, ye, ye, ye], strict=True):
        assert row["top1"] == float((z.argmax(1) == want).mean())
    assert ev.anytime[0]["top1"] > float((logits[0].argmax(1) == ye).mean())  # credited for coarse classes
    for row in ev.budgeted[::9]:
        res = chain.predict(xe, [t if t < 1e7 else np.inf for t in row["thresholds"][:-1]])
        assert np.bincount(res.exits, minlength=5).tolist() == row["exit_counts"]
        assert row["accuracy"] == float((res.labels == np.where(res.exits == 0, coarse[ye], ye)).mean())
