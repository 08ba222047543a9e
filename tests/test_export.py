"""Per-exit ONNX export (issue 3): bundles chained with plain onnxruntime, never our runtime.

Every bundle here is checked the way any ONNX Runtime user would use it: read
manifest.json, run its graphs in order, feed each the tensors its ``inputs`` name, and
collect the exits' ``logits`` by name.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")  # the export extra: skipped in the lean install

from click.testing import CliRunner
from msdnet_toy import make_toy, save_random_ranet

from ranet_edge.checkpoint import load_checkpoint
from ranet_edge.cli import get_cli
from ranet_edge.errors import CheckpointError, ExportError, RanetEdgeError
from ranet_edge.export.exporter import ExportSpec, export_model
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.presets import get_preset
from ranet_edge.runtime import ExitChain

DATA = Path(__file__).parent / "data"
C1_PTH, C1_NPZ = DATA / "cifar10-c1.pth", DATA / "cifar10-c1.npz"
IMS_PTH, IMS_NPZ = DATA / "imagenet-small.pth", DATA / "imagenet-small.npz"
W8_CKPT = DATA / "cifar10-w8-official.pth.tar"


def quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- helpers
def input_name(manifest: dict) -> str:
    """The image input's name: from the preprocessing block; a bundle without one (see
    test_generic_export_records_its_input) falls back to the first graph's only input."""
    if "preprocessing" in manifest:
        return manifest["preprocessing"]["input"]
    (name,) = manifest["graphs"][0]["inputs"]
    return name


def plain_chain_env(bundle: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Chain the bundle's graphs with bare onnxruntime, matching tensors by name; returns
    every tensor that crossed a graph boundary or left as logits."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    env = {input_name(manifest): x}
    for g in manifest["graphs"]:
        sess = ort.InferenceSession(str(bundle / g["path"]), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {name: env[name] for name in g["inputs"]})
        env.update(zip([o.name for o in sess.get_outputs()], outs))
    return env


def plain_chain(bundle: Path, x: np.ndarray) -> list[np.ndarray]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    env = plain_chain_env(bundle, x)
    return [env[e["logits"]] for e in manifest["exits"]]


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in model.eval()(torch.from_numpy(x))]


