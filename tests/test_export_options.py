"""Export options, checked with plain onnxruntime and against PyTorch: a static batch size,
one graph per sub-network, and a second architecture (the MSDNet toy, whose cache skips
stages)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")  # the export extra: skipped in the lean install

from click.testing import CliRunner
from export_support import (
    W8_CKPT,
    assert_logits_close,
    plain_chain,
    quiet,
    read_manifest,
    softmax,
    torch_logits,
)
from msdnet_toy import make_toy, save_random_ranet

from ranet_edge.checkpoint import load_checkpoint
from ranet_edge.cli import get_cli
from ranet_edge.export.exporter import ExportSpec, export_model
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.presets import get_preset
from ranet_edge.runtime import ExitChain


# --------------------------------------------------------------------------- bundles (once per module)
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = make_toy(seed=0)
    out = tmp_path_factory.mktemp("toy") / "bundle"
    export_model(model, out, (3, 32, 32), ExportSpec(), log=quiet)
    return model, out


@pytest.fixture(scope="module")
def w8_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("w8")
    export_checkpoint(W8_CKPT, root / "exit", ExportSpec(), log=quiet)
    export_checkpoint(W8_CKPT, root / "subnet", ExportSpec(granularity="subnetwork"), log=quiet)
    return root / "exit", root / "subnet"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_random_ranet("tiny", path, seed=1, logit_scale=30.0)
    return path


# --------------------------------------------------------------------------- graph options
def test_static_batch_export(tiny_ckpt, tmp_path):
    result = export_checkpoint(tiny_ckpt, tmp_path / "static", ExportSpec(batch_size=2), log=quiet)
    manifest = result.manifest
    assert manifest["batch_size"] == 2
    assert manifest["preprocessing"]["shape"][0] == 2
    assert {row["batch"] for row in result.table} == {2}
    for g in manifest["graphs"]:
        m = onnx.load(str(tmp_path / "static" / g["path"]))
        for v in list(m.graph.input) + list(m.graph.output):
            dim0 = v.type.tensor_type.shape.dim[0]
            assert dim0.HasField("dim_value") and dim0.dim_value == 2, (g["path"], v.name)
        sess = ort.InferenceSession(str(tmp_path / "static" / g["path"]), providers=["CPUExecutionProvider"])
        assert all(i.shape[0] == 2 for i in sess.get_inputs())

    model = load_checkpoint(tiny_ckpt).model
    x = np.random.default_rng(5).standard_normal((5, 3, 32, 32)).astype(np.float32)
    ref = torch_logits(model, x)
    assert_logits_close(plain_chain(tmp_path / "static", x[:2]), [r[:2] for r in ref])

    chain = ExitChain.load(tmp_path / "static")
    assert_logits_close(chain.run_all(x), ref)  # 5 samples: padded and chunked by 2
    conf = [softmax(r).max(1) for r in ref]
    thresholds = [float(np.median(c)) for c in conf[:-1]]
    pred = chain.predict(x, thresholds)
    assert pred.labels.shape == pred.exits.shape == pred.confidences.shape == (5,)
    checked = 0
    for i in range(5):
        if any(abs(conf[k][i] - t) < 1e-5 for k, t in enumerate(thresholds)):
            continue  # too close to call across two float paths
        k = next((k for k, t in enumerate(thresholds) if conf[k][i] >= t), len(ref) - 1)
        assert pred.exits[i] == k and pred.labels[i] == ref[k][i].argmax()
        checked += 1
    assert checked >= 3


@pytest.mark.slow
def test_subnetwork_granularity(w8_bundles):
    exit_dir, subnet_dir = w8_bundles
    fine, coarse = read_manifest(exit_dir), read_manifest(subnet_dir)
    assert coarse["granularity"] == "subnetwork" and fine["granularity"] == "exit"
    assert len(fine["graphs"]) == len(fine["exits"]) == 6
    assert len(coarse["graphs"]) == 3 < len(coarse["exits"]) == 6
    plan = [s.subnet for s in get_preset("cifar10-w8").plan() if s.exit is not None]
    for a in coarse["exits"]:
        for b in coarse["exits"]:
            assert (a["graph"] == b["graph"]) == (plan[a["index"]] == plan[b["index"]])
    for g in coarse["graphs"]:
        assert len(g["exits"]) == 2 and len(g["logits"]) == 2
        assert all(coarse["exits"][k]["graph"] == g["path"] for k in g["exits"])
    for e_c, e_f in zip(coarse["exits"], fine["exits"]):
        assert e_c["flops"] == e_f["flops"] == e_f["run_flops"]
        assert e_c["run_flops"] >= e_c["flops"]
    # the first exit of each sub-network pays for its sibling too
    assert any(e["run_flops"] > e["flops"] for e in coarse["exits"])
    assert coarse["exits"][-1]["run_flops"] == coarse["exits"][-1]["flops"]

    x = np.random.default_rng(11).standard_normal((3, 3, 32, 32)).astype(np.float32)
    assert_logits_close(plain_chain(subnet_dir, x), plain_chain(exit_dir, x))

    a, b = ExitChain.load(exit_dir), ExitChain.load(subnet_dir)
    x = np.random.default_rng(12).standard_normal((48, 3, 32, 32)).astype(np.float32)
    rng = np.random.default_rng(13)
    for thresholds in [[0.9] * 5, 0.5, [0.99, 0.95, 0.9, 0.8, 0.7, 0.0], None] + \
            [rng.uniform(0.6, 1.0, 5).tolist() for _ in range(5)]:
        pa, pb = a.predict(x, thresholds), b.predict(x, thresholds)
        np.testing.assert_array_equal(pa.exits, pb.exits)
        np.testing.assert_array_equal(pa.labels, pb.labels)
        np.testing.assert_allclose(pa.confidences, pb.confidences, rtol=1e-4, atol=1e-6)
        # graph by graph, the coarse bundle decides each sub-network's two exits together
        stages = list(b.predict_stages(x, thresholds))
        assert len(stages) <= 3
        for g, s in enumerate(stages):
            assert set(s.exits.tolist()) <= {2 * g, 2 * g + 1}
            np.testing.assert_array_equal(s.labels, pb.labels[s.rows])
        assert sorted(np.concatenate([s.rows for s in stages]).tolist()) == list(range(48))


# --------------------------------------------------------------------------- a second architecture
def test_msdnet_toy_plain_ort_chain(toy):
    model, bundle = toy
    manifest = read_manifest(bundle)
    assert len(manifest["graphs"]) == len(manifest["exits"]) == 4
    rng = np.random.default_rng(21)
    for batch in (1, 2):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        assert_logits_close(plain_chain(bundle, x), torch_logits(model, x))


def test_msdnet_toy_has_stage_skipping_cache(toy):
    manifest = read_manifest(toy[1])
    graphs = manifest["graphs"]
    skips = []
    for i, g in enumerate(graphs):
        for name in g["cache_outputs"]:
            readers = [j for j, h in enumerate(graphs) if name in h["inputs"]]
            if max(readers) >= i + 2:
                skips.append((name, i, readers))
    assert skips, "no cached tensor crosses more than one stage"
    # one is handed straight from the first graph to the last, past the graphs between
    assert any(i == 0 and readers == [len(graphs) - 1] for _, i, readers in skips), skips


def test_generic_export_records_its_input(toy):
    """Issue 3: every bundle's manifest names its input (preprocessing block), so users and
    the runtime can feed the first graph; ExitChain must be able to load any exported bundle."""
    manifest = read_manifest(toy[1])
    assert manifest.get("preprocessing", {}).get("input") == manifest["graphs"][0]["inputs"][0]
    chain = ExitChain.load(toy[1])
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_logits_close(chain.run_all(x), torch_logits(toy[0], x))


@pytest.mark.slow
def test_info_shows_subnetwork_cost(w8_bundles):
    exit_dir, subnet_dir = w8_bundles
    cli = get_cli()
    fine = json.loads(CliRunner().invoke(cli, ["info", str(exit_dir), "--json"]).stdout)
    coarse_result = CliRunner().invoke(cli, ["info", str(subnet_dir)])
    assert coarse_result.exit_code == 0, coarse_result.output
    assert "granularity subnetwork" in coarse_result.output and "pays" in coarse_result.output
    coarse = json.loads(CliRunner().invoke(cli, ["info", str(subnet_dir), "--json"]).stdout)
    assert [r["flops"] for r in coarse["exits"]] == [r["flops"] for r in fine["exits"]]
    assert all(c["run_flops"] >= c["flops"] for c in coarse["exits"])
    assert coarse["exits"][0]["graph"] == coarse["exits"][1]["graph"]
