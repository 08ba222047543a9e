"""The one-process server (`ranet-edge serve`, no Ray) as a user runs it: a subprocess on a
kernel-picked loopback port, the shipped default bundle, real clients (urllib, raw sockets,
tritonclient). Answers equal ExitChain.predict image by image on /v1 and /v2 (JSON and the
binary tensor extension); bad requests get one-line 4xx; overload gets 503 with Retry-After;
metrics and the access log are there; SIGINT and SIGTERM drain with a request in flight
(answered), exit 0 and leave no process.
"""
from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import socket
import struct
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from serve_harness import Running
from serve_local_support import LIMIT, local_server, png, request, send_all

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain

if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("prometheus_client") is None:
    pytest.skip("the one-process server needs the serve extra: pip install 'ranet-edge[serve]'",
                allow_module_level=True)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes through /proc")

POINTS = [None, "p0.5", "iso-accuracy-t"]

@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Running]:
    with local_server(tmp_path_factory.mktemp("serve"), "--max-body-bytes", str(LIMIT), "--max-batch", "32") as srv:
        yield srv


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"][:200]


@pytest.fixture(scope="module")
def chain() -> ExitChain:
    return ExitChain.load(DEFAULT_BUNDLE)


# --------------------------------------------------------------------------- /v1
def test_v1_concurrent_requests_equal_predict(server, sample, chain):
    requests, meta = [], []
    for i in range(200):
        point = POINTS[i % 3]
        q = f"?operating_point={point}" if point else ""
        idx = [i, (i + 1) % 200, (i + 2) % 200] if i % 10 == 5 else [i]
        if len(idx) > 1:
            body = json.dumps([base64.b64encode(png(sample[k])).decode() for k in idx]).encode()
            requests.append(("POST", f"{server.url}/v1/classify{q}", body, {"Content-Type": "application/json"}))
        else:
            requests.append(("POST", f"{server.url}/v1/classify{q}", png(sample[i]), {"Content-Type": "image/png"}))
        meta.append((idx, point))
    exits = set()
    for (status, _, raw), (idx, point) in zip(send_all(requests), meta):
        body = json.loads(raw)
        assert status == 200, body
        want = chain.predict(chain.preprocess(sample[idx]), point)
        got = body["predictions"]
        assert [p["label"] for p in got] == want.labels.tolist()
        assert [p["exit"] for p in got] == want.exits.tolist()
        np.testing.assert_allclose([p["confidence"] for p in got], want.confidences, atol=2e-6)
        assert [p["class"] for p in got] == [chain.class_names[k] for k in want.labels]
        assert body["operating_point"] == (point or "iso-accuracy") and body["graph"] == "chain"
        assert set(body) == {"predictions", "operating_point", "graph", "replica"}
        exits.update(want.exits.tolist())
    assert len(exits) >= 4  # the requests really mix exits


def test_v1_model_and_health(server):
    status, _, raw = request("GET", f"{server.url}/v1/health")
    assert status == 200 and json.loads(raw)["status"] == "ok"
    model = json.loads(request("GET", f"{server.url}/v1/model")[2])
    assert model["num_classes"] == 10 and len(model["exits"]) == 6 and model["max_batch"] == 32
    assert model["max_body_bytes"] == LIMIT and model["default_operating_point"] == "iso-accuracy"


# --------------------------------------------------------------------------- /v2 (Open Inference Protocol)
def infer_json(x: np.ndarray, point: str | None, outputs=None) -> bytes:
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    if point:
        doc["parameters"] = {"operating_point": point}
    if outputs:
        doc["outputs"] = outputs
    return json.dumps(doc).encode()


