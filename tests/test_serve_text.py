"""Serving a text bundle (named inputs: int64 ``input_ids`` and ``attention_mask``, a dynamic
sequence axis): `ranet-edge serve BUNDLE --grpc-port` as a user runs it, on loopback, called
with urllib, curl, tritonclient.http and tritonclient.grpc. Answers equal ``ExitChain.predict``
on the same arrays sample by sample, at two sequence lengths in separate requests, under
``max_prob``, ``entropy`` and ``patience``; /v1 tokenizes texts with the bundle's
``tokenizer.json``; bad inputs get one-line 400s. The bundle is conftest's ``text_bundle``
(exported once per session). Stage-engine details (rows of different lengths never share a
graph run, a bad request's rows fail alone) are in tests/test_serve_text_engine.py.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from serve_local_support import local_server, request, send_all

pytest.importorskip("torch", reason="the text bundle is exported from PyTorch (conftest's text_bundle)")
from text_models import text_batch  # noqa: E402

from ranet_edge.runtime import ExitChain  # noqa: E402

if importlib.util.find_spec("uvicorn") is None:
    pytest.skip("the one-process server needs the serve extra: pip install 'ranet-edge[serve]'",
                allow_module_level=True)

NAME = "ranet-edge"
LENGTHS = (6, 13)
#: request parameters -> ExitChain.predict's arguments (the bundle's points: mp = max_prob, ent = entropy)
RULES = [({}, {}), ({"operating_point": "ent"}, {"thresholds": "ent"}),
         ({"rule": "entropy", "operating_point": "ent"}, {"thresholds": "ent", "rule": "entropy"}),
         ({"patience": 1}, {"patience": 1})]
DOCS = Path(__file__).parents[1] / "docs" / "guides"
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def served(text_bundle, tmp_path_factory):
    """(server, gRPC port, chain) on the text bundle, max_length 40."""
    from serve_harness import free_ports

    (grpc_port,) = free_ports(1)
    with local_server(tmp_path_factory.mktemp("serve-text"), str(text_bundle[1]), "--max-batch", "16",
                      "--max-length", "40", "--grpc-port", str(grpc_port)) as srv:
        yield srv, grpc_port, ExitChain.load(text_bundle[1])


def batch(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in text_batch(n, length, seed=seed).items()}


def v2_body(x: dict[str, np.ndarray], parameters: dict | None = None, logits: bool = True) -> bytes:
    doc = {"inputs": [{"name": k, "datatype": "INT64", "shape": list(v.shape), "data": v.tolist()}
                      for k, v in x.items()]}
    if parameters:
        doc["parameters"] = parameters
    if logits:
        doc["outputs"] = [{"name": n} for n in ("label", "exit", "confidence", "logits")]
    return json.dumps(doc).encode()


def check(out: dict[str, np.ndarray], want) -> None:
    """Answers equal ``want`` (a Prediction) sample by sample."""
    np.testing.assert_array_equal(out["label"], want.labels)
    np.testing.assert_array_equal(out["exit"], want.exits)
    np.testing.assert_allclose(out["confidence"], want.confidences, atol=2e-6)


def outputs(raw: bytes) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in json.loads(raw)["outputs"]}


def one_line_error(status: int, raw: bytes, want_status: int, fragment: str) -> str:
    doc = json.loads(raw)
    assert status == want_status, (status, doc)
    assert set(doc) == {"error"} and "\n" not in doc["error"] and fragment in doc["error"], doc
    return doc["error"]


# --------------------------------------------------------------------------- metadata
def test_metadata_lists_the_bundle_inputs(served):
    srv, grpc_port, _ = served
    status, _, raw = request("GET", f"{srv.url}/v2/models/{NAME}")
    assert status == 200
    assert json.loads(raw)["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                                         {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}]
    status, _, raw = request("GET", f"{srv.url}/v1/model")
    model = json.loads(raw)
    assert model["tokenizer"] is True and model["max_length"] == 40 and "input" not in model
    assert [(i["name"], i["dtype"], i["axes"]) for i in model["inputs"]] == [
        ("input_ids", "int64", ["batch", "sequence"]), ("attention_mask", "int64", ["batch", "sequence"])]
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        meta = client.get_model_metadata(NAME, as_json=True)
    finally:
        client.close()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("input_ids", "INT64", ["-1", "-1"]), ("attention_mask", "INT64", ["-1", "-1"])]


# --------------------------------------------------------------------------- answers
def test_v2_json_answers_equal_predict_at_two_lengths_under_every_rule(served):
    """Every (length, rule) is its own request, all sent at once: rows of one length from
    several requests share graph runs, rows of the other length wait for theirs."""
    srv, _, chain = served
    cases, reqs = [], []
    for length in LENGTHS:
        x = batch(12, length, seed=length)
        for params, kwargs in RULES:
            cases.append((x, kwargs))
            reqs.append(("POST", f"{srv.url}/v2/models/{NAME}/infer", v2_body(x, params), JSON_TYPE))
    exits = set()
    for (status, _, raw), (x, kwargs) in zip(send_all(reqs, threads=8), cases):
        assert status == 200, raw
        out = outputs(raw)
        want = chain.predict(x, **kwargs)
        check(out, want)
        width = chain.exit_classes[0]
        np.testing.assert_allclose(out["logits"][:, :width], np.stack(
            [chain.run_all(x)[e][i] for i, e in enumerate(want.exits)]), atol=1e-5)
        exits.update(want.exits.tolist())
    assert exits == {0, 1, 2}  # the points really route samples to every exit


def test_tritonclient_binary_http_and_grpc_answers_equal_predict(served):
    httpclient = pytest.importorskip("tritonclient.http")
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    srv, grpc_port, chain = served
    h = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
    g = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        for length in LENGTHS:
            x = batch(9, length, seed=100 + length)
            for params, kwargs in RULES:
                want = chain.predict(x, **kwargs)
                hin = [httpclient.InferInput(k, list(v.shape), "INT64") for k, v in x.items()]
                for t, v in zip(hin, x.values()):
                    t.set_data_from_numpy(v, binary_data=True)
                res = h.infer(NAME, hin, parameters=params)
                check({n: res.as_numpy(n) for n in ("label", "exit", "confidence")}, want)
                gin = [tritongrpc.InferInput(k, list(v.shape), "INT64") for k, v in x.items()]
                for t, v in zip(gin, x.values()):
                    t.set_data_from_numpy(v)
                res = g.infer(NAME, gin, parameters=params)
                check({n: res.as_numpy(n) for n in ("label", "exit", "confidence")}, want)
        with pytest.raises(tritongrpc.InferenceServerException, match="input 'attention_mask' has datatype 'FP32'"):
            bad = [tritongrpc.InferInput("input_ids", [1, 4], "INT64").set_data_from_numpy(np.ones((1, 4), np.int64)),
                   tritongrpc.InferInput("attention_mask", [1, 4], "FP32").set_data_from_numpy(
                       np.ones((1, 4), np.float32))]
            g.infer(NAME, bad)
    finally:
        h.close()
        g.close()


def test_deadlines_answer_at_the_deepest_exit_reached(served):
    srv, _, chain = served
    x = batch(8, 9, seed=7)
    want = chain.predict(x)
    exit0 = chain.run_all(x)[0].argmax(axis=1)
    for deadline, labels, exits, cut in ((0.001, exit0, np.zeros(8, int), want.exits > 0),
                                         (60000, want.labels, want.exits, np.zeros(8, bool))):
        status, _, raw = request("POST", f"{srv.url}/v2/models/{NAME}/infer",
                                 v2_body(x, {"deadline_ms": deadline}, logits=False), JSON_TYPE)
        assert status == 200, raw
        out = outputs(raw)
        assert out["label"].tolist() == labels.tolist() and out["exit"].tolist() == exits.tolist()
        assert out["deadline_cut"].tolist() == cut.tolist()


def test_streamed_answers_refine_to_predict(served):
    """``/infer_stream`` with ``anytime``: one event per exit reached, the last is predict's."""
    srv, _, chain = served
    x = batch(5, 8, seed=8)
    want = chain.predict(x)
    status, _, raw = request("POST", f"{srv.url}/v2/models/{NAME}/infer_stream",
                             v2_body(x, {"anytime": True}, logits=False), JSON_TYPE)
    assert status == 200, raw
    events = re.findall(r"event: (\w+)\ndata: (.*)\n", raw.decode())
    assert [e for e, _ in events][-1] == "final" and len(events) == 1 + max(want.exits.tolist())
    final = {o["name"]: np.asarray(o["data"]) for o in json.loads(events[-1][1])["outputs"]}
    check(final, want)


