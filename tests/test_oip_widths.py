"""/v2 model metadata of a bundle whose exits differ in class count, the wide exit first (10
classes at exit 0, 4 at exit 1: the manifest's num_classes, the last exit's, is not the
widest): the ``logits`` output's shape says the width the answers really have, REST lists
each exit's count, gRPC (whose message has no parameters) gets the shape, and a real answer's
``logits`` has that shape, zero beyond the count of the exit each image took."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn")
from oip_support import infer  # noqa: E402
from torch import nn  # noqa: E402

from ranet_edge.runtime import ExitChain, OperatingPoint, save_point  # noqa: E402
from ranet_edge.serve import ServeSettings, oip  # noqa: E402
from ranet_edge.serve.engine import ServedModel  # noqa: E402

COUNTS = (10, 4)


class WideThenNarrow(nn.Module):
    def __init__(self):
        super().__init__()
        self.b0 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.h0 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, COUNTS[0]))
        self.h1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, COUNTS[1]))

    def forward(self, x):
        h = self.b0(x)
        return [self.h0(h) * 20, self.h1(self.b1(h)) * 20]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(ServedModel, images x, run_all logits): an operating point 'half' sends about half the
    images out at exit 0."""
    from ranet_edge.export.exporter import ExportSpec, export_model

    torch.manual_seed(0)
    bundle = tmp_path_factory.mktemp("oip-widths") / "bundle"
    export_model(WideThenNarrow().eval(), bundle, (3, 32, 32), ExportSpec(validate_batches=(2,)), log=lambda _m: None)
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    logits = ExitChain.load(bundle, threads=1, warmup=False).run_all(x)
    conf = np.exp(logits[0] - logits[0].max(1, keepdims=True))
    conf = 1 / conf.sum(1)
    save_point(bundle, "half", OperatingPoint(thresholds=[float(np.median(conf)), -np.inf], method="test",
                                              val_accuracy=0.0, expected_flops=0.0, expected_ms=None), default=True)
    return ServedModel(ServeSettings(bundle=bundle, max_batch=16)), x, logits


def test_metadata_gives_the_widest_exit_and_each_exits_count(served):
    model = served[0]
    assert model.chain.exit_classes == COUNTS and model.num_classes == 4  # the last exit's, not the widest
    meta = oip.model_metadata(model, "m")
    out = {o["name"]: o for o in meta["outputs"]}
    assert out["logits"] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10],
                             "parameters": {"exit_classes": "10,4"}}
    assert [o["shape"] for o in meta["outputs"] if o["name"] != "logits"] == [[-1]] * 4
    json.dumps(meta)


def test_an_answer_has_the_shape_the_metadata_says(served):
    model, x, logits = served
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}],
                       "outputs": [{"name": "exit"}, {"name": "label"}, {"name": "logits"}]}).encode()
    req = oip.parse_rest_infer(body, None, model, 16)

    raw, _ = oip.rest_infer_response(req, infer(model, req), "m")
    got = {o["name"]: o for o in json.loads(raw)["outputs"]}
    width = oip.model_metadata(model, "m")["outputs"][3]["shape"][1]
    assert got["logits"]["shape"] == [len(x), width]
    rows = np.asarray(got["logits"]["data"], np.float32).reshape(len(x), width)
    exits, labels = np.asarray(got["exit"]["data"]), np.asarray(got["label"]["data"])
    assert set(exits.tolist()) == {0, 1}, "images leave at both exits"
    for i, k in enumerate(exits):
        np.testing.assert_allclose(rows[i, :COUNTS[k]], logits[k][i], rtol=1e-5, atol=1e-5)
        assert not rows[i, COUNTS[k]:].any() and labels[i] < COUNTS[k]


def test_grpc_metadata_gives_the_shape_without_parameters(served):
    tritongrpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient and grpcio (the test extra)")
    from grpc_support import NAME, WAIT_S, grpc_server

    with grpc_server(served[0]) as port:
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            meta = client.get_model_metadata(NAME, as_json=True, client_timeout=WAIT_S)
        finally:
            client.close()
    logits = [o for o in meta["outputs"] if o["name"] == "logits"][0]
    assert [int(d) for d in logits["shape"]] == [-1, 10] and "parameters" not in logits


def test_a_real_server_says_the_same_over_http(served, tmp_path):
    from serve_local_support import local_server, request

    bundle = tmp_path / "bundle"
    shutil.copytree(served[0].bundle, bundle)
    with local_server(tmp_path, str(bundle)) as srv:
        status, _, raw = request("GET", f"{srv.url}/v2/models/ranet-edge")
    assert status == 200
    assert json.loads(raw)["outputs"][3] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10],
                                             "parameters": {"exit_classes": "10,4"}}