def infer_binary_images(images: list[bytes], point: str | None) -> tuple[bytes, dict]:
    """An `image` BYTES tensor in the binary tensor extension (4-byte length + file, per element)."""
    raw = b"".join(struct.pack("<I", len(b)) + b for b in images)
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                       "parameters": {"binary_data_size": len(raw)}}],
           "outputs": [{"name": n, "parameters": {"binary_data": n == "logits"}}
                       for n in ("label", "exit", "confidence", "logits")]}
    if point:
        doc["parameters"] = {"operating_point": point}
    header = json.dumps(doc).encode()
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def test_rule_and_patience_parameters_on_v1_and_v2(server, sample, chain):
    """`rule` and `patience` (issue 30): per request, mixed in one server with max_prob requests
    (rows of several rules share graph runs), answers equal predict's; bad ones are one-line 400s."""
    asks = [({"rule": "patience", "patience": 1}, None), ({"patience": 2}, None), ({}, None),
            ({"rule": "max_prob"}, "p0.5")]
    requests, meta = [], []
    for i in range(24):
        params, point = asks[i % len(asks)]
        idx = [i, i + 50, i + 100] if i % 3 == 0 else [i]
        if i % 2:  # /v1: query string
            q = "&".join(f"{k}={v}" for k, v in {**params, **({"operating_point": point} if point else {})}.items())
            body = json.dumps([base64.b64encode(png(sample[k])).decode() for k in idx]).encode()
            requests.append(("POST", f"{server.url}/v1/classify?{q}", body, {"Content-Type": "application/json"}))
        else:  # /v2: request parameters
            doc = json.loads(infer_json(chain.preprocess(sample[idx]), point))
            doc.setdefault("parameters", {}).update(params)
            requests.append(("POST", f"{server.url}/v2/models/ranet-edge/infer", json.dumps(doc).encode(),
                             {"Content-Type": "application/json"}))
        meta.append((idx, params, point, bool(i % 2)))
    seen = set()
    for (status, _, raw), (idx, params, point, v1) in zip(send_all(requests), meta):
        body = json.loads(raw)
        assert status == 200, body
        want = chain.predict(chain.preprocess(sample[idx]), point, rule=params.get("rule"), patience=params.get("patience"))
        if v1:
            got_labels, got_exits = [p["label"] for p in body["predictions"]], [p["exit"] for p in body["predictions"]]
            assert body["operating_point"] == (None if params.get("patience") else (point or "iso-accuracy"))
        else:
            out = {o["name"]: o["data"] for o in body["outputs"]}
            got_labels, got_exits = out["label"], out["exit"]
        assert got_labels == want.labels.tolist() and got_exits == want.exits.tolist(), (params, point)
        seen.add((params.get("patience"), tuple(want.exits.tolist())))
    assert {k for k, _ in seen} == {None, 1, 2}
    bad = [("?patience=0", "patience must be a whole number >= 1"), ("?rule=fast", "rule must be one of"),
           ("?rule=entropy", "'iso-accuracy' is for the 'max_prob' rule, not 'entropy'"),
           ("?patience=2&rule=entropy", "goes with rule='patience'")]
    for q, fragment in bad:
        status, _, raw = request("POST", f"{server.url}/v1/classify{q}", png(sample[0]), {"Content-Type": "image/png"})
        assert status == 400 and fragment in json.loads(raw)["error"] and "\n" not in json.loads(raw)["error"], raw
    doc = json.loads(infer_json(chain.preprocess(sample[:1]), None))
    doc["parameters"] = {"patience": "two"}
    status, _, raw = request("POST", f"{server.url}/v2/models/ranet-edge/infer", json.dumps(doc).encode(),
                             {"Content-Type": "application/json"})
    assert status == 400 and "patience must be a whole number >= 1" in json.loads(raw)["error"], raw


