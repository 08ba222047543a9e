"""The stage engine and the routes on a text bundle, in this process (conftest's
``text_bundle``): rows of different sequence lengths never share a graph run while rows of
one length from several requests do; a request whose ids the model refuses fails alone, with
a one-line 400, when its rows had been merged with others'; a bundle without a tokenizer
refuses texts on /v1 naming /v2; gRPC typed contents (``int64_contents``) are read. The slow
test sends a mixed load over HTTP to `ranet-edge serve` and checks every answer."""
from __future__ import annotations

import asyncio
import json
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("torch", reason="the text bundle is exported from PyTorch (conftest's text_bundle)")
from oip_support import reader  # noqa: E402
from text_models import text_batch  # noqa: E402

pytest.importorskip("uvicorn")

from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.serve.api import RequestError  # noqa: E402
from ranet_edge.serve.engine import ServedModel  # noqa: E402
from ranet_edge.serve.settings import ServeSettings  # noqa: E402
from ranet_edge.serve.stage_engine import StageEngine  # noqa: E402


def batch(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in text_batch(n, length, seed=seed).items()}


@pytest.fixture(scope="module")
def model(text_bundle) -> ServedModel:
    return ServedModel(ServeSettings(bundle=str(text_bundle[1]), max_batch=16))


def spy(monkeypatch, model: ServedModel, hold_first_s: float = 0.0) -> list[tuple[int, int, set, bool]]:
    """Record every graph run of ``model``'s executor: (graph, rows, the sequence lengths of the
    ids and mask it reads, whether it raised); rows of two lengths could not even be concatenated. The first run sleeps ``hold_first_s`` first, so
    the requests sent meanwhile queue up together."""
    runs: list[tuple[int, int, set, bool]] = []
    real = model.executor.run

    def run(g, env):
        if not runs and hold_first_s:
            time.sleep(hold_first_s)
        lengths = {v.shape[1] for name, v in env.values.items() if name in ("input_ids", "attention_mask")}
        try:
            out = real(g, env)
        except Exception:
            runs.append((g, env.rows, lengths, True))
            raise
        runs.append((g, env.rows, lengths, False))
        return out

    monkeypatch.setattr(model.executor, "run", run)
    return runs


def test_rows_share_graph_runs_only_with_rows_of_their_length(model, monkeypatch):
    runs = spy(monkeypatch, model, hold_first_s=0.3)
    xs = [batch(3, (5, 11)[i % 2], seed=i) for i in range(8)]
    kwargs = [{}, {"point": "ent"}, {"patience": 1}, {}] * 2

    async def go():
        engine = StageEngine(model, batch_wait_ms=50)
        try:
            warm = asyncio.ensure_future(engine.classify(batch(1, 7, seed=99), None))
            await asyncio.sleep(0.05)  # the warm request holds the model thread while the others queue
            answers = await asyncio.gather(*[engine.classify(x, kw.get("point"), patience=kw.get("patience"))
                                             for x, kw in zip(xs, kwargs)])
            await warm
            return answers
        finally:
            await engine.close(5)

    answers = asyncio.run(go())
    for x, kw, got in zip(xs, kwargs, answers):
        want = model.chain.predict(x, kw.get("point"), patience=kw.get("patience"))
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.exits, want.exits)
        np.testing.assert_allclose(got.confidences, want.confidences, atol=2e-6)
    assert all(len(lengths) == 1 for _, _, lengths, _ in runs), runs
    assert {next(iter(lengths)) for g, _, lengths, _ in runs if g == 0} == {5, 7, 11}
    assert max(rows for g, rows, _, _ in runs if g == 0) == 12  # the 4 requests of one length, in one run


def test_a_request_the_model_refuses_fails_alone(model, monkeypatch):
    """Ids past the vocabulary (64) make ONNX Runtime refuse graph 0. The bad request's rows
    were merged with two good requests' rows: the merged run fails, each request's rows run
    again alone, and only the bad request is refused."""
    runs = spy(monkeypatch, model, hold_first_s=0.3)
    good = batch(3, 5, seed=1)
    bad = batch(2, 5, seed=2)
    bad["input_ids"][1, 0] = 1000

    async def go():
        engine = StageEngine(model, batch_wait_ms=50)
        try:
            warm = asyncio.ensure_future(engine.classify(batch(1, 7, seed=99), None))
            await asyncio.sleep(0.05)
            out = await asyncio.gather(engine.classify(good, None), engine.classify(bad, None),
                                       engine.classify(good, None), return_exceptions=True)
            await warm
            return out
        finally:
            await engine.close(5)

    first, refused, second = asyncio.run(go())
    want = model.chain.predict(good)
    for got in (first, second):
        assert not isinstance(got, Exception), got
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.exits, want.exits)
    assert isinstance(refused, RequestError) and refused.status == 400
    assert "the model refused these inputs: indices element out of data bounds, idx=1000" in refused.message
    assert (0, 8, {5}, True) in runs and (0, 2, {5}, True) in runs  # merged, failed; then alone, failed


