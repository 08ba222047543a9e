"""The one walk over a bundle's graphs and the public graph-info type (issue 12)."""
from __future__ import annotations

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.evaluation import cached_inputs
from ranet_edge.runtime.executors.host import BoundPlan, HostExecutor
from ranet_edge.runtime.graphs import GraphInfo, read_later, walk


def test_walk_feeds_by_name_and_drops_what_no_later_graph_reads():
    inputs = [["x"], ["a", "x"], ["b"], ["a", "c"]]
    produced = {0: {"a": 1, "b": 2}, 1: {"c": 3, "d": 4}, 2: {"e": 5}, 3: {"logits": 6}}
    seen_envs = []

    def run(g, feeds):
        seen_envs.append(dict(feeds))
        return produced[g]

    steps = list(walk(inputs, {"x": 0}, run))
    assert [g for g, _, _ in steps] == [0, 1, 2, 3]
    assert seen_envs == [{"x": 0}, {"a": 1, "x": 0}, {"b": 2}, {"a": 1, "c": 3}]
    assert read_later(inputs) == [frozenset("axbc"), frozenset("bac"), frozenset("ac"), frozenset()]
    with pytest.raises(KeyError):  # a graph naming a tensor nobody produced
        list(walk([["x"], ["zz"]], {"x": 0}, lambda g, f: {}))


@pytest.fixture(scope="module")
def shipped():
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        return chain, chain.preprocess(z["x"][:5])


def test_graph_info_and_every_user_of_the_walk_agree(shipped):
    chain, x = shipped
    graphs = chain.graphs
    assert all(isinstance(g, GraphInfo) for g in graphs)
    assert [k for g in graphs for k in g.exits] == list(range(chain.num_exits))
    for g, entry in zip(graphs, chain.manifest.graphs):
        assert g.inputs == list(entry.inputs) and g.logit_names == list(entry.logits)
        assert [g.output_names[p] for p in g.logit_pos] == g.logit_names
    feeds = cached_inputs(chain, x)
    assert [sorted(f) for f in feeds] == [sorted(g.inputs) for g in graphs]
    logits = [g.run(f)[name] for g, f in zip(graphs, feeds) for name in g.logit_names]
    for a, b in zip(logits, chain.run_all(x)):
        np.testing.assert_array_equal(a, b)
    plan = BoundPlan(graphs, chain.input_name, x)
    planned = [z.copy() for i in range(len(graphs)) for z in plan.run_graph(i, x)]
    for a, b in zip(logits, planned):
        np.testing.assert_array_equal(a, b)


def test_bound_fast_path_and_plain_path_agree_bit_for_bit(shipped):
    """The host executor's one fast path (pre-bound buffers, ``feed(x, scratch=True)``) and
    its plain path hand on the same values and give the same logits, with rows leaving."""
    chain, x = shipped
    ex = HostExecutor(chain.graphs, chain.input_name, None)
    for n in (1, 5):  # run_all's form: every graph, all rows
        fast, plain = ex.run_every(ex.feed(x[:n], scratch=True)), ex.run_every(ex.feed(x[:n]))
        assert len(fast) == len(plain) == chain.num_exits
        for a, b in zip(fast, plain):
            np.testing.assert_array_equal(a, b)
    for n in (1, 5):
        fast, plain = ex.feed(x[:n], scratch=True), ex.feed(x[:n])
        assert fast.scratch is not None and plain.scratch is None
        for g in range(len(chain.graphs)):
            (za, fast), (zb, plain) = ex.run(g, fast), ex.run(g, plain)
            for a, b in zip(za, zb):
                np.testing.assert_array_equal(a, b)
            if g == 1 and n > 1:  # rows leave: the fast path reads its buffers back for the rest
                keep = np.array([0, n - 1])
                fast, plain = ex.take(fast, keep), ex.take(plain, keep)
                assert fast.scratch is None and sorted(fast.values) == sorted(plain.values)
                for name in fast.values:
                    np.testing.assert_array_equal(fast.values[name], plain.values[name])
