"""The exit rules (issue 30): ``entropy`` (DeeBERT) and ``patience`` (PABEE) beside ``max_prob``,
and exits that differ in class count.

Every routed result is checked against a reference written here, independently of the
runtime, from ``run_all``'s logits (numpy, float32), sample by sample, on every path
(a batch, one sample at a time, ``predict_stages``, chunks of ``max_batch``). Ties are built
on purpose: entropy thresholds equal to a sample's entropy, and exits whose classes 0 and 1
always hold the same logit (an argmax tie at every sample whose largest logit is class 0).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ranet_edge.errors import CalibrationError
from ranet_edge.runtime import ExitChain, OperatingPoint, save_point

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from ranet_edge.export.exporter import ExportSpec, export_model  # noqa: E402

COUNTS = (20, 100, 100, 100, 100)  # coarse classes at exit 0, fine ones at exits 1-4


def conv(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class CoarseThenFine(nn.Module):
    """20 coarse classes at exit 0; 100 fine classes at exits 1-4 from one shared head on
    residual features (so neighbouring fine exits often agree), classes 0 and 1 always equal."""

    def __init__(self):
        super().__init__()
        self.b0, self.b1 = conv(3, 16, 2), conv(16, 32, 2)
        self.blocks = nn.ModuleList([conv(32, 32, 1) for _ in range(3)])
        self.coarse = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 20))
        self.fine = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 123))

    def forward(self, x):
        h0 = self.b0(x)
        h = self.b1(h0)
        outs = [self.coarse(h0) * 8]
        for k in range(4):
            if k:
                h = h + self.blocks[k - 1](h)
            z = self.fine(h) * 8
            top = z[:, :25].amax(1, keepdim=True)  # classes 0 and 1 both hold it: an argmax tie
            outs.append(torch.cat([top, top, z[:, 25:]], 1))  # wherever one of z's first 25 leads
        return outs


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(bundle, chain, x, run_all logits) of CoarseThenFine, exported with export_model."""
    torch.manual_seed(0)
    model = CoarseThenFine().eval()
    bundle = tmp_path_factory.mktemp("mixed") / "bundle"
    export_model(model, bundle, (3, 32, 32), ExportSpec(validate_batches=(2,)), log=lambda _m: None)
    chain = ExitChain.load(bundle, threads=1)
    x = np.random.default_rng(1).standard_normal((48, 3, 32, 32)).astype(np.float32)
    return bundle, chain, x, chain.run_all(x)


