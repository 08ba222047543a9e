"""The Open Inference Protocol v2 codec (ranet_edge/serve/oip.py) against the real client's
encoding: requests built by tritonclient.http, answered by the StageEngine, read back by
tritonclient.http, and the values equal to ExitChain.predict image by image. Bad requests: one-line 4xx errors,
also under protocol fuzzing."""
from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (the test extra)")
from oip_support import expected, infer, png, sample_images

from ranet_edge.serve import ServeSettings, oip
from ranet_edge.serve.api import RequestError
from ranet_edge.serve.engine import ServedModel

MAX_IMAGES = 16


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=MAX_IMAGES))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sample_images(12)


def client_request(inputs, outputs=None, **kw) -> tuple[bytes, int | None]:
    """The body (and Inference-Header-Content-Length) tritonclient.http sends for these tensors."""
    return tritonhttp.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **kw)


def image_input(images: np.ndarray, binary: bool = True):
    files = [png(im) for im in images]
    t = tritonhttp.InferInput("image", [len(files)], "BYTES")
    if binary:
        t.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    else:  # JSON: each element a base64 string
        t.set_data_from_numpy(np.array([base64.b64encode(f) for f in files], dtype=np.object_), binary_data=False)
    return t


def round_trip(model: ServedModel, body: bytes, header_length: int | None, name: str = "ranet-edge"):
    """Parse as the server would, answer with the real chain, decode as the client would."""
    req = oip.parse_rest_infer(body, header_length, model, MAX_IMAGES)
    answer = infer(model, req)
    out, headers = oip.rest_infer_response(req, answer, name)
    length = headers.get(oip.HEADER_LENGTH)
    result = tritonhttp.InferResult.from_response_body(out, header_length=None if length is None else int(length))
    return req, result, headers


def assert_answers(result, want, outputs=("label", "exit", "confidence")):
    if "label" in outputs:
        np.testing.assert_array_equal(result.as_numpy("label"), want.labels)
        assert result.as_numpy("label").dtype == np.int64
    if "exit" in outputs:
        np.testing.assert_array_equal(result.as_numpy("exit"), want.exits)
    if "confidence" in outputs:
        np.testing.assert_allclose(result.as_numpy("confidence"), want.confidences, rtol=0, atol=1e-6)
        assert result.as_numpy("confidence").dtype == np.float32
    if "logits" in outputs:
        np.testing.assert_allclose(result.as_numpy("logits"), want.logits, rtol=0, atol=1e-5)
    for name in set(oip.OUTPUTS) - set(outputs):
        assert result.as_numpy(name) is None


# --------------------------------------------------------------------------- metadata
def test_server_and_model_metadata(model):
    meta = oip.server_metadata()
    assert meta["name"] == "ranet-edge" and "binary_tensor_data" in meta["extensions"]
    m = oip.model_metadata(model, "cifar")
    c, h, w = model.chain.input_shape
    assert m["name"] == "cifar" and m["versions"] == ["1"] and m["platform"] == oip.PLATFORM
    assert m["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                           {"name": "input", "datatype": "FP32", "shape": [-1, c, h, w]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in m["outputs"]} == {
        "label": ("INT64", [-1]), "exit": ("INT64", [-1]), "confidence": ("FP32", [-1]),
        "logits": ("FP32", [-1, model.num_classes]), "deadline_cut": ("BOOL", [-1])}
    json.dumps(m)  # serialisable as it is


def test_check_model_names_the_served_model():
    oip.check_model("ranet-edge", "", "ranet-edge")
    oip.check_model("ranet-edge", "1", "ranet-edge")
    with pytest.raises(RequestError, match="unknown model 'resnet'.*serves 'ranet-edge'") as e:
        oip.check_model("resnet", "", "ranet-edge")
    assert e.value.status == 404
    with pytest.raises(RequestError, match="no version '2'") as e:
        oip.check_model("ranet-edge", "2", "ranet-edge")
    assert e.value.status == 404


# --------------------------------------------------------------------------- the client's encodings
def test_images_in_binary_answer_as_predict(model, images):
    body, length = client_request([image_input(images)])
    assert length is not None  # tritonclient sent the binary extension
    req, result, headers = round_trip(model, body, length)
    np.testing.assert_array_equal(req.x, model.chain.preprocess(images))  # PNG is lossless
    want = expected(model, model.chain.preprocess(images))
    assert_answers(result, want)
    # no outputs named: tritonclient asks for binary_data_output, and gets the default three in binary
    assert headers["Content-Type"] == "application/octet-stream"
    assert [o.name for o in req.outputs] == ["label", "exit", "confidence"] and all(o.binary for o in req.outputs)


