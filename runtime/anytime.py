"""Answers that refine as exits finish: the snapshots ``ExitChain.anytime`` yields.

``anytime`` runs the same routing loop as ``predict`` (same thresholds, same deadline rule)
and, after every graph run, yields a :class:`Snapshot` of the whole batch: the answer each
sample has now, and which answers are final. A caller can show the first snapshot's labels
at once and replace them as deeper exits finish; the last snapshot's answers are
``predict``'s, sample by sample.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .deadline import Budget
from .decision import confidence
from .results import StageRows


@dataclass(frozen=True)
class Snapshot:
    """The state of an ``anytime`` call after one graph run. Every array has one entry per
    input sample (N), in input order, and is the snapshot's own (later snapshots never change it).

    Attributes:
        graph: index of the graph that just ran (for a deadline cut: the last one run).
        exit: the deepest exit that graph computes; the running samples' answers are there.
        labels: int64 (N,): each sample's answer now: its final answer where ``final``,
            else the argmax at ``exit`` for the samples this graph ran on; -1 for samples no
            graph has reached yet (a later chunk of ``max_batch``).
        exits: int64 (N,): the exit each answer comes from (-1: none yet).
        confidences: float32 (N,): max softmax probability (with the exit's temperature) of
            each answer (0: none yet).
        running: bool (N,): the samples this graph ran on (False for every sample in a cut
            snapshot).
        final: bool (N,): the samples whose answer will not change any more: they left at
            an exit, or a deadline stopped them.
        deadline_cut: bool (N,): the samples a deadline stopped before their threshold exit.
    """

    graph: int
    exit: int
    labels: np.ndarray
    exits: np.ndarray
    confidences: np.ndarray
    running: np.ndarray
    final: np.ndarray
    deadline_cut: np.ndarray

    @property
    def done(self) -> bool:
        """Whether every answer is final (the last snapshot of a call)."""
        return bool(self.final.all())


def snapshots(chain: Any, x: np.ndarray, thr: np.ndarray, temps: np.ndarray,
              budget: Budget | None, rule: str = "max_prob") -> Iterator[Snapshot]:
    """The snapshots of routing the checked batch ``x`` through ``chain`` (see the module doc)
    by exit rule ``rule``: one per graph run, and one more for each deadline cut (no graph runs for it)."""
    n = len(x)
    labels = np.full(n, -1, np.int64)
    exits = np.full(n, -1, np.int64)
    conf = np.zeros(n, np.float32)
    final = np.zeros(n, bool)
    cut = np.zeros(n, bool)
    seen: deque[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = deque()  # graph runs not yet paired with their rows

    def watch(g: int, rows: np.ndarray, logits: list[np.ndarray]) -> None:
        k = chain.executor.graphs[g].exits[-1]
        z = np.asarray(logits[-1], np.float32)[:len(rows)]
        labels_g = z.argmax(axis=1)
        conf_g = confidence(z, temps[k])
        seen.append((g, k, rows.copy(), labels_g, conf_g))

    last = (0, 0)
    for part in chain._stages(x, thr, temps, budget, watch, rule):
        running = np.zeros(n, bool)
        if part is not None and part.cut:
            g, k = last
            cut[part.rows] = True
        else:
            g, k, rows, labels_g, conf_g = seen.popleft()
            labels[rows], exits[rows], conf[rows] = labels_g, k, conf_g
            running[rows] = True
            last = (g, k)
        if part is not None:
            _settle(part, labels, exits, conf, final)
        yield Snapshot(g, k, labels.copy(), exits.copy(), conf.copy(), running, final.copy(), cut.copy())


def _settle(part: StageRows, labels: np.ndarray, exits: np.ndarray, conf: np.ndarray, final: np.ndarray) -> None:
    """Write the rows ``part`` decided as final answers."""
    labels[part.rows], exits[part.rows], conf[part.rows] = part.labels, part.exits, part.confidences
    final[part.rows] = True
