"""The stage engine on the shipped default bundle: many concurrent requests of mixed sizes and
operating points get, image by image, what ExitChain.predict gives each request alone; early
answers, the bounded queue, cancellation and close, with the model thread held by a real
callback (no mocks)."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
from ranet_edge.serve.api import RequestError
from ranet_edge.serve.engine import ServedModel
from ranet_edge.serve.rows import Rows
from ranet_edge.serve.settings import ServeSettings
from ranet_edge.serve.stage_engine import Overloaded, StageEngine

POINTS = [None, "p0.5", "iso-accuracy", "iso-accuracy-t"]
HOLD_S = 60.0  # the longest a test holds the model thread (a bound, never reached when it passes)


@pytest.fixture(scope="module")
def chain() -> ExitChain:
    return ExitChain.load(DEFAULT_BUNDLE)


@pytest.fixture(scope="module")
def x(chain) -> np.ndarray:
    with np.load(SAMPLE_IMAGES) as z:
        return chain.preprocess(z["x"])


@pytest.fixture(scope="module")
def models() -> dict[str, ServedModel]:
    return {g: ServedModel(ServeSettings(graph=g)) for g in ("chain", "monolithic")}


def mixed_requests(n_images: int, seed: int) -> list[tuple[int, int, str | None]]:
    """(start, stop, point) of requests of 1-16 images covering the first ``n_images``."""
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < n_images:
        k = int(rng.choice([1, 1, 1, 2, 3, 5, 16]))
        out.append((i, min(n_images, i + k), POINTS[len(out) % len(POINTS)]))
        i += k
    return out


@pytest.mark.parametrize("graph, stage_batching, max_batch", [("chain", True, 64), ("chain", False, 64),
                                                              ("chain", True, 7), ("monolithic", True, 32)])
def test_concurrent_requests_equal_predict(chain, x, models, graph, stage_batching, max_batch):
    runs: list[tuple[int, int]] = []
    engine = StageEngine(models[graph], stage_batching=stage_batching, max_batch=max_batch,
                         on_batch=lambda k, n: runs.append((k, n)))
    requests = mixed_requests(len(x), seed=max_batch)

    async def go():
        try:
            return await asyncio.gather(*(engine.classify(x[a:b], p) for a, b, p in requests))
        finally:
            assert await engine.close(5.0)

    answers = asyncio.run(go())
    for (a, b, point), got in zip(requests, answers):
        want = chain.predict(x[a:b], point)
        assert got.labels.tolist() == want.labels.tolist(), (a, b, point)
        assert got.exits.tolist() == want.exits.tolist(), (a, b, point)
        np.testing.assert_allclose(got.confidences, want.confidences, atol=1e-5)
        logits = chain.run_all(x[a:b])
        np.testing.assert_allclose(got.logits, np.stack([logits[e][i] for i, e in enumerate(want.exits)]),
                                   atol=1e-4)
        assert got.server_ms >= 0
    assert engine.pending == 0 and sum(engine.queued) == 0
    assert all(n <= max_batch for _, n in runs)
    stages = {k for k, _ in runs}
    assert stages == ({0} if graph == "monolithic" else set(range(6)))
    if graph == "chain" and stage_batching and max_batch == 64:
        # survivors of many requests (and many graph-0 runs) share the later graphs' runs
        assert sum(1 for k, _ in runs if k == 5) < sum(1 for k, _ in runs if k == 0)


def test_requests_decided_early_are_answered_while_later_graphs_wait(chain, x, models):
    """The model thread is held inside graph 1's run until the requests graph 0 decided are
    answered: early answers do not wait for the rest of the batch."""
    want = chain.predict(x[:64])
    early = [i for i in range(64) if want.exits[i] == 0][:5]
    late = [i for i in range(64) if want.exits[i] > 1][:3]
    gate = threading.Event()
    held = []

    def hold(k: int, n: int) -> None:
        if k == 1:
            held.append(gate.wait(HOLD_S))

    for stage_batching in (True, False):
        gate.clear()
        engine = StageEngine(models["chain"], stage_batching=stage_batching, on_batch=hold)

        async def go(engine: StageEngine):
            tasks = {i: asyncio.ensure_future(engine.classify(x[i:i + 1], None)) for i in early + late}
            await asyncio.wait([tasks[i] for i in early], timeout=HOLD_S)
            answered = [tasks[i].done() for i in early]
            unanswered = [tasks[i].done() for i in late]
            gate.set()
            await asyncio.gather(*tasks.values())
            await engine.close(5.0)
            return answered, unanswered

        answered, unanswered = asyncio.run(go(engine))
        assert all(answered) and not any(unanswered), (stage_batching, answered, unanswered)
    assert held and all(held)


def test_bounded_queue_overload_cancel_and_close(x, models):
    gate = threading.Event()
    engine = StageEngine(models["chain"], max_queue=20, on_batch=lambda k, n: gate.wait(HOLD_S))

    async def go():
        first = asyncio.ensure_future(engine.classify(x[:16], None))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as exc:
            await engine.classify(x[16:21], None)  # 16 + 5 > 20
        assert exc.value.status == 503 and "max_queue 20" in exc.value.message
        second = asyncio.ensure_future(engine.classify(x[16:20], None))  # 16 + 4 fits
        await asyncio.sleep(0.05)
        second.cancel()  # its rows are discarded, not run
        closing = asyncio.ensure_future(engine.close(HOLD_S))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="shutting down"):
            await engine.classify(x[:1], None)
        gate.set()
        answer = await first  # in flight at close: answered
        assert await closing
        return answer

    answer = asyncio.run(go())
    assert len(answer.labels) == 16
    assert engine.pending == 0


def test_bad_inputs_are_request_errors(x, models):
    engine = StageEngine(models["chain"])

    async def go():
        for bad, point, fragment in [(x[:2].astype(np.float64), None, "float32"), (x[:2, :, :8], None, "[N, 3, 32, 32]"),
                                     (x[:0], None, "N >= 1"), (np.full_like(x[:1], np.nan), None, "NaN"),
                                     (x[:1], "fastest", "unknown operating point 'fastest'")]:
            with pytest.raises(RequestError) as exc:
                await engine.classify(bad, point)
            assert exc.value.status == 400 and fragment in exc.value.message, exc.value.message
        await engine.close(1.0)

    asyncio.run(go())


@pytest.mark.parametrize("buckets", [False, True], ids=["device", "device+buckets"])
def test_serve_uses_the_chains_device_path(chain, x, monkeypatch, buckets):
    """With device_io on (CPU provider) the engine drives the chain's device executor: feature
    maps stay OrtValues between graphs, rows of several requests merge on the device, and
    every answer is ExitChain.predict's."""
    import onnxruntime as ort

    from ranet_edge.runtime.executors.device import DeviceExecutor

    model = ServedModel(ServeSettings(device_io=True, max_batch=32))
    if buckets:  # what a GPU provider loads by default: padded to the warmed-up buckets
        model.chain = ExitChain.load(DEFAULT_BUNDLE, device_io=True, buckets=True, max_batch=32)
        model.executor = model.chain.executor
    assert model.executor is model.chain.executor and model.executor.kind == "device"
    assert model.summary()["executor"] == "device"
    seen = {"run": 0, "concat": 0, "types": set()}
    real_run, real_concat = DeviceExecutor.run, DeviceExecutor.concat

    def run(self, g, env):
        seen["run"] += 1
        seen["types"] |= {type(v) for v in env.values.values()}
        return real_run(self, g, env)

    def concat(self, envs):
        seen["concat"] += len(envs) > 1
        return real_concat(self, envs)

    monkeypatch.setattr(DeviceExecutor, "run", run)
    monkeypatch.setattr(DeviceExecutor, "concat", concat)
    engine = StageEngine(model, batch_wait_ms=20.0)
    requests = mixed_requests(120, seed=5)

    async def go():
        try:
            return await asyncio.gather(*(engine.classify(x[a:b], p) for a, b, p in requests))
        finally:
            assert await engine.close(5.0)

    for (a, b, point), got in zip(requests, asyncio.run(go())):
        want = chain.predict(x[a:b], point)
        assert got.labels.tolist() == want.labels.tolist() and got.exits.tolist() == want.exits.tolist()
    assert seen["run"] > 0 and seen["types"] == {ort.OrtValue} and seen["concat"] > 0