def test_v2_metadata_and_health(server):
    meta = json.loads(request("GET", f"{server.url}/v2")[2])
    assert meta["name"] == "ranet-edge" and "binary_tensor_data" in meta["extensions"]
    assert request("GET", f"{server.url}/v2/health/live")[0] == 200
    assert request("GET", f"{server.url}/v2/health/ready")[0] == 200
    model = json.loads(request("GET", f"{server.url}/v2/models/ranet-edge")[2])
    assert [(i["name"], i["datatype"], i["shape"]) for i in model["inputs"]] == [
        ("image", "BYTES", [-1]), ("input", "FP32", [-1, 3, 32, 32])]
    assert request("GET", f"{server.url}/v2/models/ranet-edge/ready")[0] == 200
    assert request("GET", f"{server.url}/v2/models/ranet-edge/versions/1/ready")[0] == 200
    status, _, raw = request("GET", f"{server.url}/v2/models/resnet")
    assert status == 404 and "unknown model 'resnet'" in json.loads(raw)["error"]


def test_v2_json_and_binary_equal_predict(server, sample, chain):
    requests, meta = [], []
    for i, start in enumerate(range(0, 120, 6)):
        idx = list(range(start, start + 1 + i % 6))
        point = POINTS[i % 3]
        url = f"{server.url}/v2/models/ranet-edge/infer"
        if i % 2:
            body, headers = infer_binary_images([png(sample[k]) for k in idx], point)
        else:
            x = chain.preprocess(sample[idx])
            body, headers = infer_json(x, point), {"Content-Type": "application/json"}
        requests.append(("POST", url, body, headers))
        meta.append((idx, point, bool(i % 2)))
    for (status, headers, raw), (idx, point, binary) in zip(send_all(requests), meta):
        assert status == 200, raw[:300]
        want = chain.predict(chain.preprocess(sample[idx]), point)
        if binary:
            n = int(headers["Inference-Header-Content-Length"])
            doc, tail = json.loads(raw[:n]), raw[n:]
        else:
            doc, tail = json.loads(raw), b""
        assert doc["model_name"] == "ranet-edge"
        out = {o["name"]: o for o in doc["outputs"]}
        assert out["label"]["data"] == want.labels.tolist() and out["exit"]["data"] == want.exits.tolist()
        np.testing.assert_allclose(out["confidence"]["data"], want.confidences, atol=2e-6)
        if binary:
            logits = np.frombuffer(tail, "<f4").reshape(out["logits"]["shape"])
            full = chain.run_all(chain.preprocess(sample[idx]))
            np.testing.assert_allclose(logits, np.stack([full[e][i] for i, e in enumerate(want.exits)]), atol=1e-4)
        else:
            assert "logits" not in out  # only when asked for


def test_tritonclient_http_gets_predict_answers(server, chain):
    """The ecosystem's own client, over HTTP: all 500 shipped images, as encoded PNGs and as
    preprocessed tensors, in concurrent requests of mixed sizes and operating points."""
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the test extra)")
    with np.load(SAMPLE_IMAGES) as z:
        images = z["x"]
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=8)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ranet-edge")
        assert client.get_model_metadata("ranet-edge")["outputs"][3]["name"] == "logits"
        pending, start, k = [], 0, 0
        while start < len(images):
            n = [1, 3, 8, 16][k % 4]
            idx = list(range(start, min(start + n, len(images))))
            point = POINTS[k % 3]
            if k % 2:
                inp = httpclient.InferInput("image", [len(idx)], "BYTES")
                inp.set_data_from_numpy(np.array([png(images[i]) for i in idx], dtype=object), binary_data=True)
            else:
                x = chain.preprocess(images[idx])
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=k % 4 == 0)
            outs = [httpclient.InferRequestedOutput(name, binary_data=k % 3 == 0)
                    for name in ("label", "exit", "confidence", "logits")]
            params = {"operating_point": point} if point else None
            pending.append((idx, point, client.async_infer("ranet-edge", [inp], outputs=outs, parameters=params)))
            start, k = start + len(idx), k + 1
        for idx, point, job in pending:
            result = job.get_result(timeout=60)
            want = chain.predict(chain.preprocess(images[idx]), point)
            assert result.as_numpy("label").tolist() == want.labels.tolist(), (idx, point)
            assert result.as_numpy("exit").tolist() == want.exits.tolist(), (idx, point)
            np.testing.assert_allclose(result.as_numpy("confidence"), want.confidences, atol=2e-6)
            assert result.as_numpy("logits").shape == (len(idx), 10)
    finally:
        client.close()


