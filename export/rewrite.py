"""Export-time graph rewrites that keep the maths and remove work done on every call.

``torch.onnx.export`` of ``F.interpolate(x, size=(h, w))`` with a dynamic batch axis gives
each ``Resize`` a ``sizes`` input computed at run time: ``Shape(x) -> Slice[0:2] ->
Concat(n, c, h, w)``. H and W are constants of the architecture, so the three nodes only
recompute the batch and channel counts that ``Resize`` keeps anyway. :func:`constant_resize`
drops the size chain and gives such a ``Resize`` constants instead, in one of two forms:

- **sizes on the spatial axes** (opset 18's ``axes`` attribute: ``sizes = (h, w)``, ``axes =
  (2, 3)``): the same inputs torch wrote, minus the batch and channel counts, so the maths is
  the original's in every coordinate mode. The graph's opset is raised to 18 for it when no
  operator in the graph changed meaning between its opset and 18 (checked against ONNX's
  operator schemas). ONNX Runtime's CPU provider runs this ``Resize`` in NCHW as it runs the
  original, where a constant ``scales`` input turns it into its blocked-layout ``Upsample``
  with reorders around it (4-8% slower at batch 64 on x86, ``benchmarks/op_profile.py``).
- **constant scales** (1, 1, h/H, w/W), where the opset cannot be raised: output sizes are
  identical (checked in float32 and float64 for every rewritten node). With
  ``align_corners`` (RANet's fusion layers) the interpolation depends only on the input and
  output lengths, so the values are identical too; the other coordinate modes divide by the
  scale, so they are rewritten only when out/in is exact in float32.

The exporter validates every export against PyTorch anyway.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

AXES_OPSET = 18  # Resize's ``axes`` attribute


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
    call to call, so that it reads constants instead (``sizes`` on those axes with opset 18's
    ``axes`` where the opset can be raised, else ``scales``); returns how many were rewritten.

    ``shapes`` and ``other_shapes`` map tensor names to their shapes in two runs of ``model``
    at different batch sizes: a dimension is fixed when both agree (with ``other_shapes``
    None, every dimension is taken as fixed: a static-shape export).
    """
    graph = model.graph
    axes_form = _can_raise_opset(model, AXES_OPSET)
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
        nudge = mode == b"align_corners" or axes_form  # the sizes form keeps no scale: fixed sizes suffice
        scales = [_scale(x, axis, entry, shapes, other, nudge) for axis, entry in enumerate(entries)]
        if None in scales or any(math.floor(n * s_) != d for n, s_, d in zip(src, scales, dst)):
            continue  # not fixed sizes, or not the sizes this run produced
        inputs = list(node.input)
        del node.input[:]
        if axes_form:
            axes = [axis for axis, entry in enumerate(entries) if entry != ("dim", x, axis)]
            name = _fresh(f"{y}__sizes", taken)
            graph.initializer.append(numpy_helper.from_array(np.array([dst[a] for a in axes], np.int64), name))
            node.input.extend([inputs[0], inputs[1], "", name])  # X, roi (usually empty), no scales, sizes
            node.attribute.append(helper.make_attribute("axes", axes))
        else:
            name = _fresh(f"{y}__scales", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(scales, np.float32), name))
            node.input.extend([inputs[0], inputs[1], name])  # X, roi (usually empty), scales; no sizes
        rewritten += 1
    if rewritten:
        _drop_dead_nodes(graph)
        if axes_form:
            _raise_opset(model, AXES_OPSET)
    return rewritten


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset ``model`` is written in."""
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)


def _can_raise_opset(model: onnx.ModelProto, target: int) -> bool:
    """Whether the default-domain opset can be read as ``target`` without changing what any
    node means: every operator's definition at ``target`` is the one at the model's opset
    (Resize excepted: opset 18 only added attributes whose defaults keep opset 13's meaning)."""
    current = opset_of(model)
    if current >= target:
        return True
    if current < 13:
        return False
    for op in {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - {"Resize"}:
        try:
            if defs.get_schema(op, target).since_version > current:
                return False
        except defs.SchemaError:
            return False
    return True


def _raise_opset(model: onnx.ModelProto, target: int) -> None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version < target:
            op.version = target


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


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Every tensor's shape by ONNX shape inference (None for a dimension it leaves open)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}


def sizes_to_scales(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every ``Resize`` that reads constant ``sizes`` on ``axes`` (the form
    :func:`constant_resize` writes at opset 18) into the constant-``scales`` form, where that
    keeps the maths (see the module docstring); returns how many. The int8 path needs it:
    ONNX Runtime's layout transformer for a uint8 ``Resize`` (onnxruntime 1.32) drops the
    ``axes`` form's sizes and then refuses the graph."""
    graph = model.graph
    shapes = inferred_shapes(model)
    consts = _constants(graph)
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    count = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Resize" or "axes" not in attrs or len(node.input) != 4 or node.input[3] not in consts:
            continue
        src = shapes.get(node.input[0])
        if src is None:
            continue
        nudge = attrs.get("coordinate_transformation_mode", b"half_pixel") == b"align_corners"
        scales = [1.0] * len(src)
        for axis, size in zip(attrs["axes"], np.asarray(consts[node.input[3]]).reshape(-1)):
            axis = axis % len(src)
            scales[axis] = _exact_scale(src[axis], int(size), nudge) if src[axis] else None
        if None in scales:
            continue
        name = _fresh(f"{node.output[0]}__scales", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(scales, np.float32), name))
        inputs = list(node.input)
        del node.input[:]
        node.input.extend([inputs[0], inputs[1], name])
        kept = [a for a in node.attribute if a.name != "axes"]
        del node.attribute[:]
        node.attribute.extend(kept)
        count += 1
    if count:
        _drop_dead_nodes(graph)
    return count
