"""A scripted clock for deadline tests: each graph run advances it by a fixed number of ms,
so which graphs a deadline lets run is decided by arithmetic, not by the machine's speed."""
from __future__ import annotations

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.deadline import StageTimes

CLASSES = (1, 2, 4, 8, 16, 32, 64, 128)


class ScriptedClock:
    """A clock that only moves when a graph runs (``ms[g]`` per run of graph ``g``)."""

    def __init__(self, ms: list[float]):
        self.ms = list(ms)
        self.now = 100.0
        self.runs: list[tuple[int, int]] = []  # (graph, rows) of every run

    def __call__(self) -> float:
        return self.now


def script(chain: ExitChain, monkeypatch: pytest.MonkeyPatch, ms: list[float],
           expected_ms: list[float] | None = None) -> ScriptedClock:
    """Run ``chain`` on a scripted clock: graph ``g`` takes ``ms[g]`` ms, and the chain expects
    ``expected_ms[g]`` (default: ``ms``) at every batch size class."""
    clock = ScriptedClock(ms)
    real = chain.executor.run

    def run(g, env):
        clock.runs.append((g, env.rows))
        clock.now += clock.ms[g] / 1e3
        return real(g, env)

    monkeypatch.setattr(chain.executor, "run", run)
    monkeypatch.setattr(chain, "clock", clock)
    times = StageTimes(len(chain.graphs))
    for g, t in enumerate(expected_ms or ms):
        for c in CLASSES:
            times.record(g, c, t / 1e3)
    monkeypatch.setattr(chain, "stage_times", times)
    return clock


def shipped(max_batch: int | None = None, n: int = 64) -> tuple[ExitChain, np.ndarray]:
    """The shipped bundle (no warm-up) and ``n`` of its sample images, preprocessed."""
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this install ships no default bundle")
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False, max_batch=max_batch)
    with np.load(SAMPLE_IMAGES) as z:
        return chain, chain.preprocess(z["x"][:n])
