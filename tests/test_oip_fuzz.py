"""Protocol fuzzing of the REST codec (hypothesis, bounded example counts): whatever the body,
parse_rest_infer answers a request or refuses it with a one-line 4xx; never anything else,
and a good request parsed right after each bad one still gives the right input."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="needs hypothesis (the test extra)")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oip_support import png, sample_images

from ranet_edge.serve import ServeSettings, oip
from ranet_edge.serve.api import RequestError
from ranet_edge.serve.engine import ServedModel

MAX_IMAGES = 8
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=12)
names = st.sampled_from(["image", "input", "logits", ""]) | st.text(max_size=6)
datatypes = st.sampled_from(["BYTES", "FP32", "FP16", "INT64"]) | values
shapes = st.lists(st.integers(-2, 2**64), max_size=5) | st.sampled_from([[1, 3, 32, 32], [2], [1]]) | values
params = st.dictionaries(st.sampled_from(["binary_data_size", "binary_data", "shared_memory_region", "other"]),
                         st.integers(-4, 20_000) | values, max_size=2)
tensors = st.fixed_dictionaries({"name": names, "datatype": datatypes, "shape": shapes},
                                optional={"data": values | st.lists(st.floats(width=32), max_size=3100),
                                          "parameters": params | values})
outputs = st.fixed_dictionaries({"name": st.sampled_from([*oip.OUTPUTS, "probs"]) | values},
                                optional={"parameters": params | values})
requests = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=5) | values, "inputs": st.lists(tensors, max_size=3) | values,
    "outputs": st.lists(outputs, max_size=5) | values,
    "parameters": st.dictionaries(st.sampled_from(["operating_point", "binary_data_output", "timeout"]),
                                  st.sampled_from(["iso-accuracy", "p0.5", "nope"]) | values, max_size=2) | values,
    "extra": values})


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=MAX_IMAGES))


@pytest.fixture(scope="module")
def good(model):
    """A valid binary request (two PNG files) and the input it must give."""
    images = sample_images(2)
    files = [png(im) for im in images]
    raw = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, len(header), model.chain.preprocess(images)


def check(model, good, body: bytes, header_length: int | None) -> None:
    try:
        req = oip.parse_rest_infer(body, header_length, model, MAX_IMAGES)
    except RequestError as exc:
        assert 400 <= exc.status < 500, exc.status
        assert exc.message and "\n" not in exc.message and len(exc.message) < 600, exc.message
    else:
        assert req.x.dtype == np.float32 and req.x.ndim == 4 and 1 <= len(req.x) <= MAX_IMAGES
    body, length, x = good
    np.testing.assert_array_equal(oip.parse_rest_infer(body, length, model, MAX_IMAGES).x, x)


@pytest.mark.slow
@FUZZ
@given(doc=requests, tail=st.binary(max_size=64), cut=st.none() | st.integers(-3, 3))
def test_fuzzed_json_requests(model, good, doc, tail, cut):
    header = json.dumps(doc).encode()
    length = None if cut is None else len(header) + cut
    check(model, good, header + tail, length)


@FUZZ
@given(body=st.binary(max_size=300), length=st.none() | st.integers(-2, 310))
def test_fuzzed_bytes(model, good, body, length):
    check(model, good, body, length)


@FUZZ
@given(data=st.data())
def test_fuzzed_binary_images(model, good, data):
    """Valid JSON header, binary BYTES payload cut, padded or corrupted anywhere."""
    body, length, _ = good
    raw = bytearray(body[length:])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = bytes(raw[:data.draw(st.integers(0, len(raw)))]) + data.draw(st.binary(max_size=8))
    n = data.draw(st.integers(0, 3))
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [n],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    check(model, good, header + raw, len(header))
