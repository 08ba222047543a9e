"""One latency measurement behind every ms figure: measure_latency, and bench, eval and
calibrate built on it (the shipped default bundle, real sessions; no timing bounds)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import ranet_edge.runtime.evaluation.bench as bench_module
import ranet_edge.tasks as tasks
from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.cli import get_cli
from ranet_edge.data import load_labelled
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.evaluation import BenchOptions, Latency, LatencyMeter, measure_latency, timed_passes


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    out = tmp_path_factory.mktemp("latency") / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, out, ignore=shutil.ignore_patterns("thresholds.json"))
    return out


@pytest.fixture(scope="module")
def chain(bundle):
    return ExitChain.load(bundle)


def test_measure_latency_structure(chain):
    x = chain.preprocess(load_labelled(SAMPLE_IMAGES).images[:2])
    lat = measure_latency(chain, x, repeats=5, warmup=1, block=2, settle=1, stages=True,
                          references={"again": lambda: chain.run_all(x)})
    n_graphs = len(chain.graphs)
    assert lat.batch_size == 2 and len(lat.to_graph) == len(lat.stages) == n_graphs
    assert set(lat.references) == {"chain", "again"} and all(s.calls == 5 for s in lat.to_graph + lat.stages)
    exit_ms = lat.exit_ms()
    assert len(exit_ms) == chain.num_exits
    for k, g in enumerate(lat.exit_graph):
        assert k in chain.graphs[g].exits and exit_ms[k] == lat.to_graph[g].median_ms
    assert lat.exit_ms(per_image=True) == pytest.approx([v / 2 for v in exit_ms])
    assert lat.stage_ms() == [s.median_ms for s in lat.stages]
    counts = np.array([3, 0, 1, 0, 0, 4])
    assert lat.expected_ms(counts) == pytest.approx(counts @ np.array(exit_ms) / 2 / counts.sum())
    d = json.loads(json.dumps(lat.to_dict(), allow_nan=False))
    assert d["exit_ms"] == exit_ms and len(d["to_graph"]) == n_graphs
    # without isolated stages, each graph's share is what it adds to the run before it
    lean = Latency(1, lat.to_graph, lat.exit_graph, lat.references)
    assert np.cumsum(lean.stage_ms()) == pytest.approx([s.median_ms for s in lat.to_graph])


def test_timed_passes_call_predict_once_per_batch_and_give_its_results(chain, monkeypatch):
    x = chain.preprocess(load_labelled(SAMPLE_IMAGES).images[:10])
    calls = []
    real = ExitChain.predict
    monkeypatch.setattr(ExitChain, "predict", lambda self, xb, t=None: calls.append(len(xb)) or real(self, xb, t))
    runs = timed_passes(chain, x, {"early": [0.0] * 5, "late": [np.inf] * 5}, batch_size=4)
    assert calls == [4, 4, 2] * 2
    assert (runs["early"].exits == 0).all() and (runs["late"].exits == 5).all()
    np.testing.assert_array_equal(runs["late"].labels, chain.run_all(x)[-1].argmax(1))
    for r in runs.values():
        assert r.ms_per_image > 0 and r.wall_ms_per_image > 0 and 0 <= r.preempted <= 1


def _spy(monkeypatch, module):
    seen: list[Latency] = []
    real = module.measure_latency

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(module, "measure_latency", spy)
    return seen


@pytest.mark.slow
def test_eval_prints_expected_ms_beside_the_timed_run(bundle, tmp_path, monkeypatch):
    meters: list[LatencyMeter] = []

    class Spy(LatencyMeter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            meters.append(self)

    monkeypatch.setattr(tasks, "LatencyMeter", Spy)
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(get_cli(), ["eval", str(bundle), "--data", str(SAMPLE_IMAGES), "--holdout", "40",
                                         "--json", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(meters) == 1  # one stage measurement, a round of it before each operating point's pass
    assert meters[0].calls == 39 * meters[0].block
    lat = meters[0].result()
    rep = json.loads(out.read_text())
    assert [r["ms"] for r in rep["anytime"]] == lat.exit_ms(per_image=True)
    assert rep["latency"]["exit_ms"] == lat.exit_ms()
    for r in rep["budgeted"]:
        assert r["expected_ms"] == pytest.approx(lat.expected_ms(r["exit_counts"]))
        assert r["real_over_expected"] == pytest.approx(r["measured_ms"] / r["expected_ms"])
        assert r["measured_ms"] > 0 and r["measured_wall_ms"] > 0
    head = next(line for line in res.output.splitlines() if line.lstrip().startswith("p "))
    assert head.split() == ["p", "top-1", "MFLOPs", "ms/img", "exp", "ms", "ratio", "exits"]
    rows = [line.split() for line in res.output.splitlines() if re.match(r"^\s*\d\.\d\d\s+\d", line)]
    assert len(rows) == 20  # every other p, as before
    for (p, _top1, _mflops, ms, exp, ratio, *_), r in zip(rows, rep["budgeted"][::2]):
        assert float(p) == pytest.approx(r["p"]) and float(exp) == pytest.approx(r["expected_ms"], abs=6e-4)
        assert float(ratio) == pytest.approx(float(ms) / float(exp), abs=0.02)  # the two numbers shown


@pytest.mark.slow
def test_calibrate_budget_ms_stands_on_the_one_measurement(bundle, monkeypatch):
    seen = _spy(monkeypatch, tasks)
    res = tasks.calibrate(bundle, tasks.Goal(budget_ms=10.0), tasks.DataOptions(SAMPLE_IMAGES, holdout=60),
                          name="ms-test")
    assert len(seen) == 1 and seen[0].batch_size == 1
    assert res.point.expected_ms == pytest.approx(seen[0].expected_ms(res.outcome.exit_counts))
    assert res.point.expected_ms <= 10.0


def test_bench_figures_come_from_the_one_measurement(bundle, monkeypatch):
    seen = _spy(monkeypatch, bench_module)
    timed = []
    real = bench_module.interleaved
    monkeypatch.setattr(bench_module, "interleaved", lambda fns, *a, **kw: timed.append(sorted(fns)) or real(fns, *a, **kw))
    b = tasks.bench(bundle, BenchOptions(iters=4, warmup=1, adaptive_images=12, thresholds=0.8))
    r, lat = b.result, seen[0]
    assert len(seen) == 1 and r["exit_ms"] == lat.exit_ms() and r["stage_ms"] == lat.stage_ms()
    assert r["chain_ms"] == lat.references["chain"].median_ms
    assert r["monolithic_ms"] == lat.references["monolithic"].median_ms
    assert r["overhead_ratio"] == pytest.approx(r["chain_ms"] / r["monolithic_ms"])
    assert r["adaptive"]["expected_ms"] == pytest.approx(lat.expected_ms(r["adaptive"]["exit_counts"]))
    assert timed == [["monolithic"], ["chain", "monolithic"]]  # adaptive's baseline, throughput
