"""Export-time rewrites (export/rewrite.py) and the partitioner's follow_producer rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")  # the export extra: skipped in the lean install
from msdnet_toy import save_random_ranet
from onnx import TensorProto, helper, numpy_helper

from ranet_edge.export.exporter import ExportSpec
from ranet_edge.export.partition import partition
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.export.rewrite import constant_resize


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _resize_model(h: int | str, out: int, mode: str = "align_corners", opset: int = 17) -> onnx.ModelProto:
    """x -> Resize(x, sizes=Concat(Shape(x)[0:2], [out, out])), the way torch.onnx writes it."""
    consts = [numpy_helper.from_array(np.array(v, np.int64), n)
              for n, v in (("zero", [0]), ("two", [2]), ("hw", [out, out]))]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                         coordinate_transformation_mode=mode),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, out, out])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _shapes(model: onnx.ModelProto, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    from ranet_edge.export.graph_costs import intermediate_values

    return {"x": x.shape, **{k: v.shape for k, v in intermediate_values(model, {"x": x}).items()}}


@pytest.mark.parametrize("opset", [17, 13])  # 17 is raised to 18 (sizes on axes); 13 cannot be (Shape changed in 15)
@pytest.mark.parametrize("src,dst,mode", [(8, 16, "align_corners"), (16, 8, "align_corners"), (5, 7, "align_corners"),
                                          (6, 9, "half_pixel"), (4, 2, "asymmetric")])
def test_constant_resize_keeps_the_values(src, dst, mode, opset):
    model = _resize_model(src, dst, mode, opset)
    x1 = np.random.default_rng(0).standard_normal((1, 3, src, src)).astype(np.float32)
    x2 = np.random.default_rng(1).standard_normal((2, 3, src, src)).astype(np.float32)
    want = [_run(model, x) for x in (x1, x2)]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert constant_resize(rewritten, _shapes(model, x1), _shapes(model, x2)) == 1
    assert [n.op_type for n in rewritten.graph.node] == ["Resize"]  # the size chain is gone
    node = rewritten.graph.node[0]
    consts = {i.name: numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    if opset == 17:
        assert rewritten.opset_import[0].version == 18
        assert list(node.input[2:]) == ["", node.input[3]] and consts[node.input[3]].tolist() == [dst, dst]
        assert [helper.get_attribute_value(a) for a in node.attribute if a.name == "axes"] == [[2, 3]]
    else:
        assert rewritten.opset_import[0].version == 13 and len(node.input) == 3  # X, roi, scales
    onnx.checker.check_model(rewritten)
    for x, w in zip((x1, x2), want):
        got = _run(rewritten, x)
        assert got.shape == w.shape
        np.testing.assert_array_equal(got, w)


def test_constant_resize_leaves_inexact_scales_where_the_mode_divides_by_them():
    model = _resize_model(3, 5, "asymmetric", opset=13)  # 5/3 is not a float32: coordinates would move
    x = np.zeros((1, 3, 3, 3), np.float32)
    assert constant_resize(model, _shapes(model, x), _shapes(model, np.zeros((2, 3, 3, 3), np.float32))) == 0
    model = _resize_model(3, 5, "asymmetric", opset=17)  # sizes keep no scale: rewritten, same values
    x = np.random.default_rng(2).standard_normal((1, 3, 3, 3)).astype(np.float32)
    want = _run(model, x)
    assert constant_resize(model, _shapes(model, x), _shapes(model, np.zeros((2, 3, 3, 3), np.float32))) == 1
    np.testing.assert_array_equal(_run(model, x), want)


def test_opset_is_not_raised_over_an_operator_that_changed():
    """ReduceMean's axes became an input in opset 18: a graph holding one keeps its opset and
    gets constant scales."""
    model = _resize_model(8, 16)
    model.graph.node.append(helper.make_node("ReduceMean", ["y"], ["m"], axes=[2, 3]))
    model.graph.output.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    shapes = _shapes(model, x)
    assert constant_resize(model, shapes, _shapes(model, np.zeros((2, 3, 8, 8), np.float32))) == 1
    assert model.opset_import[0].version == 17
    assert len(next(n for n in model.graph.node if n.op_type == "Resize").input) == 3


def test_constant_resize_leaves_sizes_that_change_between_calls():
    model = _resize_model("h", 16)
    small = np.zeros((1, 3, 8, 8), np.float32)
    large = np.zeros((2, 3, 12, 12), np.float32)  # H and W of x differ: the scale is not fixed
    assert constant_resize(model, _shapes(model, small), _shapes(model, large)) == 0
    assert [n.op_type for n in model.graph.node] == ["Shape", "Slice", "Concat", "Resize"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_random_ranet("tiny", ckpt, seed=3, logit_scale=30.0)
    out = ckpt.parent / "bundle"
    export_checkpoint(ckpt, out, ExportSpec(monolithic=True), log=lambda m: None)  # validated against PyTorch
    return out


def test_export_has_no_shape_computation_left(tiny_bundle):
    """Neither the stages nor the monolithic baseline run shape arithmetic: each Resize reads
    constant sizes for its spatial axes (opset 18)."""
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["rewrites"] == {"constant_resize": manifest["rewrites"]["constant_resize"],
                                    "applied_to": "stages and monolithic"}
    assert manifest["rewrites"]["constant_resize"] > 0
    paths = [g["path"] for g in manifest["graphs"]] + [manifest["monolithic"]["path"]]
    resizes = []
    for path in paths:
        model = onnx.load(str(tiny_bundle / path))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"Shape", "Gather", "Unsqueeze"}, (path, ops)
        assert model.opset_import[0].version == 18
        resizes += [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes and all(len(n.input) == 4 and n.input[2] == "" for n in resizes)  # X, roi, -, sizes
    for row in manifest["validation"]["table"]:  # what the exporter checked against PyTorch
        assert row["max_rel_diff"] <= manifest["validation"]["tolerance"]


def test_follow_producer_moves_the_handed_over_tensor():
    """a -> Relu (stage 0, exit 0) and Relu -> Neg -> Abs (exit 1 only): Neg belongs to
    stage 1 by need; told to follow its producer it runs in stage 0 and its output crosses."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["logits_0"], name="exit0"),
        helper.make_node("Neg", ["r"], ["n"], name="neg"),
        helper.make_node("Abs", ["n"], ["logits_1"], name="exit1"),
    ]
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("r", "n")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(f"logits_{k}", TensorProto.FLOAT, [1, 4]) for k in (0, 1)],
                              value_info=info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    plain = partition(model, [["logits_0"], ["logits_1"]])
    assert plain[0].cache_outputs == ["r"] and plain[1].inputs == ["r"]
    moved = partition(model, [["logits_0"], ["logits_1"]], follow_producer=lambda n: n.op_type == "Neg")
    assert [n.op_type for n in moved[0].model.graph.node] == ["Relu", "Identity", "Neg"]
    assert moved[0].cache_outputs == ["n"] and moved[1].inputs == ["n"]
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    env = {"x": x}
    for st in moved:
        sess = ort.InferenceSession(st.model.SerializeToString(), providers=["CPUExecutionProvider"])
        env.update(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: env[k] for k in st.inputs})))
    np.testing.assert_array_equal(env["logits_1"], np.maximum(x, 0))
