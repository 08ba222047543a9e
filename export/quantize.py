"""int8 bundles: quantize the whole chain as one graph, then cut it at the exits again.

Quantizing each stage on its own gives every stage float inputs and outputs: each boundary
then costs a QuantizeLinear, a DequantizeLinear and, because ONNX Runtime runs int8
convolutions channels-last, a Transpose on every side (53 Transposes against 7 in one
graph for the bundled model). Here the stages are merged back into one graph, quantized
once (one calibration, one scale per tensor), and cut with :func:`partition` so that

- what crosses a boundary is the uint8 output of a QuantizeLinear (4x smaller than float),
- channels-last: the producer hands it on as NHWC and each consumer stage turns it back,
  so that ONNX Runtime's layout pass cancels both Transposes against its own,
- a bilinear Resize between quantized tensors of the same scale runs on uint8 (the
  interpolation commutes with the affine dequantization; only the rounding point moves),
- every DequantizeLinear has one consumer, so no float tensor is handed on.

The optimized stages then hold exactly the nodes of the optimized whole graph.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .partition import Stage, partition
from .rewrite import sizes_to_scales

TO_NHWC = "__to_nhwc"


@dataclass(frozen=True)
class Int8Recipe:
    """How the chain is quantized (benchmarks/int8_recipes.py measures the alternatives).

    ``reduce_range`` (7-bit weights, on by default) is for x86 CPUs without VNNI (AVX2 only:
    AMD before Zen 4, Intel before Cascade Lake / Ice Lake): there ONNX Runtime's U8S8 kernels
    multiply with ``vpmaddubsw``, which adds two uint8 x int8 products into a saturating int16.
    With 8-bit weights the pair reaches 2 x 255 x 127 and is clipped; with 7-bit weights it
    stays within 2 x 255 x 64. On such a CPU (docs/guides/edge-formats.md) 8-bit weights moved
    the default model's logits by up to 8 from what the QDQ graph means and its top-1 agreement
    with fp32 fell to 93-95%; 7-bit weights gave 97-99%, as fast, and lost nothing measurable
    where products are exact (the QDQ graph run in float). The QNN HTP does not saturate: its
    recipe keeps 8-bit weights.
    """

    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    activations: str = "uint8"  # "uint8" (U8S8, what VNNI's vpdpbusd multiplies) or "int8" (S8S8)
    shared_concat_scales: bool = True  # one scale for every input and the output of each Concat
    float_ops: tuple[str, ...] = ("Gemm",)  # op types left in float (the classifiers' logits layers)
    #: ONNX Runtime's CPU kernels: Resize on uint8 and NHWC hand-over tensors. A QNN graph keeps
    #: every operator between a DequantizeLinear and a QuantizeLinear (QNN reads its
    #: quantization from them) and hands over NCHW.
    cpu_layout: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in the U8S8 kernels of CPUs without VNNI

    def describe(self) -> str:
        """One line naming the recipe, as ``convert --to int8`` reports it and the manifest
        records it."""
        act = "U8S8" if self.activations == "uint8" else "S8S8"
        return (f"whole-chain static QDQ, {act} {'per-channel' if self.per_channel else 'per-tensor'}"
                f"{' 7-bit weights' if self.reduce_range else ''}"
                f"{', shared Concat scales' if self.shared_concat_scales else ''}, "
                f"{'/'.join(self.float_ops) or 'no'} layers in float; uint8 {'NHWC' if self.cpu_layout else 'NCHW'} "
                "hand-over tensors")


@dataclass
class QuantizedChain:
    """The quantized whole graph and its stages, in the source bundle's graph order."""

    model: onnx.ModelProto
    stages: list[Stage]
    uint8_resizes: int
    recipe: Int8Recipe


