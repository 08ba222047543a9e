"""Protocol fuzzing of the gRPC service (hypothesis, bounded example counts): a real grpc.aio
server on a free loopback port gets fuzzed requests, message bytes and raw images; each gets
an answer or a 4xx-like status with a one-line message, and a good request sent right after
each still gets the right answer."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (the test extra)")
pytest.importorskip("hypothesis", reason="needs hypothesis (the test extra)")
import grpc
from grpc_support import MAX_IMAGES, NAME, grpc_server, rpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oip_support import expected, png, sample_images

from ranet_edge.serve import ServeSettings, oip
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.grpc_service import messages


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=MAX_IMAGES, max_body_bytes=1 << 20))


@pytest.fixture(scope="module")
def channel(model):
    with grpc_server(model) as port:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield ch
        finally:
            ch.close()


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


@pytest.mark.slow
@FUZZ
@given(draw=infer_requests)
def test_fuzzed_infer_requests(channel, good_request, draw):
    answer_or_refuse(channel, good_request, build(draw))


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzzed_message_bytes(channel, good_request, data):
    answer_or_refuse(channel, good_request, data)


@pytest.mark.slow
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
