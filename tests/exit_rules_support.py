"""Shared pieces of the exit-rule tests (tests/test_exit_rules*.py): the reference rules,
written apart from the runtime in numpy float32 from ``run_all``'s logits, the check of every
routing path against them (the writable copy of the shipped bundle they use,
``shipped_copy``, is in conftest.py)."""
from __future__ import annotations

import numpy as np

from ranet_edge.runtime import ExitChain


# ------------------------------------------------------------------ the reference, written apart
def ref_softmax(z: np.ndarray, t: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """float32 (softmax, entropy) of each row: d = z/T - max, H = log(sum e) - sum(e d) / sum e."""
    z = z.astype(np.float32)
    if t != 1.0:
        z = z / np.float32(t)
    d = z - z.max(axis=1, keepdims=True)
    e = np.exp(d)
    s = e.sum(axis=1)
    return e / s[:, None], np.log(s) - (e * d).sum(axis=1) / s


def ref_entropy_exits(logits: list[np.ndarray], thresholds: list[float]) -> np.ndarray:
    n = len(logits[0])
    out = np.full(n, len(logits) - 1)
    for i in range(n):
        for k, t in enumerate(thresholds):
            h = ref_softmax(logits[k][i:i + 1])[1][0]
            if t != np.inf and h <= np.float32(t):
                out[i] = k
                break
    return out


def ref_patience_exits(logits: list[np.ndarray], t: int) -> np.ndarray:
    labels = [ref_softmax(z)[0].argmax(axis=1) for z in logits]
    counts = [z.shape[1] for z in logits]
    n, last = len(logits[0]), len(logits) - 1
    out = np.full(n, last)
    for i in range(n):
        streak = 0
        for k in range(len(logits)):
            same = k > 0 and counts[k] == counts[k - 1] and labels[k][i] == labels[k - 1][i]
            streak = streak + 1 if same else 0
            if streak >= t:
                out[i] = k
                break
    return out


def every_path(chain: ExitChain, x: np.ndarray, **kw) -> list:
    """predict's result on a batch, one sample at a time, through predict_stages, and in chunks."""
    batch = chain.predict(x, **kw)
    ones = [chain.predict(x[i:i + 1], **kw) for i in range(len(x))]
    staged = {"exits": np.empty(len(x), np.int64), "labels": np.empty(len(x), np.int64)}
    for part in chain.predict_stages(x, **kw):
        staged["exits"][part.rows] = part.exits
        staged["labels"][part.rows] = part.labels
    small = ExitChain.load(chain.manifest.root, threads=1, max_batch=5, warmup=False)
    chunked = small.predict(x, **kw)
    return [(batch.exits, batch.labels), (np.array([p.exits[0] for p in ones]), np.array([p.labels[0] for p in ones])),
            (staged["exits"], staged["labels"]), (chunked.exits, chunked.labels)], batch


def check_against(chain, x, logits, want_exits, **kw) -> None:
    paths, batch = every_path(chain, x, **kw)
    want_labels = np.array([ref_softmax(logits[k][i:i + 1])[0].argmax() for i, k in enumerate(want_exits)])
    for exits, labels in paths:
        np.testing.assert_array_equal(exits, want_exits)
        np.testing.assert_array_equal(labels, want_labels)
