"""Deadlines: what each graph is expected to cost, and the clock a deadline is kept by.

``ExitChain.predict(x, deadline_ms=D)`` and ``ExitChain.anytime`` hand the routing loop a
:class:`Budget`. Before graph ``g > 0`` runs on ``m`` rows the loop asks it whether the
graph's expected time still fits before the deadline; when it does not, the rows still
running leave at the deepest exit already computed for them (the last exit of the graph
before), marked ``deadline_cut``. Graph 0 always runs: every sample gets at least exit 0.

Expected times come from :class:`StageTimes`: an exponentially weighted mean of the seconds
one run of graph ``g`` took, per batch size class (powers of two: 1, 2, 4, ...). They are
measured at load (:meth:`StageTimes.measure`, part of the warm-up, on this machine) and
refreshed by every graph run of a deadline call. A class not measured yet is estimated from
the nearest measured class of the same graph, scaled by how graph 0 (always run, so always
measured) scales between the two classes, or in proportion to the rows where graph 0 gives
no ratio either. A graph never measured at all is expected to cost nothing: it runs, and
its time is recorded.

Time is read from a clock: any callable returning seconds (default :func:`time.perf_counter`;
``chain.clock``), so tests can script it.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

from .decision import decide
from .results import Prediction, Results, StageRows

Clock = Callable[[], float]

#: Weight of the newest time in the running mean (0.2: about the last ten runs count).
EWMA_WEIGHT = 0.2


def size_class(n: int) -> int:
    """The batch size class of ``n`` rows: the smallest power of two >= n."""
    return 1 << max(0, int(n) - 1).bit_length()


def check_deadline(deadline_ms: Any) -> float:
    """``deadline_ms`` in seconds.

    Raises:
        InputError: not a finite number > 0 (booleans and strings included).
    """
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, Real) or not math.isfinite(deadline_ms) \
            or deadline_ms <= 0:
        raise InputError(f"deadline_ms={deadline_ms!r}: give a finite number of milliseconds > 0 "
                         "(or None for no deadline)")
    return float(deadline_ms) / 1e3


class StageTimes:
    """Expected seconds per run of each graph, per batch size class (see the module doc).

    Thread-safe: calls of several threads may record at once.
    """

    def __init__(self, num_graphs: int, weight: float = EWMA_WEIGHT):
        self.num_graphs = num_graphs
        self.weight = weight
        self._mean: list[dict[int, float]] = [{} for _ in range(num_graphs)]
        self._lock = threading.Lock()

    def record(self, g: int, rows: int, seconds: float) -> None:
        """Fold one run of graph ``g`` on ``rows`` rows that took ``seconds`` into the mean."""
        c = size_class(rows)
        with self._lock:
            old = self._mean[g].get(c)
            self._mean[g][c] = seconds if old is None else old + self.weight * (seconds - old)

    def measured(self, g: int) -> dict[int, float]:
        """Graph ``g``'s mean seconds per run, by size class (a copy)."""
        with self._lock:
            return dict(self._mean[g])

    def expected(self, g: int, rows: int) -> float:
        """Expected seconds of one run of graph ``g`` on ``rows`` rows (0.0: never measured)."""
        c = size_class(rows)
        with self._lock:
            means, first = dict(self._mean[g]), dict(self._mean[0])
        hit = means.get(c)
        if hit is not None:
            return hit
        if not means:
            return 0.0
        near = min(means, key=lambda k: (abs(math.log2(k) - math.log2(c)), -k))
        if near in first and c in first and first[near] > 0:
            return means[near] * first[c] / first[near]
        return means[near] * c / near

    def measure(self, executor: Any, sample_shape: tuple[int, ...], sizes: tuple[int, ...], runs: int = 3) -> None:
        """Time every graph at each batch size of ``sizes`` (``runs`` times, the first
        discarded) on zeros: the load-time measurement. Call after the warm-up."""
        for n in sizes:
            x = np.zeros((n, *sample_shape), np.float32)
            for i in range(runs):
                env = executor.feed(x)
                for g in range(self.num_graphs):
                    t0 = time.perf_counter()
                    _, env = executor.run(g, env)
                    if i:
                        self.record(g, n, time.perf_counter() - t0)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{graph index: {size class: mean ms}}`` (strings, for JSON)."""
        with self._lock:
            return {str(g): {str(c): round(s * 1e3, 4) for c, s in sorted(m.items())}
                    for g, m in enumerate(self._mean)}


class Budget:
    """One deadline call's time: when it ends, and the graph runs it times.

    The routing loop calls :meth:`allows` before graph ``g > 0``, :meth:`started` /
    :meth:`ran` around each graph run, and :meth:`cut` for the rows that stop.
    """

    __slots__ = ("end", "clock", "times", "t0", "cut_rows")

    def __init__(self, deadline_s: float, clock: Clock, times: StageTimes, start: float | None = None):
        self.clock = clock
        self.times = times
        self.end = (clock() if start is None else start) + deadline_s
        self.t0 = 0.0
        self.cut_rows = 0  # samples cut so far

    def allows(self, g: int, rows: int) -> bool:
        """Whether graph ``g`` on ``rows`` rows is expected to finish by the deadline."""
        return self.clock() + self.times.expected(g, rows) <= self.end

    def started(self) -> None:
        """A graph run starts now."""
        self.t0 = self.clock()

    def ran(self, g: int, rows: int) -> None:
        """The graph run :meth:`started` timed has finished: record its time."""
        self.times.record(g, rows, self.clock() - self.t0)

    def cut(self, rows: np.ndarray, last: np.ndarray, k: int, temperature: float) -> StageRows:
        """The samples ``rows`` stop at exit ``k``, whose logits ``last`` they have: their
        answer there (as if ``k`` were their last exit), marked cut."""
        d = decide(last, -np.inf, temperature)
        self.cut_rows += len(rows)
        return StageRows(rows, d.labels, np.full(len(rows), k, np.int64), d.confidences, d.probabilities, cut=True)


def predict_within(chain: Any, x: Any, thresholds: Any, deadline_ms: Any, rule: str | None = None,
                   patience: int | None = None) -> Prediction:
    """``chain.predict(x, thresholds, deadline_ms=..., rule=..., patience=...)``: the routing
    loop with a :class:`Budget` that starts now.

    Raises:
        InputError: a bad ``deadline_ms`` or input.
        CalibrationError: thresholds, a rule or a patience that do not resolve.
    """
    budget = Budget(check_deadline(deadline_ms), chain.clock, chain.stage_times)
    x = chain.check_input(x)
    out = Results(len(x))
    thr, temps, rule = chain._thresholds_cached(thresholds, rule, patience)
    for part in chain._stages(x, thr, temps, budget, rule=rule):
        if part is not None:
            out.fill(part)
    return out.prediction()