def test_v1_tokenizes_texts_with_the_bundle_tokenizer(served):
    from ranet_edge.runtime.text import Tokenizer

    srv, _, chain = served
    texts = ["the film is a joy", "slow", "a superb cast and a warm funny plot", "rain again and again"]
    x = Tokenizer.from_bundle(chain, max_length=40)(texts)
    for query, kwargs in (("", {}), ("?operating_point=ent", {"thresholds": "ent"}), ("?patience=1", {"patience": 1})):
        status, _, raw = request("POST", f"{srv.url}/v1/classify{query}", json.dumps({"texts": texts}).encode(),
                                 JSON_TYPE)
        assert status == 200, raw
        preds = json.loads(raw)["predictions"]
        want = chain.predict(x, **kwargs)
        assert [p["label"] for p in preds] == want.labels.tolist()
        assert [p["exit"] for p in preds] == want.exits.tolist()
        np.testing.assert_allclose([p["confidence"] for p in preds], want.confidences, atol=2e-6)
    status, _, raw = request("POST", f"{srv.url}/v1/classify", b"\x89PNG", {"Content-Type": "image/png"})
    one_line_error(status, raw, 415, '{"texts": ["a text", ...]}')
    for body in (b'["a"]', b'{"texts": []}', b'{"texts": ["a", 3]}', b'{"texts": ["a"], "extra": 1}'):
        status, _, raw = request("POST", f"{srv.url}/v1/classify", body, JSON_TYPE)
        one_line_error(status, raw, 400, "non-empty list of strings")
    status, _, raw = request("POST", f"{srv.url}/v1/classify", json.dumps({"texts": ["a"] * 17}).encode(), JSON_TYPE)
    one_line_error(status, raw, 413, "17 texts in one request")


