"""Answers that refine, streamed (issue 31, parts 4 and 5): gRPC ``ModelStreamInfer`` through
tritonclient.grpc's ``start_stream`` / ``async_stream_infer``, and server-sent events on
``POST /v2/models/NAME/infer_stream`` from a real `ranet-edge serve` (urllib and ``curl -N``).

For each image the exits come in order and end with the final answer; every label equals
``run_all``'s argmax at its exit, and the final answer equals ``ExitChain.predict``'s.
"""
from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from oip_support import png, sample_images

from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.settings import ServeSettings

tritongrpc = pytest.importorskip("tritonclient.grpc")
from grpc_support import NAME, grpc_server, image_input  # noqa: E402  (needs tritonclient)

POINT = "p0.5"  # the shipped point under which the sample images leave at many exits
N = 12


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings(max_batch=16))


@pytest.fixture(scope="module")
def truth(model):
    images = sample_images(N)
    x = model.chain.preprocess(images)
    return images, model.chain.predict(x, POINT), model.chain.run_all(x)


def stream(port: int, requests: list[dict]) -> list[tuple]:
    """Send ``requests`` (kwargs of async_stream_infer) on one stream; every (result, error)."""
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
    got: queue.Queue = queue.Queue()
    try:
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        for kw in requests:
            client.async_stream_infer(NAME, **kw)
        client.stop_stream()  # waits for every response
    finally:
        client.close()
    return [got.get_nowait() for _ in range(got.qsize())]


def by_request(responses: list[tuple]) -> dict[str, list]:
    out: dict[str, list] = {}
    for result, error in responses:
        assert error is None, error
        out.setdefault(result.get_response().id, []).append(result)
    return out


def params(result) -> dict:
    return {k: v.bool_param for k, v in result.get_response().parameters.items()
            if v.WhichOneof("parameter_choice") == "bool_param"}  # operating_point is a string_param


def check_refinements(seq: list[tuple[int, int, float, bool]], i: int, want, logits) -> None:
    """``seq``: (label, exit, confidence, final) of image ``i`` in the order received."""
    exits = [e for _, e, _, _ in seq]
    assert exits == sorted(set(exits)), exits  # in order, each exit once
    assert [f for *_, f in seq] == [False] * (len(seq) - 1) + [True]
    for label, e, _, _ in seq:
        assert label == logits[e][i].argmax(), (i, e)
    label, e, conf, _ = seq[-1]
    assert (label, e) == (want.labels[i], want.exits[i])
    assert conf == pytest.approx(want.confidences[i], abs=1e-6)
    assert exits == list(range(want.exits[i] + 1))  # every exit reached, one response each


def test_grpc_stream_sends_every_exit_then_the_final_answer(model, truth):
    images, want, logits = truth
    assert len(set(want.exits.tolist())) >= 3
    with grpc_server(model) as port:
        responses = stream(port, [dict(inputs=[image_input(images[i:i + 1])], request_id=str(i),
                                       parameters={"anytime": True, "operating_point": POINT}) for i in range(N)])
    answers = by_request(responses)
    assert sorted(answers, key=int) == [str(i) for i in range(N)]
    for i in range(N):
        seq = answers[str(i)]
        flags = [params(r) for r in seq]
        assert [f["triton_final_response"] for f in flags] == [False] * (len(seq) - 1) + [True]
        check_refinements([(int(r.as_numpy("label")[0]), int(r.as_numpy("exit")[0]),
                            float(r.as_numpy("confidence")[0]), f["final"]) for r, f in zip(seq, flags)],
                          i, want, logits)