def merge_stages(paths: list[Path], logits: list[list[str]]) -> onnx.ModelProto:
    """One graph computing what the chained stage graphs compute: their nodes in order,
    joined by tensor name. An initializer name two stages use for different values is
    renamed in the later stage.

    Raises:
        onnx.checker.ValidationError: the merged graph is not valid ONNX (stages that do not
            chain: an input no earlier stage produces).
    """
    models = [onnx.load(str(p)) for p in paths]
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, onnx.TensorProto] = {}
    infos: dict[str, onnx.ValueInfoProto] = {}
    produced: set[str] = set()
    inputs = []
    for s, m in enumerate(models):
        rename = {}
        for init in m.graph.initializer:
            if init.name in inits and inits[init.name].SerializeToString() != init.SerializeToString():
                rename[init.name] = f"{init.name}__stage{s}"
            t = onnx.TensorProto()
            t.CopyFrom(init)
            t.name = rename.get(init.name, init.name)
            inits.setdefault(t.name, t)
        for i in m.graph.input:
            if i.name not in produced and i.name not in inits and i.name not in {x.name for x in inputs}:
                inputs.append(i)
        for node in m.graph.node:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            for j, name in enumerate(n.input):
                n.input[j] = rename.get(name, name)
            nodes.append(n)
            produced.update(n.output)
        for v in list(m.graph.value_info) + list(m.graph.output):
            infos.setdefault(v.name, v)
    outputs = [infos[name] for group in logits for name in group]
    graph = helper.make_graph(nodes, "multi_exit", inputs, outputs, list(inits.values()),
                              value_info=[v for k, v in infos.items() if k not in {o.name for o in outputs}])
    merged = helper.make_model(graph, opset_imports=models[0].opset_import, ir_version=models[0].ir_version,
                               producer_name=models[0].producer_name, producer_version=models[0].producer_version)
    onnx.checker.check_model(merged)
    return merged


