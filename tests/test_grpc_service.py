"""The Open Inference Protocol over gRPC (ranet_edge/serve/grpc_service.py): a real grpc.aio
server on a free loopback port, driven by tritonclient.grpc and by raw KServe v2 messages.
Answers equal ExitChain.predict image by image; bad requests get a 4xx-like gRPC status with
the one-line message; fuzzed requests never get anything else, and good ones keep answering."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

tritongrpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (the test extra)")
import grpc
from oip_support import expected, png, sample_images
from tritonclient.utils import InferenceServerException

from ranet_edge.errors import ServeError
from ranet_edge.serve import ServeSettings, oip
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.grpc_service import build_grpc_server, messages
from ranet_edge.serve.stage_engine import StageEngine

MAX_IMAGES = 16
NAME = "ranet-edge"
WAIT_S = 60  # bound on every client call and on starting and stopping the server
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=MAX_IMAGES, max_body_bytes=1 << 20))


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


@pytest.fixture(scope="module")
def port(model):
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


@pytest.fixture(scope="module")
def client(port):
    c = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def channel(port):
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ch
    finally:
        ch.close()


def rpc(channel, method: str, request, timeout: float = WAIT_S):
    """Call one method with our own message classes (what tritonclient would not send)."""
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                               request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
                               response_deserializer=messages[f"{method}Response"].FromString)
    return call(request, timeout=timeout)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(12)


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


# --------------------------------------------------------------------------- health and metadata
def test_health_and_metadata(client):
    assert client.is_server_live(client_timeout=WAIT_S)
    assert client.is_server_ready(client_timeout=WAIT_S)
    assert client.is_model_ready(NAME, client_timeout=WAIT_S)
    assert client.is_model_ready(NAME, "1", client_timeout=WAIT_S)
    assert not client.is_model_ready("resnet", client_timeout=WAIT_S)
    assert not client.is_model_ready(NAME, "2", client_timeout=WAIT_S)
    server = client.get_server_metadata(as_json=True, client_timeout=WAIT_S)
    assert server["name"] == "ranet-edge" and "binary_tensor_data" in server["extensions"]


def test_model_metadata_matches_the_codec(client, model):
    meta = client.get_model_metadata(NAME, as_json=True, client_timeout=WAIT_S)
    want = oip.model_metadata(model, NAME)
    assert meta["name"] == NAME and meta["versions"] == want["versions"] and meta["platform"] == want["platform"]
    for part in ("inputs", "outputs"):  # tritonclient's JSON gives int64 shapes as strings
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[part]] == \
               [(t["name"], t["datatype"], t["shape"]) for t in want[part]]
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("resnet", client_timeout=WAIT_S)
    assert e.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'resnet'" in e.value.message()


# --------------------------------------------------------------------------- answers
def test_images_answer_as_predict(client, model, images):
    result = client.infer(NAME, [image_input(images)], client_timeout=WAIT_S)
    assert_answers(result, expected(model, model.chain.preprocess(images)))
    assert {o.name for o in result.get_response().outputs} == {"label", "exit", "confidence"}  # the default three


def test_one_image_per_request(client, model, images):
    for im in images[:4]:
        result = client.infer(NAME, [image_input(im[None])], outputs=outputs("label", "exit", "confidence", "logits"),
                              client_timeout=WAIT_S)
        assert_answers(result, expected(model, model.chain.preprocess(im[None])),
                       ("label", "exit", "confidence", "logits"))


def test_preprocessed_input_logits_id_and_point(client, model, images):
    x = model.chain.preprocess(images)
    t = tritongrpc.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x)
    names = ("logits", "exit", "label", "confidence")
    seen = set()
    for point in sorted(model.chain.operating_points):
        result = client.infer(NAME, [t], outputs=outputs(*names), request_id=f"r-{point}",
                              parameters={"operating_point": point}, client_timeout=WAIT_S)
        response = result.get_response()
        assert response.id == f"r-{point}" and response.model_name == NAME and response.model_version == "1"
        assert [o.name for o in response.outputs] == list(names)
        assert list(response.outputs[0].shape) == [len(x), model.num_classes]
        want = expected(model, x, point)
        assert_answers(result, want, names)
        seen.add(tuple(want.exits))
    assert len(seen) > 1  # the points route these images differently


def test_typed_contents(channel, model, images):
    """bytes_contents (one file per element) and fp32_contents instead of raw_input_contents."""
    req = messages["ModelInferRequest"](model_name=NAME)
    t = req.inputs.add(name="image", datatype="BYTES", shape=[3])
    t.contents.bytes_contents.extend(png(im) for im in images[:3])
    out = rpc(channel, "ModelInfer", req)
    want = expected(model, model.chain.preprocess(images[:3]))
    assert [o.name for o in out.outputs] == ["label", "exit", "confidence"]
    np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[0], "<i8"), want.labels)
    np.testing.assert_array_equal(np.frombuffer(out.raw_output_contents[1], "<i8"), want.exits)

    x = model.chain.preprocess(images[:2])
    req = messages["ModelInferRequest"](model_name=NAME, id="typed")
    t = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    req.outputs.add(name="confidence")
    out = rpc(channel, "ModelInfer", req)
    assert out.id == "typed"
    np.testing.assert_allclose(np.frombuffer(out.raw_output_contents[0], "<f4"),
                               expected(model, x).confidences, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- refusals
def fp32(shape, datatype="FP32", name="input"):
    arr = np.zeros(shape, np.float32)
    return tritongrpc.InferInput(name, list(shape), datatype).set_data_from_numpy(arr) if datatype == "FP32" else \
        tritongrpc.InferInput(name, list(shape), datatype)


def junk_image():
    return tritongrpc.InferInput("image", [1], "BYTES").set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))


REFUSED = [
    (lambda: dict(model_name="resnet", inputs=[fp32((1, 3, 32, 32))]), "NOT_FOUND", "unknown model 'resnet'"),
    (lambda: dict(inputs=[fp32((1, 3, 28, 28))]), "INVALID_ARGUMENT", "[N, 3, 32, 32] (from its manifest)"),
    (lambda: dict(inputs=[fp32((1, 3, 32, 32), name="pixels")]), "INVALID_ARGUMENT", "unknown input 'pixels'"),
    (lambda: dict(inputs=[fp32((17, 3, 32, 32))]), "RESOURCE_EXHAUSTED", "at most 16"),
    (lambda: dict(inputs=[junk_image()]), "INVALID_ARGUMENT", "image element 0 cannot be decoded"),
    (lambda: dict(inputs=[junk_image(), fp32((1, 3, 32, 32))]), "INVALID_ARGUMENT", "gives both"),
    (lambda: dict(inputs=[fp32((1, 3, 32, 32))], outputs=outputs("probs")), "INVALID_ARGUMENT",
     "unknown output 'probs'"),
    (lambda: dict(inputs=[fp32((1, 3, 32, 32))], parameters={"operating_point": "fast"}), "INVALID_ARGUMENT",
     "unknown operating point 'fast'"),
    (lambda: dict(inputs=[fp32((1, 3, 32, 32))], model_version="3"), "NOT_FOUND", "no version '3'"),
]


@pytest.mark.parametrize("make, code, fragment", REFUSED)
def test_refusals_are_grpc_statuses_with_the_message(client, make, code, fragment):
    kw = make()
    with pytest.raises(InferenceServerException) as e:
        client.infer(kw.pop("model_name", NAME), client_timeout=WAIT_S, **kw)
    assert e.value.status() == f"StatusCode.{code}"
    assert fragment in e.value.message() and "\n" not in e.value.message()


def test_wrong_datatype_and_short_raw_data(channel):
    req = messages["ModelInferRequest"](model_name=NAME, raw_input_contents=[b"\0" * 8])
    req.inputs.add(name="input", datatype="FP64", shape=[1, 3, 32, 32])
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "datatype 'FP64'; send FP32" in e.value.details()
    req.inputs[0].datatype = "FP32"
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", req)
    assert "12288 bytes of FP32, but 8 bytes were sent" in e.value.details()
    req = messages["ModelInferRequest"](model_name=NAME, raw_input_contents=[b"", b""])
    req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", req)
    assert "raw_input_contents has 2 entries for 1 inputs" in e.value.details()


def test_garbage_bytes_and_oversized_messages(channel):
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", b"\xff\xff\xff")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in e.value.details()
    req = messages["ModelInferRequest"](model_name=NAME, raw_input_contents=[b"\0" * (2 << 20)])
    req.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32])
    with pytest.raises(grpc.RpcError) as e:  # over max_body_bytes (1 MiB here): refused by gRPC itself
        rpc(channel, "ModelInfer", req)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_port_in_use_is_a_serve_error(model, port):
    async def bind_again():
        engine = StageEngine(model)
        with pytest.raises(ServeError, match="cannot listen for gRPC on 127.0.0.1:.*--grpc-port"):
            build_grpc_server(engine, NAME, "127.0.0.1", port)

    asyncio.run(bind_again())


# --------------------------------------------------------------------------- production basics
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


class StalledEngine:
    """A real StageEngine's model, but classify waits for ever: what a server too busy to
    answer looks like from the ingress (the time limit is the service's, not the engine's)."""

    def __init__(self, model):
        self.model = model
        self.closing = False

    async def classify(self, x, point):
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


# --------------------------------------------------------------------------- fuzzing
hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

params = st.dictionaries(st.sampled_from(["operating_point", "binary_data_output", "shared_memory_region", "x"]),
                         st.one_of(st.booleans().map(lambda v: ("bool_param", v)),
                                   st.integers(-2**63, 2**63 - 1).map(lambda v: ("int64_param", v)),
                                   st.sampled_from(["iso-accuracy", "p0.5", "nope", ""]).map(lambda v: ("string_param", v)),
                                   st.floats().map(lambda v: ("double_param", v))), max_size=2)
tensor = st.fixed_dictionaries({
    "name": st.sampled_from(["image", "input", "x", ""]),
    "datatype": st.sampled_from(["BYTES", "FP32", "INT64", ""]),
    "shape": st.lists(st.integers(-2, 2**62), max_size=5) | st.sampled_from([[1, 3, 32, 32], [1], [2]]),
    "params": params,
    "bytes": st.lists(st.binary(max_size=40), max_size=3),
    "floats": st.lists(st.floats(width=32), max_size=20),
})
infer_requests = st.fixed_dictionaries({
    "model_name": st.sampled_from([NAME, "other", ""]), "model_version": st.sampled_from(["", "1", "9"]),
    "id": st.text(max_size=4), "params": params, "inputs": st.lists(tensor, max_size=3),
    "raw": st.none() | st.lists(st.binary(max_size=64), max_size=3),
    "outputs": st.lists(st.sampled_from([*oip.OUTPUTS, "probs", ""]), max_size=5)})


def build(draw: dict):
    req = messages["ModelInferRequest"](model_name=draw["model_name"], model_version=draw["model_version"], id=draw["id"])
    for key, (field, value) in draw["params"].items():
        setattr(req.parameters[key], field, value)
    for t in draw["inputs"]:
        msg = req.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        for key, (field, value) in t["params"].items():
            setattr(msg.parameters[key], field, value)
        if draw["raw"] is None:
            msg.contents.bytes_contents.extend(t["bytes"])
            msg.contents.fp32_contents.extend(t["floats"])
    if draw["raw"] is not None:
        req.raw_input_contents.extend(draw["raw"])
    for name in draw["outputs"]:
        req.outputs.add(name=name)
    return req


@pytest.fixture(scope="module")
def good_request(model):
    images = sample_images(2)
    req = messages["ModelInferRequest"](model_name=NAME)
    req.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(png(im) for im in images)
    return req, expected(model, model.chain.preprocess(images)).labels


def answer_or_refuse(channel, good_request, request) -> None:
    try:
        rpc(channel, "ModelInfer", request)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details())
        assert e.details() and "\n" not in e.details()
    req, labels = good_request  # the server still answers a good request
    np.testing.assert_array_equal(np.frombuffer(rpc(channel, "ModelInfer", req).raw_output_contents[0], "<i8"), labels)


@FUZZ
@given(draw=infer_requests)
def test_fuzzed_infer_requests(channel, good_request, draw):
    answer_or_refuse(channel, good_request, build(draw))


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzzed_message_bytes(channel, good_request, data):
    answer_or_refuse(channel, good_request, data)


@FUZZ
@given(data=st.data())
def test_fuzzed_raw_images(channel, good_request, data):
    """Real PNG files, cut or with bytes changed, as raw length-prefixed BYTES."""
    files = [png(im) for im in sample_images(2)]
    raw = bytearray(b"".join(len(f).to_bytes(4, "little") + f for f in files))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(raw[:data.draw(st.integers(0, len(raw)))])
    req = messages["ModelInferRequest"](model_name=NAME, raw_input_contents=[raw])
    req.inputs.add(name="image", datatype="BYTES", shape=[data.draw(st.integers(0, 3))])
    answer_or_refuse(channel, good_request, req)


# --------------------------------------------------------------------------- generated code
def test_committed_descriptor_matches_the_proto():
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools (the test extra)")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_oip_proto.py"), "--check"],
                         capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 0, out.stderr
