"""Shapes of every tensor (from one ONNX Runtime run), FLOPs per node (official convention),
and export step 2, cost accounting: what each exit and stage of a cut graph costs."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ranet_edge.errors import ExportError

from .partition import Stage, partition


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
        elif op == "MatMul" and node.input[0] in shapes and node.output[0] in shapes:
            # per sample: every output element (batch axis left out) is a K-long dot product;
            # for (N, K) x (K, C) that is K * C, the weight's size, as for Gemm
            flops = int(np.prod(shapes[node.output[0]][1:])) * int(shapes[node.input[0]][-1])
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


@dataclass(frozen=True)
class Costs:
    """Per-sample FLOPs and parameters of a cut model (manifest fields in brackets)."""

    flops: list[int]  # per exit, cumulative: the model's own count if it gave one, else the cut's (flops)
    exit_flops: list[int]  # per exit: the cut at that exit alone (stage_flops)
    graph_flops: list[int]  # per stage: the nodes it runs (graphs[].flops)
    run_flops: list[int]  # per stage, cumulative: what a sample leaving after it paid (run_flops)
    params: list[int]  # per exit, cumulative (params)
    dead_flops: list[int]  # per exit, cumulative: the part of ``flops`` no exit's logits depend on (dead_flops)


def count_costs(graph: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], stages: Sequence[Stage],
                num_exits: int, reference_flops: Sequence[int] | None = None,
                cumulative_params: Sequence[int] | None = None,
                reference_dead_flops: Sequence[int] | None = None) -> Costs:
    """Count FLOPs on the cut graphs (before they are simplified: nodes are matched to the
    whole ``graph``'s by their outputs) and check them against ``reference_flops``
    (cumulative, from the model's own counter), of which ``reference_dead_flops`` (cumulative;
    default none) is dead work: work no exit's logits depend on, which the graphs do not
    contain. ``cumulative_params`` default to the parameters the cut graphs store.

    Raises:
        ExportError: the cut graphs' FLOPs do not fit ``reference_flops`` (see
            :func:`check_flops`).
    """
    name_to_flops = {tuple(n.output): f for n, f in zip(graph.graph.node, node_flops(graph, shapes), strict=False)}

    def flops_of(stage: Stage) -> int:  # constant sub-graphs copied into several stages cost 0: sums are exact
        return sum(name_to_flops[tuple(n.output)] for n in stage.model.graph.node)

    graph_flops = [flops_of(st) for st in stages]
    # Per-exit cumulative FLOPs from the cut graphs: exits inside one graph get the cost of
    # what precedes them inside it, measured by cutting at every exit.
    exit_stages = (stages if all(len(st.exits) == 1 for st in stages)
                   else partition(graph, [[f"logits_{k}"] for k in range(num_exits)]))
    exit_flops = [flops_of(st) for st in exit_stages]
    cumulative = list(np.cumsum(exit_flops).astype(int).tolist())
    dead = [0] * num_exits
    if reference_flops is not None:
        dead = [int(d) for d in (reference_dead_flops if reference_dead_flops is not None else dead)]
    check_flops(cumulative, reference_flops, dead)
    if cumulative_params is None:
        cumulative_params = list(np.cumsum([initializer_params(st.model) for st in exit_stages]).astype(int).tolist())
    return Costs(flops=[int(f) for f in (reference_flops if reference_flops is not None else cumulative)],
                 exit_flops=[int(f) for f in exit_flops], graph_flops=[int(f) for f in graph_flops],
                 run_flops=[int(f) for f in np.cumsum(graph_flops).tolist()],
                 params=[int(p) for p in cumulative_params], dead_flops=dead)


def check_flops(cut: Sequence[int], reference: Sequence[int] | None, dead: Sequence[int] | None = None) -> None:
    """The cut chain must do exactly the model's live work in total, and never more by any exit.

    ``reference`` is the model's own cumulative count per exit and ``dead`` (cumulative, per
    exit) the part of it that no exit's logits depend on: MSDNet's last blocks compute finer
    scales that no classifier reads. The graphs hold no dead work (the ONNX export drops it
    and the cut never reaches it), so the chain's total must equal ``reference - dead`` at the
    last exit. Before that it may be lower: a model whose forward runs live work before an
    exit that the exit does not read (MSDNet runs every scale of block k before classifier k)
    is counted at that exit by the official counter, while the chain defers that work to the
    stage that reads it. More than ``reference - dead`` at any exit, or a total that differs,
    means a stage recomputes what an earlier stage computed, or drops work: refused.
    RANet's counts agree exit by exit. With ``reference`` None there is nothing to check.

    Raises:
        ExportError: the three lists differ in length, or the cut does more than the live
            work at some exit, or a total other than it at the last.
    """
    if reference is None:
        return
    reference = [int(r) for r in reference]
    dead = [int(d) for d in dead] if dead is not None else [0] * len(reference)
    if len(dead) != len(reference) or len(cut) != len(reference):
        raise ExportError(f"FLOPs of {len(cut)} exits on the cut graphs, {len(reference)} in the model's own count "
                          f"and {len(dead)} dead-work counts: give one count per exit")
    live = [r - d for r, d in zip(reference, dead, strict=True)]
    if cut[-1] != live[-1] or any(c > v for c, v in zip(cut, live, strict=True)):
        more = any(c > v for c, v in zip(cut, live, strict=True))
        what = "recomputes work an earlier stage computed" if more else "drops work"
        raise ExportError(f"FLOPs counted on the cut graphs {list(cut)} do not fit the model's own count {reference} "
                          f"less its dead work {dead} (work no exit reads) = {live}: a stage {what}; nothing was written "
                          "(report it with the model's official flags)")