# --------------------------------------------------------------------------- refusals
def test_bad_requests_get_one_line_4xx_and_good_ones_still_answer(server, sample, chain):
    v1, v2 = f"{server.url}/v1/classify", f"{server.url}/v2/models/ranet-edge/infer"
    good = png(sample[0])
    x = chain.preprocess(sample[:1])
    bin_body, bin_headers = infer_binary_images([good], None)
    bad = [
        (("POST", v1, b"\x89PNG\r\n\x1a\ncorrupt", {"Content-Type": "image/png"}), 400, "cannot be decoded"),
        (("POST", v1, good, {"Content-Type": "text/plain"}), 415, "content type text/plain"),
        (("POST", v1, b"", {"Content-Type": "image/png"}), 400, "body is empty"),
        (("POST", v1, b"\0" * (LIMIT + 1), {"Content-Type": "image/png"}), 413, f"limit of {LIMIT} bytes"),
        (("POST", v1 + "?operating_point=fastest", good, {"Content-Type": "image/png"}), 400,
         "unknown operating point 'fastest'"),
        (("POST", v1, json.dumps(["aGk="] * 33).encode(), {"Content-Type": "application/json"}), 413, "at most 32"),
        (("GET", v1, None, None), 405, "GET /v1/classify is not allowed"),
        (("GET", f"{server.url}/v3/classify", None, None), 404, "no route /v3/classify"),
        (("POST", v2, b"{not json", {"Content-Type": "application/json"}), 400, "JSON"),
        (("POST", v2, infer_json(x, "fastest"), {"Content-Type": "application/json"}), 400, "fastest"),
        (("POST", v2, infer_json(x[:, :2], None), {"Content-Type": "application/json"}), 400, "input"),
        (("POST", v2, bin_body, {**bin_headers, "Inference-Header-Content-Length": "12x"}), 400,
         "Inference-Header-Content-Length"),
        (("POST", v2, bin_body, {**bin_headers, "Inference-Header-Content-Length": str(len(bin_body) + 5)}), 400,
         "Inference-Header-Content-Length"),
        (("POST", f"{server.url}/v2/models/other/infer", bin_body, bin_headers), 404, "unknown model 'other'"),
        (("GET", v2, None, None), 405, "not allowed"),
    ]
    requests = [r for b in bad for r in (b[0], ("POST", v1, good, {"Content-Type": "image/png"}))]
    answers = send_all(requests)
    assert len(answers) == len(requests)
    for (req, status, fragment), (got, _, raw) in zip(bad, answers[0::2]):
        body = json.loads(raw)
        assert got == status, (req[:2], body)
        assert list(body) == ["error"] and fragment in body["error"] and "\n" not in body["error"], body
    assert all(s == 200 and len(json.loads(r)["predictions"]) == 1 for s, _, r in answers[1::2])


def test_body_over_the_limit_without_content_length(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"\0" * (LIMIT // 2)
        with contextlib.suppress(OSError):  # the server may close once it has refused
            for _ in range(3):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            data += more
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"limit of" in data


# --------------------------------------------------------------------------- metrics, logs
def test_metrics_and_access_log(server, sample):
    request("POST", f"{server.url}/v1/classify", png(sample[3]), {"Content-Type": "image/png"})
    status, headers, raw = request("GET", f"{server.url}/metrics")
    text = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in ("ranet_requests_total", "ranet_request_seconds_bucket", "ranet_exit_images_total",
                 "ranet_graph_batch_rows_bucket", "ranet_queue_images", "ranet_graph_queue_rows",
                 "process_resident_memory_bytes"):
        assert name in text, name
    assert 'ranet_requests_total{route="v1/classify",status="200"}' in text and 'exit="0"' in text
    assert 'graph="5"' in text
    assert "POST /v1/classify 200 " in server.stderr()  # the access log (logger ranet_edge.serve.access)
