"""What the protocol tests share: the answers ExitChain itself gives, a request answered by
the StageEngine in this process, PNG test images and in-process request bodies."""
from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass

import cv2
import numpy as np

from ranet_edge.assets import SAMPLE_IMAGES
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.stage_engine import StageEngine


def infer(model: ServedModel, req):
    """The answer a StageEngine of its own gives to the parsed request ``req`` (an ``oip.InferRequest``)."""
    async def run():
        engine = StageEngine(model)
        await engine.start()
        try:
            return await engine.classify(req.x, req.point)
        finally:
            await engine.close(5.0)

    return asyncio.run(run())


@dataclass(frozen=True)
class Expected:
    labels: np.ndarray  # int64 (n,)
    exits: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,)
    logits: np.ndarray  # float32 (n, classes): the logits of the exit each image left at


def expected(model: ServedModel, x: np.ndarray, point: str | None = None) -> Expected:
    """What the chain itself says for ``x`` (``ExitChain.predict`` for the decisions, the
    exit's logits from ``ExitChain.run_all``): the answer every protocol path must give."""
    chain = model.chain
    pred = chain.predict(x, point or model.default_point)
    every = chain.run_all(x)
    logits = np.stack([every[int(e)][i] for i, e in enumerate(pred.exits)]).astype(np.float32)
    return Expected(pred.labels.astype(np.int64), pred.exits.astype(np.int64),
                    pred.confidences.astype(np.float32), logits)


def sample_images(n: int) -> np.ndarray:
    """The first ``n`` CIFAR-10 validation images shipped with the package, uint8 NHWC RGB."""
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"][:n]


def png(rgb: np.ndarray) -> bytes:
    """One RGB image as PNG bytes (lossless: decoding gives ``rgb`` back exactly)."""
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def json_pngs(images) -> bytes:
    """A ``/v1/classify`` JSON body: the list of ``images`` (RGB arrays, or bytes sent as they
    are) as base64 strings."""
    return json.dumps([base64.b64encode(im if isinstance(im, bytes) else png(im)).decode() for im in images]).encode()


def reader(data: bytes, delay_s: float = 0.0):
    """The ``read_body`` a ``Routes.handle`` call takes, giving ``data`` (after ``delay_s``)."""
    async def read(_limit: int) -> bytes:
        if delay_s:
            await asyncio.sleep(delay_s)
        return data
    return read