def test_images_in_json_answer_as_predict(model, images):
    outputs = [tritonhttp.InferRequestedOutput(n, binary_data=False) for n in ("label", "exit", "confidence")]
    body, length = client_request([image_input(images[:5], binary=False)], outputs)
    assert length is None  # all JSON
    _, result, headers = round_trip(model, body, length)
    assert headers == {"Content-Type": "application/json"}
    assert_answers(result, expected(model, model.chain.preprocess(images[:5])))


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_preprocessed_input_with_logits(model, images, binary_in, binary_out):
    x = model.chain.preprocess(images[:7])
    t = tritonhttp.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=binary_in)
    names = ("logits", "label", "exit", "confidence")
    outputs = [tritonhttp.InferRequestedOutput(n, binary_data=binary_out) for n in names]
    body, length = client_request([t], outputs, request_id="req-7")
    req, result, _ = round_trip(model, body, length)
    np.testing.assert_array_equal(req.x, x)
    assert [o.name for o in req.outputs] == list(names)
    assert result.get_response()["id"] == "req-7"
    assert result.get_output("logits")["shape"] == [7, model.num_classes]
    assert_answers(result, expected(model, x), outputs=names)


def test_mixed_binary_and_json_outputs(model, images):
    x = model.chain.preprocess(images[:3])
    t = tritonhttp.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x)
    outputs = [tritonhttp.InferRequestedOutput("exit", binary_data=False),
               tritonhttp.InferRequestedOutput("logits", binary_data=True)]
    body, length = client_request([t], outputs)
    req, result, headers = round_trip(model, body, length)
    assert headers["Content-Type"] == "application/octet-stream"
    assert "data" in result.get_output("exit") and "data" not in result.get_output("logits")
    assert_answers(result, expected(model, x), outputs=("exit", "logits"))


def test_operating_point_parameter(model, images):
    x = model.chain.preprocess(images)
    answers = {}
    for point in sorted(model.chain.operating_points):
        t = tritonhttp.InferInput("input", list(x.shape), "FP32").set_data_from_numpy(x)
        body, length = client_request([t], parameters={"operating_point": point})
        req, result, _ = round_trip(model, body, length)
        assert req.point == point
        want = expected(model, x, point)
        assert_answers(result, want)
        answers[point] = tuple(want.exits)
    assert len(set(answers.values())) > 1  # the points really route differently on these images


def test_nested_json_data_and_no_outputs(model, images):
    """The spec allows nested row-major data; without `outputs`, the default three come as JSON."""
    x = model.chain.preprocess(images[:2])
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]}
    req, result, headers = round_trip(model, json.dumps(doc).encode(), None)
    assert headers == {"Content-Type": "application/json"} and req.id is None
    assert "id" not in result.get_response()
    assert_answers(result, expected(model, x))


