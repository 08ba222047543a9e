"""Per-exit ONNX export (issue 3): bundles chained with plain onnxruntime, never our runtime.

Every bundle here is checked the way any ONNX Runtime user would use it: read
manifest.json, run its graphs in order, feed each the tensors its ``inputs`` name, and
collect the exits' ``logits`` by name. The golden checkpoints, costs and tensor names, and
byte-identical exports here; graph options and a second architecture in
test_export_options.py; bad input in test_export_errors.py.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")  # the export extra: skipped in the lean install

from export_support import (
    C1_NPZ,
    C1_PTH,
    IMS_NPZ,
    IMS_PTH,
    assert_logits_close,
    bundle_files,
    input_name,
    plain_chain,
    plain_chain_env,
    quiet,
    read_manifest,
    torch_logits,
)
from msdnet_toy import make_toy, save_random_ranet

from ranet_edge.checkpoint import load_checkpoint
from ranet_edge.export.exporter import ExportSpec, export_model
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.presets import get_preset


# --------------------------------------------------------------------------- bundles (once per module)
@pytest.fixture(scope="module")
def c1_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c1") / "bundle"
    export_checkpoint(C1_PTH, out, ExportSpec(), log=quiet)
    return out


@pytest.fixture(scope="module")
def ims_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ims") / "bundle"
    export_checkpoint(IMS_PTH, out, ExportSpec(), log=quiet)
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = make_toy(seed=0)
    out = tmp_path_factory.mktemp("toy") / "bundle"
    export_model(model, out, (3, 32, 32), ExportSpec(), log=quiet)
    return model, out


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_random_ranet("tiny", path, seed=1, logit_scale=30.0)
    return path


def bundle_by_name(request, name: str) -> Path:
    value = request.getfixturevalue(name)
    return value[1] if name == "toy" else value


# --------------------------------------------------------------------------- golden checkpoints
@pytest.mark.slow
@pytest.mark.parametrize("ckpt,npz,fixture,preset", [
    (C1_PTH, C1_NPZ, "c1_bundle", "cifar10-c1"),
    (IMS_PTH, IMS_NPZ, "ims_bundle", "imagenet-small"),
], ids=["cifar10-c1", "imagenet-small"])
def test_golden_checkpoint_plain_ort_chain(request, ckpt, npz, fixture, preset):
    bundle = request.getfixturevalue(fixture)
    manifest = read_manifest(bundle)
    assert manifest["format"] == "ranet-edge-bundle"
    assert isinstance(manifest["schema_version"], int)
    assert manifest["model"]["config"] == get_preset(preset).to_dict()  # inferred from the weights
    assert manifest["model"]["config_source"] == "inferred"
    with np.load(npz) as z:
        x = z["input"]
        golden = [z[f"logits_{k}"] for k in range(len(manifest["exits"]))]
        assert len([k for k in z.files if k.startswith("logits_")]) == len(manifest["exits"])
    assert manifest["num_classes"] == golden[0].shape[1]
    pre = manifest["preprocessing"]
    assert pre["shape"][1:] == list(x.shape[1:]) and pre["shape"][0] is None

    assert {"input", "shape", "dtype", "layout", "color", "mean", "std", "resize"} <= set(pre)
    assert (pre["dtype"], pre["layout"], pre["color"]) == ("float32", "NCHW", "RGB")
    # exported at opset 17, raised to 18 for the Resize rewrite (export/rewrite.py): the manifest
    # records what the graphs are written in
    opsets = {op.version for g in manifest["graphs"] for op in onnx.load(str(bundle / g["path"])).opset_import
              if op.domain in ("", "ai.onnx")}
    assert opsets == {manifest["opset"]} and manifest["opset"] in (17, 18)
    assert {"onnx", "onnxruntime", "torch"} <= set(manifest["tools"])
    assert manifest["validation"]["tolerance"] == 1e-4
    assert all(row["max_rel_diff"] <= 1e-4 for row in manifest["validation"]["table"])
    for k, e in enumerate(manifest["exits"]):
        assert {"graph", "sha256", "inputs", "logits", "cache_outputs", "flops", "stage_flops", "params",
                "cache_bytes_per_sample", "run_flops"} <= set(e)
        assert e["index"] == k and not Path(e["graph"]).is_absolute()
        assert hashlib.sha256((bundle / e["graph"]).read_bytes()).hexdigest() == e["sha256"]
    assert manifest["exits"][-1]["cache_outputs"] == [] and manifest["exits"][-1]["cache_bytes_per_sample"] == 0

    got = plain_chain(bundle, x)
    assert_logits_close(got, golden)
    model = load_checkpoint(ckpt).model
    assert_logits_close(got, torch_logits(model, x))
    # batch 1 too (dynamic batch axis)
    assert_logits_close(plain_chain(bundle, x[1:2]), [g[1:2] for g in golden])


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cifar10-4scale", "imagenet-small"])
def test_random_model_export_plain_ort_chain(tmp_path, preset):
    model = save_random_ranet(preset, tmp_path / "m.pt", seed=3)
    result = export_checkpoint(tmp_path / "m.pt", tmp_path / "bundle", ExportSpec(), log=quiet)
    assert len(result.manifest["exits"]) == model.num_exits
    assert {row["batch"] for row in result.table} == {1, 3}
    size = model.config.image_size
    rng = np.random.default_rng(7)
    for batch in (1, 2):
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        assert_logits_close(plain_chain(tmp_path / "bundle", x), torch_logits(model, x))


# --------------------------------------------------------------------------- costs and names
@pytest.mark.slow
@pytest.mark.parametrize("ckpt,npz,fixture", [(C1_PTH, C1_NPZ, "c1_bundle"), (IMS_PTH, IMS_NPZ, "ims_bundle")],
                         ids=["cifar10-c1", "imagenet-small"])
def test_stage_flops_add_up(request, ckpt, npz, fixture):
    manifest = read_manifest(request.getfixturevalue(fixture))
    exits = manifest["exits"]
    stage = [e["stage_flops"] for e in exits]
    cumulative = [e["flops"] for e in exits]
    assert all(s > 0 for s in stage)
    assert np.cumsum(stage).tolist() == cumulative
    costs = load_checkpoint(ckpt).model.exit_costs()
    assert cumulative == [c.flops for c in costs]
    assert [e["params"] for e in exits] == [c.params for c in costs]
    with np.load(npz) as z:
        assert cumulative == z["flops"].tolist()
    # per-exit granularity: each graph's work is its exit's stage work, nothing is paid twice
    assert [g["flops"] for g in manifest["graphs"]] == stage
    assert [e["run_flops"] for e in exits] == cumulative


def test_stage_flops_add_up_on_the_toy(toy):
    manifest = read_manifest(toy[1])
    exits = manifest["exits"]
    assert np.cumsum([e["stage_flops"] for e in exits]).tolist() == [e["flops"] for e in exits]
    assert sum(g["flops"] for g in manifest["graphs"]) == exits[-1]["flops"]
    assert all(np.diff([e["params"] for e in exits]) > 0)


@pytest.mark.parametrize("fixture", [pytest.param("c1_bundle", marks=pytest.mark.slow),  # the golden exports
                                     pytest.param("ims_bundle", marks=pytest.mark.slow), "toy"])
def test_cache_tensor_names_are_unique_and_consumed(request, fixture):
    bundle = bundle_by_name(request, fixture)
    manifest = read_manifest(bundle)
    graphs = manifest["graphs"]
    image = input_name(manifest)
    producer: dict[str, int] = {}
    for i, g in enumerate(graphs):
        for name in g["cache_outputs"]:
            assert name not in producer, f"{name} produced by graphs {producer[name]} and {i}"
            producer[name] = i
    consumers: dict[str, list[int]] = {}
    for j, g in enumerate(graphs):
        assert len(set(g["inputs"])) == len(g["inputs"])
        for name in g["inputs"]:
            if name == image:
                continue
            assert name in producer, f"graph {j} reads {name}, which no graph emits"
            assert producer[name] < j, f"graph {j} reads {name} from graph {producer[name]}"
            consumers.setdefault(name, []).append(j)
    # nothing is emitted that no later graph reads
    assert set(consumers) == set(producer)

    # the ONNX files agree with the manifest, and each cached name is computed by one graph only
    computed_in: dict[str, list[int]] = {}
    for i, g in enumerate(graphs):
        m = onnx.load(str(bundle / g["path"]))
        assert [v.name for v in m.graph.input] == g["inputs"]
        assert sorted(v.name for v in m.graph.output) == sorted(g["logits"] + g["cache_outputs"])
        for node in m.graph.node:
            for out in node.output:
                if out in producer:
                    computed_in.setdefault(out, []).append(i)
    assert {name: [i] for name, i in producer.items()} == {n: sorted(set(v)) for n, v in computed_in.items()}
    # cache_bytes_per_sample is what the graph really hands on, per sample
    size = tuple(manifest["preprocessing"]["shape"][1:]) if "preprocessing" in manifest else (3, 32, 32)
    env = plain_chain_env(bundle, np.zeros((2, *size), np.float32))
    for g, e in zip(graphs, manifest["exits"]):
        assert e["cache_bytes_per_sample"] == sum(env[n].nbytes // 2 for n in g["cache_outputs"])
        for n in g["cache_outputs"]:
            assert env[n].shape[0] == 2  # every cached tensor is per sample (batch first)
    # the per-exit view repeats the graph's own names
    for e in manifest["exits"]:
        g = next(g for g in graphs if g["path"] == e["graph"])
        assert e["inputs"] == g["inputs"] and e["cache_outputs"] == g["cache_outputs"]
        assert e["logits"] in g["logits"]


@pytest.mark.slow
def test_repeated_export_is_byte_identical(c1_bundle, tmp_path):
    export_checkpoint(C1_PTH, tmp_path / "again", ExportSpec(), log=quiet)
    first, second = bundle_files(c1_bundle), bundle_files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert "manifest.json" in first and len(first) == 1 + len(read_manifest(c1_bundle)["graphs"])
    for name in first:
        assert first[name] == second[name], f"{name} differs between two exports"


@pytest.mark.slow
def test_repeated_export_with_monolithic_is_byte_identical(tiny_ckpt, tmp_path):
    spec = ExportSpec(monolithic=True)
    export_checkpoint(tiny_ckpt, tmp_path / "a", spec, log=quiet)
    export_checkpoint(tiny_ckpt, tmp_path / "b", spec, log=quiet)
    first, second = bundle_files(tmp_path / "a"), bundle_files(tmp_path / "b")
    assert "monolithic.onnx" in first
    assert first == second
