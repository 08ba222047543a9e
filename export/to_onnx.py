"""Export step 1, to ONNX: the whole multi-exit model as one ONNX graph, ready to be cut.

The model is exported once with every exit's logits as a graph output, on the example
inputs (:mod:`.inputs`), under the guards of :mod:`.guard`. Batch norm is folded
here in float64 first (:mod:`.fold`), so the weights written are the same bits on every CPU;
the graph's constant-size ``Resize`` nodes get constant scales (:mod:`.rewrite`) and every
tensor's dtype and shape is recorded, with a symbolic batch axis unless the export is static.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from ranet_edge import __version__

from .fold import fold_batchnorm
from .graph_costs import intermediate_values
from .guard import count_exits, guarded_export, shapes_at, symbolic_axes, use_dynamo
from .inputs import BATCH, INPUT_NAME, ExampleInputs, example_inputs
from .partition import constant_nodes
from .rewrite import AXES_OPSET, constant_resize, opset_of


@dataclass
class Traced:
    """The model as one ONNX graph: what the later steps cut, count and write."""

    graph: onnx.ModelProto  # rewritten, with value_info: the graph cut into stages
    baseline: onnx.ModelProto  # the monolithic baseline: ``graph`` where its rewrite pays, else as exported
    values: dict[str, np.ndarray]  # every live tensor of ``graph`` at the example inputs
    num_exits: int
    resizes: int  # Resize nodes given constant sizes (or scales)
    baseline_rewritten: bool = False  # the baseline got the same rewrite as the stages
    #: Per tensor of ``values``: each axis's symbolic name ("batch", "sequence", ...) or None (fixed).
    axes: dict[str, tuple[str | None, ...]] = field(default_factory=dict)
    inputs: ExampleInputs | None = None  # what the graph takes


def logit_names(num_exits: int) -> list[str]:
    """The graph output names of the exits' logits, ``logits_0 ... logits_{K-1}``: the names
    the cut, the manifest and the runtime all use."""
    return [f"logits_{k}" for k in range(num_exits)]


def to_onnx(model: torch.nn.Module, inputs: ExampleInputs | Sequence[int], opset: int,
            static_batch: int | None, notes: list[str], exporter: str = "torchscript") -> Traced:
    """Export ``model`` (in eval mode) on ``inputs`` (checked :class:`~.inputs.ExampleInputs`,
    or a ``(C, H, W)`` image shape) with a dynamic batch axis unless ``static_batch``, and the
    inputs' named dynamic axes.

    What a user should know but need not stop for is appended to ``notes``.

    Raises:
        ExportError: ``forward`` does not return the list of exit logits, returns another
            number of exits on a second input, branches on tensor values (the tracer's
            warning names the line), or the exporter fails (one line, with the fix where one
            is known); or the graph fails on inputs of other sizes along its dynamic axes.
    """
    ex = inputs if isinstance(inputs, ExampleInputs) else example_inputs(inputs, None, static_batch)
    example = tuple(ex.examples)
    second = ex.second(static_batch)
    num_exits = count_exits(model, ex, second)
    # Batch norm folded in float64 here, not by torch.onnx.export in float32: the weights
    # written are then the same bits on every CPU (see .fold). Validation still compares
    # against the unfolded model.
    folded, _ = fold_batchnorm(model, example)
    full = _export(folded, example, ex, num_exits, opset, static_batch, notes, exporter)
    _check_nothing_folded_by_torch(folded, full, notes)
    feeds = ex.feeds()
    values = {**feeds, **intermediate_values(full, feeds)}
    other = None  # shapes at other sizes tell the fixed dimensions from the dynamic axes
    if ex.named:
        other = {**{k: v.shape for k, v in second.items()}, **shapes_at(full, second, ex)}
    elif static_batch is None:
        other = {k: v.shape for k, v in intermediate_values(full, {INPUT_NAME: np.zeros((2, *ex.image_shape), np.float32)}).items()}  # type: ignore[misc]
    # The monolithic baseline gets the same rewrite: with opset 18's sizes-on-axes form it runs
    # no shape arithmetic and stays in NCHW like the exported Resize, faster at batch 1 and as
    # fast at batch 64. Only where the opset cannot be raised (constant scales, which ONNX
    # Runtime turns into a blocked-layout Upsample, 4-8% slower for a whole graph at batch 64
    # on x86) does it stay as exported.
    as_exported = onnx.ModelProto()
    as_exported.CopyFrom(full)
    resizes = constant_resize(full, {k: v.shape for k, v in values.items()}, other)
    live = {out for node in full.graph.node for out in node.output} | set(ex.names)
    values = {k: v for k, v in values.items() if k in live}
    if ex.named:
        axes = symbolic_axes(values, other, ex)  # type: ignore[arg-type]
        _value_infos(full, values, axes)
    else:  # value_info as image bundles always had it; the true axes only for the exporter's checks
        _value_infos(full, values, _image_axes(full, values, static_batch))
        axes = symbolic_axes(values, {**other, INPUT_NAME: (2, *ex.image_shape)}, ex) if other else {}  # type: ignore[misc]
    baseline = as_exported
    if opset_of(full) >= AXES_OPSET:
        baseline = onnx.ModelProto()
        baseline.CopyFrom(full)
    return Traced(full, baseline, values, num_exits, resizes, baseline is not as_exported, axes, ex)


def _export(model: torch.nn.Module, example: tuple[torch.Tensor, ...], ex: ExampleInputs, num_exits: int,
            opset: int, static_batch: int | None, notes: list[str], exporter: str = "torchscript") -> onnx.ModelProto:
    names = logit_names(num_exits)
    axes: dict[str, dict[int, str]] | None = {n: dict(a) for n, a in ex.axes.items() if a}
    if static_batch is None:
        axes = {**(axes or {}), **{n: {0: BATCH} for n in names}}
    buf = io.BytesIO()
    dynamo = use_dynamo(exporter, opset)
    if dynamo and static_batch is None:  # torch.export fixes an axis of size 1 to 1: trace the batch at 2
        example = tuple(t.expand(2, *t.shape[1:]).clone() if t.shape[0] == 1 else t for t in example)
    with guarded_export(ex, static_batch, notes):
        torch.onnx.export(model, example, buf, dynamo=dynamo, input_names=list(ex.names),
                          output_names=names, dynamic_axes=axes or None, opset_version=opset,
                          do_constant_folding=True, verbose=False)
    m = onnx.load_from_string(buf.getvalue())
    m.graph.name = "multi_exit"
    m.producer_name, m.producer_version = "ranet-edge", __version__
    return m


def _check_nothing_folded_by_torch(folded: torch.nn.Module, m: onnx.ModelProto, notes: list[str]) -> None:
    """torch.onnx.export folds every batch norm that directly follows a convolution in the
    traced graph; those left in ``folded`` (not after a Conv2d in one nn.Sequential) must
    reach the graph as BatchNormalization nodes, or their weights depend on the CPU."""
    left = sum(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in folded.modules())
    kept = sum(node.op_type == "BatchNormalization" for node in m.graph.node)
    if kept < left:
        notes.append(f"torch.onnx.export folded {left - kept} batch norm(s) itself (not directly after a Conv2d "
                     "in one nn.Sequential): their weights may differ in the last bits between CPUs")


def _image_axes(model: onnx.ModelProto, values: dict[str, np.ndarray],
                static_batch: int | None) -> dict[str, tuple[str | None, ...]]:
    """An image export's symbolic axes: the batch axis of activations, unless the export is
    static (weights computed from initializers keep their shapes)."""
    constant = {out for n in constant_nodes(model.graph) for out in model.graph.node[n].output}
    out: dict[str, tuple[str | None, ...]] = {}
    for name, arr in values.items():
        axes: list[str | None] = [None] * arr.ndim
        if arr.dtype.kind == "f" and arr.ndim and static_batch is None and name not in constant:
            axes[0] = BATCH
        out[name] = tuple(axes)
    return out


def _value_infos(model: onnx.ModelProto, values: dict[str, np.ndarray], axes: dict[str, tuple]) -> None:
    """Record every tensor's dtype and shape, each dynamic axis by its symbolic name."""
    del model.graph.value_info[:]
    for name, arr in values.items():
        if name in {o.name for o in model.graph.output}:
            continue
        dims: list[Any] = [a if a else d for d, a in zip(arr.shape, axes[name], strict=True)]
        model.graph.value_info.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), dims))
