"""Refusals before decoding (``serve/admission.py``): a ``deadline_ms`` request whose first
exit is predicted past its deadline gets 503 + Retry-After before its images are decoded, on
/v1 and /v2, from the real routes and stage engine on the shipped bundle; an idle engine
takes every request."""
from __future__ import annotations

import asyncio
import base64
import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from oip_support import json_pngs, reader, sample_images

from ranet_edge.runtime.deadline import StageTimes
from ranet_edge.serve.admission import check, first_exit_ms
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.rows import Overloaded
from ranet_edge.serve.settings import ServeSettings
from ranet_edge.serve.stage_engine import StageEngine

HOLD_S = 30.0  # the longest the model thread is held (a bound, never reached when the test passes)


def engine_at(queued: list[int], ms_per_run: dict[int, float], max_batch: int = 64) -> SimpleNamespace:
    """What ``check`` reads of a StageEngine: its queue lengths and a real StageTimes."""
    times = StageTimes(len(queued))
    for k in range(len(queued)):
        for rows, ms in ms_per_run.items():
            times.record(k, rows, ms / 1e3)
    return SimpleNamespace(times=times, queued=queued, max_batch=max_batch, slo=None, deadline_scale=1.0)


def test_the_prediction_and_the_refusal():
    engine = engine_at([10, 0, 3], {1: 0.5, 4: 1.0, 16: 2.0, 64: 6.0})
    assert first_exit_ms(engine, 1) == pytest.approx(2.0 + 1.0 + 0.5)  # 10 rows of graph 0, 3 of graph 2, then its own
    check(engine, 1.0, 0.0, deadline_s=0.005)  # 1 + 3.5 ms: in time
    with pytest.raises(Overloaded) as err:
        check(engine, 1.0, 1.0, deadline_s=0.005)  # the loop's lag makes it 5.5 ms
    assert err.value.status == 503 and "deadline_ms 5" in err.value.message and "\n" not in err.value.message
    check(engine, 50.0, 0.0)  # no deadline: nothing to refuse (and no --slo-ms)
    engine.deadline_scale = 0.3  # answers have missed: the engine aims at 1.5 ms of the 5
    check(engine, 1.4, 0.0, deadline_s=0.005)
    with pytest.raises(Overloaded, match="waited 1.5 ms for the server's event loop"):
        check(engine, 1.0, 0.5, deadline_s=0.005)
    check(engine_at([0, 0, 0], {1: 0.5}), 50.0, 10.0, deadline_s=1e-6)  # an idle engine takes it
    full = engine_at([130, 0, 0], {1: 0.5, 4: 1.0, 64: 6.0}, max_batch=64)  # 2 full runs, then 2 rows
    assert first_exit_ms(full, 1) == pytest.approx(6.0 + 6.0 + 0.5 + 0.5)