# ------------------------------------------------------------------ the reference, written apart
def ref_softmax(z: np.ndarray, t: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """float32 (softmax, entropy) of each row: d = z/T - max, H = log(sum e) - sum(e d) / sum e."""
    z = z.astype(np.float32)
    if t != 1.0:
        z = z / np.float32(t)
    d = z - z.max(axis=1, keepdims=True)
    e = np.exp(d)
    s = e.sum(axis=1)
    return e / s[:, None], np.log(s) - (e * d).sum(axis=1) / s


def ref_entropy_exits(logits: list[np.ndarray], thresholds: list[float]) -> np.ndarray:
    n = len(logits[0])
    out = np.full(n, len(logits) - 1)
    for i in range(n):
        for k, t in enumerate(thresholds):
            h = ref_softmax(logits[k][i:i + 1])[1][0]
            if t != np.inf and h <= np.float32(t):
                out[i] = k
                break
    return out


def ref_patience_exits(logits: list[np.ndarray], t: int) -> np.ndarray:
    labels = [ref_softmax(z)[0].argmax(axis=1) for z in logits]
    counts = [z.shape[1] for z in logits]
    n, last = len(logits[0]), len(logits) - 1
    out = np.full(n, last)
    for i in range(n):
        streak = 0
        for k in range(len(logits)):
            same = k > 0 and counts[k] == counts[k - 1] and labels[k][i] == labels[k - 1][i]
            streak = streak + 1 if same else 0
            if streak >= t:
                out[i] = k
                break
    return out


def every_path(chain: ExitChain, x: np.ndarray, **kw) -> list:
    """predict's result on a batch, one sample at a time, through predict_stages, and in chunks."""
    batch = chain.predict(x, **kw)
    ones = [chain.predict(x[i:i + 1], **kw) for i in range(len(x))]
    staged = {"exits": np.empty(len(x), np.int64), "labels": np.empty(len(x), np.int64)}
    for part in chain.predict_stages(x, **kw):
        staged["exits"][part.rows] = part.exits
        staged["labels"][part.rows] = part.labels
    small = ExitChain.load(chain.manifest.root, threads=1, max_batch=5, warmup=False)
    chunked = small.predict(x, **kw)
    return [(batch.exits, batch.labels), (np.array([p.exits[0] for p in ones]), np.array([p.labels[0] for p in ones])),
            (staged["exits"], staged["labels"]), (chunked.exits, chunked.labels)], batch


def check_against(chain, x, logits, want_exits, **kw) -> None:
    paths, batch = every_path(chain, x, **kw)
    want_labels = np.array([ref_softmax(logits[k][i:i + 1])[0].argmax() for i, k in enumerate(want_exits)])
    for exits, labels in paths:
        np.testing.assert_array_equal(exits, want_exits)
        np.testing.assert_array_equal(labels, want_labels)


# ------------------------------------------------------------------ entropy
def test_entropy_exits_equal_the_reference_with_ties(mixed):
    _, chain, x, logits = mixed
    ents = [ref_softmax(z)[1] for z in logits]
    # each threshold is one sample's own entropy there: that sample ties and must leave
    thresholds = [float(np.sort(ents[k])[len(x) // (5 - k)]) for k in range(4)]
    want = ref_entropy_exits(logits, thresholds)
    for k in range(4):
        tied = np.flatnonzero(ents[k] == np.float32(thresholds[k]))
        assert len(tied) and (want[tied] <= k).all()
    assert len(set(want.tolist())) == 5, "expected samples at every exit"
    check_against(chain, x, logits, want, thresholds=thresholds, rule="entropy")


def test_entropy_inf_keeps_everyone_and_a_single_value_applies_to_every_exit(mixed):
    _, chain, x, logits = mixed
    assert (chain.predict(x, thresholds=np.inf, rule="entropy").exits == 4).all()
    assert (chain.predict(x, thresholds=1e6, rule="entropy").exits == 0).all()  # above ln(20): all leave
    want = ref_entropy_exits(logits, [1.5] * 4)
    check_against(chain, x, logits, want, thresholds=1.5, rule="entropy")


def test_entropy_on_the_tiny_ranet_and_temperatures_are_applied(tiny_chain):
    from runtime_bundles import images

    x = images(40, seed=4)
    logits = tiny_chain.run_all(x)
    thr = float(np.median(ref_softmax(logits[0])[1]))
    want = ref_entropy_exits(logits, [thr, thr])
    check_against(tiny_chain, x, logits, want, thresholds=[thr, thr], rule="entropy")
    from ranet_edge.runtime import decision

    d = decision.decide(logits[0], thr, 2.0, rule="entropy")
    np.testing.assert_array_equal(d.take, ref_softmax(logits[0], 2.0)[1] <= np.float32(thr))


# ------------------------------------------------------------------ patience
@pytest.mark.parametrize("t", [1, 2])
def test_patience_exits_equal_the_reference_with_label_ties(mixed, t):
    _, chain, x, logits = mixed
    tied = [(z[:, 0] == z[:, 1]) & (z.argmax(axis=1) == 0) for z in logits[1:]]
    assert all(m.any() for m in tied), "expected argmax ties at every fine exit"
    want = ref_patience_exits(logits, t)
    assert {int(k) for k in want} >= {t + 1, 4}  # exit 0 has 20 classes: no streak runs across it
    check_against(chain, x, logits, want, rule="patience", patience=t)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_patience_on_the_shipped_trained_ranet(t):
    from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES

    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    chain = ExitChain.load(DEFAULT_BUNDLE, threads=1, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        x = chain.preprocess(z["x"][:64])
    logits = chain.run_all(x)
    want = ref_patience_exits(logits, t)
    assert len(set(want.tolist())) >= 2  # most leave at exit t, some later
    check_against(chain, x, logits, want, patience=t)


def test_every_executor_routes_the_rules_alike(shipped_copy):
    bundle, images, _ = shipped_copy
    x = None
    runs = {}
    for options in ({}, {"device_io": True}, {"capture": True, "buckets": [1, 8, 32]}):
        chain = ExitChain.load(bundle, threads=1, **options)
        x = chain.preprocess(images[:40]) if x is None else x
        runs[chain.executor.kind] = [chain.predict(x, **kw).exits for kw in
                                     ({"patience": 2}, {"rule": "entropy", "thresholds": 0.4})]
    assert set(runs) == {"host", "device", "captured"}
    for got in runs.values():
        for a, b in zip(got, runs["host"]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw, message", [
    ({"rule": "patience"}, "needs patience=t"),
    ({"patience": 0}, "whole number >= 1"),
    ({"patience": 1.5}, "whole number >= 1"),
    ({"patience": 2, "rule": "entropy"}, "goes with rule='patience'"),
    ({"patience": 2, "thresholds": 0.5}, "not both"),
    ({"rule": "margin"}, "unknown exit rule 'margin'"),
    ({"rule": "entropy", "thresholds": -0.5}, "max entropy >= 0"),
    ({"rule": "patience", "thresholds": [1, 0.5, 2, 1]}, "whole number >= 1"),
])
def test_bad_rule_arguments_are_one_line_errors(mixed, kw, message):
    chain, x = mixed[1], mixed[2]
    with pytest.raises(CalibrationError, match=message):
        chain.predict(x[:2], **kw)


# ------------------------------------------------------------------ stored rules
def test_an_operating_point_stores_its_rule(mixed, tmp_path):
    import shutil

    bundle = shutil.copytree(mixed[0], tmp_path / "bundle")
    x, logits = mixed[2], mixed[3]
    common = {"method": "test", "val_accuracy": 0.5, "expected_flops": 1.0, "expected_ms": None}
    save_point(bundle, "calm", OperatingPoint(thresholds=[2.5, np.inf, 1.25, 3, -np.inf], rule="entropy", **common))
    save_point(bundle, "pabee", OperatingPoint(thresholds=[2, 2, 2, 2, -np.inf], rule="patience", **common))
    stored = json.loads((bundle / "thresholds.json").read_text())["points"]
    assert stored["calm"]["rule"] == "entropy" and stored["calm"]["thresholds"] == [2.5, 1e8, 1.25, 3, None]
    chain = ExitChain.load(bundle, threads=1, warmup=False)
    assert chain.operating_points["calm"].thresholds == (2.5, np.inf, 1.25, 3.0, -np.inf)
    check_against(chain, x, logits, ref_entropy_exits(logits, [2.5, np.inf, 1.25, 3]), thresholds="calm")
    check_against(chain, x, logits, ref_patience_exits(logits, 2), thresholds="pabee")
    np.testing.assert_array_equal(chain.predict(x, "pabee").exits, chain.predict(x, rule="patience", patience=2).exits)
    with pytest.raises(CalibrationError, match="'calm' is for the 'entropy' rule, not 'max_prob'"):
        chain.predict(x, "calm", rule="max_prob")
    with pytest.raises(CalibrationError, match="decides by max_prob only"):
        chain.resolve_thresholds("calm")


# ------------------------------------------------------------------ class counts
def test_exits_with_different_class_counts(mixed):
    bundle, chain, x, logits = mixed
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [e["num_classes"] for e in manifest["exits"]] == list(COUNTS) and manifest["num_classes"] == 100
    assert chain.exit_classes == COUNTS
    conf0 = ref_softmax(logits[0])[0].max(axis=1)
    thr = float(np.median(conf0))
    for n in (16, 1):  # the crash was Results.fill at a batch of 16
        got = chain.predict(x[:n], thresholds=[thr, 0.0, 0.0, 0.0])
        assert got.probabilities.shape == (n, 100) and got.probabilities.dtype == np.float32
        for i in range(n):
            k = int(got.exits[i])
            want = ref_softmax(logits[k][i:i + 1])[0][0]
            np.testing.assert_array_equal(got.probabilities[i, :COUNTS[k]], want)
            assert not got.probabilities[i, COUNTS[k]:].any()  # zero beyond the exit's classes
            assert got.labels[i] == want.argmax() < COUNTS[k]
    assert {0, 1} <= set(chain.predict(x[:16], thresholds=[thr, 0.0, 0.0, 0.0]).exits.tolist())


def test_a_manifest_without_exit_class_counts_means_all_equal(tiny_copy):
    from runtime_bundles import edit_manifest

    def drop(d):
        for e in d["exits"]:
            e.pop("num_classes", None)

    edit_manifest(tiny_copy, drop)
    chain = ExitChain.load(tiny_copy, warmup=False)
    assert chain.exit_classes == (chain.manifest.num_classes,) * chain.num_exits


# ------------------------------------------------------------------ calibration
@pytest.fixture
def shipped_copy(tmp_path):
    import shutil

    from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES

    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    with np.load(SAMPLE_IMAGES) as z:
        return bundle, z["x"], z["y"].astype(np.int64)


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
