"""Export a multi-exit model to a bundle of chained per-stage ONNX graphs, always validated.

Design: the whole model is exported once and the ONNX graph is cut at its exits
(:mod:`.partition`). Cutting the real graph rather than writing staged PyTorch modules keeps
the partitioner generic (any module whose forward returns the exit logits in order), makes
"no recomputation" true by construction (each node lands in exactly one stage), and
guarantees the stages compute exactly what the monolithic graph computes.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from ranet_edge import __version__
from ranet_edge.errors import ExportError
from ranet_edge.runtime.graphs import walk
from ranet_edge.runtime.manifest import (
    FORMAT,
    MANIFEST,
    SCHEMA_VERSION,
    replace_dir,
    sha256_file,
    write_json_atomic,
)

from .fold import fold_batchnorm
from .graph_costs import initializer_params, intermediate_values, node_flops
from .partition import Stage, constant_nodes, partition
from .rewrite import constant_resize

logger = logging.getLogger(__name__)  # the validation table, then any warnings (the CLI prints them)

DEFAULT_OPSET = 17
INPUT_NAME = "image"


@dataclass
class ExportSpec:
    """What to export and how."""

    opset: int = DEFAULT_OPSET
    batch_size: int | None = None  # None: dynamic batch; N: static shapes
    simplify: bool = True
    monolithic: bool = False
    granularity: str = "exit"  # "exit" or "subnetwork"
    tolerance: float = 1e-4  # max |diff| / max |logit| allowed at every exit
    validate_batches: tuple[int, ...] = (1, 3)


@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict
    table: list[dict]  # per exit: max abs/rel differences at each validated batch size
    warnings: list[str] = field(default_factory=list)


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, num_exits: int, spec: ExportSpec) -> onnx.ModelProto:
    names = [f"logits_{k}" for k in range(num_exits)]
    axes = None
    if spec.batch_size is None:
        axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes, opset_version=spec.opset,
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


def _simplify(m: onnx.ModelProto, label: str, notes: list[str]) -> onnx.ModelProto:
    try:
        import onnxsim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, ok = onnxsim.simplify(m)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return out
    except Exception as exc:  # keep the unsimplified graph, but say so
        notes.append(f"onnxsim failed on {label} ({type(exc).__name__}: {str(exc)[:100]}); kept it unsimplified")
        return m


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def chain_run(sessions: list[ort.InferenceSession], stages: list[Stage], x: np.ndarray) -> list[np.ndarray]:
    """Run the stages in order, feeding each the tensors it names (how any user chains them)."""
    def run(g: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = sessions[g]
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))

    return [outs[name] for g, _, outs in walk([st.inputs for st in stages[:len(sessions)]], {INPUT_NAME: x}, run)
            for name in stages[g].logits]


def _validate(model: torch.nn.Module, sessions, stages, shape, spec: ExportSpec) -> tuple[list[dict], bool]:
    batches = (spec.batch_size,) if spec.batch_size else spec.validate_batches
    rng = np.random.default_rng(0)
    table: list[dict] = []
    ok = True
    for b in batches:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        with torch.no_grad():
            ref = [t.numpy() for t in model(torch.from_numpy(x))]
        got = chain_run(sessions, stages, x)
        for k, (r, g) in enumerate(zip(ref, got, strict=False)):
            abs_diff = float(np.max(np.abs(r - g))) if g.shape == r.shape else float("inf")
            rel = abs_diff / max(float(np.max(np.abs(r))), 1e-12)
            table.append({"exit": k, "batch": b, "max_abs_diff": abs_diff, "max_rel_diff": rel})
            ok &= rel <= spec.tolerance
    return table, ok


def format_table(table: list[dict], tolerance: float) -> str:
    lines = [f"{'exit':>4} {'batch':>5} {'max|diff|':>11} {'relative':>10}  (tolerance {tolerance:g})"]
    for row in table:
        flag = "" if row["max_rel_diff"] <= tolerance else "  FAIL"
        lines.append(f"{row['exit']:>4} {row['batch']:>5} {row['max_abs_diff']:>11.3e} "
                     f"{row['max_rel_diff']:>10.3e}{flag}")
    return "\n".join(lines)


def _check_flops(cut: list[int], reference: list[int] | None) -> None:
    """The cut chain must do exactly the model's work in total, and never more by any exit.

    A model whose forward runs work before an exit that the exit does not read (MSDNet runs
    every scale of block k before classifier k) is counted at that exit by the official
    counter, while the chain defers that work to the stage that reads it: there the cut
    count is lower until the totals meet. RANet's counts agree exit by exit.
    """
    if reference is None:
        return
    reference = list(reference)
    if cut[-1] != reference[-1] or any(c > r for c, r in zip(cut, reference, strict=True)):
        raise ExportError(f"FLOPs counted on the cut graphs {cut} do not fit the model's own count "
                          f"{reference}: a stage recomputes or drops work")


def export_model(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    input_shape: tuple[int, int, int],
    spec: ExportSpec,
    *,
    exit_groups: list[int] | None = None,
    cumulative_params: list[int] | None = None,
    reference_flops: list[int] | None = None,
    metadata: dict | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``model`` (forward returns exit logits in order) as a validated bundle.

    ``exit_groups`` gives each exit's sub-network for ``granularity="subnetwork"``;
    ``reference_flops`` (cumulative, from the model's own counter, e.g. the official one) is
    checked against the FLOPs counted on the cut graphs and recorded as each exit's ``flops``;
    ``run_flops`` is what a sample leaving there pays in the chain. ``metadata`` goes into
    the manifest as given. The validation table and any warnings go to this module's
    ``logging`` logger (``ranet_edge.export.exporter``), or to ``log`` if one is given.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"output directory {out} exists and is not empty; pass --force to replace it")
    model = model.eval()
    notes: list[str] = []
    batch = spec.batch_size or 1
    example = torch.zeros(batch, *input_shape)
    with torch.no_grad():
        outputs = model(example)
    if not isinstance(outputs, (list, tuple)) or not outputs or not all(
            isinstance(o, torch.Tensor) and o.dim() == 2 for o in outputs):
        raise ExportError("the model's forward must return the list of exit logits (N x classes tensors) in "
                          f"exit order; it returned {type(outputs).__name__}")
    num_exits = len(outputs)
    # Batch norm folded in float64 here, not by torch.onnx.export in float32: the weights
    # written are then the same bits on every CPU (see .fold). Validation still compares
    # against the unfolded model.
    folded, _ = fold_batchnorm(model)
    full = _to_onnx(folded, example, num_exits, spec)
    _check_nothing_folded_by_torch(folded, full, notes)
    feed = np.zeros((batch, *input_shape), np.float32)
    values = {INPUT_NAME: feed, **intermediate_values(full, {INPUT_NAME: feed})}
    other = None  # shapes at a second batch size tell the fixed dimensions from the batch axis
    if spec.batch_size is None:
        other = {k: v.shape for k, v in intermediate_values(full, {INPUT_NAME: np.zeros((2, *input_shape), np.float32)}).items()}
    # The monolithic baseline stays as exported: on the x86 CPUs measured, ONNX Runtime turns a
    # constant-scale Resize into its blocked-layout Upsample and then reorders the 4x larger
    # output, which cost the whole graph 4-8% at batch 64 for nothing at batch 1, while the
    # stages lose nothing and C-1's chain gains ~2% at batch 1 (benchmarks/README.md).
    as_exported = onnx.ModelProto()
    as_exported.CopyFrom(full)
    resizes = constant_resize(full, {k: v.shape for k, v in values.items()}, other)
    live = {out for node in full.graph.node for out in node.output} | {INPUT_NAME}
    values = {k: v for k, v in values.items() if k in live}
    _value_infos(full, values, spec.batch_size)
    flops_per_node = node_flops(full, {k: v.shape for k, v in values.items()})

    if spec.granularity == "exit":
        groups = [[f"logits_{k}"] for k in range(num_exits)]
    elif spec.granularity == "subnetwork":
        if exit_groups is None:
            raise ExportError("--granularity subnetwork needs a model that names its sub-networks (RANet)")
        groups = [[f"logits_{k}" for k in range(num_exits) if exit_groups[k] == g]
                  for g in sorted(set(exit_groups))]
    else:
        raise ExportError(f"granularity {spec.granularity!r} is not known; use 'exit' or 'subnetwork'")
    stages = partition(full, groups)
    name_to_flops = {tuple(n.output): f for n, f in zip(full.graph.node, flops_per_node, strict=False)}
    # Constant sub-graphs copied into several stages cost 0 FLOPs, so plain sums are exact.
    stage_flops = [sum(name_to_flops[tuple(n.output)] for n in st.model.graph.node) for st in stages]
    # Per-exit cumulative FLOPs from the cut graphs: exits inside one graph get the cost of
    # what precedes them inside it, measured by cutting at every exit.
    exit_stages = stages if spec.granularity == "exit" else partition(full, [[f"logits_{k}"] for k in range(num_exits)])
    exit_flops = [sum(name_to_flops[tuple(n.output)] for n in st.model.graph.node) for st in exit_stages]
    cumulative = list(np.cumsum(exit_flops).astype(int).tolist())
    _check_flops(cumulative, reference_flops)
    official = list(reference_flops) if reference_flops is not None else cumulative
    if cumulative_params is None:
        cumulative_params = list(np.cumsum([initializer_params(st.model) for st in exit_stages]).astype(int).tolist())

    if spec.simplify:
        for st in stages:
            st.model = _simplify(st.model, f"stage {st.index}", notes)
    for st in stages:
        onnx.checker.check_model(st.model)
    sessions = [_session(st.model) for st in stages]
    table, ok = _validate(model, sessions, stages, input_shape, spec)
    text = format_table(table, spec.tolerance)
    if not ok:
        raise ExportError("validation against PyTorch failed; per-exit differences:\n" + text)
    (log or logger.info)(text)

    out.parent.mkdir(parents=True, exist_ok=True)  # stage beside the target: rename never crosses devices
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graphs, exits = [], []
        run_flops_of_stage = np.cumsum(stage_flops).tolist()
        for st in stages:
            fname = f"stage{st.index}.onnx"
            _save(st.model, tmp / fname)
            digest = sha256_file(tmp / fname)
            cache_bytes = sum(int(np.prod(values[c].shape[1:])) * values[c].dtype.itemsize for c in st.cache_outputs)
            graphs.append({
                "path": fname, "sha256": digest, "inputs": st.inputs, "logits": st.logits,
                "cache_outputs": st.cache_outputs, "exits": st.exits, "flops": int(stage_flops[st.index]),
                "bytes": (tmp / fname).stat().st_size,
                "tensors": {n: _tensor_desc(values[n], spec.batch_size) for n in st.inputs + st.cache_outputs},
            })
            for k in st.exits:
                exits.append({
                    "index": k, "graph": fname, "sha256": digest, "inputs": st.inputs,
                    "logits": f"logits_{k}", "cache_outputs": st.cache_outputs,
                    "flops": int(official[k]), "stage_flops": int(exit_flops[k]),
                    "run_flops": int(run_flops_of_stage[st.index]), "params": int(cumulative_params[k]),
                    "cache_bytes_per_sample": cache_bytes,
                })
        mono = None
        if spec.monolithic:
            mfull = as_exported
            del mfull.graph.value_info[:]
            if spec.simplify:
                mfull = _simplify(mfull, "the monolithic graph", notes)
            _save(mfull, tmp / "monolithic.onnx")
            mono = {"path": "monolithic.onnx", "sha256": sha256_file(tmp / "monolithic.onnx"),
                    "inputs": [INPUT_NAME], "logits": [f"logits_{k}" for k in range(num_exits)],
                    "bytes": (tmp / "monolithic.onnx").stat().st_size}
        generic_pre = {  # a model that states no preprocessing takes its input as given
            "input": INPUT_NAME, "shape": [spec.batch_size, *input_shape], "dtype": "float32", "layout": "NCHW",
            "color": "RGB", "size": input_shape[-1], "mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3,
            "resize": None, "scale": "uint8 / 255",
        }
        manifest = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION,
            "preprocessing": generic_pre, "num_classes": int(values[f"logits_{num_exits - 1}"].shape[1]),
            **(metadata or {}),
            "granularity": spec.granularity, "opset": spec.opset, "batch_size": spec.batch_size,
            "rewrites": {"constant_resize": resizes, "applied_to": "stages"},
            "precision": "fp32", "graph_format": "onnx",
            "graphs": graphs, "exits": exits, "monolithic": mono,
            "validation": {"tolerance": spec.tolerance, "reference": "PyTorch eager, float32",
                           "table": table},
            "tools": _tool_versions(),
            "notes": notes,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for note in notes:
        (log or logger.warning)(f"warning: {note}")
    return ExportResult(out, manifest, table, notes)


def _tensor_desc(arr: np.ndarray, static_batch: int | None) -> dict:
    shape: list[Any] = list(arr.shape)
    if arr.dtype.kind == "f" and static_batch is None:
        shape[0] = None
    return {"shape": shape, "dtype": str(arr.dtype)}


def _save(m: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(m.SerializeToString(deterministic=True))


def _tool_versions() -> dict[str, str]:
    versions = {"ranet_edge": __version__, "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    try:
        import onnxsim

        versions["onnxsim"] = getattr(onnxsim, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        pass
    return versions

