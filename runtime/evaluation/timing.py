"""The one timing primitive behind every ms figure: callables timed side by side in settled
blocks, with the calls another process preempted marked.

``bench``, ``eval``, ``calibrate --budget-ms`` (through :mod:`ranet_edge.runtime.evaluation.latency`)
and the scripts in ``benchmarks/`` all time with :func:`interleaved`.

Why blocks and not call-by-call round-robin: slow drifts of the machine still hit every
case alike, while no timed call pays for the caches another case just evicted (per-call
round-robin biases results by position). Why the preemption mark: on a loaded two-core
machine a millisecond call is interrupted so often (to give the core to another process)
that a plain median jumps between the cost of the code and the length of other processes'
time slices; medians are therefore taken over the calls no other process interrupted
(:func:`clean_median`), when there are enough of them.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_CLEAN", "CaseStats", "Timings", "clean_median", "interleaved", "kept", "pass_ms",
]

MIN_CLEAN = 10  # fewer un-preempted calls than this: statistics over all calls


def _switches() -> int:
    """Involuntary context switches of this process so far (every thread)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


@dataclass(frozen=True)
class CaseStats:
    """One case's timed calls, in ms, over the calls no other process preempted (over all
    calls when fewer than ``MIN_CLEAN`` were clean)."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    spread_ms: float  # interquartile range
    calls: int  # calls timed
    preempted: float  # share of them another process interrupted

    def to_dict(self) -> dict:
        """The JSON form (every field, by name)."""
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
                "spread_ms": self.spread_ms, "calls": self.calls, "preempted": self.preempted}


@dataclass(frozen=True)
class Timings:
    """Per case: seconds of every timed call (in call order), whether another process
    preempted it, and (when asked for) the calling thread's CPU seconds."""

    times: dict[str, np.ndarray]
    preempted: dict[str, np.ndarray]
    cpu: dict[str, np.ndarray] | None = None

    def clean(self, case: str, min_clean: int = MIN_CLEAN) -> np.ndarray:
        """Seconds of the un-preempted calls (see :func:`kept`)."""
        return kept(self.times[case], self.preempted[case], min_clean)

    def median_ms(self, case: str) -> float:
        """Median ms per call of ``case`` over its :meth:`clean` calls."""
        return 1e3 * float(np.median(self.clean(case)))

    def stats(self, case: str) -> CaseStats:
        """Percentiles of ``case`` over its :meth:`clean` calls; ``calls`` and ``preempted``
        count every call."""
        ms = 1e3 * self.clean(case)
        q25, q50, q75, q90, q99 = np.percentile(ms, [25, 50, 75, 90, 99])
        return CaseStats(float(q50), float(q90), float(q99), float(q75 - q25), int(len(self.times[case])),
                         float(self.preempted[case].mean()))


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 5, block: int = 100,
                settle: int = 10, cpu: bool = False) -> Timings:
    """Time each callable ``repeats`` times, side by side.

    First ``warmup`` untimed rounds over every case; then blocks: for each case in turn,
    ``settle`` untimed calls and ``block`` timed ones, until every case has ``repeats``.
    With ``warmup=0, settle=0, block=repeats`` each case is called exactly ``repeats`` times,
    one after the other (a timed pass). ``cpu``: also record the calling thread's CPU time
    (with one intra-op thread ONNX Runtime computes in the calling thread).

    Raises:
        ValueError: when ``repeats`` or ``block`` is below 1, or ``warmup`` or ``settle``
            below 0.
    """
    if repeats < 1 or block < 1 or warmup < 0 or settle < 0:
        raise ValueError(f"repeats={repeats} and block={block} must be >= 1, warmup={warmup} and settle={settle} >= 0")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: np.empty(repeats) for k in fns}
    pre = {k: np.zeros(repeats, bool) for k in fns}
    thread = {k: np.empty(repeats) for k in fns} if cpu else None
    clock, thread_clock = time.perf_counter, time.thread_time
    for start in range(0, repeats, block):
        stop = min(start + block, repeats)
        for k, fn in fns.items():
            for _ in range(settle):
                fn()
            t_k, p_k = times[k], pre[k]
            c_k = thread[k] if thread is not None else None
            for i in range(start, stop):
                switches = _switches()
                c0 = thread_clock()
                t0 = clock()
                fn()
                t_k[i] = clock() - t0
                if c_k is not None:
                    c_k[i] = thread_clock() - c0
                p_k[i] = _switches() != switches
    return Timings(times, pre, thread)


def kept(times: np.ndarray, preempted: np.ndarray, min_clean: int = MIN_CLEAN) -> np.ndarray:
    """The calls no other process preempted, when there are at least ``min_clean`` of them
    (or all calls were clean); else every call (long calls on a busy machine)."""
    clean = times[~preempted]
    return clean if len(clean) >= min(min_clean, len(times)) else times


def clean_median(times: np.ndarray, preempted: np.ndarray, min_clean: int = MIN_CLEAN) -> float:
    """Median in ms over :func:`kept` calls."""
    return 1e3 * float(np.median(kept(times, preempted, min_clean)))


def pass_ms(times: np.ndarray, preempted: np.ndarray, groups: np.ndarray) -> float:
    """Mean ms per call of a timed pass whose calls differ in cost (images leaving at
    different exits): a preempted call counts at the median of the clean calls of its group
    (the same exit taken), or at its own time when its group has no clean call."""
    est = times.astype(np.float64).copy()
    for g in np.unique(groups[preempted]):
        ok = (groups == g) & ~preempted
        if ok.any():
            est[(groups == g) & preempted] = np.median(times[ok])
    return 1e3 * float(est.mean())
