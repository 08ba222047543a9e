"""Per-sample routing: what one exit decides, and the results of a predict call.

:func:`decide_exit` applies the decision rule (``decision.py``: temperature, max-softmax,
threshold) to one exit's logits and returns the rows that leave there as
:class:`StageRows`; :class:`ExitChain.predict <ranet_edge.runtime.chain.ExitChain>` collects
them into a :class:`Prediction`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .decision import ONE, exp_and_total, reaches


@dataclass(frozen=True)
class Prediction:
    """Per-sample results, in input order."""

    labels: np.ndarray  # int64 (N,)
    exits: np.ndarray  # int64 (N,), 0-based exit index
    confidences: np.ndarray  # float32 (N,), max softmax probability at the exit taken
    probabilities: np.ndarray  # float32 (N, classes), softmax at the exit taken


@dataclass(frozen=True)
class StageRows:
    """Samples decided together (by one exit, or by one graph of a predict_stages run)."""

    rows: np.ndarray  # int64 (M,), positions in the input batch
    labels: np.ndarray  # int64 (M,)
    exits: np.ndarray  # int64 (M,), 0-based exit index
    confidences: np.ndarray  # float32 (M,), max softmax probability at the exit taken
    probabilities: np.ndarray  # float32 (M, classes), softmax at the exit taken

    @classmethod
    def concat(cls, parts: list[StageRows], num_classes: int) -> StageRows:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64),
                       np.empty(0, np.float32), np.empty((0, num_classes), np.float32))
        return cls(*(np.concatenate(col) for col in zip(*((p.rows, p.labels, p.exits, p.confidences,
                                                             p.probabilities) for p in parts))))


def decide_exit(z: np.ndarray, k: int, threshold: float, temperature: float, rows: np.ndarray,
                alive: np.ndarray | None) -> tuple[np.ndarray | None, StageRows | None]:
    """The rows of exit ``k``'s logits ``z`` whose confidence reaches ``threshold``.

    ``rows`` maps the rows of ``z`` to input positions; ``alive`` masks the rows an earlier
    exit of the same graph has not taken (None: all). Returns the rows still alive after
    this exit (None when all are) and those decided here (None when none are).
    """
    e, total = exp_and_total(z, temperature)
    ck = ONE / total  # max softmax probability, without normalising every row
    take = reaches(ck, threshold)
    if alive is not None:
        take &= alive
    if not take.any():
        return alive, None
    pk = e[take] / total[take, None]
    decided = StageRows(rows[take], pk.argmax(axis=1), np.full(len(pk), k, np.int64), ck[take], pk)
    return (~take if alive is None else alive & ~take), decided


class Results:
    """Per-sample outputs of one predict call, filled as the graphs decide them."""

    def __init__(self, n: int):
        self.n = n
        self.labels = np.empty(n, np.int64)
        self.exits = np.empty(n, np.int64)
        self.conf = np.empty(n, np.float32)
        self.probs: np.ndarray | None = None

    def fill(self, d: StageRows) -> None:
        if not len(d.rows):
            return
        if self.probs is None:
            self.probs = np.empty((self.n, d.probabilities.shape[1]), np.float32)
        self.probs[d.rows] = d.probabilities
        self.labels[d.rows] = d.labels
        self.exits[d.rows] = d.exits
        self.conf[d.rows] = d.confidences
