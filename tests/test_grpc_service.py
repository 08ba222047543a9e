"""The Open Inference Protocol over gRPC (ranet_edge/serve/grpc_service.py): a real grpc.aio
server on a free loopback port, driven by tritonclient.grpc and by raw KServe v2 messages.
Answers equal ExitChain.predict image by image; bad requests get a 4xx-like gRPC status with
the one-line message. The production basics (concurrency, draining, time limit, metrics, the
`serve` command) are in test_grpc_production.py, the fuzzing in test_grpc_fuzz.py."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tritongrpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (the test extra)")
import grpc
from grpc_support import MAX_IMAGES, NAME, WAIT_S, assert_answers, grpc_server, image_input, outputs, rpc
from oip_support import expected, png, sample_images
from tritonclient.utils import InferenceServerException

from ranet_edge.errors import ServeError
from ranet_edge.serve import ServeSettings, oip
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.grpc_service import build_grpc_server, messages
from ranet_edge.serve.stage_engine import StageEngine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=MAX_IMAGES, max_body_bytes=1 << 20))


@pytest.fixture(scope="module")
def port(model):
    with grpc_server(model) as bound:
        yield bound


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


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(12)


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


def test_rule_and_patience_parameters(client, model, images):
    x = model.chain.preprocess(images)
    t = tritongrpc.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x)
    names = ("label", "exit", "confidence")
    for params in ({"patience": 1}, {"rule": "patience", "patience": 3}, {"rule": "max_prob"}):
        result = client.infer(NAME, [t], outputs=outputs(*names), parameters=params, client_timeout=WAIT_S)
        assert_answers(result, model.chain.predict(x, None, rule=params.get("rule"), patience=params.get("patience")), names)
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [t], parameters={"patience": 0}, client_timeout=WAIT_S)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "patience must be a whole number" in e.value.message()


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


# --------------------------------------------------------------------------- generated code
def test_committed_descriptor_matches_the_proto():
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools (the test extra)")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_oip_proto.py"), "--check"],
                         capture_output=True, text=True, timeout=WAIT_S)
    assert out.returncode == 0, out.stderr
