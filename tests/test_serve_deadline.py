"""Deadlines in the server (issue 31, part 3): ``deadline_ms`` on /v1, /v2 and gRPC, counted
from arrival; the answer is the deepest exit reached in time, with ``deadline_cut``.

The fast tests drive the stage engine and the routes in-process on the shipped bundle, with
graphs slowed by a real sleep where time must pass; the last one starts `ranet-edge serve
--grpc-port` and calls it with urllib and tritonclient.
"""
from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from oip_support import json_pngs, png, reader, sample_images

from ranet_edge.serve.api import RequestError
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.progress import parse_deadline, within
from ranet_edge.serve.settings import ServeSettings
from ranet_edge.serve.stage_engine import StageEngine


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel(ServeSettings())


@pytest.fixture(scope="module")
def x(model) -> np.ndarray:
    return model.chain.preprocess(sample_images(32))


def slow_graphs(monkeypatch, model: ServedModel, seconds: float, from_graph: int = 1) -> dict:
    """Every run of graph ``from_graph`` or later sleeps ``seconds`` first, while the returned
    dict's ``"on"`` is true."""
    real = model.executor.run
    state = {"on": True}

    def run(g, env):
        if g >= from_graph and state["on"]:
            time.sleep(seconds)
        return real(g, env)

    monkeypatch.setattr(model.executor, "run", run)
    return state


def test_a_loose_deadline_changes_nothing(model, x):
    want = model.chain.predict(x)

    async def go():
        engine = StageEngine(model)
        try:
            plain = await engine.classify(x, None)
            loose = await engine.classify(x, None, deadline=time.perf_counter() + 60)
            return plain, loose
        finally:
            await engine.close(5)

    plain, loose = asyncio.run(go())
    assert plain.deadline_cut is None
    np.testing.assert_array_equal(loose.labels, want.labels)
    np.testing.assert_array_equal(loose.exits, want.exits)
    assert not loose.deadline_cut.any()


def test_at_the_deadline_the_answer_is_the_deepest_exit_reached(model, x, monkeypatch):
    """Graph 1 takes 0.5 s; a 0.1 s deadline is answered at 0.1 s with exit 0, and the engine
    goes on serving (the cut request's rows are dropped)."""
    want = model.chain.predict(x[:8])
    exit0 = model.chain.run_all(x[:8])[0].argmax(axis=1)
    slow = slow_graphs(monkeypatch, model, 0.5)

    async def go():
        engine = StageEngine(model)
        try:
            t0 = time.perf_counter()
            got = await engine.classify(x[:8], None, deadline=t0 + 0.1)
            took = time.perf_counter() - t0
            slow["on"] = False
            after = await engine.classify(x[:2], None)
            return got, took, after
        finally:
            await engine.close(10)

    got, took, after = asyncio.run(go())
    assert 0.09 < took < 0.45, took
    assert (got.exits == 0).all()
    np.testing.assert_array_equal(got.deadline_cut, want.exits > 0)
    np.testing.assert_array_equal(got.labels, exit0)
    np.testing.assert_array_equal(after.labels, want.labels[:2])


def test_a_request_split_over_batches_gets_every_image_answered(model, x, monkeypatch):
    """max_batch 4, 8 images, graph 1 takes 0.3 s, a 0.05 s deadline: half the rows wait for
    graph 0 behind graph 1; every image still gets its deepest exit reached, none waits for
    graph 2."""
    want = model.chain.predict(x[:8])
    exits = model.chain.run_all(x[:8])
    slow_graphs(monkeypatch, model, 0.3)

    async def go():
        engine = StageEngine(model, max_batch=4)
        try:
            t0 = time.perf_counter()
            got = await engine.classify(x[:8], None, deadline=t0 + 0.05)
            return got, time.perf_counter() - t0
        finally:
            await engine.close(10)

    got, took = asyncio.run(go())
    assert took < 0.9, took  # graph 1 ran once at most
    assert (got.exits <= 1).all() and ((got.exits == want.exits) | got.deadline_cut).all()
    for i, e in enumerate(got.exits.tolist()):
        assert got.labels[i] == exits[e][i].argmax()


def test_a_graph_expected_to_overrun_is_not_started(model, x):
    """The engine expects graph 1 to take 10 s: a request with a 2 s deadline is answered
    right after graph 0, and graph 1 never runs."""
    want = model.chain.predict(x[:8])
    runs: list[tuple[int, int]] = []

    async def go():
        engine = StageEngine(model, on_batch=lambda k, n: runs.append((k, n)))
        engine.times = type(engine.times)(len(engine.stages))
        for c in (1, 2, 4, 8):
            engine.times.record(0, c, 1e-4)
            engine.times.record(1, c, 10.0)
        try:
            t0 = time.perf_counter()
            got = await engine.classify(x[:8], None, deadline=t0 + 2.0)
            return got, time.perf_counter() - t0
        finally:
            await engine.close(5)

    got, took = asyncio.run(go())
    assert [k for k, _ in runs] == [0] and took < 1.5
    assert (got.exits == 0).all()
    np.testing.assert_array_equal(got.deadline_cut, want.exits > 0)