def test_a_bundle_without_a_tokenizer_takes_tensors_and_refuses_texts(text_bundle, tmp_path):
    from ranet_edge.serve.metrics import Metrics
    from ranet_edge.serve.routes import Routes

    bundle = shutil.copytree(text_bundle[1], tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["assets"]["tokenizer.json"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "tokenizer.json").unlink()
    model = ServedModel(ServeSettings(bundle=str(bundle), max_batch=16))
    assert model.tokenizer is None and model.summary()["tokenizer"] is False
    x = batch(4, 6, seed=3)
    v2 = json.dumps({"inputs": [{"name": k, "datatype": "INT64", "shape": list(v.shape), "data": v.tolist()}
                                for k, v in x.items()]}).encode()

    async def go():
        engine = StageEngine(model)
        routes = Routes(engine, Metrics(engine, 16))
        headers = {"content-type": "application/json"}

        try:
            texts = await routes.handle("POST", "/v1/classify", {}, headers, reader(b'{"texts": ["a b"]}'))
            tensors = await routes.handle("POST", "/v2/models/ranet-edge/infer", {}, headers, reader(v2))
            return texts, tensors
        finally:
            await engine.close(5)

    texts, tensors = asyncio.run(go())
    assert texts.status == 400
    assert json.loads(texts.body) == {"error": "this bundle carries no tokenizer.json, so /v1/classify takes no "
                                               "texts; send the tensors (input_ids int64 (batch, sequence), "
                                               "attention_mask int64 (batch, sequence)) to POST "
                                               "/v2/models/ranet-edge/infer"}
    assert tensors.status == 200, tensors.body
    out = {o["name"]: o["data"] for o in json.loads(tensors.body)["outputs"]}
    want = ExitChain.load(bundle).predict(x)
    assert out["label"] == want.labels.tolist() and out["exit"] == want.exits.tolist()


def test_the_monolithic_graph_serves_the_same_answers(text_bundle):
    """``--graph monolithic``: one stage that takes every named input, the same exits chosen."""
    mono = ServedModel(ServeSettings(bundle=str(text_bundle[1]), graph="monolithic", max_batch=16))
    x = batch(6, 9, seed=5)

    async def go():
        engine = StageEngine(mono)
        try:
            return await asyncio.gather(engine.classify(x, None), engine.classify(x, "ent"))
        finally:
            await engine.close(5)

    for got, point in zip(asyncio.run(go()), (None, "ent")):
        want = mono.chain.predict(x, point)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.exits, want.exits)
        np.testing.assert_allclose(got.confidences, want.confidences, atol=2e-6)
    assert len(mono.executor.graphs) == 1


def test_slo_ms_is_refused_for_a_text_bundle(text_bundle):
    from ranet_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="--slo-ms measures graphs on images; serve this named-input bundle"):
        ServedModel(ServeSettings(bundle=str(text_bundle[1]), slo_ms=20))


def test_grpc_typed_int64_contents_are_read(model):
    pytest.importorskip("tritonclient.grpc")
    import grpc
    from grpc_support import grpc_server, rpc

    from ranet_edge.serve.grpc_service import messages

    x = batch(5, 8, seed=4)
    want = model.chain.predict(x, patience=1)
    with grpc_server(model) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        req = messages["ModelInferRequest"](model_name="ranet-edge")
        req.parameters["patience"].int64_param = 1
        for name, v in x.items():
            req.inputs.add(name=name, datatype="INT64", shape=list(v.shape)).contents.int64_contents.extend(
                v.ravel().tolist())
        resp = rpc(channel, "ModelInfer", req)
        req.inputs[1].datatype = "BOOL"
        with pytest.raises(grpc.RpcError) as err:
            rpc(channel, "ModelInfer", req)
    got = {o.name: np.frombuffer(raw, "<i8" if o.datatype == "INT64" else "<f4")
           for o, raw in zip(resp.outputs, resp.raw_output_contents)}
    np.testing.assert_array_equal(got["label"], want.labels)
    np.testing.assert_array_equal(got["exit"], want.exits)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("input 'attention_mask' has datatype 'BOOL'; this model takes INT64 [-1, -1] "
                                   "(from its manifest)")


@pytest.mark.slow
def test_a_mixed_load_over_http_gets_predict_answers(text_bundle, tmp_path):
    """300 requests of 1 to 4 samples at 6 sequence lengths and 3 rules, 16 at a time."""
    from serve_local_support import local_server, send_all

    chain = ExitChain.load(text_bundle[1])
    rng = np.random.default_rng(0)
    cases, reqs = [], []
    with local_server(tmp_path, str(text_bundle[1]), "--max-batch", "16") as srv:
        for i in range(300):
            x = batch(int(rng.integers(1, 5)), int(rng.choice([3, 5, 8, 12, 20, 31])), seed=1000 + i)
            params = [{}, {"operating_point": "ent"}, {"patience": 1}][i % 3]
            doc = {"inputs": [{"name": k, "datatype": "INT64", "shape": list(v.shape), "data": v.tolist()}
                              for k, v in x.items()], "parameters": params}
            cases.append((x, params))
            reqs.append(("POST", f"{srv.url}/v2/models/ranet-edge/infer", json.dumps(doc).encode(),
                         {"Content-Type": "application/json"}))
        answers = send_all(reqs, threads=16)
    for (status, _, raw), (x, params) in zip(answers, cases):
        assert status == 200, raw
        out = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
        want = chain.predict(x, params.get("operating_point"), patience=params.get("patience"))
        assert out["label"] == want.labels.tolist() and out["exit"] == want.exits.tolist()


