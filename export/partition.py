"""Cut one multi-exit ONNX graph into stages at its exits.

The whole model is exported once, with every exit's logits as a graph output. Stage ``s``
is then every node that the logits of its exits need and that no earlier stage computed,
in the original topological order. Whatever a stage reads from an earlier stage becomes
a graph input under the producer's tensor name; whatever a later stage reads becomes an
output. Constant sub-graphs (initializers and what is computed from them alone) and shape
computations (:func:`shape_nodes`) are copied into each stage that uses them instead of being
passed along. This works for any model
whose forward returns its exit logits in order, and by construction computes every node
exactly once across the chain.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
from onnx import helper

from ranet_edge.errors import ExportError


@dataclass
class Stage:
    """One cut of the graph."""

    index: int
    exits: list[int]  # exit indices whose logits this stage outputs
    model: onnx.ModelProto
    inputs: list[str]  # graph input names (image or cached tensors), in order
    logits: list[str]  # output names of its exits' logits
    cache_outputs: list[str]  # tensors later stages read


def constant_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of nodes computable from initializers alone (Constant, Identity of weights...)."""
    known = {i.name for i in graph.initializer} | {""}
    const: set[int] = set()
    for n, node in enumerate(graph.node):
        if all(name in known for name in node.input):
            const.add(n)
            known.update(node.output)
    return const


def shape_nodes(graph: onnx.GraphProto, const: set[int]) -> set[int]:
    """Indices of nodes that compute from tensor shapes alone: ``Shape`` and ``Size`` nodes and
    what is computed from their outputs and constants (a reshape's target, a range of
    positions). A stage re-computes them from its own inputs rather than reading them from an
    earlier stage: they hold the batch size, which changes when rows leave, and have no batch
    axis to gather rows from."""
    known = {out for n in const for out in graph.node[n].output} | {i.name for i in graph.initializer} | {""}
    shape_outs: set[str] = set()
    out: set[int] = set()
    for n, node in enumerate(graph.node):
        if n in const:
            continue
        if node.op_type in ("Shape", "Size") or (
                any(name in shape_outs for name in node.input)
                and all(name in known or name in shape_outs for name in node.input)):
            out.add(n)
            shape_outs.update(node.output)
    return out


def partition(model: onnx.ModelProto, groups: list[list[str]],
              follow_producer: Callable[[onnx.NodeProto], bool] | None = None) -> list[Stage]:
    """Split ``model`` into one stage per group of logits outputs (groups in exit order).

    Nodes for which ``follow_producer`` is true run in the stage that computes their first
    input even when only later stages read them, so that what crosses the boundary is their
    output (a quantized graph then hands on the uint8 outputs of its QuantizeLinear nodes).

    Raises:
        ValueError: a name in ``groups`` is not an output of ``model``, or a tensor that crosses
            a cut has no type information (run shape inference first).
    """
    graph = model.graph
    producer = {out: n for n, node in enumerate(graph.node) for out in node.output}
    inits = {i.name: i for i in graph.initializer}
    const = constant_nodes(graph)
    const |= shape_nodes(graph, const)  # copied into each stage that uses them, like constants
    graph_inputs = [i.name for i in graph.input if i.name not in inits]
    output_names = {o.name for o in graph.output}
    missing = [name for group in groups for name in group if name not in output_names]
    if missing:
        raise ValueError(f"exit outputs not in the graph: {missing}")

    owner: dict[int, int] = {}  # non-constant node -> stage
    stage_nodes: list[list[int]] = []
    for s, group in enumerate(groups):
        needed: set[int] = set()
        stack = list(group)
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            n = producer[name]
            if n in owner and n not in const:
                continue  # computed by an earlier stage: becomes an input
            if n in needed:
                continue
            needed.add(n)
            stack.extend(graph.node[n].input)
        for n in needed:
            if n not in const:
                owner[n] = s
        stage_nodes.append(sorted(needed))
    for n, node in enumerate(graph.node):
        src = producer.get(node.input[0]) if node.input else None
        if follow_producer and n in owner and src in owner and owner[src] < owner[n] and follow_producer(node):
            stage_nodes[owner[n]].remove(n)
            owner[n] = owner[src]
            stage_nodes[owner[n]] = sorted([*stage_nodes[owner[n]], n])

    consumers_stage: dict[str, set[int]] = {}
    for s, nodes in enumerate(stage_nodes):
        for n in nodes:
            for name in graph.node[n].input:
                consumers_stage.setdefault(name, set()).add(s)

    value_info = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    stages: list[Stage] = []
    exit_index = 0
    for s, nodes in enumerate(stage_nodes):
        produced = {out for n in nodes for out in graph.node[n].output}
        used = {name for n in nodes for name in graph.node[n].input if name}
        inputs = [name for name in graph_inputs if name in used]
        inputs += sorted(
            {name for name in used - produced if name not in inits and name not in graph_inputs},
            key=lambda name: (owner.get(producer[name], -1), producer[name], name),
        )
        cache_out = [
            name for n in nodes for name in graph.node[n].output
            if producer[name] not in const and any(t > s for t in consumers_stage.get(name, ()))
        ]
        logits = list(groups[s])
        outs = logits + [c for c in cache_out if c not in logits]
        sub = helper.make_graph(
            [graph.node[n] for n in nodes],
            f"{graph.name or 'model'}_stage{s}",
            [_info(value_info, name) for name in inputs],
            [_info(value_info, name) for name in outs],
            [inits[name] for name in sorted(used & inits.keys())],
        )
        m = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version,
                              producer_name=model.producer_name, producer_version=model.producer_version)
        stages.append(Stage(s, list(range(exit_index, exit_index + len(logits))), m, inputs, logits,
                            [c for c in cache_out if c not in logits]))
        exit_index += len(logits)
    return stages


def cut_at_exits(model: onnx.ModelProto, num_exits: int, granularity: str = "exit",
                 exit_groups: list[int] | None = None) -> list[Stage]:
    """Export step 3, partition: cut the whole graph (outputs ``logits_0..``) into one stage
    per exit (``granularity="exit"``), or one per sub-network (``"subnetwork"``: exit k
    belongs to sub-network ``exit_groups[k]``).

    Raises:
        ExportError: ``granularity`` is neither ``"exit"`` nor ``"subnetwork"``, or it is
            ``"subnetwork"`` and ``exit_groups`` is None (a model that names no sub-networks).
    """
    if granularity == "exit":
        groups = [[f"logits_{k}"] for k in range(num_exits)]
    elif granularity == "subnetwork":
        if exit_groups is None:
            raise ExportError("--granularity subnetwork needs a model that names its sub-networks (RANet)")
        groups = [[f"logits_{k}" for k in range(num_exits) if exit_groups[k] == g]
                  for g in sorted(set(exit_groups))]
    else:
        raise ExportError(f"granularity {granularity!r} is not known; use 'exit' or 'subnetwork'")
    return partition(model, groups)


def _info(value_info: dict, name: str) -> onnx.ValueInfoProto:
    if name not in value_info:
        raise ValueError(f"no type information for tensor {name}; run shape inference first")
    return value_info[name]
