"""The host executor's bound plan for named inputs (a text encoder's ids and mask): one plan
per set of input shapes, its buffers sized from the graphs' declared output shapes (no extra
run for a new sequence length), and the same logits and routes bit for bit as the plain path."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
pytest.importorskip("onnx")

from text_models import SEQUENCE, EarlyExitBert, text_batch  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.executors.host import BoundPlan, HostExecutor, declared_outputs  # noqa: E402
from ranet_edge.runtime.inputs import check_inputs  # noqa: E402


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    out = tmp_path_factory.mktemp("text-plans") / "bundle"
    export_model(EarlyExitBert(dim=16, heads=2).eval(), out, text_batch(2, 8), ExportSpec(dynamic_axes=SEQUENCE),
                 log=lambda m: None)
    return ExitChain.load(out, threads=1)


def _batch(n: int, length: int, seed: int = 0) -> dict:
    return {k: v.numpy() for k, v in text_batch(n, length, seed=seed).items()}


def test_named_plans_give_the_plain_paths_logits_bit_for_bit(chain):
    ex = HostExecutor(chain.graphs, chain.input_name, None)
    for n, length in ((1, 9), (1, 23), (3, 9)):
        x = check_inputs(_batch(n, length, seed=length), chain.inputs)
        fast, plain = ex.feed(x, scratch=True), ex.feed(x)
        assert fast.scratch is not None and plain.scratch is None
        for a, b in zip(ex.run_every(fast), ex.run_every(plain), strict=True):
            np.testing.assert_array_equal(a, b)
    assert ex.plan_sizes == {((1, 9), (1, 9)), ((1, 23), (1, 23)), ((3, 9), (3, 9))}


def test_rows_leaving_a_named_plan_carry_its_buffers_on(chain):
    ex = HostExecutor(chain.graphs, chain.input_name, None)
    x = check_inputs(_batch(4, 11), chain.inputs)
    fast, plain = ex.feed(x, scratch=True), ex.feed(x)
    (za, fast), (zb, plain) = ex.run(0, fast), ex.run(0, plain)
    keep = np.array([1, 3])
    fast, plain = ex.take(fast, keep), ex.take(plain, keep)
    assert fast.scratch is None and sorted(fast.values) == sorted(plain.values)
    for g in range(1, len(chain.graphs)):
        (za, fast), (zb, plain) = ex.run(g, fast), ex.run(g, plain)
        for a, b in zip(za, zb, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_new_sequence_length_is_sized_without_running_the_graphs(chain, monkeypatch):
    x = _batch(2, 17)
    buffers = declared_outputs(chain.graphs, x)
    hidden = [n for g in chain.graphs[:-1] for n in g.cache_names if len(buffers[n].shape) == 3]
    assert hidden and all(buffers[n].shape[:2] == (2, 17) for n in hidden)
    assert all(buffers[n].shape == (2, 5) for g in chain.graphs for n in g.logit_names)
    ran = []
    for g in chain.graphs:
        monkeypatch.setattr(g, "run", lambda feeds, g=g: ran.append(g) or graph_run(g, feeds))
    plan = BoundPlan(chain.graphs, chain.input_name, x)
    assert not ran and sorted(plan.buffers) == sorted(buffers)
    monkeypatch.undo()
    np.testing.assert_array_equal(plan.run_all(x)[-1], chain.run_all(x)[-1])
    # inputs that disagree on a symbolic axis: nothing is declared, the plan runs the graphs to size them
    assert declared_outputs(chain.graphs, {**x, "attention_mask": x["attention_mask"][:, :5]}) == {}


def graph_run(g, feeds):  # stands in for GraphInfo.run: must not be reached
    raise AssertionError("the plan ran a graph to size its buffers")


def test_predict_at_batch_one_routes_through_the_plan_as_the_batch_does(chain):
    x = _batch(6, 14, seed=3)
    probs = np.stack([np.exp(z - z.max(1, keepdims=True)).max(1) / np.exp(z - z.max(1, keepdims=True)).sum(1)
                      for z in chain.run_all(x)[:-1]], 1)
    thr = np.quantile(probs, 0.5, axis=0)  # between two rows: about half leave at each early exit
    whole = chain.predict(x, thr)
    assert len(set(whole.exits.tolist())) > 1
    for i in range(6):
        one = chain.predict({k: v[i:i + 1] for k, v in x.items()}, thr)
        assert one.exits[0] == whole.exits[i] and one.labels[0] == whole.labels[i]
        np.testing.assert_allclose(one.probabilities[0], whole.probabilities[i], rtol=1e-5, atol=1e-7)


def test_named_inputs_too_large_for_a_plan_run_on_the_plain_path(chain, monkeypatch):
    import ranet_edge.runtime.executors.host as host

    ex = HostExecutor(chain.graphs, chain.input_name, None)
    small, large = check_inputs(_batch(1, 6), chain.inputs), check_inputs(_batch(2, 40), chain.inputs)
    need = sum(b.nbytes for b in declared_outputs(chain.graphs, small.arrays).values())
    monkeypatch.setattr(host, "MAX_NAMED_PLAN_BYTES", need)
    assert ex.feed(small, scratch=True).scratch is not None
    env = ex.feed(large, scratch=True)
    assert env.scratch is None and ex.plan_sizes == {small.shapes}
    for a, b in zip(ex.run_every(env), ex.run_every(ex.feed(large)), strict=True):
        np.testing.assert_array_equal(a, b)
