"""The one timing primitive (ranet_edge.runtime.evaluation.timing) with real callables: structure and
ordering, never timing bounds."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ranet_edge.runtime.evaluation import timing


def test_slower_callable_has_the_larger_median_and_every_array_has_one_entry_per_call():
    t = timing.interleaved({"fast": lambda: time.sleep(0.0005), "slow": lambda: time.sleep(0.02)},
                           repeats=12, warmup=1, block=4, settle=1)
    assert set(t.times) == set(t.preempted) == {"fast", "slow"} and t.cpu is None
    for k in t.times:
        assert t.times[k].shape == (12,) and t.preempted[k].dtype == bool and (t.times[k] > 0).all()
    assert t.median_ms("slow") > t.median_ms("fast")
    fast, slow = t.stats("fast"), t.stats("slow")
    assert isinstance(fast, timing.CaseStats) and fast.calls == 12 and 0 <= fast.preempted <= 1
    assert fast.median_ms <= fast.p90_ms <= fast.p99_ms and fast.spread_ms >= 0
    assert slow.median_ms > fast.median_ms
    assert set(fast.to_dict()) == {"median_ms", "p90_ms", "p99_ms", "spread_ms", "calls", "preempted"}


def test_thread_cpu_time_tells_work_from_sleep():
    a = np.random.default_rng(0).random((200, 200))
    t = timing.interleaved({"sleep": lambda: time.sleep(0.002), "work": lambda: [a @ a for _ in range(5)]},
                           repeats=6, warmup=0, block=3, settle=0, cpu=True)
    assert t.cpu is not None and t.cpu["work"].shape == (6,)
    assert np.median(t.cpu["work"]) > np.median(t.cpu["sleep"])  # sleeping takes no CPU time
    assert (t.cpu["sleep"] <= t.times["sleep"]).all()


def test_calls_run_in_settled_blocks_in_turn():
    order: list[str] = []
    fns = {k: (lambda k=k: order.append(k)) for k in ("a", "b")}
    timing.interleaved(fns, repeats=4, warmup=1, block=2, settle=1)
    # warm-up round, then per block: each case settles once and runs its block
    assert "".join(order) == "ab" + "aaabbb" * 2
    order.clear()
    timing.interleaved(fns, repeats=5, warmup=0, block=5, settle=0)  # a timed pass: exactly `repeats` calls
    assert "".join(order) == "aaaaabbbbb"


@pytest.mark.parametrize("kw", [{"repeats": 0}, {"repeats": 3, "block": 0}, {"repeats": 3, "settle": -1}])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError, match="must be"):
        timing.interleaved({"a": lambda: None}, **kw)


def test_preempted_calls_are_left_out_of_the_median_when_enough_are_clean():
    times = np.r_[np.full(12, 1e-3), np.full(4, 9e-3)]
    pre = np.r_[np.zeros(12, bool), np.ones(4, bool)]
    assert timing.clean_median(times, pre) == pytest.approx(1.0)
    assert timing.clean_median(times, np.ones(16, bool)) == pytest.approx(1e3 * np.median(times))  # none clean
    few = np.r_[np.zeros(3, bool), np.ones(13, bool)]
    assert len(timing.kept(times, few)) == 16  # 3 clean calls are not enough: all of them
    assert len(timing.kept(times[:4], np.array([False] * 4))) == 4  # fewer calls than MIN_CLEAN, all clean


def test_a_timed_pass_counts_a_preempted_call_at_its_groups_clean_median():
    times = np.array([1.0, 1.2, 5.0, 3.0, 3.2, 9.0]) * 1e-3
    pre = np.array([False, False, True, False, False, True])
    groups = np.array([0, 0, 0, 1, 1, 2])  # group 2 has no clean call: its own time
    assert timing.pass_ms(times, pre, groups) == pytest.approx((1.0 + 1.2 + 1.1 + 3.0 + 3.2 + 9.0) / 6)


def test_benchmarks_time_with_the_library_primitive():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_common.py"
    if not path.exists():
        pytest.skip("no benchmarks/ in this install")
    spec = importlib.util.spec_from_file_location("bench_common", path)
    common = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = common
    try:
        spec.loader.exec_module(common)
    finally:
        del sys.modules["bench_common"]
    assert common.median_ms is timing.clean_median
    cpu, pre = {}, {}
    out = common.interleaved({"fast": lambda: time.sleep(0.001), "slow": lambda: time.sleep(0.003)}, 6,
                             warmup=0, block=3, settle=0, cpu=cpu, preempted=pre)
    assert set(out) == set(cpu) == set(pre) == {"fast", "slow"} and out["slow"].shape == (6,)
    assert common.median_ms(out["slow"], pre["slow"]) > common.median_ms(out["fast"], pre["fast"])