def test_curl_style_binary_request(model, images):
    """A hand-built binary request, as the guide's curl example sends one."""
    files = [png(im) for im in images[:2]]
    raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = json.dumps({"id": "a", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                                "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "label"}]}).encode()
    req, result, headers = round_trip(model, header + raw, len(header))
    assert headers == {"Content-Type": "application/json"}  # outputs default to JSON
    assert result.as_numpy("label").tolist() == expected(model, model.chain.preprocess(images[:2])).labels.tolist()


# --------------------------------------------------------------------------- refusals
def _json(doc) -> bytes:
    return json.dumps(doc).encode()


def _fp32(shape, data=None, datatype="FP32", name="input", **extra):
    t = {"name": name, "datatype": datatype, "shape": shape, **extra}
    if data is not None:
        t["data"] = data
    return t


GOOD_X = [0.0] * (3 * 32 * 32)
BAD = [
    (b"{nope", None, 400, "not valid JSON"),
    (b"[1, 2]", None, 400, "must be a JSON object"),
    (b"\xff\xfe", None, 400, "not valid JSON"),
    (b"[" * 100_000, None, 400, "JSON"),
    (_json({"inputs": []}), None, 400, "non-empty list `inputs`"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "extra": 1}), None, 400, "unknown field 'extra'"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X, datatype="FP64")]}), None, 400, "datatype 'FP64'; send FP32"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X, datatype="BYTES")]}), None, 400, "datatype 'BYTES'; send FP32"),
    (_json({"inputs": [_fp32([1, 3, 28, 28], GOOD_X)]}), None, 400, "[N, 3, 32, 32] (from its manifest)"),
    (_json({"inputs": [_fp32([2, 3, 32, 32], GOOD_X)]}), None, 400, "6144 values, but 3072 were sent"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], ["a"] * 3072)]}), None, 400, "must be a number"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], [1e39] * 3072)]}), None, 400, "NaN or infinite"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [NaN]}]}', None,
     400, "3072 values, but 1"),
    (_json({"inputs": [_fp32([0, 3, 32, 32], [])]}), None, 400, "no image"),
    (_json({"inputs": [_fp32([17, 3, 32, 32], [])]}), None, 413, "at most 16"),
    (_json({"inputs": [_fp32([1, 3, 32, 32])]}), None, 400, "has no `data`"),
    (_json({"inputs": [_fp32([-1, 3, 32, 32], [])]}), None, 400, "whole numbers >= 0"),
    (_json({"inputs": [_fp32("1,3,32,32", [])]}), None, 400, "needs `shape`"),
    (_json({"inputs": [_fp32([1], ["x"], name="images")]}), None, 400, "unknown input 'images'; send 'image'"),
    (_json({"inputs": [_fp32([1], [1], name="image", datatype="BYTES"), _fp32([1, 3, 32, 32], GOOD_X)]}), None,
     400, "gives both"),
    (_json({"inputs": [_fp32([1], ["!!"], name="image", datatype="BYTES")]}), None, 400, "not valid base64"),
    (_json({"inputs": [_fp32([1], [base64.b64encode(b"junk").decode()], name="image", datatype="BYTES")]}), None,
     400, "cannot be decoded"),
    (_json({"inputs": [_fp32([2], ["aGk="], name="image", datatype="BYTES")]}), None, 400, "holds 1 elements"),
    (_json({"inputs": [_fp32([1], [7], name="image", datatype="BYTES")]}), None, 400, "base64-encoded"),
    (_json({"inputs": [_fp32([1, 1], ["aGk="], name="image", datatype="BYTES")]}), None, 400, "send shape [N]"),
    (_json({"inputs": [_fp32([1], ["aGk="], name="image", datatype="UINT8")]}), None, 400, "send BYTES"),
    (_json({"inputs": [_fp32([20], ["aGk="] * 20, name="image", datatype="BYTES")]}), None, 413, "split the request"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "outputs": [{"name": "probs"}]}), None, 400,
     "unknown output 'probs'; this model gives label, exit, confidence, logits"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "outputs": [{"name": "exit"}, {"name": "exit"}]}), None,
     400, "requested twice"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "outputs": [{"name": "exit", "parameters": {"binary_data": 1}}]}),
     None, 400, "binary_data must be true or false"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "parameters": {"operating_point": "fast"}}), None, 400,
     "unknown operating point 'fast'; stored:"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "parameters": {"operating_point": 3}}), None, 400,
     "name of a stored operating point"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], GOOD_X)], "id": 5}), None, 400, "id must be a string"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], parameters={"shared_memory_region": "r"})]}), None, 400, "shared memory"),
    (_json({"inputs": [_fp32([1, 3, 32, 32], parameters={"binary_data_size": 12288})]}), None, 400,
     "no Inference-Header-Content-Length"),
]


def _binary(size_declared: int, payload: bytes, **extra) -> tuple[bytes, int]:
    header = _json({"inputs": [_fp32([1, 3, 32, 32], parameters={"binary_data_size": size_declared}, **extra)]})
    return header + payload, len(header)


BAD_BINARY = [
    (*_binary(12288, b"\0" * 100), 400, "declare more binary data"),
    (*_binary(100, b"\0" * 100), 400, "12288 bytes of FP32, but 100 bytes were sent"),
    (*_binary(12288, b"\0" * 12300), 400, "12 bytes follow the declared binary data"),
    (*_binary(12288, b"\0" * 12288, data=GOOD_X), 400, "both `data` and binary_data_size"),
    (b"{}", 5, 400, "body has only 2 bytes"),
]


def _bytes_request(raw: bytes, n: int) -> tuple[bytes, int]:
    header = _json({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [n],
                                "parameters": {"binary_data_size": len(raw)}}]})
    return header + raw, len(header)


BAD_BYTES = [
    (*_bytes_request(b"\x05\0\0\0abc", 1), 400, "element 0 declares 5 bytes, 3 follow"),
    (*_bytes_request(b"\x01\0", 1), 400, "element 0 is cut short"),
    (*_bytes_request(b"\x01\0\0\0a\x01\0\0\0b", 1), 400, "more than the 1 elements"),
    (*_bytes_request(b"\x01\0\0\0a", 2), 400, "holds 1 elements"),
    (*_bytes_request(b"\0\0\0\0", 1), 400, "element 0 cannot be decoded"),
]


@pytest.mark.parametrize("body, length, status, fragment", BAD + BAD_BINARY + BAD_BYTES)
def test_bad_requests_get_one_line_4xx(model, body, length, status, fragment):
    with pytest.raises(RequestError) as e:
        oip.parse_rest_infer(body, length, model, MAX_IMAGES)
    assert e.value.status == status
    assert fragment in e.value.message
    assert "\n" not in e.value.message and len(e.value.message) < 400


def test_header_length_header():
    assert oip.parse_header_length(None) is None
    assert oip.parse_header_length(" 120 ") == 120
    for bad in ("", "-1", "12x", "1e3"):
        with pytest.raises(RequestError, match="byte length of the JSON header") as e:
            oip.parse_header_length(bad)
        assert e.value.status == 400
