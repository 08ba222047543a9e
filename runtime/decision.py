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
