"""The exit decided on the device: the shipped decision graph and its host side.

``decide.onnx`` (next to this module; built by ``python -m ranet_edge.export.decision_graph``,
a test checks the file is that script's output) turns one exit's logits, threshold,
temperature and the bucket's ``alive`` mask into a ``summary`` (counts and a fixed-length row
order), the softmax rows in that order, and the rows that go on. See the builder's docstring
for the exact inputs and outputs.

Why a shipped generic file and not a graph per bundle: the graph depends on the rule, not on
the model (its batch and class axes are symbolic), so it belongs with the runtime code that
reads its outputs; bundles exported before it existed work unchanged; the runtime reads it
with onnxruntime alone (no ``onnx`` package at run time).

Exactness. The graph's ``exp`` and sum are other kernels than numpy's and can differ from
``runtime.decision`` by a few float32 ulps per class. A row's decision can only differ when
its confidence lies within that error of the threshold; the graph counts those rows
(``near``, within :func:`band`, a bound with a wide margin) and :func:`decide_on_host`
re-decides such a batch from its logits with ``runtime.decision`` itself. So the exits are
the rule's exactly, ties at the threshold included.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .decision import confidence, reaches, softmax

GRAPH_PATH = Path(__file__).resolve().parent / "decide.onnx"
INPUTS = ("logits", "threshold", "temperature", "band", "alive")
OUTPUTS = ("summary", "probs", "go_on")
HEAD = 3  # summary = [go_on count, left count, near count, order (n)]


def graph_bytes() -> bytes:
    """The shipped decision graph."""
    return GRAPH_PATH.read_bytes()


def band(num_classes: int) -> float:
    """Relative half-width around the threshold inside which the device's confidence may
    decide differently from numpy's: ``2 * (classes + 8) * 2**-22``, twice a bound of 4 ulps
    per summed class (exp within 3 ulps on every provider, each add within half an ulp)."""
    return float(2 * (int(num_classes) + 8) * 2.0 ** -22)


def order_rows(go_on: np.ndarray, leave: np.ndarray) -> np.ndarray:
    """The graph's row order computed on the host: go-on rows, leaving rows, then the rest."""
    dead = ~(go_on | leave)
    return np.concatenate([np.flatnonzero(go_on), np.flatnonzero(leave), np.flatnonzero(dead)]).astype(np.int64)


def decide_on_host(logits: np.ndarray, alive: np.ndarray, threshold: float,
                   temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(summary, probs in order, go_on) as the graph would give them, by ``runtime.decision``."""
    z = np.asarray(logits, np.float32)
    alive = np.asarray(alive, bool)
    leave = alive & reaches(confidence(z, temperature), threshold)
    go_on = alive & ~leave
    order = order_rows(go_on, leave)
    summary = np.concatenate([[go_on.sum(), leave.sum(), 0], order]).astype(np.int64)
    return summary, softmax(z[order], temperature), go_on


def split(summary: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    """(go_on, left, near, order) of a summary vector."""
    return int(summary[0]), int(summary[1]), int(summary[2]), summary[HEAD:]


def left_rows(summary: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bucket positions, labels, confidences, probabilities) of the rows leaving at this exit.

    The confidence is the row's largest probability: the largest ``e`` is exactly 1, so it is
    ``1 / total``, the value the rule compared (``runtime.routing.decide_exit`` does the same).
    """
    go, left, _, order = split(summary)
    p = probs[go:go + left]
    return order[go:go + left], p.argmax(axis=1), p.max(axis=1), p


def decide(session, logits: np.ndarray, alive: np.ndarray, threshold: float, temperature: float,
           exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the decision graph on host arrays (``session``: an InferenceSession of
    :func:`graph_bytes`); with ``exact``, a batch with near rows is re-decided on the host.
    The device plans do the same with bound device buffers."""
    z = np.ascontiguousarray(logits, np.float32)
    feeds = {"logits": z, "threshold": np.array([threshold], np.float32),
             "temperature": np.array([temperature], np.float32),
             "band": np.array([band(z.shape[1])], np.float32), "alive": np.asarray(alive, bool)}
    summary, probs, go_on = session.run(list(OUTPUTS), feeds)
    if exact and summary[2] > 0:
        return decide_on_host(z, alive, threshold, temperature)
    return summary, probs, go_on