def test_grpc_stream_empty_final_response_plain_requests_and_errors(model, truth):
    """enable_empty_final_response: the answer, then an empty response flagged final (Triton's
    decoupled convention); without ``anytime``, one response; a bad request gets an error and
    the stream goes on."""
    images, want, logits = truth
    many = images[:N]
    with grpc_server(model) as port:
        responses = stream(port, [
            dict(inputs=[image_input(images[:1])], request_id="empty", parameters={"anytime": True,
                                                                                   "operating_point": POINT},
                 enable_empty_final_response=True),
            dict(inputs=[image_input(images[:2])], request_id="plain", parameters={"operating_point": POINT}),
            dict(inputs=[image_input(images[:1])], request_id="bad", parameters={"anytime": "yes"}),
            dict(inputs=[image_input(many)], request_id="batch", parameters={"anytime": True,
                                                                             "operating_point": POINT}),
        ])
    errors = [e for _, e in responses if e is not None]
    assert len(errors) == 1 and "parameter anytime must be true or false" in str(errors[0])
    answers = by_request([r for r in responses if r[1] is None])
    empty = answers["empty"]
    assert [params(r)["triton_final_response"] for r in empty] == [False] * (len(empty) - 1) + [True]
    assert empty[-1].get_response().outputs == [] and params(empty[-2])["final"]
    assert [int(r.as_numpy("exit")[0]) for r in empty[:-1]] == list(range(want.exits[0] + 1))
    (plain,) = answers["plain"]
    assert params(plain) == {"final": True, "triton_final_response": True}
    assert plain.get_response().parameters["operating_point"].string_param == POINT  # the point it ran at
    np.testing.assert_array_equal(plain.as_numpy("label"), want.labels[:2])
    batch = answers["batch"]  # several images per request: per image, exits never go back
    exits = np.stack([r.as_numpy("exit") for r in batch])
    assert (np.diff(exits, axis=0) >= 0).all() and params(batch[-1])["final"]
    np.testing.assert_array_equal(batch[-1].as_numpy("label"), want.labels)
    np.testing.assert_array_equal(exits[-1], want.exits)


# --------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("uvicorn", reason="needs uvicorn (the serve extra)")
    from serve_harness import free_ports, running_server

    (grpc_port,) = free_ports(1)
    cmd = [str(Path(sys.executable).with_name("ranet-edge")), "serve"]
    with running_server(tmp_path_factory.mktemp("stream"), lambda *a: cmd + list(a),
                        "--grpc-port", str(grpc_port), start_s=120) as srv:
        yield srv, grpc_port


def infer_body(images: np.ndarray, **parameters) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                   "data": [base64.b64encode(png(im)).decode() for im in images]}],
                       "parameters": parameters}).encode()


def events(text: str) -> list[tuple[str, dict]]:
    """(event, data) of a text/event-stream body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out


def sse(url: str, body: bytes) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def answers_at(url: str, point: str) -> float:
    """ranet_answers_total{operating_point=point} of the server's /metrics (0 before the first)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    prefix = f'ranet_answers_total{{operating_point="{point}"}} '
    return next((float(ln[len(prefix):]) for ln in text.splitlines() if ln.startswith(prefix)), 0.0)


def test_server_sent_events_and_the_grpc_stream_of_ranet_edge_serve(server, truth):
    srv, grpc_port = server
    images, want, logits = truth
    counted = answers_at(srv.url, POINT)
    url = f"{srv.url}/v2/models/ranet-edge/infer_stream"
    for i in range(N):
        status, ctype, text = sse(url, infer_body(images[i:i + 1], anytime=True, operating_point=POINT))
        assert status == 200 and ctype == "text/event-stream"
        evs = events(text)
        assert [e for e, _ in evs] == ["exit"] * (len(evs) - 1) + ["final"]
        outs = [{o["name"]: o["data"][0] for o in d["outputs"]} for _, d in evs]
        check_refinements([(o["label"], o["exit"], o["confidence"], d["parameters"]["final"])
                           for o, (_, d) in zip(outs, evs)], i, want, logits)
    status, _, text = sse(url, infer_body(images[:3], operating_point=POINT))  # no anytime: the answer alone
    ((event, doc),) = events(text)
    assert event == "final" and {o["name"]: o["data"] for o in doc["outputs"]}["label"] == want.labels[:3].tolist()
    status, ctype, text = sse(url, infer_body(images[:1], anytime="yes"))
    assert status == 400 and ctype == "application/json" and "anytime" in json.loads(text)["error"]
    responses = stream(grpc_port, [dict(inputs=[image_input(images[3:4])], request_id="x",
                                        parameters={"anytime": True, "operating_point": POINT})])
    seq = by_request(responses)["x"]
    assert [int(r.as_numpy("exit")[0]) for r in seq] == list(range(want.exits[3] + 1))
    assert answers_at(srv.url, POINT) - counted == N + 2  # streamed answers count like the others


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_reads_the_event_stream(server, truth):
    srv, _ = server
    images, want, _ = truth
    i = int(np.argmax(want.exits))  # the image that reaches the deepest exit
    done = subprocess.run(["curl", "-sN", f"{srv.url}/v2/models/ranet-edge/infer_stream", "-H",
                           "Content-Type: application/json", "--data-binary", "@-"],
                          input=infer_body(images[i:i + 1], anytime=True, operating_point=POINT),
                          capture_output=True, timeout=60, check=True)
    evs = events(done.stdout.decode())
    assert len(evs) == want.exits[i] + 1 and evs[-1][0] == "final"
