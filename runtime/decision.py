"""The early-exit decision rule, written once: the runtime and calibration both use it.

Three rules (:data:`RULES`), each deciding per row:

* ``max_prob`` (the default): a sample leaves at exit ``k`` when the largest softmax
  probability of its logits divided by the exit's temperature reaches the exit's threshold.
* ``entropy`` (DeeBERT): it leaves when the softmax entropy (natural log, after the
  temperature) is at most the exit's threshold, a maximum entropy >= 0.
* ``patience`` (PABEE): it leaves when its label equals the labels of the ``t`` exits before
  it, ``t`` being the exit's threshold (an int >= 1). The count of agreeing exits is
  per-sample state carried from exit to exit (:class:`Streak`).

In every rule a threshold of ``inf`` means nobody leaves at that exit and ``-inf`` (the last
exit's) means everybody left leaves, whatever the logits. Everything is computed in float32,
the dtype the graphs return: logits, temperature and threshold are all cast to float32 before
they meet, so calibration (which chooses thresholds from scores) and the chain (which
compares scores with them) agree on every sample, ties at a threshold included (a tie leaves).

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


def entropy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float32 softmax entropy (natural log) of each row of ``logits / temperature``.

    Computed as ``log(S) - sum(e * d) / S`` with ``d = z - max z``, ``e = exp(d)``, ``S = sum e``:
    every term keeps its sign, so the result is never negative nor NaN (a class whose ``e``
    underflows to 0 adds 0, not ``0 * log 0``). This is the value ``entropy`` thresholds meet.
    """
    z = np.asarray(logits, np.float32)
    if temperature != 1.0:
        z = z / np.float32(temperature)
    d = z - z.max(axis=-1, keepdims=True)
    e = np.exp(d)
    total = e.sum(axis=-1)
    return _entropy(e, d, total)


def _entropy(e: np.ndarray, d: np.ndarray, total: np.ndarray) -> np.ndarray:
    return np.log(total) - (e * d).sum(axis=-1) / total


def within(ent: np.ndarray, threshold) -> np.ndarray:
    """Whether entropies are at most a threshold (the ``entropy`` rule's test; ties leave).

    As in every rule, ``inf`` means nobody leaves and ``-inf`` everybody; the threshold is
    rounded to float32 first.
    """
    thr = np.asarray(threshold, np.float32)
    return ((np.asarray(ent, np.float32) <= thr) & (thr != np.inf)) | (thr == -np.inf)


RULES = ("max_prob", "entropy", "patience")


class Streak:
    """The ``patience`` rule's state of each row: the label it got at the last exit it passed,
    and for how many exits before that one in a row its label was the same.

    Labels are compared only between exits of one class count (``classes``): at an exit whose
    class count differs from the previous exit's, every streak starts again at 0.
    """

    __slots__ = ("labels", "count", "classes")

    def __init__(self, labels: np.ndarray, count: np.ndarray, classes: int):
        self.labels, self.count, self.classes = labels, count, classes

    def take(self, keep: np.ndarray) -> Streak:
        """The state of the rows ``keep`` (positions), for the rows that go on."""
        return Streak(self.labels[keep], self.count[keep], self.classes)


class Decision:
    """What one exit decides for a set of rows (see :func:`decide`).

    Attributes:
        take: bool ``(m,)``: the rows that leave at this exit.
        every: whether every row leaves here (then the fields below are in row order).
        labels: int64 ``(t,)``: argmax of each leaving row's softmax, ``t = take.sum()``.
        confidences: float32 ``(t,)``: each leaving row's max softmax probability.
        probabilities: float32 ``(t, classes)``: each leaving row's softmax.
        state: ``patience`` only: the :class:`Streak` of all ``m`` rows after this exit, to pass
            to the next exit's :func:`decide` (None for the other rules).
    """

    __slots__ = ("take", "labels", "confidences", "probabilities", "every", "state")

    def __init__(self, take: np.ndarray, labels: np.ndarray, confidences: np.ndarray, probabilities: np.ndarray,
                 every: bool = False, state: Streak | None = None):
        self.take, self.labels, self.confidences, self.probabilities = take, labels, confidences, probabilities
        self.every, self.state = every, state

    @property
    def any(self) -> bool:
        """Whether any row leaves here."""
        return len(self.labels) > 0


