"""The exit rules (issue 30) beyond routing: calibration of ``entropy`` thresholds and
``patience``, the serving engine's rows of several rules, the ``predict`` command, and the
deadline and ``anytime`` paths. References: tests/exit_rules_support.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from exit_rules_support import ref_entropy_exits, ref_patience_exits

from ranet_edge.errors import CalibrationError
from ranet_edge.runtime import ExitChain, OperatingPoint, save_point


# ------------------------------------------------------------------ calibration
def test_entropy_thresholds_fitted_by_calibration_route_as_it_predicts(shipped_copy):
    """calibration's functions (what `calibrate --rule entropy` runs, without its latency
    measurement): the stored point routes every sample where calibration says, ties included."""
    from ranet_edge.runtime.evaluation import ExitOutputs
    from ranet_edge.runtime.evaluation import calibration as cal

    bundle, images, labels = shipped_copy
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    x = chain.preprocess(images[:256])
    logits = chain.run_all(x)
    outs = ExitOutputs(logits, labels[:256])
    scores, correct = outs.conf_correct(rule="entropy")
    flops = chain.manifest.exit_costs("flops")
    for fitted in (cal.paper_thresholds(scores, 0.7), cal.for_accuracy(scores, correct, flops, 0.8).thresholds):
        res = cal.outcome(scores, correct, flops, fitted)
        point = OperatingPoint.fitted(cal.entropy_thresholds(fitted), res.exit_counts, flops, [0.0] * len(flops),
                                      method="test", val_accuracy=res.accuracy, rule="entropy")
        save_point(bundle, "e", point)
        chain = ExitChain.load(bundle, threads=1, warmup=False)
        want = cal.exit_index(scores, fitted)
        np.testing.assert_array_equal(want, ref_entropy_exits(logits, list(point.thresholds[:-1])))
        np.testing.assert_array_equal(chain.predict(x, "e").exits, want)
    ties = [k for k, t in enumerate(point.thresholds[:-1]) if (scores[k] == -np.float32(t)).any()]
    assert ties, "for_accuracy's thresholds here sit on a sample's entropy: that sample ties"


def test_patience_outcomes_are_what_the_chain_does(shipped_copy):
    from ranet_edge.runtime.evaluation import ExitOutputs
    from ranet_edge.runtime.evaluation import calibration as cal

    bundle, images, labels = shipped_copy
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    x = chain.preprocess(images[:128])
    logits = chain.run_all(x)
    _, correct = ExitOutputs(logits, labels[:128]).conf_correct()
    flops = np.asarray(chain.manifest.exit_costs("flops"), np.float64)
    res, method, name, table = cal.choose_patience(logits, correct, flops, flops / 1e9, budget_mflops=9.0)
    for row in table:
        got = chain.predict(x, patience=row["t"])
        counts = np.bincount(got.exits, minlength=chain.num_exits)
        assert row["exit_counts"] == counts.tolist() == ref_patience_counts(logits, row["t"])
        assert row["accuracy"] == pytest.approx((got.labels == labels[:128]).mean())
        assert row["expected_flops"] == pytest.approx(counts @ flops / len(x))
    best = max((r for r in table if r["expected_flops"] <= 9e6), key=lambda r: (r["accuracy"], -r["expected_flops"]))
    assert name == f"patience{best['t']}" and res.exit_counts.tolist() == best["exit_counts"]
    with pytest.raises(CalibrationError, match="no patience fits the budget 0.001"):
        cal.choose_patience(logits, correct, flops, flops, budget_ms=0.001)


def ref_patience_counts(logits, t):
    return np.bincount(ref_patience_exits(logits, t), minlength=len(logits)).tolist()


@pytest.mark.slow
def test_calibrated_entropy_thresholds_route_as_calibration_predicts(shipped_copy):
    from ranet_edge.runtime.evaluation import ExitOutputs
    from ranet_edge.runtime.evaluation import calibration as cal
    from ranet_edge.tasks import DataOptions, Goal, calibrate

    bundle, images, labels = shipped_copy
    res = calibrate(bundle, Goal(p=0.5), DataOptions(), rule="entropy", threads=1)
    assert res.name == "entropy-p0.5" and res.point.rule == "entropy"
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    x = chain.preprocess(images)
    logits = chain.run_all(x)
    scores, _ = ExitOutputs(logits, labels).conf_correct(rule="entropy")
    fitted = cal.paper_thresholds(scores, 0.5)
    stored = list(chain.operating_points[res.name].thresholds)
    np.testing.assert_array_equal(stored[:-1], [-t if t < 1e7 else np.inf for t in fitted[:-1]])
    ties = [k for k, t in enumerate(stored[:-1]) if np.isfinite(t) and (scores[k] == -np.float32(t)).any()]
    assert ties, "the paper's thresholds sit on a sample's entropy: that sample ties"
    want = cal.exit_index(scores, fitted)
    np.testing.assert_array_equal(want, ref_entropy_exits(logits, stored[:-1]))
    got = chain.predict(x, res.name)
    np.testing.assert_array_equal(got.exits, want)
    assert np.bincount(want, minlength=chain.num_exits).tolist() == res.outcome.exit_counts.tolist()


@pytest.mark.slow
def test_patience_calibration_reports_every_t(shipped_copy):
    from ranet_edge.tasks import DataOptions, Goal, calibrate

    bundle, images, labels = shipped_copy
    with pytest.raises(CalibrationError, match="--p is the paper's"):
        calibrate(bundle, Goal(p=0.5), DataOptions(), rule="patience", threads=1)
    res = calibrate(bundle, Goal(target_accuracy=0.5), DataOptions(), rule="patience", threads=1)
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    x = chain.preprocess(images)
    assert [r["t"] for r in res.patience] == list(range(1, chain.num_exits))
    flops = np.asarray(chain.manifest.exit_costs("flops"), np.float64)
    for row in res.patience:
        got = chain.predict(x, patience=row["t"])
        counts = np.bincount(got.exits, minlength=chain.num_exits)
        assert row["exit_counts"] == counts.tolist()
        assert row["accuracy"] == pytest.approx((got.labels == labels).mean())
        assert row["expected_flops"] == pytest.approx(counts @ flops / len(x))
    # the cheapest t reaching 50%: t=1 on this bundle
    assert res.name == "patience1" and chain.operating_points["patience1"].thresholds[:-1] == (1.0,) * 5
    np.testing.assert_array_equal(chain.predict(x, "patience1").exits, chain.predict(x, patience=1).exits)
    assert json.loads(json.dumps(res.to_dict()))["rule"] == "patience"


# ------------------------------------------------------------------ the serving engine's rows
def test_rows_of_several_rules_decide_as_predict_does(shipped_copy):
    """The stage engine's rows carry each request's rule and the patience streak: rows of
    max_prob, entropy and patience requests decided together, exit after exit, cut to the rows
    that go on and merged again, leave where predict sends them."""
    from ranet_edge.serve.rows import RULE_CODE, Rows

    class Keep:  # Rows.select asks the executor to cut tensors: there are none here
        def take(self, env, keep):
            return env

        def concat(self, envs):
            return None

    bundle, images, _ = shipped_copy
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    x = chain.preprocess(images[:90])
    logits = chain.run_all(x)
    asks = [(0.6, "max_prob", None), (0.9, "entropy", None), (None, "patience", 1), (None, "patience", 2)]
    thr, temps, codes = [], [], []
    for i in range(len(x)):
        t, tm, r = chain.resolve_rule(*asks[i % 4])
        thr.append(t), temps.append(tm), codes.append(RULE_CODE[r])
    n = len(x)
    rows = Rows([], np.zeros(n, np.intp), np.arange(n), np.asarray(thr, np.float32), np.asarray(temps, np.float32),
                None, 0.0, np.asarray(codes, np.int8))
    exits = np.full(n, -1)
    for k, z in enumerate(logits):
        alive = np.ones(len(rows), bool)
        take, _, _ = rows.decide(k, z[rows.slot], alive)
        exits[rows.slot[take]] = k
        keep = np.flatnonzero(~take)
        if not len(keep):
            break
        half = len(keep) // 2  # cut in two and merge back: the streak must follow its rows
        a, b = rows.select(Keep(), keep[:half], None, 0.0), rows.select(Keep(), keep[half:], None, 0.0)
        rows = Rows.merge(Keep(), [b, a])
    for j, (t, rule, pat) in enumerate(asks):
        np.testing.assert_array_equal(exits[j::4], chain.predict(x[j::4], t, rule=rule, patience=pat).exits)


# ------------------------------------------------------------------ the command line
def test_predict_command_takes_rule_and_patience(run, shipped_copy, tmp_path):
    import cv2

    bundle, images, _ = shipped_copy
    files = []
    for i in range(6):
        files.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(files[-1]), np.ascontiguousarray(images[i][..., ::-1]))
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    x = chain.preprocess(images[:6])
    for args, kw in ((["--patience", "2"], {"patience": 2}),
                     (["--rule", "entropy", "--thresholds", "0.4"], {"rule": "entropy", "thresholds": 0.4})):
        res = run("predict", bundle, *files, *args, "--json")
        assert res.exit_code == 0, res.output
        got = json.loads(res.output)
        want = chain.predict(x, **kw)
        assert [r["exit"] for r in got] == want.exits.tolist() and [r["label"] for r in got] == want.labels.tolist()
    res = run("predict", bundle, files[0], "--rule", "entropy")
    assert res.exit_code == 2 and res.output.startswith("error: operating point 'iso-accuracy' is for the 'max_prob'")
    assert len(res.output.strip().splitlines()) == 1


def test_deadlines_and_anytime_take_the_rules(shipped_copy):
    """predict(deadline_ms=...) and anytime() route by the same rule as predict (issue 31's
    paths): a deadline that never bites changes nothing, and anytime's last answers are predict's."""
    bundle, images, _ = shipped_copy
    chain = ExitChain.load(bundle, threads=1)
    x = chain.preprocess(images[:48])
    for kw in ({"patience": 2}, {"thresholds": 0.4, "rule": "entropy"}):
        want = chain.predict(x, **kw)
        late = chain.predict(x, deadline_ms=1e7, **kw)
        np.testing.assert_array_equal(late.exits, want.exits)
        assert not late.deadline_cut.any()
        snaps = list(chain.anytime(x, **kw))
        assert snaps[-1].done
        np.testing.assert_array_equal(snaps[-1].exits, want.exits)
        np.testing.assert_array_equal(snaps[-1].labels, want.labels)
