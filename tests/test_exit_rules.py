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
from exit_rules_support import check_against, ref_entropy_exits, ref_patience_exits, ref_softmax

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