# --------------------------------------------------------------------------- refusals
def _tensor(name: str, data, datatype: str = "INT64", shape=None) -> dict:
    values = data.tolist() if isinstance(data, np.ndarray) else data  # lists as given: True stays a boolean
    return {"name": name, "datatype": datatype, "shape": list(np.shape(data)) if shape is None else shape,
            "data": values}


IDS, MASK = [[2, 5, 6, 0]], [[1, 1, 1, 0]]
BAD = [  # (inputs, status, what the one line says)
    ([_tensor("input_ids", IDS)], 400, "lacks input 'attention_mask'"),
    ([_tensor("input_ids", IDS), _tensor("attention_mask", MASK), _tensor("token_type_ids", IDS)], 400,
     "unknown input 'token_type_ids'; send 'input_ids' (INT64 [-1, -1]), 'attention_mask' (INT64 [-1, -1])"),
    ([_tensor("input_ids", IDS), _tensor("input_ids", IDS)], 400, "input 'input_ids' is given twice"),
    ([_tensor("input_ids", IDS), _tensor("attention_mask", MASK, "FP32")], 400,
     "input 'attention_mask' has datatype 'FP32'; this model takes INT64 [-1, -1]"),
    ([_tensor("input_ids", [IDS]), _tensor("attention_mask", MASK)], 400,
     "input 'input_ids' has shape [1, 1, 4], rank 3; this model takes INT64 [-1, -1]"),
    ([_tensor("input_ids", IDS * 2), _tensor("attention_mask", MASK)], 400,
     "input attention_mask has batch 1 but input input_ids has 2"),
    ([_tensor("input_ids", IDS), _tensor("attention_mask", [[1, 1, 1]])], 400,
     "input attention_mask has sequence 3 but input input_ids has 4: inputs must agree on sequence"),
    ([_tensor("input_ids", IDS, shape=[1, 5]), _tensor("attention_mask", MASK)], 400,
     "input 'input_ids' has shape [1, 5], 5 values, but 4 were sent"),
    ([_tensor("input_ids", [[2.5, 1, 1, 1]]), _tensor("attention_mask", MASK)], 400,
     "input 'input_ids': every value must be a whole number (INT64), got a number"),
    ([_tensor("input_ids", [[True, 1, 1, 1]]), _tensor("attention_mask", MASK)], 400,
     "every value must be a whole number (INT64), got a boolean"),
    ([_tensor("input_ids", [[2 ** 63, 1, 1, 1]]), _tensor("attention_mask", MASK)], 400,
     "a value is out of the range of INT64"),
    ([_tensor("input_ids", np.zeros((1, 0), int)), _tensor("attention_mask", np.zeros((1, 0), int))], 400,
     "input input_ids has sequence 0"),
    ([_tensor("input_ids", np.ones((1, 41), int)), _tensor("attention_mask", np.ones((1, 41), int))], 413,
     "input input_ids has sequence 41, more than this server takes (max_length 40)"),
    ([_tensor("input_ids", np.ones((17, 2), int)), _tensor("attention_mask", np.ones((17, 2), int))], 413,
     "17 samples in one request"),
    ([_tensor("input_ids", [[2, 99, 6, 0]]), _tensor("attention_mask", MASK)], 400,
     "the model refused these inputs: indices element out of data bounds, idx=99"),
]


