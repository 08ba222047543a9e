"""Shapes of every tensor (from one ONNX Runtime run) and FLOPs per node, official convention."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def intermediate_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` once with every node output exposed; returns name -> array."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for name in node.output:
            if name and name not in existing:
                m.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=False))


def node_flops(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """Per-sample FLOPs of every node (Conv, Relu, pooling, Gemm/MatMul; the rest count 0).

    ``shapes`` may come from a run at any batch size: batch axes are never multiplied in.
    """
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        op = node.op_type
        flops = 0
        if op == "Conv":
            w = shapes.get(node.input[1]) or tuple(inits[node.input[1]].dims)
            y = shapes[node.output[0]]
            # (Cout, Cin/groups, kh, kw) x Hout x Wout == Cin*Cout*kh*kw*Hout*Wout/groups
            flops = int(np.prod(w)) * int(np.prod(y[2:]))
        elif op == "Relu":
            flops = int(np.prod(shapes[node.input[0]][1:]))
        elif op in ("AveragePool", "MaxPool"):
            k = [a for a in node.attribute if a.name == "kernel_shape"][0].ints
            y = shapes[node.output[0]]
            flops = int(np.prod(y[1:])) * int(np.prod(k))  # per sample
        elif op in ("Gemm", "MatMul"):
            w = node.input[1]
            flops = int(np.prod(shapes.get(w) or inits[w].dims))
            if op == "Gemm" and len(node.input) > 2 and node.input[2]:
                b = node.input[2]
                flops += int(np.prod(shapes.get(b) or inits[b].dims))
        out.append(flops)
    return out


def initializer_params(model: onnx.ModelProto) -> int:
    """Parameters a graph stores (every float initializer element)."""
    return int(sum(np.prod(i.dims) for i in model.graph.initializer
                   if numpy_helper.to_array(i).dtype.kind == "f"))