def assert_logits_close(got: list[np.ndarray], want: list[np.ndarray], rel: float = 1e-4) -> None:
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (k, g.shape, w.shape)
        scale = float(np.abs(w).max())
        assert scale > 0, f"exit {k}: reference logits are all zero"
        diff = float(np.abs(g - w).max())
        assert diff <= rel * scale, f"exit {k}: max|diff| {diff:.3e} > {rel:g} * {scale:.3e}"


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def bundle_files(bundle: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


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


def bundle_by_name(request, name: str) -> Path:
    value = request.getfixturevalue(name)
    return value[1] if name == "toy" else value


# --------------------------------------------------------------------------- golden checkpoints
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


@pytest.mark.parametrize("fixture", ["c1_bundle", "ims_bundle", "toy"])
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


def test_repeated_export_is_byte_identical(c1_bundle, tmp_path):
    export_checkpoint(C1_PTH, tmp_path / "again", ExportSpec(), log=quiet)
    first, second = bundle_files(c1_bundle), bundle_files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert "manifest.json" in first and len(first) == 1 + len(read_manifest(c1_bundle)["graphs"])
    for name in first:
        assert first[name] == second[name], f"{name} differs between two exports"


def test_repeated_export_with_monolithic_is_byte_identical(tiny_ckpt, tmp_path):
    spec = ExportSpec(monolithic=True)
    export_checkpoint(tiny_ckpt, tmp_path / "a", spec, log=quiet)
    export_checkpoint(tiny_ckpt, tmp_path / "b", spec, log=quiet)
    first, second = bundle_files(tmp_path / "a"), bundle_files(tmp_path / "b")
    assert "monolithic.onnx" in first
    assert first == second


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


# --------------------------------------------------------------------------- bad input
def _bad_inputs(tmp_path: Path, tiny: Path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint\n" * 10)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious")
    return {
        "missing": (tmp_path / "nope.pth", None, tmp_path / "o1", CheckpointError),
        "not-a-checkpoint": (junk, None, tmp_path / "o2", CheckpointError),
        "flags-mismatch": (C1_PTH, "cifar10-w8", tmp_path / "o3", CheckpointError),
        "existing-output": (tiny, None, occupied, ExportError),
    }


BAD = ["missing", "not-a-checkpoint", "flags-mismatch", "existing-output"]


@pytest.mark.parametrize("case", BAD)
def test_export_bad_input_api(case, tmp_path, tiny_ckpt):
    ckpt, preset, out, error = _bad_inputs(tmp_path, tiny_ckpt)[case]
    config = get_preset(preset) if preset else None
    with pytest.raises(error) as info:
        export_checkpoint(ckpt, out, ExportSpec(), config=config, log=quiet)
    assert isinstance(info.value, RanetEdgeError)
    msg = str(info.value)
    assert "\n" not in msg
    if case == "existing-output":
        assert "--force" in msg
        assert (out / "keep.txt").read_text() == "precious"
    else:
        assert not out.exists()
    if case == "missing":
        assert "does not exist" in msg
    if case == "flags-mismatch":
        assert "does not match" in msg


@pytest.mark.parametrize("case", BAD)
def test_export_bad_input_cli(case, tmp_path, tiny_ckpt):
    ckpt, preset, out, _ = _bad_inputs(tmp_path, tiny_ckpt)[case]
    args = ["export", str(ckpt), "-o", str(out)] + (["--preset", preset] if preset else [])
    result = CliRunner().invoke(get_cli(), args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.output


def test_force_replaces_existing_output(tmp_path, tiny_ckpt):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_checkpoint(tiny_ckpt, out, ExportSpec(), force=True, log=quiet)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary or trash left


def test_export_into_a_new_nested_directory(tmp_path, tiny_ckpt, monkeypatch):
    """The parent of the output directory need not exist. The bundle is staged in a temporary
    directory and renamed into place, so the staging directory must be on the output's
    filesystem even when the system temporary directory (often a tmpfs) is not."""
    import os
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        monkeypatch.setattr(tempfile, "tempdir", str(shm))
    out = tmp_path / "new" / "deeper" / "bundle"
    export_checkpoint(tiny_ckpt, out, ExportSpec(), log=quiet)
    assert (out / "manifest.json").is_file()
    ExitChain.load(out, warmup=False)


def test_bad_granularity(tmp_path):
    model = make_toy(seed=6)
    with pytest.raises(ExportError, match="sub-networks"):  # the toy names no sub-networks
        export_model(model, tmp_path / "a", (3, 32, 32), ExportSpec(granularity="subnetwork"), log=quiet)
    with pytest.raises(ExportError, match="granularity"):
        export_model(model, tmp_path / "b", (3, 32, 32), ExportSpec(granularity="layer"), log=quiet)
    assert list(tmp_path.iterdir()) == []


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


def test_cli_export_succeeds(tmp_path, tiny_ckpt):
    result = CliRunner().invoke(get_cli(), ["export", str(tiny_ckpt), "-o", str(tmp_path / "b"), "--monolithic"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "tolerance" in result.output  # the table is printed on success
    manifest = read_manifest(tmp_path / "b")
    assert manifest["monolithic"]["path"] == "monolithic.onnx"
    assert manifest["validation"]["tolerance"] == 1e-4 and manifest["validation"]["table"]
    assert {"onnx", "onnxruntime", "torch", "ranet_edge"} <= set(manifest["tools"])


def test_validation_failure_leaves_nothing(tmp_path):
    model = make_toy(seed=4)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as info:
        export_model(model, out, (3, 32, 32), ExportSpec(tolerance=0.0), log=quiet)
    msg = str(info.value)
    assert "validation" in msg and "FAIL" in msg
    table = msg.splitlines()[1:]
    assert "tolerance 0" in table[0]
    rows = [line.split() for line in table[1:]]
    assert len(rows) == 4 * 2  # every exit at both validated batch sizes
    assert {(int(r[0]), int(r[1])) for r in rows} == {(k, b) for k in range(4) for b in (1, 3)}
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary directory either


def test_generic_export_refuses_a_single_output_model(tmp_path):
    import torch

    from ranet_edge.errors import ExportError
    from ranet_edge.export.exporter import ExportSpec, export_model

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ExportError, match="list of exit logits"):
        export_model(model, tmp_path / "b", (3, 8, 8), ExportSpec(), log=lambda m: None)
    assert not (tmp_path / "b").exists()