@pytest.mark.parametrize("dtype, datatype, values", [
    ("bool", "BOOL", [[True, False, True]]), ("int32", "INT32", [[1, -2, 3]]), ("uint8", "UINT8", [[0, 7, 255]]),
    ("float16", "FP16", [[0.5, -1.0, 2.0]]), ("float32", "FP32", [[0.25, 1, -3.5]])])
def test_every_input_datatype_is_read_from_json_and_binary(dtype, datatype, values):
    """The tensor codec (oip_named) on inputs of each dtype a manifest may declare: JSON data
    and little-endian binary give the same array; a value of another kind is one line."""
    from ranet_edge.runtime.tensors import InputInfo
    from ranet_edge.serve.oip_named import DATATYPES, decode_tensor
    from ranet_edge.serve.oip_tensors import TensorIn

    info = InputInfo("x", dtype, (None, None), ("batch", "sequence"))
    want = np.asarray(values, dtype)
    from_json = decode_tensor(TensorIn("x", datatype, (1, 3), data=values), info, 16)
    from_raw = decode_tensor(TensorIn("x", datatype, (1, 3), raw=want.astype(DATATYPES[dtype][1]).tobytes()), info, 16)
    for got in (from_json, from_raw):
        assert got.dtype == want.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, want)
    wrong = [["a", 1, 1]] if dtype != "bool" else [[1, 0, 1]]
    with pytest.raises(RequestError, match=rf"input 'x': every value must be .* \({datatype}\), got a"):
        decode_tensor(TensorIn("x", datatype, (1, 3), data=wrong), info, 16)
    if dtype == "bool":
        with pytest.raises(RequestError, match="BOOL bytes must be 0 or 1"):
            decode_tensor(TensorIn("x", datatype, (1, 3), raw=bytes([1, 2, 0])), info, 16)
    if dtype == "uint8":
        with pytest.raises(RequestError, match="out of the range of UINT8"):
            decode_tensor(TensorIn("x", datatype, (1, 3), data=[[0, 256, 1]]), info, 16)


def test_fuzzed_text_requests_are_answered_or_refused_in_one_line(model):
    """Whatever the tensors of a /v2 request to a text bundle (hypothesis, 300 examples), the
    codec gives the engine checked arrays or refuses with a one-line 4xx, never anything else;
    what it accepts, the engine answers or refuses (ids past the vocabulary) in one line too."""
    hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (the test extra)")
    from hypothesis import strategies as st

    from ranet_edge.serve import oip

    ints = st.integers(-2**64, 2**64) | st.integers(0, 70)
    values = st.recursive(st.none() | st.booleans() | ints | st.floats() | st.text(max_size=3),
                          lambda inner: st.lists(inner, max_size=6), max_leaves=30)
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(["input_ids", "attention_mask", "image", "token_type_ids"]),
        "datatype": st.sampled_from(["INT64", "INT32", "BOOL", "FP32", "BYTES"]),
        "shape": st.lists(st.integers(0, 4), max_size=3) | st.sampled_from([[1, 3], [2, 2], [1, 10**12]]),
        "data": values})
    bodies = st.fixed_dictionaries({"inputs": st.lists(tensor, min_size=1, max_size=3)},
                                   optional={"parameters": st.fixed_dictionaries(
                                       {}, optional={"patience": st.integers(0, 3) | st.text(max_size=2)})})


    @st.composite
    def valid(draw):  # well-formed requests, ids up to 70 (the vocabulary is 64)
        n, length = draw(st.integers(1, 3)), draw(st.integers(1, 6))
        ids = draw(st.lists(st.lists(st.integers(0, 70), min_size=length, max_size=length), min_size=n, max_size=n))
        mask = [[1] * length for _ in range(n)]
        return {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [n, length], "data": ids},
                           {"name": "attention_mask", "datatype": "INT64", "shape": [n, length], "data": mask}]}

    answered = []

    async def run(x):
        engine = StageEngine(model)
        try:
            return await engine.classify(x, None)
        finally:
            await engine.close(5)

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(valid() | bodies)
    def fuzz(doc):
        try:
            req = oip.parse_rest_infer(json.dumps(doc).encode(), None, model, 16)
        except RequestError as exc:
            assert 400 <= exc.status < 500 and "\n" not in exc.message and exc.message
            return
        try:
            got = asyncio.run(run(req.x))
        except RequestError as exc:
            assert exc.status == 400 and "the model refused these inputs" in exc.message
            answered.append(0)
            return
        answered.append(len(got.labels))

    fuzz()
    assert 0 in answered and max(answered) > 0  # some refused by the model, some answered
