"""Export step 1, to ONNX: the whole multi-exit model as one ONNX graph, ready to be cut.

The model is exported once with every exit's logits as a graph output. Batch norm is folded
here in float64 first (:mod:`.fold`), so the weights written are the same bits on every CPU;
the graph's constant-size ``Resize`` nodes get constant scales (:mod:`.rewrite`) and every
tensor's dtype and shape is recorded, with a symbolic batch axis unless the export is static.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from ranet_edge import __version__
from ranet_edge.errors import ExportError

from .fold import fold_batchnorm
from .graph_costs import intermediate_values
from .partition import constant_nodes
from .rewrite import AXES_OPSET, constant_resize, opset_of

INPUT_NAME = "image"


@dataclass
class Traced:
    """The model as one ONNX graph: what the later steps cut, count and write."""

    graph: onnx.ModelProto  # rewritten, with value_info: the graph cut into stages
    baseline: onnx.ModelProto  # the monolithic baseline: ``graph`` where its rewrite pays, else as exported
    values: dict[str, np.ndarray]  # every live tensor of ``graph`` at the example batch
    num_exits: int
    resizes: int  # Resize nodes given constant sizes (or scales)
    baseline_rewritten: bool = False  # the baseline got the same rewrite as the stages


def logit_names(num_exits: int) -> list[str]:
    """The graph output names of the exits' logits, ``logits_0 ... logits_{K-1}``: the names
    the cut, the manifest and the runtime all use."""
    return [f"logits_{k}" for k in range(num_exits)]


def count_exits(model: torch.nn.Module, example: torch.Tensor) -> int:
    """The number of exits, after checking that ``forward`` returns the exit logits.

    Raises:
        ExportError: ``forward(example)`` does not return a non-empty list or tuple of 2-D
            (N, classes) tensors.
    """
    with torch.no_grad():
        outputs = model(example)
    if not isinstance(outputs, (list, tuple)) or not outputs or not all(
            isinstance(o, torch.Tensor) and o.dim() == 2 for o in outputs):
        raise ExportError("the model's forward must return the list of exit logits (N x classes tensors) in "
                          f"exit order; it returned {type(outputs).__name__}")
    return len(outputs)


def to_onnx(model: torch.nn.Module, input_shape: tuple[int, int, int], opset: int,
            static_batch: int | None, notes: list[str]) -> Traced:
    """Export ``model`` (in eval mode) at batch ``static_batch`` (None: a dynamic batch axis).

    What a user should know but need not stop for is appended to ``notes``.

    Raises:
        ExportError: ``forward`` does not return the list of exit logits.
    """
    batch = static_batch or 1
    example = torch.zeros(batch, *input_shape)
    num_exits = count_exits(model, example)
    # Batch norm folded in float64 here, not by torch.onnx.export in float32: the weights
    # written are then the same bits on every CPU (see .fold). Validation still compares
    # against the unfolded model.
    folded, _ = fold_batchnorm(model)
    full = _export(folded, example, num_exits, opset, static_batch)
    _check_nothing_folded_by_torch(folded, full, notes)
    feed = np.zeros((batch, *input_shape), np.float32)
    values = {INPUT_NAME: feed, **intermediate_values(full, {INPUT_NAME: feed})}
    other = None  # shapes at a second batch size tell the fixed dimensions from the batch axis
    if static_batch is None:
        other = {k: v.shape for k, v in intermediate_values(full, {INPUT_NAME: np.zeros((2, *input_shape), np.float32)}).items()}
    # The monolithic baseline gets the same rewrite: with opset 18's sizes-on-axes form it runs
    # no shape arithmetic and stays in NCHW like the exported Resize, faster at batch 1 and as
    # fast at batch 64. Only where the opset cannot be raised (constant scales, which ONNX
    # Runtime turns into a blocked-layout Upsample, 4-8% slower for a whole graph at batch 64
    # on x86) does it stay as exported.
    as_exported = onnx.ModelProto()
    as_exported.CopyFrom(full)
    resizes = constant_resize(full, {k: v.shape for k, v in values.items()}, other)
    live = {out for node in full.graph.node for out in node.output} | {INPUT_NAME}
    values = {k: v for k, v in values.items() if k in live}
    _value_infos(full, values, static_batch)
    baseline = as_exported
    if opset_of(full) >= AXES_OPSET:
        baseline = onnx.ModelProto()
        baseline.CopyFrom(full)
    return Traced(full, baseline, values, num_exits, resizes, baseline is not as_exported)


def _export(model: torch.nn.Module, example: torch.Tensor, num_exits: int, opset: int,
            static_batch: int | None) -> onnx.ModelProto:
    names = logit_names(num_exits)
    axes = None
    if static_batch is None:
        axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True)
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


def _value_infos(model: onnx.ModelProto, values: dict[str, np.ndarray], static_batch: int | None) -> None:
    """Record every tensor's dtype and shape; the batch axis of activations is symbolic
    unless the export is static (weights computed from initializers keep their shapes)."""
    del model.graph.value_info[:]
    constant = {out for n in constant_nodes(model.graph) for out in model.graph.node[n].output}
    for name, arr in values.items():
        if name in {o.name for o in model.graph.output}:
            continue
        dims: list[Any] = list(arr.shape)
        if arr.dtype.kind == "f" and dims and static_batch is None and name not in constant:
            dims[0] = "batch"
        model.graph.value_info.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), dims))
