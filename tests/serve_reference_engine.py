"""A reference engine for the protocol tests: StageEngine's interface on plain ExitChain calls.

Not a mock: every answer comes from real ONNX Runtime sessions (``ExitChain.predict`` for the
decision, ``ExitChain.run_all`` for the logits of the exit taken), one request at a time in
a worker thread. It stands in for ``ranet_edge.serve.stage_engine.StageEngine`` (the serve
branch) so the Open Inference Protocol code is tested end to end before that engine lands;
what the tests prove is the protocol, not the engine's batching.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import cv2
import numpy as np

from ranet_edge.assets import SAMPLE_IMAGES
from ranet_edge.errors import RanetEdgeError
from ranet_edge.serve.api import RequestError
from ranet_edge.serve.engine import ServedModel


@dataclass(frozen=True)
class Answer:
    """Same fields as ``stage_engine.Answer``."""

    labels: np.ndarray  # int64 (n,)
    exits: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,)
    logits: np.ndarray  # float32 (n, classes): the logits of the exit each image left at
    server_ms: float


def expected(model: ServedModel, x: np.ndarray, point: str | None = None) -> Answer:
    """What the chain itself says for ``x``: the answer every protocol path must give."""
    chain = model.chain
    pred = chain.predict(x, point or model.default_point)
    every = chain.run_all(x)
    logits = np.stack([every[int(e)][i] for i, e in enumerate(pred.exits)]).astype(np.float32)
    return Answer(pred.labels.astype(np.int64), pred.exits.astype(np.int64),
                  pred.confidences.astype(np.float32), logits, 0.0)


class ReferenceEngine:
    """``start`` / ``classify`` / ``close`` as StageEngine has them; one request at a time."""

    def __init__(self, model: ServedModel):
        self.model = model
        self._closed = False
        self._lock: asyncio.Lock | None = None

    async def start(self) -> None:
        self._lock = asyncio.Lock()

    async def classify(self, x: np.ndarray, point: str | None) -> Answer:
        if self._closed or self._lock is None:
            raise RequestError(503, "the server is shutting down; retry on another replica")
        start = time.perf_counter()
        try:
            self.model.check_point(point)
        except RanetEdgeError as exc:
            raise RequestError(400, str(exc)) from None
        async with self._lock:
            answer = await asyncio.to_thread(expected, self.model, x, point)
        return Answer(answer.labels, answer.exits, answer.confidences, answer.logits,
                      (time.perf_counter() - start) * 1e3)

    async def close(self, budget_s: float) -> None:
        self._closed = True


def sample_images(n: int) -> np.ndarray:
    """The first ``n`` CIFAR-10 validation images shipped with the package, uint8 NHWC RGB."""
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"][:n]


def png(rgb: np.ndarray) -> bytes:
    """One RGB image as PNG bytes (lossless: decoding gives ``rgb`` back exactly)."""
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()
