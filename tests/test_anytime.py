"""Refinements in the runtime (issue 31, part 2): ``ExitChain.anytime`` snapshots, checked
sample by sample against ``predict`` and ``run_all`` on the shipped bundle."""
from __future__ import annotations

import numpy as np
import pytest
from deadline_support import script, shipped

from ranet_edge.runtime.anytime import Snapshot

SPREAD = [0.95, 0.95, 0.97, 0.97, 0.99]  # samples leave at many different exits


@pytest.fixture(scope="module")
def chain_x():
    return shipped()


def check_against_run_all(snaps: list[Snapshot], logits: list[np.ndarray]) -> None:
    """Every running, not yet final answer is ``run_all``'s argmax at the snapshot's exit, and
    final answers never change."""
    before = None
    for s in snaps:
        live = s.running & ~s.final
        np.testing.assert_array_equal(s.labels[live], logits[s.exit][live].argmax(axis=1))
        assert (s.exits[live] == s.exit).all()
        if before is not None:
            assert (s.final >= before.final).all()
            np.testing.assert_array_equal(s.labels[before.final], before.labels[before.final])
            np.testing.assert_array_equal(s.exits[before.final], before.exits[before.final])
        before = s


def test_the_last_snapshot_is_predict(chain_x):
    chain, x = chain_x
    want = chain.predict(x, SPREAD)
    assert len(set(want.exits.tolist())) >= 4  # the thresholds really spread the samples
    snaps = list(chain.anytime(x, SPREAD))
    assert [s.graph for s in snaps] == list(range(int(want.exits.max()) + 1))
    last = snaps[-1]
    assert last.done and not any(s.done for s in snaps[:-1])
    np.testing.assert_array_equal(last.labels, want.labels)
    np.testing.assert_array_equal(last.exits, want.exits)
    np.testing.assert_array_equal(last.confidences, want.confidences)
    assert not last.deadline_cut.any()
    check_against_run_all(snaps, chain.run_all(x))
    for s in snaps:  # a sample is final from the snapshot of the exit it left at
        np.testing.assert_array_equal(s.final, want.exits <= s.exit)
        np.testing.assert_array_equal(s.running, want.exits >= s.exit)


def test_one_sample_and_the_default_point(chain_x):
    chain, x = chain_x
    for i in range(8):
        want = chain.predict(x[i:i + 1])
        snaps = list(chain.anytime(x[i:i + 1]))
        assert len(snaps) == want.exits[0] + 1
        assert snaps[-1].labels[0] == want.labels[0] and snaps[-1].exits[0] == want.exits[0]


def test_chunks_give_one_snapshot_per_graph_run():
    chain, x = shipped(max_batch=16, n=40)
    want = chain.predict(x, SPREAD)
    snaps = list(chain.anytime(x, SPREAD))
    first = snaps[0]
    assert first.graph == 0 and first.running[:16].all() and not first.running[16:].any()
    assert (first.labels[16:] == -1).all() and (first.exits[16:] == -1).all()
    np.testing.assert_array_equal(snaps[-1].labels, want.labels)
    np.testing.assert_array_equal(snaps[-1].exits, want.exits)
    runs = sum(int(want.exits[s:s + 16].max()) + 1 for s in (0, 16, 32))
    assert len(snaps) == runs


def test_a_deadline_cut_adds_a_snapshot_and_matches_predict(chain_x, monkeypatch):
    chain, x = chain_x
    script(chain, monkeypatch, [1.0] * 6)
    want = chain.predict(x, SPREAD, deadline_ms=2.5)
    script(chain, monkeypatch, [1.0] * 6)
    snaps = list(chain.anytime(x, SPREAD, deadline_ms=2.5))
    assert [s.graph for s in snaps] == [0, 1, 1]
    cut = snaps[-1]
    assert not cut.running.any() and cut.done
    np.testing.assert_array_equal(cut.deadline_cut, want.deadline_cut)
    assert want.deadline_cut.any()
    np.testing.assert_array_equal(cut.labels, want.labels)
    np.testing.assert_array_equal(cut.exits, want.exits)
    assert not snaps[1].final[want.deadline_cut].any()


def test_snapshots_are_their_own(chain_x):
    chain, x = chain_x
    it = chain.anytime(x, SPREAD)
    first = next(it)
    kept = first.labels.copy(), first.final.copy()
    list(it)
    np.testing.assert_array_equal(first.labels, kept[0])
    np.testing.assert_array_equal(first.final, kept[1])
