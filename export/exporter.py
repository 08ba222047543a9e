"""Export a multi-exit model to a bundle of chained per-stage ONNX graphs, always validated.

Design: the whole model is exported once and the ONNX graph is cut at its exits
(:mod:`.partition`). Cutting the real graph rather than writing staged PyTorch modules keeps
the partitioner generic (any module whose forward returns the exit logits in order), makes
"no recomputation" true by construction (each node lands in exactly one stage), and
guarantees the stages compute exactly what the monolithic graph computes.

:func:`export_model` runs the steps in order, each a function of its own module:
to ONNX (:mod:`.to_onnx`), partition (:mod:`.partition`), cost accounting
(:mod:`.graph_costs`), simplify (:mod:`.simplify`), validate (:mod:`.validate`) and write
(:mod:`.write`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ranet_edge.errors import ExportError, ValidationError

from .graph_costs import count_costs
from .inputs import BATCH, example_inputs
from .partition import Stage, cut_at_exits
from .simplify import baseline_graph, simplify_stages
from .spec import DEFAULT_OPSET, ExportSpec
from .to_onnx import INPUT_NAME, to_onnx
from .validate import chain_run, format_table, validate_graphs
from .write import build_manifest, check_out_dir, graph_files, read_assets, write_bundle

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "ExportResult", "ExportSpec", "chain_run", "export_model", "format_table"]

logger = logging.getLogger(__name__)  # the validation table, then any warnings (the CLI prints them)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the bundle directory, its manifest, the validation table."""

    out_dir: Path
    manifest: dict
    table: list[dict]  # per exit: max abs/rel differences at each validated batch size
    warnings: list[str] = field(default_factory=list)


def export_model(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    inputs: tuple[int, int, int] | Mapping[str, Any],
    spec: ExportSpec,
    *,
    exit_groups: list[int] | None = None,
    cumulative_params: list[int] | None = None,
    reference_flops: list[int] | None = None,
    reference_dead_flops: list[int] | None = None,
    metadata: dict | None = None,
    assets: Mapping[str, str | os.PathLike | bytes] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` (forward returns exit logits in order) as a validated bundle.

    ``inputs`` is the ``(C, H, W)`` shape of one float32 image input, or a mapping from input
    name to an example tensor with its batch axis (float, int64 or bool), in the order of
    ``forward``'s arguments; ``spec.dynamic_axes`` names their dynamic axes besides the batch
    (see :mod:`.inputs`). ``exit_groups`` gives each exit's sub-network for ``granularity="subnetwork"``;
    ``reference_flops`` (cumulative, from the model's own counter, e.g. the official one) is
    checked against the FLOPs counted on the cut graphs and recorded as each exit's ``flops``;
    ``reference_dead_flops`` (cumulative) is the part of it no exit's logits depend on, which
    the graphs drop (``dead_flops``; see :func:`.graph_costs.check_flops`: dead work is
    exported, a stage that recomputes or drops work is refused); ``run_flops`` is what a
    sample leaving there pays in the chain. ``metadata`` goes into
    the manifest as given. ``assets`` (file name -> path or bytes, e.g. a ``tokenizer.json``)
    are copied into the bundle and listed with their sha256 in the manifest's ``assets``. The validation table and any warnings go to this module's
    ``logging`` logger (``ranet_edge.export.exporter``), or to ``log`` if one is given.
    Nothing is written unless every step passes. The model is exported in eval mode and its
    own training mode (module by module) is restored afterwards.

    Raises:
        ExportError: ``out_dir`` exists and is not empty without ``force``; ``inputs`` or
            ``spec.dynamic_axes`` of another form; ``forward`` does not return a list of
            (N, classes) logits, returns another number of them on a second input, or
            branches on tensor values; ``torch.onnx.export`` fails (one line, with the fix
            where one is known); a tensor handed between stages without its batch first; an
            unknown ``spec.granularity``, or ``"subnetwork"`` without ``exit_groups``; FLOPs
            counted on the cut graphs that do not fit ``reference_flops`` (a stage would
            recompute or drop work).
        ValidationError: an exit differs from PyTorch by more than ``spec.tolerance`` at some
            batch size (it carries the whole table).
    """
    out = Path(out_dir)
    check_out_dir(out, force)
    extra = read_assets(assets)
    ex = example_inputs(inputs, spec.dynamic_axes, spec.batch_size)
    notes: list[str] = []  # what the user should know; the manifest keeps them too
    modes = {m: m.training for m in model.modules()}
    if model.training:
        notes.append("the model was in train mode: it was exported in eval mode (batch norm's running statistics, "
                      "no dropout), and its train mode restored afterwards")
    try:
        model.eval()
        traced = to_onnx(model, ex, spec.opset, spec.batch_size, notes, spec.exporter)
        stages = cut_at_exits(traced.graph, traced.num_exits, spec.granularity, exit_groups)
        if spec.batch_size is None:
            check_batch_first(stages, traced.axes)
        costs = count_costs(traced.graph, {k: v.shape for k, v in traced.values.items()}, stages,
                            traced.num_exits, reference_flops, cumulative_params, reference_dead_flops)
        simplify_stages(stages, spec.simplify, notes)
        try:
            if ex.named:
                table = validate_graphs(model, stages, (), tolerance=spec.tolerance,
                                        feeds=[ex.feeds(), ex.second(spec.batch_size)], axes=ex.axes)
            else:
                batches = (spec.batch_size,) if spec.batch_size else spec.validate_batches
                table = validate_graphs(model, stages, ex.image_shape, tolerance=spec.tolerance,  # type: ignore[arg-type]
                                        batches=batches)
        except ValidationError as exc:
            (log or logger.info)(exc.table_text)
            raise
    finally:
        for module, mode in modes.items():
            module.training = mode
    (log or logger.info)(format_table(table, spec.tolerance))
    baseline = baseline_graph(traced.baseline, spec.simplify, notes) if spec.monolithic else None
    files = graph_files(stages, baseline)
    manifest = build_manifest(traced, stages, files, costs, spec, ex.image_shape, table, notes, metadata)
    if extra:
        manifest["assets"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                              for name, data in extra.items()}
        files = {**files, **extra}
    write_bundle(out, files, manifest)
    for note in notes:
        (log or logger.warning)(f"warning: {note}")
    return ExportResult(out, manifest, manifest["validation"]["table"], notes)


def check_batch_first(stages: Sequence[Stage], axes: Mapping[str, Sequence[str | None]]) -> None:
    """Every tensor one stage hands to a later one must have the batch as its first axis: the
    runtime gathers the rows of the samples that go on along it.

    Raises:
        ExportError: a handed-on tensor whose first axis is not the batch (a sequence-first
            layout, a tensor without a batch axis).
    """
    for st in stages:
        for name in st.cache_outputs:
            if name not in axes:
                continue
            got = tuple(axes[name])
            if not got or got[0] != BATCH:
                where = f"on axis {got.index(BATCH)}" if BATCH in got else "on no axis"
                raise ExportError(f"tensor {name!r} handed on from stage {st.index} has its batch {where} (axes "
                                  f"{list(got)}): rows could not follow their samples between exits; keep the batch "
                                  "first between exits (batch_first=True, no transposes across an exit)")