@pytest.mark.parametrize("inputs, status, fragment", BAD, ids=range(len(BAD)))
def test_bad_inputs_get_one_line_errors(served, inputs, status, fragment):
    srv = served[0]
    got, _, raw = request("POST", f"{srv.url}/v2/models/{NAME}/infer", json.dumps({"inputs": inputs}).encode(),
                          JSON_TYPE)
    one_line_error(got, raw, status, fragment)


def test_image_inputs_and_rules_are_refused_by_name(served):
    srv = served[0]
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}).encode()
    status, _, raw = request("POST", f"{srv.url}/v2/models/{NAME}/infer", body, JSON_TYPE)
    one_line_error(status, raw, 400, "unknown input 'image'; send 'input_ids' (INT64 [-1, -1])")
    status, _, raw = request("POST", f"{srv.url}/v2/models/{NAME}/infer",
                             v2_body(batch(1, 4, 0), {"rule": "entropy"}), JSON_TYPE)
    one_line_error(status, raw, 400, "'max_prob' rule, not 'entropy'")


# --------------------------------------------------------------------------- the guides' examples
@pytest.mark.parametrize("guide", ["serving.md", "open-inference-protocol.md"])
def test_the_guides_text_curl_example_runs(served, guide):
    """The ``console`` block after ``<!-- example:serve-text -->``: its curl line runs against
    this server (its URL put in), and the answer printed below it is what the server says."""
    srv, _, chain = served
    text = (DOCS / guide).read_text()
    block = re.search(r"<!-- example:serve-text -->\s*```console\n(.*?)```", text, re.S)
    assert block, f"{guide} has no text-bundle example"
    lines = block.group(1).splitlines()
    cmd = " ".join(line.removeprefix("$ ").rstrip("\\").strip() for line in lines[:-1])
    shown = json.loads(lines[-1])
    out = subprocess.run(["bash", "-c", cmd.replace("http://127.0.0.1:8000", srv.url)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    got = json.loads(out)
    doc = json.loads(re.search(r"-d '(.*?)'", cmd).group(1))
    x = {t["name"]: np.asarray(t["data"], np.int64).reshape(t["shape"]) for t in doc["inputs"]}
    params = doc.get("parameters", {})
    want = chain.predict(x, params.get("operating_point"), rule=params.get("rule"), patience=params.get("patience"))
    answer = {o["name"]: o["data"] for o in got["outputs"]}
    assert [o["name"] for o in got["outputs"]] == [o["name"] for o in shown["outputs"]]
    assert answer["label"] == want.labels.tolist() and answer["exit"] == want.exits.tolist()
    np.testing.assert_allclose(answer["confidence"], want.confidences, atol=2e-6)
