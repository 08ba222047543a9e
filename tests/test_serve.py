"""A real server: Ray started by the tests, Serve's HTTP proxy on a loopback port, the shipped
default bundle deployed with one replica and with two; requests over HTTP.

One Ray instance serves the whole module (starting Ray takes ~15 s on a 2-core machine), for
the tests marked slow; what the launcher refuses before Ray starts runs in the quick loop. When
Ray does not come up, the first test says why (the raylet, its log, the machine) and the others
are skipped with a pointer to that error (serve_harness.started_once).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import socket
import urllib.request
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("ray") is None:  # find_spec: importing ray here would change how it starts
    pytest.skip("ray is not installed; install the ray extra: pip install 'ranet-edge[ray]'",
                allow_module_level=True)

import aiohttp  # noqa: E402  (comes with ray[serve], the ray extra)
from serve_harness import Started, started_once  # noqa: E402
from test_serve_units import png_header_bomb  # noqa: E402

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES  # noqa: E402
from ranet_edge.errors import InputError  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.serve import ServeSettings  # noqa: E402
from ranet_edge.serve.launcher import Server  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray's own pydantic use
LIMIT = 64 * 1024  # max_body_bytes of the one-replica app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def test_launcher_refuses_before_starting_ray():
    """A port in use, and HAProxy asked of a cluster (chosen when its nodes start): one-line
    errors naming the fix, before any Ray is started."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port} .*; pick another with --port"):
            Server(port=port)
    with pytest.raises(InputError, match="RAY_SERVE_ENABLE_HA_PROXY=1 ray start"):
        Server(address="auto", haproxy=True)


@contextlib.contextmanager
def two_apps() -> Iterator[tuple]:
    srv = Server(port=free_port(), num_cpus=4)  # 1 + 2 replicas reserve one CPU each
    try:
        one = srv.deploy(ServeSettings(max_body_bytes=LIMIT, max_batch=32), name="one", route_prefix="/one")
        two = srv.deploy(ServeSettings(replicas=2), name="two", route_prefix="/two")
        yield srv, one, two
    finally:
        srv.close()


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    with started_once("Ray", two_apps) as started:
        yield started


@pytest.fixture
def server(started, request):
    return started.get(request)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    with np.load(SAMPLE_IMAGES) as z:
        return z["x"][:200]


@pytest.fixture(scope="module")
def chain() -> ExitChain:
    return ExitChain.load(DEFAULT_BUNDLE)