def test_a_request_with_its_first_exit_is_not_timed_out(model, x, monkeypatch):
    """timeout_s 0.3 s, graph 1 takes 1 s: with deadline_ms the routes answer 200 at exit 0;
    without, the same request gets 504."""
    from ranet_edge.serve.metrics import Metrics
    from ranet_edge.serve.routes import Routes

    slow = ServedModel(ServeSettings(timeout_s=0.3))
    slow_graphs(monkeypatch, slow, 1.0)
    read = reader(json_pngs(sample_images(2)))

    async def go():
        engine = StageEngine(slow)
        routes = Routes(engine, Metrics(engine, slow.settings.max_batch))
        headers = {"content-type": "application/json"}
        try:
            ok = await routes.handle("POST", "/v1/classify", {"deadline_ms": "100000"}, headers, read)
            late = await routes.handle("POST", "/v1/classify", {}, headers, read)
            bad = await routes.handle("POST", "/v1/classify", {"deadline_ms": "soon"}, headers, read)
            return ok, late, bad
        finally:
            await engine.close(5)

    ok, late, bad = asyncio.run(go())
    assert ok.status == 200, ok.body
    preds = json.loads(ok.body)["predictions"]
    assert [p["exit"] for p in preds] == [0, 0] and all("deadline_cut" in p for p in preds)
    assert late.status == 504
    assert bad.status == 400 and b"deadline_ms" in bad.body and b"\n" not in bad.body


@pytest.mark.parametrize("bad", [0, -5, "soon", float("nan"), float("inf"), True, [1]])
def test_bad_deadlines_are_one_line_400s(bad):
    with pytest.raises(RequestError) as err:
        parse_deadline(bad)
    assert err.value.status == 400 and "deadline_ms" in err.value.message and "\n" not in err.value.message
    assert parse_deadline(None) is None and parse_deadline("2.5") == pytest.approx(0.0025)


def test_the_deadline_never_passes_the_timeout():
    assert within(None, 5.0, 30) is None
    assert within(0.01, 5.0, 30) == pytest.approx(5.01)
    assert within(100.0, 5.0, 0.5) == pytest.approx(5.45)


# --------------------------------------------------------------------------- the real server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("uvicorn", reason="needs uvicorn (the serve extra)")
    from serve_harness import free_ports, running_server

    (grpc_port,) = free_ports(1)
    cmd = [str(Path(sys.executable).with_name("ranet-edge")), "serve"]
    with running_server(tmp_path_factory.mktemp("deadline"), lambda *a: cmd + list(a),
                        "--grpc-port", str(grpc_port), start_s=120) as srv:
        yield srv, grpc_port


def _post(url: str, body: bytes, ctype: str) -> tuple[int, dict]:
    from serve_harness import post

    return post(url, body, ctype)


def test_v1_v2_and_grpc_answer_within_a_deadline(server, model):
    """A 0.001 ms deadline: every image answered at exit 0 (never 504), cut where predict goes
    deeper; a 60 s deadline: predict's answers, nothing cut. Over /v1, /v2 JSON and tritonclient.grpc."""
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    srv, grpc_port = server
    images = sample_images(6)
    x = model.chain.preprocess(images)
    want = model.chain.predict(x)
    exit0 = model.chain.run_all(x)[0].argmax(axis=1)
    body = json_pngs(images)
    v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [6],
                      "data": [base64.b64encode(png(im)).decode() for im in images]}]}
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    files = np.array([png(im) for im in images], dtype=np.object_)
    try:
        for deadline, labels, exits, cut in ((0.001, exit0, np.zeros(6, int), want.exits > 0),
                                             (60000, want.labels, want.exits, np.zeros(6, bool))):
            status, doc = _post(f"{srv.url}/v1/classify?deadline_ms={deadline}", body, "application/json")
            assert status == 200, doc
            preds = doc["predictions"]
            assert [p["label"] for p in preds] == labels.tolist() and [p["exit"] for p in preds] == exits.tolist()
            assert [p["deadline_cut"] for p in preds] == cut.tolist()

            status, doc = _post(f"{srv.url}/v2/models/ranet-edge/infer",
                                json.dumps({**v2, "parameters": {"deadline_ms": deadline}}).encode(), "application/json")
            assert status == 200, doc
            out = {o["name"]: o for o in doc["outputs"]}
            assert out["label"]["data"] == labels.tolist() and out["exit"]["data"] == exits.tolist()
            assert out["deadline_cut"]["datatype"] == "BOOL" and out["deadline_cut"]["data"] == cut.tolist()

            tensor = tritongrpc.InferInput("image", [6], "BYTES").set_data_from_numpy(files)
            result = client.infer("ranet-edge", [tensor], parameters={"deadline_ms": float(deadline)})
            np.testing.assert_array_equal(result.as_numpy("label"), labels)
            np.testing.assert_array_equal(result.as_numpy("exit"), exits)
            np.testing.assert_array_equal(result.as_numpy("deadline_cut"), cut)
        with pytest.raises(tritongrpc.InferenceServerException, match="deadline_ms"):
            client.infer("ranet-edge", [tensor], parameters={"deadline_ms": "soon"})
    finally:
        client.close()
    status, doc = _post(f"{srv.url}/v1/classify?deadline_ms=-1", body, "application/json")
    assert status == 400 and "deadline_ms" in doc["error"]