class _Batches:
    """onnxruntime.quantization CalibrationDataReader over preprocessed images."""

    def __init__(self, name: str, x: np.ndarray, batch: int):
        self._it: Iterator[dict[str, np.ndarray]] = iter({name: x[i:i + batch]} for i in range(0, len(x), batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def quantize_chain(paths: list[Path], logits: list[list[str]], input_name: str, x: np.ndarray, work: Path,
                   static_batch: int | None = None, recipe: Int8Recipe | None = None) -> QuantizedChain:
    """Quantize the chain of graphs ``paths`` (each computing the exits ``logits[g]``) on the
    preprocessed calibration images ``x`` (static QDQ, MinMax ranges) as ``recipe`` says.
    ``work`` holds the merged graph before and after quantization.

    Raises:
        onnx.checker.ValidationError: the merged or the quantized graph is not valid ONNX.
        ValueError: a group of ``logits`` names no output of the quantized graph.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    recipe = recipe or Int8Recipe()
    batch = static_batch or 16
    merged = merge_stages(paths, logits)
    sizes_to_scales(merged)  # the uint8 Resize of ONNX Runtime takes scales, not sizes on axes
    src, dst = work / "merged.onnx", work / "merged-int8.onnx"
    onnx.save(merged, str(src))
    excluded = [n.name for n in merged.graph.node if n.op_type in recipe.float_ops]
    overrides = shared_concat_ranges(merged, input_name, x, batch) if recipe.shared_concat_scales else {}
    reader = type("Reader", (_Batches, CalibrationDataReader), {})(input_name, x, batch)
    act = QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static advises on the root logger at every call
    try:
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel,
                        activation_type=act, weight_type=QuantType.QInt8, reduce_range=recipe.reduce_range,
                        nodes_to_exclude=excluded,
                        extra_options={"TensorQuantOverrides": overrides} if overrides else None)
    finally:
        root.setLevel(level)
    q = onnx.load(str(dst))
    dedicate_dequantize(q.graph)
    resizes = uint8_resize(q.graph) if recipe.cpu_layout else 0
    q = onnx.shape_inference.infer_shapes(q)
    if recipe.cpu_layout:
        nhwc_handover(q.graph, partition(q, logits, follow_producer=_follows))
        q = onnx.shape_inference.infer_shapes(q)
    onnx.checker.check_model(q)
    return QuantizedChain(q, partition(q, logits, follow_producer=_follows), resizes, recipe)


def shared_concat_ranges(model: onnx.ModelProto, input_name: str, x: np.ndarray, batch: int) -> dict[str, list[dict]]:
    """Quantization overrides giving every tensor joined by Concat nodes (their inputs and
    output, transitively: a dense block is one group) the union of their calibrated ranges,
    so that each QLinearConcat copies bytes instead of requantizing."""
    from .graph_costs import intermediate_values

    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for node in model.graph.node:
        if node.op_type == "Concat":
            for name in node.input:
                parent[find(name)] = find(node.output[0])
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for start in range(0, len(x), batch):
        values = intermediate_values(model, {input_name: x[start:start + batch]})
        for name in parent:
            v = values[name]
            lo[name] = min(lo.get(name, 0.0), float(v.min()))  # ranges include 0, as ORT's MinMax does
            hi[name] = max(hi.get(name, 0.0), float(v.max()))
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    out = {}
    for members in groups.values():
        rmin, rmax = min(lo[m] for m in members), max(hi[m] for m in members)
        out.update({m: [{"rmin": np.float32(rmin), "rmax": np.float32(rmax)}] for m in members})
    return out


def _follows(node: onnx.NodeProto) -> bool:
    """QuantizeLinear and the hand-over Transposes run where their input is computed."""
    return node.op_type == "QuantizeLinear" or (node.op_type == "Transpose" and node.name.endswith(TO_NHWC))


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def uint8_resize(graph: onnx.GraphProto) -> int:
    """DequantizeLinear -> Resize -> QuantizeLinear with one scale and zero point becomes a
    Resize of the uint8 tensor; returns how many."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    drop: set[int] = set()
    count = 0
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        dq, after = producer.get(node.input[0]), consumers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        params = list(zip(dq.input[1:], q.input[1:]))
        if len(consumers[dq.output[0]]) != 1 or len(params) != 2 or not all(
                a in inits and b in inits and np.array_equal(inits[a], inits[b]) and inits[a].dtype == inits[b].dtype
                for a, b in params):
            continue
        node.input[0] = dq.input[0]
        node.output[0] = q.output[0]
        drop.update((id(dq), id(q)))
        count += 1
    _replace_nodes(graph, [n for n in graph.node if id(n) not in drop])
    return count


def dedicate_dequantize(graph: onnx.GraphProto) -> None:
    """Give every consumer of a shared DequantizeLinear of an activation its own copy, so a
    cut never hands on its float output."""
    inits = {i.name for i in graph.initializer}
    consumers = _consumers(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        readers = consumers.get(node.output[0], []) if node.op_type == "DequantizeLinear" else []
        if len(readers) < 2 or node.input[0] in inits:
            continue
        for k, reader in enumerate(readers[1:], 1):
            copy = helper.make_node("DequantizeLinear", list(node.input), [f"{node.output[0]}__{k}"],
                                    name=f"{node.name}__{k}")
            copy.attribute.extend(node.attribute)
            nodes.append(copy)
            for j, name in enumerate(reader.input):
                if name == node.output[0]:
                    reader.input[j] = copy.output[0]
    _replace_nodes(graph, nodes)


def nhwc_handover(graph: onnx.GraphProto, stages: list[Stage]) -> None:
    """Hand every 4-D cut tensor on channels-last: a Transpose to NHWC in its producer's
    stage, one back to NCHW in each consumer stage (ONNX Runtime's layout pass cancels both
    against the Transposes it puts around its channels-last int8 kernels)."""
    stage_of = {out: st.index for st in stages for node in st.model.graph.node for out in node.output}
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info}
    cut = {name for st in stages for name in st.cache_outputs if ranks.get(name) == 4}
    consumers = _consumers(graph)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for name in node.output:
            if name not in cut:
                continue
            nodes.append(helper.make_node("Transpose", [name], [f"{name}__nhwc"], name=name + TO_NHWC, perm=[0, 2, 3, 1]))
            later = sorted({stage_of[c.output[0]] for c in consumers[name]} - {stage_of[name]})
            for s in later:
                back = helper.make_node("Transpose", [f"{name}__nhwc"], [f"{name}__nchw{s}"],
                                        name=f"{name}__to_nchw{s}", perm=[0, 3, 1, 2])
                nodes.append(back)
                for c in consumers[name]:
                    if stage_of[c.output[0]] == s:
                        for j, inp in enumerate(c.input):
                            if inp == name:
                                c.input[j] = back.output[0]
    _replace_nodes(graph, nodes)