async def _send(requests: list[tuple]) -> list[tuple[int, dict]]:
    """All requests at once, each (method, url, body, content type); answers in order."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(method, url, body=None, ctype=None):
            headers = {"Content-Type": ctype} if ctype else {}
            async with session.request(method, url, data=body, headers=headers) as r:
                return r.status, json.loads(await r.read())

        return await asyncio.gather(*(one(*r) for r in requests))


def send(requests: list[tuple]) -> list[tuple[int, dict]]:
    return asyncio.run(_send(requests))


def mixed_requests(url: str, sample: np.ndarray) -> tuple[list[tuple], list[tuple[int, str | None]]]:
    """200 requests: most one PNG, every tenth a JSON list of 3 images, every third at p0.5;
    with (first image index, operating point) per request."""
    requests, meta = [], []
    for i in range(200):
        point = "p0.5" if i % 3 == 0 else None
        q = "?operating_point=p0.5" if point else ""
        if i % 10 == 5:
            idx = [i, (i + 1) % 200, (i + 2) % 200]
            body = json.dumps([base64.b64encode(png(sample[k])).decode() for k in idx]).encode()
            requests.append(("POST", f"{url}/v1/classify{q}", body, "application/json"))
        else:
            idx = [i]
            requests.append(("POST", f"{url}/v1/classify{q}", png(sample[i]), "image/png"))
        meta.append((idx, point))
    return requests, meta


def check_answers(answers, meta, chain, sample):
    for (status, body), (idx, point) in zip(answers, meta):
        assert status == 200, body
        want = chain.predict(chain.preprocess(sample[idx]), point)  # the same images, alone
        got = body["predictions"]
        assert [p["label"] for p in got] == want.labels.tolist()
        assert [p["exit"] for p in got] == want.exits.tolist()
        np.testing.assert_allclose([p["confidence"] for p in got], want.confidences, atol=2e-6)
        assert [p["class"] for p in got] == [chain.class_names[k] for k in want.labels]
        assert body["operating_point"] == (point or "iso-accuracy") and body["graph"] == "chain"


@pytest.mark.slow  # Ray: the module's server
def test_200_concurrent_requests_equal_predict(server, sample, chain):
    _, one, _ = server
    requests, meta = mixed_requests(one.url, sample)
    answers = send(requests)
    check_answers(answers, meta, chain, sample)
    exits = {p["exit"] for _, b in answers for p in b["predictions"]}
    assert len(exits) >= 4  # the batches really mix exits


@pytest.mark.slow  # Ray: the module's server
def test_two_replicas_answer_as_one(server, sample, chain):
    _, one, two = server
    requests, meta = mixed_requests(two.url, sample)
    answers = send(requests)
    check_answers(answers, meta, chain, sample)
    assert len({b["replica"] for _, b in answers}) == 2  # both replicas took requests
    again = send(mixed_requests(one.url, sample)[0])
    assert [[(p["label"], p["exit"]) for p in b["predictions"]] for _, b in answers] == \
           [[(p["label"], p["exit"]) for p in b["predictions"]] for _, b in again]


@pytest.mark.slow  # Ray: the module's server
def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(server, sample):
    _, one, _ = server
    url = f"{one.url}/v1/classify"
    good = png(sample[0])
    bad = [
        (("POST", url, b"\x89PNG\r\n\x1a\ncorrupt", "image/png"), 400, "cannot be decoded"),
        (("POST", url, good, "text/plain"), 415, "content type text/plain"),
        (("POST", url, b"", "image/png"), 400, "body is empty"),
        (("POST", url, b"\0" * (LIMIT + 1), "image/png"), 413, f"limit of {LIMIT} bytes"),
        (("POST", url + "?operating_point=fastest", good, "image/png"), 400, "unknown operating point 'fastest'"),
        (("POST", url, json.dumps(["aGk="] * 33).encode(), "application/json"), 413, "at most 32"),
        (("POST", url, b"[1, 2]", "application/json"), 400, "list of base64"),
        (("POST", url, png_header_bomb(), "image/png"), 413, "more than 50,000,000 pixels"),
        (("GET", url, None, None), 405, "GET /v1/classify is not allowed"),
        (("GET", f"{one.url}/v2/classify", None, None), 404, "no route /v2/classify"),
    ]
    # interleaved with good requests, all in flight at once: each gets exactly its own answer
    requests = [r for b in bad for r in (b[0], ("POST", url, good, "image/png"))]
    answers = send(requests)
    assert len(answers) == len(requests)
    for (req, status, fragment), (got_status, body) in zip(bad, answers[0::2]):
        assert got_status == status, (req[:2], body)
        assert list(body) == ["error"] and fragment in body["error"] and "\n" not in body["error"]
    assert all(s == 200 and len(b["predictions"]) == 1 for s, b in answers[1::2])


@pytest.mark.slow  # Ray: the module's server
def test_body_over_the_limit_without_content_length(server):
    _, one, _ = server

    async def chunked():
        async def gen():
            for _ in range(3):
                yield b"\0" * (LIMIT // 2)

        async with aiohttp.ClientSession() as session:
            async with session.post(f"{one.url}/v1/classify", data=gen(), headers={"Content-Type": "image/png"}) as r:
                return r.status, await r.json()

    status, body = asyncio.run(chunked())
    assert status == 413 and "limit" in body["error"]


@pytest.mark.slow  # Ray: the module's server
def test_model_health_and_metrics(server, sample):
    srv, one, two = server
    health = json.loads(urllib.request.urlopen(f"{two.url}/v1/health", timeout=30).read())
    assert health["status"] == "ok"
    model = json.loads(urllib.request.urlopen(f"{one.url}/v1/model", timeout=30).read())
    assert model["num_classes"] == 10 and model["class_names"][3] == "cat" and len(model["exits"]) == 6
    assert model["default_operating_point"] == "iso-accuracy" and "p0.5" in model["operating_points"]
    assert model["max_batch"] == 32 and model["session_providers"] == ["CPUExecutionProvider"]
    assert model == {**one.summary, "replica": model["replica"]}
    # Prometheus text from the replica that answers (the same metrics as the one-process server)
    text = urllib.request.urlopen(f"{one.url}/metrics", timeout=30).read().decode()
    for name in ("ranet_exit_images_total", "ranet_requests_total", "ranet_graph_batch_rows_bucket",
                 "ranet_request_seconds_bucket", "ranet_queue_images"):
        assert name in text, name
    assert 'exit="0"' in text and 'status="200"' in text
    assert srv.metrics_url  # Ray's own metrics agent


@pytest.mark.slow  # Ray: the module's server
def test_open_inference_protocol_through_ray(server, sample, chain):
    """/v2 through a Ray replica: the same routes and codec as the one-process server."""
    _, _, two = server  # the app without a small body limit (JSON floats are large)
    meta = json.loads(urllib.request.urlopen(f"{two.url}/v2/models/ranet-edge", timeout=30).read())
    assert meta["name"] == "ranet-edge" and [i["name"] for i in meta["inputs"]] == ["image", "input"]
    x = chain.preprocess(sample[:5])
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], "parameters": {"operating_point": "p0.5"}}).encode()
    ((status, answer),) = send([("POST", f"{two.url}/v2/models/ranet-edge/infer", body, "application/json")])
    assert status == 200, answer
    out = {o["name"]: o["data"] for o in answer["outputs"]}
    want = chain.predict(x, "p0.5")
    assert out["label"] == want.labels.tolist() and out["exit"] == want.exits.tolist()
