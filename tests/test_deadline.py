"""Deadlines in the runtime (issue 31, part 1): ``predict(x, deadline_ms=D)`` on a scripted clock.

Graph runs advance the clock by scripted amounts (tests/deadline_support.py), so which graphs
a deadline admits is arithmetic: the routing loop starts graph g > 0 only when now + expected
time <= deadline, and exit 0 is always computed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from deadline_support import script, shipped

from ranet_edge.errors import InputError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.deadline import StageTimes, size_class
from ranet_edge.runtime.decision import confidence

NOBODY = [math.inf] * 5  # thresholds under which every sample runs to the last exit


@pytest.fixture(scope="module")
def chain_x():
    return shipped()


def test_without_a_deadline_nothing_is_cut_and_a_loose_one_changes_nothing(chain_x):
    chain, x = chain_x
    plain = chain.predict(x)
    assert plain.cut is None and not plain.deadline_cut.any() and plain.deadline_cut.shape == (len(x),)
    loose = chain.predict(x, deadline_ms=1e9)
    for field in ("labels", "exits", "confidences", "probabilities"):
        np.testing.assert_array_equal(getattr(loose, field), getattr(plain, field))
    assert not loose.deadline_cut.any()
    one = chain.predict(x[:1], deadline_ms=1e9)
    assert one.labels[0] == plain.labels[0] and one.exits[0] == plain.exits[0]


def test_a_graph_that_would_overrun_is_not_started(chain_x, monkeypatch):
    """1 ms per graph, 2.5 ms: graphs 0 and 1 run (t = 1, 2), graph 2 would end at 3."""
    chain, x = chain_x
    clock = script(chain, monkeypatch, [1.0] * 6)
    p = chain.predict(x, NOBODY, deadline_ms=2.5)
    assert [g for g, _ in clock.runs] == [0, 1]
    assert (p.exits == 1).all() and p.deadline_cut.all()
    z1 = chain.run_all(x)[1]
    np.testing.assert_array_equal(p.labels, z1.argmax(axis=1))
    t1 = chain.resolve_thresholds(NOBODY)[1][1]
    np.testing.assert_array_equal(p.confidences, confidence(z1, t1))


def test_samples_that_leave_in_time_keep_their_answer(chain_x, monkeypatch):
    chain, x = chain_x
    full = chain.predict(x, 0.9)
    assert (full.exits > 1).any() and (full.exits <= 1).any()
    script(chain, monkeypatch, [1.0] * 6)
    p = chain.predict(x, 0.9, deadline_ms=2.5)
    early = full.exits <= 1
    np.testing.assert_array_equal(p.labels[early], full.labels[early])
    np.testing.assert_array_equal(p.exits[early], full.exits[early])
    np.testing.assert_array_equal(p.deadline_cut, ~early)
    assert (p.exits[~early] == 1).all()
    np.testing.assert_array_equal(p.labels[~early], chain.run_all(x)[1][~early].argmax(axis=1))


def test_exit_zero_is_always_computed(chain_x, monkeypatch):
    chain, x = chain_x
    full = chain.predict(x)
    clock = script(chain, monkeypatch, [5.0] * 6)
    p = chain.predict(x, deadline_ms=0.001)
    assert [g for g, _ in clock.runs] == [0]
    assert (p.exits == 0).all()
    np.testing.assert_array_equal(p.deadline_cut, full.exits > 0)
    np.testing.assert_array_equal(p.labels, chain.run_all(x)[0].argmax(axis=1))


@pytest.mark.parametrize("options", [{"device_io": True}, {"capture": True, "buckets": [1, 8, 64]}])
def test_every_executor_cuts_alike(chain_x, monkeypatch, options):
    chain, x = chain_x
    script(chain, monkeypatch, [1.0] * 6)
    want = chain.predict(x, 0.9, deadline_ms=3.5)
    other = ExitChain.load(chain.manifest.root, warmup=False, **options)
    clock = script(other, monkeypatch, [1.0] * 6)
    got = other.predict(x, 0.9, deadline_ms=3.5)
    assert [g for g, _ in clock.runs] == [0, 1, 2]
    for field in ("labels", "exits", "deadline_cut"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert want.deadline_cut.any()


def test_later_chunks_still_get_exit_zero(monkeypatch):
    """max_batch 16, 40 samples: the deadline is the call's; chunk 2 and 3 start after it."""
    chain, x = shipped(max_batch=16, n=40)
    clock = script(chain, monkeypatch, [1.0] * 6)
    p = chain.predict(x, NOBODY, deadline_ms=2.5)
    assert clock.runs == [(0, 16), (1, 16), (0, 16), (0, 8)]
    np.testing.assert_array_equal(p.exits, [1] * 16 + [0] * 24)
    assert p.deadline_cut.all()


def test_expected_times_follow_what_the_graphs_really_take(chain_x, monkeypatch):
    """The chain expects 1 ms for graph 1, which really takes 5: after one run its weighted
    mean is 1.8 ms, and a deadline that 1 ms would have met now stops before graph 1."""
    chain, x = chain_x
    clock = script(chain, monkeypatch, [1.0, 5.0, 1.0, 1.0, 1.0, 1.0], expected_ms=[1.0] * 6)
    chain.predict(x[:4], NOBODY, deadline_ms=6.5)
    assert [g for g, _ in clock.runs][:2] == [0, 1]
    assert chain.stage_times.expected(1, 4) == pytest.approx(1.8e-3)
    clock.runs.clear()
    p = chain.predict(x[:4], NOBODY, deadline_ms=2.5)
    assert [g for g, _ in clock.runs] == [0] and (p.exits == 0).all() and p.deadline_cut.all()


def test_times_are_measured_at_load():
    chain = ExitChain.load(shipped()[0].manifest.root)
    for g in range(len(chain.graphs)):
        measured = chain.stage_times.measured(g)
        assert list(measured) == [1] and 0 < measured[1] < 1.0
    assert set(chain.stage_times.as_dict()) == {str(g) for g in range(len(chain.graphs))}


def test_unmeasured_sizes_are_estimated_from_graph_zero():
    times = StageTimes(3)
    assert times.expected(1, 8) == 0.0  # never measured: run it and see
    times.record(0, 1, 1e-3)
    times.record(0, 8, 2e-3)
    times.record(1, 1, 4e-3)
    times.record(2, 1, 1e-3)
    assert times.expected(1, 7) == pytest.approx(8e-3)  # graph 0 doubles from 1 to 8 rows
    assert times.expected(2, 30) == pytest.approx(32e-3)  # graph 0 unmeasured at 32: in proportion
    times.record(1, 1, 9e-3)
    assert times.expected(1, 1) == pytest.approx(5e-3)  # 4 + 0.2 * (9 - 4)
    assert [size_class(n) for n in (1, 2, 3, 4, 5, 128)] == [1, 2, 4, 4, 8, 128]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True, [5]])
def test_a_bad_deadline_is_one_line(chain_x, bad):
    chain, x = chain_x
    with pytest.raises(InputError, match="deadline_ms") as err:
        chain.predict(x[:1], deadline_ms=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="deadline_ms"):
        chain.anytime(x[:1], deadline_ms=bad)
