"""The typed, frozen view of the manifest: what load_manifest gives the runtime, checked on the
shipped bundle, and one line naming the field for every bad or missing one. Torch-free."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ranet_edge.assets import DEFAULT_BUNDLE
from ranet_edge.errors import BundleError
from ranet_edge.runtime import ExitChain, load_manifest
from ranet_edge.runtime.manifest import ExitEntry, GraphEntry, MonolithicEntry, Preprocessing, TensorInfo
from ranet_edge.runtime.preprocess import PreprocessSpec

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no shipped bundle")


@pytest.fixture
def bundle(tmp_path) -> Path:
    return Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))


def raw() -> dict:
    return json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())


def edit_manifest(bundle: Path, change) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


def test_the_shipped_bundle_reads_as_typed_entries():
    m, d = load_manifest(DEFAULT_BUNDLE), raw()
    pre = d["preprocessing"]
    assert m.preprocessing == Preprocessing(
        input=pre["input"], shape=tuple(pre["shape"]), size=pre["size"], mean=tuple(pre["mean"]),
        std=tuple(pre["std"]), resize=pre["resize"], layout=pre["layout"], color=pre["color"],
        dtype=pre["dtype"], scale=pre["scale"])
    assert m.preprocessing.sample_shape == (3, 32, 32) and m.input_name == "image"
    assert m.preprocessing.spec == PreprocessSpec.from_dict(pre)  # what the chain preprocesses with
    assert m.num_exits == len(d["exits"]) == 6 and m.num_classes == d["num_classes"] == 10
    assert m.class_names == tuple(d["class_names"])
    for k, (e, want) in enumerate(zip(m.exits, d["exits"], strict=True)):
        assert isinstance(e, ExitEntry)
        assert e == ExitEntry(k, want["graph"], want["logits"], want["flops"], want["stage_flops"],
                              want["run_flops"], want["params"], want["cache_bytes_per_sample"],
                              num_classes=want.get("num_classes", d["num_classes"]))  # older bundles: num_classes
        assert m.graph_of(k).path == want["graph"]
    for g, want in zip(m.graphs, d["graphs"], strict=True):
        assert isinstance(g, GraphEntry)
        assert (g.path, g.sha256, list(g.inputs), list(g.logits), list(g.cache_outputs), list(g.exits), g.flops,
                g.bytes) == (want["path"], want["sha256"], want["inputs"], want["logits"], want["cache_outputs"],
                             want["exits"], want["flops"], want["bytes"])
        for name, t in want["tensors"].items():
            assert g.tensor(name) == TensorInfo(tuple(t["shape"]), t["dtype"])
        assert g.tensor("no-such-tensor") is None
    mono = d["monolithic"]
    assert m.monolithic == MonolithicEntry(mono["path"], mono["sha256"], tuple(mono["inputs"]),
                                           tuple(mono["logits"]), mono["bytes"])
    assert (m.granularity, m.precision, m.graph_format, m.batch_size, m.opset) == (
        d["granularity"], d["precision"], d["graph_format"], d["batch_size"], d["opset"])
    assert m.model == d["model"] and m.mobile_report is None
    assert m.exit_costs("run_flops") == [e["run_flops"] for e in d["exits"]]
    assert m.exit_field("flops") == m.exit_costs("flops")  # the former name
    with pytest.raises(ValueError, match="unknown exit cost 'speed'"):
        m.exit_costs("speed")
    with pytest.raises(ValueError, match=r"exit 6 is not in this bundle \(exits 0..5\)"):
        m.graph_of(6)  # a StopIteration escaped before


def test_the_view_is_frozen():
    m = load_manifest(DEFAULT_BUNDLE, verify=False)
    for obj, field in ((m, "num_classes"), (m.preprocessing, "size"), (m.exits[0], "flops"),
                       (m.graphs[0], "inputs"), (m.monolithic, "path")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)
    assert isinstance(m.graphs[0].inputs, tuple) and isinstance(m.preprocessing.mean, tuple)


def test_the_chain_reads_the_view():
    chain = ExitChain.load(DEFAULT_BUNDLE, warmup=False)
    m = chain.manifest
    assert chain.input_name == m.preprocessing.input and chain.input_shape == m.preprocessing.sample_shape
    assert chain.preprocess_spec == m.preprocessing.spec and chain.class_names == list(m.class_names)
    assert [g.logit_names for g in chain.graphs] == [list(g.logits) for g in m.graphs]


def _set(path: str, value):
    """A change that sets ``a.b[2].c``-style ``path`` of the manifest to ``value``."""
    def change(d):
        *parents, last = path.replace("[", ".").replace("]", "").split(".")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        d[int(last) if last.isdigit() else last] = value
    return change


def _drop(path: str):
    def change(d):
        *parents, last = path.replace("[", ".").replace("]", "").split(".")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        del d[last]
    return change


TENSOR = "/scale_flows.0.0/layers.1/Concat_output_0"


@pytest.mark.parametrize("change, fragment", [
    (_drop("exits[3].run_flops"), "missing field exits[3].run_flops"),
    (_drop("exits[0].flops"), "missing field exits[0].flops"),
    (_set("exits[1].flops", "many"), "exits[1].flops is 'many', expected a whole number >= 0"),
    (_set("exits[2].params", -1), "exits[2].params is -1"),
    (_set("exits[0]", 5), "exits[0] is not an object"),
    (_drop("preprocessing.size"), "missing field preprocessing.size"),
    (_drop("preprocessing.input"), "missing field preprocessing.input"),
    (_set("preprocessing.mean", [0.5, 0.5]), "preprocessing.mean is [0.5, 0.5], expected three numbers"),
    (_set("preprocessing.std", [0.2, 0, 0.2]), "preprocessing.std is [0.2, 0, 0.2], expected three numbers > 0"),
    (_set("preprocessing.shape", [None, 3, None, 32]), "preprocessing.shape is [None, 3, None, 32]"),
    (_set("preprocessing.resize", "big"), "preprocessing.resize is 'big'"),
    (_set("preprocessing", "rgb"), "preprocessing is 'rgb', expected an object"),
    (_drop("num_classes"), "missing field num_classes"),
    (_set("num_classes", 0), "num_classes is 0"),
    (_set("class_names", ["cat"]), "class_names has 1 names for num_classes=10"),
    (_set("granularity", 3), "granularity is 3"),
    (_set("batch_size", 0), "batch_size is 0"),
    (_set("monolithic", {"path": "monolithic.onnx"}), "missing field monolithic.sha256"),
    (_set("graphs[0].exits", ["0"]), "graphs[0].exits is ['0'], expected a list of exit indices"),
    (_set("graphs[2].logits", ["logits_2", "logits_x"]), "graphs[2] names 2 logits for 1 exits"),
    (lambda d: d["graphs"][0]["tensors"][TENSOR].pop("shape"), f"missing field graphs[0].tensors['{TENSOR}'].shape"),
    (_set("graphs[1].bytes", "1 MB"), "graphs[1].bytes is '1 MB'"),
])
def test_a_bad_or_missing_field_is_one_line_naming_it(run, bundle, change, fragment):
    edit_manifest(bundle, change)
    for verify in (False, True):
        with pytest.raises(BundleError) as info:
            load_manifest(bundle, verify=verify)
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg and msg.endswith("re-export the bundle"), msg
    with pytest.raises(BundleError, match="re-export"):
        ExitChain.load(bundle, warmup=False)
    result = run("info", bundle)
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {msg}"], result.output


def test_optional_fields_take_their_defaults(bundle):
    """Fields a manifest may leave out: the exporter's defaults, read the same as before."""
    def drop(d):
        for k in ("precision", "graph_format", "batch_size", "opset", "class_names", "monolithic", "model"):
            d.pop(k)
        for k in ("resize", "layout", "color", "dtype", "scale"):
            d["preprocessing"].pop(k)
        for g in d["graphs"]:
            for k in ("flops", "bytes", "tensors"):
                g.pop(k)
    edit_manifest(bundle, drop)
    m = load_manifest(bundle)
    assert (m.precision, m.graph_format, m.batch_size, m.opset, m.class_names, m.monolithic, m.model) == (
        "fp32", "onnx", None, None, None, None, None)
    assert m.preprocessing.spec == PreprocessSpec.from_dict(raw()["preprocessing"])
    assert m.graphs[0].tensors == () and m.graphs[0].bytes is None
    chain = ExitChain.load(bundle, warmup=False)
    assert chain.class_names is None and chain.num_exits == 6
