"""Latency of a loaded chain, measured once: every graph on its real inputs, side by side
with a reference, and timed passes of ``predict`` over images.

:func:`measure_latency` is the one per-stage measurement behind every ms figure of
``bench``, ``eval``, ``calibrate --budget-ms`` and the operating points' ``expected_ms``:
the time to an exit is the median time of a run of the graphs up to its own, and the
expected ms of an operating point is its exit shares times those. :func:`timed_passes` is
the real run that ``eval`` and ``bench`` set beside it. Both time with
:func:`ranet_edge.runtime.evaluation.timing.interleaved`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..chain import ExitChain
from ..graphs import walk
from .timing import CaseStats, Timings, interleaved, kept, pass_ms

__all__ = [
    "Latency", "LatencyMeter", "TimedPass", "cached_inputs", "measure_latency", "run_to", "timed_passes",
]


@dataclass(frozen=True)
class Latency:
    """Median ms per call at one batch size: of the chain run up to each graph, of each
    graph alone (when measured), and of references timed in the same blocks (``"chain"``:
    ``run_all``, every graph with the chain's pre-bound buffers)."""

    batch_size: int
    to_graph: list[CaseStats]  # per graph g: graphs 0..g run in sequence (the one walk)
    exit_graph: list[int]  # the graph of each exit
    references: dict[str, CaseStats]
    stages: list[CaseStats] | None = None  # per graph: the graph alone, on its real inputs

    def stage_ms(self) -> list[float]:
        """Each graph's share of a run: alone when measured so, else what it adds to the
        run up to the graph before it."""
        if self.stages is not None:
            return [s.median_ms for s in self.stages]
        return np.diff([0.0] + [s.median_ms for s in self.to_graph]).tolist()

    def exit_ms(self, per_image: bool = False) -> list[float]:
        """Ms to each exit: every graph up to and including its own, run in sequence (per
        call at ``batch_size``, or per image)."""
        scale = self.batch_size if per_image else 1
        return [self.to_graph[g].median_ms / scale for g in self.exit_graph]

    def expected_ms(self, exit_counts: np.ndarray | list[int]) -> float:
        """Mean ms per image when ``exit_counts[k]`` images leave at exit k."""
        counts = np.asarray(exit_counts, np.float64)
        return float(counts @ np.asarray(self.exit_ms(per_image=True)) / counts.sum())

    def to_dict(self) -> dict:
        """The JSON form ``bench`` and ``eval`` write: the derived ``stage_ms`` and ``exit_ms``
        beside every case's statistics."""
        return {"batch_size": self.batch_size, "stage_ms": self.stage_ms(), "exit_ms": self.exit_ms(),
                "to_graph": [s.to_dict() for s in self.to_graph],
                "stages": [s.to_dict() for s in self.stages] if self.stages is not None else None,
                "references": {k: v.to_dict() for k, v in self.references.items()}}


def cached_inputs(chain: ExitChain, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The real feeds of every graph for input ``x`` (what a chain run hands on)."""
    graphs = chain.graphs
    return [feeds for _, feeds, _ in walk([g.inputs for g in graphs], {chain.input_name: x},
                                          lambda g, f: graphs[g].run(f))]


def run_to(chain: ExitChain, x: np.ndarray, last: int) -> None:
    """Run graphs ``0..last`` in sequence on ``x``, as a chain run hands tensors on."""
    graphs = chain.graphs[:last + 1]
    for _ in walk([g.inputs for g in graphs], {chain.input_name: x}, lambda g, f: graphs[g].run(f)):
        pass


class LatencyMeter:
    """The stage measurement in instalments: each :meth:`round` times one more settled block
    of every case (:func:`~.timing.interleaved`), and :meth:`result` takes the medians over
    every block so far. ``eval`` runs a round before each operating point's timed pass, so
    that the measurement spans the whole run, under the same load as the passes, instead of
    the few seconds one call of :func:`measure_latency` takes.

    Creating a meter checks ``x`` (``chain.check_input``: an :class:`~ranet_edge.errors.InputError`
    when it is not a float32 batch of the bundle's input shape) and times nothing.

    Cases: the chain run up to each graph on ``x``, ``chain.run_all(x)`` (``"chain"``), the
    given ``references`` and, with ``stages``, each graph alone on its real inputs.

    The time to an exit is measured as a run up to its graph, not as a sum of graphs timed
    alone: a graph run after the others finds its weights out of the caches, which a block
    of calls of one graph hides (the sum of isolated graphs came out 25-35% below a run of
    the same graphs in sequence on the default bundle).
    """

    def __init__(self, chain: ExitChain, x: np.ndarray, *, warmup: int = 5, block: int = 50, settle: int = 10,
                 stages: bool = False, references: Mapping[str, Callable[[], object]] | None = None):
        x = chain.check_input(x)
        graphs = chain.graphs
        self.batch_size = int(x.shape[0])
        self.block, self.settle, self._warmup = block, settle, warmup
        self._n_graphs, self._stages = len(graphs), stages
        self._exit_graph = [g for g, graph in enumerate(graphs) for _ in graph.exits]
        cases: dict[str, Callable[[], object]] = {
            f"to graph {g}": (lambda g=g: run_to(chain, x, g)) for g in range(len(graphs))}
        if stages:
            cases.update({f"graph {g}": (lambda s=graph.session, names=graph.output_names, f=feeds: s.run(names, f))
                          for g, (graph, feeds) in enumerate(zip(graphs, cached_inputs(chain, x)))})
        self._refs = ["chain", *(references or {})]
        cases.update({"chain": lambda: chain.run_all(x), **(references or {})})
        self._cases = cases
        self._parts: list[Timings] = []

    @property
    def calls(self) -> int:
        """Timed calls of each case so far."""
        return sum(len(t.times["chain"]) for t in self._parts)

    def round(self, calls: int | None = None) -> None:
        """Time one more block of ``calls`` (default: ``block``) calls of every case."""
        calls = calls or self.block
        warmup = self._warmup if not self._parts else 0
        self._parts.append(interleaved(self._cases, calls, warmup=warmup, block=calls, settle=self.settle))

    def result(self) -> Latency:
        """Medians over every round so far (one round is run first when there was none)."""
        if not self._parts:
            self.round()
        t = Timings({k: np.concatenate([p.times[k] for p in self._parts]) for k in self._cases},
                    {k: np.concatenate([p.preempted[k] for p in self._parts]) for k in self._cases})
        return Latency(self.batch_size, [t.stats(f"to graph {g}") for g in range(self._n_graphs)], self._exit_graph,
                       {k: t.stats(k) for k in self._refs},
                       [t.stats(f"graph {g}") for g in range(self._n_graphs)] if self._stages else None)


def measure_latency(chain: ExitChain, x: np.ndarray, *, repeats: int = 600, warmup: int = 5, block: int = 50,
                    settle: int = 10, stages: bool = False,
                    references: Mapping[str, Callable[[], object]] | None = None) -> Latency:
    """Every case of :class:`LatencyMeter` timed ``repeats`` times side by side in settled
    blocks of ``block`` calls; medians over the calls no other process preempted.

    Raises:
        ValueError: when ``repeats`` is below 1 (a caller's mistake; ``bench`` checks its
            options first).
        InputError: when ``x`` is not a float32 batch of the bundle's input shape.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    meter = LatencyMeter(chain, x, warmup=warmup, block=block, settle=settle, stages=stages, references=references)
    while meter.calls < repeats:
        meter.round(min(block, repeats - meter.calls))
    return meter.result()


@dataclass(frozen=True)
class TimedPass:
    """One real run of ``predict`` over images, every call timed."""

    ms_per_image: float  # preempted calls at the clean median of calls reaching the same exit
    wall_ms_per_image: float  # every call as it was timed
    p99_ms: float  # per call, over the calls no other process preempted
    preempted: float  # share of calls another process interrupted
    labels: np.ndarray
    exits: np.ndarray


def timed_passes(chain: ExitChain, x: np.ndarray, points: Mapping[str, Any], batch_size: int = 1) -> dict[str, TimedPass]:
    """For each operating point (name -> anything ``predict`` takes), one pass of
    ``chain.predict`` over ``x`` in batches of ``batch_size``: exactly one call per batch,
    each timed (:func:`~.timing.interleaved` with no untimed calls), the points one after
    the other. A preempted call counts at the median of the clean calls whose deepest exit
    is the same (:func:`~.timing.pass_ms`)."""
    starts = list(range(0, len(x), batch_size))
    n = len(x)
    labels = {k: np.empty(n, np.int64) for k in points}
    exits = {k: np.empty(n, np.int64) for k in points}
    cursor = dict.fromkeys(points, 0)

    def caller(k: str, thresholds: Any) -> Callable[[], None]:
        def call() -> None:
            i = cursor[k]
            cursor[k] = i + 1
            sl = slice(starts[i], starts[i] + batch_size)
            res = chain.predict(x[sl], thresholds)
            labels[k][sl], exits[k][sl] = res.labels, res.exits
        return call

    t = interleaved({k: caller(k, v) for k, v in points.items()}, len(starts), warmup=0, block=len(starts), settle=0)
    out = {}
    for k in points:
        deepest = np.maximum.reduceat(exits[k], starts)
        times, pre = t.times[k], t.preempted[k]
        out[k] = TimedPass(pass_ms(times, pre, deepest) / (n / len(starts)),
                           1e3 * float(times.sum()) / n, 1e3 * float(np.percentile(kept(times, pre), 99)),
                           float(pre.mean()), labels[k], exits[k])
    return out
