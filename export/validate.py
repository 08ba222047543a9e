"""Export step 5, validate: every exit of the cut graphs against PyTorch eager, always.

The graphs run through ONNX Runtime (one thread, CPU) chained by the runtime's own
:func:`~ranet_edge.runtime.graphs.walk`, on random images at each batch size asked for; each
exit's logits are compared with the model's. Every check is collected before judging: a
failure raises one :class:`~ranet_edge.errors.ValidationError` that carries the whole table.

:func:`validate_graphs` checks graphs in memory (what the exporter does before writing);
:func:`validate_bundle` checks a bundle on disk against the model it came from.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ranet_edge.errors import ExportError, ValidationError
from ranet_edge.runtime.graphs import walk
from ranet_edge.runtime.manifest import load_manifest

from .to_onnx import INPUT_NAME

DEFAULT_BATCHES = (1, 3)  # more than one batch size: a batch axis wired wrongly shows up


class Chained(Protocol):
    """What chaining a graph needs: a :class:`~ranet_edge.export.partition.Stage` (which also
    has the graph as ``model``) or a manifest's :class:`~ranet_edge.runtime.manifest.GraphEntry`."""

    @property
    def inputs(self) -> Sequence[str]:
        """Tensors it reads: the image or earlier graphs' outputs."""
        ...

    @property
    def logits(self) -> Sequence[str]:
        """Its exits' logits, in exit order."""
        ...


@dataclass(frozen=True)
class ExitCheck:
    """One exit compared with PyTorch at one batch size (a row of the validation table)."""

    exit: int
    batch: int
    max_abs_diff: float  # max |onnx - torch| over the batch; inf when the shapes differ
    max_rel_diff: float  # max_abs_diff / max |torch logit|
    passed: bool  # max_rel_diff <= the tolerance
    sizes: dict[str, int] | None = None  # named inputs: each dynamic axis's size besides the batch

    def to_dict(self) -> dict:
        """The row as the manifest's ``validation.table`` stores it."""
        row = {"exit": self.exit, "batch": self.batch, "max_abs_diff": self.max_abs_diff,
               "max_rel_diff": self.max_rel_diff}
        return {**row, "sizes": dict(self.sizes)} if self.sizes else row


def session(m: onnx.ModelProto | str | os.PathLike) -> ort.InferenceSession:
    """A one-thread CPU session: the same kernels on every run, nothing left spinning."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    src = m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def chain_run(sessions: Sequence[ort.InferenceSession], graphs: Sequence[Chained],
              x: np.ndarray | Mapping[str, np.ndarray], input_name: str = INPUT_NAME) -> list[np.ndarray]:
    """Run the graphs in order, feeding each the tensors it names (how any user chains them);
    returns every exit's logits in exit order. ``x``: the image, or every input by name."""
    def run(g: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = sessions[g]
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))

    return [outs[name] for g, _, outs in walk([gr.inputs for gr in graphs[:len(sessions)]], dict(x) if isinstance(x, Mapping) else {input_name: x}, run)
            for name in graphs[g].logits]


def validate_graphs(model: torch.nn.Module, graphs: Sequence[Chained], input_shape: Sequence[int], *,
                    tolerance: float = 1e-4, batches: Sequence[int] = DEFAULT_BATCHES,
                    input_name: str = INPUT_NAME,
                    sessions: Sequence[ort.InferenceSession] | None = None,
                    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
                    axes: Mapping[str, Mapping[int, str]] | None = None) -> list[ExitCheck]:
    """Compare every exit of ``graphs`` (the chain in order, e.g. the exporter's stages) with
    ``model`` (run in eval mode) on seeded random inputs of
    ``(batch, *input_shape)`` for each batch size in ``batches``, or on ``feeds`` (named
    inputs, each a mapping name -> array in ``forward``'s argument order; ``input_shape`` and
    ``batches`` are then unused; ``axes``, per input ``{axis: name}``, puts the size of each
    named dynamic axis in the rows).

    An exit passes when ``max |diff| / max |logit| <= tolerance``. Returns the table, batch by
    batch and exit by exit, when every exit passes; raises
    :class:`~ranet_edge.errors.ValidationError` carrying the same table otherwise. ``sessions``
    (one per graph) default to one-thread CPU sessions of each graph's ``model``.

    Raises:
        ValidationError: the graphs give another number of exits than the model, or some exit
            at some batch size differs by more than ``tolerance`` (or has another shape); it
            carries the whole table and names the worst exit.
    """
    model = model.eval()
    sessions = list(sessions) if sessions is not None else [session(g.model) for g in graphs]  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    table: list[ExitCheck] = []
    sets = list(feeds) if feeds is not None else [
        {input_name: rng.standard_normal((b, *input_shape)).astype(np.float32)} for b in batches]
    for x in sets:
        b = len(next(iter(x.values())))
        with torch.no_grad():
            ref = [t.numpy() for t in model(*(torch.from_numpy(v) for v in x.values()))]
        got = chain_run(sessions, graphs, x)
        sizes = {label: int(x[name].shape[axis]) for name, named in (axes or {}).items()
                 for axis, label in named.items() if axis != 0} or None
        if len(got) != len(ref):
            raise ValidationError(f"validation against PyTorch failed: the graphs give {len(got)} exits, the model "
                                  f"{len(ref)}; validate the graphs against the model they were exported from")
        for k, (r, g) in enumerate(zip(ref, got, strict=True)):
            abs_diff = float(np.max(np.abs(r - g))) if g.shape == r.shape else float("inf")
            rel = abs_diff / max(float(np.max(np.abs(r))), 1e-12)
            table.append(ExitCheck(k, b, abs_diff, rel, rel <= tolerance, sizes))
    if not all(row.passed for row in table):
        raise ValidationError(_summary(table, tolerance), table, format_table(table, tolerance))
    return table


