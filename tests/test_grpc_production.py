"""The gRPC service's production basics (ranet_edge/serve/grpc_service.py): concurrent
requests sharing one engine, draining, the time limit, metrics, and `ranet-edge serve
--grpc-port` in its own process. Each test starts its own server (grpc.aio, a free port)."""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

tritongrpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (the test extra)")
import grpc
from grpc_support import (
    MAX_IMAGES,
    NAME,
    WAIT_S,
    aio_call,
    assert_answers,
    image_input,
    one_image_request,
    outputs,
    served,
)
from oip_support import expected, sample_images

from ranet_edge.serve import ServeSettings
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.grpc_service import messages
from ranet_edge.serve.stage_engine import StageEngine


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=MAX_IMAGES, max_body_bytes=1 << 20))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(12)


# --------------------------------------------------------------------------- production basics
def test_concurrent_requests_share_the_engine_and_each_gets_its_answer(model, images):
    """32 requests at once over one channel, in flight together in the engine: every answer
    is that request's own (its id, its image's prediction)."""
    want = expected(model, model.chain.preprocess(images))

    async def main():
        engine = StageEngine(model)
        await engine.start()
        server, channel = await served(engine)
        try:
            infer = aio_call(channel, "ModelInfer")
            calls = [infer(one_image_request(images, i % len(images), str(i)), timeout=WAIT_S) for i in range(32)]
            return await asyncio.gather(*calls)
        finally:
            await channel.close()
            await server.stop(grace=None)
            await engine.close(5)

    for i, out in enumerate(asyncio.run(main())):
        k = i % len(images)
        assert out.id == str(i)
        assert np.frombuffer(out.raw_output_contents[0], "<i8").tolist() == [want.labels[k]]
        assert np.frombuffer(out.raw_output_contents[1], "<i8").tolist() == [want.exits[k]]


def test_draining_server_is_not_ready_and_refuses_with_retry_after(model, images):
    async def main():
        engine = StageEngine(model)
        await engine.start()
        server, channel = await served(engine)
        try:
            ready = aio_call(channel, "ServerReady")
            before = (await ready(messages["ServerReadyRequest"](), timeout=WAIT_S)).ready
            await engine.close(1.0)  # what a SIGTERM does first
            after = (await ready(messages["ServerReadyRequest"](), timeout=WAIT_S)).ready
            model_ready = (await aio_call(channel, "ModelReady")(messages["ModelReadyRequest"](name=NAME),
                                                                 timeout=WAIT_S)).ready
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await aio_call(channel, "ModelInfer")(one_image_request(images, 0), timeout=WAIT_S)
            return before, after, model_ready, e.value
        finally:
            await channel.close()
            await server.stop(grace=None)

    before, after, model_ready, err = asyncio.run(main())
    assert before and not after and not model_ready
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.details()
    assert dict(err.trailing_metadata())["retry-after"] == "1"


class StalledEngine(StageEngine):
    """A real StageEngine whose classify waits for ever: what a server too busy to answer
    looks like from the ingress (the time limit is the service's, not the engine's)."""

    async def classify(self, x, point, **_):
        await asyncio.Event().wait()


def test_time_limit_is_deadline_exceeded(images):
    model = ServedModel(ServeSettings(max_batch=MAX_IMAGES, timeout_s=0.05))

    async def main():
        server, channel = await served(StalledEngine(model))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await aio_call(channel, "ModelInfer")(one_image_request(images, 0), timeout=WAIT_S)
            return e.value
        finally:
            await channel.close()
            await server.stop(grace=None)

    err = asyncio.run(main())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "within 0.05 s (timeout_s)" in err.details()


def test_metrics_count_grpc_calls(model, images):
    pytest.importorskip("prometheus_client", reason="needs prometheus-client (the serve extra)")
    from ranet_edge.serve.metrics import Metrics

    async def main():
        engine = StageEngine(model)
        await engine.start()
        metrics = Metrics(engine, engine.max_batch)
        server, channel = await served(engine, metrics=metrics)
        try:
            await aio_call(channel, "ModelInfer")(one_image_request(images, 0), timeout=WAIT_S)
            with pytest.raises(grpc.aio.AioRpcError):
                await aio_call(channel, "ModelMetadata")(messages["ModelMetadataRequest"](name="nope"), timeout=WAIT_S)
            return metrics.text().decode()
        finally:
            await channel.close()
            await server.stop(grace=None)
            await engine.close(5)

    text = asyncio.run(main())
    assert 'ranet_requests_total{route="grpc/ModelInfer",status="OK"} 1.0' in text
    assert 'ranet_requests_total{route="grpc/ModelMetadata",status="NOT_FOUND"} 1.0' in text
    assert sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("ranet_exit_images_total")) == 1


@pytest.mark.slow
def test_ranet_edge_serve_with_grpc_port(tmp_path, model, images):
    """The command a user runs: `ranet-edge serve --grpc-port G` in its own process, called
    by tritonclient.grpc; the answers equal ExitChain.predict, then it stops on SIGTERM."""
    pytest.importorskip("uvicorn", reason="needs uvicorn (the serve extra)")
    from serve_harness import STOP_S, assert_stopped_cleanly, free_ports, running_server

    (grpc_port,) = free_ports(1)
    cmd = [str(Path(sys.executable).with_name("ranet-edge")), "serve", "--model-name", "cifar"]
    with running_server(tmp_path, lambda *a: cmd + list(a), "--grpc-port", str(grpc_port), start_s=120) as srv:
        assert f"gRPC 127.0.0.1:{grpc_port}" in srv.stdout()
        c = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            assert c.is_server_ready(client_timeout=WAIT_S) and c.is_model_ready("cifar", client_timeout=WAIT_S)
            result = c.infer("cifar", [image_input(images)], outputs=outputs("label", "exit", "confidence", "logits"),
                             client_timeout=WAIT_S)
            assert_answers(result, expected(model, model.chain.preprocess(images)),
                           ("label", "exit", "confidence", "logits"))
        finally:
            c.close()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=STOP_S)
        assert_stopped_cleanly(srv)
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", grpc_port), timeout=5):
            pass  # nothing listens on the gRPC port any more
