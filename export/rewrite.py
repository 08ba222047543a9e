"""Export-time graph rewrites that keep the maths and remove work done on every call.

``torch.onnx.export`` of ``F.interpolate(x, size=(h, w))`` with a dynamic batch axis gives
each ``Resize`` a ``sizes`` input computed at run time: ``Shape(x) -> Slice[0:2] ->
Concat(n, c, h, w)``. H and W are constants of the architecture, so the three nodes only
recompute the batch and channel counts that ``Resize`` keeps anyway. :func:`constant_resize`
gives such a ``Resize`` a constant ``scales`` input (1, 1, h/H, w/W) instead and drops the
size chain. Output sizes are identical (checked in float32 and float64 for every rewritten
node). With ``align_corners`` (RANet's fusion layers) the interpolation depends only on the
input and output lengths, so the values are identical too; the other coordinate modes divide
by the scale, so they are rewritten only when out/in is exact in float32 (the exporter
validates every export against PyTorch anyway).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs, by tensor name."""
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.output) == 1:
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                out[node.output[0]] = numpy_helper.to_array(attr["value"].t)
    return out


Entry = tuple  # ("const", int) or ("dim", tensor name, axis)


def _size_entries(name: str, producer: Mapping[str, onnx.NodeProto], consts: Mapping[str, np.ndarray],
                  ranks: Mapping[str, int]) -> list[Entry] | None:
    """The entries of a 1-D int64 shape tensor as ("const", value) or ("dim", tensor, axis),
    or None when it is not computed from constants and ``Shape`` outputs by the operators
    torch.onnx emits for sizes (Shape, Gather, Slice, Unsqueeze, Squeeze, Concat, Cast)."""
    if name in consts:
        return [("const", int(v)) for v in np.asarray(consts[name]).reshape(-1)]
    node = producer.get(name)
    if node is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Shape":
        rank = ranks.get(node.input[0])
        if rank is None:
            return None
        return [("dim", node.input[0], i) for i in range(rank)][attrs.get("start", 0):attrs.get("end")]
    if op == "Concat" and attrs.get("axis") in (0, -1):
        out: list[Entry] = []
        for part in node.input:
            entries = _size_entries(part, producer, consts, ranks)
            if entries is None:
                return None
            out.extend(entries)
        return out
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity") and (op != "Cast" or attrs.get("to") == onnx.TensorProto.INT64):
        return _size_entries(node.input[0], producer, consts, ranks)  # a 0-d/1-d value keeps its entries
    inner = _size_entries(node.input[0], producer, consts, ranks)
    if inner is None or any(n and n not in consts for n in node.input[1:]):
        return None
    if op == "Gather" and attrs.get("axis", 0) == 0:
        idx = np.asarray(consts[node.input[1]]).reshape(-1)
        return [inner[int(i)] for i in idx] if all(-len(inner) <= i < len(inner) for i in idx) else None
    if op == "Slice":
        starts, ends, axes, steps = (np.asarray(consts[n]).reshape(-1) if n else None
                                     for n in list(node.input[1:]) + [""] * (5 - len(node.input)))
        if starts is None or ends is None or len(starts) != 1 or (axes is not None and list(axes) != [0]) or (
                steps is not None and list(steps) != [1]):
            return None
        return inner[int(starts[0]):int(ends[0])]
    return None


def _fixed(tensor: str, axis: int, shapes: Mapping[str, Sequence[int]], other: Mapping[str, Sequence[int]]) -> bool:
    return tensor in shapes and tensor in other and shapes[tensor][axis] == other[tensor][axis]


def _scale(x: str, axis: int, entry: Entry, shapes: Mapping[str, Sequence[int]],
           other: Mapping[str, Sequence[int]], nudge: bool) -> float | None:
    """The constant scale of ``axis`` of Resize(x) whose size entry is ``entry``, or None."""
    if entry == ("dim", x, axis):
        return 1.0  # the input's own size, whatever it is
    if entry[0] == "dim":
        if not _fixed(entry[1], entry[2], shapes, other):
            return None
        size = int(shapes[entry[1]][entry[2]])
    else:
        size = int(entry[1])
    if not _fixed(x, axis, shapes, other) or shapes[x][axis] <= 0:
        return None
    return _exact_scale(int(shapes[x][axis]), size, nudge)


def _exact_scale(src: int, dst: int, nudge: bool) -> float | None:
    """A float32 scale s with floor(src * s) == dst in float32 and float64, or None; without
    ``nudge`` only dst / src itself, when float32 holds it exactly."""
    s = np.float32(dst / src)
    if not nudge:
        return float(s) if float(s) * src == dst else None
    for _ in range(4):
        if math.floor(float(np.float32(src) * s)) == dst and math.floor(src * float(s)) == dst:
            return float(s)
        s = np.nextafter(s, np.float32(np.inf))
    return None


def constant_resize(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]],
                    other_shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """Rewrite, in place, every ``Resize`` whose ``sizes`` input keeps some axes of its input
    (read with ``Shape`` of that input) and sets the others to sizes that do not change from
    call to call, so that it reads a constant ``scales`` instead; returns how many were
    rewritten.

    ``shapes`` and ``other_shapes`` map tensor names to their shapes in two runs of ``model``
    at different batch sizes: a dimension is fixed when both agree (with ``other_shapes``
    None, every dimension is taken as fixed: a static-shape export).
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consts = _constants(graph)
    ranks = {k: len(v) for k, v in shapes.items()}
    other = shapes if other_shapes is None else other_shapes
    taken = {i.name for i in graph.initializer} | set(producer)
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        x, y = node.input[0], node.output[0]
        if x not in shapes or y not in shapes or node.input[3] in consts:
            continue
        entries = _size_entries(node.input[3], producer, consts, ranks)
        src, dst = list(shapes[x]), list(shapes[y])
        if entries is None or len(entries) != len(src) or len(dst) != len(src):
            continue
        mode = next((helper.get_attribute_value(a) for a in node.attribute
                     if a.name == "coordinate_transformation_mode"), b"half_pixel")
        if mode == b"tf_crop_and_resize":
            continue
        # align_corners maps coordinates with the lengths alone; the other modes divide by the
        # scale, which then has to be out/in exactly
        nudge = mode == b"align_corners"
        scales = [_scale(x, axis, entry, shapes, other, nudge) for axis, entry in enumerate(entries)]
        if None in scales or any(math.floor(n * s_) != d for n, s_, d in zip(src, scales, dst)):
            continue  # not fixed sizes, or not the sizes this run produced
        name = f"{y}__scales"
        while name in taken:
            name += "_"
        taken.add(name)
        graph.initializer.append(numpy_helper.from_array(np.array(scales, np.float32), name))
        inputs = list(node.input)
        del node.input[:]
        node.input.extend([inputs[0], inputs[1], name])  # X, roi (usually empty), scales; no sizes
        rewritten += 1
    if rewritten:
        _drop_dead_nodes(graph)
    return rewritten


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (by a node or as a graph output), repeatedly,
    and initializers no node reads any more."""
    keep_outputs = {o.name for o in graph.output}
    nodes = list(graph.node)
    while True:
        used = keep_outputs | {name for n in nodes for name in n.input}
        alive = [n for n in nodes if any(out in used for out in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input} | {i.name for i in graph.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    names = {out for n in nodes for out in n.output} | {i.name for i in graph.input}
    infos = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(infos)