def test_late_deadline_requests_are_refused_before_decoding(monkeypatch):
    """The model thread is held in graph 0 with a second request queued behind it, and graph
    0's measured time is 200 ms: a 50 ms deadline is refused with 503 (gRPC UNAVAILABLE) even
    with a body that would be a 400 once decoded, on /v1, /v2, its stream and gRPC; without a deadline
    the same body is decoded (400); a 10 s deadline is admitted and answered."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tritonclient.grpc")
    from grpc_support import NAME, aio_call, messages, served

    from ranet_edge.serve.metrics import Metrics
    from ranet_edge.serve.routes import Routes

    model = ServedModel(ServeSettings())
    real, held, entered = model.executor.run, threading.Event(), threading.Event()

    def run(g, env):
        entered.set()
        held.wait(HOLD_S)
        return real(g, env)

    monkeypatch.setattr(model.executor, "run", run)
    x = model.chain.preprocess(np.zeros((2, 32, 32, 3), np.uint8))
    garbage = json_pngs([b"not a png"])
    v2 = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                 "data": [base64.b64encode(b"not a png").decode()]}],
                     "parameters": {"deadline_ms": 50}}).encode()

    async def go():
        engine = StageEngine(model)
        routes = Routes(engine, Metrics(engine, model.settings.max_batch))
        for _ in range(50):
            engine.times.record(0, 1, 0.2)
            engine.times.record(0, 2, 0.2)

        first = asyncio.ensure_future(engine.classify(x, None))
        assert await asyncio.to_thread(entered.wait, HOLD_S)
        second = asyncio.ensure_future(engine.classify(x, None))
        await asyncio.sleep(0.05)
        assert engine.queued[0] == 2
        headers = {"content-type": "application/json"}
        try:
            late = await routes.handle("POST", "/v1/classify", {"deadline_ms": "50"}, headers, reader(garbage))
            decoded = await routes.handle("POST", "/v1/classify", {}, headers, reader(garbage))
            late_v2 = await routes.handle("POST", "/v2/models/ranet-edge/infer", {}, headers, reader(v2))
            late_sse = await routes.handle("POST", "/v2/models/ranet-edge/infer_stream", {}, headers, reader(v2))
            server, channel = await served(engine)
            req = messages["ModelInferRequest"](model_name=NAME)
            req.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"not a png")
            req.parameters["deadline_ms"].double_param = 50.0
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await aio_call(channel, "ModelInfer")(req, timeout=HOLD_S)
            finally:
                await channel.close()
                await server.stop(grace=None)
            late_grpc = err.value
            patient = asyncio.ensure_future(routes.handle("POST", "/v1/classify", {"deadline_ms": "10000"}, headers,
                                                          reader(garbage)))
            held.set()
            return late, decoded, late_v2, late_sse, late_grpc, await patient, await first, await second
        finally:
            held.set()
            await engine.close(5)

    late, decoded, late_v2, late_sse, late_grpc, patient, *_ = asyncio.run(go())
    assert late_grpc.code() == grpc.StatusCode.UNAVAILABLE and "deadline_ms 50" in late_grpc.details()
    for reply in (late, late_v2, late_sse):
        assert reply.status == 503 and reply.headers.get("retry-after"), reply.body
        assert b"deadline_ms 50" in reply.body and b"predicted" in reply.body
    assert decoded.status == 400 and patient.status == 400  # admitted, then decoded: the body is not a PNG


def test_the_engine_learns_its_share_of_deadlines():
    from ranet_edge.serve.admission import OVERRUN_MS, engine_deadline, observe
    from ranet_edge.serve.slo import MIN_SCALE, MISS_CUT

    engine = SimpleNamespace(deadline_scale=1.0)
    assert engine_deadline(engine, None, 0.002) is None
    assert engine_deadline(engine, 0.020, 0.002) == pytest.approx(0.018)  # the reply's wait for the loop
    observe(engine, 25.0, 0.020, 15.0, 0.018)  # answered past its 20 ms; the engine met its aim
    assert engine.deadline_scale == pytest.approx(MISS_CUT)
    assert engine_deadline(engine, 0.020, 0.002) == pytest.approx(MISS_CUT * 0.020 - 0.002)
    observe(engine, 25.0, 0.020, 18.0 + OVERRUN_MS + 0.1, 0.018)  # the engine itself was late: not counted
    assert engine.deadline_scale == pytest.approx(MISS_CUT)
    for _ in range(200):
        observe(engine, 25.0, 0.020, 10.0, 0.018)
    assert engine.deadline_scale == MIN_SCALE and engine_deadline(engine, 0.001, 0.5) == 0.0
    for _ in range(100_000):
        observe(engine, 5.0, 0.020, 4.0, 0.018)
    assert engine.deadline_scale == 1.0


def test_routes_report_each_deadline_answer():
    """A deadline answer late because its body arrived late (170 ms of a 200 ms deadline) steps
    the engine's share of deadlines down, and /metrics says so; one the engine could not
    meet itself (0.001 ms: shorter than graph 0) and one without a deadline leave it alone."""
    import time

    from ranet_edge.serve.metrics import Metrics
    from ranet_edge.serve.routes import Routes
    from ranet_edge.serve.slo import MISS_CUT

    model = ServedModel(ServeSettings())
    body = json_pngs(sample_images(2))
    read, slow_read = reader(body), reader(body, 0.17)

    async def go():
        engine = StageEngine(model)
        routes = Routes(engine, Metrics(engine, model.settings.max_batch))
        headers = {"content-type": "application/json"}
        try:
            plain = await routes.handle("POST", "/v1/classify", {}, headers, read)
            impossible = await routes.handle("POST", "/v1/classify", {"deadline_ms": "0.001"}, headers, read)
            untouched = engine.deadline_scale
            t = time.perf_counter()
            late = await routes.handle("POST", "/v1/classify", {"deadline_ms": "200"}, headers, slow_read)
            took = time.perf_counter() - t
            metrics = await routes.handle("GET", "/metrics", {}, {}, read)
            return plain, impossible, untouched, late, took, engine.deadline_scale, metrics.body.decode()
        finally:
            await engine.close(5)

    plain, impossible, untouched, late, took, scale, metrics = asyncio.run(go())
    assert plain.status == impossible.status == late.status == 200, late.body
    assert [p["exit"] for p in json.loads(impossible.body)["predictions"]] == [0, 0]
    assert untouched == 1.0
    assert took > 0.16 and scale == pytest.approx(MISS_CUT)  # past 80% of 200 ms: a miss
    assert f"ranet_deadline_share {MISS_CUT}" in metrics  # what an operator sees

