"""The early-exit decision rule, written once: the runtime and calibration both use it.

A sample leaves at exit ``k`` when the largest softmax probability of its logits divided by
the exit's temperature reaches the exit's threshold. Everything is computed in float32, the
dtype the graphs return: logits, temperature and threshold are all cast to float32 before
they meet, so calibration (which chooses thresholds from confidences) and the chain (which
compares confidences with them) agree on every sample, ties at a threshold included.

The functions work on the last axis: a (n, classes) batch or one (classes,) row.
"""
from __future__ import annotations

import numpy as np

ONE = np.float32(1.0)


def exp_and_total(logits: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``e = exp(z / T - max)`` in float32 and its sums over the classes.

    The max softmax probability is ``1 / total`` (the largest ``e`` is exactly 1), so a caller
    that only needs confidences never normalises a row.
    """
    z = np.asarray(logits, np.float32)
    if temperature != 1.0:
        z = z / np.float32(temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e, e.sum(axis=-1)


def confidence(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 max softmax probability of each row (the value compared with a threshold)."""
    return ONE / exp_and_total(logits, temperature)[1]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 softmax over the last axis, of ``logits / temperature``."""
    e, total = exp_and_total(logits, temperature)
    return e / np.expand_dims(total, -1)


def reaches(conf: np.ndarray, threshold) -> np.ndarray:
    """Whether confidences reach a threshold (scalar, or one per row of a column array).

    The threshold is rounded to float32 first: ``inf`` means nobody leaves, ``-inf`` everybody.
    """
    return np.asarray(conf, np.float32) >= np.asarray(threshold, np.float32)


class Decision:
    """What one exit decides for a set of rows (see :func:`decide`).

    Attributes:
        take: bool ``(m,)``: the rows that leave at this exit.
        every: whether every row leaves here (then the fields below are in row order).
        labels: int64 ``(t,)``: argmax of each leaving row's softmax, ``t = take.sum()``.
        confidences: float32 ``(t,)``: each leaving row's max softmax probability.
        probabilities: float32 ``(t, classes)``: each leaving row's softmax.
    """

    __slots__ = ("take", "labels", "confidences", "probabilities", "every")

    def __init__(self, take: np.ndarray, labels: np.ndarray, confidences: np.ndarray, probabilities: np.ndarray,
                 every: bool = False):
        self.take, self.labels, self.confidences, self.probabilities = take, labels, confidences, probabilities
        self.every = every

    @property
    def any(self) -> bool:
        """Whether any row leaves here."""
        return len(self.labels) > 0


def decide(logits: np.ndarray, thresholds: float | np.ndarray, temperatures: float | np.ndarray = 1.0,
           alive: np.ndarray | None = None) -> Decision:
    """The exit rule: which rows of one exit's ``(m, classes)`` logits leave here.

    A row leaves when it is ``alive`` (None: every row) and its max softmax probability of
    ``logits / temperature`` reaches its threshold (:func:`reaches`); a threshold of ``-inf``
    (the last exit) takes every alive row, whatever its logits. ``thresholds`` and
    ``temperatures`` are one value for all rows or one per row (``(m,)``, what the server
    passes: rows of several requests, each with its operating point). The chain, the serving
    engine, calibration and the JavaScript driver's test vectors all decide with this rule.

    Args:
        logits: float32 ``(m, classes)`` (other float dtypes are cast).
        thresholds: scalar or ``(m,)``; ``inf`` means nobody leaves, ``-inf`` everybody.
        temperatures: scalar or ``(m,)``, > 0.
        alive: bool ``(m,)`` or None.

    Returns:
        A :class:`Decision`; its label, confidence and softmax rows are those of the leaving rows.
    """
    z = logits if type(logits) is np.ndarray and logits.dtype is _F32 else np.asarray(logits, np.float32)
    if len(z) == 1 and (type(thresholds) is not np.ndarray or not thresholds.ndim) \
            and (type(temperatures) is not np.ndarray or not temperatures.ndim):
        return _decide_one(z, thresholds, temperatures, alive)
    if isinstance(temperatures, np.ndarray) and temperatures.ndim:  # one per row
        temps = temperatures.astype(np.float32, copy=False)
        if (temps != ONE).any():
            z = z / temps[:, None]
    elif temperatures != 1.0:
        z = z / np.float32(temperatures)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    total = e.sum(axis=-1)
    conf = ONE / total  # the largest e is exactly 1: no row is normalised before it is taken
    if isinstance(thresholds, np.ndarray) and thresholds.ndim:  # one per row
        thr = thresholds.astype(np.float32, copy=False)
        take = (conf >= thr) | (thr == -np.inf)
    else:
        thr = np.float32(thresholds)
        take = np.ones(len(conf), bool) if thr == -np.inf else conf >= thr
    if alive is not None:
        take &= alive
    if take.all():  # every row leaves (batch 1, the last exit): no row is picked out
        p = e / total[:, None]
        return Decision(take, p.argmax(axis=1), conf, p, True)
    if not take.any():
        return Decision(take, _NO_LABELS, _NO_CONF, np.empty((0, z.shape[-1]), np.float32))
    p = e[take] / total[take, None]
    return Decision(take, p.argmax(axis=1), conf[take], p)


def _decide_one(z: np.ndarray, threshold, temperature, alive: np.ndarray | None) -> Decision:
    """:func:`decide` for one row and one threshold (every ``predict`` of one sample): the same
    float32 operations on the row itself, with fewer numpy calls (the reductions are called as
    the ufuncs ``ndarray.max`` / ``sum`` wrap, and a row that stays is answered by a shared,
    read-only Decision). A test checks it against the batch form bit for bit."""
    row = z[0] if temperature == 1.0 else z[0] / np.float32(temperature)
    e = np.exp(row - _MAX(row))
    total = _SUM(e)
    conf = ONE / total
    thr = np.float32(threshold)
    if (thr == -np.inf or conf >= thr) and (alive is None or alive[0]):
        p = e / total
        return Decision(_ONE_TAKEN, np.array([p.argmax()]), np.array([conf]), p[None], True)
    stays = _STAYS.get(len(row))
    if stays is None:
        none = np.empty((0, len(row)), np.float32)
        none.flags.writeable = False
        stays = _STAYS[len(row)] = Decision(_NONE_TAKEN, _NO_LABELS, _NO_CONF, none)
    return stays


_ONE_TAKEN, _NONE_TAKEN = np.ones(1, bool), np.zeros(1, bool)
_ONE_TAKEN.flags.writeable = _NONE_TAKEN.flags.writeable = False
_NO_LABELS = np.empty(0, np.int64)
_NO_CONF = np.empty(0, np.float32)
_NO_LABELS.flags.writeable = _NO_CONF.flags.writeable = False
_STAYS: dict[int, Decision] = {}  # per class count: "this one row stays" (nothing in it is ever written)
_F32 = np.dtype(np.float32)
_MAX, _SUM = np.maximum.reduce, np.add.reduce