def decide(logits: np.ndarray, thresholds: float | np.ndarray, temperatures: float | np.ndarray = 1.0,
           alive: np.ndarray | None = None, rule: str = "max_prob", state: Streak | None = None) -> Decision:
    """The exit rule: which rows of one exit's ``(m, classes)`` logits leave here.

    A row leaves when it is ``alive`` (None: every row) and ``rule`` takes it (see the module
    doc): ``max_prob``: its max softmax probability of ``logits / temperature`` reaches its
    threshold (:func:`reaches`); ``entropy``: its softmax entropy is at most its threshold
    (:func:`within`); ``patience``: its label equals that of the ``threshold`` exits before it
    (``state`` is the :class:`Streak` the previous exit's decision returned, None at the first
    exit). A threshold of ``-inf`` (the last exit) takes every alive row, ``inf`` none.
    ``thresholds`` and ``temperatures`` are one value for all rows or one per row (``(m,)``,
    what the server passes: rows of several requests, each with its operating point). The
    chain, the serving engine, calibration and the JavaScript driver's test vectors all decide
    with this function.

    Args:
        logits: float32 ``(m, classes)`` (other float dtypes are cast).
        thresholds: scalar or ``(m,)``; ``inf`` means nobody leaves, ``-inf`` everybody.
        temperatures: scalar or ``(m,)``, > 0.
        alive: bool ``(m,)`` or None.
        rule: one of :data:`RULES`.
        state: ``patience`` only: the rows' :class:`Streak` so far (rows in the order of ``logits``).

    Returns:
        A :class:`Decision`; its label, confidence and softmax rows are those of the leaving rows.

    Raises:
        ValueError: an unknown ``rule``.
    """
    z = logits if type(logits) is np.ndarray and logits.dtype is _F32 else np.asarray(logits, np.float32)
    if rule == "max_prob" and len(z) == 1 and (type(thresholds) is not np.ndarray or not thresholds.ndim) \
            and (type(temperatures) is not np.ndarray or not temperatures.ndim):
        return _decide_one(z, thresholds, temperatures, alive)
    if isinstance(temperatures, np.ndarray) and temperatures.ndim:  # one per row
        temps = temperatures.astype(np.float32, copy=False)
        if (temps != ONE).any():
            z = z / temps[:, None]
    elif temperatures != 1.0:
        z = z / np.float32(temperatures)
    d = z - z.max(axis=-1, keepdims=True)
    e = np.exp(d)
    total = e.sum(axis=-1)
    conf = ONE / total  # the largest e is exactly 1: no row is normalised before it is taken
    per_row_thr = isinstance(thresholds, np.ndarray) and thresholds.ndim
    thr = thresholds.astype(np.float32, copy=False) if per_row_thr else np.float32(thresholds)
    streak = None
    if rule == "max_prob":
        take = (conf >= thr) | (thr == -np.inf)
    elif rule == "entropy":
        take = within(_entropy(e, d, total), thr)
    elif rule == "patience":
        labels = (e / total[:, None]).argmax(axis=1)  # the labels decide() reports (argmax of the softmax)
        if state is None or state.classes != z.shape[-1]:
            count = np.zeros(len(z), np.int64)
        else:
            count = np.where(labels == state.labels, state.count + 1, 0)
        streak = Streak(labels, count, z.shape[-1])
        take = (count >= thr) | (thr == -np.inf)
    else:
        raise ValueError(f"unknown exit rule {rule!r}; use one of {', '.join(RULES)}")
    if alive is not None:
        take &= alive
    if take.all():  # every row leaves (batch 1, the last exit): no row is picked out
        p = e / total[:, None]
        return Decision(take, p.argmax(axis=1), conf, p, True, streak)
    if not take.any():
        return Decision(take, _NO_LABELS, _NO_CONF, np.empty((0, z.shape[-1]), np.float32), state=streak)
    p = e[take] / total[take, None]
    return Decision(take, p.argmax(axis=1), conf[take], p, state=streak)


def _decide_one(z: np.ndarray, threshold, temperature, alive: np.ndarray | None) -> Decision:
    """:func:`decide` for one row and one threshold with the ``max_prob`` rule (every ``predict``
    of one sample): the same float32 operations on the row itself, with fewer numpy calls (the
    reductions are called as the ufuncs ``ndarray.max`` / ``sum`` wrap, and a row that stays is
    answered by a shared, read-only Decision). A test checks it against the batch form bit for bit."""
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
