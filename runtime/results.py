"""What a predict call hands back: the rows each graph decided, and the per-sample results.

The routing loop (:meth:`ExitChain.predict_stages <ranet_edge.runtime.chain.ExitChain.predict_stages>`)
yields one :class:`StageRows` per graph run; :class:`Results` collects them, in input order,
into a :class:`Prediction`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """Per-sample results, in input order."""

    labels: np.ndarray  # int64 (N,)
    exits: np.ndarray  # int64 (N,), 0-based exit index
    confidences: np.ndarray  # float32 (N,), max softmax probability at the exit taken (every rule)
    # float32 (N, classes), softmax at the exit taken; when exits differ in class count, classes is
    # the widest exit's and a row is zero beyond its exit's count (ExitChain.exit_classes)
    probabilities: np.ndarray
    cut: np.ndarray | None = field(default=None, repr=False)  # see deadline_cut (None: nobody cut)

    @property
    def deadline_cut(self) -> np.ndarray:
        """bool (N,): the samples a deadline stopped before their threshold exit (they hold
        the deepest exit computed for them in time). All False without a deadline."""
        return np.zeros(len(self.labels), bool) if self.cut is None else self.cut


@dataclass(frozen=True)
class StageRows:
    """Samples decided together (by one exit, or by one graph of a predict_stages run)."""

    rows: np.ndarray  # int64 (M,), positions in the input batch
    labels: np.ndarray  # int64 (M,)
    exits: np.ndarray  # int64 (M,), 0-based exit index
    confidences: np.ndarray  # float32 (M,), max softmax probability at the exit taken
    probabilities: np.ndarray  # float32 (M, classes), softmax at the exit taken
    cut: bool = False  # a deadline stopped these rows (they left at the deepest exit computed)

    @classmethod
    def concat(cls, parts: list[StageRows], num_classes: int) -> StageRows:
        """One StageRows of ``parts`` in order (an empty one, with ``num_classes`` columns, for none)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64),
                       np.empty(0, np.float32), np.empty((0, num_classes), np.float32))
        return cls(*(np.concatenate(col) for col in zip(*((p.rows, p.labels, p.exits, p.confidences,
                                                             p.probabilities) for p in parts))))


class Results:
    """Per-sample outputs of one predict call, filled as the graphs decide them."""

    def __init__(self, n: int):
        self.n = n
        self.labels = np.empty(n, np.int64)
        self.exits = np.empty(n, np.int64)
        self.conf = np.empty(n, np.float32)
        self.probs: np.ndarray | None = None
        self.cut: np.ndarray | None = None  # bool (n,) once a cut StageRows arrives

    def fill(self, d: StageRows) -> None:
        """Record the rows ``d`` decided."""
        if not len(d.rows):
            return
        if d.cut:
            if self.cut is None:
                self.cut = np.zeros(self.n, bool)
            self.cut[d.rows] = True
        if self.probs is None and len(d.rows) == self.n and (self.n == 1 or (d.rows[:-1] < d.rows[1:]).all()):
            # every row at once, in input order: adopt the arrays
            self.labels, self.exits, self.conf, self.probs = d.labels, d.exits, d.confidences, d.probabilities
            return
        if self.probs is None:
            self.probs = np.empty((self.n, d.probabilities.shape[1]), np.float32)
        self.probs[d.rows] = d.probabilities
        self.labels[d.rows] = d.labels
        self.exits[d.rows] = d.exits
        self.conf[d.rows] = d.confidences

    def prediction(self) -> Prediction:
        """The filled results (every row must have been decided)."""
        return Prediction(self.labels, self.exits, self.conf, self.probs, self.cut)


def in_order(rows: np.ndarray) -> bool:
    """Whether distinct row positions are ascending (a graph with two exits lists the rows of
    its first exit, then those of its second)."""
    return len(rows) == 1 or bool((rows[:-1] < rows[1:]).all())


def exit_column(k: int, n: int) -> np.ndarray:
    """int64 ``(n,)`` of exit ``k`` (``np.full`` costs a microsecond more for the one row of batch 1)."""
    return np.array([k], np.int64) if n == 1 else np.full(n, k, np.int64)


def widen(part: StageRows, width: int) -> StageRows:
    """``part`` with its softmax rows as ``(t, width)``, zero beyond its exit's classes (the form
    ``probabilities`` takes when exits differ in class count); ``part`` itself when it is that wide."""
    p = part.probabilities
    if p.shape[1] == width:
        return part
    out = np.zeros((len(p), width), np.float32)
    out[:, :p.shape[1]] = p
    return replace(part, probabilities=out)