def test_a_row_waits_for_company_once_over_all_its_graphs(models, x):
    """The batch wait counts from a row's intake, not from its arrival at each queue: a row
    just handed on to graph 2, in the engine longer than the wait, runs before graph 0's fresh
    rows; one younger than the wait lets graph 0 run first (rows may still join it)."""
    engine = StageEngine(models["chain"], batch_wait_ms=5.0)
    ex = engine.executor
    now = 1000.0

    def rows(since: float, born: float) -> Rows:
        n = 2
        return Rows([], np.zeros(n, np.intp), np.arange(n), np.zeros((n, 1), np.float32),
                    np.ones((n, 1), np.float32), ex.feed(x[:n]), since, born=born)

    engine._queues[0].append(rows(now, now))
    engine._queued[0] = 2
    engine._queues[2].append(rows(now, now - 0.004))  # handed on just now, 4 ms in the engine
    engine._queued[2] = 2
    assert engine._pick(now) == 0
    engine._queues[2][0].born = now - 0.006  # 6 ms in the engine: its wait is spent
    assert engine._pick(now) == 2
    merged = Rows.merge(ex, [rows(now, now - 0.001), rows(now, now - 0.009)])
    assert merged.born == now - 0.009 and merged.select(ex, np.array([0]), merged.env, now + 1).born == now - 0.009