def validate_bundle(model: torch.nn.Module, bundle: str | os.PathLike, *, tolerance: float | None = None,
                    batches: Sequence[int] | None = None,
                    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
                    axes: Mapping[str, Mapping[int, str]] | None = None) -> list[ExitCheck]:
    """Validate the bundle in ``bundle`` (sha256 verified) against ``model`` as
    :func:`validate_graphs` does. ``tolerance`` defaults to the one the bundle was exported
    with, ``batches`` to its static batch size or ``(1, 3)``; a bundle of named inputs is
    validated on ``feeds`` (mappings name -> array).

    Raises:
        BundleError: ``bundle`` has no readable ranet-edge manifest, or a graph's sha256 does
            not match it.
        ExportError: a bundle of named inputs and no ``feeds``.
        ValidationError: as :func:`validate_graphs`.
    """
    man = load_manifest(bundle, verify=True)
    data = man.data
    static = data.get("batch_size")
    if man.preprocessing is None and feeds is None:
        raise ExportError("this bundle takes named inputs: pass feeds=[{name: array, ...}] to validate it")
    return validate_graphs(
        model, man.graphs, man.preprocessing.sample_shape if man.preprocessing else (), feeds=feeds,
        tolerance=tolerance if tolerance is not None else data.get("validation", {}).get("tolerance", 1e-4),
        batches=batches or ((static,) if static else DEFAULT_BATCHES), input_name=man.input_name,
        sessions=[session(Path(man.root) / g.path) for g in man.graphs])


def format_table(table: Sequence[ExitCheck], tolerance: float) -> str:
    """The table as text, one row per check; failing rows end in FAIL."""
    lines = [f"{'exit':>4} {'batch':>5} {'max|diff|':>11} {'relative':>10}  (tolerance {tolerance:g})"]
    for row in table:
        flag = "" if row.passed else "  FAIL"
        sizes = "  " + " ".join(f"{k}={v}" for k, v in row.sizes.items()) if row.sizes else ""
        lines.append(f"{row.exit:>4} {row.batch:>5} {row.max_abs_diff:>11.3e} {row.max_rel_diff:>10.3e}{sizes}{flag}")
    return "\n".join(lines)


def _summary(table: Sequence[ExitCheck], tolerance: float) -> str:
    """One line: the worst exit, how many checks failed, and what to do."""
    worst = max(table, key=lambda row: row.max_rel_diff)
    failed = sum(not row.passed for row in table)
    where = f"exit {worst.exit} at batch {worst.batch}"
    if worst.max_abs_diff == float("inf"):
        return (f"validation against PyTorch failed: {where} gives logits of another shape than the model "
                f"({failed} of {len(table)} checks fail); the graph's shapes must not depend on the batch: "
                "export with a static --batch-size, or make forward's shapes follow its input")
    return (f"validation against PyTorch failed: {where} differs by {worst.max_rel_diff:.2e} of its largest logit, "
            f"tolerance {tolerance:g} ({failed} of {len(table)} checks fail); make sure forward does not branch "
            "on tensor values (tracing keeps one path), or accept the difference with a larger --tolerance "
            "(ExportSpec.tolerance)")
