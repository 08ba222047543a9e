"""What the gRPC tests share (test_grpc_service.py, test_grpc_production.py, test_grpc_fuzz.py):
a real grpc.aio server in a thread of its own, calls with our own message classes, and the
tritonclient inputs and checks. Import it after ``pytest.importorskip("tritonclient.grpc")``."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import tritonclient.grpc as tritongrpc
from oip_support import png

from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.grpc_service import build_grpc_server, messages
from ranet_edge.serve.stage_engine import StageEngine

MAX_IMAGES = 16
NAME = "ranet-edge"
WAIT_S = 60  # bound on every client call and on starting and stopping the server


class LoopThread:
    """An event loop in a thread, for a server the synchronous clients below call."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=WAIT_S)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=WAIT_S)
        self.loop.close()


@contextmanager
def grpc_server(model: ServedModel) -> Iterator[int]:
    """A StageEngine and its gRPC server on a free loopback port (yielded), in a loop thread;
    stopped, engine closed, on the way out."""
    loops = LoopThread()
    state = {}

    async def start():
        engine = StageEngine(model)
        await engine.start()
        server, bound = build_grpc_server(engine, NAME, "127.0.0.1", 0)
        await server.start()
        state.update(server=server, engine=engine)
        return bound

    try:
        yield loops.run(start())
    finally:
        async def stop():
            if "server" in state:
                await state["server"].stop(grace=5)
                await state["engine"].close(5)

        try:
            loops.run(stop())
        finally:
            loops.close()


def rpc(channel, method: str, request, timeout: float = WAIT_S):
    """Call one method with our own message classes (what tritonclient would not send)."""
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                               request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
                               response_deserializer=messages[f"{method}Response"].FromString)
    return call(request, timeout=timeout)


def image_input(images: np.ndarray):
    files = np.array([png(im) for im in images], dtype=np.object_)
    return tritongrpc.InferInput("image", [len(files)], "BYTES").set_data_from_numpy(files)


def outputs(*names):
    return [tritongrpc.InferRequestedOutput(n) for n in names]


def assert_answers(result, want, names=("label", "exit", "confidence")):
    got = {n: result.as_numpy(n) for n in names}
    if "label" in names:
        np.testing.assert_array_equal(got["label"], want.labels)
        assert got["label"].dtype == np.int64
    if "exit" in names:
        np.testing.assert_array_equal(got["exit"], want.exits)
    if "confidence" in names:
        np.testing.assert_allclose(got["confidence"], want.confidences, rtol=0, atol=1e-6)
        assert got["confidence"].dtype == np.float32
    if "logits" in names:
        np.testing.assert_allclose(got["logits"], want.logits, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- asyncio clients
async def served(engine, **kw):
    """A started server on a free port, and an aio channel to it."""
    server, bound = build_grpc_server(engine, NAME, "127.0.0.1", 0, **kw)
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{bound}")


def aio_call(channel, method: str):
    return channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=messages[f"{method}Response"].FromString)


def one_image_request(images, i: int, request_id: str = ""):
    req = messages["ModelInferRequest"](model_name=NAME, id=request_id)
    req.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(png(images[i]))
    return req
