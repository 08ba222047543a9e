"""Latency measurement of a loaded chain: per graph, cumulative per exit, whole runs."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .chain import ExitChain
from .graphs import walk


@dataclass(frozen=True)
class StageTimes:
    """Seconds per run of each graph at one batch size."""

    batch_size: int
    samples: list[np.ndarray]  # per graph, every timed run (seconds)

    def percentile(self, q: float) -> list[float]:
        return [float(np.percentile(s, q)) * 1e3 for s in self.samples]

    def exit_ms(self, chain: ExitChain, q: float = 50) -> list[float]:
        """Cumulative latency (ms) to each exit: every graph up to and including its graph."""
        per_graph = np.cumsum(self.percentile(q))
        out = []
        for g, graph in enumerate(chain.graphs):
            out.extend([float(per_graph[g])] * len(graph.exits))
        return out


def cached_inputs(chain: ExitChain, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The real feeds of every graph for input ``x`` (what a chain run hands on)."""
    graphs = chain.graphs
    return [feeds for _, feeds, _ in walk([g.inputs for g in graphs], {chain.input_name: x},
                                          lambda g, f: graphs[g].run(f))]


def measure_stages(chain: ExitChain, x: np.ndarray, warmup: int = 5, iters: int = 50,
                   progress=None) -> StageTimes:
    """Time each graph separately on its real inputs, interleaving graphs every iteration so
    that machine noise hits all of them alike."""
    feeds = cached_inputs(chain, x)
    graphs = chain.graphs
    samples = [np.empty(iters) for _ in graphs]
    for i in range(warmup + iters):
        for g, (graph, f) in enumerate(zip(graphs, feeds)):
            t0 = time.perf_counter()
            graph.session.run(graph.output_names, f)
            dt = time.perf_counter() - t0
            if i >= warmup:
                samples[g][i - warmup] = dt
        if progress is not None:
            progress(1)
    return StageTimes(x.shape[0], samples)

